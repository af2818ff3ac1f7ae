"""Weight averaging: one checkpoint whose every weight is the weighted mean of several checkpoints' weights.

Models fine-tuned from one starting point (the release, a stage's ``--init``) lie in one basin of
the loss, so the mean of their weights is a model too, often better than each member: stochastic
weight averaging along one run's low-learning-rate tail (Izmailov et al., 2018, "Averaging weights
leads to wider optima") and "model soups" of runs from one start (Wortsman et al., 2022). The
network normalises with GroupNorm, which has no running statistics, so the mean needs no
recomputed batch statistics.

Members are training checkpoints (Matterport ``.h5``, a ``config.toml`` beside them) or releases,
all of one architecture. The result is written like a run folder, so that ``evaluate``,
``fit-image-score`` and ``export`` read it as they read a training run::

    <out>/config.toml                   the config of the last checkpoint member (else the last release's)
    <out>/history.csv, data.json, ...   copied from that member's run folder (rows up to its epoch)
    <out>/average.json                  members: path, sha256, epoch, coefficient
    <out>/mask_rcnn_<name>_<epoch>.h5   the averaged weights (float32), epoch = that member's
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from braintumor.errors import BrainTumorError
from braintumor.paths import checkpoint_epoch

COPIED = ("data.json", "run.json", "command.txt", "commit.txt")


def coefficients(n: int, coefs: Sequence[float] | None) -> list[float]:
    """``coefs`` normalised to sum 1 (equal shares when None); refuses a wrong count or a negative share."""
    if n < 2:
        raise BrainTumorError(f"averaging needs at least 2 checkpoints, got {n}")
    if coefs is None:
        return [1.0 / n] * n
    c = [float(x) for x in coefs]
    if len(c) != n:
        raise BrainTumorError(f"--coef gives {len(c)} coefficients for {n} checkpoints")
    if any(not np.isfinite(x) or x < 0 for x in c) or sum(c) <= 0:
        raise BrainTumorError(f"--coef must be non-negative with a positive sum, got {c}")
    s = sum(c)
    return [x / s for x in c]


def _base_member(members: Sequence[Path]) -> Path:
    from braintumor.release import is_release

    ckpts = [p for p in members if not is_release(p)]
    return ckpts[-1] if ckpts else members[-1]


def _copy_run_files(src_ckpt: Path, out: Path, epoch: int | None) -> None:
    from braintumor.paths import read_history

    run = src_ckpt.parent
    rows = [r for r in read_history(run / "history.csv") if epoch is None or int(r["epoch"]) <= epoch]
    if rows:
        with open(out / "history.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    for name in COPIED:
        if (run / name).is_file():
            shutil.copyfile(run / name, out / name)


def average_weights(members: Sequence[str | Path], out: str | Path, coefs: Sequence[float] | None = None,
                    log=print) -> Path:
    """Write the weighted mean of ``members``' weights into the run folder ``out``; returns the checkpoint path.

    Every float weight becomes ``sum_i c_i * w_i`` (coefficients normalised to sum 1, computed in
    float64); a non-float weight must be equal in every member. Members must share the architecture
    of the base member's config (the last training checkpoint, else the last release).
    """
    from braintumor.inference import config_for_checkpoint
    from braintumor.mrcnn import MaskRCNN
    from braintumor.mrcnn.weights import save_weights_h5
    from braintumor.release import is_release, open_release, sha256_file
    from braintumor.release.storage import load_model_weights, model_entries

    paths = [Path(m) for m in members]
    c = coefficients(len(paths), coefs)
    for p in paths:
        if not p.is_file():
            raise BrainTumorError(f"{p}: weights file not found")
    out = Path(out)
    if out.exists() and any(out.glob("mask_rcnn_*.h5")):
        raise BrainTumorError(f"{out}: already holds a checkpoint; choose a new folder")
    base = _base_member(paths)
    cfg = config_for_checkpoint(base)
    out.mkdir(parents=True, exist_ok=True)
    model = MaskRCNN("training", cfg, model_dir=str(out.parent))
    entries = model_entries(model.keras_model)
    total: list[np.ndarray | None] = [None] * len(entries)
    for p, ci in zip(paths, c):
        load_model_weights(model, p, complete=True)
        for i, (key, v) in enumerate(entries):
            w = np.asarray(v.numpy())
            if not np.issubdtype(w.dtype, np.floating):
                if total[i] is None:
                    total[i] = w.copy()
                elif not np.array_equal(total[i], w):
                    raise BrainTumorError(f"{p}: non-float weight {key} differs from the other members'")
                continue
            total[i] = ci * w.astype(np.float64) if total[i] is None else total[i] + ci * w.astype(np.float64)
        log(f"  {ci:.4f} x {p}")
    for (key, v), t in zip(entries, total):
        v.assign(t.astype(np.asarray(v.numpy()).dtype))
    epoch = None if is_release(base) else checkpoint_epoch(base)
    if is_release(base):
        (out / "config.toml").write_text(open_release(base).meta["config.toml"], encoding="utf-8")
    else:
        shutil.copyfile(base.parent / "config.toml", out / "config.toml")
        _copy_run_files(base, out, epoch)
    ckpt = out / f"mask_rcnn_{model.run_name}_{(epoch or 0):04d}.h5"
    record = {"members": [{"path": str(p), "sha256": sha256_file(p), "epoch": None if is_release(p) else checkpoint_epoch(p),
                           "coefficient": round(ci, 6)} for p, ci in zip(paths, c)],
              "base": str(base), "checkpoint": ckpt.name}
    save_weights_h5(model.keras_model, ckpt, epoch=epoch)
    (out / "average.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return ckpt


def cli_average(args: argparse.Namespace) -> int:
    print(f"averaging {len(args.weights)} checkpoints into {args.out}:")
    ckpt = average_weights(args.weights, args.out, args.coef)
    print(f"wrote {ckpt}")
    return 0
