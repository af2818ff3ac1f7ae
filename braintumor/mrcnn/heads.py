"""Box/class head and mask head, run on every ROI at once.

The ROI axis is folded into the batch axis (``[B, N, ...] -> [B * N, ...]``)
so plain ``Conv2D``/``BatchNormalization``/``Dense`` layers carry Matterport's
names and weight shapes (``mrcnn_class_conv1`` kernel ``(7, 7, depth, 1024)``).

Classifier: ROIAlign ``POOL_SIZE`` -> ``mrcnn_class_conv1`` (POOLxPOOL valid, FC
size) + ``mrcnn_class_bn1`` + ReLU -> ``mrcnn_class_conv2`` (1x1) +
``mrcnn_class_bn2`` + ReLU -> ``mrcnn_class_logits`` (Dense NUM_CLASSES) and
``mrcnn_bbox_fc`` (Dense NUM_CLASSES * 4).

Mask: ROIAlign ``MASK_POOL_SIZE`` -> 4 x (``mrcnn_mask_conv{i}`` 3x3 256 +
``mrcnn_mask_bn{i}`` + ReLU) -> ``mrcnn_mask_deconv`` (2x2 stride 2, 256, ReLU)
-> ``mrcnn_mask`` (1x1, NUM_CLASSES, sigmoid): ``[B, N, 2 * MASK_POOL_SIZE, 2 * MASK_POOL_SIZE, NUM_CLASSES]``.

``mrcnn_class_conv1`` is a :class:`WholeWindowConv`: Matterport's kernel, computed as
one matrix product (TensorFlow's CPU gradient of a 7x7 "valid" convolution over a
7x7 input took 16 s per step for 200 ROIs; the product takes 0.3 s).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from braintumor.mrcnn import tf_ops
from braintumor.mrcnn.backbone import norm_kind, norm_layer
from braintumor.mrcnn.precision import compute_scope
from braintumor.mrcnn.roi_align import PyramidROIAlign


class FoldRois(keras.layers.Layer):
    """``[B, N, ...] -> [B * N, ...]``."""

    def call(self, x):
        return ops.reshape(x, (-1,) + tuple(x.shape[2:]))

    def compute_output_shape(self, s):
        return (None,) + tuple(s[2:])


class UnfoldRois(keras.layers.Layer):
    """``[B * N, ...] -> [B, N, ...]`` for a fixed ``N``."""

    def __init__(self, num_rois, **kwargs):
        super().__init__(**kwargs)
        self.num_rois = int(num_rois)

    def call(self, x):
        return ops.reshape(x, (-1, self.num_rois) + tuple(x.shape[1:]))

    def compute_output_shape(self, s):
        return (None, self.num_rois) + tuple(s[1:])

    def get_config(self):
        cfg = super().get_config()
        cfg.update(num_rois=self.num_rois)
        return cfg


class CompactRows(keras.layers.Layer):
    """Inputs ``[x [M, ...], valid [B, N]]`` with ``M = B * N`` -> ``(x[valid] [K, ...], indices [K])``."""

    def call(self, inputs):
        x, valid = inputs
        return tf_ops.compact_rows(x, ops.reshape(valid, (-1,)))

    def compute_output_spec(self, inputs):
        x = inputs[0]
        return (keras.KerasTensor((None,) + tuple(x.shape[1:]), x.dtype), keras.KerasTensor((None,), "int32"))


class ScatterRows(keras.layers.Layer):
    """Inputs ``[y [K, ...], indices [K], valid [B, N]]`` -> ``[B * N, ...]``: ``y`` at ``indices``, 0 elsewhere."""

    def call(self, inputs):
        y, idx, valid = inputs
        return tf_ops.scatter_rows(y, idx, valid)

    def compute_output_shape(self, s):
        return (None,) + tuple(s[0][1:])


class WholeWindowConv(keras.layers.Layer):
    """A ``k x k`` "valid" convolution over a ``k x k`` input, i.e. a dense layer with a conv kernel.

    ``[N, k, k, C]`` -> ``[N, 1, 1, filters]``; weights ``kernel [k, k, C, filters]`` and
    ``bias [filters]``, exactly those of ``Conv2D(filters, k, padding="valid")`` (same
    names, shapes and initialisers), so checkpoints written either way load either way.
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)

    def build(self, input_shape):
        k, c = self.kernel_size, int(input_shape[-1])
        if tuple(input_shape[1:3]) != (k, k):
            raise ValueError(f"{self.name}: input must be {k}x{k}, got {tuple(input_shape[1:3])}")
        self.kernel = self.add_weight(name="kernel", shape=(k, k, c, self.filters), initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, x):
        k = self.kernel_size
        flat = ops.reshape(x, (-1, k * k * x.shape[-1]))
        y = ops.matmul(flat, ops.reshape(self.kernel, (-1, self.filters))) + self.bias
        return ops.reshape(y, (-1, 1, 1, self.filters))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, 1, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size}


