"""How much should the region scorer weigh against the detector? Val figures per ``weight``, from one pass.

One pass of the release over the val sets (61 thesis scans, 298 Figshare slices, 204 held-out tumor-free
slices), the detection layer down to the scorer's ``detector_floor`` with every region kept (float32); each
region gets its :class:`braintumor.region_score.RegionScore` probability. Then, for every ``weight`` asked
for, the regions are re-scored as ``detect()`` would (``RegionScore.rescore``'s rule: the combined score,
the best region plus others >= ``DETECTION_SECONDARY_MIN_CONFIDENCE``) and reported like ``after_nms`` of
``crop_rescore_probe.py``, at each operating point (:func:`operating_points`): the one ``evaluate`` chooses
(``op_on`` ``thesis``: the thesis val scans and the held-out tumor-free slices), the same rule held on both
val sets (``both``) and any ``--thresholds``: tumor-free slices at or above it, Dice per set at it, slices
outlined (Figshare: and on the tumor), thesis mask mAP@0.5, and the image-level rule (the release's head,
confident detection on the combined score) with the head's threshold re-chosen for that ranking as
``fit-image-score --figshare`` chooses it (val sensitivity, no thesis or Figshare val tumor green), with the
verdicts on each set.

The release's own weight and ``op_on`` ``thesis`` give its card's figures, as a check.

    .venv/bin/python benchmarks/region_score_sweep.py --region-score logs/region_score/X.h5 [--weights-grid 0,0.25,0.5] \
        [--thresholds 0.25,0.3]

The detection pass is cached in ``--cache`` (pickle of the records, per model and floor); another scorer costs
its own region scores only (a minute).

A training checkpoint is swept the same way (its run folder's config; the rule's figures only with a head of
its own, ``--image-score``); ``--mask-threshold 0.4`` outlines it as the release does:

    .venv/bin/python benchmarks/region_score_sweep.py --weights logs/RUN/mask_rcnn_tumor_0030.h5 \
        --region-score logs/region_score/X.h5 --mask-threshold 0.4 [--image-score HEAD.json]

``--region-score`` given more than once sweeps the scorers together: each region's probability is the
geometric mean of theirs (each on its own crops; the first one's floor), as ``detect()`` reads a
``braintumor.region_score.RegionScoreSet`` (evaluate/export ``--region-score`` repeated).
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

from braintumor.figshare import CATEGORIES as FIGSHARE_KINDS  # noqa: E402  (after the path)


def val_sets() -> list:
    """``[(source, dataset, image_ids)]`` of the three val sets."""
    from braintumor.data import load_split
    from braintumor.figshare import load_figshare
    from braintumor.tumor_free import load_tumor_free

    th, fs = load_split(SHARED / "brain_tumor_data", "val"), load_figshare(SHARED / "figshare", "val")
    free = load_tumor_free(SHARED / "tumor_free", "held-out")
    return [("thesis", th, list(th.image_ids)), ("figshare", fs, list(fs.image_ids)),
            ("none", free, list(free.image_ids))]


def figshare_kind(ds, i) -> str:
    """The Figshare tumor type of image ``i`` (its one annotated category)."""
    cats = list(ds.image_info[i].get("categories") or [])
    if len(cats) != 1:
        raise SystemExit(f"figshare image {i}: {len(cats)} categories, expected one")
    return str(cats[0])


def add_layer_args(ap) -> None:
    """``--max-instances`` and ``--detection-nms``: the detection layer of a pass, when not the model's own."""
    ap.add_argument("--max-instances", type=int, default=None,
                    help="the pass's DETECTION_MAX_INSTANCES (default: the model's, 20)")
    ap.add_argument("--detection-nms", type=float, default=None,
                    help="the pass's DETECTION_NMS_THRESHOLD (default: the model's, 0.3)")


def layer_overrides(max_instances: int | None, nms: float | None, mask_threshold: float | None = None) -> dict:
    """Config overrides of the detection layer and outline (empty: the model's own)."""
    out = {}
    if max_instances:
        out["DETECTION_MAX_INSTANCES"] = int(max_instances)
    if nms is not None:
        out["DETECTION_NMS_THRESHOLD"] = float(nms)
    if mask_threshold is not None:
        out["DETECTION_MASK_THRESHOLD"] = float(mask_threshold)
    return out


