"""Where things are: the dataset, the logs folder, the presets."""

from __future__ import annotations

import csv
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = PROJECT_ROOT / "mrcnn_config"
DEFAULT_DATA_DIR = Path("data") / "brain_tumor_data"
DEFAULT_LOGS_DIR = Path("logs")


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
