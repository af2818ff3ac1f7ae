"""Test-time horizontal flip (braintumor/mrcnn/flip.py): hand-made views, then the model."""

import keras
import numpy as np
import pytest

from braintumor.mrcnn.flip import merge_views, unflip


def _view(rois, scores, probs, class_ids=None, shape=(8, 10)):
    """A soft result of one view: ``probs`` one float mask value per detection, painted inside its box."""
    n = len(scores)
    masks = np.zeros(shape + (n,), np.float32)
    for j, ((y1, x1, y2, x2), p) in enumerate(zip(rois, probs)):
        masks[y1:y2, x1:x2, j] = p
    return {"rois": np.asarray(rois, np.int32).reshape(-1, 4), "scores": np.asarray(scores, np.float32),
            "class_ids": np.asarray(class_ids if class_ids is not None else [1] * n, np.int32), "masks": masks}


def test_unflip_mirrors_boxes_and_masks_back():
    mirrored = _view([(2, 1, 5, 4)], [0.9], [1.0])  # seen in the mirror image, 10 px wide: columns 1..3
    back = unflip(mirrored, width=10)
    np.testing.assert_array_equal(back["rois"], [[2, 6, 5, 9]])  # columns 6..8 of the image
    assert back["masks"][2:5, 6:9, 0].all() and back["masks"][:, :6, 0].sum() == 0 and back["masks"][:, 9:, 0].sum() == 0
    assert back["scores"][0] == pytest.approx(0.9)


def test_a_region_both_views_see_gets_the_mean_score_box_and_mask():
    a = _view([(0, 0, 4, 4)], [0.8], [0.9])
    b = _view([(0, 0, 4, 6)], [0.6], [0.3])  # IoU 16 / 24 = 0.67
    b["masks"][0:4, 0:2, 0] = 0.5  # mean there: (0.9 + 0.5) / 2 = 0.7; columns 2..3: (0.9 + 0.3) / 2 = 0.6
    out = merge_views(a, b)
    assert out["scores"].tolist() == pytest.approx([0.7])
    np.testing.assert_array_equal(out["rois"], [[0, 0, 4, 5]])
    assert out["masks"].dtype == bool and out["masks"][0:4, 0:4, 0].all()
    assert not out["masks"][0:4, 4:6, 0].any()  # only view b there: 0.3 / 2 < 0.5
    low = merge_views(a, b, mask_threshold=0.15)  # DETECTION_MASK_THRESHOLD: 0.3 / 2 reaches 0.15
    assert low["masks"][0:4, 0:6, 0].all() and low["scores"].tolist() == pytest.approx([0.7])
    high = merge_views(a, b, mask_threshold=0.65)["masks"][:, :, 0]  # columns 0..1 at 0.7 stay, 2..3 at 0.6 go
    assert high[0:4, 0:2].all() and high.sum() == 8


def test_a_region_one_view_misses_keeps_half_its_score_and_its_own_mask():
    a = _view([(0, 0, 4, 4), (5, 5, 8, 9)], [0.9, 0.8], [1.0, 0.7])
    b = _view([(0, 0, 4, 4)], [0.7], [1.0])
    out = merge_views(a, b)
    assert out["scores"].tolist() == pytest.approx([0.8, 0.4])
    assert out["masks"][5:8, 5:9, 1].all() and out["masks"][:, :, 1].sum() == 12


def test_each_view_gives_a_region_at_most_one_member_and_classes_stay_apart():
    a = _view([(0, 0, 4, 4), (0, 0, 4, 5)], [0.9, 0.5], [1.0, 1.0])  # two overlapping boxes of one view
    b = _view([(0, 0, 4, 4), (0, 0, 4, 4)], [0.7, 0.6], [1.0, 1.0], class_ids=[1, 2])
    out = merge_views(a, b)
    # 0.9 pairs with b's 0.7 (class 1); a's 0.5 has no partner left of class 1; b's class-2 box stays alone
    assert sorted(out["scores"].tolist()) == pytest.approx(sorted([0.8, 0.25, 0.3]))
    assert sorted(out["class_ids"].tolist()) == [1, 1, 2]
    assert np.all(np.diff(out["scores"]) <= 0)


def test_no_detections_in_either_view():
    out = merge_views(_view([], [], []), _view([], [], []))
    assert out["rois"].shape == (0, 4) and out["scores"].shape == (0,) and out["masks"].shape == (8, 10, 0)


def test_detect_with_test_time_flip_is_mirror_symmetric(tmp_path):
    """With both views merged, the mirror image's detections are the image's, mirrored: on a width
    whose padding is uneven (95 px in a square frame), where a single view is not symmetric."""
    from braintumor.mrcnn import MaskRCNN
    from mrcnn_testutil import blob_image, tiny_config

    keras.utils.set_random_seed(5)
    m = MaskRCNN("inference", tiny_config(DETECTION_MIN_CONFIDENCE=0.0), tmp_path)
    img = blob_image(48, 95, [(10, 20, 30, 60)])[0]
    mirror = np.ascontiguousarray(img[:, ::-1])
    (one,), (one_m,) = m.detect([img]), m.detect([mirror])
    assert not np.allclose(np.sort(one["scores"]), np.sort(one_m["scores"]))  # one view: not symmetric
    m.config = m.config.replace(TEST_TIME_FLIP=True)
    (r,), (r_m,) = m.detect([img]), m.detect([mirror])
    assert len(r["scores"]) >= 1 and len(r["scores"]) == len(r_m["scores"])
    np.testing.assert_allclose(r["scores"], r_m["scores"], rtol=1e-5)
    back = unflip(r_m, width=95)
    np.testing.assert_allclose(back["rois"], r["rois"], atol=1)
    np.testing.assert_array_equal(back["masks"], r["masks"])
    assert r["masks"].dtype == bool and r["masks"].shape == (48, 95, len(r["scores"]))
