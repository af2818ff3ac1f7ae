"""The release file format: weight tensors stored compactly in HDF5, restored as float32.

See :mod:`braintumor.release` for the layout; :func:`write_release` writes it,
:func:`open_release` verifies and opens it, :func:`load_release_weights` fills a model.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from braintumor.errors import BrainTumorError
from braintumor.release.files import (ENCODINGS, FORMAT_VERSION, MAX_FILE_BYTES, MAX_TOTAL_BYTES, SHARD_TARGET_BYTES,
                                      _HEAD_RE, _check_digest, card_path, sha256_file)

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


def model_entries(keras_model) -> list[tuple[str, Any]]:
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


def write_release(keras_model, out_dir: str | os.PathLike, name: str, encoding: str, meta: dict[str, str],
                  region_score=None) -> list[Path]:
    """Write the weights of ``keras_model`` as a release into ``out_dir``; returns ``[head, shards...]``.

    ``meta``: texts embedded in the head under ``/meta`` (``card.json``,
    ``config.toml``, ``run_config.toml``, ...); ``region_score``: a
    :class:`braintumor.region_score.RegionScore`, written into the head's group ``/region_score``. Shards are written first, then
    the head (which records the shards' sha256), each to a temporary name, then
    renamed to ``<name>-<sha8 of head>[.part<i>of<n>].h5``. Raises when a file
    would exceed :data:`MAX_FILE_BYTES` or the whole :data:`MAX_TOTAL_BYTES`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items, stats = [], {}
    for key, v in model_entries(keras_model):
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
            if region_score is not None:
                region_score.to_h5(f.create_group("region_score"))
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

    def image_score(self):
        """The embedded image-level head (:class:`braintumor.image_score.ImageScore`), or None."""
        from braintumor.image_score import ImageScore

        text = self.meta.get("image_score.json")
        if not text:
            return None
        try:
            return ImageScore.from_dict(json.loads(text))
        except (ValueError, BrainTumorError) as e:
            raise BrainTumorError(f"{self.head}: embedded image_score.json unusable ({str(e).splitlines()[0]})") from None

    def region_score(self):
        """The embedded region scorer (:class:`braintumor.region_score.RegionScore`), or None."""
        from braintumor.region_score import from_h5

        try:
            with h5py.File(self.head, "r") as f:
                if "region_score" not in f:
                    return None
                return from_h5(f["region_score"], f"{self.head}: embedded region_score")
        except OSError as e:
            raise BrainTumorError(f"{self.head}: damaged release file ({str(e).splitlines()[0]})") from None


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
    entries = model_entries(keras_model)
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


def load_model_weights(model, path: str | os.PathLike, *, complete: bool = False):
    """Weights of a release or of a training checkpoint into ``model`` (a :class:`~braintumor.mrcnn.MaskRCNN`).

    A release is verified and must fill every weight (:func:`load_release_weights`); a checkpoint
    loads by layer name (:meth:`~braintumor.mrcnn.MaskRCNN.load_weights`, which also points
    ``model.log_dir``/``epoch`` at its run). ``complete``: refuse a checkpoint that leaves a layer
    unfilled. Returns the :class:`~braintumor.mrcnn.weights.LoadReport`.
    """
    from braintumor.release.files import is_release

    if is_release(path):
        return load_release_weights(model.keras_model, path)
    report = model.load_weights(str(path), by_name=True)
    if complete and not report.complete:
        raise BrainTumorError(f"{path}: does not fit the model's architecture: {report}")
    return report


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
