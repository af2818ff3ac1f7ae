"""How low may a flagged scan's outline go? Figures of a release for candidate ``DETECTION_FLAGGED_MIN_CONFIDENCE``.

On a scan the image-level head flags, the app outlines regions down to
``DETECTION_FLAGGED_MIN_CONFIDENCE`` instead of the operating point (:mod:`braintumor.detect`).
Under ``DETECTION_SECONDARY_MIN_CONFIDENCE`` that adds at most the scan's best region, and only on
flagged scans: the rule's verdicts on healthy scans (green or not) cannot change, a flagged scan
moves from "suspected" (no outline) to "tumor" (outlined). What a lower bar costs is outlines in
the wrong place. This probe runs the release once over each val set (detections down to the
evaluation floor 0.05, float32, cached in ``--out``) and recomputes ``braintumor evaluate``'s figures
at the release's operating point for each candidate: Dice, mask mAP, the verdicts, and how many of
the regions the lower bar adds lie on the tumor.

Usage (about 1 s an image on 2 cores; the thesis val set with the 204 held-out tumor-free
slices, and the 298 Figshare val slices)::

    .venv/bin/python benchmarks/flagged_outline_probe.py --weights models/tumorfs-resnet101-f6368f50.h5  # (0d02451e, ced84004 then)
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CANDIDATES = (None, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05)  # None: no lower bar (the operating point everywhere)


def records(which: str, weights: str, data: Path, cache: Path):
    """``(records, tumor-free records, groups, class names)`` of one set, cached as a pickle."""
    path = cache / f"records_{which}.pkl"
    if path.is_file():
        return pickle.loads(path.read_bytes())
    from braintumor.data import load_split
    from braintumor.evaluate import EVAL_SCORE_FLOOR, collect_records, record_groups
    from braintumor.inference import load_predictor

    predictor = load_predictor(weights, min_confidence=EVAL_SCORE_FLOOR, precision="float32")
    ds = load_split(data / ("brain_tumor_data" if which == "val" else "figshare"), "val")
    recs, _ = collect_records(predictor, ds, label=which)
    free = []
    if which == "val":
        from braintumor.tumor_free import load_tumor_free

        free, _ = collect_records(predictor, load_tumor_free(data / "tumor_free", "held-out", ds.class_names),
                                  label="tumor-free")
    out = (recs, free, record_groups(recs, ds), list(ds.class_names))
    cache.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(out))
    return out


def added_on_tumor(res_off: dict, res_on: dict) -> tuple[int, int]:
    """``(regions the lower bar adds on tumor images, of them on the tumor)`` from two results' per-image rows."""
    off = {r["name"]: r for r in res_off["per_image"]}
    added = on = 0
    for r in res_on["per_image"]:
        if r["n_gt"] and r["n_det"] > off[r["name"]]["n_det"]:
            added += r["n_det"] - off[r["name"]]["n_det"]
            on += int(r["dice"] > 0)
    return added, on


def main(argv=None) -> int:
    from braintumor.evaluate import evaluate_records
    from braintumor.release import default_release, open_release

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="a release (default: the one in models/)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "logs" / "flagged_outline_probe"))
    args = ap.parse_args(argv)
    rel = open_release(args.weights or default_release())
    head, threshold = rel.image_score(), rel.threshold
    if head is None:
        raise SystemExit(f"{rel.head}: no image-level head, so no flagged scans")
    print(f"{rel.head.name}: operating point {threshold:.4f}, head threshold {head.threshold:.4f}")
    for which in ("val", "figshare"):
        recs, free, groups, names = records(which, str(rel.head), Path(args.data), Path(args.out))
        print(f"\n{which}: {len(recs)} images" + (f" + {len(free)} tumor-free" if free else ""))
        print("flagged bar | Dice | mask mAP@0.5 | outlined (any / on the tumor) | verdicts on tumors "
              "tumor/suspected/uncertain/no | on tumor-free | regions added on tumors (on the tumor)"
              + (" | glioma / meningioma / pituitary Dice" if which == "figshare" else ""))
        base = None
        for c in CANDIDATES:
            res = evaluate_records(recs, threshold, free, names, image_score=head, groups=groups,
                                   flagged_min_confidence=c)
            base = base or res
            v = res["image_rule"]["verdicts"]
            kinds = ("tumor", "suspected", "uncertain", "no_tumor")
            img = res["image_level"]
            added, on = added_on_tumor(base, res)
            by = res.get("by_category") or {}
            print(f"{'off' if c is None else c} | {res['segmentation']['dice_mean']:.3f} | "
                  f"{res['coco']['segm']['map50']:.3f} | {img['sensitivity_any']:.3f} / {img['sensitivity_overlap']:.3f} | "
                  + "/".join(str(v[k]["tumor_images"]) for k in kinds) + " | "
                  + "/".join(str(v[k]["tumor_free_images"]) for k in kinds) + f" | {added} ({on})"
                  + (" | " + " / ".join(f"{by[g]['dice_mean']:.3f}" for g in ("glioma", "meningioma", "pituitary")
                                        if g in by) if by else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
