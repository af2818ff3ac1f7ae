"""Can the released detector's features tell the tumor type? (issue 14, item 4: measured before it is built)

The model has one class, "tumor"; the Figshare slices carry three types (meningioma, glioma,
pituitary). Before a type output goes into the model or the app, this probe asks how well a
small classifier on what the release already computes separates them:

- ``image``: the image-level features of every ``detect()`` result (pooled ``fpn_p4``/``fpn_p5``,
  ``braintumor.image_score.POOLED_LAYERS``), the same the image-level head reads;
- ``region``: the best detection's box in normalised coordinates (y1, x1, y2, x2, centre, size)
  and its score, where the tumor is and how large (a pituitary tumor sits low and central);
- ``both``.

A multinomial logistic regression (L2, standardised features, classes weighted equally) is
fitted on the Figshare training slices and scored on the Figshare val blocks (298 slices of
three number blocks, one type each, a few patients each: the val figures move with those
patients). Its L2 strength is chosen by 5-fold cross-validation on the training slices in
contiguous number blocks (neighbouring slices are one patient's), never on val.

    .venv/bin/python benchmarks/tumor_type_probe.py [--weights models/<release>.h5] \
        [--figshare ../shared/data/figshare] [--cache logs/type_probe]

One float32 pass over 1,835 slices (the features are cached by model file in ``--cache``);
prints the confusion matrices and writes ``<cache>/tumor_type_probe.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TYPES = ("meningioma", "glioma", "pituitary")
L2_GRID = (0.001, 0.01, 0.1, 1.0)
FOLDS = 5


def region_features(result: dict, height: int, width: int) -> np.ndarray:
    """``[9]``: the best detection's (y1, x1, y2, x2, centre y, centre x, height, width) as fractions of the
    image, and its score; zeros (score 0) without a detection."""
    scores = np.asarray(result.get("scores", ()), np.float64)
    if scores.size == 0:
        return np.zeros(9)
    y1, x1, y2, x2 = np.asarray(result["rois"][int(scores.argmax())], np.float64) / [height, width, height, width]
    return np.array([y1, x1, y2, x2, (y1 + y2) / 2, (x1 + x2) / 2, y2 - y1, x2 - x1, scores.max()])


def read_split(predictor, figshare: Path, split: str, cache: Path, tag: str) -> dict[str, np.ndarray]:
    """``{"numbers" [N], "type" [N] index into TYPES, "image" [N, F], "region" [N, 9]}`` of one Figshare split."""
    path = cache / f"figshare_{split}-{tag}.npz"
    if path.is_file():
        return dict(np.load(path))
    from braintumor.figshare import load_figshare

    ds = load_figshare(figshare, split)
    numbers, types, image, region = [], [], [], []
    t0 = time.perf_counter()
    for k, i in enumerate(ds.image_ids):
        info = ds.image_info[i]
        cats = list(info.get("categories") or [])
        if len(cats) != 1 or cats[0] not in TYPES:
            continue  # a slice without exactly one known type cannot be scored
        im = ds.load_image(i)
        r = predictor.detect([im])[0]
        numbers.append(int(Path(str(info.get("path", info.get("name")))).stem))
        types.append(TYPES.index(cats[0]))
        image.append(np.asarray(r["image_features"], np.float32))
        region.append(region_features(r, *im.shape[:2]))
        if (k + 1) % 100 == 0:
            print(f"  {split}: {k + 1}/{len(ds.image_ids)}, {time.perf_counter() - t0:.0f} s", flush=True)
    out = {"numbers": np.array(numbers), "type": np.array(types), "image": np.stack(image),
           "region": np.stack(region).astype(np.float32)}
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return out


def fit_softmax(x: np.ndarray, y: np.ndarray, l2: float, n_classes: int = len(TYPES)):
    """L2 multinomial logistic regression on standardised ``x [N, F]``; returns ``predict(x) -> [N, C]`` probabilities."""
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    onehot = np.eye(n_classes)[y]
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w_row = (len(y) / (n_classes * np.maximum(counts, 1)))[y]  # every class weighs the same
    f = z.shape[1]

    def loss_and_grad(params):
        w, b = params[: f * n_classes].reshape(f, n_classes), params[f * n_classes:]
        logp = log_softmax(z @ w + b, axis=1)
        loss = -np.sum(w_row * np.sum(onehot * logp, 1)) / len(y) + 0.5 * l2 * np.sum(w * w)
        err = w_row[:, None] * (np.exp(logp) - onehot) / len(y)
        return loss, np.concatenate([(z.T @ err + l2 * w).ravel(), err.sum(0)])

    res = minimize(loss_and_grad, np.zeros(f * n_classes + n_classes), jac=True, method="L-BFGS-B",
                   options={"maxiter": 2000})
    w, b = res.x[: f * n_classes].reshape(f, n_classes), res.x[f * n_classes:]

    def predict(xn: np.ndarray) -> np.ndarray:
        s = ((xn - mean) / scale) @ w + b
        return np.exp(log_softmax(s, axis=1))
    return predict


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int = len(TYPES)) -> float:
    recalls = [np.mean(pred[y == c] == c) for c in range(n_classes) if np.any(y == c)]
    return float(np.mean(recalls))


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int = len(TYPES)) -> np.ndarray:
    """``[true, predicted]`` counts."""
    m = np.zeros((n_classes, n_classes), int)
    np.add.at(m, (y, pred), 1)
    return m


def block_folds(numbers: np.ndarray, folds: int = FOLDS) -> list[np.ndarray]:
    """``folds`` index arrays of contiguous runs of Figshare numbers (by rank), so no patient straddles train and test
    except at the few fold edges."""
    order = np.argsort(numbers, kind="stable")
    return [np.sort(part) for part in np.array_split(order, folds)]


def choose_l2(x: np.ndarray, y: np.ndarray, numbers: np.ndarray) -> tuple[float, dict[float, float]]:
    """The L2 strength with the best block-cross-validated balanced accuracy on the training slices."""
    scores = {}
    parts = block_folds(numbers)
    for l2 in L2_GRID:
        accs = []
        for k, test in enumerate(parts):
            train = np.concatenate([p for j, p in enumerate(parts) if j != k])
            if len(np.unique(y[train])) < len(TYPES):
                continue
            pred = fit_softmax(x[train], y[train], l2)(x[test]).argmax(1)
            accs.append(np.mean(pred == y[test]))
        scores[l2] = float(np.mean(accs))
    return max(scores, key=scores.get), scores


def main(argv=None) -> int:
    from braintumor.fit_image_score import _file_tag
    from braintumor.inference import load_predictor
    from braintumor.release.files import default_release

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="model file (default: the release)")
    ap.add_argument("--figshare", default=str(ROOT.parent / "shared/data/figshare"))
    ap.add_argument("--cache", default=str(ROOT / "logs/type_probe"))
    args = ap.parse_args(argv)
    weights = Path(args.weights) if args.weights else default_release()
    predictor = load_predictor(str(weights), precision="float32")
    tag = _file_tag(weights)  # the file itself (path, size, time): two runs' mask_rcnn_<name>_0020.h5 differ
    cache = Path(args.cache)
    t0 = time.perf_counter()
    train = read_split(predictor, Path(args.figshare), "train", cache, tag)
    val = read_split(predictor, Path(args.figshare), "val", cache, tag)
    print(f"features: {len(train['type'])} train, {len(val['type'])} val slices, {time.perf_counter() - t0:.0f} s")
    report = {"weights": weights.name, "train": {t: int(np.sum(train["type"] == i)) for i, t in enumerate(TYPES)},
              "val": {t: int(np.sum(val["type"] == i)) for i, t in enumerate(TYPES)}, "features": {}}
    for name in ("image", "region", "both"):
        pick = (lambda d: np.concatenate([d["image"], d["region"]], 1)) if name == "both" else (lambda d: d[name])
        xt, xv = pick(train).astype(np.float64), pick(val).astype(np.float64)
        l2, cv = choose_l2(xt, train["type"], train["numbers"])
        prob = fit_softmax(xt, train["type"], l2)(xv)
        pred = prob.argmax(1)
        m = confusion(val["type"], pred)
        rec = {"l2": l2, "cv_accuracy": cv, "val_accuracy": float(np.mean(pred == val["type"])),
               "val_balanced_accuracy": balanced_accuracy(val["type"], pred), "val_confusion": m.tolist(),
               "val_recall": {t: float(m[i, i] / max(m[i].sum(), 1)) for i, t in enumerate(TYPES)}}
        report["features"][name] = rec
        print(f"\n{name} features ({xt.shape[1]}): L2 {l2:g} (block CV accuracy "
              + ", ".join(f"{k:g}: {v:.3f}" for k, v in cv.items()) + ")")
        print(f"  val accuracy {rec['val_accuracy']:.3f}, balanced {rec['val_balanced_accuracy']:.3f}")
        print("  confusion (rows: true, columns: predicted " + " / ".join(TYPES) + ")")
        for i, t in enumerate(TYPES):
            print(f"    {t:>10}: " + " ".join(f"{v:4d}" for v in m[i]))
    out = cache / "tumor_type_probe.json"
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
