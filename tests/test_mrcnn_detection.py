"""Detection layer: class choice, thresholds, per-class NMS, window clipping, padding."""

import numpy as np
from keras import ops

from braintumor.mrcnn.detection import DetectionLayer, window_from_meta


def _meta(window, shape=(64, 64)):
    m = np.zeros((1, 15), np.float32)
    m[0, 4:6] = shape
    m[0, 7:11] = window
    return m


def _probs(rows, c=3):
    p = np.zeros((1, len(rows), c), np.float32)
    for i, (cls, score) in enumerate(rows):
        p[0, i, :] = (1 - score) / (c - 1)
        p[0, i, cls] = score
    return p


def test_detection_layer_hand_case():
    rois = np.array([[[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9],
                      [0.1, 0.1, 0.5, 0.5], [0.3, 0.3, 0.4, 0.4], [0.2, 0.6, 0.3, 0.7], [0, 0, 0, 0]]], np.float32)
    probs = _probs([(1, 0.9), (1, 0.8), (1, 0.7), (2, 0.85), (0, 0.9), (1, 0.3), (1, 0.99)])
    deltas = np.zeros((1, 7, 3, 4), np.float32)
    layer = DetectionLayer(5, 0.5, 0.3, [0.1, 0.1, 0.2, 0.2])
    det = ops.convert_to_numpy(layer([rois, probs, deltas, _meta((0, 0, 64, 64))]))[0]
    assert det.shape == (5, 6)
    # roi 1 loses NMS to roi 0 (same class), roi 3 survives (other class), background, low score
    # and the zero padding roi are dropped; best score first, then zero rows
    np.testing.assert_allclose(det[:3, 4], [1, 2, 1])
    np.testing.assert_allclose(det[:3, 5], [0.9, 0.85, 0.7], atol=1e-6)
    np.testing.assert_allclose(det[0, :4], rois[0, 0], atol=1e-6)
    np.testing.assert_allclose(det[2, :4], rois[0, 2], atol=1e-6)
    assert np.all(det[3:] == 0)


def test_detection_refines_with_class_deltas_and_clips_to_window():
    rois = np.array([[[0.1, 0.1, 0.3, 0.3]]], np.float32)
    probs = _probs([(1, 0.9)])
    deltas = np.zeros((1, 1, 3, 4), np.float32)
    deltas[0, 0, 1] = [0.0, 0.0, np.log(4.0) / 0.2, 0.0]  # class 1: four times taller
    deltas[0, 0, 2] = [5.0, 5.0, 0.0, 0.0]  # another class's deltas are ignored
    meta = _meta((0, 0, 32, 64))  # picture occupies the top half of the molded image
    det = ops.convert_to_numpy(DetectionLayer(2, 0.5, 0.3, [0.1, 0.1, 0.2, 0.2])([rois, probs, deltas, meta]))[0]
    win = ops.convert_to_numpy(window_from_meta(meta))[0]
    np.testing.assert_allclose(win, [0, 0, 31 / 63, 1], atol=1e-6)
    np.testing.assert_allclose(det[0, :4], [0.0, 0.1, 31 / 63, 0.3], atol=1e-6)  # y -0.2..0.6 clipped to the window
    assert np.all(det[1] == 0)


def test_one_class_model_returns_tumors_below_one_half():
    """BG + tumor: a tumor probability of 0.3 loses the argmax to background, yet it is
    a candidate at a 0.2 floor (so thresholds below 0.5 exist); 0.15 is dropped."""
    rois = np.array([[[0.1, 0.1, 0.4, 0.4], [0.6, 0.6, 0.9, 0.9]]], np.float32)
    probs = np.array([[[0.7, 0.3], [0.85, 0.15]]], np.float32)
    deltas = np.zeros((1, 2, 2, 4), np.float32)
    det = ops.convert_to_numpy(DetectionLayer(3, 0.2, 0.3, [0.1, 0.1, 0.2, 0.2])([rois, probs, deltas,
                                                                                    _meta((0, 0, 64, 64))]))[0]
    np.testing.assert_allclose(det[0], [0.1, 0.1, 0.4, 0.4, 1, 0.3], atol=1e-6)
    assert np.all(det[1:] == 0)
    above_half = ops.convert_to_numpy(DetectionLayer(3, 0.5, 0.3, [0.1, 0.1, 0.2, 0.2])(
        [rois, probs, deltas, _meta((0, 0, 64, 64))]))[0]
    assert np.all(above_half == 0)


def test_one_roi_can_give_one_detection_per_class_each_with_its_own_deltas():
    rois = np.array([[[0.2, 0.2, 0.4, 0.4]]], np.float32)
    probs = np.array([[[0.2, 0.45, 0.35]]], np.float32)
    deltas = np.zeros((1, 1, 3, 4), np.float32)
    deltas[0, 0, 2] = [1.0, 0.0, 0.0, 0.0]  # class 2 moves down by 0.1 * 0.2 = 0.02
    det = ops.convert_to_numpy(DetectionLayer(4, 0.3, 0.3, [0.1, 0.1, 0.2, 0.2])([rois, probs, deltas,
                                                                                    _meta((0, 0, 64, 64))]))[0]
    np.testing.assert_allclose(det[0], [0.2, 0.2, 0.4, 0.4, 1, 0.45], atol=1e-6)
    np.testing.assert_allclose(det[1], [0.22, 0.2, 0.42, 0.4, 2, 0.35], atol=1e-6)
    assert np.all(det[2:] == 0)
