"""Test-time horizontal flip: one image's detections merged with those of its mirror image.

The model sees the scan and the scan mirrored left-right (brains are nearly symmetric, and
training flips half the samples, so both views are in distribution). The mirror view's
detections are mirrored back into the image's frame (:func:`unflip`), then the two lists are
merged (:func:`merge_views`):

- detections of the same class whose boxes overlap (IoU ≥ ``iou``) are one region, at most one
  from each view, greedily by score;
- a region's **score** is the mean of its two views' scores; a view that did not detect it
  counts 0 (it scored below the detection floor, 0.05 in evaluation), so a region only one view
  sees keeps half its score;
- its **box** is the mean of its members' boxes, and its **mask** the mean of their mask
  probabilities, thresholded at ``DETECTION_MASK_THRESHOLD`` (0.5 by default; a single member: its own mask).

Each result is a dict of :func:`braintumor.mrcnn.inputs.unmold_detections` with ``soft=True``:
``rois`` int32 ``[N, (y1, x1, y2, x2)]`` pixels, ``class_ids`` int32 ``[N]``, ``scores``
float32 ``[N]``, ``masks`` float32 ``[H, W, N]`` probabilities in [0, 1]. It costs a second
forward pass: ``detect()`` takes about twice as long (``TEST_TIME_FLIP``, off by default).
"""

from __future__ import annotations

import numpy as np

from braintumor.boxes import box_iou


def unflip(result: dict, width: int) -> dict:
    """``result`` of the image mirrored left-right (``image[:, ::-1]``, ``width`` pixels wide), in
    the unmirrored image's frame: ``x1, x2 -> width - x2, width - x1`` and every mask mirrored."""
    rois = np.asarray(result["rois"]).copy()
    if len(rois):
        rois[:, [1, 3]] = width - np.asarray(result["rois"])[:, [3, 1]]
    return {**result, "rois": rois, "masks": np.asarray(result["masks"])[:, ::-1, :]}


def merge_views(a: dict, b: dict, iou: float = 0.5, mask_threshold: float = 0.5) -> dict:
    """The regions of two views ``a`` and ``b`` of one image (same frame, soft masks), as described
    in the module docstring; ordered by merged score, highest first. Masks come back bool: the mean
    probability at ``mask_threshold`` (``DETECTION_MASK_THRESHOLD``) or above."""
    na, nb = len(a["scores"]), len(b["scores"])
    h, w = np.asarray(a["masks"]).shape[:2]
    if na + nb == 0:
        return {"rois": np.zeros((0, 4), np.int32), "class_ids": np.zeros(0, np.int32),
                "scores": np.zeros(0, np.float32), "masks": np.zeros((h, w, 0), bool)}
    rois = np.concatenate([np.asarray(a["rois"]).reshape(-1, 4), np.asarray(b["rois"]).reshape(-1, 4)]).astype(np.float64)
    class_ids = np.concatenate([a["class_ids"], b["class_ids"]]).astype(np.int32)
    scores = np.concatenate([a["scores"], b["scores"]]).astype(np.float64)
    view = np.r_[np.zeros(na, int), np.ones(nb, int)]
    masks = (np.asarray(a["masks"], np.float32), np.asarray(b["masks"], np.float32))
    overlap = box_iou(rois, rois)
    used = np.zeros(na + nb, bool)
    out_rois, out_cls, out_scores, out_masks = [], [], [], []
    for i in np.argsort(-scores, kind="stable"):
        if used[i]:
            continue
        used[i] = True
        members = [i]
        partners = np.flatnonzero(~used & (view != view[i]) & (class_ids == class_ids[i]) & (overlap[i] >= iou))
        if len(partners):
            j = partners[np.argmax(scores[partners])]
            used[j] = True
            members.append(j)
        prob = np.mean([masks[view[m]][:, :, m - na * view[m]] for m in members], axis=0)
        out_rois.append(rois[members].mean(axis=0))
        out_cls.append(class_ids[i])
        out_scores.append(scores[members].sum() / 2.0)
        out_masks.append(prob >= mask_threshold)
    order = np.argsort(-np.asarray(out_scores), kind="stable")
    return {"rois": np.round(np.asarray(out_rois)[order]).astype(np.int32),
            "class_ids": np.asarray(out_cls, np.int32)[order],
            "scores": np.asarray(out_scores, np.float32)[order],
            "masks": np.stack(out_masks, axis=-1)[:, :, order]}
