"""crop_and_resize against a NumPy bilinear reference; padded NMS; multi-level cropping order."""

import numpy as np

from braintumor.mrcnn import tf_ops


def bilinear_reference(image, box, size):
    """NumPy crop_and_resize of one [H, W, C] image with a normalized box."""
    h, w, c = image.shape
    y1, x1, y2, x2 = box
    out = np.zeros((size[0], size[1], c))
    for i in range(size[0]):
        y = y1 * (h - 1) + i * (y2 - y1) * (h - 1) / (size[0] - 1)
        for j in range(size[1]):
            x = x1 * (w - 1) + j * (x2 - x1) * (w - 1) / (size[1] - 1)
            if y < 0 or y > h - 1 or x < 0 or x > w - 1:
                continue
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            ya, xa = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            top = image[y0, x0] * (1 - dx) + image[y0, xa] * dx
            bot = image[ya, x0] * (1 - dx) + image[ya, xa] * dx
            out[i, j] = top * (1 - dy) + bot * dy
    return out


def test_crop_and_resize_matches_bilinear_reference():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 9, 13, 3)).astype(np.float32)
    boxes = np.array([[0.1, 0.2, 0.8, 0.7], [0.0, 0.0, 1.0, 1.0], [0.33, 0.1, 0.47, 0.95], [-0.1, 0.5, 0.4, 1.2]],
                     np.float32)
    ix = np.array([0, 1, 1, 0], np.int32)
    got = np.asarray(tf_ops.crop_and_resize(images, boxes, ix, (5, 4)))
    for k in range(4):
        np.testing.assert_allclose(got[k], bilinear_reference(images[ix[k]], boxes[k], (5, 4)), atol=1e-5)


def test_batched_nms_pads_with_minus_one():
    boxes = np.array([[[0, 0, 1, 1], [0, 0, 0.9, 1], [0.5, 0.5, 1, 1], [2, 2, 3, 3]],
                      [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]]], np.float32)
    scores = np.array([[0.9, 0.95, 0.5, 0.1], [0.4, 0.3, 0.2, 0.1]], np.float32)
    ix = np.asarray(tf_ops.batched_nms_indices(boxes, scores, 4, 0.5))
    # image 0: box 1 beats box 0 (IoU 0.9); box 2 (IoU 0.25) and box 3 survive, best first
    np.testing.assert_array_equal(ix[0], [1, 2, 3, -1])
    np.testing.assert_array_equal(ix[1], [0, -1, -1, -1])
    ix = np.asarray(tf_ops.batched_nms_indices(boxes, scores, 3, 0.5, score_threshold=0.2))
    np.testing.assert_array_equal(ix[0], [1, 2, -1])


def test_multilevel_crop_keeps_box_order():
    maps = [np.full((2, 8, 8, 2), v, np.float32) + np.arange(2, dtype=np.float32)[:, None, None, None] * 10
            for v in (1.0, 2.0, 3.0)]
    boxes = np.tile(np.array([[0.1, 0.1, 0.6, 0.6]], np.float32), (2, 4, 1))
    levels = np.array([[2, 0, 1, 0], [1, 1, 2, 0]], np.int32)
    out = np.asarray(tf_ops.multilevel_crop_and_resize(maps, boxes, levels, (3, 3)))
    assert out.shape == (2, 4, 3, 3, 2)
    expected = (levels + 1) + 10 * np.arange(2)[:, None]
    np.testing.assert_allclose(out[:, :, 1, 1, 0], expected)


def test_compact_and_scatter_rows_round_trip_including_no_valid_row():
    x = np.arange(5 * 2, dtype=np.float32).reshape(5, 2) + 1
    for valid in ([True, False, True, False, False], [False] * 5):
        valid = np.array(valid)
        y, idx = tf_ops.compact_rows(x, valid)
        assert len(np.asarray(y)) == max(valid.sum(), 1)  # never an empty batch
        back = np.asarray(tf_ops.scatter_rows(y, idx, valid))
        np.testing.assert_array_equal(back, np.where(valid[:, None], x, 0))
