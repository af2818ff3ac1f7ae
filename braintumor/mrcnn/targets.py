"""Training targets.

- :func:`build_rpn_targets` (NumPy, data side): label anchors positive
  (IoU >= 0.7 with a ground-truth box, or the best anchor of a box), negative
  (IoU < 0.3) or neutral, sample ``RPN_TRAIN_ANCHORS_PER_IMAGE`` of them (at
  most half positive) and compute the positives' box deltas.
- :class:`DetectionTargetLayer` (in-graph): sample ``TRAIN_ROIS_PER_IMAGE``
  proposals per image and give each its class, box-delta and mask targets.
"""

from __future__ import annotations

import numpy as np
import keras
from keras import ops

from braintumor.boxes import box_iou, norm_boxes
from braintumor.mrcnn import box_coder, tf_ops


def build_rpn_targets(anchors_px, gt_boxes_px, image_shape, config, rng=None):
    """RPN targets of one image.

    anchors_px: ``[A, 4]`` pixel anchors (see :mod:`anchors`); gt_boxes_px:
    ``[G, (y1, x1, y2, x2)]`` pixels of the molded image (G may be 0);
    image_shape: molded ``(H, W, ...)``. Returns

    - ``rpn_match`` ``[A]`` int32: 1 positive, -1 negative, 0 neutral (not trained);
    - ``rpn_bbox`` ``[RPN_TRAIN_ANCHORS_PER_IMAGE, 4]`` float32: deltas (divided
      by ``RPN_BBOX_STD_DEV``) of the positive anchors in increasing anchor order,
      zero rows after them. Deltas are computed in normalized coordinates, the
      frame in which the network decodes them.

    IoU is computed in pixels. With no ground truth every sampled anchor is negative.
    """
    rng = rng if rng is not None else np.random.default_rng()
    n_train = config.RPN_TRAIN_ANCHORS_PER_IMAGE
    num = anchors_px.shape[0]
    match = np.zeros(num, np.int32)
    bbox = np.zeros((n_train, 4), np.float32)
    gt = np.asarray(gt_boxes_px, np.float32).reshape(-1, 4)
    if len(gt):
        overlaps = box_iou(anchors_px, gt)  # [A, G]
        best_gt = overlaps.argmax(axis=1)
        iou_max = overlaps[np.arange(num), best_gt]
        match[iou_max < 0.3] = -1
        col_max = overlaps.max(axis=0)
        for g in np.flatnonzero(col_max > 0):
            match[overlaps[:, g] == col_max[g]] = 1
        match[iou_max >= 0.7] = 1
    else:
        best_gt = np.zeros(num, np.int64)
        match[:] = -1
    pos = np.flatnonzero(match == 1)
    extra = len(pos) - n_train // 2
    if extra > 0:
        match[rng.choice(pos, extra, replace=False)] = 0
    pos = np.flatnonzero(match == 1)
    neg = np.flatnonzero(match == -1)
    extra = len(neg) - (n_train - len(pos))
    if extra > 0:
        match[rng.choice(neg, extra, replace=False)] = 0
    if len(pos):
        shape = image_shape[:2]
        bbox[: len(pos)] = box_coder.np_encode(norm_boxes(anchors_px[pos], shape),
                                               norm_boxes(gt[best_gt[pos]], shape), config.RPN_BBOX_STD_DEV)
    return match, bbox


