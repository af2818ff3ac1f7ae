"""The compact release against its float32 checkpoint: same decisions, boxes within 1 px, Dice within 0.005."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from braintumor.release.files import sha256_file

EQUIVALENCE_IMAGES = 5
"""Val images whose float32 detections are recorded in the card at export (the CI equivalence test)."""
EQUIVALENCE_FLOOR = 0.05
"""Score floor (0..1) of the model while recording those detections (max scores below the threshold are kept)."""
BOX_TOLERANCE_PX = 1
DICE_TOLERANCE = 0.005


# =============================================================================== equivalence records
def _rle(mask: np.ndarray) -> list[int]:
    """Run lengths of a flattened (row-major) bool mask, starting with a run of False."""
    flat = np.asarray(mask, bool).ravel()
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def _unrle(counts: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    vals = np.arange(len(counts)) % 2 == 1
    return np.repeat(vals, counts).reshape(tuple(shape))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def detection_record(name: str, result: dict, threshold: float, gt_masks: np.ndarray | None = None,
                     image_sha256: str | None = None) -> dict[str, Any]:
    """One image's outcome at ``threshold``: decision, max score, kept boxes and scores, union mask (RLE), Dice to GT."""
    scores = np.asarray(result["scores"], np.float32).reshape(-1)
    keep = np.flatnonzero(scores >= threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    masks = np.asarray(result["masks"])
    union = masks[:, :, keep].any(axis=-1) if keep.size else np.zeros(masks.shape[:2], bool)
    rec = {"file": name, "image_sha256": image_sha256, "decision": bool(keep.size),
           "max_score": round(float(scores.max()), 5) if scores.size else 0.0,
           "boxes": np.asarray(result["rois"])[keep].astype(int).tolist(),
           "scores": [round(float(s), 5) for s in scores[keep]],
           "mask": {"shape": list(union.shape), "counts": _rle(union)}}
    if gt_masks is not None:
        gt = np.asarray(gt_masks, bool).any(axis=-1) if gt_masks.ndim == 3 else np.asarray(gt_masks, bool)
        rec["dice_gt"] = round(_dice(union, gt), 5)
    return rec


def compare_records(ref: Sequence[dict], got: Sequence[dict]) -> dict[str, Any]:
    """How far ``got`` (released model) is from ``ref`` (float32 checkpoint), image by image.

    Boxes are paired by best IoU; a different number of kept boxes counts as an
    unbounded box difference. ``max_dice_diff``: largest |Dice to GT| difference
    (or 1 - Dice between the two predictions when there is no GT).
    """
    from braintumor.boxes import box_iou

    decisions, box_diff, dice_diff, mask_dice = True, 0.0, 0.0, 1.0
    for r, g in zip(ref, got):
        decisions &= r["decision"] == g["decision"]
        rb, gb = np.asarray(r["boxes"], float).reshape(-1, 4), np.asarray(g["boxes"], float).reshape(-1, 4)
        if len(rb) != len(gb):
            box_diff = float("inf")
        elif len(rb):
            iou = box_iou(rb, gb)
            pair = iou.argmax(axis=1)
            box_diff = max(box_diff, float(np.abs(rb - gb[pair]).max()))
        a, b = _unrle(r["mask"]["counts"], r["mask"]["shape"]), _unrle(g["mask"]["counts"], g["mask"]["shape"])
        md = _dice(a, b)
        mask_dice = min(mask_dice, md)
        if r.get("dice_gt") is not None and g.get("dice_gt") is not None:
            dice_diff = max(dice_diff, abs(r["dice_gt"] - g["dice_gt"]))
        else:
            dice_diff = max(dice_diff, 1.0 - md)
    ok = len(ref) == len(got) and decisions and box_diff <= BOX_TOLERANCE_PX and dice_diff < DICE_TOLERANCE
    return {"n_images": len(ref), "decisions_identical": bool(decisions and len(ref) == len(got)),
            "max_box_diff_px": box_diff, "max_dice_diff": round(dice_diff, 5),
            "min_mask_dice_between_models": round(mask_dice, 5), "equivalent": bool(ok)}


def records_for(model, samples: Sequence[tuple[str, np.ndarray, np.ndarray | None, str | None]],
                threshold: float) -> list[dict]:
    """:func:`detection_record` of ``model.detect`` on each ``(name, image, gt_masks, sha256)``."""
    return [detection_record(n, model.detect([im])[0], threshold, gt, sha) for n, im, gt, sha in samples]


def val_samples(data_dir: str | os.PathLike, n: int = EQUIVALENCE_IMAGES, class_names=("BG", "tumor")):
    """The first ``n`` val images by name: ``[(name, image, gt_masks, sha256 of the file)]``."""
    from braintumor.data import load_split

    ds = load_split(Path(data_dir), "val", class_names=list(class_names))
    order = sorted(ds.image_ids, key=lambda i: Path(ds.image_info[i]["path"]).name)[:n]
    out = []
    for i in order:
        p = Path(ds.image_info[i]["path"])
        out.append((p.name, ds.load_image(i), ds.load_mask(i)[0], sha256_file(p)))
    return out
