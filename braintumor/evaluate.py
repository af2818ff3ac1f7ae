"""Evaluate a checkpoint: run the predictor over a split (and tumor-free scans), compute metrics, write a report.

``evaluate_dataset`` keeps every detection the predictor returns (evaluation
loads the model with a low score floor, :data:`EVAL_SCORE_FLOOR`) so curves
over the confidence threshold can be drawn; the reporting threshold
``min_confidence`` applies to Dice, precision/recall/F1 and image-level
sensitivity/specificity. COCO mAP uses every detection (as COCO intends).
The conventions of every number are in :mod:`braintumor.metrics`.

``write_report`` writes, into one folder: ``metrics.json`` (everything, no
NaN), ``metrics.md`` (headline table + per-image table), ``pr_curve.png``,
``threshold_curves.png`` (when tumor-free images were evaluated) and
``worst.png`` (the six images with the lowest Dice, ground truth beside
prediction).

Results are plain dicts; keys starting with ``_`` (``_records``,
``_dataset``) hold in-memory objects for the report and are never written.
"""

from __future__ import annotations

import copy
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from braintumor import metrics as M
from braintumor.errors import BrainTumorError
from braintumor.figshare import is_figshare_folder
from braintumor.image_score import VERDICTS, verdict

EVAL_SCORE_FLOOR = 0.05  # detections below this score are not returned during evaluation
MIN_SENSITIVITY = 0.95  # target of the chosen operating point
GALLERY_SIZE = 6


# --------------------------------------------------------------------------- running the model
def degrade_resolution(image: np.ndarray, source_size: int) -> np.ndarray:
    """``image`` uint8 ``[H, W, C]`` as a scan whose longer side had ``source_size`` pixels.

    Shrunk (box filter, i.e. area average) until the longer side is
    ``source_size``, then enlarged back to ``H × W`` (bilinear, as the model's own
    resize does), so ground-truth masks still fit. Images already that small are
    returned unchanged.
    """
    from PIL import Image

    from braintumor.imageio import shrink_to

    h, w = image.shape[:2]
    if max(h, w) <= source_size:
        return image
    return np.asarray(Image.fromarray(shrink_to(image, source_size)).resize((w, h), Image.Resampling.BILINEAR))


BR35H_P99 = 213.0  # mean 99th-percentile grey level of the Br35H tumor-free slices (Figshare: 165)


def rewindow_like_br35h(image: np.ndarray, target_p99: float = BR35H_P99) -> np.ndarray:
    """``image`` uint8 ``[H, W, C]`` brightened (or darkened) linearly until its 99th grey
    percentile is ``target_p99``: the windowing of the tumor-free Br35H slices, which are
    brighter than the tumor scans (99th percentile 213 against 165; mean brain grey 100 against
    75). Geometry is untouched, so ground-truth masks still fit."""
    p99 = float(np.percentile(image, 99))
    if p99 <= 0:
        return image
    return np.clip(image.astype(np.float32) * (target_p99 / p99), 0, 255).round().astype(np.uint8)


class WindowProbePredictor:
    """Wraps a predictor; every image is passed through :func:`rewindow_like_br35h` first
    (``braintumor evaluate --source-probe window``): a model that learned "Br35H's brightness
    means no tumor" loses sensitivity on val shown with Br35H's windowing. ``target_p99``
    (``--window-p99``) moves the target: at 165, the tumor scans' mean, every image, tumor-free
    ones included, is brought to one windowing (a per-image grey normalisation)."""

    def __init__(self, predictor, target_p99: float = BR35H_P99):
        self.inner = predictor
        self.target_p99 = float(target_p99)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def detect(self, images):
        return self.inner.detect([rewindow_like_br35h(im, self.target_p99) for im in images])


class SourceSizePredictor:
    """Wraps a predictor; every image is passed through :func:`degrade_resolution` first.

    The shortcut probe of ``braintumor evaluate --source-size``: the tumor-free
    Br35H slices are ≈ 225 px, val's tumor scans 512 px, so a model that learned
    "blurry means no tumor" loses sensitivity when val is shown at 225 px.
    """

    def __init__(self, predictor, source_size: int):
        self.inner = predictor
        self.source_size = int(source_size)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def detect(self, images):
        return self.inner.detect([degrade_resolution(im, self.source_size) for im in images])


