"""Detection layer: classified, refined ROIs -> final detections (inference).

Per ROI: best class and its score, that class's deltas (times ``BBOX_STD_DEV``)
applied to the ROI, boxes clipped to the image window (the molded image
without its padding). Background ROIs and scores below
``DETECTION_MIN_CONFIDENCE`` are dropped, NMS runs per class
(``DETECTION_NMS_THRESHOLD``), the ``DETECTION_MAX_INSTANCES`` best remain.
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
        class_ids = ops.cast(ops.argmax(probs, axis=-1), "int32")  # [B, N]
        scores = ops.max(probs, axis=-1)
        d = ops.take_along_axis(deltas, class_ids[:, :, None, None], axis=2)[:, :, 0, :]
        boxes = box_coder.decode(rois, d, self.bbox_std_dev)
        boxes = box_coder.clip(boxes, window_from_meta(meta)[:, None, :])
        roi_valid = box_coder.area(rois) > 0
        keep = ops.logical_and(ops.logical_and(class_ids > 0, scores >= self.min_confidence), roi_valid)
        keep = ops.logical_and(keep, box_coder.area(boxes) > 0)
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
