"""The released model: one compact, checksummed copy of a trained checkpoint, tracked in ``models/``.

``logs/`` is git-ignored and holds training runs (255 MB per ResNet-101
checkpoint, float32); ``models/`` holds the ONE release the product reads by
default (``braintumor detect``, ``braintumor evaluate`` and the app without
``--weights``). ``braintumor export --weights RUN.h5`` writes it:

- ``models/<name>-<sha8>.h5``, the *head* file: HDF5 with every weight tensor
  (or the first ones), the run's config, the class names, the operating point,
  the model card, the per-tensor statistics and the list of further shards with
  their sha256. ``<sha8>`` is the first 8 hex digits of the head file's sha256
  (torchvision's ``resnet101-63fe2227.pth`` convention); the full digest is in
  the card.
- ``models/<name>-<sha8>.part<i>of<n>.h5`` (float16 only): further shards, so
  that no file exceeds :data:`MAX_FILE_BYTES` (GitHub refuses files over 100 MB).
- ``models/<name>-<sha8>.card.json``: the model card (training, val figures,
  licences, files and digests, equivalence check), also rendered into the
  README between :data:`CARD_START` and :data:`CARD_END`.

Storage (``--encoding``): ``float16`` (every tensor with 2+ dimensions as IEEE
half, 2 bytes per weight, relative rounding error <= 2**-11) or ``int8``
(per-output-channel symmetric int8 with one float32 scale per channel, 1 byte
per weight, absolute error <= scale / 2). One-dimensional tensors (biases,
norm gains and offsets: 0.1 % of the weights) stay float32 in both. Loading
always restores float32 into a normal inference :class:`~braintumor.mrcnn.MaskRCNN`
built from the embedded config.

Loading verifies the head file's sha256 against its name (and the card's full
digest when the card is beside it) and each shard against the digest in the
head; a truncated or damaged file is refused with one line naming it.

A checkpoint that is not a release and whose run trained fewer than
``MIN_STEPS_FOR_READING`` steps is a *demo model* (:func:`demo_reason`): the app
and ``detect`` never give it a "no tumor found" verdict.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from braintumor.errors import BrainTumorError
from braintumor.paths import PROJECT_ROOT

FORMAT_VERSION = 1
ENCODINGS = ("float16", "int8")
DEFAULT_ENCODING = "float16"
MAX_FILE_BYTES = 95_000_000
"""Largest file of a release, in bytes (GitHub refuses files over 100 MB)."""
MAX_TOTAL_BYTES = 130_000_000
"""Largest release (all its .h5 files together), in bytes."""
SHARD_TARGET_BYTES = 90_000_000
"""Tensor bytes per shard; HDF5 adds well under 1 MB of headers, keeping every file below MAX_FILE_BYTES."""
MODELS_ENV = "BRAINTUMOR_MODELS"
DEFAULT_MODELS_DIR = PROJECT_ROOT / "models"
CARD_START = "<!-- model-card:start -->"
CARD_END = "<!-- model-card:end -->"
EQUIVALENCE_IMAGES = 5
"""Val images whose float32 detections are recorded in the card at export (the CI equivalence test)."""
EQUIVALENCE_FLOOR = 0.05
"""Score floor (0..1) of the model while recording those detections (max scores below the threshold are kept)."""
BOX_TOLERANCE_PX = 1
DICE_TOLERANCE = 0.005

LICENCES = [
    {"data": "brain_tumor_data (train 202 / val 61 images, VIA polygons)",
     "source": "https://github.com/rastislavkopal/brain-tumor-segmentation",
     "licence": "the terms of its repository (see there)"},
    {"data": "Figshare brain tumor dataset (J. Cheng, 2017; 3064 T1-weighted contrast-enhanced slices)",
     "source": "https://doi.org/10.6084/m9.figshare.1512427", "licence": "CC BY 4.0"},
    {"data": "Br35H tumor-free slices (the 'no' folder)",
     "source": "https://github.com/AhmedHamada0/Brain-Tumor-Detection-Dataset",
     "licence": "the terms of its repository and of Br35H :: Brain Tumor Detection 2020 (see there)"},
]

_HEAD_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*?)-(?P<sha>[0-9a-f]{8})\.h5$")
_PART_RE = re.compile(r"^(?P<stem>.+-[0-9a-f]{8})\.part(?P<i>\d+)of(?P<n>\d+)\.h5$")
_CKPT_EPOCH_RE = re.compile(r"_(\d{4,})\.h5$")


# =============================================================================== where releases are
def models_dir(arg: str | os.PathLike | None = None) -> Path:
    """``arg``, else ``$BRAINTUMOR_MODELS``, else ``<project>/models``."""
    if arg:
        return Path(arg)
    env = os.environ.get(MODELS_ENV)
    return Path(env) if env else DEFAULT_MODELS_DIR


def find_releases(models: str | os.PathLike | None = None) -> list[Path]:
    """Head files (``<name>-<sha8>.h5``) in the models folder, newest first (there should be one)."""
    folder = models_dir(models)
    if not folder.is_dir():
        return []
    heads = [p for p in folder.iterdir() if p.is_file() and _HEAD_RE.match(p.name) and not _PART_RE.match(p.name)]
    return sorted(heads, key=lambda p: p.stat().st_mtime, reverse=True)


def default_release(models: str | os.PathLike | None = None) -> Path:
    """The release in the models folder; one line naming what is missing when there is none."""
    folder = models_dir(models)
    found = find_releases(folder)
    if not found:
        raise BrainTumorError(
            f"{folder}: no released model (<name>-<sha8>.h5) here; pass --weights PATH.h5 (or 'last'), "
            f"or export one: braintumor export --weights logs/<run>/mask_rcnn_<name>_<epoch>.h5")
    if len(found) > 1:
        raise BrainTumorError(f"{folder}: {len(found)} releases ({', '.join(p.name for p in found)}); keep one")
    return found[0]


def named_like_release(path: str | os.PathLike) -> bool:
    """True when the file name is a release head's (``<name>-<sha8>.h5``); no file access."""
    name = Path(path).name
    return bool(_HEAD_RE.match(name)) and not _PART_RE.match(name)


