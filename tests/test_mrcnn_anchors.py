"""Pyramid anchors: hand-computed values, counts, order, and the in-graph twin."""

import math

import numpy as np
from keras import ops

from braintumor.boxes import norm_boxes
from braintumor.mrcnn import anchors as A
from mrcnn_testutil import tiny_config


def test_level_anchors_hand_computed():
    a = A.level_anchors(8, [0.5, 1.0, 2.0], (2, 3), feature_stride=4)
    assert a.shape == (2 * 3 * 3, 4)
    r = math.sqrt(0.5)
    # cell (0, 0), ratio 0.5 (w/h): h = 8 / sqrt(0.5), w = 8 * sqrt(0.5)
    np.testing.assert_allclose(a[0], [-4 / r, -4 * r, 4 / r, 4 * r], rtol=1e-6)
    # cell (0, 0), ratio 1: an 8x8 square centred on (0, 0)
    np.testing.assert_allclose(a[1], [-4, -4, 4, 4])
    # order: row, column, ratio -> index 3 is cell (0, 1) ratio 0.5, centred at x = 4
    np.testing.assert_allclose(a[3], [-4 / r, 4 - 4 * r, 4 / r, 4 + 4 * r], rtol=1e-6)
    # last: cell (1, 2), ratio 2, centre (4, 8): h = 8 / sqrt(2), w = 8 * sqrt(2)
    np.testing.assert_allclose(a[-1], [4 - 4 * r, 8 - 4 / r, 4 + 4 * r, 8 + 4 / r], rtol=1e-6)


def test_pyramid_counts_and_anchor_stride():
    a = A.pyramid_anchors([8, 16, 32, 64, 128], [0.5, 1, 2], (64, 64), [4, 8, 16, 32, 64])
    assert a.shape == ((16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1) * 3, 4)
    b = A.pyramid_anchors([8, 16, 32, 64, 128], [1], (64, 128), [4, 8, 16, 32, 64], anchor_stride=2)
    assert b.shape == (8 * 16 + 4 * 8 + 2 * 4 + 1 * 2 + 1 * 1, 4)
    # the first level's anchors are 8 px squares, the last level's 128 px
    np.testing.assert_allclose(b[0], [-4, -4, 4, 4])
    np.testing.assert_allclose(b[-1], [-64, -64, 64, 64])


def test_graph_anchors_match_numpy_for_nonsquare_shape():
    cfg = tiny_config()
    for shape in [(64, 64), (64, 128)]:
        px = A.pyramid_anchors(cfg.RPN_ANCHOR_SCALES, cfg.RPN_ANCHOR_RATIOS, shape, cfg.BACKBONE_STRIDES)
        g = ops.convert_to_numpy(A.graph_anchors(ops, shape, cfg.RPN_ANCHOR_SCALES, cfg.RPN_ANCHOR_RATIOS,
                                                 cfg.BACKBONE_STRIDES))
        np.testing.assert_allclose(g, norm_boxes(px, shape), atol=1e-6)


def test_get_anchors_cached_pixel_and_normalized():
    cfg = tiny_config()
    px, nrm = A.get_anchors(cfg, (64, 64, 3))
    px2, _ = A.get_anchors(cfg, (64, 64, 3))
    assert px is px2
    np.testing.assert_allclose(nrm, norm_boxes(px, (64, 64)))
