"""Pyramid level assignment and level-wise pooling."""

import numpy as np
from keras import ops

from braintumor.mrcnn.roi_align import PyramidROIAlign, roi_levels


def _box(size_px, image=1024):
    s = size_px / image
    return [0.1, 0.1, 0.1 + s, 0.1 + s]


def test_roi_levels_follow_fpn_rule():
    boxes = np.array([[_box(224), _box(112), _box(448), _box(56), _box(20), _box(2000), [0, 0, 0, 0]]], np.float32)
    lv = ops.convert_to_numpy(roi_levels(boxes, (1024, 1024)))
    np.testing.assert_array_equal(lv, [[4, 3, 5, 2, 2, 5, 2]])


def test_pyramid_roi_align_pools_from_assigned_level():
    maps = [np.full((1, s, s, 4), float(lv), np.float32) for lv, s in zip((2, 3, 4, 5), (128, 64, 32, 16))]
    meta = np.zeros((1, 14), np.float32)
    meta[0, 4:6] = 512
    # box sizes in pixels of a 512 x 512 image: 448 -> P5, 14 -> P2, 112 -> P3, 224 -> P4
    boxes = np.array([[_box(448, 512), _box(14, 512), _box(112, 512), _box(224, 512)]], np.float32)
    out = ops.convert_to_numpy(PyramidROIAlign((7, 7))([boxes, meta] + maps))
    assert out.shape == (1, 4, 7, 7, 4)
    np.testing.assert_allclose(out[0, :, 3, 3, 0], [5, 2, 3, 4])
    np.testing.assert_allclose(out[0, :, :, :, :], np.broadcast_to(np.array([5, 2, 3, 4.0])[:, None, None, None], (4, 7, 7, 4)))
