"""The mask probability an outline starts at (``DETECTION_MASK_THRESHOLD``): Dice on both val sets.

A region's outline is the pixels where its mask head's 28 x 28 sigmoid output, resized to the
region's box, reaches a threshold; Mask R-CNN uses 0.5. The thesis val scans are outlined with
hand-drawn VIA polygons, the Figshare slices with pixel masks, and a model trained on both may
sit on one side of either. This probe runs a model once over each val set in float32 at its
operating point (the same regions ``evaluate`` outlines), keeps each region's mask
probabilities, and reports for each candidate threshold the mean Dice, the images it makes
better or worse than 0.5 (by more than 0.002) and, on Figshare, the Dice by tumor type.

It also reports the ceiling of the mask representation, with no model: each ground-truth mask
cropped to its box, resized to the training targets' ``MINI_MASK_SHAPE`` and then to
``MASK_SHAPE``, rounded, and pasted back into its box. Whatever the threshold, no 28 x 28 mask
head can outline better than that; ``ceiling_56`` is the same for a 56 x 56 head (mini masks of
112 x 112).

Usage (about 6 minutes on 2 cores alone; twice that beside a training run)::

    .venv/bin/python benchmarks/mask_threshold_probe.py [--weights models/tumorfs-resnet101-f6368f50.h5] \\
        [--data ../shared/data] [--thresholds 0.3,0.35,0.4,0.45,0.5,0.55,0.6] [--out logs/mask_threshold_probe]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETS = (("thesis_val", "brain_tumor_data"), ("figshare_val", "figshare"))


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two bool masks, as ``braintumor evaluate`` computes it."""
    from braintumor.metrics import dice_iou

    return dice_iou(pred, gt)[0]


def representation_ceiling(dataset, mini_shape, mask_shape) -> float:
    """Mean Dice of the ground truth sent through the training targets' two resizes and pasted back."""
    from braintumor.boxes import masks_to_boxes
    from braintumor.mrcnn.inputs import _resize_float, unmold_mask

    out = []
    for i in dataset.image_ids:
        masks, _ = dataset.load_mask(i)
        if masks.shape[2] == 0:
            continue
        pred = np.zeros(masks.shape[:2], bool)
        for k, box in enumerate(masks_to_boxes(masks)):
            y1, x1, y2, x2 = (int(v) for v in box)
            if y2 <= y1 or x2 <= x1:
                continue
            crop = masks[y1:y2, x1:x2, k].astype(np.float32)
            mini = (_resize_float(crop, *mini_shape) >= 0.5).astype(np.float32)
            target = np.round(_resize_float(mini, *mask_shape))
            pred |= unmold_mask(target, (y1, x1, y2, x2), masks.shape[:2])
        out.append(dice(pred, masks.any(axis=2)))
    return float(np.mean(out))


def soft_outline(model, image: np.ndarray, threshold: float, secondary: float) -> np.ndarray:
    """``float32 [H, W]``: the highest mask probability of the regions ``detect()`` keeps at ``threshold``."""
    from braintumor.mrcnn.inputs import keep_best_and_strong, mold_inputs, unmold_detections

    molded, metas, infos = mold_inputs([image], model.config)
    det, masks, _ = model._predict(molded, metas)
    r = keep_best_and_strong(unmold_detections(det[0], masks[0], infos[0], soft=True), secondary)
    keep = np.asarray(r["scores"]) >= threshold
    if not keep.any():
        return np.zeros(image.shape[:2], np.float32)
    return r["masks"][:, :, keep].max(axis=2)


def main(argv=None) -> int:
    from braintumor.data import load_split
    from braintumor.inference import load_predictor

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", help="release or checkpoint (default: the release)")
    p.add_argument("--data", default="../shared/data", help="folder holding brain_tumor_data/ and figshare/")
    p.add_argument("--thresholds", default="0.3,0.35,0.4,0.45,0.5,0.55,0.6")
    p.add_argument("--operating-point", type=float, help="outline regions from this score (default: the model's)")
    p.add_argument("--out", default="logs/mask_threshold_probe")
    args = p.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    if 0.5 not in thresholds:
        thresholds.append(0.5)
    thresholds.sort()
    base = thresholds.index(0.5)

    predictor = load_predictor(args.weights, precision="float32", min_confidence=0.05)
    op = float(args.operating_point if args.operating_point is not None else predictor.threshold)
    model = predictor.load()
    cfg = model.config
    secondary = float(cfg.DETECTION_SECONDARY_MIN_CONFIDENCE)
    report = {"weights": str(predictor.weights_path), "operating_point": op, "thresholds": thresholds, "sets": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for key, folder in SETS:
        ds = load_split(Path(args.data) / folder, "val", class_map=cfg.CLASS_MAP)  # the model's own mapping
        t0 = time.perf_counter()
        rows, groups = [], []
        for i in ds.image_ids:
            gt_masks, _ = ds.load_mask(i)
            gt = gt_masks.any(axis=2)
            soft = soft_outline(model, ds.load_image(i), op, secondary)
            rows.append([dice(soft >= t, gt) for t in thresholds])
            cats = ds.image_info[i].get("categories")  # as braintumor.evaluate.record_groups
            groups.append("+".join(cats) if cats else None)
        rows = np.asarray(rows)
        delta = rows - rows[:, [base]]
        entry = {
            "images": len(rows), "seconds": round(time.perf_counter() - t0, 1),
            "dice_mean": {f"{t:g}": round(float(rows[:, k].mean()), 4) for k, t in enumerate(thresholds)},
            "better_than_0.5": {f"{t:g}": int((delta[:, k] > 0.002).sum()) for k, t in enumerate(thresholds)},
            "worse_than_0.5": {f"{t:g}": int((delta[:, k] < -0.002).sum()) for k, t in enumerate(thresholds)},
            "ceiling_28": round(representation_ceiling(ds, cfg.MINI_MASK_SHAPE, cfg.MASK_SHAPE), 4),
            "ceiling_56": round(representation_ceiling(ds, (112, 112), (56, 56)), 4),
        }
        if any(groups):
            entry["dice_by_category"] = {
                g: {f"{t:g}": round(float(rows[[x == g for x in groups], k].mean()), 4) for k, t in enumerate(thresholds)}
                for g in sorted({g for g in groups if g})}
        report["sets"][key] = entry
        np.save(out / f"{key}_dice.npy", rows)
        print(key, json.dumps(entry), flush=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"written: {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
