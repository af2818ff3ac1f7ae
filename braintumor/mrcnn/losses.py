"""The five Mask R-CNN losses, each a scalar, written with ``keras.ops``.

Every loss averages over the elements it is defined on and divides by
``max(count, 1)``, so an image without positives (e.g. a tumor-free scan with
empty ground truth) gives exactly 0 for the box and mask losses — never NaN —
while the two class losses still train "background".
"""

from __future__ import annotations

from keras import ops


def smooth_l1(y_true, y_pred):
    """Elementwise Huber loss with delta 1: ``0.5 d²`` if ``|d| < 1`` else ``|d| - 0.5``."""
    d = ops.abs(y_true - y_pred)
    return ops.where(d < 1.0, 0.5 * d * d, d - 0.5)


def _safe_mean(total, count):
    count = ops.cast(count, "float32")
    return total / ops.maximum(count, 1.0)


def rpn_class_loss(rpn_match, rpn_class_logits):
    """Object/background cross-entropy over the sampled anchors.

    rpn_match: ``[B, A]`` or ``[B, A, 1]`` int (1 pos, -1 neg, 0 neutral);
    rpn_class_logits: ``[B, A, 2]``.
    """
    match = ops.reshape(ops.cast(rpn_match, "int32"), ops.shape(rpn_class_logits)[:2])
    used = ops.cast(ops.not_equal(match, 0), "float32")
    labels = ops.cast(ops.equal(match, 1), "int32")
    ce = ops.sparse_categorical_crossentropy(labels, rpn_class_logits, from_logits=True)
    return _safe_mean(ops.sum(ce * used), ops.sum(used))


def rpn_bbox_loss(rpn_match, target_bbox, rpn_bbox):
    """Smooth-L1 between the positive anchors' predicted and target deltas.

    rpn_match: ``[B, A(, 1)]``; target_bbox: ``[B, K, 4]`` targets of the positive
    anchors in anchor order (zero padded); rpn_bbox: ``[B, A, 4]``.
    Mean over ``4 x positives``; 0 without positives.
    """
    match = ops.reshape(ops.cast(rpn_match, "int32"), ops.shape(rpn_bbox)[:2])
    pos = ops.cast(ops.equal(match, 1), "int32")
    k = target_bbox.shape[1]
    # the i-th positive anchor of an image owns row i of target_bbox
    rank = ops.clip(ops.cumsum(pos, axis=1) - 1, 0, k - 1)
    target = ops.take_along_axis(ops.cast(target_bbox, "float32"), rank[:, :, None], axis=1)
    per = ops.sum(smooth_l1(target, rpn_bbox), axis=-1)
    posf = ops.cast(pos, "float32")
    return _safe_mean(ops.sum(per * posf), 4.0 * ops.sum(posf))


def mrcnn_class_loss(target_class_ids, class_logits):
    """Cross-entropy over the sampled ROIs (target ``-1`` = padding, ignored).

    target_class_ids: ``[B, T]`` int; class_logits: ``[B, T, C]``.
    """
    t = ops.cast(target_class_ids, "int32")
    used = ops.cast(t >= 0, "float32")
    ce = ops.sparse_categorical_crossentropy(ops.maximum(t, 0), class_logits, from_logits=True)
    return _safe_mean(ops.sum(ce * used), ops.sum(used))


def mrcnn_bbox_loss(target_deltas, target_class_ids, pred_deltas):
    """Smooth-L1 on the positive ROIs' deltas of their true class.

    target_deltas: ``[B, T, 4]``; target_class_ids: ``[B, T]``; pred_deltas: ``[B, T, C, 4]``.
    """
    t = ops.cast(target_class_ids, "int32")
    pos = ops.cast(t > 0, "float32")
    pred = ops.take_along_axis(pred_deltas, ops.maximum(t, 0)[:, :, None, None], axis=2)[:, :, 0, :]
    per = ops.sum(smooth_l1(ops.cast(target_deltas, "float32"), pred), axis=-1)
    return _safe_mean(ops.sum(per * pos), 4.0 * ops.sum(pos))


def mrcnn_mask_loss(target_masks, target_class_ids, pred_masks):
    """Binary cross-entropy on the positive ROIs' mask of their true class.

    target_masks: ``[B, T, h, w]`` 0/1; target_class_ids: ``[B, T]``;
    pred_masks: ``[B, T, h, w, C]`` probabilities. Mean over positive pixels.
    """
    t = ops.cast(target_class_ids, "int32")
    pos = ops.cast(t > 0, "float32")
    pred = ops.take_along_axis(pred_masks, ops.maximum(t, 0)[:, :, None, None, None], axis=4)[..., 0]
    eps = 1e-7
    pred = ops.clip(pred, eps, 1.0 - eps)
    y = ops.cast(target_masks, "float32")
    bce = -(y * ops.log(pred) + (1.0 - y) * ops.log(1.0 - pred))
    per = ops.sum(bce, axis=(2, 3))
    pixels = float(target_masks.shape[2] * target_masks.shape[3])
    return _safe_mean(ops.sum(per * pos), pixels * ops.sum(pos))


LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss", "mrcnn_mask_loss")
