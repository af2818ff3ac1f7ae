"""Where released models are and how they are named and checked: ``models/<name>-<sha8>.h5``.

The head file's name carries the first 8 hex digits of its own sha256 (torchvision's
``resnet101-63fe2227.pth`` convention); further shards are ``<name>-<sha8>.part<i>of<n>.h5``;
the card is ``<name>-<sha8>.card.json``. ``$BRAINTUMOR_MODELS`` overrides the folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import h5py

from braintumor.errors import BrainTumorError
from braintumor.paths import PROJECT_ROOT

FORMAT_VERSION = 1
ENCODINGS = ("float16", "int8")
DEFAULT_ENCODING = "float16"
MAX_FILE_BYTES = 95_000_000
"""Largest file of a release, in bytes (GitHub refuses files over 100 MB)."""
MAX_TOTAL_BYTES = 135_000_000
"""Largest release (all its .h5 files together), in bytes: ResNet-101's 127 MB of float16 weights and what the head
embeds beside them (each region scorer 1.2 MB in float32, the image-level head, the card)."""
SHARD_TARGET_BYTES = 90_000_000
"""Tensor bytes per shard; HDF5 adds well under 1 MB of headers, keeping every file below MAX_FILE_BYTES."""
MODELS_ENV = "BRAINTUMOR_MODELS"
DEFAULT_MODELS_DIR = PROJECT_ROOT / "models"

_HEAD_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*?)-(?P<sha>[0-9a-f]{8})\.h5$")
_PART_RE = re.compile(r"^(?P<stem>.+-[0-9a-f]{8})\.part(?P<i>\d+)of(?P<n>\d+)\.h5$")


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
