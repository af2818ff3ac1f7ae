"""The one box format of the project, and NumPy helpers on it.

**Canonical box format** (everywhere outside the network's internals):
``(y1, x1, y2, x2)`` in **pixels** of the image the box belongs to, as float or
int, with ``y1, x1`` inclusive and ``y2, x2`` exclusive: a box covering rows
``10..19`` and columns ``5..7`` is ``(10, 5, 20, 8)``; its height is
``y2 - y1`` and its area ``(y2 - y1) * (x2 - x1)``. Arrays of boxes are
``[N, (y1, x1, y2, x2)]``.

Inside the network boxes are **normalized**: ``(y1, x1, y2, x2) / (H - 1, W - 1, H - 1, W - 1)``
with ``y2, x2`` shifted by one so they are inclusive (Matterport's convention);
:func:`norm_boxes` and :func:`denorm_boxes` convert between the two and are
exact inverses on integer boxes.
"""

from __future__ import annotations

import numpy as np


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes around instance masks.

    masks: ``[H, W, N]`` bool. Returns ``[N, (y1, x1, y2, x2)]`` int32 pixels;
    an empty mask gives ``(0, 0, 0, 0)``.
    """
    n = masks.shape[-1]
    boxes = np.zeros((n, 4), dtype=np.int32)
    for i in range(n):
        m = masks[:, :, i]
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        if rows.size:
            boxes[i] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    return boxes


def box_area(boxes: np.ndarray) -> np.ndarray:
    """``[N, 4]`` boxes -> ``[N]`` areas in pixels² (0 for degenerate boxes)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[N, M]`` between boxes ``a [N, 4]`` and ``b [M, 4]``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    y1 = np.maximum(a[:, None, 0], b[None, :, 0])
    x1 = np.maximum(a[:, None, 1], b[None, :, 1])
    y2 = np.minimum(a[:, None, 2], b[None, :, 2])
    x2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(y2 - y1, 0, None) * np.clip(x2 - x1, 0, None)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def norm_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixel boxes -> normalized boxes for an image of ``shape = (H, W)``."""
    h, w = shape[:2]
    scale = np.array([h - 1, w - 1, h - 1, w - 1], dtype=np.float32)
    shift = np.array([0, 0, 1, 1], dtype=np.float32)
    return ((np.asarray(boxes, dtype=np.float32) - shift) / scale).astype(np.float32)


def denorm_boxes(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Normalized boxes -> pixel boxes (int32, rounded) for an image of ``shape = (H, W)``."""
    h, w = shape[:2]
    scale = np.array([h - 1, w - 1, h - 1, w - 1], dtype=np.float32)
    shift = np.array([0, 0, 1, 1], dtype=np.float32)
    return np.around(np.asarray(boxes, dtype=np.float32) * scale + shift).astype(np.int32)
