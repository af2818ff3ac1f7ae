"""How far can choosing a better region take Dice? The ceiling of ranking, per val set and tumor type.

From the detection pass of ``region_score_sweep.py`` (its cache: every region down to the scorer's floor,
float32) and a region scorer at ``--region-weight``, per tumor scan:

- **shown**: Dice of what ``evaluate`` scores (the kept regions at the operating point; 0 when none reaches it);
- **best on the tumor**: the scan's top region (combined score) has mask IoU >= 0.5 with the tumor; of
  those, how many reach the operating point, and their mean Dice (the outline's quality when the choice is right);
- **oracle**: Dice of the single region that fits the tumor best, whatever the scores (every region down to
  the floor): what a perfect ranker with perfect thresholds could show with these outlines;
- **some region on the tumor**: any region at mask IoU >= 0.5.

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
    """One scan's row: mask IoU and Dice of each region with the tumor's union, the top region's, the oracle's."""
    from pycocotools import mask as mask_utils

    gt = mask_utils.merge(list(rec.gt_rles)) if len(rec.gt_rles) > 1 else rec.gt_rles[0]
    g = float(mask_utils.area(gt))
    inter = np.array([float(mask_utils.area(mask_utils.merge([r, gt], intersect=True))) for r in rec.rles])
    area = np.array([float(mask_utils.area(r)) for r in rec.rles])
    dice = 2 * inter / np.maximum(area + g, 1.0)
    iou = inter / np.maximum(area + g - inter, 1.0)
    top = int(np.argmax(combined)) if len(combined) else -1
    return {"top_on_tumor": bool(top >= 0 and iou[top] >= 0.5), "top_at_op": bool(top >= 0 and combined[top] >= op),
            "top_dice": float(dice[top]) if top >= 0 else 0.0, "oracle_dice": float(dice.max()) if len(dice) else 0.0,
            "some_on_tumor": bool(len(iou) and iou.max() >= 0.5)}


def summary(rows: list[dict], shown: list[float]) -> dict:
    on = [r for r in rows if r["top_on_tumor"]]
    on_op = [r for r in on if r["top_at_op"]]
    return {"scans": len(rows), "shown_dice": round(float(np.mean(shown)), 4),
            "top_on_tumor": len(on), "top_on_tumor_at_op": len(on_op),
            "dice_when_top_on_tumor": round(float(np.mean([r["top_dice"] for r in on])), 4) if on else None,
            "oracle_dice": round(float(np.mean([r["oracle_dice"] for r in rows])), 4),
            "some_region_on_tumor": int(sum(r["some_on_tumor"] for r in rows))}


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
    for (kind, _, _, rec), p in zip(dets, probs):
        if kind == "none":
            continue
        combined = rs.combine(rec.scores, p) if rs.weight > 0 else np.asarray(rec.scores, np.float32)
        rows, shown = by.setdefault(kind, ([], []))
        rows.append(single_region_figures(rec, combined, args.operating_point))
        shown.append(M.segmentation_summary([S.rescored(rec, p, rs, secondary)], args.operating_point)["dice_mean"])
    report = {kind: summary(*v) for kind, v in by.items()}
    fs = [k for k in by if k != "thesis"]
    report["figshare"] = summary([r for k in fs for r in by[k][0]], [d for k in fs for d in by[k][1]])
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
