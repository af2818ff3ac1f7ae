"""braintumor.data with COCO: VIA -> COCO -> masks round trip, RLE / polygon input, auto-detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from braintumor.boxes import masks_to_boxes
from braintumor.data import export_coco, load_coco, load_split
from braintumor.errors import BrainTumorError

H, W = 90, 130


def _image(path: Path, h=H, w=W):
    Image.fromarray(np.full((h, w, 3), 77, np.uint8)).save(path)


def _via_split(root: Path) -> Path:
    """A VIA split with every shape kind, two images plus one without instances."""
    d = root / "train"
    d.mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        _image(d / name)
    t = np.linspace(0, 2 * np.pi, 9, endpoint=False)
    regions_a = [
        {"shape_attributes": {"name": "polygon", "all_points_x": list(30 + 20 * np.cos(t)),
                              "all_points_y": list(40 + 25 * np.sin(t))}, "region_attributes": {"shape": "tumor"}},
        {"shape_attributes": {"name": "rect", "x": 80, "y": 10, "width": 25, "height": 15}, "region_attributes": {}},
    ]
    regions_b = [
        {"shape_attributes": {"name": "circle", "cx": 60, "cy": 45, "r": 12}, "region_attributes": {}},
        {"shape_attributes": {"name": "ellipse", "cx": 100, "cy": 70, "rx": 20, "ry": 8, "theta": 0.5},
         "region_attributes": {}},
        {"shape_attributes": {"name": "polygon", "all_points_x": [0, 10, 5], "all_points_y": [0, 0, 10]},
         "region_attributes": {}},
    ]
    doc = {"a": {"filename": "a.png", "regions": regions_a}, "b": {"filename": "b.png", "regions": regions_b},
           "c": {"filename": "c.png", "regions": []}}
    (d / "annotations.json").write_text(json.dumps(doc))
    return root


def test_via_to_coco_to_masks_is_exact(tmp_path):
    via = load_split(_via_split(tmp_path), "train")
    out = tmp_path / "out" / "train_coco.json"
    doc = export_coco(via, out)
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["train_coco.json"]  # no temp files left
    assert json.loads(out.read_text()) == doc
    assert [c["name"] for c in doc["categories"]] == ["tumor"]
    assert {a["iscrowd"] for a in doc["annotations"]} == {0} and len(doc["annotations"]) == 5

    coco = load_coco(out, tmp_path / "train")
    assert coco.problems == [] and coco.format == "coco" and len(coco) == len(via) == 3
    for i in via.image_ids:
        m1, c1 = via.load_mask(i)
        m2, c2 = coco.load_mask(i)
        assert m1.shape == m2.shape and np.array_equal(m1, m2) and np.array_equal(c1, c2)
    # bbox and area describe the masks
    m, _ = via.load_mask(1)
    boxes = masks_to_boxes(m)
    for k, ann in enumerate(a for a in doc["annotations"] if a["image_id"] == 2):
        y1, x1, y2, x2 = boxes[k]
        assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1] and ann["area"] == m[:, :, k].sum()


def test_polygon_export_is_close(tmp_path):
    via = load_split(_via_split(tmp_path), "train")
    out = tmp_path / "poly.json"
    doc = export_coco(via, out, encoding="polygon")
    assert all(isinstance(a["segmentation"], list) for a in doc["annotations"])
    back = load_coco(out, tmp_path / "train")
    for i in via.image_ids:
        m1, m2 = via.load_mask(i)[0], back.load_mask(i)[0]
        for k in range(m1.shape[2]):
            inter, union = (m1[..., k] & m2[..., k]).sum(), (m1[..., k] | m2[..., k]).sum()
            assert inter / union > 0.8


def _coco_doc(masks: list[np.ndarray]) -> dict:
    """COCO JSON for one 'x.png' holding ``masks`` as compressed RLE, uncompressed RLE and polygon."""
    anns = []
    for k, m in enumerate(masks):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        anns.append({"id": k + 1, "image_id": 7, "category_id": 3, "iscrowd": 0,
                     "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return {"images": [{"id": 7, "file_name": "x.png", "height": H, "width": W}],
            "annotations": anns, "categories": [{"id": 3, "name": "tumor"}]}


def _uncompressed(m: np.ndarray) -> dict:
    """Column-major run lengths starting with zeros (COCO's uncompressed RLE)."""
    flat = m.T.ravel().astype(np.int8)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return {"size": [H, W], "counts": counts}


def test_coco_rle_and_polygon_input(tmp_path):
    _image(tmp_path / "x.png")
    m1 = np.zeros((H, W), bool)
    m1[10:30, 20:60] = True
    m2 = np.zeros((H, W), bool)
    m2[50:80, 70:75] = True
    m2[60, 90:100] = True  # a second, disconnected part
    doc = _coco_doc([m1, m2])
    doc["annotations"].append({"id": 3, "image_id": 7, "category_id": 3, "iscrowd": 0,
                               "segmentation": _uncompressed(m2)})
    doc["annotations"].append({"id": 4, "image_id": 7, "category_id": 3, "iscrowd": 0,
                               "segmentation": [[100, 10, 120, 10, 120, 30, 100, 30]]})
    (tmp_path / "coco.json").write_text(json.dumps(doc))
    ds = load_coco(tmp_path / "coco.json")
    assert ds.problems == []
    masks, cls = ds.load_mask(0)
    assert masks.shape == (H, W, 4) and cls.tolist() == [1, 1, 1, 1]
    assert np.array_equal(masks[..., 0], m1) and np.array_equal(masks[..., 1], m2)
    assert np.array_equal(masks[..., 2], m2)
    assert masks[20, 110, 3] and not masks[40, 110, 3]


def test_load_split_detects_coco(tmp_path):
    d = tmp_path / "val"
    d.mkdir()
    _image(d / "x.png")
    m = np.zeros((H, W), bool)
    m[5:9, 5:9] = True
    (d / "coco.json").write_text(json.dumps(_coco_doc([m])))
    ds = load_split(tmp_path, "val")
    assert ds.format == "coco" and ds.source.name == "coco.json" and ds.load_mask(0)[0].sum() == 16
    (d / "coco.json").rename(d / "annotations.json")
    ds = load_split(tmp_path, "val")
    assert ds.format == "coco" and ds.source.name == "annotations.json" and ds.instance_count(0) == 1


def test_coco_problems(tmp_path):
    _image(tmp_path / "x.png")
    _image(tmp_path / "y.png", h=10, w=10)
    m = np.zeros((H, W), bool)
    m[5:9, 5:9] = True
    doc = _coco_doc([m, np.zeros((H, W), bool)])
    doc["categories"].append({"id": 4, "name": "edema"})
    doc["annotations"].append({"id": 9, "image_id": 7, "category_id": 4, "segmentation": doc["annotations"][0]["segmentation"]})
    doc["annotations"].append({"id": 10, "image_id": 7, "category_id": 3, "segmentation": [[1, 2, 3, 4]]})
    doc["images"] += [{"id": 8, "file_name": "y.png", "height": 20, "width": 10},
                      {"id": 9, "file_name": "gone.png", "height": H, "width": W}]
    (tmp_path / "c.json").write_text(json.dumps(doc))
    ds = load_coco(tmp_path / "c.json")
    assert len(ds) == 1 and ds.instance_count(0) == 1
    assert sorted(p.kind for p in ds.errors) == ["missing image", "size mismatch"]
    assert sorted(p.kind for p in ds.warnings) == ["empty shape", "too few points", "unknown class"]
    assert any(str(tmp_path / "y.png") in p and "10x10" in p for p in ds.errors)
    (tmp_path / "bad.json").write_text(json.dumps({"images": {}, "annotations": []}))
    with pytest.raises(BrainTumorError, match="not COCO instance JSON"):
        load_coco(tmp_path / "bad.json")
