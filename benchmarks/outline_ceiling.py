"""How far can choosing a better region take Dice? The ceiling of ranking, per val set and tumor type.

From the detection pass of ``region_score_sweep.py`` (its cache: every region down to the scorer's floor,
float32) and a region scorer at ``--region-weight``, per tumor scan:

- **shown**: Dice of what ``evaluate`` scores (the kept regions at the operating point; 0 when none reaches it);
- **best on the tumor**: the scan's top region (combined score) has mask IoU >= 0.5 with the tumor; of
  those, how many reach the operating point, and their mean Dice (the outline's quality when the choice is right);
- **oracle**: Dice of the single region that fits the tumor best, whatever the scores (every region down to
  the floor): what a perfect ranker with perfect thresholds could show with these outlines;
- **some region on the tumor**: any region at mask IoU >= 0.5.

And where a scan has no fitting region, whether the box or the mask is short (``boxes``: the best box IoU of
any region with the tumor's box, in three bins; the mean mask IoU of the best-boxed region where that box fits
at IoU >= 0.7), and the **false outlines**: regions shown at the operating point (as ``detect()`` keeps them)
that do not touch the tumor (on the tumor-free images: every region shown).

If the oracle is below a target, ranking cannot reach it: the outlines themselves must get better.

    .venv/bin/python benchmarks/outline_ceiling.py --region-score logs/region_score/X.h5 --region-weight 0.3 \\
        --operating-point 0.3008

A training checkpoint reads the sweep's pass of it: ``--weights logs/RUN/mask_rcnn_tumor_0030.h5 --mask-threshold 0.4``.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def single_region_figures(rec, combined: np.ndarray, op: float) -> dict:
    """One scan's row: mask IoU and Dice of each region with the tumor's union, the top region's, the oracle's;
    the best box IoU with the box round the tumor's instances and that region's mask IoU."""
    from pycocotools import mask as mask_utils

    from braintumor.boxes import box_iou

    gt = mask_utils.merge(list(rec.gt_rles)) if len(rec.gt_rles) > 1 else rec.gt_rles[0]
    g = float(mask_utils.area(gt))
    inter = np.array([float(mask_utils.area(mask_utils.merge([r, gt], intersect=True))) for r in rec.rles])
    area = np.array([float(mask_utils.area(r)) for r in rec.rles])
    dice = 2 * inter / np.maximum(area + g, 1.0)
    iou = inter / np.maximum(area + g - inter, 1.0)
    gb = np.asarray(rec.gt_boxes, np.float64)
    tumor_box = np.array([[gb[:, 0].min(), gb[:, 1].min(), gb[:, 2].max(), gb[:, 3].max()]])
    biou = box_iou(np.asarray(rec.boxes, np.float64).reshape(-1, 4), tumor_box)[:, 0]
    best_box = int(np.argmax(biou)) if len(biou) else -1
    top = int(np.argmax(combined)) if len(combined) else -1
    return {"top_on_tumor": bool(top >= 0 and iou[top] >= 0.5), "top_at_op": bool(top >= 0 and combined[top] >= op),
            "top_dice": float(dice[top]) if top >= 0 else 0.0, "oracle_dice": float(dice.max()) if len(dice) else 0.0,
            "some_on_tumor": bool(len(iou) and iou.max() >= 0.5),
            "best_box_iou": float(biou[best_box]) if best_box >= 0 else 0.0,
            "best_box_mask_iou": float(iou[best_box]) if best_box >= 0 else 0.0}


def false_outlines(shown, op: float) -> int:
    """The regions of ``shown`` (a record as ``detect()`` keeps its regions) at ``op`` that do not touch the
    tumor; on a tumor-free image every region at ``op``."""
    from pycocotools import mask as mask_utils

    at_op = [r for r, s in zip(shown.rles, shown.scores) if s >= op]
    if not len(shown.gt_rles):
        return len(at_op)
    gt = mask_utils.merge(list(shown.gt_rles)) if len(shown.gt_rles) > 1 else shown.gt_rles[0]
    return int(sum(mask_utils.area(mask_utils.merge([r, gt], intersect=True)) == 0 for r in at_op))


def summary(rows: list[dict], shown: list[float]) -> dict:
    on = [r for r in rows if r["top_on_tumor"]]
    on_op = [r for r in on if r["top_at_op"]]
    return {"scans": len(rows), "shown_dice": round(float(np.mean(shown)), 4),
            "top_on_tumor": len(on), "top_on_tumor_at_op": len(on_op),
            "dice_when_top_on_tumor": round(float(np.mean([r["top_dice"] for r in on])), 4) if on else None,
            "oracle_dice": round(float(np.mean([r["oracle_dice"] for r in rows])), 4),
            "some_region_on_tumor": int(sum(r["some_on_tumor"] for r in rows)),
            "boxes": box_summary(rows),
            "false_outlines": int(sum(r["false_outlines"] for r in rows)),
            "scans_with_false_outline": int(sum(r["false_outlines"] > 0 for r in rows))}


def box_summary(rows: list[dict]) -> dict:
    """Of the scans with no region on the tumor (mask IoU >= 0.5), how many have a box on it anyway (box IoU
    >= 0.5: the mask is short), a box at 0.3-0.5, or none above 0.3; and the mask IoU of the best-boxed region
    where that box fits at IoU >= 0.7 (the mask head's share when the box is right)."""
    unfit = [r for r in rows if not r["some_on_tumor"]]
    boxed = [r for r in rows if r["best_box_iou"] >= 0.7]
    return {"no_region_on_tumor": len(unfit),
            "box_but_no_mask": int(sum(r["best_box_iou"] >= 0.5 for r in unfit)),
            "box_iou_0.3_to_0.5": int(sum(0.3 <= r["best_box_iou"] < 0.5 for r in unfit)),
            "box_iou_below_0.3": int(sum(r["best_box_iou"] < 0.3 for r in unfit)),
            "box_iou_0.7_scans": len(boxed),
            "mask_iou_when_box_0.7": round(float(np.mean([r["best_box_mask_iou"] for r in boxed])), 4) if boxed else None}


def main(argv=None) -> int:
    import region_score_sweep as S

    from braintumor import metrics as M
    from braintumor.region_score import load_region_score
    from braintumor.release.files import default_release

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="model file: a release (default: the release in models/) or a "
                                                   "training checkpoint (its run folder's config)")
    ap.add_argument("--mask-threshold", type=float, default=None, metavar="P",
                    help="the pass's DETECTION_MASK_THRESHOLD, as given to region_score_sweep.py (default: the model's)")
    ap.add_argument("--region-score", required=True, help="a region-score file (braintumor fit-region-score)")
    ap.add_argument("--region-weight", type=float, required=True, help="0: the detector's own scores")
    ap.add_argument("--operating-point", type=float, required=True, help="the combined score a region is shown from")
    ap.add_argument("--detector-floor", type=float, default=None, help="the pass's floor (default: the scorer's)")
    S.add_layer_args(ap)
    ap.add_argument("--cache", default=str(ROOT / "logs/region_score"), help="region_score_sweep.py's cache folder")
    args = ap.parse_args(argv)
    weights = Path(args.weights) if args.weights else default_release()
    rs = load_region_score(args.region_score)
    rs = replace(rs, weight=args.region_weight, _fn=None,
                 detector_floor=rs.detector_floor if args.detector_floor is None else args.detector_floor)
    config, _ = S.model_settings(weights)
    secondary = float(config.DETECTION_SECONDARY_MIN_CONFIDENCE)
    layer = (args.max_instances, args.detection_nms, args.mask_threshold)
    dets = S.detections(weights, rs.detector_floor, S.cache_path(args.cache, weights, rs.detector_floor, *layer), *layer)
    probs = S.region_probabilities(dets, rs, config)
    by: dict[str, tuple[list, list]] = {}
    healthy = []
    for (kind, _, _, rec), p in zip(dets, probs):
        combined = rs.combine(rec.scores, p) if rs.weight > 0 else np.asarray(rec.scores, np.float32)
        kept = S.rescored(rec, p, rs, secondary)
        if kind == "none":
            healthy.append(false_outlines(kept, args.operating_point))
            continue
        rows, shown = by.setdefault(kind, ([], []))
        rows.append({**single_region_figures(rec, combined, args.operating_point),
                     "false_outlines": false_outlines(kept, args.operating_point)})
        shown.append(M.segmentation_summary([kept], args.operating_point)["dice_mean"])
    report = {kind: summary(*v) for kind, v in by.items()}
    fs = [k for k in by if k != "thesis"]
    report["figshare"] = summary([r for k in fs for r in by[k][0]], [d for k in fs for d in by[k][1]])
    report["tumor_free"] = {"images": len(healthy), "false_outlines": int(sum(healthy)),
                            "images_with_false_outline": int(sum(h > 0 for h in healthy))}
    for kind, row in report.items():
        print(f"{kind:10s} {json.dumps(row)}")
    model = "" if args.weights is None else f"_{weights.parent.name}_{weights.stem}"
    out = Path(args.cache) / (f"ceiling_{Path(args.region_score).stem}{model}_w{args.region_weight:g}"
                              f"_floor{rs.detector_floor:g}{S.layer_tag(*layer)}.json")
    out.write_text(json.dumps({"weights": weights.name, "region_score": args.region_score, "weight": args.region_weight,
                               "operating_point": args.operating_point, "sets": report}, indent=1) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
