"""Does a ranker that sees each region's outline choose better from a pool of regions? Fit on training, read on val.

The region scorers so far read grey crops around a region's box and were fitted on proposals labelled by box
IoU; over a pool of 50 regions an image (floor 0.01, NMS 0.5) none puts the region that fits a Figshare glioma on
top (README: "A larger pool of regions"). This probe fits the same CNN (:func:`braintumor.region_score.build_scorer`)
with one more input channel, the region's **outline** (its mask, 1 inside, cropped in the same square as the
first context's crop), on the pool's own regions of the training images (``pool_pass.py``'s pickle), each
labelled by its **mask** IoU with the best-matching tumor (``--labels hard``: >= 0.5 is 1, < 0.3 is 0, between
left out; ``soft``: the IoU itself is the cross-entropy's target, every region weighing the same). Then over the
val pool at the same layer (``region_score_sweep.py``'s cached pass) it reports, per ``weight`` of
``detector ** (1 - w) * ranker ** w`` (and with ``--beside`` a region scorer, per pair ``a:b`` of
``detector ** (1 - a - b) * scorer ** a * ranker ** b``), the sweep's figures (``region_score_sweep.figures``)
and how many scans' top region lies on the tumor (``outline_ceiling.single_region_figures``).

    .venv/bin/python benchmarks/outline_ranker_probe.py --max-instances 50 --detection-nms 0.5 [--labels soft] \
        [--beside logs/region_score/rs_f1_t2_c1.5-3_e8_s0.h5 --weights-grid 0.5]

Features of each pass are cached in ``logs/region_score_cache/outline_{train,val}_*.npz`` (float16 crops); the
ranker is saved in ``--cache`` as ``outline_ranker_*.h5`` (a region-score file whose ``context`` lists the image
crops only: the outline channel is this probe's, :func:`load_ranker` reads it) and its figures as ``.json``.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

CONTEXTS = (1.5, 3.0)  # the image crops' contexts (the two-crop scorer's)


def region_features(image: np.ndarray, rec, config, size: int, contexts=CONTEXTS) -> tuple[np.ndarray, np.ndarray]:
    """One image's regions -> ``(crops float32 [D, size, size, len(contexts) + 1], geometry [D, 4])``: the region
    scorer's crops and, last, the region's outline cropped in the first context's square."""
    import tensorflow as tf
    from pycocotools import mask as mask_utils

    from braintumor.mrcnn.inputs import mold_inputs
    from braintumor.region_score import crop_squares, from_molded_frame, region_crops, to_molded_frame

    molded, _, infos = mold_inputs([image], config)
    boxes = to_molded_frame(rec.boxes, infos[0])
    crops, geometry = region_crops(molded, boxes, size, contexts)
    squares = from_molded_frame(crop_squares(boxes, *molded.shape[1:3], contexts[0]), infos[0])
    masks = np.asarray(mask_utils.decode(list(rec.rles)), np.float32).reshape(rec.height, rec.width, -1)
    outline = tf.image.crop_and_resize(np.moveaxis(masks, -1, 0)[..., None], squares, np.arange(len(squares), dtype=np.int32),
                                       (size, size), extrapolation_value=0.0).numpy()
    return np.concatenate([crops, outline], -1), geometry


def mask_iou(rec) -> np.ndarray:
    """``[D]`` each region's mask IoU with its best-matching tumor (0 on a tumor-free image)."""
    from pycocotools import mask as mask_utils

    if not len(rec.rles) or not len(rec.gt_rles):
        return np.zeros(len(rec.rles), np.float32)
    iou = np.asarray(mask_utils.iou(list(rec.rles), list(rec.gt_rles), [0] * len(rec.gt_rles)), np.float64)
    return iou.reshape(len(rec.rles), len(rec.gt_rles)).max(1).astype(np.float32)


