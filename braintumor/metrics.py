"""Evaluation metrics for tumor segmentation and detection (NumPy + pycocotools, no TensorFlow).

Everything starts from one :class:`ImageRecord` per image: the ground-truth
instances and the model's detections, both kept as COCO run-length encodings
(RLE), so a whole split fits in a few MB.

Conventions (the same in every function, and in ``metrics.json``):

- A detection **counts at threshold t** when ``score >= t``; on an image whose record has an
  ``outline_floor`` (set where the image-level rule flagged it, ``DETECTION_FLAGGED_MIN_CONFIDENCE``)
  when ``score >= min(t, outline_floor)``. Operating points and threshold curves read the max
  scores alone, so they never depend on it.
- **Dice / IoU per image** compare the predicted tumor area (union of the
  masks of the detections counting at t) with the ground-truth tumor area
  (union of the GT masks). Both empty -> Dice = IoU = 1 (a correct "no
  tumor"; such images are counted separately as ``n_both_empty``); exactly
  one empty -> 0.
- **Instance matching**: per image, detections in descending score order
  each take the unmatched GT instance of the same class with the highest mask
  IoU, if that IoU >= 0.5 (the COCO rule). Because the order is by score, the
  match of a detection never depends on lower-scored ones, so one matching at
  the score floor is valid for every threshold.
- **Precision** = TP / (TP + FP), 0 when there are tumors but no detections,
  ``None`` when there are neither. **Recall** = TP / (TP + FN), ``None`` when
  there are no tumors. **F1** = 2PR / (P + R), 0 when P + R = 0.
- **Image level**: a tumor image is *detected (any)* when it has at least one
  detection counting at t, *detected (overlap)* when at least one of those
  detections overlaps the GT tumor area by at least one pixel. A tumor-free
  image is a *true negative* when it has no detection counting at t.
  An image's **max score** is the highest detection score, 0 when it has no
  detection (so it is never flagged at a threshold > 0).
- Undefined values are ``None`` (``null`` in JSON), never NaN.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from braintumor.boxes import masks_to_boxes

IOU_MATCH = 0.5


# --------------------------------------------------------------------------- masks
def encode_masks(masks: np.ndarray) -> list[dict]:
    """``[H, W, N]`` bool masks -> N COCO RLE dicts (``{"size": [H, W], "counts": bytes}``)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [H, W, N], got shape {masks.shape}")
    if masks.shape[-1] == 0:
        return []
    return mask_utils.encode(np.asfortranarray(masks.astype(np.uint8)))


def decode_union(rles: Sequence[dict], height: int, width: int) -> np.ndarray:
    """Union of RLE masks -> bool ``[H, W]`` (all False when ``rles`` is empty)."""
    if not rles:
        return np.zeros((height, width), dtype=bool)
    return mask_utils.decode(_union_rle(rles)).astype(bool)


def _union_rle(rles: Sequence[dict]) -> dict:
    return rles[0] if len(rles) == 1 else mask_utils.merge(list(rles), intersect=False)


def _area(rle: dict | None) -> int:
    return 0 if rle is None else int(mask_utils.area(rle))


def _intersection_area(a: dict | None, b: dict | None) -> int:
    if a is None or b is None:
        return 0
    return int(mask_utils.area(mask_utils.merge([a, b], intersect=True)))


def dice_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two bool ``[H, W]`` masks (both empty -> 1, 1; one empty -> 0, 0)."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    return dice_iou_from_areas(int(np.count_nonzero(pred & gt)), int(pred.sum()), int(gt.sum()))


def dice_iou_from_areas(inter: int, area_pred: int, area_gt: int) -> tuple[float, float]:
    """Dice = 2|P∩G| / (|P| + |G|), IoU = |P∩G| / |P∪G| from pixel counts (both empty -> 1, 1)."""
    total = area_pred + area_gt
    if total == 0:
        return 1.0, 1.0
    return 2.0 * inter / total, inter / (total - inter)


