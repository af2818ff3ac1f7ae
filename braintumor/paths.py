"""Where things are: the dataset, the logs folder, the presets, and how runs and checkpoints are named.

A run folder is ``logs/<name><YYYYMMDDTHHMM>/`` (``name``: the preset's NAME, lower case) and holds
``config.toml``, ``history.csv`` and checkpoints ``mask_rcnn_<name>_<epoch:04d>.h5``; these patterns
are declared here once.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = PROJECT_ROOT / "mrcnn_config"
DEFAULT_DATA_DIR = Path("data") / "brain_tumor_data"
DEFAULT_LOGS_DIR = Path("logs")

RUN_DIR_RE = re.compile(r"^(?P<name>.*?)(?P<stamp>\d{8}T\d{4,6})$")
CHECKPOINT_RE = re.compile(r"^mask_rcnn_(?P<name>.+)_(?P<epoch>\d{4,})\.h5$")


def run_stamp(folder: str | os.PathLike) -> str | None:
    """The ``YYYYMMDDTHHMM`` stamp that ends a run folder's name; None for any other folder."""
    m = RUN_DIR_RE.match(Path(folder).name)
    return m.group("stamp") if m else None


def checkpoint_epoch(path: str | os.PathLike) -> int | None:
    """The epoch of a checkpoint ``mask_rcnn_<name>_<NNNN>.h5``; None for any other file name."""
    m = CHECKPOINT_RE.match(Path(path).name)
    return int(m.group("epoch")) if m else None


def resolve_data_dir(arg: str | os.PathLike | None = None) -> Path:
    """``--data DIR``, else ``$BRAIN_TUMOR_DATA``, else ``data/brain_tumor_data``."""
    if arg:
        return Path(arg)
    env = os.environ.get("BRAIN_TUMOR_DATA")
    if env:
        return Path(env)
    return DEFAULT_DATA_DIR


def resolve_preset(arg: str | os.PathLike) -> Path:
    """A preset path, or a bare preset name (``quick``) looked up in ``mrcnn_config/``."""
    p = Path(arg)
    if p.exists() or p.suffix == ".toml" or len(p.parts) > 1:
        return p
    return PRESETS_DIR / f"{p.name}.toml"


def read_history(path: str | os.PathLike) -> list[dict]:
    """The rows of a run's ``history.csv`` (one dict per epoch, values as text); [] when absent."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
