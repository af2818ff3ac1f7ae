"""Pyramid ROIAlign: each box is pooled from the FPN level that suits its size.

Level (FPN paper, eq. 1, with k0 = 4 for a 224-pixel box):
``k = clip(4 + round(log2(sqrt(h * w) / (224 / sqrt(H * W)))), 2, 5)`` with
``h, w`` the normalized box size and ``H, W`` the molded image size, so a box
of 224 pixels uses P4, 112 P3, 448 P5. Sampling is bilinear
(:func:`braintumor.mrcnn.tf_ops.crop_and_resize`).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from braintumor.mrcnn import tf_ops


def roi_levels(boxes, image_hw):
    """``boxes [B, N, 4]`` normalized, ``image_hw`` ``(H, W)`` -> ``[B, N]`` int32 in 2..5."""
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    image_area = ops.cast(image_hw[0], "float32") * ops.cast(image_hw[1], "float32")
    size = ops.sqrt(ops.maximum(h * w, 1e-12))
    level = ops.log(size / (224.0 / ops.sqrt(image_area))) / math.log(2.0)
    level = ops.clip(4.0 + ops.round(level), 2.0, 5.0)
    return ops.cast(level, "int32")


class PyramidROIAlign(keras.layers.Layer):
    """Inputs ``[boxes [B, N, 4] normalized, image_meta [B, META], P2, P3, P4, P5]``.

    Output ``[B, N, pool, pool, C]``: every box bilinearly pooled from its level.
    The molded image size is read from ``image_meta`` (columns 4, 5).
    """

    def __init__(self, pool_shape, **kwargs):
        super().__init__(**kwargs)
        self.pool_shape = tuple(int(p) for p in pool_shape)

    def call(self, inputs):
        boxes, meta = inputs[0], inputs[1]
        maps = list(inputs[2:])
        levels = roi_levels(boxes, (meta[0, 4], meta[0, 5])) - 2
        return tf_ops.multilevel_crop_and_resize(maps, boxes, levels, self.pool_shape)

    def compute_output_shape(self, input_shape):
        b = input_shape[0]
        return (b[0], b[1]) + self.pool_shape + (input_shape[2][-1],)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(pool_shape=list(self.pool_shape))
        return cfg
