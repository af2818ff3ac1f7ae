"""The real brain_tumor_data (and tumor-free folder) load completely and consistently."""

from __future__ import annotations

import numpy as np
import pytest

from braintumor.data import export_coco, load_coco, load_image_folder, load_split


@pytest.mark.parametrize("split,images,tumors", [("train", 202, 219), ("val", 61, 62)])
def test_counts_and_no_problems(real_data_dir, split, images, tumors):
    ds = load_split(real_data_dir, split, verify=True)  # decodes every image: finds truncated files
    assert ds.problems == []
    assert len(ds) == images
    assert sum(ds.instance_count(i) for i in ds.image_ids) == tumors
    assert ds.class_names == ["BG", "tumor"] and ds.num_classes == 2


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_image_and_its_masks_agree(real_data_dir, split):
    ds = load_split(real_data_dir, split)
    for i in ds.image_ids:
        image = ds.load_image(i)
        masks, cls = ds.load_mask(i)
        info = ds.image_info[i]
        assert image.dtype == np.uint8 and image.shape == (info["height"], info["width"], 3)
        assert masks.shape[:2] == image.shape[:2] and masks.shape[2] >= 1
        assert (cls == 1).all()
        # every tumor covers pixels, and a plausible share of the slice (not the whole image)
        area = masks.sum(axis=(0, 1)) / (info["height"] * info["width"])
        assert (area > 0).all() and (area < 0.5).all(), info["name"]


def test_val_round_trips_through_coco(real_data_dir, tmp_path):
    via = load_split(real_data_dir, "val")
    export_coco(via, tmp_path / "val.json")
    coco = load_coco(tmp_path / "val.json", real_data_dir / "val")
    assert coco.problems == [] and len(coco) == len(via)
    for i in via.image_ids:
        assert np.array_equal(via.load_mask(i)[0], coco.load_mask(i)[0])


def test_tumor_free_folder_loads_with_no_instances(tumor_free_dir):
    ds = load_image_folder(tumor_free_dir)
    assert len(ds) == 733 and ds.errors == []
    assert all(ds.instance_count(i) == 0 for i in ds.image_ids)
    image = ds.load_image(0)
    assert image.shape == (ds.image_info[0]["height"], ds.image_info[0]["width"], 3)
    assert ds.load_mask(0)[0].shape == image.shape[:2] + (0,)