def pass_features(rows: list, datasets: dict, config, size: int, path: Path) -> dict[str, np.ndarray]:
    """Features of every region of a pass ``[(kind, source, image_id, ImageRecord)]``, cached at ``path`` (.npz
    of ``crops`` float16, ``geometry``, ``score``, ``iou``, ``image``)."""
    if path.is_file():
        return dict(np.load(path))
    out: dict[str, list] = {k: [] for k in ("crops", "geometry", "score", "iou", "image")}
    t0 = time.perf_counter()
    for n, (_, source, i, rec) in enumerate(rows):
        if len(rec.rles):
            crops, geometry = region_features(datasets[source].load_image(i), rec, config, size)
            out["crops"].append(crops.astype(np.float16))
            out["geometry"].append(geometry)
            out["score"].append(np.asarray(rec.scores, np.float32))
            out["iou"].append(mask_iou(rec))
            out["image"].append(np.full(len(rec.rles), n, np.int32))
        if (n + 1) % 200 == 0:
            print(f"  features: {n + 1}/{len(rows)} images, {time.perf_counter() - t0:.0f} s", flush=True)
    arrays = {k: np.concatenate(v) for k, v in out.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return arrays


def load_ranker(path: Path):
    """A ranker this probe saved: a :class:`RegionScore` whose model reads one channel more than its contexts."""
    import h5py

    from braintumor.region_score import RegionScore, build_scorer, contexts_of

    with h5py.File(path, "r") as f:
        size, widths = int(f.attrs["size"]), tuple(int(c) for c in f.attrs["widths"])
        contexts = contexts_of(f.attrs["context"])
        model = build_scorer(size, widths, len(contexts) + 1)
        model.set_weights([np.asarray(f["weights"][k][()], np.float32) for k in sorted(f["weights"])])
        return RegionScore(model, size=size, context=contexts, widths=widths, weight=float(f.attrs["weight"]),
                           detector_floor=float(f.attrs["detector_floor"]))


class Given:
    """``region_score_sweep.figures``'s scorer when the regions' combined scores are given as their "region" score."""

    weight = 1.0

    @staticmethod
    def combine(detector: np.ndarray, region: np.ndarray) -> np.ndarray:
        return np.asarray(region, np.float32)


def mixed(detector, scorer, ranker, a: float, b: float) -> np.ndarray:
    """``detector ** (1 - a - b) * scorer ** a * ranker ** b`` elementwise (each clipped to [1e-6, 1]), float32."""
    clip = [np.clip(np.asarray(v, np.float64), 1e-6, 1.0) for v in (detector, scorer, ranker)]
    return (clip[0] ** (1.0 - a - b) * clip[1] ** a * clip[2] ** b).astype(np.float32)


def top_on_tumor(rows: list, combined: list) -> dict[str, int]:
    """Per kind of tumor scan: how many have their top region (by ``combined``) at mask IoU >= 0.5 with the tumor."""
    from outline_ceiling import single_region_figures

    tops: dict[str, int] = {}
    for (kind, _, _, rec), c in zip(rows, combined):
        if kind != "none" and len(rec.rles):
            tops[kind] = tops.get(kind, 0) + int(single_region_figures(rec, c, 0.0)["top_on_tumor"])
    return tops


def main(argv=None) -> int:
    import region_score_sweep as S
    from pool_pass import output_path, pool_sets

    from braintumor.region_score import RegionScore, fit_scorer, training_labels
    from braintumor.release import open_release
    from braintumor.release.files import default_release

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--detector-floor", type=float, default=0.01)
    S.add_layer_args(ap)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--labels", choices=("hard", "soft"), default="hard",
                    help="hard: mask IoU >= 0.5 is 1, < 0.3 is 0, between left out; soft: the mask IoU itself "
                         "(binary cross-entropy on it: the ranker learns the expected IoU)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--weights-grid", default="0.3,0.5,0.65,0.8,1")
    ap.add_argument("--beside", default=None,
                    help="a region-score file: also read detector ** (1 - a - b) * its score ** a * ranker ** b")
    ap.add_argument("--pairs", default="0.5:0,0.65:0,0.3:0.2,0.4:0.2,0.3:0.3,0.5:0.2,0.4:0.4,0.5:0.3,0.6:0.2",
                    help="a:b pairs of weights (scorer : ranker) read with --beside")
    ap.add_argument("--cache", default=str(ROOT / "logs/region_score"))
    args = ap.parse_args(argv)
    weights = default_release()
    release = open_release(weights)
    config, secondary, head = release.config(), float(release.config().DETECTION_SECONDARY_MIN_CONFIDENCE), release.image_score()
    cache = Path(args.cache)
    tag = f"floor{args.detector_floor:g}{S.layer_tag(args.max_instances, args.detection_nms)}"
    pool = output_path(cache, weights, args.detector_floor, args.max_instances, args.detection_nms)
    if not pool.is_file():
        raise SystemExit(f"{pool}: not found; run benchmarks/pool_pass.py with the same --detector-floor, "
                         "--max-instances and --detection-nms first")
    train_rows = pickle.loads(pool.read_bytes())
    val_rows = S.detections(weights, args.detector_floor, S.cache_path(cache, weights, args.detector_floor,
                                                                       args.max_instances, args.detection_nms),
                            args.max_instances, args.detection_nms)
    t0 = time.perf_counter()
    train = pass_features(train_rows, {name: ds for name, ds, _ in pool_sets()}, config, args.size,
                          ROOT / f"logs/region_score_cache/outline_train_{tag}_s{args.size}.npz")
    val = pass_features(val_rows, {name: ds for name, ds, _ in S.val_sets()}, config, args.size,
                        ROOT / f"logs/region_score_cache/outline_val_{tag}_s{args.size}.npz")
    y = training_labels(train["iou"]) if args.labels == "hard" else np.clip(train["iou"], 0.0, 1.0)
    print(f"features {time.perf_counter() - t0:.0f} s; train {len(y)} regions ({int((train['iou'] >= 0.5).sum())} at mask IoU >= 0.5, "
          f"{int(np.isnan(y).sum())} left out), val {len(val['iou'])}", flush=True)
    name = f"outline_ranker_{tag}_e{args.epochs}_s{args.seed}" + ("_soft" if args.labels == "soft" else "")
    model_path = cache / f"{name}.h5"
    t1 = time.perf_counter()
    if model_path.is_file():
        rs = load_ranker(model_path)
    else:
        model = fit_scorer(train["crops"], train["geometry"], y, epochs=args.epochs, seed=args.seed, size=args.size)
        rs = RegionScore(model, size=args.size, context=CONTEXTS, weight=0.5, detector_floor=args.detector_floor,
                         fit={"probe": "outline_ranker_probe.py", "regions": int(np.isfinite(y).sum()), "labels": args.labels,
                              "seed": args.seed, "epochs": args.epochs})
        rs.save(model_path)
    fit_s = time.perf_counter() - t1
    import keras

    probs_flat = np.asarray(rs.model.predict([val["crops"].astype(np.float32), val["geometry"]], batch_size=512,
                                             verbose=0))[:, 0]
    per_image = [np.zeros(0, np.float32) for _ in val_rows]
    for n in np.unique(val["image"]):
        per_image[n] = probs_flat[val["image"] == n]
    on = val["iou"] >= 0.5
    report = {"fit_seconds": round(fit_s), "val_regions": int(len(on)), "val_regions_on_tumor": int(on.sum()),
              "val_auc_mask_iou_0.5": round(float(keras.metrics.AUC()(on, probs_flat)), 4), "rows": []}
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}), flush=True)
    mixes = [(0.0, float(b)) for b in args.weights_grid.split(",")]
    beside = [np.ones(len(r), np.float32) for r in per_image]
    if args.beside:
        from braintumor.region_score import load_region_score

        beside = S.region_probabilities(val_rows, load_region_score(args.beside), config)
        mixes += [tuple(float(v) for v in pair.split(":")) for pair in args.pairs.split(",")]
    for a, b in mixes:
        combined = [mixed(rec.scores, p, q, a, b) for (_, _, _, rec), p, q in zip(val_rows, beside, per_image)]
        by = S.by_kind(list(zip(val_rows, combined)), Given, secondary)
        how, op = S.operating_points(by)[0]  # chosen on the thesis val set, as evaluate chooses it
        row = {"scorer_weight": a, "ranker_weight": b, **S.figures(by, Given.weight, how, op, head)}
        row.pop("weight")
        row["top_on_tumor"] = top_on_tumor(val_rows, combined)
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
    out = cache / (f"{name}.json" if not args.beside else f"{name}_beside_{Path(args.beside).stem}.json")
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
