"""Overlays, side-by-side pictures and per-tumor numbers (braintumor.visualize)."""

from __future__ import annotations

import numpy as np
import pytest

from braintumor.boxes import masks_to_boxes
from braintumor.errors import BrainTumorError
from braintumor.visualize import PALETTE, as_rgb_uint8, draw_overlay, instance_stats, side_by_side

CLASS_NAMES = ["BG", "tumor"]


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _result(masks, scores):
    masks = np.stack(masks, axis=-1) if masks else np.zeros((64, 64, 0), bool)
    n = masks.shape[-1]
    return {"rois": masks_to_boxes(masks), "class_ids": np.ones(n, np.int32),
            "scores": np.asarray(scores, np.float32), "masks": masks}


@pytest.fixture
def grey():
    rng = np.random.default_rng(0)
    return rng.integers(60, 90, size=(200, 240, 3), dtype=np.uint8)


def test_overlay_tints_inside_mask_outlines_it_and_leaves_the_rest(grey):
    m = _disk(grey.shape[:2], 120, 100, 30)
    res = _result([m], [0.93])
    before = grey.copy()
    out = draw_overlay(grey, res, CLASS_NAMES)
    assert out.shape == grey.shape and out.dtype == np.uint8
    assert np.array_equal(grey, before), "input must not be modified"
    color = np.array(PALETTE[0])
    # mask centre: blended toward the colour (red up, blue down for PALETTE[0])
    inner = _disk(grey.shape[:2], 120, 100, 20)
    diff = out[inner].astype(int) - grey[inner].astype(int)
    assert (diff[:, 0] > 40).all() and (diff[:, 2] < 0).all()
    # the mask's inner boundary is painted in the instance colour
    edge = m & ~np.pad(m, 1)[2:, 1:-1] | m & ~np.pad(m, 1)[:-2, 1:-1]
    assert edge.any() and (out[edge] == color).all()
    # far from the tumor (and from its box and label) nothing changes
    assert np.array_equal(out[:, 180:], grey[:, 180:])
    assert np.array_equal(out[160:], grey[160:])


def test_boxes_and_label_are_drawn_only_when_asked(grey):
    m = _disk(grey.shape[:2], 120, 100, 30)
    res = _result([m], [0.93])
    y1, x1, y2, x2 = res["rois"][0]
    with_box = draw_overlay(grey, res, CLASS_NAMES, show_boxes=True)
    no_box = draw_overlay(grey, res, CLASS_NAMES, show_boxes=False)
    color = np.array(PALETTE[0])
    corner = (y2 - 1, x2 - 1)  # bottom-right corner of the box is outside the disk
    assert not m[corner]
    assert (with_box[corner] == color).all()
    assert np.array_equal(no_box[corner], grey[corner])
    # the label sits on a filled colour band just above the box, in both cases
    band = no_box[max(y1 - 6, 0):y1, x1:x1 + 20]
    assert (band == color).all(axis=-1).mean() > 0.3


def test_each_instance_gets_its_own_colour(grey):
    a = _disk(grey.shape[:2], 60, 60, 15)
    b = _disk(grey.shape[:2], 140, 170, 15)
    out = draw_overlay(grey, _result([a, b], [0.9, 0.8]), CLASS_NAMES, show_boxes=False)
    assert (out[60, 60].astype(int) - grey[60, 60]).argmax() == np.argmax(PALETTE[0])
    assert (out[140, 170].astype(int) - grey[140, 170]).argmax() == np.argmax(PALETTE[1])


def test_no_detection_gives_the_image_back_and_grey_input_works():
    g = np.full((50, 60), 77, np.uint8)
    out = draw_overlay(g, _result([], []), CLASS_NAMES)
    assert out.shape == (50, 60, 3) and (out == 77).all()
    assert as_rgb_uint8(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    with pytest.raises(BrainTumorError):
        as_rgb_uint8(np.zeros((4, 5, 2)))


def test_side_by_side_places_both_images(grey):
    other = np.full((150, 100, 3), 200, np.uint8)
    pair = side_by_side(grey, other, gap=6, background=(255, 255, 255))
    assert pair.shape == (200, 240 + 6 + 100, 3) and pair.dtype == np.uint8
    assert np.array_equal(pair[:, :240], grey)
    assert np.array_equal(pair[:150, 246:], other)
    assert (pair[:, 240:246] == 255).all() and (pair[150:, 246:] == 255).all()
    titled = side_by_side(grey, other, gap=6, titles=("Original", "Detection"))
    band = titled.shape[0] - 200
    assert band > 0 and titled.shape[1] == pair.shape[1]
    assert np.array_equal(titled[band:, :240], grey)
    assert (titled[:band, :240] < 255).any(), "the caption is drawn in the band"


def test_instance_stats_numbers_follow_the_mask_and_spacing():
    m = np.zeros((100, 120), bool)
    m[10:30, 40:90] = True          # 20 rows x 50 columns
    m2 = _disk((100, 120), 70, 30, 8)
    res = _result([m, m2], [0.934, 0.51])
    res["rois"][0] = (8, 38, 32, 92)  # a refined box slightly larger than the mask
    stats = instance_stats(res, pixel_spacing_mm=(0.5, 0.8), class_names=CLASS_NAMES)
    assert len(stats) == 2
    s = stats[0]
    assert s["class"] == "tumor" and s["class_id"] == 1
    assert s["confidence"] == pytest.approx(0.934, abs=1e-4)
    assert s["area_px"] == 1000
    assert s["area_mm2"] == pytest.approx(1000 * 0.5 * 0.8)
    assert s["bbox"] == [8, 38, 32, 92]
    assert s["extent_px"] == {"height": 20, "width": 50}
    assert s["extent_mm"] == {"height": pytest.approx(10.0), "width": pytest.approx(40.0)}
    assert s["centroid"] == [pytest.approx(19.5), pytest.approx(64.5)]
    assert stats[1]["area_px"] == int(m2.sum())
    plain = instance_stats(res)
    assert plain[0]["area_mm2"] is None and plain[0]["extent_mm"] is None and plain[0]["class"] == "1"


def test_instance_stats_without_masks_uses_the_box():
    res = {"rois": np.array([[10, 20, 30, 60]]), "class_ids": np.array([1]), "scores": np.array([0.8])}
    (s,) = instance_stats(res, pixel_spacing_mm=(1.0, 2.0))
    assert s["area_px"] == 20 * 40 and s["area_mm2"] == pytest.approx(1600.0)
    assert s["extent_px"] == {"height": 20, "width": 40}
    assert s["centroid"] == [20.0, 40.0]