def _xywh(box: Sequence[float]) -> list[float]:
    """``(y1, x1, y2, x2)`` pixels (exclusive end) -> COCO ``[x, y, width, height]``."""
    y1, x1, y2, x2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


# --------------------------------------------------------------------------- records
@dataclass
class ImageRecord:
    """Ground truth and detections of one image, masks as RLE.

    ``gt_class_ids`` int ``[G]``, ``gt_boxes`` ``[G, (y1, x1, y2, x2)]`` pixels;
    ``scores`` float ``[D]``, ``class_ids`` int ``[D]``, ``boxes`` ``[D, (y1, x1, y2, x2)]``
    pixels. ``matched`` bool ``[D]``: the detection is a true positive under the
    greedy IoU >= 0.5 matching (see the module docstring); ``max_overlap_score``
    is the highest score of a detection touching the GT area (0 if none).
    """

    name: str
    height: int
    width: int
    gt_rles: list[dict]
    gt_class_ids: np.ndarray
    gt_boxes: np.ndarray
    rles: list[dict]
    scores: np.ndarray
    class_ids: np.ndarray
    boxes: np.ndarray
    index: int = -1
    image_features: np.ndarray | None = None  # [F] float32 of detect() (braintumor.image_score), if it gave them
    outline_floor: float | None = None  # flagged by the image-level rule: detections count down to this score
    matched: np.ndarray = field(init=False)
    max_overlap_score: float = field(init=False)

    def __post_init__(self) -> None:
        order = np.argsort(-self.scores, kind="stable")
        self.matched = np.zeros(len(self.scores), dtype=bool)
        if len(self.rles) and len(self.gt_rles):
            ious = np.asarray(mask_utils.iou(self.rles, self.gt_rles, [0] * len(self.gt_rles)), dtype=np.float64)
            ious = ious.reshape(len(self.rles), len(self.gt_rles))
            ious[self.class_ids[:, None] != self.gt_class_ids[None, :]] = 0.0
            taken = np.zeros(len(self.gt_rles), dtype=bool)
            for d in order:
                cand = np.where(taken, -1.0, ious[d])
                g = int(np.argmax(cand))
                if cand[g] >= IOU_MATCH:
                    taken[g] = True
                    self.matched[d] = True
        gt_union = _union_rle(self.gt_rles) if self.gt_rles else None
        self._gt_union = gt_union
        self.max_overlap_score = 0.0
        for d in order:
            if _intersection_area(self.rles[d], gt_union) > 0:
                self.max_overlap_score = float(self.scores[d])
                break

    @classmethod
    def from_arrays(cls, name: str, gt_masks: np.ndarray, gt_class_ids: np.ndarray, result: dict,
                    index: int = -1) -> "ImageRecord":
        """Build from a dataset's ``load_mask`` output and a ``detect`` result dict.

        gt_masks: bool ``[H, W, G]``; result: ``{"rois" [D, 4], "class_ids" [D], "scores" [D],
        "masks" bool [H, W, D]}`` at the same image size.
        """
        gt_masks = np.asarray(gt_masks, dtype=bool)
        h, w = gt_masks.shape[:2]
        masks = np.asarray(result["masks"], dtype=bool)
        scores = np.asarray(result["scores"], dtype=np.float64).reshape(-1)
        if masks.ndim != 3 or masks.shape[:2] != (h, w) or masks.shape[-1] != len(scores):
            raise ValueError(f"{name}: predicted masks have shape {masks.shape}, expected {(h, w, len(scores))}")
        rois = result.get("rois")
        boxes = masks_to_boxes(masks) if rois is None or len(rois) != len(scores) else np.asarray(rois).reshape(-1, 4)
        return cls(name=name, height=h, width=w, index=index,
                   gt_rles=encode_masks(gt_masks),
                   gt_class_ids=np.asarray(gt_class_ids, dtype=np.int64).reshape(-1),
                   gt_boxes=masks_to_boxes(gt_masks).astype(np.float64),
                   rles=encode_masks(masks), scores=scores,
                   class_ids=np.asarray(result["class_ids"], dtype=np.int64).reshape(-1),
                   boxes=boxes.astype(np.float64),
                   image_features=(np.asarray(result["image_features"], np.float32)
                                   if result.get("image_features") is not None else None))

    # ----------------------------------------------------------------------
    @property
    def n_gt(self) -> int:
        return len(self.gt_rles)

    @property
    def has_tumor(self) -> bool:
        return self.n_gt > 0

    @property
    def max_score(self) -> float:
        return float(self.scores.max()) if len(self.scores) else 0.0

    def threshold_at(self, threshold: float) -> float:
        """The score a detection of this image needs at ``threshold``: ``min(threshold, outline_floor)``."""
        return float(threshold) if self.outline_floor is None else min(float(threshold), float(self.outline_floor))

    def kept(self, threshold: float) -> np.ndarray:
        """bool ``[D]``: detections counting at ``threshold`` (score >= :meth:`threshold_at`)."""
        return self.scores >= self.threshold_at(threshold)

    def outlined(self, threshold: float) -> bool:
        """Whether any detection counts at ``threshold``."""
        return bool(np.any(self.kept(threshold)))

    def pred_union_rle(self, threshold: float) -> dict | None:
        keep = np.flatnonzero(self.kept(threshold))
        return _union_rle([self.rles[i] for i in keep]) if len(keep) else None

    def areas(self, threshold: float) -> tuple[int, int, int]:
        """(|P∩G|, |P|, |G|) in pixels for the predicted tumor area at ``threshold``."""
        pred = self.pred_union_rle(threshold)
        return _intersection_area(pred, self._gt_union), _area(pred), _area(self._gt_union)

    def dice_iou(self, threshold: float) -> tuple[float, float]:
        return dice_iou_from_areas(*self.areas(threshold))

    def counts(self, threshold: float) -> tuple[int, int, int]:
        """(TP, FP, FN) instances at ``threshold``."""
        keep = self.kept(threshold)
        tp = int(np.count_nonzero(self.matched & keep))
        fp = int(np.count_nonzero(~self.matched & keep))
        return tp, fp, self.n_gt - tp

    def pred_masks(self, threshold: float) -> np.ndarray:
        """bool ``[H, W, K]`` masks of the detections counting at ``threshold``."""
        keep = np.flatnonzero(self.kept(threshold))
        if not len(keep):
            return np.zeros((self.height, self.width, 0), dtype=bool)
        return mask_utils.decode([self.rles[i] for i in keep]).astype(bool)

    def gt_masks(self) -> np.ndarray:
        """bool ``[H, W, G]`` ground-truth masks."""
        if not self.gt_rles:
            return np.zeros((self.height, self.width, 0), dtype=bool)
        return mask_utils.decode(self.gt_rles).astype(bool)

    def row(self, threshold: float) -> dict[str, Any]:
        """One line of the per-image table at ``threshold``."""
        dice, iou = self.dice_iou(threshold)
        tp, fp, fn = self.counts(threshold)
        return {"name": self.name, "n_gt": self.n_gt, "n_det": int(np.count_nonzero(self.kept(threshold))),
                "max_score": round(self.max_score, 4), "dice": dice, "iou": iou, "tp": tp, "fp": fp, "fn": fn,
                "both_empty": self.n_gt == 0 and fp == 0}