class DetectionTargetLayer(keras.layers.Layer):
    """Sample ROIs and build the head targets, fixed size per image.

    Inputs: ``proposals [B, P, 4]`` normalized (zero rows = padding),
    ``gt_class_ids [B, G]`` int (0 = padding), ``gt_boxes [B, G, 4]`` normalized,
    ``gt_masks [B, G, h, w]`` float 0/1 — mini masks (the inside of each box,
    resized to ``MINI_MASK_SHAPE``) when ``use_mini_mask``, else full molded-image masks.

    The ground-truth boxes are appended to the proposals (as in Detectron), ROIs
    with IoU >= 0.5 to a ground-truth box are positive, the others negative; up to
    ``num_rois * positive_ratio`` positives are drawn at random, negatives fill
    the rest. Outputs (``T = num_rois``):

    - ``rois [B, T, 4]`` normalized, positives first, zero rows as padding;
    - ``target_class_ids [B, T]`` int32: class of positives, 0 for negatives, -1 for padding;
    - ``target_deltas [B, T, 4]``: box deltas / ``BBOX_STD_DEV`` (zero unless positive);
    - ``target_masks [B, P, mask_h, mask_w]`` float 0/1 for the first
      ``P = positive_capacity`` rows (the only rows that can be positive; zero
      unless positive), so the mask head needs to run on those rows only.
    """

    def __init__(self, num_rois, positive_ratio, bbox_std_dev, mask_shape, use_mini_mask=True, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_rois = int(num_rois)
        self.positive_ratio = float(positive_ratio)
        self.bbox_std_dev = [float(v) for v in bbox_std_dev]
        self.mask_shape = tuple(int(v) for v in mask_shape)
        self.use_mini_mask = bool(use_mini_mask)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @property
    def positive_capacity(self) -> int:
        """Most positives per image: ``max(1, int(num_rois * positive_ratio))``; they come first."""
        return max(1, int(self.num_rois * self.positive_ratio))

    def call(self, inputs):
        proposals, gt_class_ids, gt_boxes, gt_masks = inputs
        gt_class_ids = ops.cast(gt_class_ids, "int32")
        gt_valid = gt_class_ids > 0
        gt_boxes = ops.where(gt_valid[:, :, None], ops.cast(gt_boxes, "float32"), 0.0)
        cand = ops.concatenate([ops.cast(proposals, "float32"), gt_boxes], axis=1)  # [B, P+G, 4]
        cand_valid = box_coder.area(cand) > 0
        overlaps = box_coder.iou(cand, gt_boxes)
        overlaps = ops.where(gt_valid[:, None, :], overlaps, -1.0)
        iou_max = ops.max(overlaps, axis=2)
        gt_idx = ops.cast(ops.argmax(overlaps, axis=2), "int32")
        positive = ops.logical_and(cand_valid, iou_max >= 0.5)
        negative = ops.logical_and(cand_valid, iou_max < 0.5)

        t = self.num_rois
        cap = self.positive_capacity
        rand = keras.random.uniform(ops.shape(iou_max), seed=self.seed_generator)
        pos_keys, pos_idx = ops.top_k(ops.where(positive, rand, -1.0), k=cap)
        neg_keys, neg_idx = ops.top_k(ops.where(negative, rand, -1.0), k=t)
        n_pos = ops.sum(ops.cast(pos_keys >= 0, "int32"), axis=1, keepdims=True)  # [B, 1]
        n_neg = ops.minimum(t - n_pos, ops.sum(ops.cast(neg_keys >= 0, "int32"), axis=1, keepdims=True))
        rows = ops.arange(t, dtype="int32")[None, :]
        is_pos = rows < n_pos
        is_neg = ops.logical_and(rows >= n_pos, rows < n_pos + n_neg)
        valid = ops.logical_or(is_pos, is_neg)
        sel = ops.where(is_pos, ops.take_along_axis(pos_idx, ops.minimum(rows, cap - 1) + 0 * n_pos, axis=1),
                        ops.take_along_axis(neg_idx, ops.clip(rows - n_pos, 0, t - 1), axis=1))
        sel = ops.cast(sel, "int32")

        rois = ops.take_along_axis(cand, sel[:, :, None], axis=1)
        rois = ops.where(valid[:, :, None], rois, 0.0)
        roi_gt = ops.take_along_axis(gt_idx, sel, axis=1)  # [B, T]
        roi_gt_boxes = ops.take_along_axis(gt_boxes, roi_gt[:, :, None], axis=1)
        roi_class = ops.take_along_axis(gt_class_ids, roi_gt, axis=1)
        class_ids = ops.where(is_pos, roi_class, ops.where(is_neg, 0, -1))
        deltas = box_coder.encode(rois, roi_gt_boxes, self.bbox_std_dev)
        deltas = ops.where(is_pos[:, :, None], deltas, 0.0)

        # mask targets of the first `cap` rows: crop each positive's ground-truth mask with its ROI
        m_rois, m_gt_boxes, m_gt = rois[:, :cap], roi_gt_boxes[:, :cap], roi_gt[:, :cap]
        if self.use_mini_mask:
            gy1, gx1, gy2, gx2 = [m_gt_boxes[..., i] for i in range(4)]
            gh = ops.maximum(gy2 - gy1, 1e-6)
            gw = ops.maximum(gx2 - gx1, 1e-6)
            crop_boxes = ops.stack([(m_rois[..., 0] - gy1) / gh, (m_rois[..., 1] - gx1) / gw,
                                    (m_rois[..., 2] - gy1) / gh, (m_rois[..., 3] - gx1) / gw], axis=-1)
        else:
            crop_boxes = m_rois
        shape = ops.shape(gt_masks)
        b, g = shape[0], shape[1]
        images = ops.reshape(ops.cast(gt_masks, "float32"), (b * g, shape[2], shape[3], 1))
        box_ix = ops.arange(b, dtype="int32")[:, None] * g + m_gt
        masks = tf_ops.crop_and_resize(images, ops.reshape(crop_boxes, (-1, 4)), ops.reshape(box_ix, (-1,)),
                                       self.mask_shape)
        masks = ops.reshape(ops.round(masks), (b, cap) + self.mask_shape)
        masks = ops.where(is_pos[:, :cap, None, None], masks, 0.0)
        return rois, class_ids, deltas, masks

    def compute_output_spec(self, inputs):
        b = inputs[0].shape[0]
        t = self.num_rois
        return (keras.KerasTensor((b, t, 4), "float32"), keras.KerasTensor((b, t), "int32"),
                keras.KerasTensor((b, t, 4), "float32"), keras.KerasTensor((b, self.positive_capacity) + self.mask_shape, "float32"))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(num_rois=self.num_rois, positive_ratio=self.positive_ratio, bbox_std_dev=self.bbox_std_dev,
                   mask_shape=list(self.mask_shape), use_mini_mask=self.use_mini_mask, seed=self.seed)
        return cfg
