"""Box deltas (the regression targets of the RPN and the box head), clipping and IoU.

A delta ``(dy, dx, dh, dw)`` moves a box of centre ``(cy, cx)`` and size
``(h, w)`` to centre ``(cy + dy * h, cx + dx * w)`` and size
``(h * exp(dh), w * exp(dw))``. Targets are divided by a per-coordinate
standard deviation (``RPN_BBOX_STD_DEV`` / ``BBOX_STD_DEV``) so that they have
roughly unit scale; the network's outputs are multiplied by it before decoding.

``encode``/``decode``/``clip``/``iou`` work on ``keras.ops`` tensors of shape
``[..., 4]``; the ``np_`` twins on NumPy arrays (used on the data side).
"""

from __future__ import annotations

import numpy as np
from keras import ops

# exp() argument cap: a delta can at most scale a box by e^4.1 ~ 60 (avoids inf)
_MAX_LOG_SCALE = float(np.log(1000.0 / 16.0))


def _split(b):
    return b[..., 0], b[..., 1], b[..., 2], b[..., 3]


def encode(boxes, gt_boxes, std_dev=(1.0, 1.0, 1.0, 1.0)):
    """Deltas ``[..., 4]`` that move ``boxes`` onto ``gt_boxes`` (same shape), divided by ``std_dev``."""
    boxes = ops.cast(boxes, "float32")
    gt_boxes = ops.cast(gt_boxes, "float32")
    y1, x1, y2, x2 = _split(boxes)
    gy1, gx1, gy2, gx2 = _split(gt_boxes)
    h = ops.maximum(y2 - y1, 1e-8)
    w = ops.maximum(x2 - x1, 1e-8)
    gh = ops.maximum(gy2 - gy1, 1e-8)
    gw = ops.maximum(gx2 - gx1, 1e-8)
    d = ops.stack([((gy1 + 0.5 * gh) - (y1 + 0.5 * h)) / h,
                   ((gx1 + 0.5 * gw) - (x1 + 0.5 * w)) / w,
                   ops.log(gh / h), ops.log(gw / w)], axis=-1)
    return d / ops.convert_to_tensor(np.asarray(std_dev, np.float32))


def decode(boxes, deltas, std_dev=(1.0, 1.0, 1.0, 1.0)):
    """Apply ``deltas * std_dev`` ``[..., 4]`` to ``boxes`` ``[..., 4]``; inverse of :func:`encode`."""
    boxes = ops.cast(boxes, "float32")
    deltas = ops.cast(deltas, "float32") * ops.convert_to_tensor(np.asarray(std_dev, np.float32))
    y1, x1, y2, x2 = _split(boxes)
    h = y2 - y1
    w = x2 - x1
    cy = y1 + 0.5 * h + deltas[..., 0] * h
    cx = x1 + 0.5 * w + deltas[..., 1] * w
    h = h * ops.exp(ops.minimum(deltas[..., 2], _MAX_LOG_SCALE))
    w = w * ops.exp(ops.minimum(deltas[..., 3], _MAX_LOG_SCALE))
    return ops.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def clip(boxes, window):
    """Clip ``boxes`` ``[..., 4]`` to ``window`` ``(wy1, wx1, wy2, wx2)`` (broadcastable ``[..., 4]``)."""
    window = ops.cast(window, "float32")
    wy1, wx1, wy2, wx2 = _split(window)
    y1, x1, y2, x2 = _split(boxes)
    y1 = ops.minimum(ops.maximum(y1, wy1), wy2)
    x1 = ops.minimum(ops.maximum(x1, wx1), wx2)
    y2 = ops.minimum(ops.maximum(y2, wy1), wy2)
    x2 = ops.minimum(ops.maximum(x2, wx1), wx2)
    return ops.stack([y1, x1, y2, x2], axis=-1)


def area(boxes):
    y1, x1, y2, x2 = _split(boxes)
    return ops.maximum(y2 - y1, 0.0) * ops.maximum(x2 - x1, 0.0)


def iou(a, b):
    """IoU ``[B, N, M]`` between ``a [B, N, 4]`` and ``b [B, M, 4]`` (0 where a box is empty)."""
    a = ops.cast(a, "float32")
    b = ops.cast(b, "float32")
    ay1, ax1, ay2, ax2 = [t[:, :, None] for t in _split(a)]
    by1, bx1, by2, bx2 = [t[:, None, :] for t in _split(b)]
    ih = ops.maximum(ops.minimum(ay2, by2) - ops.maximum(ay1, by1), 0.0)
    iw = ops.maximum(ops.minimum(ax2, bx2) - ops.maximum(ax1, bx1), 0.0)
    inter = ih * iw
    union = area(a)[:, :, None] + area(b)[:, None, :] - inter
    return ops.where(union > 0, inter / ops.maximum(union, 1e-12), 0.0)


# ---- NumPy twins (data side) -------------------------------------------------
def np_encode(boxes, gt_boxes, std_dev=(1.0, 1.0, 1.0, 1.0)) -> np.ndarray:
    """NumPy :func:`encode`: ``[N, 4]`` boxes and targets -> ``[N, 4]`` float32 deltas."""
    boxes = np.asarray(boxes, np.float64)
    gt = np.asarray(gt_boxes, np.float64)
    h = boxes[:, 2] - boxes[:, 0]
    w = boxes[:, 3] - boxes[:, 1]
    gh = gt[:, 2] - gt[:, 0]
    gw = gt[:, 3] - gt[:, 1]
    d = np.stack([((gt[:, 0] + 0.5 * gh) - (boxes[:, 0] + 0.5 * h)) / h,
                  ((gt[:, 1] + 0.5 * gw) - (boxes[:, 1] + 0.5 * w)) / w,
                  np.log(gh / h), np.log(gw / w)], axis=1)
    return (d / np.asarray(std_dev, np.float64)).astype(np.float32)


def np_decode(boxes, deltas, std_dev=(1.0, 1.0, 1.0, 1.0)) -> np.ndarray:
    """NumPy :func:`decode`."""
    boxes = np.asarray(boxes, np.float64)
    d = np.asarray(deltas, np.float64) * np.asarray(std_dev, np.float64)
    h = boxes[:, 2] - boxes[:, 0]
    w = boxes[:, 3] - boxes[:, 1]
    cy = boxes[:, 0] + 0.5 * h + d[:, 0] * h
    cx = boxes[:, 1] + 0.5 * w + d[:, 1] * w
    h = h * np.exp(d[:, 2])
    w = w * np.exp(d[:, 3])
    return np.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=1).astype(np.float32)
