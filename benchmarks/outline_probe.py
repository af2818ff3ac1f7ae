"""Which detections should be outlined? Dice and mAP when only an image's best detections are kept.

The released model outlines on average 0.56 false regions per val scan (1.44 per Figshare
val slice), though nearly every scan holds one tumor (val: 62 tumors in 61 scans). This probe
runs the release once over a set (detections down to the evaluation floor 0.05, cached in
``--out``) and recomputes every figure of ``braintumor evaluate`` at the operating point
for each rule: all detections; the best k; those at least r × the best score; the best one
plus those scoring at least s (``DETECTION_SECONDARY_MIN_CONFIDENCE``). Image-level
sensitivity and specificity do not change: they depend on the best score only.

Usage (about 1 s an image on 2 cores)::

    .venv/bin/python benchmarks/outline_probe.py --set val --out logs/outline_probe
    .venv/bin/python benchmarks/outline_probe.py --set figshare --out logs/outline_probe
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RULES = [("all detections", {}), ("best 1", {"k": 1}), ("best 2", {"k": 2}), ("best 3", {"k": 3}),
         ("≥ 0.7 × best", {"rel": 0.7}), ("≥ 0.8 × best", {"rel": 0.8}),
         ("best + others ≥ 0.8", {"strong": 0.8}), ("best + others ≥ 0.9", {"strong": 0.9}),
         ("best + others ≥ 0.95", {"strong": 0.95})]


def records(which: str, data: Path, cache: Path):
    from braintumor.evaluate import EVAL_SCORE_FLOOR, collect_records

    path = cache / f"records_{which}.pkl"
    if path.is_file():
        return pickle.loads(path.read_bytes())
    from braintumor.data import load_split
    from braintumor.inference import load_predictor

    # the release, with no secondary bar: the rules are applied here
    predictor = load_predictor(None, min_confidence=EVAL_SCORE_FLOOR)
    predictor.config = predictor.config.replace(DETECTION_SECONDARY_MIN_CONFIDENCE=0.0)
    ds = (load_split(data / "brain_tumor_data", "val") if which == "val" else load_split(data / "figshare", "val"))
    recs, _ = collect_records(predictor, ds, label=which)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(recs))
    return recs


def keep(r, k=None, rel=None, strong=None):
    """The record with only the detections the rule keeps."""
    from braintumor.metrics import ImageRecord

    order = list(np.argsort(-r.scores, kind="stable"))
    if strong is not None:
        order = order[:1] + [i for i in order[1:] if r.scores[i] >= strong]
    if k is not None:
        order = order[:k]
    if rel is not None and order:
        order = [i for i in order if r.scores[i] >= rel * r.scores[order[0]]]
    idx = np.asarray(sorted(order), int)
    return ImageRecord(name=r.name, height=r.height, width=r.width, gt_rles=r.gt_rles, gt_class_ids=r.gt_class_ids,
                       gt_boxes=r.gt_boxes, rles=[r.rles[i] for i in idx], scores=r.scores[idx],
                       class_ids=r.class_ids[idx], boxes=r.boxes[idx].reshape(-1, 4), index=r.index)


def main(argv=None) -> int:
    from braintumor.evaluate import evaluate_records
    from braintumor.release import default_release, open_release

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", choices=["val", "figshare"], default="val")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(ROOT / "logs" / "outline_probe"))
    args = ap.parse_args(argv)
    threshold = open_release(default_release()).threshold
    recs = records(args.set, Path(args.data), Path(args.out))
    print(f"{args.set}: {len(recs)} images, outlines at the release's operating point {threshold:.4f}")
    print("rule | Dice | mask mAP@0.5 / @[.5:.95] | box mAP@0.5 | precision / recall | FP per image")
    for name, kw in RULES:
        res = evaluate_records([keep(r, **kw) for r in recs], threshold)
        seg, coco, inst = res["segmentation"], res["coco"], res["instances"]
        print(f"{name} | {seg['dice_mean']:.3f} | {coco['segm']['map50']:.3f} / {coco['segm']['map']:.3f} | "
              f"{coco['bbox']['map50']:.3f} | {inst['precision']:.3f} / {inst['recall']:.3f} | {inst['fp_per_image']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