def collect_records(predictor, dataset, progress: bool = True, label: str = "") -> tuple[list[M.ImageRecord], list[float]]:
    """Run ``predictor.detect`` on every image of ``dataset``, one at a time.

    Returns (records, times): one :class:`~braintumor.metrics.ImageRecord` per
    image (GT from ``dataset.load_mask``), and the seconds spent in each
    ``detect`` call (loading images and computing metrics excluded). A predictor
    with a ``load()`` method (lazy model building) is loaded before timing.
    """
    records: list[M.ImageRecord] = []
    times: list[float] = []
    seconds = 0.0
    if callable(getattr(predictor, "load", None)):
        predictor.load()
    n = len(dataset)
    every = max(1, n // 10)
    for k, i in enumerate(dataset.image_ids):
        info = dataset.image_info[i]
        name = str(info.get("name") or Path(info.get("path", f"image_{i}")).name)
        image = dataset.load_image(i)
        gt_masks, gt_class_ids = dataset.load_mask(i)
        if gt_masks.shape[:2] != image.shape[:2]:
            raise BrainTumorError(f"{info.get('path', name)}: masks are {gt_masks.shape[:2]} but the image is {image.shape[:2]}")
        t0 = time.perf_counter()
        result = predictor.detect([image])[0]
        times.append(time.perf_counter() - t0)
        seconds += times[-1]
        try:
            records.append(M.ImageRecord.from_arrays(name, gt_masks, gt_class_ids, result, index=i))
        except ValueError as e:
            raise BrainTumorError(str(e)) from None
        if progress and ((k + 1) % every == 0 or k + 1 == n):
            rate = (k + 1) / seconds if seconds > 0 else float("inf")
            print(f"  {label or 'images'}: {k + 1}/{n} ({rate:.2f} images/s)", flush=True)
    return records, times


def _speed(times: Sequence[float]) -> dict[str, Any]:
    """Throughput of ``detect`` (batch of 1); the first call (graph tracing) is left out when there are others."""
    steady = list(times[1:]) if len(times) > 1 else list(times)
    return {"images": len(times), "detect_seconds": round(float(sum(times)), 3),
            "first_call_seconds": round(float(times[0]), 3) if times else None,
            "images_per_second": M.safe_ratio(len(steady), float(sum(steady)))}


# --------------------------------------------------------------------------- metrics from records
def image_rule_summary(records: Sequence[M.ImageRecord], threshold: float, image_score,
                       slices: Sequence[str | None] | None = None) -> dict[str, Any] | None:
    """The verdicts of :mod:`braintumor.detect` on ``records`` (tumor and tumor-free images pooled):
    the image-level rule's sensitivity and specificity, and how many images of each kind get each
    verdict (``tumor``, ``suspected``, ``uncertain``, ``no_tumor``) with outlines at ``threshold``.
    ``slices``: each record's slice key (:func:`braintumor.metrics.slice_counts`), so the tumor-free
    images flagged are also counted per distinct slice. None when there is no head or a record has
    no ``image_features``."""
    if image_score is None or not records or any(r.image_features is None for r in records):
        return None
    feats = np.stack([r.image_features for r in records])
    best = np.array([r.max_score for r in records])
    flagged = image_score.flags(feats, best)
    prob = image_score.probability(feats)
    outlined = np.array([r.outlined(threshold) for r in records], dtype=bool)
    called = np.array([verdict(f, o) for f, o in zip(flagged, outlined)])
    tumor = np.array([r.has_tumor for r in records])
    out: dict[str, Any] = {
        "threshold": round(float(image_score.threshold), 4),
        "confident_detection": round(float(image_score.confident_detection), 4),
        "outline_threshold": round(float(threshold), 4),
        "n_tumor_images": int(tumor.sum()), "n_tumor_free_images": int((~tumor).sum()),
        "sensitivity": M.safe_ratio(int(flagged[tumor].sum()), int(tumor.sum())),
        "specificity": M.safe_ratio(int((~flagged[~tumor]).sum()), int((~tumor).sum())),
        "n_tumor_free_flagged": int(flagged[~tumor].sum()),
        **_free_slices(records, slices, flagged, ~tumor),
        "verdicts": {v: {"tumor_images": int(((called == v) & tumor).sum()),
                         "tumor_free_images": int(((called == v) & ~tumor).sum())} for v in VERDICTS},
        "green_on_tumor_images": [r.name for r, v, t in zip(records, called, tumor) if t and v == "no_tumor"],
        "per_image": [{"name": r.name, "probability": round(float(p), 4), "verdict": str(v)}
                      for r, p, v in zip(records, prob, called)],
    }
    return out


def _has_slices(slices: Sequence[str | None] | None) -> bool:
    """Whether any record has a slice key (else images are all there is to count)."""
    return slices is not None and any(k is not None for k in slices)


def _free_slices(records: Sequence[M.ImageRecord], slices: Sequence[str | None] | None,
                 flagged: np.ndarray, free: np.ndarray) -> dict[str, int]:
    """``n_tumor_free_slices`` and ``n_tumor_free_flagged_slices`` of the records where ``free`` is set;
    nothing when no record has a slice key (then images are all there is to count)."""
    if not _has_slices(slices):
        return {}
    keys = list(slices)
    if len(keys) != len(records):
        raise ValueError(f"{len(keys)} slice keys for {len(records)} records")
    idx = np.flatnonzero(free)
    c = M.slice_counts([records[i].name for i in idx], [keys[i] for i in idx], [bool(flagged[i]) for i in idx])
    return {"n_tumor_free_slices": c["n_slices"], "n_tumor_free_flagged_slices": c["n_flagged_slices"]}


def category_summary(records: Sequence[M.ImageRecord], groups: Sequence[str | None], threshold: float,
                     class_names: Sequence[str] = ("BG", "tumor"), image_score=None) -> dict[str, dict] | None:
    """The tumor images' figures for each annotation category (e.g. Figshare's tumor type).

    ``groups[k]``: the category of ``records[k]`` (``"glioma"``; ``"glioma+pituitary"`` when an
    image holds two; None for an image without one, which is left out). Per category: images,
    mean Dice, mask mAP@0.5, image sensitivity (any detection / one on the tumor) at
    ``threshold`` and, with ``image_score``, the rule's sensitivity and its green verdicts.
    None when no record has a category.
    """
    by: dict[str, list[M.ImageRecord]] = {}
    for r, g in zip(records, groups):
        if g and r.has_tumor:
            by.setdefault(g, []).append(r)
    if not by:
        return None
    out: dict[str, dict] = {}
    for g, rs in sorted(by.items()):
        img = M.image_level(rs, threshold)
        row = {"n_images": len(rs), "dice_mean": M.segmentation_summary(rs, threshold)["dice_mean"],
               "mask_map50": M.coco_map(rs, class_names)["segm"]["map50"],
               "sensitivity_any": img["sensitivity_any"], "sensitivity_overlap": img["sensitivity_overlap"]}
        rule = image_rule_summary(rs, threshold, image_score)
        if rule:
            row["rule_sensitivity"] = rule["sensitivity"]
            row["green_on_tumor_images"] = len(rule["green_on_tumor_images"])
        out[g] = row
    return out


def record_groups(records: Sequence[M.ImageRecord], dataset) -> list[str | None]:
    """Each record's annotation categories from ``dataset.image_info[record.index]["categories"]``,
    joined with ``+`` (None where the dataset gives none)."""
    info = getattr(dataset, "image_info", None) or []
    out: list[str | None] = []
    for r in records:
        cats = info[r.index].get("categories") if 0 <= r.index < len(info) else None
        out.append("+".join(cats) if cats else None)
    return out


def record_slices(records: Sequence[M.ImageRecord], dataset) -> list[str | None]:
    """Each record's slice key from ``dataset.image_info[record.index]["slice"]`` (a tumor-free folder's
    copies of one slice share it, :func:`braintumor.tumor_free.load_tumor_free`; None where not given)."""
    info = getattr(dataset, "image_info", None) or []
    return [info[r.index].get("slice") if 0 <= r.index < len(info) else None for r in records]


def outline_flagged(records: Sequence[M.ImageRecord], image_score, flagged_min_confidence: float | None
                    ) -> list[M.ImageRecord]:
    """``records`` with ``outline_floor = flagged_min_confidence`` on every image ``image_score``'s rule
    flags (``DETECTION_FLAGGED_MIN_CONFIDENCE``, as :mod:`braintumor.detect` outlines them); shallow
    copies, the originals are untouched. Unchanged without a head, a floor (None or 0) or features."""
    records = list(records)
    if (image_score is None or not flagged_min_confidence or not records
            or any(r.image_features is None for r in records)):
        return records
    flagged = image_score.flags(np.stack([r.image_features for r in records]), np.array([r.max_score for r in records]))
    out = []
    for r, f in zip(records, flagged):
        r = copy.copy(r)
        r.outline_floor = float(flagged_min_confidence) if f else None
        out.append(r)
    return out


def evaluate_records(records: Sequence[M.ImageRecord], min_confidence: float,
                     free_records: Sequence[M.ImageRecord] = (), class_names: Sequence[str] = ("BG", "tumor"),
                     min_sensitivity: float = MIN_SENSITIVITY, image_score=None,
                     groups: Sequence[str | None] | None = None,
                     flagged_min_confidence: float | None = None,
                     free_slices: Sequence[str | None] | None = None) -> dict[str, Any]:
    """All metrics of an annotated split (``records``) plus optional extra tumor-free images.

    Dice, COCO mAP and instance metrics use ``records`` only; image-level
    sensitivity/specificity, their curves and the operating point pool
    ``records`` and ``free_records`` (the split's own empty images count as
    tumor-free too). ``image_score``: the model's image-level head; its rule and verdicts are
    reported as ``image_rule`` (:func:`image_rule_summary`). ``groups``: each record's annotation
    category (:func:`record_groups`); with two or more categories their figures are reported
    as ``by_category`` (:func:`category_summary`). ``flagged_min_confidence``
    (``DETECTION_FLAGGED_MIN_CONFIDENCE``): on the images the head's rule flags, detections count down
    to it (:func:`outline_flagged`); the operating point and the threshold curves do not depend on it.
    ``free_slices``: the slice each of ``free_records`` is a copy of (``load_tumor_free``'s ``slice``),
    so the tumor-free images flagged are also counted per distinct slice (``n_slices``,
    ``n_flagged_slices``, given only with slice keys; the split's own empty images are each their own slice).
    """
    t = float(min_confidence)
    if free_slices is not None and len(free_slices) != len(free_records):
        raise ValueError(f"{len(free_slices)} slice keys for {len(free_records)} tumor-free records")
    flagged_floor = float(flagged_min_confidence) if flagged_min_confidence and image_score is not None else None
    detector_alone = list(records) + list(free_records)  # without the floor: the operating point's figures
    records = outline_flagged(records, image_score, flagged_floor)
    free_records = outline_flagged(free_records, image_score, flagged_floor)
    pooled = list(records) + list(free_records)
    pooled_slices = [None] * len(records) + (list(free_slices) if free_slices is not None else [None] * len(free_records))
    tumor = [r for r in pooled if r.has_tumor]
    free = [r for r in pooled if not r.has_tumor]
    have_curves = bool(tumor) and bool(free)
    res: dict[str, Any] = {
        "kind": "split",
        "threshold": t,
        "flagged_min_confidence": flagged_floor,
        "dataset": {"n_images": len(records), "n_tumor_images": sum(r.has_tumor for r in records),
                    "n_empty_images": sum(not r.has_tumor for r in records),
                    "n_instances": sum(r.n_gt for r in records), "n_extra_tumor_free_images": len(free_records)},
        "segmentation": M.segmentation_summary(records, t),
        "coco": M.coco_map(records, class_names),
        "instances": M.instance_metrics(records, t),
        "image_level": M.image_level(pooled, t),
        "operating_point": None,
        "per_image": [r.row(t) for r in records],
        "curves": {"pr": M.pr_curve(records), "threshold": None},
        "image_rule": image_rule_summary(pooled, t, image_score, pooled_slices),
    }
    if groups is not None:
        if len(groups) != len(records):
            raise ValueError(f"{len(groups)} groups for {len(records)} records")
        for row, g in zip(res["per_image"], groups):
            if g:
                row["category"] = g
        by = category_summary(records, groups, t, class_names, image_score)
        if by and len(by) > 1:
            res["by_category"] = by
    if free_records:
        flagged = [r for r in free_records if r.outlined(t)]
        res["tumor_free"] = {
            "n_images": len(free_records), "n_flagged": len(flagged),
            "fp_per_image": M.safe_ratio(sum(int(r.kept(t).sum()) for r in free_records), len(free_records)),
            "flagged": [r.name for r in flagged],
            "per_image": [{"name": r.name, "n_det": int(r.kept(t).sum()), "max_score": round(r.max_score, 4)}
                          for r in free_records]}
        if _has_slices(free_slices):
            res["tumor_free"].update(M.slice_counts([r.name for r in free_records], free_slices,
                                                    [r.outlined(t) for r in free_records]))
    if have_curves:
        tumor_max = [r.max_score for r in tumor]
        free_max = [r.max_score for r in free]
        res["curves"]["threshold"] = M.threshold_curves(tumor_max, free_max,
                                                        tumor_overlap_scores=[r.max_overlap_score for r in tumor])
        op = M.choose_operating_point(tumor_max, free_max, min_sensitivity)
        if op["threshold"] is not None:  # the detector alone, as the threshold was chosen
            at = M.image_level(detector_alone, op["threshold"])
            op["sensitivity_overlap"] = at["sensitivity_overlap"]
        res["operating_point"] = op
    return res


def evaluate_dataset(predictor, dataset, min_confidence: float, tumor_free_dataset=None, progress: bool = True,
                     min_sensitivity: float = MIN_SENSITIVITY, label: str = "split",
                     at_operating_point: bool = False, flagged_min_confidence: float | None = None) -> dict[str, Any]:
    """Run ``predictor`` on an annotated ``dataset`` (and ``tumor_free_dataset``) and compute every metric.

    predictor: has ``detect(list of uint8 [H, W, 3]) -> list of result dicts``
    and should return detections down to a low score floor (see
    :data:`EVAL_SCORE_FLOOR`); ``min_confidence`` is the reporting threshold.
    Returns a results dict (see :func:`evaluate_records`) with ``speed``
    (images/s of ``detect`` alone, batch of 1) and the in-memory ``_records``,
    ``_dataset`` for :func:`write_report`.

    ``at_operating_point``: report at the operating point chosen on these very
    images (sensitivity >= ``min_sensitivity``; its ``robust_threshold``, see
    :func:`braintumor.metrics.choose_operating_point`) instead of ``min_confidence``,
    from the same detections (one pass over the images, not two); ``threshold_from``
    says which. Needs tumor-free images (``tumor_free_dataset`` or the split's own).
    ``flagged_min_confidence``: see :func:`evaluate_records` (used with the predictor's ``image_score``).
    """
    if len(dataset) == 0:
        raise BrainTumorError(f"{label}: no images to evaluate")
    records, times = collect_records(predictor, dataset, progress, label)
    free_records: list[M.ImageRecord] = []
    if tumor_free_dataset is not None:
        free_records, more = collect_records(predictor, tumor_free_dataset, progress, "tumor-free")
        times = times + more
    class_names = list(getattr(dataset, "class_names", ["BG", "tumor"]))
    head = getattr(predictor, "image_score", None)
    groups = record_groups(records, dataset)
    free_slices = record_slices(free_records, tumor_free_dataset)
    res = evaluate_records(records, min_confidence, free_records, class_names, min_sensitivity, head, groups,
                           flagged_min_confidence, free_slices)
    res["threshold_from"] = "given"
    if at_operating_point:
        op = res["operating_point"]
        if op is None or op.get("threshold") is None:
            raise BrainTumorError(f"{label}: no operating point (it needs tumor and tumor-free images, and a "
                                  f"threshold reaching sensitivity {min_sensitivity:.2f}); give --min-confidence instead")
        res = evaluate_records(records, op["robust_threshold"], free_records, class_names, min_sensitivity, head,
                               groups, flagged_min_confidence, free_slices)
        res["threshold_from"] = "operating point"
    res["dataset"]["label"] = label
    res["speed"] = _speed(times)
    res["_records"], res["_dataset"] = records, dataset
    return res


def evaluate_folder(predictor, dataset, min_confidence: float, progress: bool = True,
                    label: str = "images") -> dict[str, Any]:
    """Run ``predictor`` on a folder of unannotated images (e.g. tumor-free scans).

    Reports how many images get any detection at ``min_confidence`` (and which),
    false positives per image (every detection counts as one, the images being
    tumor-free) and the share of images left unflagged (specificity) as a
    function of the threshold.
    """
    if len(dataset) == 0:
        raise BrainTumorError(f"{label}: no images to evaluate")
    records, times = collect_records(predictor, dataset, progress, label)
    t = float(min_confidence)
    flagged = sorted((r for r in records if r.max_score >= t and r.max_score > 0), key=lambda r: -r.max_score)
    n_det = sum(int(r.kept(t).sum()) for r in records)
    return {
        "kind": "folder",
        "threshold": t,
        "dataset": {"label": label, "n_images": len(records), "n_annotated_instances": sum(r.n_gt for r in records)},
        "n_flagged": len(flagged),
        "flagged_fraction": len(flagged) / len(records),
        "specificity_if_tumor_free": 1.0 - len(flagged) / len(records),
        "fp_per_image": n_det / len(records),
        "flagged": [{"name": r.name, "max_score": round(r.max_score, 4), "n_det": int(r.kept(t).sum())} for r in flagged],
        "per_image": [{"name": r.name, "n_det": int(r.kept(t).sum()), "max_score": round(r.max_score, 4)} for r in records],
        "curves": {"threshold": M.threshold_curves([], [r.max_score for r in records])},
        "speed": _speed(times),
        "_records": records, "_dataset": dataset,
    }


# --------------------------------------------------------------------------- summary text
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def headline(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The headline numbers as (label, formatted value) rows."""
    t = results["threshold"]
    d = results["dataset"]
    speed = results.get("speed", {})
    source = [("images shrunk to (longer side)", f"{d['source_size']} px and back")] if d.get("source_size") else []
    if d.get("source_probe") == "window":
        p99 = float(d.get("window_p99", BR35H_P99))
        source.append(("images re-windowed",
                       f"99th grey percentile -> {p99:.0f}" + (" (Br35H's)" if p99 == BR35H_P99 else "")))
    if results.get("kind") == "folder":
        rows = [("images", _fmt(d["n_images"])), ("confidence threshold", _fmt(t, 2)),
                ("images with a detection", f"{results['n_flagged']} ({results['flagged_fraction']:.1%})"),
                ("specificity (if all tumor-free)", _fmt(results["specificity_if_tumor_free"])),
                ("false positives / image", _fmt(results["fp_per_image"]))]
    else:
        seg, coco, inst, img = results["segmentation"], results["coco"], results["instances"], results["image_level"]
        rows = [("images (tumor / empty)", f"{d['n_images']} ({d['n_tumor_images']} / {d['n_empty_images']})"),
                ("tumor instances", _fmt(d["n_instances"])),
                ("confidence threshold", _fmt(t, 2)),
                *([("on images the head flags, down to", _fmt(results["flagged_min_confidence"], 2))]
                  if results.get("flagged_min_confidence") else []),
                ("Dice mean (all images)", _fmt(seg["dice_mean"])),
                ("Dice mean (tumor images)", _fmt(seg["dice_mean_tumor_images"])),
                ("IoU mean (all images)", _fmt(seg["iou_mean"])),
                ("mask mAP@0.5", _fmt(coco["segm"]["map50"])),
                ("mask mAP@[.5:.95]", _fmt(coco["segm"]["map"])),
                ("box mAP@0.5", _fmt(coco["bbox"]["map50"])),
                ("box mAP@[.5:.95]", _fmt(coco["bbox"]["map"])),
                ("precision / recall / F1 (IoU>=0.5)",
                 f"{_fmt(inst['precision'])} / {_fmt(inst['recall'])} / {_fmt(inst['f1'])}"),
                ("false positives / image", _fmt(inst["fp_per_image"])),
                ("image sensitivity (any detection)", _fmt(img["sensitivity_any"])),
                ("image sensitivity (detection on tumor)", _fmt(img["sensitivity_overlap"])),
                ("image specificity", f"{_fmt(img['specificity'])} (of {img['n_tumor_free_images']} tumor-free)")]
        if "tumor_free" in results:
            tf = results["tumor_free"]
            rows.append(("tumor-free scans flagged", f"{tf['n_flagged']} of {tf['n_images']}"
                         + (f" ({tf['n_flagged_slices']} of {tf['n_slices']} distinct slices)" if "n_slices" in tf else "")))
        op = results.get("operating_point")
        if op and op.get("threshold") is not None:
            rows.append((f"operating point (sensitivity >= {op['min_sensitivity']:.2f})",
                         f"threshold {op['threshold']:.4g} (robust {op['robust_threshold']:.4g}): sensitivity {_fmt(op['sensitivity'])}, "
                         f"specificity {_fmt(op['specificity'])}" + ("" if op["reachable"] else " (not reachable)")))
        rule = results.get("image_rule")
        if rule:
            free = rule["n_tumor_free_images"]
            text = f"sensitivity {_fmt(rule['sensitivity'])}"
            if free:
                slices = (f"; {rule['n_tumor_free_flagged_slices']} of {rule['n_tumor_free_slices']} distinct slices"
                          if "n_tumor_free_slices" in rule else "")
                text += (f", specificity {_fmt(rule['specificity'])} ({rule['n_tumor_free_flagged']} of {free} "
                         f"tumor-free flagged{slices})")
            rows.append((f"image-level rule (detection >= {rule['confident_detection']:.2f} or head >= "
                         f"{rule['threshold']:.3f})", text))
            kinds = [("tumor images", "tumor_images")] + ([("tumor-free images", "tumor_free_images")] if free else [])
            for who, key in kinds:
                rows.append((f"verdicts on {who} (tumor / suspected / uncertain / no tumor)",
                             " / ".join(str(counts[key]) for counts in rule["verdicts"].values())))
        for g, c in (results.get("by_category") or {}).items():
            text = (f"Dice {_fmt(c['dice_mean'])}, mask mAP@0.5 {_fmt(c['mask_map50'])}, sensitivity "
                    f"{_fmt(c['sensitivity_any'])} (on tumor {_fmt(c['sensitivity_overlap'])})")
            if "rule_sensitivity" in c:
                text += f", rule {_fmt(c['rule_sensitivity'])}, green {c['green_on_tumor_images']}"
            rows.append((f"{g} ({c['n_images']} images)", text))
    rows += source
    if speed:
        rows.append(("speed", f"{_fmt(speed.get('images_per_second'), 2)} images/s"))
    return rows


def format_summary(results: dict[str, Any]) -> str:
    rows = headline(results)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _markdown(results: dict[str, Any], per_image: Sequence[dict]) -> str:
    label = results["dataset"].get("label", "")
    lines = [f"# Evaluation: {label}", ""]
    if results.get("weights"):
        lines += [f"Weights: `{results['weights']}`", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in headline(results)]
    op = results.get("operating_point")
    if op and op.get("note"):
        lines += ["", f"Note: {op['note']}."]
    lines += ["", f"## Per image (threshold {results['threshold']:.4g})", ""]
    if results.get("kind") == "folder":
        lines += ["| image | detections | max score |", "|---|---|---|"]
        lines += [f"| {_cell(r['name'])} | {r['n_det']} | {r['max_score']:.3f} |" for r in per_image]
    else:
        cat = any("category" in r for r in per_image)
        lines += ["| image |" + (" category |" if cat else "") + " GT | detections | max score | Dice | IoU | TP | FP | FN |",
                  "|---|" + ("---|" if cat else "") + "---|---|---|---|---|---|---|---|"]
        lines += [f"| {_cell(r['name'])} |" + (f" {_cell(r.get('category', ''))} |" if cat else "")
                  + f" {r['n_gt']} | {r['n_det']} | {r['max_score']:.3f} | {r['dice']:.3f} | {r['iou']:.3f} "
                  f"| {r['tp']} | {r['fp']} | {r['fn']} |" for r in per_image]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- files
def _atomic_write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _atomic_write(path, buf.getvalue())


def _new_figure(figsize):
    # A Figure with its own Agg canvas: no pyplot, so a notebook's backend is left alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def plot_pr_curve(results: dict[str, Any], path: Path) -> None:
    pr = results["curves"]["pr"]
    fig = _new_figure((5.5, 5))
    ax = fig.add_subplot()
    if pr["score"]:
        ax.plot(pr["recall"], pr["precision"], ".-", color="tab:blue", label="instances (IoU >= 0.5)")
        at = [k for k, s in enumerate(pr["score"]) if s >= results["threshold"]]
        if at:
            k = at[-1]
            ax.plot(pr["recall"][k], pr["precision"][k], "o", color="tab:red",
                    label=f"threshold {results['threshold']:.2f}")
        ax.legend(loc="lower left")
    else:
        ax.text(0.5, 0.5, "no detections", ha="center", va="center")
    coco = results["coco"]["segm"]
    ax.set_title(f"Precision–recall  (mask mAP@0.5 {_fmt(coco['map50'])}, @[.5:.95] {_fmt(coco['map'])})", fontsize=9)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    _save_figure(fig, path)


def plot_threshold_curves(results: dict[str, Any], path: Path) -> None:
    c = results["curves"]["threshold"]
    fig = _new_figure((6.5, 4.5))
    ax = fig.add_subplot()
    t = np.asarray(c["threshold"])
    nan = lambda v: np.asarray([np.nan if x is None else x for x in v], dtype=float)  # noqa: E731
    if any(v is not None for v in c["sensitivity"]):
        ax.step(t, nan(c["sensitivity"]), where="post", color="tab:red", label="sensitivity (any detection)")
    if c.get("sensitivity_overlap"):
        ax.step(t, nan(c["sensitivity_overlap"]), where="post", color="tab:red", ls="--",
                label="sensitivity (detection on tumor)")
    ax.step(t, nan(c["specificity"]), where="post", color="tab:blue", label="specificity")
    ax.axvline(results["threshold"], color="gray", ls=":", label=f"threshold in use {results['threshold']:.2f}")
    op = results.get("operating_point")
    if op and op.get("threshold") is not None:
        ax.axvline(op["threshold"], color="tab:green", ls="-.", label=f"operating point {op['threshold']:.3f}")
        if op.get("specificity") is not None:
            ax.plot([op["threshold"]] * 2, [op["sensitivity"], op["specificity"]], "o", color="tab:green")
    ax.set(xlabel="confidence threshold", ylabel="share of images", xlim=(0, 1), ylim=(-0.02, 1.02))
    ax.set_title("Image-level sensitivity and specificity vs threshold", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    _save_figure(fig, path)


def _overlay(image: np.ndarray, masks: np.ndarray, class_ids, scores, boxes, class_names, color, ax, title):
    """Draw with braintumor.visualize.draw_overlay when it is available, else with matplotlib contours."""
    try:
        from braintumor.visualize import draw_overlay
    except ImportError:
        draw_overlay = None
    if draw_overlay is not None:
        try:
            result = {"rois": np.asarray(boxes, dtype=np.int32).reshape(-1, 4),
                      "class_ids": np.asarray(class_ids, dtype=np.int32),
                      "scores": np.asarray(scores, dtype=np.float32), "masks": masks}
            ax.imshow(draw_overlay(image, result, list(class_names), show_boxes=True))
            ax.set_title(title, fontsize=8)
            ax.axis("off")
            return
        except Exception as e:  # another helper's drawing must not cost us the report
            warnings.warn(f"draw_overlay failed ({e}); drawing contours instead")
    ax.imshow(image)
    if masks.shape[-1]:
        ax.contour(masks.any(axis=-1).astype(float), levels=[0.5], colors=[color], linewidths=1.2)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def plot_gallery(results: dict[str, Any], dataset, path: Path, records=None, size: int = GALLERY_SIZE) -> list[str]:
    """Up to ``size`` images, ground truth beside prediction: lowest Dice first (folders: highest score first)."""
    from braintumor.boxes import masks_to_boxes

    records = list(records if records is not None else results.get("_records", []))
    t = results["threshold"]
    if results.get("kind") == "folder":
        chosen = sorted((r for r in records if r.max_score >= t and r.max_score > 0), key=lambda r: -r.max_score)
    else:
        chosen = sorted(records, key=lambda r: (r.dice_iou(t)[0], -r.n_gt))
    chosen = chosen[:size]
    class_names = list(getattr(dataset, "class_names", ["BG", "tumor"]))
    fig = _new_figure((7, 3.4 * max(1, len(chosen))))
    if not chosen:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "nothing to show", ha="center", va="center")
        ax.axis("off")
    for k, r in enumerate(chosen):
        image = dataset.load_image(r.index)
        gt = r.gt_masks()
        keep = r.kept(t)
        pred = r.pred_masks(t)
        dice, _ = r.dice_iou(t)
        _overlay(image, gt, r.gt_class_ids, np.ones(r.n_gt), masks_to_boxes(gt), class_names, "lime",
                 fig.add_subplot(len(chosen), 2, 2 * k + 1), f"{r.name}: ground truth ({r.n_gt})")
        _overlay(image, pred, r.class_ids[keep], r.scores[keep], r.boxes[keep], class_names, "red",
                 fig.add_subplot(len(chosen), 2, 2 * k + 2),
                 f"prediction ({int(keep.sum())}), Dice {dice:.3f}, max score {r.max_score:.2f}")
    fig.tight_layout()
    _save_figure(fig, path)
    return [r.name for r in chosen]


def write_report(results: dict[str, Any], per_image: Sequence[dict] | None, out_dir: str | os.PathLike,
                 dataset=None, records=None) -> dict[str, Path]:
    """Write metrics.json, metrics.md, pr_curve.png, threshold_curves.png and worst.png into ``out_dir``.

    ``per_image`` defaults to ``results["per_image"]``; ``dataset``/``records``
    default to ``results["_dataset"]``/``results["_records"]`` (the gallery is
    skipped without them). Returns ``{file name: path}`` of what was written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_image = list(per_image if per_image is not None else results.get("per_image", []))
    dataset = dataset if dataset is not None else results.get("_dataset")
    records = records if records is not None else results.get("_records")
    written: dict[str, Path] = {}

    public = {k: v for k, v in results.items() if not k.startswith("_")}
    public["per_image"] = per_image
    if dataset is not None and records:
        written["worst.png"] = out / "worst.png"
        public["gallery"] = plot_gallery(results, dataset, written["worst.png"], records)
    if results.get("kind") != "folder":
        written["pr_curve.png"] = out / "pr_curve.png"
        plot_pr_curve(results, written["pr_curve.png"])
    if results.get("curves", {}).get("threshold"):
        written["threshold_curves.png"] = out / "threshold_curves.png"
        plot_threshold_curves(results, written["threshold_curves.png"])
    written["metrics.md"] = out / "metrics.md"
    _atomic_write(written["metrics.md"], _markdown(results, per_image))
    written["metrics.json"] = out / "metrics.json"
    _atomic_write(written["metrics.json"], json.dumps(M.to_jsonable(public), indent=1, allow_nan=False) + "\n")
    return written


# --------------------------------------------------------------------------- CLI
def _configured_threshold(config_arg: str | None, weights_path) -> float:
    """DETECTION_MIN_CONFIDENCE of the preset given, else of the checkpoint's run folder, else the default."""
    from braintumor.config import DEFAULTS, load_config
    from braintumor.paths import resolve_preset

    if config_arg:
        return float(load_config(resolve_preset(config_arg)).DETECTION_MIN_CONFIDENCE)
    run_config = Path(weights_path).parent / "config.toml" if weights_path else None
    if run_config is not None and run_config.is_file():
        return float(load_config(run_config).DETECTION_MIN_CONFIDENCE)
    return float(DEFAULTS["DETECTION_MIN_CONFIDENCE"])


def _is_release(path) -> bool:
    from braintumor.release import is_release

    return is_release(path)


def cli_evaluate(args) -> int:
    """``braintumor evaluate``: metrics of a checkpoint on a split (or an image folder), written as a report."""
    from braintumor.data import load_image_folder, load_split
    from braintumor.paths import resolve_data_dir

    threshold = args.min_confidence
    at_op = bool(getattr(args, "at_operating_point", False))
    if at_op and threshold is not None:
        raise BrainTumorError("--at-operating-point chooses the threshold itself; leave out --min-confidence")
    if at_op and args.images:
        raise BrainTumorError("--at-operating-point needs an annotated split (with --tumor-free), not --images")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise BrainTumorError(f"--min-confidence must be in (0, 1], got {threshold}")
    flagged_min = getattr(args, "flagged_min_confidence", None)
    if flagged_min is not None and not 0.0 <= flagged_min <= 1.0:
        raise BrainTumorError(f"--flagged-min-confidence must be in [0, 1], got {flagged_min}")
    tumor_free_dir = getattr(args, "tumor_free", None)
    if args.images and tumor_free_dir:
        raise BrainTumorError("--tumor-free goes with a split; with --images every image is already treated as unannotated")
    if args.images:
        folder = Path(args.images)
        if not folder.is_dir():
            raise BrainTumorError(f"{folder}: not a folder")
        dataset, label = load_image_folder(folder), folder.name
    else:
        folder = resolve_data_dir(args.data)
        dataset, label = load_split(folder, args.split), args.split
    free = None
    if tumor_free_dir:
        if not Path(tumor_free_dir).is_dir():
            raise BrainTumorError(f"{tumor_free_dir}: not a folder")
        from braintumor.tumor_free import load_tumor_free

        free = load_tumor_free(tumor_free_dir, getattr(args, "tumor_free_part", "held-out"), dataset.class_names)
    for ds in (dataset, free):
        for problem in getattr(ds, "problems", None) or []:
            print(f"warning: {problem}", file=sys.stderr)

    from braintumor.inference import load_predictor

    floor = EVAL_SCORE_FLOOR if threshold is None else min(EVAL_SCORE_FLOOR, threshold)
    predictor = load_predictor(args.weights, config=args.config, logs=args.logs, min_confidence=floor,
                               precision=getattr(args, "precision", None))
    flip = bool(getattr(args, "flip", False))
    if flip:  # before the model is built: Predictor.load reads its config then
        predictor.config = predictor.config.replace(TEST_TIME_FLIP=True)
    mask_threshold = getattr(args, "mask_threshold", None)
    if mask_threshold is not None:  # likewise; the config refuses a value outside [0.05, 0.95] in one line
        predictor.config = predictor.config.replace(DETECTION_MASK_THRESHOLD=float(mask_threshold))
    mask_threshold = float(getattr(getattr(predictor, "config", None), "DETECTION_MASK_THRESHOLD", 0.5))
    if getattr(args, "image_score", None):
        from braintumor.image_score import load_image_score

        predictor.image_score = load_image_score(args.image_score)
    if getattr(args, "region_score", None) or getattr(args, "region_weight", None) is not None:
        from braintumor.region_score import chosen  # before the model is built: Predictor.load lowers its floor

        predictor.region_score = chosen(getattr(args, "region_score", None), getattr(args, "region_weight", None),
                                        getattr(predictor, "region_score", None))
    if flagged_min is None:  # the model's own (a release's config, or the run's config.toml)
        flagged_min = getattr(predictor, "flagged_threshold", None)
    if threshold is None:  # the run's own operating point (Predictor.threshold), else its config's
        threshold = getattr(predictor, "threshold", None)
    if threshold is None:
        threshold = _configured_threshold(args.config, getattr(predictor, "weights_path", None))
    threshold = float(threshold)
    if threshold < floor:
        print(f"warning: threshold {threshold} is below the evaluation score floor {floor}", file=sys.stderr)
    source_size = getattr(args, "source_size", None)
    if source_size is not None:
        if source_size < 16:
            raise BrainTumorError(f"--source-size must be at least 16 pixels, got {source_size}")
        predictor = SourceSizePredictor(predictor, source_size)
    window = getattr(args, "source_probe", None) == "window"
    window_p99 = getattr(args, "window_p99", None)
    if window_p99 is not None and not window:
        raise BrainTumorError("--window-p99 needs --source-probe window")
    window_p99 = BR35H_P99 if window_p99 is None else float(window_p99)
    if not 1 <= window_p99 <= 255:
        raise BrainTumorError(f"--window-p99 must be a grey level from 1 to 255, got {window_p99:g}")
    if window:
        predictor = WindowProbePredictor(predictor, window_p99)
    # a Figshare folder's split gets its own default report folder: never the thesis split's of the same name
    source = f"{folder.name}_" if not args.images and is_figshare_folder(folder) else ""
    suffix = ((f"_at{source_size}px" if source_size else "")
              + (("_window" + (f"{window_p99:g}" if window_p99 != BR35H_P99 else "")) if window else "")
              + ("_flip" if flip else ""))
    if args.out:
        out_dir = Path(args.out)
    elif _is_release(predictor.weights_path):  # a release's report goes to out/, never into models/
        out_dir = Path("out") / f"eval_{Path(predictor.weights_path).stem}_{source}{label}{suffix}"
    else:
        out_dir = Path(predictor.weights_path).parent / f"eval_{source}{label}{suffix}"

    print(f"evaluating {predictor.weights_path} on {label} ({len(dataset)} images"
          + (f" + {len(free)} tumor-free" if free is not None else "") + f"), threshold {threshold:.2f}"
          + (f", every image shrunk to {source_size} px and back" if source_size else "")
          + ((", every image re-windowed like Br35H" if window_p99 == BR35H_P99
              else f", every image re-windowed to 99th grey percentile {window_p99:g}") if window else "")
          + (", with its mirror image (test-time flip)" if flip else "")
          + (f", outlines at mask probability {mask_threshold:g}" if mask_threshold != 0.5 else "")
          + ("; then reported at its operating point" if at_op else "")
          + (f"; images the head flags outlined down to {flagged_min:.2f}"
             if flagged_min and getattr(predictor, "image_score", None) is not None else "")
          + (f"; regions re-scored by a second opinion on their pixels (weight {predictor.region_score.weight:g})"
             if getattr(predictor, "region_score", None) is not None else "")
          + (f"; computing in {predictor.precision} ({predictor.precision_reason})" if hasattr(predictor, "precision_reason") else ""),
          flush=True)
    if args.images:
        results = evaluate_folder(predictor, dataset, threshold, label=label)
    else:
        results = evaluate_dataset(predictor, dataset, threshold, tumor_free_dataset=free, label=label,
                                   at_operating_point=at_op, flagged_min_confidence=flagged_min)
    results["weights"] = str(predictor.weights_path)
    results["dataset"]["folder"] = str(folder)
    results["precision"] = getattr(predictor, "precision", None)
    if getattr(predictor, "image_score", None) is not None:
        results["image_score_from"] = str(args.image_score) if getattr(args, "image_score", None) else "the release"
    if getattr(predictor, "region_score", None) is not None:
        rs = predictor.region_score
        from braintumor.region_score import scorer_paths

        given = scorer_paths(getattr(args, "region_score", None))
        results["region_score"] = {"from": ", ".join(str(p) for p in given) if given else "the release",
                                   "weight": rs.weight, "detector_floor": rs.detector_floor}
    if source_size is not None:
        results["dataset"]["source_size"] = int(source_size)
    if window:
        results["dataset"]["source_probe"] = "window"
        results["dataset"]["window_p99"] = window_p99
    results["test_time_flip"] = flip
    results["mask_threshold"] = mask_threshold
    written = write_report(results, None, out_dir)
    print(format_summary(results))
    print(f"metrics: {written['metrics.json']}")
    return 0
