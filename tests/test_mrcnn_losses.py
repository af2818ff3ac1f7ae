"""The five losses: hand values, ignored rows, and exact zeros without positives."""

import numpy as np
import tensorflow as tf
from keras import ops

from braintumor.mrcnn import losses as L


def f(x):
    return float(ops.convert_to_numpy(x))


def test_smooth_l1():
    np.testing.assert_allclose(ops.convert_to_numpy(L.smooth_l1(np.zeros(3, np.float32),
                                                                 np.array([0.5, -2.0, 1.0], np.float32))),
                               [0.125, 1.5, 0.5])


def test_rpn_class_loss_ignores_neutral_anchors():
    match = np.array([[[1], [0], [-1], [-1]]], np.int32)
    logits = np.zeros((1, 4, 2), np.float32)
    logits[0, 1] = [-50, 50]  # neutral: would cost 0 or 100 if counted
    assert abs(f(L.rpn_class_loss(match, logits)) - np.log(2)) < 1e-6
    logits[0, 0] = [0, 20]  # confident positive, negatives at log 2
    assert abs(f(L.rpn_class_loss(match, logits)) - 2 * np.log(2) / 3) < 1e-5


def test_rpn_bbox_loss_aligns_targets_with_positive_anchors_in_order():
    match = np.array([[0, 1, 0, -1, 1]], np.int32)
    targets = np.zeros((1, 3, 4), np.float32)
    targets[0, 0] = [0.1, 0.2, 0.3, 0.4]
    targets[0, 1] = [-1.0, 0.5, 0.0, 2.0]
    pred = np.random.default_rng(0).normal(size=(1, 5, 4)).astype(np.float32) * 10
    pred[0, 1] = targets[0, 0]
    pred[0, 4] = targets[0, 1] + [0.5, 0, 0, 0]
    assert abs(f(L.rpn_bbox_loss(match, targets, pred)) - 0.125 / 8) < 1e-6


def test_mrcnn_class_loss_ignores_padding_rows():
    ids = np.array([[1, 0, -1]], np.int32)
    logits = np.array([[[0, 0], [0, 0], [100, -100]]], np.float32)
    assert abs(f(L.mrcnn_class_loss(ids, logits)) - np.log(2)) < 1e-6


def test_mrcnn_bbox_and_mask_loss_use_the_true_class_of_positives():
    ids = np.array([[2, 0]], np.int32)
    target = np.array([[[1, 0, 0, 0], [9, 9, 9, 9]]], np.float32)
    pred = np.zeros((1, 2, 3, 4), np.float32)
    pred[0, 0, 1] = 100  # wrong class: ignored
    assert abs(f(L.mrcnn_bbox_loss(target, ids, pred)) - 0.5 / 4) < 1e-6
    masks = np.zeros((1, 2, 2, 2), np.float32)
    masks[0, 0, 0] = 1
    pm = np.full((1, 2, 2, 2, 3), 0.5, np.float32)
    pm[0, 0, :, :, 1] = 0.999  # wrong class: ignored
    assert abs(f(L.mrcnn_mask_loss(masks, ids, pm)) - np.log(2)) < 1e-5


def test_no_positives_gives_exact_zero_box_and_mask_losses_and_finite_gradients():
    ids = tf.constant([[0, 0, -1, -1]], tf.int32)
    deltas = tf.constant(np.random.default_rng(0).normal(size=(1, 4, 2, 4)).astype(np.float32))
    masks = tf.constant(np.random.default_rng(1).uniform(size=(1, 4, 3, 3, 2)).astype(np.float32))
    rpn_bbox = tf.constant(np.ones((1, 6, 4), np.float32))
    match = tf.constant([[-1, -1, 0, 0, -1, 0]], tf.int32)
    with tf.GradientTape() as tape:
        tape.watch([deltas, masks, rpn_bbox])
        losses = [L.mrcnn_bbox_loss(tf.zeros((1, 4, 4)), ids, deltas),
                  L.mrcnn_mask_loss(tf.zeros((1, 4, 3, 3)), ids, masks),
                  L.rpn_bbox_loss(match, tf.zeros((1, 3, 4)), rpn_bbox)]
        total = tf.add_n(losses)
    assert [f(x) for x in losses] == [0.0, 0.0, 0.0]
    for g in tape.gradient(total, [deltas, masks, rpn_bbox]):
        assert g is not None and np.all(g.numpy() == 0)
    assert f(L.mrcnn_class_loss(ids, tf.zeros((1, 4, 2)))) > 0
