"""``braintumor fit-region-score``: fit a model's region scorer (:mod:`braintumor.region_score`) on training sets.

Training regions, per image: the model's own proposals (``rpn_rois``, ``POST_NMS_ROIS_INFERENCE`` of them)
refined by its box head for the tumor class, each labelled by the IoU of its refined box with a tumor's box
(>= 0.5 tumor, < 0.3 elsewhere, between left out): up to 16 on a tumor at random, and of those elsewhere
the 16 the model scores highest (the ones the scorer must overrule) plus 16 at random.

Images: the ``train`` split of ``--data`` (202 thesis scans), every ``--figshare-every``-th slice of the
Figshare ``train`` blocks and every ``--tumor-free-every``-th tumor-free ``train`` image. Nothing of val is
read: ``weight`` (how the scores combine) is chosen on val by ``benchmarks/region_score_sweep.py``.

Crops of each set are cached (``--cache``, float16, one ``.npz`` per set, model and crop settings), so a
second fit with other settings costs the fit alone. The output file is the scorer
(:meth:`braintumor.region_score.RegionScore.save`) with a ``fit`` record: model, sets and counts, settings.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.errors import BrainTumorError
from braintumor.region_score import (DETECTOR_FLOOR, NEGATIVE_IOU, POSITIVE_IOU, RegionScore, contexts_of, fit_scorer,
                                     region_crops, training_labels)

POSITIVES, TOP_NEGATIVES, RANDOM_NEGATIVES = 16, 16, 16  # regions an image, at most


def _say(text: str) -> None:
    print(text, flush=True)  # progress of a long run, also when stdout is a file


class ProposalRegions:
    """One inference pass of a Mask R-CNN: its proposals' tumor probability and refined box, and the molded image."""

    def __init__(self, model):
        import keras
        import tensorflow as tf

        km = model.keras_model
        self.config = model.config
        sub = keras.Model(km.inputs, [km.outputs[4], km.outputs[1], km.outputs[2]])  # rpn_rois, mrcnn_class, bbox
        self._fn = tf.function(lambda im, meta: sub([im, meta], training=False), reduce_retracing=True)

    def __call__(self, image: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
        """``image`` uint8 ``[H, W, 3]``, ``masks`` bool ``[H, W, N]`` -> ``{"score" [R], "refined" [R, (y1, x1,
        y2, x2)] normalized to the molded frame, "iou" [R] of the refined box with the best-matching tumor box,
        "molded" [1, h, w, 3]}`` over the real (non-padding) proposals."""
        import tensorflow as tf

        from braintumor.boxes import box_iou, masks_to_boxes, norm_boxes
        from braintumor.mrcnn.box_coder import np_decode
        from braintumor.mrcnn.inputs import mold_inputs, resize_masks

        molded, metas, infos = mold_inputs([image], self.config)
        rois, probs, deltas = (t.numpy()[0] for t in self._fn(tf.constant(molded), tf.constant(metas, tf.float32)))
        real = (rois[:, 2] > rois[:, 0]) & (rois[:, 3] > rois[:, 1])
        refined = np.clip(np_decode(rois, deltas[:, 1], self.config.BBOX_STD_DEV), 0.0, 1.0)
        gt = norm_boxes(masks_to_boxes(resize_masks(np.asarray(masks, bool), infos[0])), infos[0].molded_shape[:2])
        gt = gt[(gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])]
        iou = box_iou(refined, gt).max(1) if len(gt) else np.zeros(len(rois))
        return {"score": probs[real, 1], "refined": refined[real], "iou": iou[real], "molded": molded}


def pick_regions(iou: np.ndarray, score: np.ndarray, rng) -> np.ndarray:
    """Indices of one image's training regions (module docstring): positives at random, then the top-scored and
    random negatives."""
    pos = np.flatnonzero(iou >= POSITIVE_IOU)
    neg = np.flatnonzero(iou < NEGATIVE_IOU)
    pos = rng.choice(pos, min(POSITIVES, len(pos)), replace=False) if len(pos) else pos
    top = neg[np.argsort(-score[neg])[:TOP_NEGATIVES]]
    rest = np.setdiff1d(neg, top)
    return np.concatenate([pos, top, rng.choice(rest, min(RANDOM_NEGATIVES, len(rest)), replace=False)])


