"""Can the released detector's features tell the tumor type? (issue 14, item 4: measured before it is built)

The model has one class, "tumor"; the Figshare slices carry three types (meningioma, glioma,
pituitary). Before a type output goes into the model or the app, this probe asks how well a
small classifier on what the release already computes separates them:

- ``image``: the image-level features of every ``detect()`` result (pooled ``fpn_p4``/``fpn_p5``,
  ``braintumor.image_score.POOLED_LAYERS``), the same the image-level head reads;
- ``region``: the best detection's box in normalised coordinates (y1, x1, y2, x2, centre, size)
  and its score, where the tumor is and how large (a pituitary tumor sits low and central);
- ``both``;
- with ``--roi``, the features the release's ROI heads compute for one box (:class:`RoiFeatures`: the class
  head's shared 1,024-vector and the mask branch's pooled last convolution), at the tumor's own box (the
  ground truth: what a type head would be trained on) and at the best detection's box (what it would see in
  use; the whole image when nothing is detected at 0.05). Val is scored at the best detection's box, and
  again on the slices where that box is on the tumor (IoU >= 0.5).

A multinomial logistic regression (L2, standardised features, classes weighted equally) is
fitted on the Figshare training slices and scored on the Figshare val blocks (298 slices of
three number blocks, one type each, a few patients each: the val figures move with those
patients). Its L2 strength is chosen by 5-fold cross-validation on the training slices in
contiguous number blocks (neighbouring slices are one patient's), never on val.

    .venv/bin/python benchmarks/tumor_type_probe.py [--weights models/<release>.h5] \
        [--figshare ../shared/data/figshare] [--cache logs/type_probe] [--roi]

One float32 pass over 1,835 slices, a second with ``--roi`` (the features are cached by model file in ``--cache``);
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


def molded_boxes(masks: np.ndarray, info) -> np.ndarray:
    """Instance masks ``bool [H, W, N]`` of the original image -> ``[N', (y1, x1, y2, x2)]`` normalized boxes in the
    molded frame of ``info`` (:class:`braintumor.mrcnn.inputs.ResizeInfo`), where the model's boxes live; masks
    that vanish when resized are dropped."""
    from braintumor.boxes import masks_to_boxes, norm_boxes
    from braintumor.mrcnn.inputs import resize_masks

    boxes = norm_boxes(masks_to_boxes(resize_masks(np.asarray(masks, bool), info)), info.molded_shape[:2])
    return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


def base_pass(model):
    """``(base, layer)``: a Keras model of ``model``'s inference graph, ``[image, meta] -> [detections, fpn_p2,
    fpn_p3, fpn_p4, fpn_p5]`` (one backbone pass), and its ``get_layer``, to run the ROI heads again on any boxes."""
    import keras

    km = model.keras_model
    maps = [km.get_layer(f"fpn_p{i}").output for i in (2, 3, 4, 5)]
    return keras.Model(km.inputs, [km.outputs[0]] + maps), km.get_layer


class RoiFeatures:
    """Features of one box, computed by the release's own ROI heads (what decides "tumor" and the outline).

    ``cls`` ``[K, FPN_CLASSIF_FC_LAYERS_SIZE]``: the class head's shared vector (``pool_squeeze``: ROIAlign 7x7 ->
    ``mrcnn_class_conv1``/``bn1`` -> ``mrcnn_class_conv2``/``bn2``, ReLU), which the class logits read;
    ``mask`` ``[K, 512]``: the mask branch's ``mrcnn_mask_conv4`` output (14x14x256 after ReLU) averaged and
    max-pooled over the box, the texture the outline is drawn from.
    One backbone pass per image: ``__call__`` returns the detections too, so the best one's box can be pooled.
    """

    def __init__(self, model):
        import tensorflow as tf

        self.config = model.config
        base, layer = base_pass(model)

        def heads(boxes, meta, maps):
            k = tf.shape(boxes)[1]
            x = layer("roi_align_classifier")([boxes, meta] + list(maps))
            x = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))
            x = tf.nn.relu(layer("mrcnn_class_bn1")(layer("mrcnn_class_conv1")(x)))
            x = tf.nn.relu(layer("mrcnn_class_bn2")(layer("mrcnn_class_conv2")(x)))
            cls = tf.reshape(x, (k, -1))
            m = layer("roi_align_mask")([boxes, meta] + list(maps))
            m = tf.reshape(m, tf.concat([[-1], tf.shape(m)[2:]], 0))
            for i in range(1, 5):
                m = tf.nn.relu(layer(f"mrcnn_mask_bn{i}")(layer(f"mrcnn_mask_conv{i}")(m)))
            return cls, tf.concat([tf.reduce_mean(m, (1, 2)), tf.reduce_max(m, (1, 2))], -1)

        self._base = tf.function(lambda im, meta: base([im, meta], training=False), reduce_retracing=True)
        self._heads = tf.function(heads, reduce_retracing=True)

    def __call__(self, image: np.ndarray, tumor: np.ndarray) -> dict:
        """``image`` uint8 ``[H, W, 3]``, ``tumor`` bool ``[H, W, 1]`` the tumor's mask ->
        ``{"det" [N, 6] and "gt" [1, 4] normalized in the molded frame (y1, x1, y2, x2[, class, score]), "cls" [2, F],
        "mask" [2, 512]}``: the first row pools the tumor's box, the last the best detection's box (the whole image's
        without a detection)."""
        import tensorflow as tf

        from braintumor.mrcnn.inputs import mold_inputs

        molded, metas, infos = mold_inputs([image], self.config)
        out = self._base(tf.constant(molded), tf.constant(metas, tf.float32))
        det = out[0].numpy()[0]
        det = det[det[:, 5] > 0]
        gt = molded_boxes(tumor, infos[0])
        whole = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)  # no detection: the whole image, never the answer
        best = det[det[:, 5].argmax(), :4][None] if len(det) else whole
        boxes = np.concatenate([gt, best]).astype(np.float32)[None]
        cls, mask = self._heads(tf.constant(boxes), tf.constant(metas, tf.float32), out[1:])
        return {"det": det, "gt": gt, "cls": cls.numpy(), "mask": mask.numpy()}


def read_roi_split(model, figshare: Path, split: str, cache: Path, tag: str) -> dict[str, np.ndarray]:
    """``{"numbers" [N], "type" [N], "gt_cls" [N, F], "gt_mask" [N, 512], "det_cls", "det_mask", "det_score" [N],
    "det_iou" [N]}``: ROI features at the ground-truth tumor's box and at the best detection's box (IoU with it)."""
    path = cache / f"figshare_{split}-roi-{tag}.npz"
    if path.is_file():
        return dict(np.load(path))
    from braintumor.boxes import box_iou
    from braintumor.figshare import load_figshare

    ds = load_figshare(figshare, split)
    feats = RoiFeatures(model)
    rows: dict[str, list] = {k: [] for k in ("numbers", "type", "gt_cls", "gt_mask", "det_cls", "det_mask",
                                             "det_score", "det_iou")}
    t0 = time.perf_counter()
    for k, i in enumerate(ds.image_ids):
        info = ds.image_info[i]
        cats = list(info.get("categories") or [])
        if len(cats) != 1 or cats[0] not in TYPES:
            continue
        im = ds.load_image(i)
        r = feats(im, np.asarray(ds.load_mask(i)[0], bool).any(-1, keepdims=True))  # one box round the tumor
        rows["numbers"].append(int(Path(str(info.get("path", info.get("name")))).stem))
        rows["type"].append(TYPES.index(cats[0]))
        for where, row in (("gt", 0), ("det", -1)):
            rows[f"{where}_cls"].append(r["cls"][row])
            rows[f"{where}_mask"].append(r["mask"][row])
        best = r["det"][r["det"][:, 5].argmax()] if len(r["det"]) else None
        rows["det_score"].append(0.0 if best is None else float(best[5]))
        rows["det_iou"].append(0.0 if best is None else float(box_iou(best[None, :4], r["gt"][:1])[0, 0]))
        if (k + 1) % 100 == 0:
            print(f"  {split} (roi): {k + 1}/{len(ds.image_ids)}, {time.perf_counter() - t0:.0f} s", flush=True)
    out = {k: np.asarray(v) for k, v in rows.items()}
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


def report_rows(train: dict, val: dict, sets: dict) -> dict:
    """Fit on ``train`` and score on ``val`` for every ``{name: (train features [N, F], val features [M, F])}``;
    prints each confusion matrix."""
    out = {}
    for name, (xt, xv) in sets.items():
        xt, xv = xt.astype(np.float64), xv.astype(np.float64)
        l2, cv = choose_l2(xt, train["type"], train["numbers"])
        pred = fit_softmax(xt, train["type"], l2)(xv).argmax(1)
        m = confusion(val["type"], pred)
        rec = {"l2": l2, "cv_accuracy": cv, "val_accuracy": float(np.mean(pred == val["type"])),
               "val_balanced_accuracy": balanced_accuracy(val["type"], pred), "val_confusion": m.tolist(),
               "val_recall": {t: float(m[i, i] / max(m[i].sum(), 1)) for i, t in enumerate(TYPES)}}
        out[name] = rec
        print(f"\n{name} ({xt.shape[1]}): L2 {l2:g} (block CV accuracy "
              + ", ".join(f"{k:g}: {v:.3f}" for k, v in cv.items()) + ")")
        print(f"  val accuracy {rec['val_accuracy']:.3f}, balanced {rec['val_balanced_accuracy']:.3f}")
        print("  confusion (rows: true, columns: predicted " + " / ".join(TYPES) + ")")
        for i, t in enumerate(TYPES):
            print(f"    {t:>10}: " + " ".join(f"{v:4d}" for v in m[i]))
    return out


def main(argv=None) -> int:
    from braintumor.fit_image_score import _file_tag
    from braintumor.inference import load_predictor
    from braintumor.release.files import default_release

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="model file (default: the release)")
    ap.add_argument("--figshare", default=str(ROOT.parent / "shared/data/figshare"))
    ap.add_argument("--cache", default=str(ROOT / "logs/type_probe"))
    ap.add_argument("--roi", action="store_true",
                    help="also the ROI heads' features at the tumor's box and at the best detection's box")
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
              "val": {t: int(np.sum(val["type"] == i)) for i, t in enumerate(TYPES)}}
    both = lambda d: np.concatenate([d["image"], d["region"]], 1)  # noqa: E731
    report["features"] = report_rows(train, val, {"image": (train["image"], val["image"]),
                                                  "region": (train["region"], val["region"]),
                                                  "both": (both(train), both(val))})
    if args.roi:
        # the detection floor at 0.05, so that nearly every slice has a best region to pool
        model = load_predictor(str(weights), precision="float32", min_confidence=0.05).load()
        t0 = time.perf_counter()
        rtrain = read_roi_split(model, Path(args.figshare), "train", cache, tag)
        rval = read_roi_split(model, Path(args.figshare), "val", cache, tag)
        print(f"ROI features: {time.perf_counter() - t0:.0f} s")
        for a, b in ((train, rtrain), (val, rval)):
            if not np.array_equal(a["numbers"], b["numbers"]):
                raise SystemExit("the ROI and image feature caches hold different slices: delete them and rerun")
        on = rval["det_iou"] >= 0.5
        report["val_best_region_on_tumor"] = {t: int(np.sum(on[rval["type"] == i])) for i, t in enumerate(TYPES)}
        roi = lambda d, w: np.concatenate([d[f"{w}_cls"], d[f"{w}_mask"]], 1)  # noqa: E731
        sets = {
            "roi class head, tumor box -> best region": (rtrain["gt_cls"], rval["det_cls"]),
            "roi mask branch, tumor box -> best region": (rtrain["gt_mask"], rval["det_mask"]),
            "roi both, tumor box -> best region": (roi(rtrain, "gt"), roi(rval, "det")),
            "roi both, best region -> best region": (roi(rtrain, "det"), roi(rval, "det")),
            "roi both + image, tumor box -> best region": (np.concatenate([roi(rtrain, "gt"), train["image"]], 1),
                                                           np.concatenate([roi(rval, "det"), val["image"]], 1)),
            "roi both, tumor box -> tumor box (oracle)": (roi(rtrain, "gt"), roi(rval, "gt")),
        }
        report["roi"] = report_rows(rtrain, rval, sets)
        sel = {k: (a, b[on]) for k, (a, b) in sets.items() if "best region -> best" in k or "tumor box -> best" in k}
        print(f"\n-- only the {int(on.sum())} val slices whose best region is on the tumor (IoU >= 0.5):")
        report["roi_on_tumor"] = report_rows(rtrain, {k: v[on] for k, v in rval.items()}, sel)
    out = cache / "tumor_type_probe.json"
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
