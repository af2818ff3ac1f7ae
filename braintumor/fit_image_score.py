"""``braintumor fit-image-score``: fit the image-level "tumor present" head of a model.

What it fits (see :mod:`braintumor.image_score`): a logistic regression on the pooled FPN
features that :meth:`braintumor.mrcnn.MaskRCNN.detect` returns with every result, and the
threshold at which "a detection ≥ ``confident_detection`` or the head ≥ threshold" flags at
least ``sensitivity`` of the val scans.

Training rows (the tumor-free slices come from another source, Br35H, which is brighter):

- tumor: the ``train`` split of ``--data`` (202 thesis scans), the same scans re-windowed to
  Br35H's grey levels (:func:`braintumor.evaluate.rewindow_like_br35h`), and a fixed sample of
  the Figshare ``train`` blocks (``--figshare``);
- no tumor: the tumor-free training slices (``--tumor-free``, part ``train``) and the same
  slices darkened to the tumor scans' grey levels.

The re-windowed copies are what keeps the head from learning "bright means no tumor"
(``benchmarks/image_score_probe.py``: without them, val shown at Br35H's windowing drops to
sensitivity 0.57). Only ``val`` chooses the threshold; with ``--operating-point`` and ``--figshare``
the Figshare val slices, too, must not get the green "no tumor" (they lower the threshold, never
raise it). The held-out tumor-free slices are left for ``braintumor evaluate``.

Features of each set are cached (``--cache``, one ``.npz`` per set and model), so a second
fit with other settings costs seconds. The output JSON is the head (:meth:`ImageScore.to_dict`)
plus a ``fit`` record: model, sets and image counts, settings, val sensitivity.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from braintumor.errors import BrainTumorError
from braintumor.evaluate import rewindow_like_br35h
from braintumor.image_score import DEFAULT_CONFIDENT_DETECTION, ImageScore, choose_threshold, fit

TUMOR_P99 = 165.0  # mean 99th grey percentile of the tumor scans (Br35H: evaluate.BR35H_P99 = 213)
FIGSHARE_SAMPLE = 200
FIGSHARE_SEED = 0
VAL_SETS = ("val", "figshare_val")  # the sets that choose the threshold (never fitted on)
BEST_SCORE_SETS = VAL_SETS  # the sets whose best detection scores are read (the threshold's); the rest are fitted on


def darken_like_tumor_scans(image: np.ndarray) -> np.ndarray:
    """A tumor-free slice at the tumor scans' windowing (99th grey percentile 165)."""
    return rewindow_like_br35h(image, TUMOR_P99)


def sample_ids(ids: list, sample: int | None, seed: int = FIGSHARE_SEED) -> list:
    """The ``sample`` of ``ids`` that ``--figshare-sample``/``--figshare-seed`` fit on, in their order (all when
    ``sample`` is None or not below ``len(ids)``)."""
    if sample is None or sample >= len(ids):
        return list(ids)
    return sorted(np.random.default_rng(seed).choice(ids, sample, replace=False).tolist())


def _reader(load: Callable, transform: Callable | None = None, sample: int | None = None,
            seed: int = FIGSHARE_SEED) -> Callable:
    """A function returning ``(names, images)`` of the dataset ``load()`` gives (its ``sample``, images
    passed through ``transform``), read one image at a time."""
    def run():
        ds = load()
        ids = sample_ids(list(ds.image_ids), sample, seed)
        names = [str(ds.image_info[i].get("name") or Path(ds.image_info[i].get("path", i)).name) for i in ids]
        images = (ds.load_image(i) for i in ids)
        return names, (transform(im) for im in images) if transform else images
    return run


def val_sets(data: Path, figshare: Path | None = None) -> dict[str, tuple[int, Callable]]:
    """name -> (label, reader) of the val scans that choose the threshold: ``val`` of ``data``, and with a Figshare
    folder ``figshare_val`` (its val blocks), held to "no green 'no tumor'" alone."""
    from braintumor.data import load_split

    sets = {"val": (1, _reader(lambda: load_split(data, "val")))}
    if figshare is not None:
        from braintumor.figshare import load_figshare

        sets["figshare_val"] = (1, _reader(lambda: load_figshare(figshare, "val")))
    return sets