def layer_tag(max_instances: int | None, nms: float | None, mask_threshold: float | None = None) -> str:
    """File-name suffix of a pass's layer settings: ``_cap100_nms0.5_mask0.4``, or "" for the model's own."""
    return ((f"_cap{max_instances}" if max_instances else "") + (f"_nms{nms:g}" if nms is not None else "")
            + (f"_mask{mask_threshold:g}" if mask_threshold is not None else ""))


def cache_path(cache: Path, weights: Path, floor: float, max_instances: int | None = None,
               nms: float | None = None, mask_threshold: float | None = None) -> Path:
    """The detection pass's cache file: per model, floor and (when not the config's) cap, NMS and mask threshold."""
    tag = layer_tag(max_instances, nms, mask_threshold)
    return Path(cache) / f"detections_{weights.stem}_floor{floor:g}{tag}.pkl"


def pass_predictor(weights: Path, floor: float, max_instances: int | None = None, nms: float | None = None,
                   mask_threshold: float | None = None):
    """The model's predictor for a detection pass (a release or a training checkpoint): float32, no scorer,
    every region down to ``floor`` kept (``DETECTION_SECONDARY_MIN_CONFIDENCE`` 0), the detection layer as
    :func:`layer_overrides` says."""
    from braintumor.inference import load_predictor

    predictor = load_predictor(str(weights), min_confidence=floor, precision="float32")
    predictor.region_score = None
    predictor.config = predictor.config.replace(DETECTION_SECONDARY_MIN_CONFIDENCE=0.0,
                                                **layer_overrides(max_instances, nms, mask_threshold))
    return predictor


def model_settings(weights: Path, image_score: str | None = None):
    """``(config, head)`` of a release or a training checkpoint (its run folder's config.toml): the config the
    records are re-scored with, and the image-level head (``image_score``: a fit-image-score file; default the
    release's own, None for a checkpoint)."""
    from braintumor.image_score import load_image_score
    from braintumor.inference import config_for_checkpoint
    from braintumor.release import is_release, open_release

    release = open_release(weights) if is_release(weights) else None
    config = release.config() if release is not None else config_for_checkpoint(weights, None)
    if image_score:
        return config, load_image_score(image_score)
    return config, (release.image_score() if release is not None else None)


