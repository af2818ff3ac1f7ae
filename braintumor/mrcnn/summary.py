"""``braintumor model-summary``: the model's layer groups and their parameter counts.

Groups: ``conv1`` (stem), ``res2``..``res5`` (backbone stages, with their
BatchNorm layers), ``fpn``, ``rpn`` (the shared ``rpn_model``), ``heads``
(``mrcnn_*``). Builds the model from the config only — nothing is downloaded.
"""

from __future__ import annotations

import re

import numpy as np

GROUPS = ("conv1", "res2", "res3", "res4", "res5", "fpn", "rpn", "heads")


def group_of(layer_name: str) -> str:
    """The group of a top-level layer name (``other`` for anything unexpected)."""
    if layer_name in ("conv1", "bn_conv1"):
        return "conv1"
    m = re.match(r"^(res|bn)([2-5])[a-z]", layer_name)
    if m:
        return f"res{m.group(2)}"
    if layer_name.startswith("fpn_"):
        return "fpn"
    if layer_name.startswith("rpn_"):
        return "rpn"
    if layer_name.startswith("mrcnn_"):
        return "heads"
    return "other"


def _count(weights) -> int:
    return int(sum(int(np.prod(w.shape)) for w in weights))


def layer_groups(keras_model) -> dict[str, dict[str, int]]:
    """``{group: {"trainable": n, "non_trainable": n, "layers": n}}`` over layers that have weights."""
    out = {g: {"trainable": 0, "non_trainable": 0, "layers": 0} for g in GROUPS}
    for layer in keras_model.layers:
        if not layer.weights:
            continue
        g = group_of(layer.name)
        row = out.setdefault(g, {"trainable": 0, "non_trainable": 0, "layers": 0})
        row["trainable"] += _count(layer.trainable_weights)
        row["non_trainable"] += _count(layer.non_trainable_weights)
        row["layers"] += 1
    return out


def format_summary(keras_model, config, mode: str) -> str:
    """The table printed by :func:`cli_summary`."""
    groups = layer_groups(keras_model)
    lines = [f"Mask R-CNN ({mode}), backbone {config.BACKBONE}, input {config.IMAGE_SHAPE}, "
             f"{config.NUM_CLASSES} classes, config {config.source or 'defaults'}",
             f"{'group':8} {'layers':>6} {'trainable':>14} {'non-trainable':>14} {'total':>14}"]
    tot_t = tot_n = 0
    for g, row in groups.items():
        if g == "other" and not row["layers"]:
            continue
        t, n = row["trainable"], row["non_trainable"]
        tot_t += t
        tot_n += n
        lines.append(f"{g:8} {row['layers']:6d} {t:14,d} {n:14,d} {t + n:14,d}")
    lines.append(f"{'total':8} {'':6} {tot_t:14,d} {tot_n:14,d} {tot_t + tot_n:14,d}")
    return "\n".join(lines)


def cli_summary(args) -> int:
    """``braintumor model-summary --config PRESET [--mode inference|training]``."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from braintumor.config import Config
    from braintumor.mrcnn.model import MaskRCNN
    from braintumor.paths import resolve_preset

    config = Config.from_toml(resolve_preset(args.config))
    mode = getattr(args, "mode", "inference") or "inference"
    model = MaskRCNN(mode, config, model_dir=getattr(args, "logs", "logs"))
    print(format_summary(model.keras_model, config, mode))
    return 0
