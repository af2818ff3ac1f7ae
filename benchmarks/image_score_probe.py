"""Does an image-level "tumor present" score tell scans apart better than the maximum detection score?

Issue 14, item 3. For every image of a set, the released model (float32) gives its maximum
detection score and pooled features of its backbone and FPN: global average and max pooling
of ``res5c_out`` (C5, 2048 channels), ``fpn_p4`` and ``fpn_p5`` (256 each), 5,121 numbers in
all. An L2-regularised logistic regression on those features, fitted on the training sources
(tumor: brain_tumor_data train + a sample of Figshare train; no tumor: the tumor-free training
slices), is the image-level score. Each score gets its operating point on val (sensitivity
0.95 on the 61 val scans) and is read at that point on:

- the held-out tumor-free slices (204): specificity;
- the source probes of ``braintumor evaluate``: val re-windowed like Br35H (99th grey
  percentile 213, ``--source-probe window``) and val shrunk to 225 px and back
  (``--source-size 225``): a score that learned the source, not the tumor, loses sensitivity;
- the Figshare val blocks (298 slices): sensitivity.

``--augment-window`` adds re-windowed copies of the training images to the fit (tumor scans
brightened to Br35H's windowing, tumor-free slices darkened to the tumor scans' 165) and
probes the held-out tumor-free slices darkened the same way.

Usage (about 1 s an image on 2 cores; features are cached in ``--out``)::

    .venv/bin/python benchmarks/image_score_probe.py --data ../shared/data --out logs/image_score [--augment-window]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLASS_MAP = {"meningioma": "tumor", "glioma": "tumor", "pituitary": "tumor"}
POOLED = ("res5c_out", "fpn_p4", "fpn_p5")
GROUPS = {"score": (0, 1), "c5": (1, 4097), "fpn": (4097, 5121)}  # columns of a feature row


def image_sets(data: Path, figshare_train_sample: int, augment_window: bool) -> dict:
    """name -> a function returning the uint8 images of that set."""
    from braintumor.data import load_split
    from braintumor.evaluate import degrade_resolution, rewindow_like_br35h
    from braintumor.figshare import load_figshare
    from braintumor.fit_image_score import darken_like_tumor_scans
    from braintumor.tumor_free import load_tumor_free

    def imgs(ds, ids=None):
        return [ds.load_image(i) for i in (ds.image_ids if ids is None else ids)]

    bt, free = data / "brain_tumor_data", data / "tumor_free"

    def fs_train():
        ds = load_figshare(data / "figshare", "train", class_map=CLASS_MAP)
        ids = sorted(np.random.default_rng(0).choice(ds.image_ids, figshare_train_sample, replace=False))
        return imgs(ds, ids)

    sets = {
        "bt_val": lambda: imgs(load_split(bt, "val")),
        "free_held": lambda: imgs(load_tumor_free(free, "held-out")),
        "bt_train": lambda: imgs(load_split(bt, "train")),
        "fs_train": fs_train,
        "free_train": lambda: imgs(load_tumor_free(free, "train")),
        "bt_val_window": lambda: [rewindow_like_br35h(i) for i in imgs(load_split(bt, "val"))],
        "bt_val_size225": lambda: [degrade_resolution(i, 225) for i in imgs(load_split(bt, "val"))],
        "fs_val": lambda: imgs(load_figshare(data / "figshare", "val", class_map=CLASS_MAP)),
    }
    if augment_window:
        sets.update({
            "bt_train_window": lambda: [rewindow_like_br35h(i) for i in imgs(load_split(bt, "train"))],
            "free_train_dark": lambda: [darken_like_tumor_scans(i) for i in imgs(load_tumor_free(free, "train"))],
            "free_held_dark": lambda: [darken_like_tumor_scans(i) for i in imgs(load_tumor_free(free, "held-out"))],
        })
    return sets


def feature_extractor():
    """``images -> [N, 5121]`` float32: max detection score, then GAP and GMP of each pooled layer."""
    import keras
    import tensorflow as tf

    from braintumor import release as R
    from braintumor.mrcnn.inputs import mold_inputs

    model = R.load_release(R.default_release())
    km = model.keras_model
    outs = [km.outputs[0]]
    for name in POOLED:
        t = km.get_layer(name).output
        outs += [keras.ops.mean(t, axis=(1, 2)), keras.ops.max(t, axis=(1, 2))]
    net = keras.Model(km.inputs, outs)
    run = tf.function(lambda x, m: net([x, m], training=False), reduce_retracing=True)

    def extract(images):
        rows = []
        for im in images:
            molded, metas, _ = mold_inputs([im], model.config)
            det, *pooled = [t.numpy()[0] for t in run(tf.constant(molded), tf.constant(metas))]
            scores = det[:, 5][det[:, 4] > 0]  # [D, (y1, x1, y2, x2, class_id, score)]
            rows.append(np.concatenate([[scores.max() if len(scores) else 0.0], *pooled]))
        return np.asarray(rows, np.float32)

    return extract


def columns(x: np.ndarray, groups) -> np.ndarray:
    parts = []
    for g in groups:
        a, b = GROUPS[g]
        v = x[:, a:b]
        if g == "score":
            p = np.clip(v, 1e-4, 1 - 1e-4)
            v = np.log(p / (1 - p))
        parts.append(v)
    return np.concatenate(parts, axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, lam: float):
    """:func:`braintumor.image_score.fit` on any feature columns; returns ``x -> p``."""
    from braintumor.image_score import fit

    return fit(x, y, l2=lam).probability


def operating_point(val_scores: np.ndarray, sensitivity: float = 0.95) -> float:
    """The highest threshold that flags at least ``sensitivity`` of the val scans."""
    s = np.sort(val_scores)[::-1]
    return float(s[int(np.ceil(sensitivity * len(s))) - 1])


def report_row(name: str, score, feats: dict) -> str:
    t = operating_point(score(feats["bt_val"]))
    held = score(feats["free_held"])
    cells = [f"{name:<40}", f"{t:6.3f}", f"{np.mean(held < t):.3f} ({int(np.sum(held >= t))}/{len(held)})"]
    for probe in ("fs_val", "bt_val_window", "bt_val_size225"):
        cells.append(f"{np.mean(score(feats[probe]) >= t):.3f}")
    if "free_held_dark" in feats:
        cells.append(f"{np.mean(score(feats['free_held_dark']) < t):.3f}")
    return " | ".join(cells)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "logs" / "image_score"))
    ap.add_argument("--figshare-train-sample", type=int, default=200)
    ap.add_argument("--augment-window", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extract = None
    feats = {}
    for name, load in image_sets(Path(args.data), args.figshare_train_sample, args.augment_window).items():
        path = out / f"{name}.npy"
        if not path.is_file():
            extract = extract or feature_extractor()
            t0 = time.time()
            np.save(path, extract(load()))
            print(f"{name}: features in {time.time() - t0:.0f} s", flush=True)
        feats[name] = np.load(path)

    pos = ["bt_train", "fs_train"] + (["bt_train_window"] if args.augment_window else [])
    neg = ["free_train"] + (["free_train_dark"] if args.augment_window else [])
    x = np.concatenate([feats[k] for k in pos + neg])
    y = np.r_[np.ones(sum(len(feats[k]) for k in pos)), np.zeros(sum(len(feats[k]) for k in neg))]
    head = ("score | threshold | specificity (flagged) | Figshare val: sensitivity | val re-windowed: sensitivity"
            " | val at 225 px: sensitivity")
    print(head + (" | held-out darkened: specificity" if args.augment_window else ""))
    print(report_row("max detection score", lambda f: f[:, 0], feats))
    for groups in (("c5",), ("fpn",), ("score", "fpn"), ("score", "c5", "fpn")):
        for lam in (0.1, 0.01, 0.001):
            m = fit_logistic(columns(x, groups), y, lam)
            print(report_row(f"logistic {'+'.join(groups)}, L2 {lam:g}", lambda f, m=m, g=groups: m(columns(f, g)), feats))
    print("\nOR rule: tumor if the max detection score >= d or the logistic score >= its threshold "
          "(the highest that keeps val sensitivity >= 0.95)")
    for groups in (("fpn",), ("score", "fpn")):
        m = fit_logistic(columns(x, groups), y, 0.01)
        for d in (0.9, 0.95):
            def rule(f, m=m, g=groups, d=d):
                # a score in [0, 2): 1 + head for images the detector flags at d, head below
                return np.where(f[:, 0] >= d, 1.0 + m(columns(f, g)), m(columns(f, g)))
            print(report_row(f"detection >= {d} or logistic {'+'.join(groups)}", rule, feats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
