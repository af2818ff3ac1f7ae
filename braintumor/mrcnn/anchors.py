"""Pyramid anchors: one scale per FPN level, every ratio at every position.

Order (shared by the RPN head's reshaped outputs): level P2..P6, then feature
map row, then column, then ratio. A level with stride ``s`` places anchors
centred at ``(y * s, x * s)`` for feature cell ``(y, x)`` (every
``RPN_ANCHOR_STRIDE`` cells), with height ``scale / sqrt(ratio)`` and width
``scale * sqrt(ratio)`` (ratio = width / height).
"""

from __future__ import annotations

import math

import numpy as np

from braintumor.boxes import norm_boxes


def level_anchors(scale, ratios, feature_shape, feature_stride, anchor_stride=1) -> np.ndarray:
    """Anchors of one level: ``[Hf * Wf * len(ratios) / anchor_stride², (y1, x1, y2, x2)]`` float32 pixels."""
    ratios = np.asarray(ratios, dtype=np.float64)
    heights = scale / np.sqrt(ratios)
    widths = scale * np.sqrt(ratios)
    cy = np.arange(0, feature_shape[0], anchor_stride) * feature_stride
    cx = np.arange(0, feature_shape[1], anchor_stride) * feature_stride
    cy, cx = np.meshgrid(cy, cx, indexing="ij")  # [Hf, Wf]
    cy = cy.reshape(-1, 1)
    cx = cx.reshape(-1, 1)
    boxes = np.stack([cy - 0.5 * heights, cx - 0.5 * widths, cy + 0.5 * heights, cx + 0.5 * widths], axis=-1)
    return boxes.reshape(-1, 4).astype(np.float32)


def feature_shapes(image_shape, strides) -> list[tuple[int, int]]:
    """``[(ceil(H / s), ceil(W / s)) for s in strides]``."""
    return [(int(math.ceil(image_shape[0] / s)), int(math.ceil(image_shape[1] / s))) for s in strides]


def pyramid_anchors(scales, ratios, image_shape, strides, anchor_stride=1) -> np.ndarray:
    """All anchors of an image of ``image_shape = (H, W, ...)``: ``[A, (y1, x1, y2, x2)]`` float32 pixels."""
    shapes = feature_shapes(image_shape, strides)
    return np.concatenate([level_anchors(sc, ratios, sh, st, anchor_stride)
                           for sc, sh, st in zip(scales, shapes, strides)], axis=0)


_CACHE: dict = {}


def get_anchors(config, image_shape) -> tuple[np.ndarray, np.ndarray]:
    """``(pixel anchors, normalized anchors)`` ``[A, 4]`` float32 for a molded image shape (cached)."""
    key = (tuple(config.RPN_ANCHOR_SCALES), tuple(config.RPN_ANCHOR_RATIOS), tuple(image_shape[:2]),
           tuple(config.BACKBONE_STRIDES), config.RPN_ANCHOR_STRIDE)
    if key not in _CACHE:
        px = pyramid_anchors(config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS, image_shape[:2],
                             config.BACKBONE_STRIDES, config.RPN_ANCHOR_STRIDE)
        _CACHE[key] = (px, norm_boxes(px, image_shape[:2]))
    return _CACHE[key]


def num_anchors_per_location(config) -> int:
    return len(config.RPN_ANCHOR_RATIOS)


def graph_anchors(keras_ops, image_hw, scales, ratios, strides, anchor_stride=1):
    """The same anchors as :func:`pyramid_anchors`, normalized, built in-graph.

    keras_ops: the ``keras.ops`` module; image_hw: ``(H, W)`` scalar tensors or ints
    (dynamic shapes allowed). Returns ``[A, 4]`` float32 normalized.
    """
    ops = keras_ops
    h = ops.cast(image_hw[0], "float32")
    w = ops.cast(image_hw[1], "float32")
    ratios = np.asarray(ratios, dtype=np.float64)
    out = []
    for scale, stride in zip(scales, strides):
        heights = ops.convert_to_tensor((scale / np.sqrt(ratios)).astype(np.float32))
        widths = ops.convert_to_tensor((scale * np.sqrt(ratios)).astype(np.float32))
        fh = ops.cast(ops.ceil(h / stride), "int32")
        fw = ops.cast(ops.ceil(w / stride), "int32")
        cy = ops.cast(ops.arange(0, fh, anchor_stride), "float32") * stride
        cx = ops.cast(ops.arange(0, fw, anchor_stride), "float32") * stride
        cy, cx = ops.meshgrid(cy, cx, indexing="ij")
        cy = ops.reshape(cy, (-1, 1))
        cx = ops.reshape(cx, (-1, 1))
        boxes = ops.stack([cy - 0.5 * heights, cx - 0.5 * widths, cy + 0.5 * heights, cx + 0.5 * widths], axis=-1)
        out.append(ops.reshape(boxes, (-1, 4)))
    px = ops.concatenate(out, axis=0)
    scale = ops.stack([h - 1.0, w - 1.0, h - 1.0, w - 1.0])
    shift = ops.convert_to_tensor(np.array([0, 0, 1, 1], dtype=np.float32))
    return (px - shift) / scale
