"""What the region scorer adds to ``detect()``: the release with and without it, in one run, same images.

Issue 14: nothing gets slower at inference (detect time per image within 10 % of today's at the same size).
Two predictors of one release: ``plain`` (its own detections, the operating point as floor) and ``scored``
(the detection layer down to the scorer's floor, every region's crop scored, the combined score). Each
image is detected by both, alternating which goes first; the first pass over the images is a warm-up (graph
tracing) and is not counted. Reports the median seconds an image of each and their ratio, and the regions
the scorer read per image.

    .venv/bin/python benchmarks/region_score_speed.py --region-score FILE.h5 [--region-score FILE2.h5] [--images 30]
        [--precision float32]
        [--detector-floor 0.01 --max-instances 100 --detection-nms 0.5]   # a larger pool for the scored one

Run it alone: on 2 cores anything beside it moves the figures.
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


def main(argv=None) -> int:
    import region_score_sweep as S

    from braintumor.data import load_split
    from braintumor.inference import load_predictor
    from braintumor.region_score import chosen
    from braintumor.release.files import default_release

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="release (default: the one in models/)")
    ap.add_argument("--region-score", default=None, action="append",
                    help="scorer file (default: the release's own); repeated: the scorers read as one (a set)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/brain_tumor_data"))
    ap.add_argument("--images", type=int, default=30, help="thesis val images (default 30)")
    ap.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16", "auto"])
    S.add_layer_args(ap)  # the scored predictor's detection layer
    ap.add_argument("--detector-floor", type=float, default=None,
                    help="the scored predictor's detection floor (default: the scorer's)")
    ap.add_argument("--out", default=None, help="JSON file to write the figures to")
    args = ap.parse_args(argv)
    weights = Path(args.weights) if args.weights else default_release()
    plain = load_predictor(str(weights), precision=args.precision)
    scored = load_predictor(str(weights), precision=args.precision)
    scorer = chosen(args.region_score) if args.region_score else scored.region_score
    if scorer is None:
        raise SystemExit(f"{weights.name} has no region scorer: give --region-score")
    if args.detector_floor is not None:
        from dataclasses import replace

        scorer = replace(scorer, detector_floor=float(args.detector_floor))
    plain.region_score, scored.region_score = None, scorer
    layer = S.layer_overrides(args.max_instances, args.detection_nms)
    if layer:
        scored.config = scored.config.replace(**layer)
    regions = []  # regions the scorer reads per image: all the detection layer keeps down to its floor
    score_regions = scorer.score_regions
    scorer.score_regions = lambda r, molded, info: (regions.append(len(r["rois"])), score_regions(r, molded, info))[1]
    val = load_split(Path(args.data), "val")
    images = [val.load_image(i) for i in list(val.image_ids)[:args.images]]
    for im in images[:2]:  # warm-up: graph tracing of both
        plain.detect([im]), scored.detect([im])
    times = {"plain": [], "scored": []}
    regions.clear()
    for k, im in enumerate(images):
        order = (("plain", plain), ("scored", scored)) if k % 2 == 0 else (("scored", scored), ("plain", plain))
        for name, pred in order:
            t0 = time.perf_counter()
            pred.detect([im])
            times[name].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    report = {"weights": weights.name, "precision": plain.precision, "images": len(images), "scored_layer": layer,
              "detector_floor": scorer.detector_floor,
              "median_seconds": {k: round(v, 3) for k, v in med.items()},
              "ratio_scored_to_plain": round(med["scored"] / med["plain"], 3),
              "regions_scored_per_image_median": float(np.median(regions)) if regions else 0.0}
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
