"""Would a second opinion on the image pixels of each proposal pick the tumor the class head scores low?

``class_logit_probe.py`` found that the release's ROI features (ROIAlign 7x7 of the FPN, the class head's
1,024-vector) do not set the Figshare val gliomas apart from normal tissue, whatever linear readout is fitted.
This probe asks whether the *pixels* do: a small CNN of its own (trained from random init here, in minutes)
looks at each proposal's refined box with some context, at the molded image's resolution, and scores
"tumor" against "elsewhere". Its score re-ranks the release's proposals, offline, like ``class_logit_probe``:

- proposals and refined boxes are the release's own (float32 inference graph); a crop is the square around
  the refined box, ``--context`` times its longer side, resized to ``--size`` pixels (grey: the channels' mean);
  four geometry values go beside it (the box's centre and log side lengths, normalized);
- training crops: the thesis train scans, every ``--figshare-every``-th Figshare training slice and every
  ``--tumor-free-every``-th tumor-free training image; a proposal whose refined box has IoU >= 0.5 with a
  tumor's box is positive (at most 16 an image), IoU < 0.3 negative (the 16 the release scores highest and 16
  at random an image); positives and negatives weigh the same in all;
- val: the 200 best-scored proposals (by the release) of each of the 61 thesis val scans, 298 Figshare val
  slices and 204 held-out tumor-free slices; a scan's best region is its highest-scoring proposal, "on the
  tumor" at refined-box IoU >= 0.5, and the operating point is chosen as ``evaluate`` chooses it
  (``class_logit_probe.simulate``).

Rows: the release's score; the crop score alone; their geometric mean; their product. ``--after-nms`` runs the
CNN on the detection layer's own regions instead and reports Dice and mask mAP@0.5 (``after_nms``).

    .venv/bin/python benchmarks/crop_rescore_probe.py [--weights models/<release>.h5] [--epochs 8] [--seed 0]

Crops are cached in ``--cache`` (float16); writes ``report_*.json``, ``clf_*.keras`` and ``after_nms_*.json`` there.
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
sys.path.insert(0, str(ROOT / "benchmarks"))
POS_CAP, NEG_TOP, NEG_RANDOM, VAL_TOP = 16, 16, 16, 200


class ProposalCrops:
    """One inference pass: each real proposal's tumor probability, refined box, its IoU with the tumors; crops."""

    def __init__(self, model, size: int, context: float):
        import keras
        import tensorflow as tf

        km = model.keras_model
        self.config, self.size, self.context = model.config, size, context
        sub = keras.Model(km.inputs, [km.outputs[4], km.outputs[1], km.outputs[2]])
        self._fn = tf.function(lambda im, meta: sub([im, meta], training=False), reduce_retracing=True)

    def proposals(self, image: np.ndarray, masks: np.ndarray) -> dict:
        """``image`` uint8 ``[H, W, 3]``, ``masks`` bool ``[H, W, N]`` -> ``{"score" [R], "refined" [R, (y1, x1, y2,
        x2)] normalized in the molded frame, "iou_refined" [R], "molded" [1, h, w, 3]}`` over the real proposals."""
        import tensorflow as tf

        from tumor_type_probe import molded_boxes

        from braintumor.boxes import box_iou
        from braintumor.mrcnn.box_coder import np_decode
        from braintumor.mrcnn.inputs import mold_inputs

        molded, metas, infos = mold_inputs([image], self.config)
        rois, probs, deltas = (t.numpy() for t in self._fn(tf.constant(molded), tf.constant(metas, tf.float32)))
        rois, probs, deltas = rois[0], probs[0], deltas[0]
        real = (rois[:, 2] > rois[:, 0]) & (rois[:, 3] > rois[:, 1])
        refined = np.clip(np_decode(rois, deltas[:, 1], self.config.BBOX_STD_DEV), 0.0, 1.0)
        gt = molded_boxes(masks, infos[0])
        iou_r = box_iou(refined, gt).max(1) if len(gt) else np.zeros(len(rois))
        return {"score": probs[real, 1], "refined": refined[real], "iou_refined": iou_r[real], "molded": molded}

    def crops(self, molded: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``boxes [K, (y1, x1, y2, x2)]`` normalized -> ``(crops float16 [K, size, size], geometry float32 [K, 4])``:
        the grey molded image (as the model reads it) in a square ``context`` times the box's longer side."""
        import tensorflow as tf

        h, w = molded.shape[1:3]
        cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        bh, bw = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-3), np.maximum(boxes[:, 3] - boxes[:, 1], 1e-3)
        side = np.maximum(bh * h, bw * w) * self.context  # pixels
        sq = np.stack([cy - side / h / 2, cx - side / w / 2, cy + side / h / 2, cx + side / w / 2], 1)
        grey = molded.mean(-1, keepdims=True).astype(np.float32)
        out = tf.image.crop_and_resize(grey, sq.astype(np.float32), np.zeros(len(sq), np.int32),
                                       (self.size, self.size)).numpy()[..., 0]
        geom = np.stack([cy, cx, np.log(bh), np.log(bw)], 1).astype(np.float32)
        return out.astype(np.float16), geom


