"""Tumor-free scans: group near-identical images into slices, split by slice.

The Br35H tumor-free folder repeats each slice several times: flipped, rotated,
re-cropped, re-windowed. A split by file would put copies of one slice on both
sides and leak. :func:`slice_groups` finds the copies:

1. each image becomes a small descriptor: grey, cropped to the head (pixels above
   10 % of the maximum), resized to 24 x 24, **rank-normalised** (any monotone
   re-windowing gives the same ranks), z-scored;
2. two images are copies when the best correlation over the 8 flips/rotations of
   the square exceeds ``threshold`` (0.92: on ``../shared/data/tumor_free`` it gives
   115 groups for the 117 slices the dataset notes; a lower threshold only merges
   more, which is the safe side for a split);
3. groups are the connected components of that relation.

:func:`split_by_slice` then sends whole groups to train or held-out, decided by a
hash of the group's file names, so the split does not move when files are added
elsewhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"}
_SIDE = 24


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _descriptor(image: np.ndarray) -> np.ndarray:
    """RGB or grey uint8 image -> ``[24, 24]`` float32, rank-normalised and z-scored."""
    from PIL import Image

    grey = image.astype(np.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    fg = grey > 0.1 * max(float(grey.max()), 1e-6)
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    if rows.size and cols.size:
        grey = grey[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    small = np.asarray(Image.fromarray(grey).resize((_SIDE, _SIDE), Image.BILINEAR), dtype=np.float32)
    ranks = small.ravel().argsort(kind="stable").argsort(kind="stable").astype(np.float32)
    ranks = (ranks - ranks.mean()) / max(float(ranks.std()), 1e-6)
    return ranks.reshape(_SIDE, _SIDE)


def _dihedral(d: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of ``[n, S, S]`` descriptors."""
    t = d.transpose(0, 2, 1)
    return [d, d[:, :, ::-1], d[:, ::-1, :], d[:, ::-1, ::-1], t, t[:, :, ::-1], t[:, ::-1, :], t[:, ::-1, ::-1]]


def similarity_matrix(images: list[np.ndarray]) -> np.ndarray:
    """``[n, n]`` best correlation (over the 8 flips/rotations) between image descriptors."""
    d = np.stack([_descriptor(im) for im in images])
    n = len(d)
    x = d.reshape(n, -1)
    best = np.full((n, n), -1.0, dtype=np.float32)
    for v in _dihedral(d):
        best = np.maximum(best, x @ v.reshape(n, -1).T / x.shape[1])
    return best


def slice_groups(images: list[np.ndarray], threshold: float = 0.92) -> np.ndarray:
    """Group ids ``[n]`` (0..k-1, in order of first appearance) of near-identical images."""
    n = len(images)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    sim = similarity_matrix(images)
    parent = np.arange(n)

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in zip(*np.nonzero(np.triu(sim > threshold, k=1))):
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = [root(i) for i in range(n)]
    ids: dict[int, int] = {}
    return np.array([ids.setdefault(r, len(ids)) for r in roots], dtype=np.int64)


def group_files(paths: list[Path], threshold: float = 0.92) -> dict[str, list[Path]]:
    """The copies of each slice: ``{slice key: sorted files}``, the key being the first file name of the group.

    Unreadable files are left out (they are reported by whoever reads them).
    """
    from braintumor.errors import BrainTumorError
    from braintumor.imageio import read_image

    images, kept = [], []
    for p in paths:
        try:
            images.append(read_image(p))
            kept.append(Path(p))
        except BrainTumorError:
            continue
    members: dict[int, list[Path]] = {}
    for p, g in zip(kept, slice_groups(images, threshold)):
        members.setdefault(int(g), []).append(p)
    groups = [sorted(files, key=lambda f: f.name) for files in members.values()]
    return {files[0].name: files for files in sorted(groups, key=lambda fs: fs[0].name)}


def split_groups(groups: dict[str, list[Path]], held_out_fraction: float = 0.3,
                 salt: str = "braintumor") -> tuple[list[Path], list[Path]]:
    """``(train, held_out)`` file lists from :func:`group_files`' groups; each group lands on one side only,
    decided by a hash of its file names."""
    train, held = [], []
    for files in groups.values():
        key = salt + "|" + "|".join(sorted(f.name for f in files))
        bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (held if bucket < held_out_fraction else train).extend(files)
    return sorted(train), sorted(held)