# --------------------------------------------------------------------------- helpers
def safe_ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def to_jsonable(obj: Any) -> Any:
    """Numpy scalars/arrays -> Python; NaN and ±inf -> None; dataclasses are not expected."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


# --------------------------------------------------------------------------- per-image area metrics
def segmentation_summary(records: Sequence[ImageRecord], threshold: float) -> dict[str, Any]:
    """Mean Dice / IoU over all images and over tumor images, pooled Dice, count of both-empty images."""
    rows = [(r.has_tumor, *r.areas(threshold)) for r in records]
    per = [(t, *dice_iou_from_areas(i, p, g), p + g == 0) for t, i, p, g in rows]
    inter = sum(r[1] for r in rows)
    total = sum(r[2] + r[3] for r in rows)
    return {
        "dice_mean": _mean(d for _, d, _, _ in per),
        "iou_mean": _mean(j for _, _, j, _ in per),
        "dice_mean_tumor_images": _mean(d for t, d, _, _ in per if t),
        "iou_mean_tumor_images": _mean(j for t, _, j, _ in per if t),
        "dice_pooled": None if total == 0 else 2.0 * inter / total,
        "n_both_empty": sum(1 for *_, e in per if e),
    }


# --------------------------------------------------------------------------- COCO mAP
def coco_map(records: Sequence[ImageRecord], class_names: Sequence[str] = ("BG", "tumor")) -> dict[str, dict]:
    """COCO AP for masks (``segm``) and boxes (``bbox``) with pycocotools' COCOeval.

    Returns ``{"segm": {"map", "map50", "map75", "ar100"}, "bbox": {...}}`` where
    ``map`` is AP@[.5:.95], ``map50`` AP@0.5 (all areas, 100 detections per image).
    Every image takes part, tumor-free ones too (their detections are false
    positives). No detections at all -> 0; no GT instance at all -> None (undefined).
    pycocotools' console output is swallowed.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, segm, bbox = [], [], [], []
    for k, r in enumerate(records, start=1):
        images.append({"id": k, "height": r.height, "width": r.width, "file_name": r.name})
        for rle, c, box in zip(r.gt_rles, r.gt_class_ids, r.gt_boxes):
            anns.append({"id": len(anns) + 1, "image_id": k, "category_id": int(c), "segmentation": rle,
                         "area": float(_area(rle)), "bbox": _xywh(box), "iscrowd": 0})
        for rle, c, s, box in zip(r.rles, r.class_ids, r.scores, r.boxes):
            segm.append({"image_id": k, "category_id": int(c), "segmentation": rle, "score": float(s)})
            bbox.append({"image_id": k, "category_id": int(c), "bbox": _xywh(box), "score": float(s)})
    cat_ids = sorted({a["category_id"] for a in anns} | {d["category_id"] for d in segm}) or [1]
    categories = [{"id": c, "name": class_names[c] if c < len(class_names) else str(c)} for c in cat_ids]

    out = {}
    for iou_type, dets in (("segm", segm), ("bbox", bbox)):
        keys = ("map", "map50", "map75", "ar100")
        if not anns:
            out[iou_type] = dict.fromkeys(keys)
            continue
        if not dets:
            out[iou_type] = dict.fromkeys(keys, 0.0)
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = {"images": images, "annotations": anns, "categories": categories}
            gt.createIndex()
            dt = gt.loadRes([dict(d) for d in dets])
            ev = COCOeval(gt, dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = ev.stats
        out[iou_type] = {k: (None if stats[i] < 0 else float(stats[i])) for k, i in zip(keys, (0, 1, 2, 8))}
    return out


# --------------------------------------------------------------------------- instances
def instance_metrics(records: Sequence[ImageRecord], threshold: float) -> dict[str, Any]:
    """TP/FP/FN, precision, recall, F1 and false positives per image at ``threshold`` (IoU >= 0.5)."""
    tp = fp = fn = 0
    for r in records:
        a, b, c = r.counts(threshold)
        tp, fp, fn = tp + a, fp + b, fn + c
    if tp + fp == 0:
        precision = 0.0 if tp + fn else None
    else:
        precision = tp / (tp + fp)
    recall = safe_ratio(tp, tp + fn)
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"iou_threshold": IOU_MATCH, "tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall,
            "f1": f1, "fp_per_image": safe_ratio(fp, len(records))}