def detection_pass(predictor, sets: list, kind=None, log_every: int = 100) -> list:
    """``[(kind, source, image_id, ImageRecord)]`` of ``predictor`` over ``sets`` ``[(source, dataset, ids)]``;
    ``kind(source, dataset, id)`` names each row (default: the source)."""
    from braintumor import metrics as M

    out, t0 = [], time.perf_counter()
    for source, ds, ids in sets:
        for i in ids:
            masks, class_ids = ds.load_mask(i)
            r = predictor.detect([ds.load_image(i)])[0]
            rec = M.ImageRecord.from_arrays(f"{source}/{i}", np.asarray(masks, bool), np.asarray(class_ids), r, index=i)
            rec.image_features = r["image_features"]
            out.append((kind(source, ds, i) if kind else source, source, i, rec))
            if len(out) % log_every == 0:
                print(f"  {len(out)} images, {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def write_pickle(path: Path, rows) -> None:
    """``rows`` pickled to ``path``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(pickle.dumps(rows))
    tmp.replace(path)


def detections(weights: Path, floor: float, path: Path, max_instances: int | None = None,
               nms: float | None = None, mask_threshold: float | None = None) -> list:
    """``[(kind, source, image_id, ImageRecord with every region down to floor)]`` of the val sets, cached at
    ``path``; ``kind`` is the Figshare tumor type or the source.

    ``max_instances`` / ``nms``: the detection layer's ``DETECTION_MAX_INSTANCES`` and ``DETECTION_NMS_THRESHOLD``
    for this pass (None: the model's config)."""
    if path.is_file():
        return pickle.loads(path.read_bytes())
    predictor = pass_predictor(weights, floor, max_instances, nms, mask_threshold)
    out = detection_pass(predictor, val_sets(),
                         kind=lambda source, ds, i: figshare_kind(ds, i) if source == "figshare" else source)
    write_pickle(path, out)
    return out


def region_probabilities(rows: list, region_score, config) -> list:
    """Each record's regions scored by ``region_score`` (what ``detect()`` would compute for them): ``[[D]]``."""
    from braintumor.mrcnn.inputs import mold_inputs

    sets = {source: ds for source, ds, _ in val_sets()}
    out = []
    for _, source, i, rec in rows:
        if not len(rec.scores):
            out.append(np.zeros(0, np.float32))
            continue
        molded, _, infos = mold_inputs([sets[source].load_image(i)], config)
        out.append(region_score.score_regions({"rois": rec.boxes}, molded, infos[0]))
    return out


def mean_probabilities(per_scorer: list) -> list:
    """The geometric mean, region by region, of several scorers' probabilities (``[scorer][image][D]``)."""
    from braintumor.region_score import mean_probability

    if len(per_scorer) == 1:
        return per_scorer[0]
    return [mean_probability([p[i] for p in per_scorer]) for i in range(len(per_scorer[0]))]


def rescored(rec, region: np.ndarray, rs, secondary: float):
    """``rec`` with its regions re-scored and kept as :meth:`RegionScore.rescore` keeps them (floor 0 here: the
    operating point is applied by the metrics)."""
    from braintumor import metrics as M

    from braintumor.region_score import kept_order

    combined = rs.combine(rec.scores, region) if rs.weight > 0 else np.asarray(rec.scores, np.float32)
    order = kept_order(combined, 0.0, secondary)
    new = M.ImageRecord(rec.name, rec.height, rec.width, rec.gt_rles, rec.gt_class_ids, rec.gt_boxes,
                        [rec.rles[k] for k in order], combined[order].astype(np.float64), rec.class_ids[order],
                        rec.boxes[order], index=rec.index, image_features=rec.image_features)
    return new


def by_kind(rows: list, rs, secondary: float) -> dict[str, list]:
    """The pass's records re-scored as ``detect()`` keeps them (:func:`rescored`), grouped by kind (thesis, none,
    and the three Figshare types); ``rows``: ``[((kind, source, image_id, record), region probabilities)]``."""
    out: dict[str, list] = {}
    for (kind, _, _, rec), p in rows:
        out.setdefault(kind, []).append(rescored(rec, p, rs, secondary))
    return out


def operating_points(by: dict, fixed=()) -> list[tuple[str, float]]:
    """``[(how, threshold)]``: the operating point chosen as ``evaluate`` chooses it (``thesis``: the thesis val
    scans and the held-out tumor-free slices, sensitivity 0.95), the same rule held on both val sets (``both``:
    the lower of it and the threshold chosen on the Figshare val slices), and the ``fixed`` ones."""
    from braintumor import metrics as M

    free = [r.max_score for r in by["none"]]
    fs = [r.max_score for k in FIGSHARE_KINDS for r in by[k]]
    thesis = float(M.choose_operating_point([r.max_score for r in by["thesis"]], free)["robust_threshold"])
    both = min(thesis, float(M.choose_operating_point(fs, free)["robust_threshold"]))
    return [("thesis", thesis), ("both", both), *(("fixed", float(t)) for t in fixed)]


def figures(by: dict, weight: float, how: str, op: float, head) -> dict:
    """One row: the figures of the re-scored records ``by`` (:func:`by_kind`) with outlines from ``op``.

    ``figshare_on_tumor``: Figshare val slices with a region at ``op`` on the tumor (``image_level``'s overlap
    sensitivity). The rule's figures (``head`` not None): the head's threshold re-chosen for this ranking as
    ``fit-image-score --figshare`` chooses it (val sensitivity 0.96; no thesis or Figshare val tumor green at
    ``op``), verdicts tumor / suspected / uncertain / no tumor on each set."""
    from braintumor import metrics as M
    from braintumor.evaluate import image_rule_summary
    from braintumor.image_score import VERDICTS, choose_threshold

    free, th = by["none"], by["thesis"]
    fs = [r for k in FIGSHARE_KINDS for r in by[k]]
    row = {"weight": weight, "op_on": how, "operating_point": round(op, 4),
           "tumor_free_at_op": int(sum(r.outlined(op) for r in free))}
    for kind in ("thesis", *FIGSHARE_KINDS):
        row[f"{kind}_dice"] = round(M.segmentation_summary(by[kind], op)["dice_mean"], 4)
    row["figshare_dice"] = round(M.segmentation_summary(fs, op)["dice_mean"], 4)
    row["thesis_mask_map50"] = round(M.coco_map(th)["segm"]["map50"], 4)
    row["thesis_outlined"] = int(sum(r.outlined(op) for r in th))
    row["figshare_outlined"] = int(sum(r.outlined(op) for r in fs))
    row["figshare_on_tumor"] = int(round(M.image_level(fs, op)["sensitivity_overlap"] * len(fs)))
    if head is not None:
        def feats(recs):
            return np.stack([r.image_features for r in recs]), np.array([r.max_score for r in recs])

        h = choose_threshold(head, *feats(th), sensitivity=0.96, outline_threshold=op, no_green_also=(feats(fs),))
        rule, fs_rule = image_rule_summary(th + free, op, h), image_rule_summary(fs, op, h)
        row.update({"head_threshold": round(h.threshold, 4), "rule_sensitivity": rule["sensitivity"],
                    "rule_specificity": rule["specificity"], "tumor_free_flagged": rule["n_tumor_free_flagged"],
                    "figshare_rule_sensitivity": fs_rule["sensitivity"]})
        for name, r, key in (("thesis", rule, "tumor_images"), ("tumor_free", rule, "tumor_free_images"),
                             ("figshare", fs_rule, "tumor_images")):
            row[f"verdicts_{name}"] = [r["verdicts"][v][key] for v in VERDICTS]
    return row


def main(argv=None) -> int:
    from braintumor.region_score import load_region_score
    from braintumor.release.files import default_release

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="model file: a release (default: the release in models/) or a "
                                                   "training checkpoint")
    ap.add_argument("--region-score", required=True, action="append",
                    help="a region-score file (braintumor fit-region-score); repeated: their geometric mean")
    ap.add_argument("--image-score", default=None, metavar="FILE.json",
                    help="image-level head for the rule's figures (default: the release's own; none for a checkpoint)")
    ap.add_argument("--mask-threshold", type=float, default=None, metavar="P",
                    help="the pass's DETECTION_MASK_THRESHOLD (default: the model's; the release's is 0.4)")
    ap.add_argument("--weights-grid", default="0,0.25,0.35,0.5,0.65,0.75,1")
    ap.add_argument("--thresholds", default="", metavar="T1,T2",
                    help="operating points to report besides the two chosen ones (thesis val; both val sets)")
    ap.add_argument("--detector-floor", type=float, default=None,
                    help="the detection layer's floor (default: the scorer's own, 0.05)")
    add_layer_args(ap)
    ap.add_argument("--cache", default=str(ROOT / "logs/region_score"))
    args = ap.parse_args(argv)
    weights = Path(args.weights) if args.weights else default_release()
    scorers = [load_region_score(f) for f in args.region_score]
    if args.detector_floor is not None:
        scorers[0] = scorers[0].with_settings(detector_floor=args.detector_floor)
    rs = scorers[0]  # its floor is the pass's; its weight is swept
    config, head = model_settings(weights, args.image_score)
    secondary = float(config.DETECTION_SECONDARY_MIN_CONFIDENCE)
    layer = (args.max_instances, args.detection_nms, args.mask_threshold)
    t0 = time.perf_counter()
    dets = detections(weights, rs.detector_floor, cache_path(args.cache, weights, rs.detector_floor, *layer), *layer)
    t1 = time.perf_counter()
    probs = mean_probabilities([region_probabilities(dets, s, config) for s in scorers])
    print(f"{len(dets)} val images: detections {t1 - t0:.0f} s, region scores {time.perf_counter() - t1:.0f} s", flush=True)
    rows = list(zip(dets, probs))
    report = []
    fixed = [float(x) for x in args.thresholds.split(",")] if args.thresholds else []
    for a in (float(x) for x in args.weights_grid.split(",")):
        by = by_kind(rows, rs.with_settings(weight=a), secondary)
        for how, op in operating_points(by, fixed):
            row = figures(by, a, how, op, head)
            report.append(row)
            print(json.dumps(row), flush=True)
    floor = "" if args.detector_floor is None else f"_floor{rs.detector_floor:g}"
    floor += layer_tag(*layer)
    model = "" if args.weights is None else f"_{weights.parent.name}_{weights.stem}"
    out = Path(args.cache) / f"sweep_{'+'.join(Path(f).stem for f in args.region_score)}{model}{floor}.json"
    out.write_text(json.dumps({"weights": weights.name, "region_score": args.region_score, "rows": report}, indent=1)
                   + "\n", encoding="utf-8")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
