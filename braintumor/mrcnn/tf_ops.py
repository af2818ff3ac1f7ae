"""The only TensorFlow-specific operations of the model.

Everything else in :mod:`braintumor.mrcnn` is written with ``keras.ops``; what
Keras does not offer (bilinear crop-and-resize, non-maximum suppression,
data-dependent partitioning of boxes over pyramid levels) lives here, behind
small functions with fixed-size (padded) outputs.

Box convention inside the network: ``(y1, x1, y2, x2)`` normalized so that
``0`` is the first pixel row/column and ``1`` the last one (see
:mod:`braintumor.boxes`).
"""

from __future__ import annotations

import tensorflow as tf


def crop_and_resize(images, boxes, box_indices, crop_size):
    """Bilinear crops of ``images`` resized to ``crop_size``.

    images: ``[N, H, W, C]`` float; boxes: ``[K, (y1, x1, y2, x2)]`` normalized;
    box_indices: ``[K]`` int32, the image each box samples from;
    crop_size: ``(ch, cw)``. Returns ``[K, ch, cw, C]``.

    Sample ``i`` of a crop lies at ``y1 * (H - 1) + i * (y2 - y1) * (H - 1) / (ch - 1)``
    (corners on pixel centres, as in Matterport's "ROIAlign"); outside samples are 0.
    Gradients flow to ``images`` only.
    """
    return tf.image.crop_and_resize(
        images, tf.stop_gradient(tf.cast(boxes, tf.float32)), tf.cast(box_indices, tf.int32),
        tf.constant(crop_size, tf.int32), method="bilinear")


def multilevel_crop_and_resize(feature_maps, boxes, levels, crop_size):
    """Crop every box from the pyramid level assigned to it.

    feature_maps: list of ``[B, Hl, Wl, C]`` (P2, P3, ...); boxes: ``[B, N, 4]``
    normalized; levels: ``[B, N]`` int32 index into ``feature_maps``.
    Returns ``[B, N, ch, cw, C]`` in the order of ``boxes``.
    """
    shape = tf.shape(boxes)
    batch, n = shape[0], shape[1]
    flat_boxes = tf.reshape(boxes, [-1, 4])
    flat_levels = tf.reshape(tf.cast(levels, tf.int32), [-1])
    flat_batch = tf.reshape(tf.tile(tf.range(batch)[:, None], [1, n]), [-1])
    parts, indices = [], []
    for i, fmap in enumerate(feature_maps):
        ix = tf.cast(tf.where(tf.equal(flat_levels, i))[:, 0], tf.int32)
        parts.append(crop_and_resize(fmap, tf.gather(flat_boxes, ix), tf.gather(flat_batch, ix), crop_size))
        indices.append(ix)
    merged = tf.dynamic_stitch(indices, parts)
    channels = feature_maps[0].shape[-1]
    out = tf.reshape(merged, tf.concat([[batch, n], tf.constant(crop_size, tf.int32), [tf.shape(merged)[-1]]], 0))
    if channels is not None:
        out = tf.ensure_shape(out, [None, boxes.shape[1], crop_size[0], crop_size[1], channels])
    return out


def _nms_one(boxes, scores, max_output, iou_threshold, score_threshold):
    idx = tf.image.non_max_suppression(boxes, scores, max_output, iou_threshold=iou_threshold,
                                       score_threshold=score_threshold)
    count = tf.shape(idx)[0]
    idx = tf.pad(idx, [[0, max_output - count]], constant_values=-1)
    return tf.ensure_shape(idx, [max_output])


def batched_nms_indices(boxes, scores, max_output, iou_threshold, score_threshold=float("-inf")):
    """Greedy non-maximum suppression per image, padded.

    boxes: ``[B, N, 4]``; scores: ``[B, N]``; keeps boxes with score above
    ``score_threshold``. Returns ``[B, max_output]`` int32 indices into ``N``,
    highest score first, ``-1`` where fewer boxes survive.
    """
    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    return tf.map_fn(
        lambda a: _nms_one(a[0], a[1], max_output, iou_threshold, score_threshold),
        (boxes, scores), fn_output_signature=tf.TensorSpec([max_output], tf.int32))


def compact_rows(x, valid):
    """Keep the rows of ``x`` ``[N, ...]`` where ``valid`` ``[N]`` is true.

    Returns ``(x[valid] [K, ...], indices [K] int32)``; undo with :func:`scatter_rows`.
    When no row is valid, row 0 is kept (``K = 1``): TensorFlow's CPU convolutions
    fail on empty batches; :func:`scatter_rows` zeroes it again.
    """
    idx = tf.cast(tf.where(tf.cast(valid, tf.bool))[:, 0], tf.int32)
    idx = tf.concat([idx, tf.zeros([1], tf.int32)], 0)[: tf.maximum(tf.shape(idx)[0], 1)]
    return tf.gather(x, idx), idx


def scatter_rows(y, indices, valid):
    """Rows ``y`` ``[K, ...]`` put back at ``indices`` of a zero tensor ``[N, ...]``
    (``N = len(valid)``); rows where ``valid`` ``[N]`` is false are 0."""
    valid = tf.cast(tf.reshape(valid, [-1]), y.dtype)
    shape = tf.concat([tf.shape(valid), tf.shape(y)[1:]], 0)
    out = tf.scatter_nd(indices[:, None], y, shape)
    return out * tf.reshape(valid, tf.concat([tf.shape(valid), tf.ones([tf.rank(y) - 1], tf.int32)], 0))
