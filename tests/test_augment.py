"""braintumor.augment: spec validation, masks stay aligned with the image, vanished instances dropped, seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from braintumor.augment import build_augmentation
from braintumor.config import ConfigError, load_config


def _square(h=96, w=128, box=(20, 30, 50, 70)):
    """A dark image with one bright rectangle, and that rectangle as instance mask [h, w, 1]."""
    y1, x1, y2, x2 = box
    image = np.full((h, w, 3), 20, np.uint8)
    image[y1:y2, x1:x2] = 230
    masks = np.zeros((h, w, 1), bool)
    masks[y1:y2, x1:x2, 0] = True
    return image, masks, np.array([1], np.int32)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_empty_spec_gives_none_and_preset_builds():
    assert build_augmentation({}) is None and build_augmentation(None) is None
    presets = Path(__file__).parent.parent / "mrcnn_config"
    aug = build_augmentation(load_config(presets / "resnet101_2022.toml").AUGMENTATION)
    assert [type(t).__name__ for t in aug.transforms] == ["HorizontalFlip", "Affine", "RandomBrightnessContrast"]
    aug = build_augmentation(load_config(presets / "resnet101.toml").AUGMENTATION)
    assert [type(t).__name__ for t in aug.transforms] == ["HorizontalFlip", "Affine", "RandomBrightnessContrast",
                                                          "RandomGamma", "GaussNoise", "Downscale"]


@pytest.mark.parametrize("spec,needle", [
    ({"HORIZONTAL_FLIPS": 0.5}, "'HORIZONTAL_FLIPS'"),
    ({"HORIZONTAL_FLIP": 1.5}, "AUGMENTATION.HORIZONTAL_FLIP"),
    ({"AFFINE": 0.5, "SCALE": [1.2, 0.8]}, "AUGMENTATION.SCALE"),
    ({"AFFINE": 0.5, "ROTATE": "ten"}, "AUGMENTATION.ROTATE"),
    ({"ROTATE": 10}, "needs AFFINE"),
    ({"BRIGHTNESS_CONTRAST": True}, "AUGMENTATION.BRIGHTNESS_CONTRAST"),
])
def test_bad_specs_name_the_key(spec, needle):
    with pytest.raises(ConfigError) as e:
        build_augmentation(spec)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_certain_flips_move_image_and_mask_together():
    image, masks, cls = _square()
    out, m, c = build_augmentation({"HORIZONTAL_FLIP": 1.0}, seed=0)(image, masks, cls)
    assert np.array_equal(out, image[:, ::-1]) and np.array_equal(m, masks[:, ::-1]) and c.tolist() == [1]
    out, m, c = build_augmentation({"VERTICAL_FLIP": 1.0}, seed=0)(image, masks, cls)
    assert np.array_equal(out, image[::-1]) and np.array_equal(m, masks[::-1])


def test_affine_keeps_bright_pixels_and_mask_aligned():
    image, masks, cls = _square()
    aug = build_augmentation({"HORIZONTAL_FLIP": 0.5, "VERTICAL_FLIP": 0.5, "AFFINE": 1.0, "ROTATE": 30,
                              "SCALE": [0.8, 1.2], "TRANSLATE": 0.1})
    moved = 0
    for seed in range(12):
        out, m, c = aug(image, masks, cls, rng=seed)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert m.shape == masks.shape and m.dtype == bool and c.dtype == np.int32
        assert _iou(out[..., 0] > 125, m[..., 0]) > 0.9
        moved += _iou(m[..., 0], masks[..., 0]) < 0.9
    assert moved >= 6  # the transform really moved things


def test_intensity_changes_touch_only_the_image():
    image, masks, cls = _square()
    aug = build_augmentation({"BRIGHTNESS_CONTRAST": 1.0, "BRIGHTNESS": 0.3, "CONTRAST": 0.3,
                              "GAMMA": 1.0, "GAUSS_NOISE": 1.0, "BLUR": 1.0, "DOWNSCALE": 1.0})
    changed = 0
    for seed in range(5):
        out, m, c = aug(image, masks, cls, rng=seed)
        assert np.array_equal(m, masks) and c.tolist() == [1] and out.shape == image.shape
        changed += not np.array_equal(out, image)
    assert changed == 5


def test_instances_leaving_the_image_are_dropped():
    image, masks, cls = _square()
    corner = np.zeros(image.shape[:2], bool)
    corner[0:3, 0:3] = True
    masks = np.dstack([masks, corner])
    cls = np.array([1, 2], np.int32)
    aug = build_augmentation({"AFFINE": 1.0, "SCALE": [2.0, 2.0]}, seed=3)  # zoom x2 about the centre
    out, m, c = aug(image, masks, cls)
    assert m.shape == (96, 128, 1) and c.tolist() == [1] and m.any()
    empty, c0 = aug(image, np.zeros((96, 128, 0), bool), np.zeros(0, np.int32))[1:]
    assert empty.shape == (96, 128, 0) and c0.shape == (0,)


def test_same_seed_same_result():
    image, masks, cls = _square()
    spec = {"HORIZONTAL_FLIP": 0.5, "AFFINE": 1.0, "ROTATE": 20, "SCALE": [0.9, 1.1], "TRANSLATE": 0.05,
            "BRIGHTNESS_CONTRAST": 0.5}
    a, b = build_augmentation(spec, seed=11), build_augmentation(spec, seed=11)
    for _ in range(3):  # the augmenters' own generators run in step
        ra, rb = a(image, masks, cls), b(image, masks, cls)
        assert all(np.array_equal(x, y) for x, y in zip(ra, rb))
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    assert all(np.array_equal(x, y) for x, y in zip(a(image, masks, cls, rng=g1), b(image, masks, cls, rng=g2)))
    outs = {a(image, masks, cls, rng=s)[0].tobytes() for s in range(6)}
    assert len(outs) > 1  # different seeds, different draws


def test_shape_mismatch_is_refused():
    image, masks, cls = _square()
    aug = build_augmentation({"HORIZONTAL_FLIP": 1.0})
    with pytest.raises(ValueError):
        aug(image, masks[:50], cls)
    with pytest.raises(ValueError):
        aug(image, masks, np.array([1, 1]))
