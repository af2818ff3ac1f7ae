"""Copy-paste augmentation: scale, brightness and place of the pasted tumor, occlusion, seeds, settings."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image
from skimage import draw

from braintumor.config import ConfigError
from braintumor.copy_paste import CopyPaste, build_copy_paste, head_mask, paste, validate
from braintumor.data import Dataset, Shape


def _head(size: int, radius: int, gray: int) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    rr, cc = draw.disk((size / 2, size / 2), radius, shape=(size, size))
    img[rr, cc] = gray
    return img


def _donor() -> tuple[np.ndarray, np.ndarray]:
    """256 px, a head of radius 100 at gray 80, a tumor of radius 20 at gray 200."""
    img = _head(256, 100, 80)
    tumor = np.zeros((256, 256), bool)
    rr, cc = draw.disk((100, 120), 20, shape=(256, 256))
    tumor[rr, cc] = True
    img[tumor] = 200
    return img, tumor


def test_paste_scales_the_tumor_to_the_receiving_head_and_its_brightness_to_the_heads():
    receiver = _head(128, 50, 100)  # half the donor's head: the tumor comes at half its size
    d_img, d_mask = _donor()
    out = paste(receiver, np.zeros((128, 128, 0), bool), np.zeros(0, np.int32), d_img, d_mask, 1,
                np.random.default_rng(0))
    assert out is not None
    image, masks, ids = out
    assert masks.shape == (128, 128, 1) and ids.tolist() == [1]
    area = masks[:, :, 0].sum()
    assert abs(area - np.pi * 10 ** 2) < 0.1 * np.pi * 10 ** 2, area
    assert head_mask(receiver)[masks[:, :, 0]].mean() >= 0.9, "the tumor lies on the head"
    ys, xs = np.nonzero(masks[:, :, 0])
    centre = image[int(ys.mean()), int(xs.mean())]
    assert abs(int(centre[0]) - 250) <= 3, "donor 200 x (receiver head 100 / donor head 80)"
    far = np.ones((128, 128), bool)
    far[max(ys.min() - 10, 0):ys.max() + 11, max(xs.min() - 10, 0):xs.max() + 11] = False
    assert np.array_equal(image[far], receiver[far]), "nothing changes away from the tumor"


def test_the_pasted_tumor_hides_what_it_covers_of_the_receivers_own_tumors():
    receiver = _head(128, 50, 100)
    own = np.zeros((128, 128, 1), bool)
    rr, cc = draw.disk((64, 64), 50, shape=(128, 128))
    own[rr, cc, 0] = True  # a tumor the size of the head: the pasted one lands on it
    d_img, d_mask = _donor()
    image, masks, ids = paste(receiver, own, np.array([1], np.int32), d_img, d_mask, 1, np.random.default_rng(3))
    assert masks.shape[2] == 2 and ids.tolist() == [1, 1]
    assert not (masks[:, :, 0] & masks[:, :, 1]).any()
    assert np.array_equal(masks[:, :, 0] | masks[:, :, 1], own[:, :, 0] | masks[:, :, 1])

    none = np.zeros((128, 128, 0), bool)
    _, where, _ = paste(receiver, none, np.zeros(0, np.int32), d_img, d_mask, 1, np.random.default_rng(5))
    ys, xs = np.nonzero(where[:, :, 0])
    tiny = np.zeros((128, 128, 1), bool)
    tiny[int(ys.mean()) - 1:int(ys.mean()) + 1, int(xs.mean()) - 1:int(xs.mean()) + 1, 0] = True
    _, masks, ids = paste(receiver, tiny, np.array([1], np.int32), d_img, d_mask, 1, np.random.default_rng(5))
    assert masks.shape[2] == 1 and np.array_equal(masks[:, :, 0], where[:, :, 0]), "a tumor hidden entirely is dropped"


def test_no_placement_on_the_head_or_a_tumor_too_small_to_outline_leaves_the_sample_as_it_is():
    d_img, d_mask = _donor()
    black = np.zeros((128, 128, 3), np.uint8)
    assert paste(black, np.zeros((128, 128, 0), bool), np.zeros(0, np.int32), d_img, d_mask, 1,
                 np.random.default_rng(0)) is None
    speck = np.zeros_like(d_mask)
    speck[100, 120] = True  # one pixel, halved by the scale: its feathered edge never reaches 0.5
    assert paste(_head(128, 50, 100), np.zeros((128, 128, 0), bool), np.zeros(0, np.int32), d_img, speck, 1,
                 np.random.default_rng(0)) is None


def _dataset(tmp_path) -> Dataset:
    """Image 0: a tumor-free receiver (source "free"); 1: the donor (source "donor"); 2: another tumor
    image of source "other" whose tumor is a square."""
    ds = Dataset(source=None)
    r = tmp_path / "free.png"
    Image.fromarray(_head(128, 50, 100)).save(r)
    ds.add_image(r, 128, 128, [], source="free")
    d_img, _ = _donor()
    d = tmp_path / "donor.png"
    Image.fromarray(d_img).save(d)
    ds.add_image(d, 256, 256, [Shape("circle", (100, 120, 20), 1)], source="donor")
    o_img = _head(256, 100, 80)
    o_img[60:100, 60:100] = 220
    o = tmp_path / "other.png"
    Image.fromarray(o_img).save(o)
    ds.add_image(o, 256, 256, [Shape("rect", (60, 60, 100, 100), 1)], source="other")
    return ds


def test_copy_paste_takes_donors_of_its_sources_and_a_seed_gives_one_result(tmp_path):
    ds = _dataset(tmp_path)
    cp = CopyPaste(ds, 1.0, ["donor"])
    assert cp.donors == [1]
    image, masks, _ = ds.load_image(0), *ds.load_mask(0)
    a = cp(image, masks, np.zeros(0, np.int32), rng=7)
    b = cp(image, masks, np.zeros(0, np.int32), rng=7)
    assert a[1].shape[2] == 1 and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    area = a[1][:, :, 0].sum()
    assert abs(area - np.pi * 10 ** 2) < 0.1 * np.pi * 10 ** 2, "the circle, not the square"
    assert sorted(CopyPaste(ds, 1.0).donors) == [1, 2], "no sources: every annotated image"
    only_free = CopyPaste(ds, 1.0, ["donor"], receivers=["free"])
    got = only_free(image, masks, np.zeros(0, np.int32), rng=7, image_info=ds.image_info[0])
    assert np.array_equal(got[0], a[0]) and got[1].shape[2] == 1, "a receiving source gets one"
    other_img, other_masks, other_ids = ds.load_image(2), *ds.load_mask(2)
    kept = only_free(other_img, other_masks, other_ids, rng=7, image_info=ds.image_info[2])
    assert np.array_equal(kept[0], other_img) and kept[1].shape[2] == 1, "another source's image does not"
    off = CopyPaste(ds, 0.0, ["donor"])
    same = off(image, masks, np.zeros(0, np.int32), rng=7)
    assert np.array_equal(same[0], image) and same[1].shape[2] == 0


def test_copy_paste_then_runs_the_augmenter_and_feeds_the_training_sample(tmp_path):
    from braintumor.augment import build_augmentation
    from braintumor.mrcnn.inputs import load_image_gt
    from mrcnn_testutil import tiny_config

    ds = _dataset(tmp_path)
    flip = build_augmentation({"HORIZONTAL_FLIP": 1.0})
    ds.source_names = ["free", "donor", "other"]
    chain = build_copy_paste({"P": 1.0, "SOURCES": ["donor"], "RECEIVERS": ["free"]}, ds, flip)
    assert isinstance(chain, CopyPaste) and chain.then is flip
    twin = copy.deepcopy(chain)  # one per input thread: the dataset is shared, the augmenter copied
    assert twin.dataset is ds and twin.then is not flip and twin.donors == chain.donors
    image, masks, ids = chain(ds.load_image(0), *ds.load_mask(0), rng=7, image_info=ds.image_info[0])
    alone = CopyPaste(ds, 1.0, ["donor"])(ds.load_image(0), *ds.load_mask(0), rng=7)
    assert masks.shape[2] == 1 and ids.tolist() == [1]
    assert np.array_equal(image, alone[0][:, ::-1]) and np.array_equal(masks, alone[1][:, ::-1]), "pasted, then flipped"
    cfg = tiny_config(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64)
    _, _, class_ids, boxes, molded = load_image_gt(ds, cfg, 0, augmenter=chain, rng=np.random.default_rng(1))
    assert class_ids.tolist() == [1] and molded[:, :, 0].sum() > 0 and (boxes[0, 2:] > boxes[0, :2]).all()
    _, _, class_ids, _, _ = load_image_gt(ds, cfg, 1, augmenter=chain, rng=np.random.default_rng(1))
    assert class_ids.tolist() == [1], "the donor's own image is not a receiver: its one tumor only"
    assert build_copy_paste({}, ds, flip) is flip and build_copy_paste({"P": 0.0}, ds, None) is None


@pytest.mark.parametrize("spec,needle", [
    ({"P": 1.5}, "COPY_PASTE.P"),
    ({"P": 0.3, "SOURCE": ["x"]}, "'SOURCE'"),
    ({"P": 0.3, "SOURCES": "figshare"}, "COPY_PASTE.SOURCES"),
    ({"P": 0.3, "SOURCES": ["figshare_gliomas"]}, "'figshare_gliomas'"),
    ({"P": 0.3, "RECEIVERS": ["tumor_free"]}, "COPY_PASTE.RECEIVERS names 'tumor_free'"),
    ("yes", "COPY_PASTE must be a table"),
])
def test_bad_copy_paste_settings_name_the_key(spec, needle):
    with pytest.raises(ConfigError) as e:
        validate(spec, ["brain_tumor_data", "figshare_glioma"])
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert validate({"P": 0.3}, ["a"]) == {"P": 0.3, "SOURCES": [], "RECEIVERS": []} and validate({}) == {}
