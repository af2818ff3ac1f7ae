"""Region Proposal Network head: one small model shared by every pyramid level.

``rpn_model`` (a nested ``keras.Model``, as in Matterport) maps a feature map
``[B, H, W, depth]`` to, per anchor (order: row, column, ratio):

- ``rpn_class_logits`` ``[B, H * W * A, 2]`` (background, object),
- ``rpn_probs`` ``[B, H * W * A, 2]`` (softmax of the logits),
- ``rpn_bbox`` ``[B, H * W * A, (dy, dx, log(dh), log(dw))]`` deltas, to be
  multiplied by ``RPN_BBOX_STD_DEV``.

Layers: ``rpn_conv_shared`` (3x3, 512, ReLU), ``rpn_class_raw`` (1x1, 2A),
``rpn_bbox_pred`` (1x1, 4A).
"""

from __future__ import annotations

import keras
from keras import layers

from braintumor.mrcnn.precision import compute_policy, policy_scope


def build_rpn_model(anchors_per_location: int, depth: int, anchor_stride: int = 1,
                    policy: str = "float32") -> keras.Model:
    """The shared RPN head as a model named ``rpn_model``; its three convolutions compute
    under the Keras dtype ``policy`` (``PRECISION``), the reshapes and softmax in float32."""
    with policy_scope(policy):
        dtype = None if policy == "float32" else keras.config.dtype_policy().compute_dtype
        fmap = keras.Input(shape=(None, None, depth), name="input_rpn_feature_map", dtype=dtype)
        shared = layers.Conv2D(512, 3, padding="same", activation="relu", strides=anchor_stride,
                               name="rpn_conv_shared")(fmap)
        cls = layers.Conv2D(2 * anchors_per_location, 1, name="rpn_class_raw")(shared)
        box = layers.Conv2D(4 * anchors_per_location, 1, name="rpn_bbox_pred")(shared)
    logits = layers.Reshape((-1, 2))(cls)
    probs = layers.Activation("softmax", name="rpn_probs")(logits)
    bbox = layers.Reshape((-1, 4))(box)
    return keras.Model(fmap, [logits, probs, bbox], name="rpn_model")


def rpn_outputs(feature_maps, config):
    """Run the shared head on ``feature_maps`` (P2..P6) and concatenate over levels.

    Returns ``(rpn_class_logits [B, A, 2], rpn_probs [B, A, 2], rpn_bbox [B, A, 4])``.
    """
    model = build_rpn_model(len(config.RPN_ANCHOR_RATIOS), config.TOP_DOWN_PYRAMID_SIZE, config.RPN_ANCHOR_STRIDE,
                            policy=compute_policy(config))
    per_level = [model(p) for p in feature_maps]
    names = ("rpn_class_logits", "rpn_class", "rpn_bbox")
    return tuple(layers.Concatenate(axis=1, name=n)([lv[i] for lv in per_level]) for i, n in enumerate(names))