def pr_curve(records: Sequence[ImageRecord]) -> dict[str, list[float]]:
    """Instance precision–recall curve over all score thresholds.

    Returns ``{"score": [K], "precision": [K], "recall": [K]}``, one point per
    distinct detection score (descending): the metrics when every detection with
    ``score >= score[k]`` counts.
    """
    scores = np.concatenate([r.scores for r in records]) if records else np.zeros(0)
    matched = np.concatenate([r.matched for r in records]) if records else np.zeros(0, bool)
    n_gt = sum(r.n_gt for r in records)
    if not len(scores):
        return {"score": [], "precision": [], "recall": []}
    order = np.argsort(-scores, kind="stable")
    s, m = scores[order], matched[order]
    tp = np.cumsum(m)
    fp = np.cumsum(~m)
    last = np.r_[s[1:] != s[:-1], True]  # the last detection of each group of equal scores
    precision = tp[last] / (tp[last] + fp[last])
    recall = tp[last] / n_gt if n_gt else np.full(int(last.sum()), np.nan)
    return {"score": s[last].tolist(), "precision": precision.tolist(), "recall": to_jsonable(recall)}


# --------------------------------------------------------------------------- image level
def image_level(records: Sequence[ImageRecord], threshold: float) -> dict[str, Any]:
    """Sensitivity (any detection / detection overlapping GT) on tumor images, specificity on tumor-free ones."""
    tumor = [r for r in records if r.has_tumor]
    free = [r for r in records if not r.has_tumor]
    any_hit = sum(1 for r in tumor if r.outlined(threshold))
    overlap_hit = sum(1 for r in tumor if r.max_overlap_score >= r.threshold_at(threshold) and r.max_overlap_score > 0)
    flagged = [r for r in free if r.outlined(threshold)]
    fp_free = sum(int(np.count_nonzero(r.kept(threshold))) for r in free)
    return {
        "n_tumor_images": len(tumor),
        "n_tumor_free_images": len(free),
        "sensitivity_any": safe_ratio(any_hit, len(tumor)),
        "sensitivity_overlap": safe_ratio(overlap_hit, len(tumor)),
        "specificity": safe_ratio(len(free) - len(flagged), len(free)),
        "tumor_free_fp_per_image": safe_ratio(fp_free, len(free)),
        "flagged_tumor_free": [{"name": r.name, "max_score": round(r.max_score, 4)} for r in flagged],
    }


