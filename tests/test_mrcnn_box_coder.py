"""Box deltas, clipping and IoU."""

import numpy as np
from keras import ops

from braintumor.boxes import box_iou
from braintumor.mrcnn import box_coder as bc

STD = (0.1, 0.1, 0.2, 0.2)


def test_encode_hand_case():
    box = np.array([[0.0, 0.0, 10.0, 20.0]], np.float32)  # centre (5, 10), 10 x 20
    gt = np.array([[5.0, 0.0, 15.0, 40.0]], np.float32)  # centre (10, 20), 10 x 40
    d = ops.convert_to_numpy(bc.encode(box, gt))
    np.testing.assert_allclose(d, [[0.5, 0.5, 0.0, np.log(2.0)]], rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(bc.encode(box, gt, STD)), d / np.array(STD), rtol=1e-6)
    np.testing.assert_allclose(bc.np_encode(box, gt, STD), d / np.array(STD), rtol=1e-6)


def test_round_trip_graph_and_numpy():
    rng = np.random.default_rng(0)
    yx = rng.uniform(0, 0.6, size=(50, 2))
    hw = rng.uniform(0.05, 0.4, size=(50, 2))
    boxes = np.concatenate([yx, yx + hw], axis=1).astype(np.float32)
    yx2 = rng.uniform(0, 0.6, size=(50, 2))
    hw2 = rng.uniform(0.05, 0.4, size=(50, 2))
    gt = np.concatenate([yx2, yx2 + hw2], axis=1).astype(np.float32)
    d = bc.encode(boxes, gt, STD)
    np.testing.assert_allclose(ops.convert_to_numpy(bc.decode(boxes, d, STD)), gt, atol=1e-5)
    np.testing.assert_allclose(bc.np_decode(boxes, bc.np_encode(boxes, gt, STD), STD), gt, atol=1e-5)
    np.testing.assert_allclose(bc.np_encode(boxes, gt, STD), ops.convert_to_numpy(d), atol=1e-4)


def test_decode_caps_huge_scale():
    out = ops.convert_to_numpy(bc.decode(np.array([[0, 0, 1, 1]], np.float32), np.array([[0, 0, 1e4, 1e4]], np.float32)))
    assert np.all(np.isfinite(out))


def test_clip_to_window():
    boxes = np.array([[[-0.2, 0.1, 0.5, 1.3], [0.4, 0.4, 0.6, 0.6]]], np.float32)
    out = ops.convert_to_numpy(bc.clip(boxes, np.array([0.0, 0.0, 1.0, 1.0], np.float32)))
    np.testing.assert_allclose(out, [[[0.0, 0.1, 0.5, 1.0], [0.4, 0.4, 0.6, 0.6]]])


def test_iou_matches_numpy_and_handles_empty_boxes():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 0, 0]], np.float32)
    b = np.array([[0, 0, 10, 10], [0, 0, 5, 20], [0, 0, 0, 0]], np.float32)
    got = ops.convert_to_numpy(bc.iou(a[None], b[None]))[0]
    np.testing.assert_allclose(got, box_iou(a, b), atol=1e-6)
    assert got[0, 0] == 1.0 and abs(got[1, 0] - 25 / 175) < 1e-6
    assert np.all(got[2] == 0) and np.all(got[:, 2] == 0)