def training_sets(data: Path, figshare: Path | None, tumor_free: Path | None, figshare_every: int,
                  tumor_free_every: int) -> list[tuple[str, Any, list]]:
    """``[(name, dataset, image_ids)]`` of the sets the fit reads (training splits only)."""
    from braintumor.data import load_split

    th = load_split(data, "train")
    sets = [("thesis_train", th, list(th.image_ids))]
    if figshare is not None:
        from braintumor.figshare import load_figshare

        fs = load_figshare(figshare, "train")
        sets.append((f"figshare_train_every{figshare_every}", fs, list(fs.image_ids)[::figshare_every]))
    if tumor_free is not None:
        from braintumor.tumor_free import load_tumor_free

        free = load_tumor_free(tumor_free, "train")
        sets.append((f"tumor_free_train_every{tumor_free_every}", free, list(free.image_ids)[::tumor_free_every]))
    return sets


def _tag(weights: Path, size: int) -> str:
    st = weights.stat()
    key = f"{weights.resolve()}|{st.st_size}|{st.st_mtime_ns}|{size}|{POSITIVES},{TOP_NEGATIVES},{RANDOM_NEGATIVES}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def collect(regions: ProposalRegions, name: str, ds, ids: list, size: int, context, seed: int = 0,
            log=_say) -> dict[str, np.ndarray]:
    """The training crops of one set: ``{"crops" float16 [K, size, size, C], "contexts" [C], "geometry" [K, 4],
    "score" [K], "iou" [K], "image" int32 [K] (index into "names"), "names" [N]}``, one channel per context."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("crops", "geometry", "score", "iou", "image")}
    names = []
    t0 = time.perf_counter()
    for n, i in enumerate(ids):
        info = ds.image_info[i]
        r = regions(ds.load_image(i), np.asarray(ds.load_mask(i)[0], bool))
        keep = pick_regions(r["iou"], r["score"], rng)
        crops, geometry = region_crops(r["molded"], r["refined"][keep], size, context)
        rows["crops"].append(crops.astype(np.float16))
        rows["geometry"].append(geometry)
        rows["score"].append(r["score"][keep].astype(np.float32))
        rows["iou"].append(r["iou"][keep].astype(np.float32))
        rows["image"].append(np.full(len(keep), n, np.int32))
        names.append(str(info.get("name") or Path(str(info.get("path", i))).name))
        if (n + 1) % 100 == 0:
            log(f"  {name}: {n + 1}/{len(ids)} images, {time.perf_counter() - t0:.0f} s")
    out = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in rows.items()}
    out["names"] = np.asarray(names)
    out["contexts"] = np.asarray(contexts_of(context), np.float64)
    return out


def _channels(arrays: dict[str, np.ndarray], contexts: tuple[float, ...]) -> dict[str, np.ndarray] | None:
    """``arrays`` with ``crops`` cut to ``contexts``' channels in that order; None if one is not among them."""
    have = [float(c) for c in np.atleast_1d(arrays.get("contexts", np.zeros(0)))]
    crops = arrays["crops"] if arrays["crops"].ndim == 4 else arrays["crops"][..., None]
    if len(have) != crops.shape[-1] or not all(c in have for c in contexts):
        return None
    return {**arrays, "crops": crops[..., [have.index(c) for c in contexts]],
            "contexts": np.asarray(contexts, np.float64)}