def slice_counts(names: Sequence[str], slices: Sequence[str | None] | None,
                 flagged: Sequence[bool]) -> dict[str, int]:
    """How many distinct slices ``names`` show and how many of them are flagged.

    ``slices[k]``: the slice image k is a copy of (a tumor-free folder repeats slices flipped and
    re-windowed, :mod:`braintumor.tumor_free`); None (or no ``slices``) makes the image its own
    slice. A slice counts as flagged when any of its copies is: the conservative count.
    """
    keys = [(s if s is not None else "\0" + n) for n, s in zip(names, slices or [None] * len(names))]
    if len(keys) != len(names) or len(flagged) != len(names):
        raise ValueError(f"{len(names)} images, {len(keys)} slice keys and {len(flagged)} flags")
    return {"n_slices": len(set(keys)), "n_flagged_slices": len({k for k, f in zip(keys, flagged) if f})}


def threshold_curves(tumor_max_scores: Sequence[float], free_max_scores: Sequence[float],
                     thresholds: Sequence[float] | None = None,
                     tumor_overlap_scores: Sequence[float] | None = None) -> dict[str, list]:
    """Image-level sensitivity and specificity as functions of the confidence threshold.

    An image is flagged at t when its max score >= t and > 0. ``thresholds``
    defaults to a 0.01 grid on (0, 1] plus every distinct positive score.
    Returns ``{"threshold", "sensitivity", "specificity"[, "sensitivity_overlap"]}`` lists
    (None where undefined: no tumor / no tumor-free images).
    """
    tumor = np.asarray(tumor_max_scores, dtype=np.float64).reshape(-1)
    free = np.asarray(free_max_scores, dtype=np.float64).reshape(-1)
    if thresholds is None:
        pos = np.concatenate([tumor, free])
        thresholds = np.unique(np.r_[np.round(np.linspace(0.01, 1.0, 100), 2), pos[pos > 0]])
    t = np.asarray(thresholds, dtype=np.float64)

    def flagged_share(s: np.ndarray) -> np.ndarray:
        if not len(s):
            return np.full(len(t), np.nan)
        return ((s[None, :] >= t[:, None]) & (s[None, :] > 0)).mean(axis=1)

    out = {"threshold": t.tolist(), "sensitivity": to_jsonable(flagged_share(tumor)),
           "specificity": to_jsonable(1.0 - flagged_share(free))}
    if tumor_overlap_scores is not None:
        out["sensitivity_overlap"] = to_jsonable(flagged_share(np.asarray(tumor_overlap_scores, dtype=np.float64)))
    return out