def collect(pc: ProposalCrops, parts: list, split: str, path: Path, seed: int = 0, source_size: int = 0) -> dict:
    """Cached crops of one split (module docstring); ``image`` indexes ``images`` ("source/kind/name"). With
    ``source_size``, every tumor image is first shown as a scan of that many pixels (``evaluate --source-size``)."""
    from class_logit_probe import image_name, save_rows, training_rows

    from braintumor.evaluate import degrade_resolution

    if path.is_file():
        return dict(np.load(path, allow_pickle=False))
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("crops", "geom", "score", "iou_refined", "image")}
    images = []
    t0 = time.perf_counter()
    for source, ds, ids in parts:
        for i in ids:
            image = ds.load_image(i)
            if source_size and source != "tumor_free":
                image = degrade_resolution(image, source_size)
            r = pc.proposals(image, np.asarray(ds.load_mask(i)[0], bool))
            if split == "train":
                keep = training_rows(r["iou_refined"], r["score"], rng, POS_CAP, NEG_TOP, NEG_RANDOM, neg_below=0.3)
            else:
                keep = np.argsort(-r["score"])[:VAL_TOP]
            crops, geom = pc.crops(r["molded"], r["refined"][keep])
            rows["crops"].append(crops)
            rows["geom"].append(geom)
            for k in ("score", "iou_refined"):
                rows[k].append(r[k][keep].astype(np.float32))
            rows["image"].append(np.full(len(keep), len(images), np.int32))
            images.append(image_name(source, ds, i))
            if len(images) % 100 == 0:
                print(f"  {split}: {len(images)} images, {time.perf_counter() - t0:.0f} s", flush=True)
    return save_rows(rows, images, path)


def build_classifier(size: int, widths=(16, 32, 64, 128)):
    """A small CNN: crop ``[size, size, 1]`` and geometry ``[4]`` -> P(tumor)."""
    import keras
    from keras import layers

    crop, geom = keras.Input((size, size, 1)), keras.Input((4,))
    x = crop
    for k, c in enumerate(widths):
        for _ in range(2):
            x = layers.Conv2D(c, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x) if k < len(widths) - 1 else layers.GlobalAveragePooling2D()(x)
    x = layers.Concatenate()([x, layers.Dense(16, activation="relu")(geom)])
    x = layers.Dropout(0.3)(layers.Dense(64, activation="relu")(x))
    return keras.Model([crop, geom], layers.Dense(1, activation="sigmoid")(x))