def cached_crops(regions, sets, weights: Path, size: int, context, cache: Path | None,
                 log=_say) -> dict[str, dict[str, np.ndarray]]:
    """name -> :func:`collect`'s arrays with one crop channel per ``context``, read from ``cache`` when a file
    there holds them all (a file with more contexts serves any of them), else collected and cached (written
    atomically)."""
    contexts = contexts_of(context)
    tag = _tag(weights, size)
    out = {}
    for name, ds, ids in sets:
        path = cache / f"regions_{name}-{tag}.npz" if cache is not None else None
        if path is not None and path.is_file():
            found = _channels(dict(np.load(path)), contexts)
            if found is not None:
                out[name] = found
                log(f"  {name}: {len(found['names'])} images, {len(found['iou'])} regions (cached)")
                continue
        if not ids:
            raise BrainTumorError(f"{name}: no images")
        t0 = time.perf_counter()
        out[name] = collect(regions, name, ds, ids, size, contexts, log=log)
        log(f"  {name}: {len(ids)} images, {len(out[name]['iou'])} regions, {time.perf_counter() - t0:.0f} s")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **out[name])
            tmp.replace(path)
    return out


def cli_fit_region_score(args) -> int:
    """``braintumor fit-region-score --data D [--figshare F] [--tumor-free T] [--weights W] --out FILE.h5``."""
    from braintumor.inference import load_predictor
    from braintumor.paths import resolve_data_dir

    data = resolve_data_dir(args.data)
    for flag, folder in (("--tumor-free", args.tumor_free), ("--figshare", args.figshare)):
        if folder is not None and not Path(folder).is_dir():
            raise BrainTumorError(f"{folder}: not a folder ({flag})")
    if args.epochs < 1 or args.figshare_every < 1 or args.tumor_free_every < 1:
        raise BrainTumorError("--epochs, --figshare-every and --tumor-free-every must be at least 1")
    contexts_of(args.context)  # a bad --context is refused before the model loads
    predictor = load_predictor(args.weights, config=args.config, logs=args.logs, precision="float32")
    predictor.region_score = None  # the model's own proposals and scores, whatever the release carries
    weights = Path(predictor.weights_path)
    sets = training_sets(data, Path(args.figshare) if args.figshare else None,
                         Path(args.tumor_free) if args.tumor_free else None, args.figshare_every, args.tumor_free_every)
    print(f"region score for {weights}: crops of {len(sets)} sets", flush=True)
    t0 = time.perf_counter()
    regions = ProposalRegions(predictor.load())
    crops = cached_crops(regions, sets, weights, args.size, args.context, Path(args.cache) if args.cache else None)
    t1 = time.perf_counter()
    x = np.concatenate([c["crops"] for c in crops.values()])
    g = np.concatenate([c["geometry"] for c in crops.values()])
    y = training_labels(np.concatenate([c["iou"] for c in crops.values()]))
    model = fit_scorer(x, g, y, epochs=args.epochs, seed=args.seed, size=args.size)
    contexts = " ".join(f"{c:g}" for c in contexts_of(args.context))
    figshare = f" --figshare {args.figshare} --figshare-every {args.figshare_every}" if args.figshare else ""
    free = f" --tumor-free {args.tumor_free} --tumor-free-every {args.tumor_free_every}" if args.tumor_free else ""
    fit = {"weights": weights.name,
           "sets": {name: {"images": int(len(c["names"])), "regions": int(len(c["iou"])),
                           "on_tumor": int((c["iou"] >= POSITIVE_IOU).sum()), "elsewhere": int((c["iou"] < NEGATIVE_IOU).sum())}
                    for name, c in crops.items()},
           "epochs": args.epochs, "seed": args.seed, "crop_seconds": round(t1 - t0), "fit_seconds": round(time.perf_counter() - t1),
           "command": (f"braintumor fit-region-score --weights {weights} --data {data}{figshare}{free} --size {args.size} "
                       f"--context {contexts} --epochs {args.epochs} --seed {args.seed} --weight {args.weight:g} "
                       f"--out {args.out}")}
    rs = RegionScore(model, size=args.size, context=args.context, weight=args.weight, detector_floor=DETECTOR_FLOOR,
                     fit=fit)
    out = rs.save(args.out)
    print(f"{len(y)} regions ({int(np.nansum(y))} on a tumor), fit {fit['fit_seconds']} s; written {out}")
    return 0

