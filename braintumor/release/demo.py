"""Demo models: checkpoints trained too few steps to read scans (never a green "no tumor found")."""

from __future__ import annotations

import json
import os
from pathlib import Path

from braintumor.errors import BrainTumorError
from braintumor.paths import checkpoint_epoch, read_history
from braintumor.release.files import card_path, is_release

# =============================================================================== runs and demo models
def release_training(head: str | os.PathLike) -> dict:
    """The ``training`` section of a release's card ({} when the card is missing or unreadable)."""
    try:
        card = json.loads(card_path(head).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    training = card.get("training") if isinstance(card, dict) else None
    return training if isinstance(training, dict) else {}


def training_steps(weights_path: str | os.PathLike, config=None, _depth: int = 0) -> int | None:
    """Optimizer steps behind a checkpoint: epoch (from its name, else history.csv rows) × STEPS_PER_EPOCH,
    plus the steps of the checkpoint or release its run started from (``INIT`` = a path; a release's
    steps from its card). None when unknown."""
    from braintumor.inference import config_for_checkpoint

    path = Path(weights_path)
    if is_release(path):
        steps = release_training(path).get("steps")
        return int(steps) if isinstance(steps, (int, float)) else None
    if config is None:
        try:
            config = config_for_checkpoint(path)
        except BrainTumorError:
            return None
    epoch = checkpoint_epoch(path)
    if epoch is None:
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
