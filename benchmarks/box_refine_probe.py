"""Can the detector's own heads fit the tumor better at test time? A second box refinement, or the mask on a larger box.

At the layer the release reads (every region down to 0.05), most Figshare val gliomas without a fitting region have
a box only near the tumor (box IoU 0.3-0.5) or none (``outline_ceiling.py``'s ``boxes``), and where the box fits the
mask is good (IoU 0.71-0.84). Two test-time changes need no training:

- **refine twice**: the class head's box deltas applied again, to the detection's own (already refined) box, and the
  mask drawn on that box (iterative box regression with the one head; Cascade R-CNN trains a head per stage instead);
- **larger mask box** ``x s``: the mask head reads a box ``s`` times the detection's (same centre), so that an outline
  is not cut by a box that is too tight.

One backbone pass per image (float32, the detection floor 0.05, outlines at ``--mask-threshold``), then the heads
again on the changed boxes; each variant's regions are re-scored by ``--region-score`` (its crops read the new box)
and kept as ``detect()`` keeps them, at the fixed ``--operating-point``. Per val set (61 thesis scans, 298 Figshare
slices by type, 204 held-out tumor-free images): Dice shown, the oracle (best single region), regions that fit
(mask IoU >= 0.5), and healthy images with a region at the operating point.

    .venv/bin/python benchmarks/box_refine_probe.py --weights logs/RUN/mask_rcnn_X_0030.h5 --mask-threshold 0.4 \\
        --region-score logs/region_score/release_2e3ded88.h5 --region-weight 0.5 --operating-point 0.3666
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def scaled_boxes(boxes: np.ndarray, s: float) -> np.ndarray:
    """``[K, (y1, x1, y2, x2)]`` -> the same centres, ``s`` times the height and width."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    cy, cx = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    h, w = (b[:, 2] - b[:, 0]) * s, (b[:, 3] - b[:, 1]) * s
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 1).astype(np.float32)


class Heads:
    """The model's backbone pass and its ROI heads on any boxes (normalized to the molded frame)."""

    def __init__(self, model):
        import tensorflow as tf
        from tumor_type_probe import base_pass

        self.config = model.config
        base, layer = base_pass(model)

        def box_deltas(boxes, meta, maps):
            k = tf.shape(boxes)[1]
            x = layer("roi_align_classifier")([boxes, meta] + list(maps))
            x = tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))
            x = tf.nn.relu(layer("mrcnn_class_bn1")(layer("mrcnn_class_conv1")(x), training=False))
            x = tf.nn.relu(layer("mrcnn_class_bn2")(layer("mrcnn_class_conv2")(x), training=False))
            return tf.reshape(layer("mrcnn_bbox_fc")(tf.reshape(x, (k, -1))), (k, -1, 4))

        def masks(boxes, meta, maps):
            m = layer("roi_align_mask")([boxes, meta] + list(maps))
            m = tf.reshape(m, tf.concat([[-1], tf.shape(m)[2:]], 0))
            for i in range(1, 5):
                m = tf.nn.relu(layer(f"mrcnn_mask_bn{i}")(layer(f"mrcnn_mask_conv{i}")(m), training=False))
            return layer("mrcnn_mask")(layer("mrcnn_mask_deconv")(m))

        self._base = tf.function(lambda im, meta: base([im, meta], training=False), reduce_retracing=True)
        self._deltas = tf.function(box_deltas, reduce_retracing=True)
        self._masks = tf.function(masks, reduce_retracing=True)

    def base(self, molded, metas):
        import tensorflow as tf

        out = self._base(tf.constant(molded), tf.constant(metas, tf.float32))
        det = out[0].numpy()[0]
        return det[det[:, 4] > 0], out[1:]

    def refined(self, boxes, class_ids, meta, maps, window) -> np.ndarray:
        """The class head's deltas of each box's class applied to it, clipped to the image's ``window``."""
        import tensorflow as tf

        from braintumor.mrcnn import box_coder

        d = self._deltas(tf.constant(boxes[None]), tf.constant(meta, tf.float32), maps).numpy()
        d = d[np.arange(len(boxes)), class_ids]
        out = box_coder.decode(boxes, d, self.config.BBOX_STD_DEV)
        return np.asarray(box_coder.clip(out, np.asarray(window, np.float32)), np.float32)

    def masks(self, boxes, meta, maps) -> np.ndarray:
        import tensorflow as tf

        return self._masks(tf.constant(boxes[None]), tf.constant(meta, tf.float32), maps).numpy()


