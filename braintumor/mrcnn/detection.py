"""Detection layer: classified, refined ROIs -> final detections (inference).

Every (ROI, foreground class) pair is a candidate, scored by that class's
probability, as torchvision's ``RoIHeads.postprocess_detections`` does (Matterport
keeps only each ROI's most likely class instead). That class's deltas (times
``BBOX_STD_DEV``) are applied to the ROI and the box is clipped to the image
window (the molded image without its padding). Candidates scoring below
``DETECTION_MIN_CONFIDENCE`` are dropped, NMS runs per class
(``DETECTION_NMS_THRESHOLD``), the ``DETECTION_MAX_INSTANCES`` best remain.

Why per class: with one foreground class the most-likely-class rule can never
return a tumor scoring below 0.5 (background wins), so no operating point below
0.5 could be chosen. Above 0.5 both rules give the same detections for a
two-class model.
"""

from __future__ import annotations

import keras
from keras import ops

from braintumor.mrcnn import box_coder, tf_ops


def window_from_meta(meta):
    """Image window ``[B, (y1, x1, y2, x2)]`` normalized to the molded image, from ``image_meta``."""
    h = meta[:, 4]
    w = meta[:, 5]
    win = meta[:, 7:11]
    scale = ops.stack([h - 1.0, w - 1.0, h - 1.0, w - 1.0], axis=-1)
    shift = ops.convert_to_tensor([0.0, 0.0, 1.0, 1.0])
    return (win - shift) / scale


class DetectionLayer(keras.layers.Layer):
    """Inputs ``[rois [B, N, 4], mrcnn_probs [B, N, C], mrcnn_deltas [B, N, C, 4], image_meta [B, META]]``.

    Output ``[B, max_instances, (y1, x1, y2, x2, class_id, score)]``, boxes
    normalized to the molded image, best score first, zero rows as padding.
    """

    def __init__(self, max_instances, min_confidence, nms_threshold, bbox_std_dev, **kwargs):
        super().__init__(**kwargs)
        self.max_instances = int(max_instances)
        self.min_confidence = float(min_confidence)
        self.nms_threshold = float(nms_threshold)
        self.bbox_std_dev = [float(v) for v in bbox_std_dev]

    def call(self, inputs):
        rois, probs, deltas, meta = inputs
        n_rois = ops.shape(rois)[1]
        n_fg = ops.shape(probs)[2] - 1
        # candidates [B, N * (C - 1)], ROI-major: (roi 0, class 1), (roi 0, class 2), ...
        scores = ops.reshape(probs[:, :, 1:], (-1, n_rois * n_fg))
        class_ids = ops.broadcast_to(ops.arange(1, n_fg + 1, dtype="int32")[None, None, :], ops.shape(probs[:, :, 1:]))
        class_ids = ops.reshape(class_ids, (-1, n_rois * n_fg))
        rois_c = ops.broadcast_to(rois[:, :, None, :], ops.shape(deltas[:, :, 1:, :]))
        boxes = box_coder.decode(rois_c, deltas[:, :, 1:, :], self.bbox_std_dev)
        boxes = box_coder.clip(boxes, window_from_meta(meta)[:, None, None, :])
        roi_valid = ops.broadcast_to((box_coder.area(rois) > 0)[:, :, None], ops.shape(probs[:, :, 1:]))
        keep = ops.logical_and(roi_valid, box_coder.area(boxes) > 0)
        boxes = ops.reshape(boxes, (-1, n_rois * n_fg, 4))
        keep = ops.logical_and(ops.reshape(keep, (-1, n_rois * n_fg)), scores >= self.min_confidence)
        nms_scores = ops.where(keep, scores, -1.0)
        # per-class NMS in one pass: shift each class to its own region of the plane
        offset = ops.cast(class_ids, "float32")[:, :, None] * 2.0
        ix = tf_ops.batched_nms_indices(boxes + offset, nms_scores, self.max_instances,
                                        self.nms_threshold, score_threshold=-0.5)
        valid = ix >= 0
        ix = ops.maximum(ix, 0)
        out_boxes = ops.take_along_axis(boxes, ix[:, :, None], axis=1)
        out_cls = ops.cast(ops.take_along_axis(class_ids, ix, axis=1), "float32")
        out_scores = ops.take_along_axis(scores, ix, axis=1)
        det = ops.concatenate([out_boxes, out_cls[:, :, None], out_scores[:, :, None]], axis=-1)
        return ops.where(valid[:, :, None], det, 0.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.max_instances, 6)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(max_instances=self.max_instances, min_confidence=self.min_confidence,
                   nms_threshold=self.nms_threshold, bbox_std_dev=self.bbox_std_dev)
        return cfg
