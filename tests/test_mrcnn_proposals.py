"""Proposal layer: top-k, decode, clip, NMS, zero padding."""

import numpy as np
from keras import ops

from braintumor.mrcnn.anchors import get_anchors
from braintumor.mrcnn.box_coder import np_encode
from braintumor.mrcnn.proposals import ProposalLayer
from mrcnn_testutil import tiny_config


def _inputs(cfg, best, target=None):
    _, anchors = get_anchors(cfg, (64, 64))
    a = len(anchors)
    probs = np.zeros((1, a, 2), np.float32)
    probs[0, :, 1] = np.linspace(0.01, 0.2, a)
    probs[0, best, 1] = 0.99
    probs[0, :, 0] = 1 - probs[0, :, 1]
    deltas = np.zeros((1, a, 4), np.float32)
    if target is not None:
        deltas[0, best] = np_encode(anchors[best:best + 1], np.array([target], np.float32), cfg.RPN_BBOX_STD_DEV)[0]
    return anchors, probs, deltas, np.zeros((1, 64, 64, 3), np.float32)


def test_best_anchor_decoded_first_and_clipped():
    cfg = tiny_config()
    anchors, probs, deltas, image = _inputs(cfg, best=5, target=[0.2, 0.3, 0.6, 0.5])
    out = ops.convert_to_numpy(ProposalLayer(20, 0.7, cfg)([probs, deltas, image]))
    assert out.shape == (1, 20, 4)
    np.testing.assert_allclose(out[0, 0], [0.2, 0.3, 0.6, 0.5], atol=1e-5)
    assert out.min() >= 0 and out.max() <= 1
    # anchor 5 (P2, cell (0, 1)) sticks out of the image: with zero deltas it comes back clipped
    anchors, probs, deltas, image = _inputs(cfg, best=5)
    out = ops.convert_to_numpy(ProposalLayer(20, 0.7, cfg)([probs, deltas, image]))
    np.testing.assert_allclose(out[0, 0], np.clip(anchors[5], 0, 1), atol=1e-6)


def test_fewer_survivors_are_zero_padded():
    cfg = tiny_config(PRE_NMS_LIMIT=6)
    _, probs, deltas, image = _inputs(cfg, best=0)
    out = ops.convert_to_numpy(ProposalLayer(10, 0.7, cfg)([probs, deltas, image]))
    nonzero = np.any(out[0] != 0, axis=1)
    assert 1 <= nonzero.sum() <= 6
    assert not nonzero[6:].any()
    # NMS: no two kept proposals overlap by more than the threshold
    from braintumor.boxes import box_iou
    kept = out[0][nonzero]
    iou = box_iou(kept, kept) - np.eye(len(kept))
    assert iou.max() <= 0.7 + 1e-6