def image_sets(data: Path, figshare: Path | None, tumor_free: Path, figshare_sample: int = FIGSHARE_SAMPLE,
               figshare_seed: int = FIGSHARE_SEED, figshare_val: bool = False) -> dict[str, tuple[int, Callable]]:
    """name -> (label, function returning ``(names, images)``) of every set the fit reads.

    label 1: tumor, 0: no tumor; the :data:`VAL_SETS` (``val``, and ``figshare_val`` when ``figshare_val``
    and a Figshare folder are given) choose the threshold only.
    """
    from braintumor.data import load_split
    from braintumor.tumor_free import load_tumor_free

    train = lambda: load_split(data, "train")  # noqa: E731
    free = lambda: load_tumor_free(tumor_free, "train")  # noqa: E731
    sets = {
        **val_sets(data, figshare if figshare_val else None),
        "train": (1, _reader(train)),
        "train_rewindowed": (1, _reader(train, rewindow_like_br35h)),
        "tumor_free_train": (0, _reader(free)),
        "tumor_free_train_darkened": (0, _reader(free, darken_like_tumor_scans)),
    }
    if figshare is not None:
        from braintumor.figshare import load_figshare

        # the set's name keys the feature cache: another sample must not read this one's features
        key = ("figshare_train" + ("" if figshare_seed == FIGSHARE_SEED else f"_seed{figshare_seed}")
               + ("" if figshare_sample == FIGSHARE_SAMPLE else f"_n{figshare_sample}"))
        sets[key] = (1, _reader(lambda: load_figshare(figshare, "train"), sample=figshare_sample, seed=figshare_seed))
    return sets


def extract(predictor, images, need_best: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``([N, F] float32 image_features, [N] highest detection score, 0 without detections)``; without
    ``need_best`` the features alone (the backbone and FPN, :meth:`Predictor.image_features`) and NaN scores."""
    if not need_best:  # one image at a time, as below: a set is never held in memory whole
        feats = np.stack([predictor.image_features([im])[0] for im in images])
        return feats, np.full(len(feats), np.nan, np.float32)
    feats, best = [], []
    for im in images:
        r = predictor.detect([im])[0]
        if "image_features" not in r:
            raise BrainTumorError("this detector returns no image_features")
        feats.append(np.asarray(r["image_features"], np.float32))
        s = np.asarray(r.get("scores", ()), np.float32)
        best.append(float(s.max()) if s.size else 0.0)
    return np.stack(feats), np.asarray(best, np.float32)


def _file_tag(path: Path, config=None, region_score=None) -> str:
    """12 hex digits naming the model file (path, size, time) and, given a ``config``, its settings:
    the same checkpoint read in bfloat16 or with another detection floor gives other features; and
    a region scorer's settings and fit, which change each image's best score."""
    st = path.stat()
    settings = "" if config is None else json.dumps(config.to_dict(), sort_keys=True, default=str)
    if region_score is not None:
        settings += "|" + json.dumps({"weight": region_score.weight, "floor": region_score.detector_floor,
                                      "fit": region_score.fit}, sort_keys=True, default=str)
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{settings}".encode()).hexdigest()[:12]


def read_cached(path: Path | None, log=print) -> dict[str, Any] | None:
    """``{"names", "features" [N, F], "best" [N]}`` of a cache file written by :func:`collect`, read once; None
    when there is none, or (said in one line) when it cannot be read: the set is then computed again."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as z:
            return {"names": list(z["names"]), "features": z["features"], "best": z["best"]}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        log(f"  {path}: unreadable cache ({type(e).__name__}), computed again")
        return None


def collect(predictor, sets: dict, cache: Path | None, log=print,
            need_best=BEST_SCORE_SETS) -> dict[str, dict[str, Any]]:
    """name -> {"label", "names", "features" [N, F], "best" [N]}, read from ``cache`` when there.

    Only the sets named in ``need_best`` (None: all) are detected on, for their images' best scores; the
    others are only fitted on, so their features come from the backbone and FPN alone and ``best`` is NaN."""
    out = {}
    config = getattr(predictor, "config", None)
    tag = _file_tag(Path(predictor.weights_path), config if hasattr(config, "to_dict") else None,
                    getattr(predictor, "region_score", None))
    for name, (label, read) in sets.items():
        path = cache / f"{name}-{tag}.npz" if cache is not None else None
        wants_best = need_best is None or name in need_best
        cached = read_cached(path, log)
        if cached is not None and not (wants_best and np.isnan(cached["best"]).any()):
            out[name] = {"label": label, **cached}
            log(f"  {name}: {len(cached['names'])} images (cached)")
            continue
        t0 = time.perf_counter()
        names, images = read()
        if len(names) == 0:
            raise BrainTumorError(f"{name}: no images")
        feats, best = extract(predictor, images, need_best=wants_best)
        out[name] = {"label": label, "names": names, "features": feats, "best": best}
        log(f"  {name}: {len(names)} images, {time.perf_counter() - t0:.0f} s")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, names=np.asarray(names), features=feats, best=best)
            tmp.replace(path)
    return out


