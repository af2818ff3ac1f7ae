"""RPN anchor targets (NumPy) and detection targets (in-graph) on hand-made cases."""

import numpy as np
from keras import ops

from braintumor.boxes import norm_boxes
from braintumor.mrcnn.box_coder import np_encode
from braintumor.mrcnn.targets import DetectionTargetLayer, build_rpn_targets
from mrcnn_testutil import tiny_config

STD = [0.1, 0.1, 0.2, 0.2]


def test_rpn_targets_hand_case():
    cfg = tiny_config(RPN_TRAIN_ANCHORS_PER_IMAGE=4)
    anchors = np.array([[20, 20, 30, 30], [0, 0, 10, 10], [0, 0, 10, 8], [50, 50, 60, 60], [0, 0, 10, 14]], np.float32)
    gt = np.array([[0, 0, 10, 10]], np.float32)
    match, bbox = build_rpn_targets(anchors, gt, (64, 64), cfg, np.random.default_rng(0))
    # IoUs: 0, 1, 0.8, 0, 0.714 -> three positives > half of 4: one dropped at random; negatives fill to 4
    assert match[0] == -1 and match[3] == -1
    assert sorted(match[[1, 2, 4]].tolist()) == [0, 1, 1]
    pos = np.flatnonzero(match == 1)
    expected = np_encode(norm_boxes(anchors[pos], (64, 64)), norm_boxes(np.repeat(gt, len(pos), 0), (64, 64)), STD)
    np.testing.assert_allclose(bbox[:2], expected, atol=1e-6)
    assert np.all(bbox[2:] == 0)


def test_rpn_targets_best_anchor_is_positive_even_below_threshold():
    cfg = tiny_config(RPN_TRAIN_ANCHORS_PER_IMAGE=8)
    anchors = np.array([[0, 0, 16, 16], [40, 40, 56, 56]], np.float32)
    gt = np.array([[0, 0, 8, 8]], np.float32)  # IoU 0.25 with anchor 0
    match, _ = build_rpn_targets(anchors, gt, (64, 64), cfg)
    np.testing.assert_array_equal(match, [1, -1])


def test_rpn_targets_empty_ground_truth_all_negative():
    cfg = tiny_config(RPN_TRAIN_ANCHORS_PER_IMAGE=8)
    anchors = np.tile(np.array([[0, 0, 8, 8]], np.float32), (20, 1))
    match, bbox = build_rpn_targets(anchors, np.zeros((0, 4)), (64, 64), cfg, np.random.default_rng(0))
    assert (match == -1).sum() == 8 and (match == 1).sum() == 0 and (match == 0).sum() == 12
    assert np.all(bbox == 0)


def _layer(num_rois=6, ratio=0.5):
    return DetectionTargetLayer(num_rois, ratio, STD, (4, 4), use_mini_mask=True, seed=3)


def test_detection_targets_hand_case():
    gt_box = [0.0, 0.0, 0.5, 0.5]
    proposals = np.array([[gt_box, [0.0, 0.0, 0.5, 0.4], [0.5, 0.5, 1.0, 1.0], [0, 0, 0, 0]]], np.float32)
    gt_ids = np.array([[1, 0]], np.int32)
    gt_boxes = np.array([[gt_box, [0, 0, 0, 0]]], np.float32)
    mini = np.zeros((1, 2, 8, 8), np.float32)
    mini[0, 0, :, :4] = 1  # left half of the tumor box
    layer = _layer(6, 0.67)  # room for 4 positives
    rois, ids, deltas, masks = [ops.convert_to_numpy(t) for t in layer([proposals, gt_ids, gt_boxes, mini])]
    # positives: proposal 0 (IoU 1), proposal 1 (IoU 0.8), the appended GT box; negative: proposal 2
    np.testing.assert_array_equal(ids[0], [1, 1, 1, 0, -1, -1])
    np.testing.assert_allclose(rois[0, 3], [0.5, 0.5, 1.0, 1.0])
    assert np.all(rois[0, 4:] == 0)
    row = int(np.flatnonzero(np.isclose(rois[0, :3, 3], 0.4))[0])
    np.testing.assert_allclose(deltas[0, row], [0, 1.25, 0, np.log(1.25) / 0.2], atol=1e-5)
    others = [i for i in range(3) if i != row]
    np.testing.assert_allclose(deltas[0, others], 0, atol=1e-6)
    assert np.all(deltas[0, 3:] == 0)
    for i in range(3):  # both ROIs see the mask's left half as their left two of four columns
        np.testing.assert_array_equal(masks[0, i], np.tile([1, 1, 0, 0], (4, 1)))
    assert masks.shape == (1, 4, 4, 4) and np.all(masks[0, 3] == 0)  # mask rows = positive capacity


def test_detection_targets_cap_positives_and_empty_ground_truth():
    rng = np.random.default_rng(0)
    jitter = rng.uniform(-0.01, 0.01, size=(10, 4))
    props = np.concatenate([np.array([0.2, 0.2, 0.6, 0.6]) + jitter,
                            np.array([[0.7, 0.7, 0.9, 0.9]] * 10) + jitter], 0)[None].astype(np.float32)
    gt_ids = np.array([[1]], np.int32)
    gt_boxes = np.array([[[0.2, 0.2, 0.6, 0.6]]], np.float32)
    mini = np.ones((1, 1, 8, 8), np.float32)
    _, ids, _, _ = [ops.convert_to_numpy(t) for t in _layer(8, 0.25)([props, gt_ids, gt_boxes, mini])]
    np.testing.assert_array_equal(ids[0], [1, 1, 0, 0, 0, 0, 0, 0])
    # no ground truth: every valid proposal is a negative, box and mask targets are zero
    rois, ids, deltas, masks = [ops.convert_to_numpy(t) for t in
                                _layer(8, 0.25)([props, np.zeros((1, 1), np.int32), np.zeros((1, 1, 4), np.float32),
                                                 np.zeros((1, 1, 8, 8), np.float32)])]
    np.testing.assert_array_equal(ids[0], [0] * 8)
    assert np.all(deltas == 0) and np.all(masks == 0) and np.all(np.isfinite(rois))
