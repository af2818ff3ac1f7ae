"""Image sizing, molding, meta, mini masks, training samples and unmolding."""

import numpy as np
import pytest

from braintumor.boxes import masks_to_boxes, norm_boxes
from braintumor.errors import BrainTumorError
from braintumor.mrcnn import inputs as I
from mrcnn_testutil import blob_dataset, blob_image, tiny_config


def test_resize_square_scales_long_side_and_centres():
    cfg = tiny_config()
    img = np.full((40, 80, 3), 7, np.uint8)
    out, info = I.resize_image(img, cfg)
    assert out.shape == (64, 64, 3)
    assert info.scale == pytest.approx(0.8)
    assert info.window == (16, 0, 48, 64)
    assert np.all(out[16:48] == 7) and np.all(out[:16] == 0) and np.all(out[48:] == 0)


def test_resize_pad64_crop_and_none():
    cfg = tiny_config(IMAGE_RESIZE_MODE="pad64", IMAGE_MAX_DIM=128)
    out, info = I.resize_image(np.ones((100, 150, 3), np.uint8), cfg)
    assert out.shape == (128, 128, 3) and info.window == (21, 0, 106, 128)
    cfg = tiny_config(IMAGE_RESIZE_MODE="crop")
    img = np.arange(64 * 100 * 3, dtype=np.int64).reshape(64, 100, 3).astype(np.uint8)
    out, info = I.resize_image(img, cfg)
    assert out.shape == (64, 64, 3) and info.crop == (0, 18, 64, 64)
    np.testing.assert_array_equal(out, img[:, 18:82])
    _, info = I.resize_image(img, cfg, rng=np.random.default_rng(3), train=True)
    assert 0 <= info.crop[1] <= 36
    cfg = tiny_config(IMAGE_RESIZE_MODE="none", IMAGE_MAX_DIM=128)
    out, info = I.resize_image(np.ones((64, 128, 3), np.uint8), cfg)
    assert out.shape == (64, 128, 3) and info.scale == 1.0
    with pytest.raises(BrainTumorError, match="divisible by 64"):
        I.resize_image(np.ones((65, 128, 3), np.uint8), cfg)


def test_masks_follow_the_image_and_mini_masks():
    cfg = tiny_config()
    img, masks = blob_image(40, 80, [(10, 20, 30, 60)])
    out, info = I.resize_image(img, cfg)
    m = I.resize_masks(masks, info)
    assert m.shape == (64, 64, 1)
    box = masks_to_boxes(m)[0]
    np.testing.assert_allclose(box, [16 + 8, 16, 16 + 24, 48], atol=1)
    mini = I.minimize_masks(masks_to_boxes(masks), masks, (28, 28))
    assert mini.shape == (1, 28, 28) and mini[0, 14, 14] == 1 and mini[0, 0, 0] == 0


def test_mold_and_meta():
    cfg = tiny_config()
    img = np.full((2, 2, 3), 255, np.uint8)
    molded = I.mold_image(img, cfg)
    np.testing.assert_allclose(molded[0, 0], (255 - np.array(cfg.MEAN_PIXEL)) / np.array(cfg.PIXEL_STD), rtol=1e-6)
    meta = I.compose_image_meta(5, (40, 80, 3), (64, 64, 3), (16, 0, 48, 64), 0.8, 2)
    assert meta.shape == (cfg.IMAGE_META_SIZE,)
    p = I.parse_image_meta(meta[None])
    assert p["image_id"][0] == 5 and list(p["window"][0]) == [16, 0, 48, 64] and p["scale"][0] == pytest.approx(0.8)
    assert list(p["original_image_shape"][0]) == [40, 80, 3]


def test_unmold_detections_back_to_original_nonsquare_image():
    cfg = tiny_config()
    img, masks = blob_image(48, 96, [(10, 20, 30, 60)])
    out, info = I.resize_image(img, cfg)
    mbox = masks_to_boxes(I.resize_masks(masks, info))
    det = np.zeros((3, 6), np.float32)
    det[0, :4] = norm_boxes(mbox, out.shape[:2])[0]
    det[0, 4:] = [1, 0.9]
    mask = np.zeros((3, 28, 28, 2), np.float32)
    mask[0, :, :, 1] = 1.0
    r = I.unmold_detections(det, mask, info)
    assert r["rois"].dtype == np.int32 and r["masks"].dtype == bool
    assert r["masks"].shape == (48, 96, 1)
    np.testing.assert_allclose(r["rois"][0], [10, 20, 30, 60], atol=2)
    y1, x1, y2, x2 = r["rois"][0]
    assert r["masks"][:, :, 0].sum() == (y2 - y1) * (x2 - x1)
    assert r["masks"][y1:y2, x1:x2, 0].all()
    np.testing.assert_array_equal(r["class_ids"], [1])
    empty = I.unmold_detections(np.zeros((3, 6), np.float32), mask, info)
    assert empty["rois"].shape == (0, 4) and empty["masks"].shape == (48, 96, 0)