def is_release(path: str | os.PathLike) -> bool:
    """True for a release head file: by its name (``<name>-<sha8>.h5``) or, renamed, by its HDF5 marker."""
    p = Path(path)
    if named_like_release(p):
        return True
    try:
        with h5py.File(p, "r") as f:
            return "braintumor_release" in f.attrs
    except (OSError, ValueError):
        return False


def card_path(head: str | os.PathLike) -> Path:
    """``models/x-1234abcd.h5`` -> ``models/x-1234abcd.card.json``."""
    head = Path(head)
    return head.with_name(head.name[: -len(".h5")] + ".card.json")


def release_files(head: str | os.PathLike) -> list[Path]:
    """The head, its shards and its card (those that exist)."""
    head = Path(head)
    stem = head.name[: -len(".h5")]
    parts = sorted(p for p in head.parent.glob(f"{stem}.part*of*.h5") if _PART_RE.match(p.name))
    return [p for p in [head, *parts, card_path(head)] if p.exists()]


# =============================================================================== checksums
def sha256_file(path: str | os.PathLike, chunk: int = 4 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def _check_digest(path: Path, expected: str, where: str, expected_bytes: int | None = None) -> str:
    """Raise one line when ``path``'s sha256 does not start with ``expected``; returns the full digest."""
    if not path.is_file():
        raise BrainTumorError(f"{path}: release file missing ({where})")
    size = path.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        what = "truncated" if size < expected_bytes else "longer than released"
        raise BrainTumorError(f"{path}: {what}: {size} bytes, the release has {expected_bytes}; fetch the file again")
    digest = sha256_file(path)
    if not digest.startswith(expected):
        raise BrainTumorError(f"{path}: damaged or truncated file: sha256 {digest[:12]}…, expected {expected[:12]}… "
                              f"({where}); fetch the file again")
    return digest


# =============================================================================== tensor codec
def encode_tensor(value: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """``(stored array, float32 scales or None, encoding used)`` of a float32 tensor.

    1-D tensors stay float32. ``float16``: values with magnitude beyond 65504
    would overflow, so such a tensor stays float32. ``int8``: symmetric per
    output channel (the last axis: Keras conv and dense kernels are
    ``[..., in, out]``): ``q = round(w / s)``, ``s = max|w[..., c]| / 127``.
    """
    w = np.asarray(value, dtype=np.float32)
    if w.ndim < 2 or w.size == 0:
        return w, None, "float32"
    if encoding == "float16":
        if not np.isfinite(w).all() or np.abs(w).max() > np.finfo(np.float16).max:
            return w, None, "float32"
        return w.astype(np.float16), None, "float16"
    if encoding == "int8":
        flat = w.reshape(-1, w.shape[-1])
        scale = np.abs(flat).max(axis=0) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.rint(flat / scale), -127, 127).astype(np.int8).reshape(w.shape)
        return q, scale, "int8"
    raise BrainTumorError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")


def decode_tensor(stored: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    """The float32 tensor back from :func:`encode_tensor`'s output."""
    if scale is not None:
        return stored.astype(np.float32) * np.asarray(scale, dtype=np.float32)
    return np.asarray(stored, dtype=np.float32)


def _model_entries(keras_model) -> list[tuple[str, Any]]:
    """``(key, variable)`` for every weight, keys ``<layer>/<owner>/<weight>:<k>`` unique, in model order."""
    from braintumor.mrcnn.weights import _entries

    out, seen = [], set()
    for layer in keras_model.layers:
        for owner, base, v in _entries(layer):
            k = 0
            while f"{layer.name}/{owner}/{base}:{k}" in seen:
                k += 1
            key = f"{layer.name}/{owner}/{base}:{k}"
            seen.add(key)
            out.append((key, v))
    return out


# =============================================================================== writing
def _bytes_ds(group, name: str, text: str) -> None:
    group.create_dataset(name, data=np.frombuffer(text.encode("utf-8"), dtype=np.uint8))


def _read_text(group, name: str) -> str:
    return bytes(np.asarray(group[name][()], dtype=np.uint8)).decode("utf-8")


def _plan_shards(items: list[tuple[str, np.ndarray, np.ndarray | None, str]]) -> list[list[int]]:
    """Tensor indices per shard, in order, each shard holding at most :data:`SHARD_TARGET_BYTES`."""
    shards: list[list[int]] = [[]]
    used = 0
    for i, (_, q, s, _) in enumerate(items):
        n = q.nbytes + (s.nbytes if s is not None else 0)
        if shards[-1] and used + n > SHARD_TARGET_BYTES:
            shards.append([])
            used = 0
        shards[-1].append(i)
        used += n
    return shards


def _write_tensors(f, items, indices) -> None:
    g = f.require_group("w")
    for i in indices:
        key, q, scale, enc = items[i]
        ds = g.create_dataset(key, data=q)
        ds.attrs["encoding"] = enc
        if scale is not None:
            f.require_group("s").create_dataset(key, data=scale)


def write_release(keras_model, out_dir: str | os.PathLike, name: str, encoding: str, meta: dict[str, str]) -> list[Path]:
    """Write the weights of ``keras_model`` as a release into ``out_dir``; returns ``[head, shards...]``.

    ``meta``: texts embedded in the head under ``/meta`` (``card.json``,
    ``config.toml``, ``run_config.toml``, ...). Shards are written first, then
    the head (which records the shards' sha256), each to a temporary name, then
    renamed to ``<name>-<sha8 of head>[.part<i>of<n>].h5``. Raises when a file
    would exceed :data:`MAX_FILE_BYTES` or the whole :data:`MAX_TOTAL_BYTES`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items, stats = [], {}
    for key, v in _model_entries(keras_model):
        w = np.asarray(v.numpy(), dtype=np.float32)
        q, scale, enc = encode_tensor(w, encoding)
        err = float(np.abs(decode_tensor(q, scale) - w).max()) if w.size else 0.0
        stats[key] = {"shape": list(w.shape), "encoding": enc, "l2": float(np.linalg.norm(w.astype(np.float64))),
                      "sum": float(w.astype(np.float64).sum()), "max_abs_error": err}
        items.append((key, q, scale, enc))
    shards = _plan_shards(items)
    n = len(shards)
    if n > 1 and encoding != "float16":
        raise BrainTumorError(f"{encoding} release needs {n} files; expected one")
    tmp_parts, parts_meta = [], []
    token = f".tmp{os.getpid()}"
    try:
        for idx in range(2, n + 1):
            tmp = out / f"{name}{token}.part{idx}of{n}.h5"
            tmp_parts.append(tmp)
            with h5py.File(tmp, "w") as f:
                f.attrs["braintumor_release_part"] = FORMAT_VERSION
                f.attrs["part"], f.attrs["parts"] = idx, n
                _write_tensors(f, items, shards[idx - 1])
            parts_meta.append({"index": idx, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)})
        head_tmp = out / f"{name}{token}.h5"
        tmp_parts.insert(0, head_tmp)
        with h5py.File(head_tmp, "w") as f:
            f.attrs["braintumor_release"] = FORMAT_VERSION
            f.attrs["name"], f.attrs["encoding"], f.attrs["parts"] = name, encoding, n
            _write_tensors(f, items, shards[0])
            m = f.create_group("meta")
            for k, text in meta.items():
                _bytes_ds(m, k, text)
            _bytes_ds(m, "parts.json", json.dumps(parts_meta))
            _bytes_ds(m, "keys.json", json.dumps([[items[i][0], s + 1] for s, idx in enumerate(shards) for i in idx]))
            _bytes_ds(m, "tensor_stats.json", json.dumps(stats))
        sizes = [p.stat().st_size for p in tmp_parts]
        if max(sizes) > MAX_FILE_BYTES or sum(sizes) > MAX_TOTAL_BYTES:
            raise BrainTumorError(f"{out}: release files of {', '.join(str(s) for s in sizes)} bytes exceed "
                                  f"{MAX_FILE_BYTES} per file or {MAX_TOTAL_BYTES} in total")
        stem = f"{name}-{sha256_file(head_tmp)[:8]}"
        final = [out / f"{stem}.h5"] + [out / f"{stem}.part{i}of{n}.h5" for i in range(2, n + 1)]
        for src, dst in zip(tmp_parts, final):
            os.replace(src, dst)
        return final
    except BaseException:
        for p in tmp_parts:
            p.unlink(missing_ok=True)
        raise


# =============================================================================== reading
@dataclass
class Release:
    """A verified release: its files, digests, embedded texts and card."""

    head: Path
    sha256: str
    encoding: str
    parts: list[Path]
    meta: dict[str, str]
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.card.get("name") or _HEAD_RE.match(self.head.name).group("name"))

    def config(self, **overrides):
        """The embedded config (the run's settings, with the release's operating point)."""
        from braintumor.config import Config, ConfigError

        try:
            data = tomllib.loads(self.meta["config.toml"])
        except (KeyError, tomllib.TOMLDecodeError) as e:
            raise BrainTumorError(f"{self.head}: embedded config.toml missing or unreadable ({e})") from None
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return Config(data, source=f"{self.head.name}:config.toml")
        except ConfigError as e:
            raise BrainTumorError(str(e)) from None

    @property
    def threshold(self) -> float:
        return float(self.config().DETECTION_MIN_CONFIDENCE)

    def tensor_stats(self) -> dict[str, dict]:
        return json.loads(self.meta.get("tensor_stats.json", "{}"))


def open_release(path: str | os.PathLike) -> Release:
    """Verify a release (sha256 of every file) and read its embedded texts; one-line errors naming the file."""
    head = Path(path)
    if not head.exists():
        raise BrainTumorError(f"{head}: released model file not found")
    if head.is_dir():
        raise BrainTumorError(f"{head}: is a folder, not a released model file")
    card: dict[str, Any] = {}
    cp = card_path(head)
    if cp.is_file():
        try:
            card = json.loads(cp.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BrainTumorError(f"{cp}: model card is not valid JSON ({e})") from None
    files = {f.get("role"): f for f in card.get("files", []) if isinstance(f, dict)}
    m = _HEAD_RE.match(head.name)
    if files.get("head", {}).get("sha256"):
        digest = _check_digest(head, files["head"]["sha256"], f"sha256 in {cp.name}", files["head"].get("bytes"))
        if m and not digest.startswith(m.group("sha")):
            raise BrainTumorError(f"{head}: its name says sha256 {m.group('sha')}… but the file is {digest[:8]}…")
    elif m:
        digest = _check_digest(head, m.group("sha"), "the 8 hex digits in its name")
    else:
        raise BrainTumorError(f"{head}: no checksum to verify it against (a release is named <name>-<sha8>.h5 "
                              f"or has a .card.json beside it)")
    try:
        with h5py.File(head, "r") as f:
            if "braintumor_release" not in f.attrs:
                raise BrainTumorError(f"{head}: not a released model (no braintumor_release marker); "
                                      f"a training checkpoint is read as it is")
            version = int(f.attrs["braintumor_release"])
            if version > FORMAT_VERSION:
                raise BrainTumorError(f"{head}: release format {version} is newer than this code reads ({FORMAT_VERSION})")
            encoding = str(f.attrs["encoding"])
            meta = {k: _read_text(f["meta"], k) for k in f["meta"]}
    except BrainTumorError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise BrainTumorError(f"{head}: damaged release file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    parts = []
    stem = head.name[: -len(".h5")]
    part_list = json.loads(meta.get("parts.json", "[]"))
    for pm in part_list:
        p = head.with_name(f"{stem}.part{pm['index']}of{len(part_list) + 1}.h5")
        _check_digest(p, pm["sha256"], f"sha256 recorded in {head.name}", pm.get("bytes"))
        parts.append(p)
    if not card:
        card = json.loads(meta.get("card.json", "{}"))
    return Release(head=head, sha256=digest, encoding=encoding, parts=parts, meta=meta, card=card)


def read_tensors(rel: Release) -> dict[str, np.ndarray]:
    """Every tensor of a release, restored to float32, by key (``<layer>/<owner>/<weight>:<k>``)."""
    order = json.loads(rel.meta["keys.json"])
    files = [rel.head] + rel.parts
    out: dict[str, np.ndarray] = {}
    by_file: dict[int, list[str]] = {}
    for key, shard in order:
        by_file.setdefault(int(shard), []).append(key)
    for shard, keys in by_file.items():
        path = files[shard - 1]
        try:
            with h5py.File(path, "r") as f:
                for key in keys:
                    scale = f["s"][key][()] if "s" in f and key in f["s"] else None
                    out[key] = decode_tensor(f["w"][key][()], scale)
        except (OSError, KeyError, ValueError) as e:
            raise BrainTumorError(f"{path}: damaged release file ({str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    return out


def load_release_weights(keras_model, path: str | os.PathLike | Release):
    """Verify the release and assign its weights (float32) to ``keras_model``; every weight must match.

    Returns a :class:`~braintumor.mrcnn.weights.LoadReport` (all layers loaded).
    """
    from braintumor.mrcnn.weights import LoadReport

    rel = path if isinstance(path, Release) else open_release(path)
    tensors = read_tensors(rel)
    entries = _model_entries(keras_model)
    missing = [k for k, _ in entries if k not in tensors]
    bad = [(k, tuple(tensors[k].shape), tuple(v.shape)) for k, v in entries
           if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)]
    extra = sorted(set(tensors) - {k for k, _ in entries})
    if missing or bad or extra:
        what = (f"{len(missing)} model weights missing (e.g. {missing[0]})" if missing else
                f"{len(bad)} shape mismatches (e.g. {bad[0][0]} {bad[0][1]} vs {bad[0][2]})" if bad else
                f"{len(extra)} weights the model lacks (e.g. {extra[0]})")
        raise BrainTumorError(f"{rel.head}: does not fit the model built from its config: {what}")
    for key, v in entries:
        v.assign(tensors[key])
    return LoadReport(path=str(rel.head), loaded=sorted({k.split("/")[0] for k, _ in entries}))


def load_release(path: str | os.PathLike, **overrides):
    """A ready inference :class:`~braintumor.mrcnn.MaskRCNN` from a release (config overrides allowed)."""
    from braintumor.mrcnn import MaskRCNN

    rel = open_release(path)
    config = rel.config(IMAGES_PER_GPU=1, GPU_COUNT=1, **overrides)
    model = MaskRCNN("inference", config, model_dir=Path(path).parent)
    load_release_weights(model.keras_model, rel)
    return model


def release_label(path: str | os.PathLike, lang: str = "en") -> str:
    """``"Released: tumor-resnet101 (val Dice 0.61)"`` for the app's model list (card only, no hashing)."""
    path = Path(path)
    card = {}
    try:
        card = json.loads(card_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    m = _HEAD_RE.match(path.name)
    name = card.get("name") or (m.group("name") if m else path.stem)
    dice = (card.get("val") or {}).get("dice_mean")
    word, figure = ("Yayımlanan model", "doğrulama Dice") if lang == "tr" else ("Released", "val Dice")
    return f"{word}: {name}" + (f" ({figure} {dice:.2f})" if isinstance(dice, (int, float)) else "")


# =============================================================================== runs and demo models
def _epoch_from_name(path: Path) -> int | None:
    m = _CKPT_EPOCH_RE.search(path.name)
    return int(m.group(1)) if m else None


def training_steps(weights_path: str | os.PathLike, config=None, _depth: int = 0) -> int | None:
    """Optimizer steps behind a checkpoint: epoch (from its name, else history.csv rows) × STEPS_PER_EPOCH,
    plus the steps of the checkpoint its run started from (``INIT`` = a path). None when unknown."""
    from braintumor.inference import config_for_checkpoint

    path = Path(weights_path)
    if config is None:
        try:
            config = config_for_checkpoint(path)
        except BrainTumorError:
            return None
    epoch = _epoch_from_name(path)
    if epoch is None:
        from braintumor.train import read_history

        rows = read_history(path.parent / "history.csv")
        epoch = len(rows) if rows else None
    if epoch is None:
        return None
    steps = epoch * int(config.STEPS_PER_EPOCH)
    init = str(getattr(config, "INIT", "random"))
    if _depth < 5 and init not in ("random", "imagenet", "coco", "last") and Path(init).is_file():
        before = training_steps(init, None, _depth + 1)
        steps += before or 0
    return steps


def demo_reason(weights_path: str | os.PathLike, config=None) -> str | None:
    """Why a checkpoint is a demo model (one line), or None when it may read scans.

    A release is never a demo model. Otherwise the run must have trained at
    least ``MIN_STEPS_FOR_READING`` steps (:func:`training_steps`); unknown steps count as too few.
    ``config``: a Config or preset path used instead of the run's config.toml.
    """
    from braintumor.config import Config
    from braintumor.inference import config_for_checkpoint

    path = Path(weights_path)
    if is_release(path):
        return None
    try:
        cfg = config if isinstance(config, Config) else config_for_checkpoint(path, config)
    except BrainTumorError:
        return "training steps unknown (no config.toml beside the checkpoint)"
    need = int(getattr(cfg, "MIN_STEPS_FOR_READING", 1000))
    steps = training_steps(path, cfg)
    if steps is None:
        return f"training steps unknown (fewer than {need} cannot be ruled out)"
    if steps < need:
        return f"trained {steps} steps, fewer than MIN_STEPS_FOR_READING = {need}"
    return None


DEMO_WARNING = "Demo model: not trained for reading scans"
DEMO_WARNING_TR = "Demo model: tarama okumak için eğitilmedi"


# =============================================================================== the model card
def _git_commit(root: Path = PROJECT_ROOT) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+local changes" if dirty.stdout.strip() else "")


def run_summary(ckpt: Path, config) -> dict[str, Any]:
    """What the run folder says about training: steps, wall time (s, sum of ``epoch_seconds``), epochs, data."""
    from braintumor.train import read_history

    run = ckpt.parent
    epoch = _epoch_from_name(ckpt)
    rows = [r for r in read_history(run / "history.csv") if epoch is None or int(r["epoch"]) <= epoch]
    secs = [float(r["epoch_seconds"]) for r in rows if r.get("epoch_seconds") not in (None, "")]
    out: dict[str, Any] = {
        "run_folder": run.name, "checkpoint": ckpt.name, "epoch": epoch,
        "steps_per_epoch": int(config.STEPS_PER_EPOCH), "steps": training_steps(ckpt, config),
        "wall_seconds": round(sum(secs), 1) if secs else None,
        "history_epochs": len(rows) or None,
        "init": config.INIT,
        "tumor_free_dirs": list(config.TUMOR_FREE_DIRS), "tumor_free_fraction": config.TUMOR_FREE_FRACTION,
    }
    if rows:
        last = rows[-1]
        out["final_losses"] = {k: float(last[k]) for k in ("loss", "val_loss", "mrcnn_mask_loss", "val_mrcnn_mask_loss")
                               if last.get(k) not in (None, "")}
    for extra in ("SOURCES",):
        if hasattr(config, extra):
            out[extra.lower()] = getattr(config, extra)
    for name in ("data.json", "run.json"):
        p = run / name
        if p.is_file():
            try:
                out[name[:-5]] = json.loads(p.read_text(encoding="utf-8"))
            except ValueError:
                out[name[:-5]] = f"{name}: not valid JSON"
    for name in ("command.txt", "commit.txt"):
        p = run / name
        if p.is_file():
            out[name[:-4]] = p.read_text(encoding="utf-8").strip()
    return out


def _get(d: Any, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def metrics_summary(metrics: dict[str, Any], source: str = "") -> dict[str, Any]:
    """The card's figures from one ``metrics.json`` of ``braintumor evaluate`` (None where absent)."""
    r = lambda v: round(float(v), 4) if isinstance(v, (int, float)) else v  # noqa: E731
    op = metrics.get("operating_point") or {}
    return {
        "file": source,
        "split": _get(metrics, "dataset", "label"),
        "source_size_px": _get(metrics, "dataset", "source_size"),
        "weights": metrics.get("weights"),
        "threshold": r(metrics.get("threshold")),
        "n_images": _get(metrics, "dataset", "n_images"),
        "n_tumor_free_images": _get(metrics, "tumor_free", "n_images", default=_get(metrics, "dataset", "n_extra_tumor_free_images")),
        "dice_mean": r(_get(metrics, "segmentation", "dice_mean")),
        "mask_map50": r(_get(metrics, "coco", "segm", "map50")),
        "mask_map": r(_get(metrics, "coco", "segm", "map")),
        "box_map50": r(_get(metrics, "coco", "bbox", "map50")),
        "box_map": r(_get(metrics, "coco", "bbox", "map")),
        "precision": r(_get(metrics, "instances", "precision")),
        "recall": r(_get(metrics, "instances", "recall")),
        "fp_per_image": r(_get(metrics, "instances", "fp_per_image")),
        "sensitivity": r(_get(metrics, "image_level", "sensitivity_any")),
        "sensitivity_overlap": r(_get(metrics, "image_level", "sensitivity_overlap")),
        "specificity": r(_get(metrics, "image_level", "specificity")),
        "tumor_free_fp_per_image": r(_get(metrics, "tumor_free", "fp_per_image")),
        "operating_point": {k: r(op.get(k)) for k in ("threshold", "sensitivity", "specificity")} if op else None,
    }


def read_metrics(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """:func:`metrics_summary` of each metrics.json (a folder means its metrics.json); one-line errors."""
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            p = p / "metrics.json"
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BrainTumorError(f"{p}: metrics file not found (braintumor evaluate ... --out DIR writes it)") from None
        except (OSError, ValueError) as e:
            raise BrainTumorError(f"{p}: not a readable metrics.json ({e})") from None
        if not isinstance(doc, dict) or doc.get("kind") not in ("split", "folder"):
            raise BrainTumorError(f"{p}: not a metrics.json of braintumor evaluate (no 'kind')")
        out.append(metrics_summary(doc, str(p)))
    return out


def headline_val(summaries: Sequence[dict]) -> dict[str, Any] | None:
    """The val figures of the card: the first full-resolution evaluation of the val split, else the first one."""
    split = [s for s in summaries if s.get("split") is not None and s.get("n_images")]
    for s in split:
        if s["split"] == "val" and not s.get("source_size_px"):
            return s
    return split[0] if split else None


def build_card(*, name: str, config, run: dict, metrics: list[dict], threshold: float, encoding: str,
               command: str | None, equivalence: dict | None, replaces: dict | None) -> dict[str, Any]:
    """The model card (JSON-ready) before files and digests are known."""
    from braintumor import __version__

    val = headline_val(metrics)
    return {
        "card_version": 1,
        "name": name,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "braintumor_version": __version__,
        "export_commit": _git_commit(),
        "architecture": {"model": "Mask R-CNN + FPN", "backbone": config.BACKBONE, "norm": config.NORM,
                         "preset_name": config.NAME, "image_size_px": int(config.IMAGE_MAX_DIM),
                         "inference_precision": config.PRECISION,
                         "class_names": list(config.CLASS_NAMES)},
        "operating_point": {"threshold": round(float(threshold), 4),
                            "meaning": "DETECTION_MIN_CONFIDENCE: a scan is flagged when a detection scores at least this"},
        "storage": {"encoding": encoding,
                    "restored_as": "float32",
                    "note": ("float16: 2 bytes per weight, relative rounding error <= 2**-11"
                             if encoding == "float16" else
                             "int8 per output channel with float32 scales: 1 byte per weight")},
        "training": {**run, "command": command or run.get("command")},
        "val": val,
        "evaluations": list(metrics),
        "licences": LICENCES,
        "equivalence": equivalence,
        "replaces": replaces,
        "intended_use": "research tool, not a medical device: every result must be reviewed by a qualified physician",
    }


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render_card_markdown(card: dict[str, Any]) -> str:
    """The card as a README section (Markdown, no markers)."""
    a, t, v = card.get("architecture", {}), card.get("training", {}), card.get("val") or {}
    files = card.get("files", [])
    total = sum(f.get("bytes", 0) for f in files if str(f.get("path", "")).endswith(".h5"))
    lines = [f"**Released model: `{card.get('name')}`** ({a.get('model')}, {a.get('backbone')}, "
             f"{a.get('norm')} norm, {a.get('image_size_px')} px; preset `{a.get('preset_name')}`), "
             f"stored as {card.get('storage', {}).get('encoding')} and restored as float32: "
             + ", ".join(f"`{Path(f['path']).name}` ({f['bytes'] / 1e6:.1f} MB)" for f in files
                         if str(f.get("path", "")).endswith(".h5"))
             + (f", {total / 1e6:.1f} MB in all." if total else ".")
             + (f" Trained in {a['training_precision']}, it computes in {a.get('inference_precision')} on every machine."
                if a.get("training_precision") not in (None, a.get("inference_precision")) else ""), ""]
    if files:
        head = next((f for f in files if f.get("role") == "head"), files[0])
        lines += [f"sha256 `{head.get('sha256')}`; card `{Path(card_path(head['path'])).name}`; "
                  f"exported {card.get('created')} from commit `{card.get('export_commit')}`.", ""]
    hours = t.get("wall_seconds") / 3600 if isinstance(t.get("wall_seconds"), (int, float)) else None
    lines += [f"Training: run `{t.get('run_folder')}`, checkpoint `{t.get('checkpoint')}`, "
              f"{_fmt(t.get('steps'))} steps ({_fmt(t.get('epoch'))} epochs × {_fmt(t.get('steps_per_epoch'))})"
              + (f", {hours:.1f} h of training" if hours is not None else "")
              + f", init `{t.get('init')}`" + (f"; `{t['command']}`" if t.get("command") else "") + ".", ""]
    data = t.get("data") if isinstance(t.get("data"), dict) else None
    if data:
        train = ", ".join(f"{x.get('name')} {x.get('images')} images" + (f" ({x['per_pass']} per pass)" if x.get("per_pass") else "")
                          for x in data.get("train", []) if isinstance(x, dict))
        lines += [f"Training data (the run's data.json): {train or '—'}; val {_get(data, 'val', 'images', default='—')} "
                  f"images; held-out tumor-free slices {_get(data, 'tumor_free_held_out', 'images', default='—')}.", ""]
    elif t.get("tumor_free_dirs") or t.get("sources"):
        lines += [f"Training data: the run folder has no data.json; config sources {t.get('sources') or '—'}, "
                  f"tumor-free folders {t.get('tumor_free_dirs') or '—'}.", ""]
    if v:
        op = v.get("operating_point") or {}
        lines += ["| val figure | value |", "|---|---:|",
                  f"| images (tumor-free held-out slices) | {_fmt(v.get('n_images'))} ({_fmt(v.get('n_tumor_free_images'))}) |",
                  f"| threshold (operating point) | {_fmt(card.get('operating_point', {}).get('threshold'))} |",
                  f"| Dice (mean over val images) | {_fmt(v.get('dice_mean'))} |",
                  f"| mask mAP@0.5 / @[.5:.95] | {_fmt(v.get('mask_map50'))} / {_fmt(v.get('mask_map'))} |",
                  f"| box mAP@0.5 / @[.5:.95] | {_fmt(v.get('box_map50'))} / {_fmt(v.get('box_map'))} |",
                  f"| image-level sensitivity / specificity at {_fmt(v.get('threshold'))} | "
                  f"{_fmt(v.get('sensitivity'))} / {_fmt(v.get('specificity'))} |",
                  f"| false positives per val image | {_fmt(v.get('fp_per_image'))} |"]
        if op:
            lines.append(f"| operating point chosen by evaluate (sens ≥ 0.95) | {_fmt(op.get('threshold'))}: "
                         f"{_fmt(op.get('sensitivity'))} / {_fmt(op.get('specificity'))} |")
        lines.append("")
    eq = card.get("equivalence") or {}
    if eq.get("checked"):
        lines += [f"Equivalence with the float32 checkpoint on {eq.get('n_images')} val images: decisions "
                  f"{'identical' if eq.get('decisions_identical') else 'DIFFERENT'}, largest box difference "
                  f"{_fmt(eq.get('max_box_diff_px'), 1)} px, largest Dice difference {_fmt(eq.get('max_dice_diff'), 4)}, "
                  f"largest weight error {_fmt(eq.get('max_abs_weight_error'), 6)}.", ""]
    rep = card.get("replaces")
    if rep:
        lines += [f"Replaces `{rep.get('file')}` (val Dice {_fmt(rep.get('val_dice'))} → {_fmt(v.get('dice_mean'))}; "
                  f"{'better' if rep.get('better_on_val') else 'NOT better'} on val).", ""]
    lines += ["Data: " + "; ".join(f"{x['data']} — {x['source']} ({x['licence']})" for x in card.get("licences", [])) + ".",
              "", f"Use: {card.get('intended_use')}."]
    return "\n".join(lines) + "\n"


def update_readme(readme: str | os.PathLike, card: dict[str, Any]) -> None:
    """Replace the text between :data:`CARD_START` and :data:`CARD_END` in ``readme`` with the rendered card."""
    p = Path(readme)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise BrainTumorError(f"{p}: cannot read ({e.strerror or e})") from None
    i, j = text.find(CARD_START), text.find(CARD_END)
    if i < 0 or j < i:
        raise BrainTumorError(f"{p}: no {CARD_START} ... {CARD_END} markers to put the model card between")
    new = text[: i + len(CARD_START)] + "\n" + render_card_markdown(card) + text[j:]
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, p)


# =============================================================================== equivalence records
def _rle(mask: np.ndarray) -> list[int]:
    """Run lengths of a flattened (row-major) bool mask, starting with a run of False."""
    flat = np.asarray(mask, bool).ravel()
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def _unrle(counts: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    vals = np.arange(len(counts)) % 2 == 1
    return np.repeat(vals, counts).reshape(tuple(shape))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def detection_record(name: str, result: dict, threshold: float, gt_masks: np.ndarray | None = None,
                     image_sha256: str | None = None) -> dict[str, Any]:
    """One image's outcome at ``threshold``: decision, max score, kept boxes and scores, union mask (RLE), Dice to GT."""
    scores = np.asarray(result["scores"], np.float32).reshape(-1)
    keep = np.flatnonzero(scores >= threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    masks = np.asarray(result["masks"])
    union = masks[:, :, keep].any(axis=-1) if keep.size else np.zeros(masks.shape[:2], bool)
    rec = {"file": name, "image_sha256": image_sha256, "decision": bool(keep.size),
           "max_score": round(float(scores.max()), 5) if scores.size else 0.0,
           "boxes": np.asarray(result["rois"])[keep].astype(int).tolist(),
           "scores": [round(float(s), 5) for s in scores[keep]],
           "mask": {"shape": list(union.shape), "counts": _rle(union)}}
    if gt_masks is not None:
        gt = np.asarray(gt_masks, bool).any(axis=-1) if gt_masks.ndim == 3 else np.asarray(gt_masks, bool)
        rec["dice_gt"] = round(_dice(union, gt), 5)
    return rec


def compare_records(ref: Sequence[dict], got: Sequence[dict]) -> dict[str, Any]:
    """How far ``got`` (released model) is from ``ref`` (float32 checkpoint), image by image.

    Boxes are paired by best IoU; a different number of kept boxes counts as an
    unbounded box difference. ``max_dice_diff``: largest |Dice to GT| difference
    (or 1 - Dice between the two predictions when there is no GT).
    """
    from braintumor.boxes import box_iou

    decisions, box_diff, dice_diff, mask_dice = True, 0.0, 0.0, 1.0
    for r, g in zip(ref, got):
        decisions &= r["decision"] == g["decision"]
        rb, gb = np.asarray(r["boxes"], float).reshape(-1, 4), np.asarray(g["boxes"], float).reshape(-1, 4)
        if len(rb) != len(gb):
            box_diff = float("inf")
        elif len(rb):
            iou = box_iou(rb, gb)
            pair = iou.argmax(axis=1)
            box_diff = max(box_diff, float(np.abs(rb - gb[pair]).max()))
        a, b = _unrle(r["mask"]["counts"], r["mask"]["shape"]), _unrle(g["mask"]["counts"], g["mask"]["shape"])
        md = _dice(a, b)
        mask_dice = min(mask_dice, md)
        if r.get("dice_gt") is not None and g.get("dice_gt") is not None:
            dice_diff = max(dice_diff, abs(r["dice_gt"] - g["dice_gt"]))
        else:
            dice_diff = max(dice_diff, 1.0 - md)
    ok = len(ref) == len(got) and decisions and box_diff <= BOX_TOLERANCE_PX and dice_diff < DICE_TOLERANCE
    return {"n_images": len(ref), "decisions_identical": bool(decisions and len(ref) == len(got)),
            "max_box_diff_px": box_diff, "max_dice_diff": round(dice_diff, 5),
            "min_mask_dice_between_models": round(mask_dice, 5), "equivalent": bool(ok)}


def records_for(model, samples: Sequence[tuple[str, np.ndarray, np.ndarray | None, str | None]],
                threshold: float) -> list[dict]:
    """:func:`detection_record` of ``model.detect`` on each ``(name, image, gt_masks, sha256)``."""
    return [detection_record(n, model.detect([im])[0], threshold, gt, sha) for n, im, gt, sha in samples]


def val_samples(data_dir: str | os.PathLike, n: int = EQUIVALENCE_IMAGES, class_names=("BG", "tumor")):
    """The first ``n`` val images by name: ``[(name, image, gt_masks, sha256 of the file)]``."""
    from braintumor.data import load_split

    ds = load_split(Path(data_dir), "val", class_names=list(class_names))
    order = sorted(ds.image_ids, key=lambda i: Path(ds.image_info[i]["path"]).name)[:n]
    out = []
    for i in order:
        p = Path(ds.image_info[i]["path"])
        out.append((p.name, ds.load_image(i), ds.load_mask(i)[0], sha256_file(p)))
    return out


# =============================================================================== export
def _existing_val_dice(head: Path) -> float | None:
    try:
        card = json.loads(card_path(head).read_text(encoding="utf-8"))
        return (card.get("val") or {}).get("dice_mean")
    except (OSError, ValueError):
        return None


def export(weights: str | os.PathLike, out: str | os.PathLike | None = None, metrics: Sequence[str] = (),
           threshold: float | None = None, encoding: str = DEFAULT_ENCODING, replace: bool = False,
           config: str | None = None, data: str | None = None, command: str | None = None,
           name: str | None = None, readme: str | None = None, force: bool = False,
           equivalence_images: int = EQUIVALENCE_IMAGES, log=print) -> dict[str, Any]:
    """Write a release from a float32 training checkpoint; returns the card (also written beside it).

    weights: a checkpoint path (or ``last``) with its run's config.toml beside it;
    out: models folder (default :func:`models_dir`); metrics: metrics.json files of
    ``braintumor evaluate`` (val figures for the card); threshold: the operating point
    (default the run's DETECTION_MIN_CONFIDENCE); data: dataset folder whose first
    ``equivalence_images`` val images are run through the float32 checkpoint and the
    release (recorded in the card; skipped when the folder is missing). An existing
    release is replaced only with ``replace``; a release that is not equivalent to
    its checkpoint is removed again unless ``force``.
    """
    import time

    from braintumor.inference import config_for_checkpoint, resolve_weights
    from braintumor.mrcnn import MaskRCNN
    from braintumor.paths import resolve_data_dir

    t_start = time.perf_counter()
    if encoding not in ENCODINGS:
        raise BrainTumorError(f"--encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    ckpt = resolve_weights(weights)
    if is_release(ckpt):
        raise BrainTumorError(f"{ckpt}: already a released model; export reads a training checkpoint")
    cfg = config_for_checkpoint(ckpt, config)
    # A released model answers the same on every machine: float32 inference, whatever the run
    # trained with (PRECISION = "mixed_bfloat16" only where the CPU has bfloat16).
    training_precision = cfg.PRECISION
    cfg = cfg.replace(PRECISION="float32")
    run_cfg_path = Path(config) if config else ckpt.parent / "config.toml"
    t = float(cfg.DETECTION_MIN_CONFIDENCE if threshold is None else threshold)
    if not 0.0 < t <= 1.0:
        raise BrainTumorError(f"--threshold must be in (0, 1], got {t}")
    summaries = read_metrics(metrics)
    for s in summaries:
        if s.get("threshold") is not None and abs(s["threshold"] - t) > 1e-6:
            log(f"warning: {s['file']} was evaluated at threshold {s['threshold']}, the release's is {t}")
    folder = models_dir(out)
    existing = find_releases(folder)
    replaces = None
    if existing:
        old = existing[0]
        old_dice = _existing_val_dice(old)
        if not replace:
            raise BrainTumorError(f"{folder}: already holds release {old.name} (val Dice {_fmt(old_dice)}); "
                                  f"pass --replace to replace it")
        val = headline_val(summaries) or {}
        new_dice = val.get("dice_mean")
        better = (new_dice is not None and old_dice is not None and new_dice > old_dice)
        replaces = {"file": old.name, "sha256": None, "val_dice": old_dice, "new_val_dice": new_dice,
                    "better_on_val": better}
        try:
            replaces["sha256"] = json.loads(card_path(old).read_text())["files"][0]["sha256"]
        except (OSError, ValueError, KeyError, IndexError):
            pass
        if not better:
            log(f"warning: the new release is not better on val than {old.name} "
                f"(val Dice {_fmt(new_dice)} vs {_fmt(old_dice)}); replacing it as asked")
    rel_name = name or f"{cfg.NAME}-{cfg.BACKBONE}".lower()
    if not re.fullmatch(r"[a-z0-9_.]+(-[a-z0-9_.]+)*", rel_name):
        raise BrainTumorError(f"--name must be lower-case letters, digits, '.', '_' and '-', got {rel_name!r}")

    log(f"building the {cfg.BACKBONE} inference model and loading {ckpt} ...")
    model = MaskRCNN("inference", cfg.replace(IMAGES_PER_GPU=1, GPU_COUNT=1, DETECTION_MIN_CONFIDENCE=EQUIVALENCE_FLOOR),
                     model_dir=ckpt.parent.parent)
    report = model.load_weights(str(ckpt), by_name=True)
    if not report.complete:
        raise BrainTumorError(f"{ckpt}: does not fill the model of its config ({report})")
    samples = []
    data_dir = resolve_data_dir(data)
    if equivalence_images > 0 and (Path(data_dir) / "val").is_dir():
        samples = val_samples(data_dir, equivalence_images, cfg.CLASS_NAMES)
        log(f"float32 detections on {len(samples)} val images of {data_dir} ...")
    elif equivalence_images > 0:
        log(f"warning: {data_dir}/val not found: no equivalence images recorded (pass --data DIR)")
    reference = records_for(model, samples, t)

    run = run_summary(ckpt, cfg)
    equivalence = {"threshold": t, "floor": EQUIVALENCE_FLOOR, "data": str(data_dir) if samples else None,
                   "reference": reference, "checked": False}
    card = build_card(name=rel_name, config=cfg, run=run, metrics=summaries, threshold=t, encoding=encoding,
                      command=command, equivalence=equivalence, replaces=replaces)
    card["architecture"]["training_precision"] = training_precision
    embedded_cfg = cfg.replace(DETECTION_MIN_CONFIDENCE=t)
    meta = {"card.json": json.dumps(card, indent=1), "config.toml": embedded_cfg.to_toml(),
            "run_config.toml": run_cfg_path.read_text(encoding="utf-8") if run_cfg_path.is_file() else "",
            "class_names.json": json.dumps(list(cfg.CLASS_NAMES))}
    t0 = time.perf_counter()
    files = write_release(model.keras_model, folder, rel_name, encoding, meta)
    write_seconds = time.perf_counter() - t0
    head = files[0]
    try:
        t0 = time.perf_counter()
        rel = open_release(head)
        load_release_weights(model.keras_model, rel)
        load_seconds = time.perf_counter() - t0
        stats = rel.tensor_stats()
        got = records_for(model, samples, t)
        cmp = compare_records(reference, got) if samples else {"n_images": 0, "equivalent": None}
        equivalence.update(cmp, checked=bool(samples), released=got,
                           max_abs_weight_error=max((s["max_abs_error"] for s in stats.values()), default=0.0))
        if samples and not cmp["equivalent"] and not force:
            raise BrainTumorError(f"{head}: not equivalent to {ckpt.name} on {len(samples)} val images "
                                  f"(decisions identical: {cmp['decisions_identical']}, box diff {cmp['max_box_diff_px']} px, "
                                  f"Dice diff {cmp['max_dice_diff']}); try --encoding float16, or --force")
    except BaseException:
        for p in files:
            p.unlink(missing_ok=True)
        raise
    card["equivalence"] = equivalence
    card["files"] = [{"role": "head" if i == 0 else f"part{i + 1}", "path": f"{folder.name}/{p.name}",
                      "bytes": p.stat().st_size, "sha256": rel.sha256 if i == 0 else sha256_file(p)}
                     for i, p in enumerate(files)]
    card["files"].append({"role": "card", "path": f"{folder.name}/{card_path(head).name}"})
    card["timing_seconds"] = {"write": round(write_seconds, 1), "verify_and_load": round(load_seconds, 1),
                              "export_total": round(time.perf_counter() - t_start, 1)}
    cp = card_path(head)
    tmp = cp.with_name(f".{cp.name}.tmp")
    tmp.write_text(json.dumps(card, indent=1, allow_nan=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, cp)
    for old in existing:
        for p in release_files(old):
            if p not in files and p != cp:
                p.unlink(missing_ok=True)
    if readme:
        update_readme(readme, card)
    return card


def cli_export(args) -> int:
    """``braintumor export --weights RUN.h5 [--out DIR] [--metrics M.json ...] [--threshold X] [--replace] ...``."""
    card = export(args.weights, out=args.out, metrics=args.metrics or (), threshold=args.threshold,
                  encoding=args.encoding, replace=args.replace, config=args.config, data=args.data,
                  command=args.train_command, name=args.name, readme=args.readme, force=args.force,
                  equivalence_images=args.equivalence_images)
    for f in card["files"]:
        if "bytes" in f:
            print(f"{f['path']}  {f['bytes']:,} bytes  sha256 {f['sha256']}")
    print(f"{card['files'][-1]['path']}  (model card)")
    eq = card.get("equivalence") or {}
    if eq.get("checked"):
        print(f"equivalence on {eq['n_images']} val images: decisions identical {eq['decisions_identical']}, "
              f"max box diff {eq['max_box_diff_px']} px, max Dice diff {eq['max_dice_diff']}")
    v = card.get("val") or {}
    print(f"val Dice {_fmt(v.get('dice_mean'))}, operating point {card['operating_point']['threshold']}"
          + ("; README updated" if args.readme else ""))
    return 0


def cli_model_card(args) -> int:
    """``braintumor model-card [--release PATH] [--readme README.md]``: print the card, or put it into the README."""
    head = Path(args.release) if args.release else default_release(args.models)
    rel = open_release(head)
    if args.readme:
        update_readme(args.readme, rel.card)
        print(f"{args.readme}: model card of {head.name} written between the markers")
    else:
        print(render_card_markdown(rel.card), end="")
    return 0