def train_classifier(train: dict, size: int, epochs: int, seed: int):
    """Fit on the training crops (positives IoU >= 0.5, negatives < 0.3; both weigh the same in all), with
    left-right flips; a fixed number of epochs, no val in the loop."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    y = (train["iou_refined"] >= 0.5).astype(np.float32)
    w = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1)) * len(y)
    x = train["crops"].astype(np.float32)[..., None]
    g = train["geom"]

    def flip(inp, lab, wt):
        c, gg = inp
        do = tf.random.uniform(()) < 0.5
        c = tf.cond(do, lambda: tf.reverse(c, [1]), lambda: c)
        gg = tf.cond(do, lambda: tf.concat([gg[:1], 1.0 - gg[1:2], gg[2:]], 0), lambda: gg)
        return (c, gg), lab, wt

    ds = (tf.data.Dataset.from_tensor_slices(((x, g), y, w.astype(np.float32))).shuffle(len(y), seed=seed)
          .map(flip).batch(128).prefetch(2))
    model = build_classifier(size)
    steps = epochs * int(np.ceil(len(y) / 128))
    lr = keras.optimizers.schedules.CosineDecay(1e-3, steps)
    model.compile(keras.optimizers.Adam(lr), loss="binary_crossentropy", weighted_metrics=["AUC"])
    model.fit(ds, epochs=epochs, verbose=2)
    return model


def main(argv=None) -> int:
    from class_logit_probe import datasets, simulate

    from braintumor.inference import load_predictor
    from braintumor.release.files import default_release

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="model file (default: the release)")
    ap.add_argument("--figshare-every", type=int, default=2)
    ap.add_argument("--tumor-free-every", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--context", type=float, default=1.5)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source-size", type=int, default=0,
                    help="the shortcut probe: val tumor images shown as scans of this many pixels (needs --classifier)")
    ap.add_argument("--classifier", default=None, help="a saved clf_*.keras: score val with it instead of training")
    ap.add_argument("--after-nms", action="store_true",
                    help="with --classifier: score the detection layer's own regions and report Dice and mask mAP")
    ap.add_argument("--cache", default=str(ROOT / "logs/crop_rescore_probe"))
    args = ap.parse_args(argv)
    weights = Path(args.weights) if args.weights else default_release()
    cache = Path(args.cache)
    tag = f"s{args.size}_c{args.context:g}"
    val_path = cache / f"val_{tag}{f'_src{args.source_size}' if args.source_size else ''}.npz"
    train_path = cache / f"train_{tag}_f{args.figshare_every}_t{args.tumor_free_every}.npz"
    t0 = time.perf_counter()
    if args.after_nms:
        if not args.classifier:
            raise SystemExit("--after-nms scores with a trained classifier: give --classifier clf_*.keras")
        after_nms(weights, args.classifier, args.size, args.context, cache / f"after_nms_{Path(args.classifier).stem}.json")
        return 0
    if args.source_size and not args.classifier:
        raise SystemExit("--source-size scores val with a trained classifier: give --classifier clf_*.keras")
    if not (val_path.is_file() and (args.classifier or train_path.is_file())):
        pc = ProposalCrops(load_predictor(str(weights), precision="float32").load(), args.size, args.context)
        parts = datasets(args.figshare_every, args.tumor_free_every)
        collect(pc, parts["val"], "val", val_path, source_size=args.source_size)
        if not args.classifier:
            collect(pc, parts["train"], "train", train_path)
    val = dict(np.load(val_path))
    t1 = time.perf_counter()
    if args.classifier:
        import keras

        clf, train = keras.models.load_model(args.classifier), {"score": []}
    else:
        train = dict(np.load(train_path))
        print(f"crops: {len(train['score'])} training ({int((train['iou_refined'] >= 0.5).sum())} positive), "
              f"{len(val['score'])} val, {time.perf_counter() - t0:.0f} s", flush=True)
        clf = train_classifier(train, args.size, args.epochs, args.seed)
    fit_s = time.perf_counter() - t1
    s_crop = clf.predict([val["crops"].astype(np.float32)[..., None], val["geom"]], batch_size=512,
                         verbose=0)[:, 0].astype(np.float64)
    s_rel = val["score"].astype(np.float64)
    rows = {"release": simulate(val, s_rel), "crop alone": simulate(val, s_crop),
            "geometric mean": simulate(val, np.sqrt(s_rel * s_crop)), "product": simulate(val, s_rel * s_crop)}
    report = {"weights": weights.name, "args": vars(args), "train_crops": int(len(train["score"])),
              "fit_seconds": round(fit_s), "rows": rows}
    keys = list(rows["release"])
    print(f"\n{'':>16} " + " ".join(f"{k[:20]:>20}" for k in keys))
    for name, row in rows.items():
        print(f"{name:>16} " + " ".join(f"{row[k]:>20.4g}" if isinstance(row[k], float) else f"{row[k]:>20d}"
                                        for k in keys))
    if args.classifier:
        out = cache / f"report_{Path(args.classifier).stem}_src{args.source_size}.json"
    else:
        out = cache / f"report_{tag}_e{args.epochs}_s{args.seed}.json"
        clf.save(cache / f"clf_{tag}_e{args.epochs}_s{args.seed}.keras")
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"written {out}")
    return 0



def after_nms(weights: Path, classifier: str, size: int, context: float, out: Path) -> dict:
    """The CNN on the detection layer's own output, as a built scorer would see it: ``detect()`` down to 0.05
    with every region kept, each region's crop scored, then the best region plus others >= 0.95 kept by the
    release's score or by sqrt(score x CNN); Dice and mask mAP@0.5 as ``evaluate`` computes them, at each
    ranking's own operating point (chosen on the thesis val scans and the held-out tumor-free slices)."""
    import keras

    from class_logit_probe import datasets

    from braintumor import metrics as M
    from braintumor.inference import load_predictor
    from braintumor.mrcnn.inputs import keep_best_and_strong, mold_inputs

    clf = keras.models.load_model(classifier)
    predictor = load_predictor(str(weights), min_confidence=0.05, precision="float32")
    predictor.config.DETECTION_SECONDARY_MIN_CONFIDENCE = 0.0  # every region; the rule is applied below
    pc = ProposalCrops(predictor.load(), size, context)
    recs: dict[str, dict[str, list]] = {"release": {}, "combined": {}}
    t0 = time.perf_counter()
    n = 0
    for source, ds, ids in datasets(2, 2)["val"]:
        for i in ids:
            image = ds.load_image(i)
            masks, class_ids = ds.load_mask(i)
            r = predictor.detect([image])[0]
            molded, _, infos = mold_inputs([image], predictor.config)
            info, (mh, mw) = infos[0], infos[0].molded_shape[:2]
            boxes = r["rois"].astype(np.float32) * info.scale + np.array(info.window[:2] * 2, np.float32)
            boxes = boxes / np.array([mh, mw, mh, mw], np.float32)
            crops, geom = pc.crops(molded, boxes)
            s_crop = (clf.predict([crops.astype(np.float32)[..., None], geom], verbose=0)[:, 0]
                      if len(boxes) else np.zeros(0))
            kind = image_name_kind(source, ds, i)
            for name, scores in (("release", r["scores"]), ("combined", np.sqrt(r["scores"] * s_crop))):
                rr = keep_best_and_strong({**r, "scores": np.asarray(scores, np.float32)}, 0.95)
                rec = M.ImageRecord.from_arrays(f"{source}/{i}", np.asarray(masks, bool), np.asarray(class_ids), rr)
                recs[name].setdefault(kind, []).append(rec)
            n += 1
            if n % 100 == 0:
                print(f"  {n} images, {time.perf_counter() - t0:.0f} s", flush=True)
    report = {}
    for name, by in recs.items():
        free = [r.max_score for r in by["none"]]
        op = float(M.choose_operating_point([r.max_score for r in by["thesis"]], free)["robust_threshold"])
        row = {"operating_point": op, "tumor_free_flagged": int(sum(f >= op for f in free))}
        for kind in ("thesis", "meningioma", "glioma", "pituitary"):
            row[f"{kind}_dice"] = M.segmentation_summary(by[kind], op)["dice_mean"]
        fs = by["meningioma"] + by["glioma"] + by["pituitary"]
        row["figshare_dice"] = M.segmentation_summary(fs, op)["dice_mean"]
        row["thesis_mask_map50"] = M.coco_map(by["thesis"])["segm"]["map50"]
        row["figshare_outlined"] = int(sum(r.max_score >= op for r in fs))
        report[name] = row
        print(name, json.dumps(row), flush=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def image_name_kind(source: str, ds, image_id) -> str:
    """``thesis``, ``none`` (tumor-free) or the Figshare tumor type."""
    from class_logit_probe import image_name

    return image_name(source, ds, image_id).split("/")[1]


if __name__ == "__main__":
    raise SystemExit(main())