def test_mask_threshold_sets_the_outline():
    """The pasted outline is the pixels whose resized probability reaches the threshold: a mask that
    falls from 1 at the left edge of its box to 0 at the right covers the matching share of it."""
    ramp = np.tile(np.linspace(1.0, 0.0, 28, dtype=np.float32), (28, 1))  # [28, 28], 1 at left, 0 at right
    box, shape = (10, 20, 50, 100), (64, 128)
    widths = {}
    for t in (0.25, 0.5, 0.75):
        m = I.unmold_mask(ramp, box, shape, threshold=t)
        assert m.dtype == bool and not m[:10].any() and not m[:, :20].any() and not m[:, 100:].any()
        cols = np.flatnonzero(m[30])
        assert cols[0] == 20 and np.all(np.diff(cols) == 1)  # one run from the box's left edge
        assert (m[10:50, 20:100].sum(axis=0) % 40 == 0).all()  # whole columns of the box
        widths[t] = len(cols)
    assert widths[0.25] == pytest.approx(0.75 * 80, abs=3) and widths[0.75] == pytest.approx(0.25 * 80, abs=3)
    assert widths[0.5] == pytest.approx(40, abs=3)
    soft = I.unmold_mask(ramp, box, shape, soft=True, threshold=0.9)  # soft ignores the threshold
    np.testing.assert_array_equal(soft >= 0.25, I.unmold_mask(ramp, box, shape, threshold=0.25))
    # unmold_detections passes it on
    cfg = tiny_config()
    img, masks = blob_image(48, 96, [(10, 20, 30, 60)])
    out, info = I.resize_image(img, cfg)
    det = np.zeros((1, 6), np.float32)
    det[0, :4] = norm_boxes(masks_to_boxes(I.resize_masks(masks, info)), out.shape[:2])[0]
    det[0, 4:] = [1, 0.9]
    mask = np.zeros((1, 28, 28, 2), np.float32)
    mask[0, :, :, 1] = ramp
    areas = [I.unmold_detections(det, mask, info, mask_threshold=t)["masks"].sum() for t in (0.25, 0.5, 0.75)]
    assert areas[0] > areas[1] > areas[2] > 0


def test_training_sample_with_and_without_instances_and_augmenter():
    cfg = tiny_config()
    ds = blob_dataset(3, empty_every=3)
    s = I.build_training_sample(ds, cfg, 0, rng=np.random.default_rng(0))
    assert s["input_image"].shape == (64, 64, 3) and s["input_rpn_match"].shape[1] == 1
    assert (s["input_rpn_match"] == 1).sum() >= 1
    assert (s["input_rpn_match"] != 0).sum() == cfg.RPN_TRAIN_ANCHORS_PER_IMAGE
    np.testing.assert_array_equal(s["input_gt_class_ids"], [1, 0, 0, 0])
    masks, _ = ds.load_mask(0)
    np.testing.assert_allclose(s["input_gt_boxes"][0], norm_boxes(masks_to_boxes(masks), (64, 64))[0], atol=1e-6)
    assert s["input_gt_masks"].shape == (4, 28, 28) and s["input_gt_masks"][0].sum() > 300
    e = I.build_training_sample(ds, cfg, 2, rng=np.random.default_rng(0))
    assert (e["input_rpn_match"] == 1).sum() == 0 and (e["input_rpn_match"] == -1).sum() == 64
    assert np.all(e["input_gt_class_ids"] == 0) and np.all(e["input_gt_boxes"] == 0)
    calls = []

    def flip(image, m, ids, rng=None):
        calls.append(1)
        return image[:, ::-1].copy(), m[:, ::-1].copy(), ids

    f = I.build_training_sample(ds, cfg, 0, augmenter=flip, rng=np.random.default_rng(0))
    b, fb = s["input_gt_boxes"][0], f["input_gt_boxes"][0]
    assert calls and fb[1] == pytest.approx(1 - b[3], abs=1e-6) and fb[3] == pytest.approx(1 - b[1], abs=1e-6)


def test_tf_dataset_batches():
    cfg = tiny_config(IMAGES_PER_GPU=2)
    ds = I.make_tf_dataset(blob_dataset(3), cfg, seed=1)
    (x,) = next(iter(ds))
    assert [tuple(t.shape) for t in x][:3] == [(2, 64, 64, 3), (2, cfg.IMAGE_META_SIZE), (2, 1023, 1)]
    assert tuple(x[6].shape) == (2, 4, 28, 28)


def test_class_id_beyond_num_classes_is_a_one_line_error():
    ds = blob_dataset(1)
    ds.load_mask = lambda i: (blob_image(64, 64, [(5, 5, 20, 20)])[1], np.array([2], np.int32))
    with pytest.raises(BrainTumorError, match="img0.png: class id 2 but NUM_CLASSES is 2"):
        I.build_training_sample(ds, tiny_config(), 0)


def test_keep_best_and_strong_drops_only_weak_secondary_detections():
    from braintumor.mrcnn.inputs import keep_best_and_strong

    masks = np.zeros((4, 4, 4), bool)
    for i in range(4):
        masks[i, i, i] = True
    r = {"rois": np.arange(16).reshape(4, 4), "class_ids": np.array([1, 1, 2, 1]),
         "scores": np.array([0.6, 0.97, 0.5, 0.96], np.float32), "masks": masks}
    out = keep_best_and_strong(r, 0.95)
    assert out["scores"].tolist() == pytest.approx([0.97, 0.96]) and out["class_ids"].tolist() == [1, 1]
    assert out["rois"].tolist() == [[4, 5, 6, 7], [12, 13, 14, 15]] and out["masks"][1, 1, 0] and out["masks"][3, 3, 1]
    weak = {**r, "scores": np.array([0.6, 0.7, 0.5, 0.55], np.float32)}
    assert keep_best_and_strong(weak, 0.95)["scores"].tolist() == pytest.approx([0.7]), "the best stays, however weak"
    assert keep_best_and_strong(r, 0.0) is r and keep_best_and_strong(r, 0.5) is r, "no bar, or nothing below it"
    empty = {**r, "rois": np.zeros((0, 4)), "class_ids": np.zeros(0), "scores": np.zeros(0), "masks": np.zeros((4, 4, 0))}
    assert keep_best_and_strong(empty, 0.95) is empty