def fit_head(features: dict[str, dict[str, Any]], l2: float, confident_detection: float,
             sensitivity: float, outline_threshold: float | None = None) -> tuple[ImageScore, dict[str, Any]]:
    """The head fitted on every set but the :data:`VAL_SETS`, its threshold chosen on ``val`` (with
    ``outline_threshold``, the operating point, also so that no scan of ``val`` or ``figshare_val`` is called
    "no tumor"); and the fit record."""
    train = [k for k in features if k not in VAL_SETS]
    x = np.concatenate([features[k]["features"] for k in train])
    y = np.concatenate([np.full(len(features[k]["names"]), features[k]["label"], np.float64) for k in train])
    head = fit(x, y, l2=l2, confident_detection=confident_detection)
    head, record = threshold_on_val(head, features, sensitivity, outline_threshold)
    record = {"sets": {k: {"images": len(features[k]["names"]), "label": "tumor" if features[k]["label"] else "no tumor",
                           "role": "threshold" if k in VAL_SETS else "fit"} for k in features}, "l2": l2, **record}
    return head, record


def threshold_on_val(head: ImageScore, features: dict[str, dict[str, Any]], sensitivity: float,
                     outline_threshold: float | None = None) -> tuple[ImageScore, dict[str, Any]]:
    """``head`` with its threshold chosen on ``features["val"]`` (:func:`choose_threshold`), the other
    :data:`VAL_SETS` present held to no green verdict at ``outline_threshold``; and the record: the target,
    the sets held, val sensitivity and images (and of ``figshare_val``, the share flagged)."""
    val = features["val"]
    more = [k for k in VAL_SETS[1:] if k in features] if outline_threshold is not None else []
    head = choose_threshold(head, val["features"], val["best"], sensitivity, outline_threshold,
                            tuple((features[k]["features"], features[k]["best"]) for k in more))
    flagged = head.flags(val["features"], val["best"])
    record = {"target_sensitivity": sensitivity, "no_green_at": outline_threshold,
              "val_sensitivity": round(float(flagged.mean()), 4), "val_images": int(len(flagged))}
    if outline_threshold is not None:
        record["no_green_sets"] = ["val", *more]
    for k in more:
        record[f"{k}_images"] = len(features[k]["names"])
        record[f"{k}_flagged"] = round(float(head.flags(features[k]["features"], features[k]["best"]).mean()), 4)
    return head, record


def cli_fit_image_score(args) -> int:
    """``braintumor fit-image-score --data D --tumor-free T [--figshare F] [--weights W] --out FILE.json``."""
    from braintumor.inference import load_predictor
    from braintumor.paths import resolve_data_dir

    data = resolve_data_dir(args.data)
    threshold_of = getattr(args, "threshold_of", None)
    if args.tumor_free is None and not threshold_of:
        raise BrainTumorError("--tumor-free is needed to fit a head (only --threshold-of reads val alone)")
    for flag, folder in (("--tumor-free", args.tumor_free), ("--figshare", args.figshare)):
        if folder is not None and not Path(folder).is_dir():
            raise BrainTumorError(f"{folder}: not a folder ({flag})")
    if not 0.5 <= args.sensitivity < 1.0:
        raise BrainTumorError(f"--sensitivity must be in [0.5, 1), got {args.sensitivity}")
    confident = getattr(args, "confident_detection", None)
    if confident is not None and not 0.0 < confident <= 1.0:
        raise BrainTumorError(f"--confident-detection must be in (0, 1], got {confident}")
    out = Path(args.out)
    from braintumor.evaluate import EVAL_SCORE_FLOOR

    # every detection down to evaluate's floor: an image's best score is then what evaluate and the app see,
    # also below the model's own operating point (a lower --operating-point, a region scorer's combined score)
    predictor = load_predictor(args.weights, config=args.config, logs=args.logs, min_confidence=EVAL_SCORE_FLOOR,
                               precision=getattr(args, "precision", None) or "float32")
    from braintumor.region_score import chosen, command_options

    region = (getattr(args, "region_score", None), getattr(args, "region_weight", None))
    if region != (None, None):  # the best score of each image is then the combined one
        predictor.region_score = chosen(*region, fallback=getattr(predictor, "region_score", None))
    if threshold_of:
        return _rethreshold(args, predictor, data, threshold_of, out, command_options(*region))
    no_green = _operating_point(args)
    sets = image_sets(data, Path(args.figshare) if args.figshare else None, Path(args.tumor_free), args.figshare_sample,
                      args.figshare_seed, figshare_val=no_green is not None)
    print(f"image score for {predictor.weights_path}: features of {len(sets)} sets", flush=True)
    t0 = time.perf_counter()
    feats = collect(predictor, sets, Path(args.cache) if args.cache else None)
    confident = DEFAULT_CONFIDENT_DETECTION if confident is None else confident
    head, record = fit_head(feats, args.l2, confident, args.sensitivity, no_green)
    figshare = (f" --figshare {args.figshare} --figshare-sample {args.figshare_sample} --figshare-seed "
                f"{args.figshare_seed}" if args.figshare else "")
    config = f" --config {args.config}" if args.config else ""
    config += command_options(*region)
    command = (f"braintumor fit-image-score --weights {predictor.weights_path}{config} --data {data} --tumor-free "
               f"{args.tumor_free}{figshare} --l2 {args.l2:g} --confident-detection {confident:g} "
               f"--sensitivity {args.sensitivity:g}" + (f" --operating-point {no_green:g}" if no_green else "")
               + f" --out {args.out}")
    record.update({"weights": Path(predictor.weights_path).name, "seconds": round(time.perf_counter() - t0, 1),
                   "command": command})
    doc = {**head.to_dict(), "fit": record}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"threshold {head.threshold:.4f} (detection >= {head.confident_detection:g} also flags): "
          f"{_said(record)}; written {out}")
    return 0