def _bn(name, config):
    return norm_layer(name, config.TRAIN_BN, norm_kind(config))


def classifier_head(rois, meta, feature_maps, config, num_rois):
    """``rois [B, N, 4]`` normalized -> ``(logits [B, N, C], probs [B, N, C], deltas [B, N, C, 4])``."""
    c = config.NUM_CLASSES
    fc = config.FPN_CLASSIF_FC_LAYERS_SIZE
    x = PyramidROIAlign((config.POOL_SIZE, config.POOL_SIZE), name="roi_align_classifier")([rois, meta] + feature_maps)
    with compute_scope(config):  # PRECISION (braintumor.mrcnn.precision); ROIAlign and what follows: float32
        x = FoldRois(name="mrcnn_class_fold")(x)
        x = WholeWindowConv(fc, config.POOL_SIZE, name="mrcnn_class_conv1")(x)
        x = _bn("mrcnn_class_bn1", config)(x)
        x = layers.Activation("relu")(x)
        x = layers.Conv2D(fc, 1, name="mrcnn_class_conv2")(x)
        x = _bn("mrcnn_class_bn2", config)(x)
        x = layers.Activation("relu")(x)
        shared = layers.Reshape((fc,), name="pool_squeeze")(x)
        logits = layers.Dense(c, name="mrcnn_class_logits")(shared)
        deltas = layers.Dense(c * 4, name="mrcnn_bbox_fc")(shared)
    logits = UnfoldRois(num_rois, name="mrcnn_class_unfold")(logits)
    probs = layers.Activation("softmax", name="mrcnn_class")(logits)
    deltas = UnfoldRois(num_rois, name="mrcnn_bbox_unfold")(deltas)
    deltas = layers.Reshape((num_rois, c, 4), name="mrcnn_bbox")(deltas)
    return logits, probs, deltas


def mask_head(rois, meta, feature_maps, config, num_rois, valid=None):
    """``rois [B, N, 4]`` normalized -> mask probabilities ``[B, N, 2P, 2P, NUM_CLASSES]``.

    valid: optional ``[B, N]`` bool; the convolutions then run on the valid rows
    only (e.g. real detections, not padding) and the other rows are 0.
    """
    p = config.MASK_POOL_SIZE
    x = PyramidROIAlign((p, p), name="roi_align_mask")([rois, meta] + feature_maps)
    with compute_scope(config):  # PRECISION; the last 1x1 convolution and sigmoid stay float32
        x = FoldRois(name="mrcnn_mask_fold")(x)
        if valid is not None:
            x, idx = CompactRows(name="mrcnn_mask_compact")([x, valid])
        for i in range(1, 5):
            x = layers.Conv2D(256, 3, padding="same", name=f"mrcnn_mask_conv{i}")(x)
            x = _bn(f"mrcnn_mask_bn{i}", config)(x)
            x = layers.Activation("relu")(x)
        x = layers.Conv2DTranspose(256, 2, strides=2, activation="relu", name="mrcnn_mask_deconv")(x)
    x = layers.Conv2D(config.NUM_CLASSES, 1, activation="sigmoid", name="mrcnn_mask")(x)
    if valid is not None:
        x = ScatterRows(name="mrcnn_mask_scatter")([x, idx, valid])
    return UnfoldRois(num_rois, name="mrcnn_mask_unfold")(x)
