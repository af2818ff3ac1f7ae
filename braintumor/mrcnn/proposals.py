"""Proposal layer: RPN scores + deltas on the anchors -> a fixed number of ROIs.

Per image: keep the ``PRE_NMS_LIMIT`` anchors with the highest object score,
decode their deltas (times ``RPN_BBOX_STD_DEV``), clip to the image
(``[0, 1]``), run NMS at ``RPN_NMS_THRESHOLD`` and keep ``proposal_count``
boxes, padding with all-zero rows.
"""

from __future__ import annotations

import keras
from keras import ops

from braintumor.mrcnn import box_coder, tf_ops
from braintumor.mrcnn.anchors import graph_anchors


class ProposalLayer(keras.layers.Layer):
    """Inputs ``[rpn_probs [B, A, 2], rpn_bbox [B, A, 4], image [B, H, W, C]]``
    (the image only gives the anchors' frame). Output ``[B, proposal_count, (y1, x1, y2, x2)]``
    normalized, highest score first, zero rows as padding."""

    def __init__(self, proposal_count, nms_threshold, config=None, *, pre_nms_limit=6000,
                 anchor_scales=(32, 64, 128, 256, 512), anchor_ratios=(0.5, 1, 2), strides=(4, 8, 16, 32, 64),
                 anchor_stride=1, rpn_bbox_std_dev=(0.1, 0.1, 0.2, 0.2), **kwargs):
        super().__init__(**kwargs)
        if config is not None:
            pre_nms_limit = config.PRE_NMS_LIMIT
            anchor_scales = config.RPN_ANCHOR_SCALES
            anchor_ratios = config.RPN_ANCHOR_RATIOS
            strides = config.BACKBONE_STRIDES
            anchor_stride = config.RPN_ANCHOR_STRIDE
            rpn_bbox_std_dev = config.RPN_BBOX_STD_DEV
        self.proposal_count = int(proposal_count)
        self.nms_threshold = float(nms_threshold)
        self.pre_nms_limit = int(pre_nms_limit)
        self.anchor_scales = list(anchor_scales)
        self.anchor_ratios = list(anchor_ratios)
        self.strides = list(strides)
        self.anchor_stride = int(anchor_stride)
        self.rpn_bbox_std_dev = list(rpn_bbox_std_dev)

    def call(self, inputs):
        probs, deltas, image = inputs
        shape = ops.shape(image)
        anchors = graph_anchors(ops, (shape[1], shape[2]), self.anchor_scales, self.anchor_ratios,
                                self.strides, self.anchor_stride)
        scores = probs[:, :, 1]
        num_anchors = probs.shape[1]
        k = self.pre_nms_limit if num_anchors is None else min(self.pre_nms_limit, num_anchors)
        top_scores, ix = ops.top_k(scores, k=k, sorted=True)
        top_deltas = ops.take_along_axis(deltas, ix[:, :, None], axis=1)
        top_anchors = ops.take(anchors, ix, axis=0)
        boxes = box_coder.decode(top_anchors, top_deltas, self.rpn_bbox_std_dev)
        boxes = box_coder.clip(boxes, ops.convert_to_tensor([0.0, 0.0, 1.0, 1.0]))
        keep = tf_ops.batched_nms_indices(boxes, top_scores, self.proposal_count, self.nms_threshold)
        valid = keep >= 0
        rois = ops.take_along_axis(boxes, ops.maximum(keep, 0)[:, :, None], axis=1)
        return ops.where(valid[:, :, None], rois, 0.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.proposal_count, 4)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(proposal_count=self.proposal_count, nms_threshold=self.nms_threshold,
                   pre_nms_limit=self.pre_nms_limit, anchor_scales=self.anchor_scales,
                   anchor_ratios=self.anchor_ratios, strides=self.strides, anchor_stride=self.anchor_stride,
                   rpn_bbox_std_dev=self.rpn_bbox_std_dev)
        return cfg