def _operating_point(args) -> float | None:
    """``--operating-point``, refused in one line outside (0, 1]."""
    t = getattr(args, "operating_point", None)
    if t is not None and not 0.0 < t <= 1.0:
        raise BrainTumorError(f"--operating-point must be in (0, 1], got {t}")
    return t


def _said(record: dict[str, Any]) -> str:
    """The threshold record in words: val sensitivity, and the Figshare val slices flagged when they were held."""
    text = f"val sensitivity {record['val_sensitivity']:.3f} of {record['val_images']}"
    if "figshare_val_images" in record:
        text += f", Figshare val flagged {record['figshare_val_flagged']:.3f} of {record['figshare_val_images']}"
    return text


def _head_document(source: str, predictor) -> dict[str, Any]:
    """The head file of ``source`` (a JSON file, or ``model``: the release's embedded one) as a dict."""
    if source == "model":
        from braintumor.release import is_release, open_release

        if not is_release(predictor.weights_path) or "image_score.json" not in open_release(predictor.weights_path).meta:
            raise BrainTumorError(f"{predictor.weights_path}: no embedded image-level head (--threshold-of model)")
        text, where = open_release(predictor.weights_path).meta["image_score.json"], str(predictor.weights_path)
    else:
        from braintumor.image_score import load_image_score

        load_image_score(source)  # refuses a bad file in one line
        text, where = Path(source).read_text(encoding="utf-8"), source
    doc = json.loads(text)
    doc["_where"] = where
    return doc


def _rethreshold(args, predictor, data: Path, source: str, out: Path, extra: str = "") -> int:
    """``--threshold-of``: the head of ``source`` unchanged but for its threshold, chosen again on val (the model's
    detections, e.g. re-scored by a region scorer, decide which scans a confident detection flags)."""
    doc = _head_document(source, predictor)
    head = ImageScore.from_dict(doc)
    confident = getattr(args, "confident_detection", None)
    if confident is not None:  # a new level for "a detection flags the image by itself", e.g. on a combined score
        head = replace(head, confident_detection=float(confident))
    no_green = _operating_point(args)
    t0 = time.perf_counter()
    figshare = Path(args.figshare) if getattr(args, "figshare", None) and no_green is not None else None
    feats = collect(predictor, val_sets(data, figshare), Path(args.cache) if getattr(args, "cache", None) else None)
    new, record = threshold_on_val(head, feats, args.sensitivity, no_green)
    fit = {**(doc.get("fit") or {}), "rethresholded": {
        "from": doc["_where"], "threshold_before": float(doc["threshold"]),
        "confident_detection_before": float(doc["confident_detection"]), **record,
        "weights": Path(predictor.weights_path).name, "seconds": round(time.perf_counter() - t0, 1),
        "command": (f"braintumor fit-image-score --weights {predictor.weights_path}{extra} --data {data} "
                    f"--threshold-of {source}" + (f" --figshare {figshare}" if figshare else "")
                    + (f" --confident-detection {confident:g}" if confident is not None else "")
                    + f" --sensitivity {args.sensitivity:g}"
                    + (f" --operating-point {no_green:g}" if no_green else "") + f" --out {args.out}")}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps({**new.to_dict(), "fit": fit}, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"threshold {float(doc['threshold']):.4f} -> {new.threshold:.4f} (detection >= {new.confident_detection:g} also flags): "
          f"{_said(record)}; written {out}")
    return 0