def split_by_slice(paths: list[Path], held_out_fraction: float = 0.3, threshold: float = 0.92,
                   salt: str = "braintumor") -> tuple[list[Path], list[Path]]:
    """``(train, held_out)`` file lists; every group of copies lands on one side only.

    Unreadable files are left out of both sides (they are reported by whoever reads them).
    """
    return split_groups(group_files(paths, threshold), held_out_fraction, salt)


PARTS = ("train", "held-out", "all")


def load_tumor_free(folders, part: str = "held-out", class_names=("BG", "tumor")):
    """A Dataset (0 instances per image) of one part of tumor-free folders, split by slice.

    folders: a folder or a list of folders; part: ``train`` (what training mixes in),
    ``held-out`` (what evaluation measures specificity on) or ``all``. Each image's info
    carries ``slice``: the key of its group of copies (:func:`group_files`, prefixed by the
    folder when there are several), so figures can be counted per distinct slice.
    """
    from braintumor.data import Dataset
    from braintumor.errors import BrainTumorError
    from braintumor.imageio import read_size

    if part not in PARTS:
        raise BrainTumorError(f"tumor-free part must be one of {', '.join(PARTS)}, got {part!r}")
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    ds = Dataset(list(class_names), source=Path(folders[0]) if len(folders) == 1 else None, format="folder")
    for folder in folders:
        if not Path(folder).is_dir():
            raise BrainTumorError(f"{folder}: tumor-free folder not found")
        files = list_images(folder)
        if not files:
            raise BrainTumorError(f"{folder}: no image files")
        groups = group_files(files)
        prefix = f"{Path(folder).name}/" if len(folders) > 1 else ""
        slice_of = {f: prefix + k for k, fs in groups.items() for f in fs}
        if part == "all":
            chosen = files
        else:
            train, held = split_groups(groups)
            chosen = train if part == "train" else held
        for p in chosen:
            try:
                h, w = read_size(p)
            except BrainTumorError as e:
                ds.add_problem(str(e), "error", "unreadable image")
                continue
            ds.add_image(p, h, w, [], slice=slice_of.get(Path(p)))
    return ds


def _slice_matches(ds, keys, where: str, setting: str):
    """For each image of ``ds`` (of :func:`load_tumor_free`), whether its slice is one of ``keys``.

    A key matches an image's ``slice`` itself or, with several folders, its file-name part
    (``"no1002.jpg"`` matches ``"tumor_free/no1002.jpg"``). A key that matches nothing is an error
    naming ``where`` and ``setting``: a misspelt key must not silently keep or drop a slice."""
    from braintumor.errors import BrainTumorError

    def key_of(info):
        k = info.get("slice") or ""
        return {k, k.rsplit("/", 1)[-1]}

    keys_of = [key_of(i) for i in ds.image_info]
    known = set().union(*keys_of)
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise BrainTumorError(f"{where}: {setting} names {', '.join(unknown)}, which is no slice of these "
                              f"images (a slice's key is the first file name of its group of copies)")
    wanted = set(keys)
    return [bool(k & wanted) for k in keys_of]


def without_slices(ds, keys, where: str):
    """``ds`` (of :func:`load_tumor_free`) without every copy of the slices ``keys`` (``EXCLUDE_SLICES``),
    as a new Dataset; keys are matched as in :func:`_slice_matches`."""
    keys = list(keys)
    if not keys:
        return ds
    hit = _slice_matches(ds, keys, where, "EXCLUDE_SLICES")
    return ds.subset([i for i, h in zip(ds.image_info, hit) if not h])


def with_slices(ds, keys, where: str):
    """Only the copies of the slices ``keys`` in ``ds`` (``SLICES``: e.g. the hard negatives a model
    scores highest, given their own share of the samples), as a new Dataset; keys as in :func:`_slice_matches`."""
    keys = list(keys)
    hit = _slice_matches(ds, keys, where, "SLICES")
    return ds.subset([i for i, h in zip(ds.image_info, hit) if h])
