"""``braintumor detect`` and the per-image analysis it shares with the app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import braintumor.inference as inference
from braintumor.cli import main
from braintumor.config import Config
from fakes import blob_results
from braintumor.detect import analyse_image, filter_result, safe_stem, summary_line, _unique_stems


class BlobPredictor:
    """Detects every bright blob (grey > 128) as a tumor whose score is its mean brightness / 255."""

    def __init__(self, threshold=0.7):
        self.config = Config({"DETECTION_MIN_CONFIDENCE": threshold})
        self.threshold = threshold
        self.class_names = ["BG", "tumor"]
        self.weights_path = Path("logs/fake20240101T0000/mask_rcnn_fake_0001.h5")
        self.detect_calls = 0

    def detect(self, images):
        self.detect_calls += 1
        return blob_results(images)


def _png(path: Path, blobs=()):
    """A dark 96x128 image with bright rectangles ``(y1, x1, y2, x2, value)``."""
    img = np.full((96, 128, 3), 30, np.uint8)
    for y1, x1, y2, x2, v in blobs:
        img[y1:y2, x1:x2] = v
    Image.fromarray(img).save(path)
    return path


@pytest.fixture
def fake(monkeypatch):
    pred = BlobPredictor()
    calls = []

    def load_predictor(weights, config=None, logs="logs", min_confidence=None):
        calls.append({"weights": weights, "config": config, "logs": logs, "min_confidence": min_confidence})
        return pred

    monkeypatch.setattr(inference, "load_predictor", load_predictor)
    pred.calls = calls
    return pred


def test_detect_writes_overlays_and_reports_and_reports_bad_files(tmp_path, fake, capsys):
    a = _png(tmp_path / "a.png", [(10, 20, 30, 60, 240), (60, 90, 80, 110, 200)])
    b = _png(tmp_path / "b.jpg", [])
    bad = tmp_path / "bad.jpg"
    bad.write_text("this is not an image\n")
    out = tmp_path / "out"
    rc = main(["detect", str(a), str(bad), str(b), "--weights", "last", "--out", str(out), "--logs", str(tmp_path)])
    cap = capsys.readouterr()
    assert rc == 1
    assert fake.calls == [{"weights": "last", "config": None, "logs": str(tmp_path), "min_confidence": None}]
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a_overlay.png", "b.json", "b_overlay.png"]

    ra = json.loads((out / "a.json").read_text())
    assert ra["file"] == "a.png" and ra["tumor_found"] is True and ra["num_tumors"] == 2
    assert ra["image_size"] == {"height": 96, "width": 128}
    assert ra["threshold"] == pytest.approx(0.7) and ra["weights"].endswith("mask_rcnn_fake_0001.h5")
    d0, d1 = ra["detections"]
    assert d0["confidence"] == pytest.approx(240 / 255, abs=1e-3) and d1["confidence"] == pytest.approx(200 / 255, abs=1e-3)
    assert d0["area_px"] == 20 * 40 and d0["bbox"] == [10, 20, 30, 60] and d0["area_mm2"] is None
    assert d0["extent_px"] == {"height": 20, "width": 40}
    rb = json.loads((out / "b.json").read_text())
    assert rb["tumor_found"] is False and rb["detections"] == []

    overlay = np.asarray(Image.open(out / "a_overlay.png"))
    original = np.asarray(Image.open(a))
    assert overlay.shape == original.shape and not np.array_equal(overlay[10:30, 20:60], original[10:30, 20:60])

    lines = cap.out.splitlines()
    assert "a.png: 2 tumors (0.94, 0.78)" in lines
    assert "b.jpg: Tümör bulunamadı / No tumor found (threshold 0.70)" in lines
    err = [ln for ln in cap.err.splitlines() if ln.strip()]
    assert len(err) == 1 and "bad.jpg" in err[0] and "not an image" in err[0]
    assert "Traceback" not in cap.err


def test_min_confidence_filters_and_all_good_exits_zero(tmp_path, fake, capsys):
    a = _png(tmp_path / "scan.png", [(10, 20, 30, 60, 240), (60, 90, 80, 110, 200)])
    out = tmp_path / "o"
    rc = main(["detect", str(a), "--weights", "w.h5", "--out", str(out), "--min-confidence", "0.85"])
    assert rc == 0
    assert fake.calls[0]["min_confidence"] == pytest.approx(0.85)
    rep = json.loads((out / "scan.json").read_text())
    assert rep["threshold"] == pytest.approx(0.85) and rep["num_tumors"] == 1
    assert rep["detections"][0]["confidence"] > 0.85
    assert "scan.png: 1 tumor (0.94)" in capsys.readouterr().out


def test_bad_min_confidence_is_a_one_line_error(tmp_path, fake, capsys):
    a = _png(tmp_path / "a.png")
    assert main(["detect", str(a), "--weights", "last", "--min-confidence", "1.5", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --min-confidence")


def test_same_stem_in_two_folders_does_not_overwrite(tmp_path, fake):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    p1 = _png(tmp_path / "x" / "scan.png", [(10, 10, 20, 20, 250)])
    p2 = _png(tmp_path / "y" / "scan.png", [])
    out = tmp_path / "o"
    assert main(["detect", str(p1), str(p2), "--weights", "last", "--out", str(out)]) == 0
    assert json.loads((out / "scan.json").read_text())["tumor_found"] is True
    assert json.loads((out / "scan_2.json").read_text())["tumor_found"] is False
    assert _unique_stems(["a/b.png", "c/B.jpg", "d.png"]) == ["b", "B_2", "d"]
    assert safe_stem("../we ird<name>.dcm") == "we_ird_name"


def test_analyse_image_filters_by_threshold_and_measures_with_spacing():
    pred = BlobPredictor()
    img = np.full((64, 64, 3), 20, np.uint8)
    img[5:15, 5:25] = 250
    img[40:50, 40:50] = 150
    low = analyse_image(pred, img, {"pixel_spacing_mm": (0.5, 0.25)}, 0.5, name="s.dcm")
    high = analyse_image(pred, img, {"pixel_spacing_mm": (0.5, 0.25)}, 0.9, name="s.dcm")
    assert low.report["num_tumors"] == 2 and high.report["num_tumors"] == 1
    d = high.report["detections"][0]
    assert d["area_px"] == 200 and d["area_mm2"] == pytest.approx(200 * 0.125)
    assert d["extent_mm"] == {"height": pytest.approx(5.0), "width": pytest.approx(5.0)}
    assert high.report["pixel_spacing_mm"] == [0.5, 0.25]
    assert high.result["masks"].shape == (64, 64, 1)
    assert summary_line(high.report) == "s.dcm: 1 tumor (0.98)"
    none = analyse_image(pred, img, None, 0.99, name="s.dcm")
    assert none.report["tumor_found"] is False and np.array_equal(none.overlay, img)
    assert summary_line(none.report) == "s.dcm: Tümör bulunamadı / No tumor found (threshold 0.99)"


def test_filter_result_orders_by_score():
    masks = np.zeros((8, 8, 3), bool)
    res = {"rois": np.arange(12).reshape(3, 4), "class_ids": np.array([1, 1, 1]),
           "scores": np.array([0.6, 0.95, 0.8], np.float32), "masks": masks}
    kept = filter_result(res, 0.7)
    assert kept["scores"].tolist() == pytest.approx([0.95, 0.8])
    assert kept["rois"].tolist() == [[4, 5, 6, 7], [8, 9, 10, 11]]
    assert kept["masks"].shape == (8, 8, 2)


def test_a_checkpoint_that_does_not_load_is_one_error_line(tmp_path, fake, capsys):
    def load():
        raise OSError("Unable to synchronously open file (truncated file: eof = 96)\ndetails")

    fake.load = load
    a = _png(tmp_path / "a.png")
    assert main(["detect", str(a), "--weights", "last", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: logs/fake20240101T0000/mask_rcnn_fake_0001.h5: cannot load checkpoint "
                   "(Unable to synchronously open file (truncated file: eof = 96))"]
