"""braintumor.data with VIA files: every shape, VIA 1.x / 2.x / project files, every problem."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from braintumor.data import Problem, load_image_folder, load_split, load_via
from braintumor.errors import BrainTumorError

H, W = 120, 160


def _image(path: Path, h=H, w=W, **save):
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, **save)


def _region(shape: dict, attrs: dict | None = None) -> dict:
    return {"shape_attributes": shape, "region_attributes": {"shape": "tumor"} if attrs is None else attrs}


def _poly(xs, ys, name="polygon"):
    return {"name": name, "all_points_x": list(xs), "all_points_y": list(ys)}


def _split(root: Path, entries: dict[str, list], split="train", make_images=True) -> Path:
    """Write ``root/split/annotations.json`` (VIA 2 style) and an image per entry; returns root."""
    d = root / split
    d.mkdir(parents=True, exist_ok=True)
    doc = {}
    for fname, regions in entries.items():
        if make_images:
            _image(d / fname)
        doc[f"{fname}1234"] = {"filename": fname, "size": 1234, "regions": regions, "file_attributes": {}}
    (d / "annotations.json").write_text(json.dumps(doc, indent=1))
    return root


def _kinds(ds, severity=None):
    return sorted(p.kind for p in ds.problems if severity is None or p.severity == severity)


# ----------------------------------------------------------------------------- shapes
def test_every_shape_rasterises_where_and_how_big_it_should(tmp_path):
    regions = [
        _region(_poly([10, 50, 50, 10], [10, 10, 40, 40])),                                 # square-ish polygon
        _region(_poly([60, 90, 75], [10, 10, 40], name="polyline")),                        # closed triangle
        _region({"name": "rect", "x": 100, "y": 5, "width": 30, "height": 20}),
        _region({"name": "circle", "cx": 40, "cy": 85, "r": 20}),
        _region({"name": "ellipse", "cx": 110, "cy": 85, "rx": 30, "ry": 10, "theta": 0}),
    ]
    ds = load_split(_split(tmp_path, {"a.png": regions}), "train")
    assert ds.problems == [] and len(ds) == 1 and ds.format == "via"
    info = ds.image_info[0]
    assert (info["height"], info["width"], info["name"]) == (H, W, "a.png")
    masks, cls = ds.load_mask(0)
    assert masks.shape == (H, W, 5) and masks.dtype == bool
    assert cls.dtype == np.int32 and cls.tolist() == [1] * 5
    area = masks.sum(axis=(0, 1))
    assert masks[25, 30, 0] and not masks[5, 30, 0]
    assert masks[20, 75, 1] and not masks[38, 62, 1]  # inside the triangle, outside near its base corner
    assert area[2] == 600 and masks[5:25, 100:130, 2].all()  # rect: exact 30 x 20 pixels
    assert area[3] == pytest.approx(np.pi * 20**2, rel=0.03)
    assert area[4] == pytest.approx(np.pi * 30 * 10, rel=0.03)
    assert masks[85, 135, 4] and not masks[97, 110, 4]  # wide, not tall


def test_rotated_ellipse_turns_clockwise_like_via(tmp_path):
    shape = {"name": "ellipse", "cx": 80, "cy": 60, "rx": 40, "ry": 8, "theta": np.pi / 4}
    ds = load_split(_split(tmp_path, {"e.png": [_region(shape)]}), "train")
    m = ds.load_mask(0)[0][:, :, 0]
    # +45 degrees on a y-down canvas: the long axis runs from top-left to bottom-right
    assert m[60 + 20, 80 + 20] and m[60 - 20, 80 - 20]
    assert not m[60 - 20, 80 + 20] and not m[60 + 20, 80 - 20]


def test_known_polygon_area_within_one_percent(tmp_path):
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    xs, ys = 80 + 50 * np.cos(t), 60 + 50 * np.sin(t)
    shoelace = 0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))
    ds = load_split(_split(tmp_path, {"p.png": [_region(_poly(xs.round(2), ys.round(2)))]}), "train")
    assert ds.load_mask(0)[0].sum() == pytest.approx(shoelace, rel=0.01)


def test_via1_regions_dict_in_numeric_order_and_no_regions(tmp_path):
    d = tmp_path / "train"
    d.mkdir()
    _image(d / "a.png")
    _image(d / "b.png")
    regions = {str(k): _region({"name": "rect", "x": 10 * k, "y": 0, "width": 5, "height": 5}) for k in range(12)}
    doc = {"a.png99": {"filename": "a.png", "size": 99, "regions": regions},
           "b.png98": {"filename": "b.png", "size": 98, "regions": {}}}
    (d / "annotations.json").write_text(json.dumps(doc))
    ds = load_split(tmp_path, "train")
    masks, cls = ds.load_mask(0)
    assert masks.shape[2] == 12
    assert [int(np.flatnonzero(masks[0, :, k])[0]) for k in range(12)] == [10 * k for k in range(12)]
    empty, cls0 = ds.load_mask(1)
    assert empty.shape == (H, W, 0) and cls0.shape == (0,) and cls0.dtype == np.int32


def test_via2_project_file(tmp_path):
    _split(tmp_path, {"a.png": [_region({"name": "circle", "cx": 50, "cy": 50, "r": 10})]})
    ann = tmp_path / "train" / "annotations.json"
    project = {"_via_settings": {"ui": {}}, "_via_img_metadata": json.loads(ann.read_text()),
               "_via_attributes": {"region": {}, "file": {}}}
    ann.write_text(json.dumps(project))
    ds = load_split(tmp_path, "train")
    assert len(ds) == 1 and ds.instance_count(0) == 1 and ds.problems == []


def test_via3_project_file_is_refused_clearly(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "annotations.json").write_text(json.dumps({"project": {}, "file": {}, "metadata": {}}))
    with pytest.raises(BrainTumorError, match="VIA 3 project files are not supported"):
        load_split(tmp_path, "train")


# ----------------------------------------------------------------------------- classes
def test_class_from_region_attributes(tmp_path):
    rect = {"name": "rect", "x": 1, "y": 1, "width": 9, "height": 9}
    regions = [_region(rect, {"name": "tumor"}), _region(rect, {}), _region(rect, {"shape": " Tumor "}),
               _region(rect, {"note": "", "type": {"tumor": True, "edema": False}}),
               _region(rect, {"shape": "edema"})]
    ds = load_split(_split(tmp_path, {"a.png": regions}), "train")
    assert ds.instance_count(0) == 4 and ds.load_mask(0)[1].tolist() == [1, 1, 1, 1]
    assert _kinds(ds) == ["unknown class"] and ds.errors == []
    assert "'edema'" in ds.warnings[0] and "region 4" in ds.warnings[0]


def test_more_class_names(tmp_path):
    rect = {"name": "rect", "x": 1, "y": 1, "width": 9, "height": 9}
    regions = [_region(rect, {"name": "edema"}), _region(rect, {"name": "tumor"})]
    ds = load_split(_split(tmp_path, {"a.png": regions}), "train", class_names=["BG", "tumor", "edema"])
    assert ds.num_classes == 3 and ds.load_mask(0)[1].tolist() == [2, 1]


# ----------------------------------------------------------------------------- per-entry problems
def test_skipped_shapes_are_counted_warnings(tmp_path):
    regions = [
        _region(_poly([10, 20], [10, 20])),                      # too few points
        _region(_poly([10, 20, 30], [10, 20, 30])),              # collinear: zero area
        _region({"name": "point", "cx": 5, "cy": 5}),            # unsupported
        _region({"name": "rect", "x": 5}),                       # malformed
        _region({"name": "circle", "cx": 500, "cy": 500, "r": 3}),  # entirely outside: no pixel
        _region(_poly([10, 40, 25], [10, 10, 40])),              # fine
    ]
    ds = load_split(_split(tmp_path, {"a.png": regions}), "train")
    assert ds.instance_count(0) == 1 and ds.load_mask(0)[0].shape == (H, W, 1)
    assert ds.errors == []
    assert _kinds(ds, "warning") == sorted(["too few points", "zero area", "unsupported shape", "malformed shape",
                                           "clipped points", "empty shape"])
    for p in ds.problems:
        assert isinstance(p, Problem) and isinstance(p, str) and "\n" not in p
        assert p.startswith(str(tmp_path / "train" / "annotations.json")) and "a.png region" in p
    assert "polygon has 2 points" in ds.problems[0]
    copy = pickle.loads(pickle.dumps(ds))  # datasets travel to data-loader processes
    assert copy.problems == ds.problems and [p.kind for p in copy.problems] == [p.kind for p in ds.problems]
    assert np.array_equal(copy.load_mask(0)[0], ds.load_mask(0)[0])


def test_points_outside_are_clipped_and_counted(tmp_path):
    regions = [_region(_poly([-20, 100, 100, -20], [-5, -5, 50, 50]))]
    ds = load_split(_split(tmp_path, {"a.png": regions}), "train")
    assert _kinds(ds) == ["clipped points"] and "3 of 4 points outside the 160x120 image" in ds.warnings[0]
    m = ds.load_mask(0)[0][:, :, 0]
    assert m.shape == (H, W) and m[0, 0] and m[50, 50] and not m[51, 50] and not m[10, 101]


def test_missing_unreadable_and_truncated_images_are_errors(tmp_path):
    rect = [_region({"name": "rect", "x": 1, "y": 1, "width": 9, "height": 9})]
    root = _split(tmp_path, {"ok.png": rect, "gone.png": rect, "text.png": rect, "cut.jpg": rect})
    d = root / "train"
    (d / "gone.png").unlink()
    (d / "text.png").write_text("not an image")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(buf, "JPEG")
    (d / "cut.jpg").write_bytes(buf.getvalue()[:2000])

    quick = load_split(root, "train")  # headers only: the truncated JPEG still has a header
    assert [i["name"] for i in quick.image_info] == ["ok.png", "cut.jpg"]
    assert _kinds(quick, "error") == ["missing image", "unreadable image"]
    with pytest.raises(BrainTumorError, match="cut.jpg: truncated"):
        quick.load_image(1)

    full = load_split(root, "train", verify=True)
    assert [i["name"] for i in full.image_info] == ["ok.png"]
    assert _kinds(full, "error") == ["missing image", "unreadable image", "unreadable image"]
    missing = next(p for p in full.errors if p.kind == "missing image")
    assert missing == f"{d / 'gone.png'}: image file not found (listed in {d / 'annotations.json'})"
    assert all(p.severity == "error" for p in full.errors) and full.warnings == []


def test_malformed_entries_are_errors(tmp_path):
    d = tmp_path / "train"
    d.mkdir()
    _image(d / "a.png")
    doc = {"x": "not a record", "y": {"size": 3}, "z": {"filename": "a.png", "regions": 5}}
    (d / "annotations.json").write_text(json.dumps(doc))
    ds = load_split(tmp_path, "train")
    assert len(ds) == 0 and _kinds(ds, "error") == ["malformed entry"] * 3


def test_exif_rotated_image_size_and_masks_agree(tmp_path):
    d = tmp_path / "train"
    d.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 8
    _image(d / "r.jpg", h=40, w=100, exif=exif)
    doc = {"r": {"filename": "r.jpg", "regions": [_region({"name": "rect", "x": 0, "y": 90, "width": 40, "height": 10})]}}
    (d / "annotations.json").write_text(json.dumps(doc))
    ds = load_split(tmp_path, "train")
    assert (ds.image_info[0]["height"], ds.image_info[0]["width"]) == (100, 40)
    assert ds.problems == []
    assert ds.load_image(0).shape[:2] == ds.load_mask(0)[0].shape[:2] == (100, 40)
    assert ds.load_mask(0)[0][90:, :, 0].all()


# ----------------------------------------------------------------------------- fatal problems
def test_fatal_annotation_file_problems(tmp_path):
    with pytest.raises(BrainTumorError, match=r"train: no such split folder"):
        load_split(tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(BrainTumorError, match=r"train: no annotations.json or coco.json"):
        load_split(tmp_path, "train")
    ann = tmp_path / "train" / "annotations.json"
    ann.write_text('{\n  "a.png1": {"filename": "a.png",\n   "regions": [}\n')
    with pytest.raises(BrainTumorError) as e:
        load_split(tmp_path, "train")
    assert str(e.value).startswith(f"{ann}: not valid JSON") and "line 3, column" in str(e.value)
    assert "\n" not in str(e.value)
    ann.write_text("[1, 2]")
    with pytest.raises(BrainTumorError, match="not a VIA or COCO annotation file"):
        load_split(tmp_path, "train")
    ann.write_text("")
    with pytest.raises(BrainTumorError, match="empty file"):
        load_split(tmp_path, "train")
    with pytest.raises(BrainTumorError, match="no such file"):
        load_via(tmp_path / "nope.json")


# ----------------------------------------------------------------------------- image folders
def test_image_folder_has_no_instances(tmp_path):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.jpg", h=30, w=20)
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    (tmp_path / "broken.png").write_bytes(b"broken")
    ds = load_image_folder(tmp_path)
    assert [i["name"] for i in ds.image_info] == ["a.png", "b.jpg"] and ds.format == "folder"
    assert _kinds(ds, "error") == ["unreadable image"]
    masks, cls = ds.load_mask(1)
    assert masks.shape == (30, 20, 0) and cls.shape == (0,)
    assert ds.load_image(1).shape == (30, 20, 3)
    assert list(ds.image_ids) == [0, 1] and ds.class_names == ["BG", "tumor"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BrainTumorError, match="no image files"):
        load_image_folder(empty)
    with pytest.raises(BrainTumorError, match="no such folder"):
        load_image_folder(tmp_path / "nope")


def test_head_keeps_the_first_images_with_their_masks_and_problems(tmp_path):
    sq = _region({"name": "rect", "x": 10, "y": 20, "width": 30, "height": 40})
    root = _split(tmp_path, {"a.jpg": [sq], "b.jpg": [sq, sq], "c.jpg": []})
    ds = load_split(root, "train")
    ds.add_problem("x.jpg: unreadable", "error", "unreadable image")
    two = ds.head(2)
    assert [i["name"] for i in two.image_info] == ["a.jpg", "b.jpg"] and len(ds) == 3
    for i in two.image_ids:
        np.testing.assert_array_equal(two.load_mask(i)[0], ds.load_mask(i)[0])
        np.testing.assert_array_equal(two.load_image(i), ds.load_image(i))
    assert two.problems == ds.problems and two.class_names == ds.class_names and two.source == ds.source
    assert len(ds.head(None)) == 3 and len(ds.head(0)) == 0