def main(argv=None) -> int:
    import region_score_sweep as S

    from braintumor import metrics as M
    from braintumor.inference import load_predictor
    from braintumor.mrcnn.detection import window_from_meta
    from braintumor.mrcnn.inputs import mold_inputs, unmold_detections
    from braintumor.region_score import load_region_score
    from outline_ceiling import false_outlines, single_region_figures

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="a release or a training checkpoint")
    ap.add_argument("--mask-threshold", type=float, default=0.4)
    ap.add_argument("--region-score", required=True)
    ap.add_argument("--region-weight", type=float, required=True)
    ap.add_argument("--operating-point", type=float, required=True)
    ap.add_argument("--scales", default="1.15,1.3", help="the larger mask boxes, times the detection's")
    ap.add_argument("--limit", type=int, default=None, help="the first N images of each set (a quick look)")
    ap.add_argument("--kinds", default=None, help="only these, comma-separated (thesis, none, meningioma, glioma, "
                                                  "pituitary; default all)")
    ap.add_argument("--out", default=str(ROOT / "logs/box_refine_probe"))
    args = ap.parse_args(argv)
    weights = Path(args.weights)
    rs = load_region_score(args.region_score)
    rs = replace(rs, weight=args.region_weight, _fn=None)
    predictor = S.pass_predictor(weights, rs.detector_floor, mask_threshold=args.mask_threshold)
    model = predictor.load()
    config = predictor.config
    heads = Heads(model)
    secondary = float(S.model_settings(weights)[0].DETECTION_SECONDARY_MIN_CONFIDENCE)  # the pass's is 0
    variants = ["as is", "refine twice"] + [f"mask box x{s}" for s in args.scales.split(",")]
    rows: dict[str, dict[str, list]] = {v: {} for v in variants}
    t0, n = time.perf_counter(), 0
    for source, ds, ids in S.val_sets():
        for i in ids[:args.limit] if args.limit else ids:
            kind = S.figshare_kind(ds, i) if source == "figshare" else source
            if args.kinds and kind not in args.kinds.split(","):
                continue
            image = ds.load_image(i)
            gt_masks, gt_ids = ds.load_mask(i)
            molded, metas, infos = mold_inputs([image], config)
            det, maps = heads.base(molded, metas)
            window = np.asarray(window_from_meta(metas.astype(np.float32)))[0]
            cls = det[:, 4].astype(np.int32)
            for v in variants:
                boxes = det[:, :4].astype(np.float32)
                mask_boxes = boxes
                if v == "refine twice" and len(boxes):
                    boxes = mask_boxes = heads.refined(boxes, cls, metas, maps, window)
                elif v.startswith("mask box") and len(boxes):
                    mask_boxes = scaled_boxes(boxes, float(v.split("x")[-1]))
                masks = heads.masks(mask_boxes, metas, maps) if len(boxes) else np.zeros((0, 1, 1, config.NUM_CLASSES), np.float32)
                d = np.concatenate([mask_boxes, det[:, 4:6]], 1) if len(boxes) else np.zeros((0, 6), np.float32)
                r = unmold_detections(d, masks, infos[0], mask_threshold=args.mask_threshold)
                if v.startswith("mask box") and len(r["rois"]):  # the region's box stays the detection's own
                    own = unmold_detections(np.concatenate([boxes, det[:, 4:6]], 1), masks, infos[0])["rois"]
                    if len(own) == len(r["rois"]):
                        r["rois"] = own
                rec = M.ImageRecord.from_arrays(f"{source}/{i}", np.asarray(gt_masks, bool), np.asarray(gt_ids), r,
                                                index=i)
                p = rs.score_regions({"rois": rec.boxes}, molded, infos[0]) if len(rec.scores) else np.zeros(0)
                kept = S.rescored(rec, p, rs, secondary)
                row = {"shown_dice": M.segmentation_summary([kept], args.operating_point)["dice_mean"]
                       if kind != "none" else None, "false": false_outlines(kept, args.operating_point)}
                if kind != "none":
                    combined = rs.combine(rec.scores, p) if len(rec.scores) else np.zeros(0, np.float32)
                    row.update(single_region_figures(rec, combined, args.operating_point))
                rows[v].setdefault(kind, []).append(row)
            n += 1
            if n % 50 == 0:
                print(f"  {n} images, {time.perf_counter() - t0:.0f} s", flush=True)
    report = {}
    for v in variants:
        report[v] = {}
        by = rows[v]
        figshare = [r for k in ("meningioma", "glioma", "pituitary") for r in by.get(k, [])]
        if figshare:
            by["figshare"] = figshare
        for kind, rr in by.items():
            if kind == "none":
                report[v][kind] = {"images": len(rr), "at_op": int(sum(r["false"] > 0 for r in rr))}
                continue
            report[v][kind] = {"scans": len(rr), "shown_dice": round(float(np.mean([r["shown_dice"] for r in rr])), 4),
                               "oracle_dice": round(float(np.mean([r["oracle_dice"] for r in rr])), 4),
                               "region_fits": int(sum(r["some_on_tumor"] for r in rr)),
                               "box_iou_0.5": int(sum(r["best_box_iou"] >= 0.5 for r in rr)),
                               "false_outlines": int(sum(r["false"] for r in rr))}
        print(f"{v:14s} {json.dumps(report[v])}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{weights.parent.name}_{weights.stem}_w{args.region_weight:g}.json"
    path.write_text(json.dumps({"weights": str(weights), "region_score": args.region_score,
                                "weight": args.region_weight, "operating_point": args.operating_point,
                                "images": n, "variants": report}, indent=1) + "\n", encoding="utf-8")
    print(f"written {path} ({n} images, {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