def choose_operating_point(tumor_max_scores: Sequence[float], free_max_scores: Sequence[float],
                           min_sensitivity: float = 0.95) -> dict[str, Any]:
    """The confidence threshold with sensitivity >= ``min_sensitivity`` and the best specificity.

    Candidates are the distinct positive max scores (an image is flagged at t when
    its max score >= t; images without detections have max score 0 and are never
    flagged). Among candidates reaching the sensitivity, the best specificity wins,
    ties going to the highest threshold. If no threshold reaches it, the threshold
    with the highest sensitivity is returned (ties: best specificity, then highest
    threshold) with ``reachable = False``. No detection at all -> threshold 1.0,
    sensitivity 0. No tumor images -> threshold None. No tumor-free images ->
    specificity None (the highest threshold reaching the sensitivity is chosen).

    ``robust_threshold`` gives the same decisions on these images but sits halfway between
    ``threshold`` (an image's own max score) and the next lower max score (0 if none): a
    threshold equal to a score flips that image on the slightest round-off (float16
    storage, another CPU), so a model is shipped with the robust one.

    Returns ``{"threshold", "robust_threshold", "sensitivity", "specificity", "reachable",
    "min_sensitivity", "note"}``.
    """
    tumor = np.asarray(tumor_max_scores, dtype=np.float64).reshape(-1)
    free = np.asarray(free_max_scores, dtype=np.float64).reshape(-1)
    base = {"min_sensitivity": min_sensitivity}
    if not len(tumor):
        return {**base, "threshold": None, "robust_threshold": None, "sensitivity": None, "specificity": None,
                "reachable": False, "note": "no tumor images: sensitivity is undefined"}
    cands = np.unique(np.r_[tumor, free])
    cands = cands[cands > 0]
    if not len(cands):
        return {**base, "threshold": 1.0, "robust_threshold": 1.0, "sensitivity": 0.0,
                "specificity": 1.0 if len(free) else None, "reachable": min_sensitivity <= 0,
                "note": "the model made no detection on any image"}
    sens = (tumor[None, :] >= cands[:, None]).mean(axis=1)
    spec = 1.0 - (free[None, :] >= cands[:, None]).mean(axis=1) if len(free) else np.zeros(len(cands))
    feasible = sens >= min_sensitivity - 1e-9
    reachable = bool(feasible.any())
    if reachable:
        idx = np.flatnonzero(feasible)
        key = spec[idx]
    else:
        idx = np.flatnonzero(sens == sens.max())
        key = spec[idx]
    best = idx[key == key.max()]
    k = int(best.max())  # candidates ascend: the highest threshold among ties
    note = ("" if reachable else
            f"sensitivity {min_sensitivity:.2f} is not reachable at any threshold > 0; "
            f"this is the threshold with the highest sensitivity ({sens[k]:.3f})")
    below = float(cands[k - 1]) if k > 0 else 0.0
    return {**base, "threshold": float(cands[k]), "robust_threshold": (float(cands[k]) + below) / 2,
            "sensitivity": float(sens[k]),
            "specificity": float(spec[k]) if len(free) else None, "reachable": reachable, "note": note}
