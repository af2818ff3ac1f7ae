"""Figshare folders: the patient-wise split, the class map, several training sources at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from braintumor.config import Config, ConfigError
from braintumor.data import load_split
from braintumor.errors import BrainTumorError
from braintumor.figshare import GAP, VAL_BLOCKS, block_split, load_figshare, split_image_ids

SHARED_FIGSHARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "figshare"
MAP3 = {"meningioma": "tumor", "glioma": "tumor", "pituitary": "tumor"}


def _figshare_folder(root: Path, numbers, categories=(1, 2, 3), patient_ids=None, size=40) -> Path:
    """A Figshare-layout folder: images/N.jpg and COCO annotations.json with one RLE mask per image."""
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for k, n in enumerate(numbers):
        Image.fromarray(np.full((size, size, 3), 60, np.uint8)).save(root / "images" / f"{n}.jpg")
        m = np.zeros((size, size), np.uint8, order="F")
        m[5 + k % 10: 15 + k % 10, 8:20] = 1
        rle = mask_utils.encode(m)
        rec = {"id": k + 1, "file_name": f"{n}.jpg", "width": size, "height": size}
        if patient_ids is not None:
            rec["patient_id"] = patient_ids[k]
        images.append(rec)
        anns.append({"id": k + 1, "image_id": k + 1, "category_id": categories[k % len(categories)],
                     "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")},
                     "area": int(m.sum()), "bbox": [8, 5 + k % 10, 12, 10], "iscrowd": 0})
    cats = [{"id": 1, "name": "meningioma"}, {"id": 2, "name": "glioma"}, {"id": 3, "name": "pituitary"}]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


# ------------------------------------------------------------------ the split rule
def test_block_rule_puts_each_number_on_one_side_with_a_gap_around_val():
    numbers = range(1, 3065)
    sides = {n: block_split(n) for n in numbers}
    val = {n for n, s in sides.items() if s == "val"}
    train = {n for n, s in sides.items() if s == "train"}
    assert val and train and not (val & train)
    assert val == {n for lo, hi in VAL_BLOCKS for n in range(lo, hi + 1)}
    for v in val:  # no train number within GAP of any val number: a patient cannot straddle the edge
        assert not any(t in train for t in range(v - GAP, v + GAP + 1))
    lo, hi = VAL_BLOCKS[0]
    assert (block_split(lo - GAP - 1), block_split(lo - GAP), block_split(lo), block_split(hi + GAP + 1)) == \
        ("train", None, "val", "train")
    assert [block_split(n) for n in numbers] == [block_split(n) for n in numbers]  # deterministic


def test_patient_ids_split_by_patient_never_by_slice(tmp_path):
    pids = [f"P{k // 5}" for k in range(200)]  # 40 patients, 5 slices each
    folder = _figshare_folder(tmp_path / "fs", range(1, 201), patient_ids=pids)
    doc = json.loads((folder / "annotations.json").read_text())
    sides = split_image_ids(folder, doc["images"])
    assert sides["train"] and sides["val"] and not (sides["train"] & sides["val"])
    assert sides["train"] | sides["val"] == {i["id"] for i in doc["images"]}
    by_patient: dict[str, set] = {}
    for img in doc["images"]:
        by_patient.setdefault(img["patient_id"], set()).add("val" if img["id"] in sides["val"] else "train")
    assert all(len(s) == 1 for s in by_patient.values())  # no patient on both sides
    assert split_image_ids(folder, doc["images"]) == sides  # deterministic
    # a split file wins over the patient rule
    (folder / "split.json").write_text(json.dumps({"images": {"train": list(range(1, 16)), "val": [16, 17, 18, 19, 20]}}))
    val = load_figshare(folder, "val", class_map=MAP3)
    assert sorted(i["name"] for i in val.image_info) == sorted(f"{n}.jpg" for n in range(16, 21))
    assert all(i["patient_id"] == "P3" for i in val.image_info)


def test_loader_reads_rle_maps_three_categories_and_splits_blocks(tmp_path):
    lo, hi = VAL_BLOCKS[0]
    numbers = [lo - GAP - 2, lo - GAP - 1, lo - 3, lo, lo + 1, hi, hi + 3, hi + GAP + 1]
    folder = _figshare_folder(tmp_path / "fs", numbers)
    train = load_split(folder, "train", class_map=MAP3)
    val = load_split(folder, "val", class_map=MAP3)
    assert [i["name"] for i in train.image_info] == [f"{lo - GAP - 2}.jpg", f"{lo - GAP - 1}.jpg", f"{hi + GAP + 1}.jpg"]
    assert [i["name"] for i in val.image_info] == [f"{lo}.jpg", f"{lo + 1}.jpg", f"{hi}.jpg"]
    assert train.problems == [] and val.format == "figshare"
    masks, ids = val.load_mask(0)
    assert masks.shape == (40, 40, 1) and masks.sum() == 120 and list(ids) == [1]
    every = load_figshare(folder, "all", class_map=MAP3)
    assert len(every) == len(numbers)
    # each image keeps its tumor type (the category before CLASS_MAP), for evaluate's by-type figures
    assert [i["categories"] for i in every.image_info] == [[["meningioma", "glioma", "pituitary"][k % 3]]
                                                           for k in range(len(numbers))]


def test_unmapped_categories_are_skipped_and_counted(tmp_path):
    folder = _figshare_folder(tmp_path / "fs", range(1, 7))
    ds = load_figshare(folder, "all", class_map={"glioma": "tumor"})
    assert sum(len(i["shapes"]) for i in ds.image_info) == 2  # only the glioma annotations
    assert [i.get("categories") for i in ds.image_info] == [None, ["glioma"], None, None, ["glioma"], None]
    warnings = sorted(str(p) for p in ds.warnings)
    assert len(warnings) == 2 and all(p.kind == "unknown class" for p in ds.warnings)
    assert "2 annotations of class 'meningioma'" in warnings[0] and "'pituitary'" in warnings[1]
    assert "CLASS_MAP" in warnings[0]
    with pytest.raises(ConfigError, match="CLASS_MAP maps onto"):
        Config({"CLASS_MAP": {"glioma": "cancer"}})


def test_a_folder_that_is_not_figshare_is_refused_in_one_line(tmp_path):
    with pytest.raises(BrainTumorError, match="not a Figshare folder"):
        load_figshare(tmp_path, "train")
    folder = _figshare_folder(tmp_path / "fs", range(1, 3))
    with pytest.raises(BrainTumorError, match="unknown Figshare split 'test'"):
        load_figshare(folder, "test")


@pytest.mark.skipif(not SHARED_FIGSHARE.is_dir(), reason="../shared/data/figshare not present")
def test_shared_figshare_split_is_patient_wise_and_large_enough():
    train = load_split(SHARED_FIGSHARE, "train", class_map=MAP3)
    val = load_split(SHARED_FIGSHARE, "val", class_map=MAP3)
    tn = {int(Path(i["name"]).stem) for i in train.image_info}
    vn = {int(Path(i["name"]).stem) for i in val.image_info}
    assert not (tn & vn) and len(vn) >= 150 and len(tn) > 1000
    assert min(abs(a - b) for a in tn for b in vn) > GAP
    assert train.warnings == [] and val.warnings == []


# ------------------------------------------------------------------ several sources
@pytest.fixture()
def tiny_data(tmp_path) -> Path:
    """``tmp/data/brain_tumor_data/{train,val}`` (4 + 2 VIA images): its siblings hold the other sources."""
    from test_train import write_via_split

    root = tmp_path / "data" / "brain_tumor_data"
    write_via_split(root / "train", 4, seed=1)
    write_via_split(root / "val", 2, seed=50)
    return root


def _sources_config(**kw):
    return Config({"STEPS_PER_EPOCH": 20, "CLASS_MAP": MAP3, "SOURCES": [
        {"NAME": "thesis", "KIND": "split", "DIR": "brain_tumor_data", "SPLIT": "train", "WEIGHT": 0.25},
        {"NAME": "fs", "KIND": "figshare", "SPLIT": "train", "WEIGHT": 0.5},
        {"NAME": "free", "KIND": "tumor_free", "WEIGHT": 0.25}], **kw})


def test_sources_draw_their_weights_share_of_every_pass(tmp_path, tiny_data):
    from braintumor.mrcnn.inputs import pass_orders
    from braintumor.train import describe_training_set, load_training_data

    root = Path(tiny_data).parent
    _figshare_folder(root / "fs", range(1, 11))
    (root / "free").mkdir()
    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 48, 3), np.uint8)).save(root / "free" / f"n{i}.jpg")
    config = _sources_config()
    train, val, held = load_training_data(config, Path(tiny_data))
    names = [train.image_info[i]["source"] for i in train.image_ids]
    assert names.count("thesis") == 4 and names.count("fs") == 10
    counts = {n: sum(1 for i in train.image_ids if train.image_info[i]["source"] == n) for n in ("thesis", "fs", "free")}
    assert counts["free"] + len(held) == 6 and counts["free"] > 0
    assert describe_training_set(train).startswith("thesis 5 of 4, fs 10 of 10, free 5 of")
    passes = pass_orders(train, np.random.default_rng(0))
    seen = {"thesis": [], "fs": [], "free": []}
    for _ in range(4):
        order = next(passes)
        assert len(order) == 20
        per = {n: [int(i) for i in order if train.image_info[i]["source"] == n] for n in seen}
        assert (len(per["thesis"]), len(per["fs"]), len(per["free"])) == (5, 10, 5)
        for n in seen:
            seen[n] += per[n]
    fs_ids = [i for i in train.image_ids if train.image_info[i]["source"] == "fs"]
    assert sorted(seen["fs"]) == sorted(fs_ids * 4)  # every Figshare image once per 10 draws
    thesis_ids = {i for i in train.image_ids if train.image_info[i]["source"] == "thesis"}
    assert set(seen["thesis"][:5]) == thesis_ids  # 5 draws from a pool of 4: all 4 in the first pass
    assert sorted(seen["thesis"][:20]) == sorted(list(thesis_ids) * 5)  # 20 draws: each exactly 5 times


def test_source_folders_and_their_errors(tmp_path, tiny_data):
    from braintumor.train import load_training_data, per_pass_counts, source_dir

    assert per_pass_counts([0.3, 0.45, 0.25], 100) == [30, 45, 25]
    assert per_pass_counts([1, 1, 1], 10) == [4, 3, 3] and sum(per_pass_counts([0.2, 0.7, 0.1], 7)) == 7
    src = {"NAME": "fs", "KIND": "figshare", "WEIGHT": 1}
    assert source_dir(src, Path("/d/brain_tumor_data")) == Path("/d/fs")
    assert source_dir({**src, "DIR": "other"}, Path("/d/x")) == Path("/d/other")
    assert source_dir(src, Path("/d/x"), {"fs": "/e/f"}) == Path("/e/f")
    with pytest.raises(BrainTumorError, match="training source 'fs' not found"):
        load_training_data(_sources_config(), Path(tiny_data))
    with pytest.raises(ConfigError, match="KIND must be one of"):
        Config({"SOURCES": [{"NAME": "a", "KIND": "zip", "WEIGHT": 1}]})
    with pytest.raises(ConfigError, match="WEIGHT must be a positive number"):
        Config({"SOURCES": [{"NAME": "a", "KIND": "split", "WEIGHT": 0}]})


def test_data_check_reports_a_figshare_folder_by_split(tmp_path, capsys):
    from braintumor.cli import main

    lo, hi = VAL_BLOCKS[0]
    folder = _figshare_folder(tmp_path / "fs", [1, 2, 3, lo, lo + 1])
    assert main(["data", "check", "--data", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "train (figshare: annotations.json):" in out and "val (figshare: annotations.json):" in out
    assert "  images: 3, instances: 3" in out and "  images: 2, instances: 2" in out
    assert "instances per class: tumor 3" in out


def test_train_source_option_errors_are_one_line(tiny_data, capsys):
    from braintumor.cli import main

    preset = str(Path(__file__).resolve().parents[1] / "mrcnn_config" / "resnet101_figshare.toml")
    assert main(["train", "--config", preset, "--data", str(tiny_data), "--source", "nope=/x"]) == 2
    assert main(["train", "--config", preset, "--data", str(tiny_data), "--source", "figshare"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: --source nope: the preset has no such source")
    assert "brain_tumor_data, figshare, tumor_free" in err[0]
    assert err[1] == "error: --source needs NAME=DIR, got 'figshare'"


def test_a_source_can_keep_only_some_categories(tmp_path, tiny_data):
    """``CATEGORIES`` gives one tumor type its own share: only images annotated with it are kept,
    matched by the COCO category name before CLASS_MAP; a name that matches nothing is an error."""
    from braintumor.train import load_training_data

    root = Path(tiny_data).parent
    _figshare_folder(root / "fs", range(1, 13))  # categories cycle meningioma, glioma, pituitary
    (root / "free").mkdir()
    Image.fromarray(np.full((48, 48, 3), 9, np.uint8)).save(root / "free" / "n0.jpg")
    sources = [{"NAME": "fs", "KIND": "figshare", "SPLIT": "train", "WEIGHT": 0.5},
               {"NAME": "glioma", "KIND": "figshare", "DIR": "fs", "SPLIT": "train", "WEIGHT": 0.5,
                "CATEGORIES": ["Glioma"]}]
    train, _, _ = load_training_data(Config({"STEPS_PER_EPOCH": 8, "CLASS_MAP": MAP3, "SOURCES": sources}),
                                     Path(tiny_data))
    by_source = {n: [train.image_info[i] for i in train.image_ids if train.image_info[i]["source"] == n]
                 for n in ("fs", "glioma")}
    assert len(by_source["fs"]) == 12
    assert sorted(Path(i["path"]).stem for i in by_source["glioma"]) == ["11", "2", "5", "8"]
    assert all(i["categories"] == ["glioma"] and len(i["shapes"]) == 1 for i in by_source["glioma"])
    assert [k for _, k in train.pass_pools] == [4, 4]
    sources[1]["CATEGORIES"] = ["astrocytoma"]
    with pytest.raises(BrainTumorError, match="no image with an annotation of category astrocytoma"):
        load_training_data(Config({"STEPS_PER_EPOCH": 8, "CLASS_MAP": MAP3, "SOURCES": sources}), Path(tiny_data))
    for bad in ([], "glioma", [""]):
        with pytest.raises(ConfigError, match="CATEGORIES must be a non-empty list"):
            Config({"SOURCES": [{"NAME": "a", "KIND": "figshare", "WEIGHT": 1, "CATEGORIES": bad}]})
    with pytest.raises(ConfigError, match="not for KIND tumor_free"):
        Config({"SOURCES": [{"NAME": "a", "KIND": "tumor_free", "WEIGHT": 1, "CATEGORIES": ["glioma"]}]})
