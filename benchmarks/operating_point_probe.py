"""The operating point chosen on both val sets: a release's figures at candidate outline thresholds and heads.

The release's operating point (``DETECTION_MIN_CONFIDENCE``, the score from which a region is
outlined) was chosen on the 61 thesis val scans and the 204 held-out tumor-free slices only:
the detector alone flags at least 95 % of the scans, then the fewest tumor-free slices. The
298 Figshare val slices had no say. This probe reads the detections of
``benchmarks/flagged_outline_probe.py`` (the same cache: one float32 pass over each val set with
detections down to 0.05) and recomputes ``braintumor evaluate``'s figures for each candidate
threshold, with the release's image-level head or with other heads (``--head FILE.json`` from
``braintumor fit-image-score``): Dice on both sets, the detector's sensitivity on both sets, and
the verdicts (tumor / suspected / uncertain / no tumor) on tumors and on healthy slices.

Usage (seconds once the cache exists; about 10 minutes on 2 cores without it)::

    .venv/bin/python benchmarks/operating_point_probe.py --weights models/tumorfs-resnet101-f6368f50.h5 \\
        [--head logs/head_all.json ...] [--thresholds 0.25,0.3,0.35,0.3814,0.45]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

KINDS = ("tumor", "suspected", "uncertain", "no_tumor")


def figures(recs, free, names, groups, threshold: float, head) -> dict:
    """One candidate's figures on one val set (``free``: its tumor-free records, may be empty)."""
    from braintumor.evaluate import evaluate_records

    res = evaluate_records(recs, threshold, free, names, image_score=head, groups=groups)
    img, rule = res["image_level"], res["image_rule"] or {}
    v = rule.get("verdicts", {})
    tumor = [r for r in recs if r.has_tumor]
    return {
        "dice": round(res["segmentation"]["dice_mean"], 4),
        "detector_sensitivity": round(float(np.mean([r.outlined(threshold) for r in tumor])), 4),
        "on_the_tumor": round(img["sensitivity_overlap"], 4),
        "tumor_free_outlined": sum(r.outlined(threshold) for r in free),
        "rule_sensitivity": rule.get("sensitivity"),
        "rule_tumor_free_flagged": rule.get("n_tumor_free_flagged"),
        "verdicts_tumor": [v[k]["tumor_images"] for k in KINDS] if v else None,
        "verdicts_tumor_free": [v[k]["tumor_free_images"] for k in KINDS] if v and free else None,
        "by_category_dice": {g: round(b["dice_mean"], 3) for g, b in (res.get("by_category") or {}).items()},
    }


def main(argv=None) -> int:
    from flagged_outline_probe import records

    from braintumor.image_score import load_image_score
    from braintumor.release import default_release, open_release

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="a release (default: the one in models/)")
    ap.add_argument("--head", action="append", default=[], help="another image-level head (JSON); repeatable")
    ap.add_argument("--thresholds", default="0.2,0.25,0.3,0.35,0.3814,0.45,0.5", help="outline thresholds")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--cache", default=str(ROOT / "logs" / "flagged_outline_probe"))
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    rel = open_release(args.weights or default_release())
    heads = [("release", rel.image_score())] + [(Path(h).name, load_image_score(h)) for h in args.head]
    sets = {w: records(w, str(rel.head), Path(args.data), Path(args.cache)) for w in ("val", "figshare")}
    rows = []
    for label, head in heads:
        print(f"\nhead {label} (threshold {head.threshold:.4f}); release operating point {rel.threshold:.4f}")
        print("outline at | val Dice | Figshare Dice | detector sens. val / Figshare | on the tumor val / Figshare | "
              "tumor-free outlined | rule sens. val / Figshare | rule flags tumor-free | verdicts val | "
              "verdicts Figshare | verdicts tumor-free (tumor/suspected/uncertain/no)")
        for t in (float(x) for x in args.thresholds.split(",")):
            recs, free, groups, names = sets["val"]
            val = figures(recs, free, names, groups, t, head)
            recs, _, groups, names = sets["figshare"]
            fs = figures(recs, [], names, groups, t, head)
            rows.append({"head": label, "threshold": t, "val": val, "figshare": fs})
            slash = lambda x: "/".join(map(str, x)) if x else "-"  # noqa: E731
            print(f"{t:g} | {val['dice']:.3f} | {fs['dice']:.3f} | {val['detector_sensitivity']:.3f} / "
                  f"{fs['detector_sensitivity']:.3f} | {val['on_the_tumor']:.3f} / {fs['on_the_tumor']:.3f} | "
                  f"{val['tumor_free_outlined']} | {val['rule_sensitivity']:.3f} / {fs['rule_sensitivity']:.3f} | "
                  f"{val['rule_tumor_free_flagged']} | {slash(val['verdicts_tumor'])} | {slash(fs['verdicts_tumor'])} | "
                  f"{slash(val['verdicts_tumor_free'])}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"weights": str(rel.head), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
