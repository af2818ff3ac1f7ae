"""At what score should one region flag a scan by itself? The image-level rule per ``confident_detection`` level.

The verdict rule flags a scan when its best detection reaches ``confident_detection`` or the image-level head
reaches its threshold (:mod:`braintumor.image_score`). The level 0.9 was set for the detector's own scores;
with a region scorer the best score is the combined one (``detector^(1-w) x region^w``), which healthy slices
reach far less often. This probe reads, from one cached float32 pass of the release over the three val sets
(``region_score_sweep.py``'s pass: 61 thesis scans, 298 Figshare slices, 204 held-out tumor-free slices), for
every level asked for:

- the head's threshold chosen again as ``fit-image-score --threshold-of model --confident-detection C
  --sensitivity 0.96 --operating-point OP`` chooses it (on the 61 thesis scans alone);
- the rule on the thesis scans and the held-out tumor-free slices: sensitivity, healthy images flagged and the
  distinct slices among them (a slice counts when any of its copies is flagged);
- the rule on Figshare val: sensitivity, tumors not flagged per type and per held-out number block, verdicts;
- green "no tumor" answers on tumor scans (they cannot change with the level: a check).

    .venv/bin/python benchmarks/confident_probe.py [--region-score FILE.h5 --region-weight W] [--levels 0.9,0.5]

Default: the release's own scorer and weight. The pass is cached in ``--cache`` (``region_score_sweep.py``'s
file); the scorer's region probabilities cost a minute.
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

import region_score_sweep as sweep  # noqa: E402

KINDS = ("meningioma", "glioma", "pituitary")


def image_info(sets: dict, record) -> dict:
    """The dataset entry of a pass record (its name is ``source/image_id``)."""
    source, i = record.name.rsplit("/", 1)
    return sets[source].image_info[int(i)]


def level_row(by: dict, sets: dict, head, level: float, op: float, sensitivity: float) -> dict:
    """The rule's figures with ``confident_detection = level`` and the head's threshold chosen again on thesis val."""
    from braintumor.evaluate import image_rule_summary
    from braintumor.figshare import VAL_BLOCKS, slice_number
    from braintumor.image_score import choose_threshold

    th, free = by["thesis"], by["none"]
    h = choose_threshold(replace(head, confident_detection=level), np.stack([r.image_features for r in th]),
                         np.array([r.max_score for r in th]), sensitivity=sensitivity, outline_threshold=op)
    rule = image_rule_summary(th + free, op, h, slices=[None] * len(th) + [image_info(sets, r).get("slice")
                                                                          for r in free])
    fs = [r for k in KINDS for r in by[k]]
    fs_rule = image_rule_summary(fs, op, h)
    flagged = {x["name"]: x["verdict"] in ("tumor", "suspected") for x in fs_rule["per_image"]}
    missed = [r for r in fs if not flagged[r.name]]
    blocks = [f"{lo}-{hi}" for lo, hi in VAL_BLOCKS]

    def block(r) -> str:
        n = slice_number(image_info(sets, r)["path"])
        return next(b for b, (lo, hi) in zip(blocks, VAL_BLOCKS) if lo <= n <= hi)

    return {"confident_detection": level, "head_threshold": round(h.threshold, 4),
            "thesis_rule_sensitivity": rule["sensitivity"], "tumor_free_flagged": rule["n_tumor_free_flagged"],
            "tumor_free_flagged_slices": rule.get("n_tumor_free_flagged_slices"),
            "tumor_free_slices": rule.get("n_tumor_free_slices"), "rule_specificity": rule["specificity"],
            "figshare_rule_sensitivity": fs_rule["sensitivity"], "figshare_not_flagged": len(missed),
            "figshare_not_flagged_by_type": {k: sum(r in by[k] for r in missed) for k in KINDS},
            "figshare_not_flagged_by_block": {b: sum(block(r) == b for r in missed) for b in blocks},
            "figshare_verdicts": {v: n["tumor_images"] for v, n in fs_rule["verdicts"].items()},
            "tumor_free_verdicts": {v: n["tumor_free_images"] for v, n in rule["verdicts"].items()},
            "green_on_tumor": len(rule["green_on_tumor_images"]) + len(fs_rule["green_on_tumor_images"])}


def main(argv=None) -> int:
    from braintumor import metrics as M
    from braintumor.region_score import load_region_score
    from braintumor.release import open_release
    from braintumor.release.files import default_release

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="model file (default: the release)")
    ap.add_argument("--region-score", default=None, help="a region-score file (default: the release's own)")
    ap.add_argument("--region-weight", type=float, default=None, help="its weight (default: the scorer's own)")
    ap.add_argument("--levels", default="0.9,0.85,0.8,0.75,0.7,0.65,0.6,0.55,0.5,0.45,0.4,0.35")
    ap.add_argument("--sensitivity", type=float, default=0.96, help="thesis val sensitivity the head keeps")
    ap.add_argument("--cache", default=str(ROOT / "logs/region_score"))
    ap.add_argument("--out", default=None, help="JSON report (default: in --cache)")
    args = ap.parse_args(argv)
    weights = Path(args.weights) if args.weights else default_release()
    release = open_release(weights)
    head = release.image_score()
    rs = load_region_score(args.region_score) if args.region_score else release.region_score()
    if rs is None or head is None:
        raise SystemExit(f"{weights}: needs a region scorer (--region-score) and an embedded image-level head")
    if args.region_weight is not None:
        rs = replace(rs, weight=args.region_weight, _fn=None)
    config = release.config()
    dets = sweep.detections(weights, rs.detector_floor, sweep.cache_path(args.cache, weights, rs.detector_floor))
    by = sweep.by_kind(list(zip(dets, sweep.region_probabilities(dets, rs, config))), rs,
                 float(config.DETECTION_SECONDARY_MIN_CONFIDENCE))
    sets = {source: ds for source, ds, _ in sweep.val_sets()}
    op = float(M.choose_operating_point([r.max_score for r in by["thesis"]],
                                        [r.max_score for r in by["none"]])["robust_threshold"])
    print(f"operating point {op:.4f} (region weight {rs.weight:g})", flush=True)
    rows = []
    for level in (float(x) for x in args.levels.split(",")):
        rows.append(level_row(by, sets, head, level, op, args.sensitivity))
        print(json.dumps(rows[-1]), flush=True)
    name = Path(args.region_score).stem if args.region_score else "release"
    out = Path(args.out) if args.out else Path(args.cache) / f"confident_{weights.stem}_{name}_w{rs.weight:g}.json"
    out.write_text(json.dumps({"weights": weights.name, "region_score": args.region_score or "the release's",
                               "region_weight": rs.weight, "operating_point": round(op, 4), "rows": rows}, indent=1)
                   + "\n", encoding="utf-8")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
