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

    def load_predictor(weights, config=None, logs="logs", min_confidence=None, precision=None):
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
    assert "detector_scores" not in kept


def test_a_region_scorers_two_scores_follow_each_kept_region_into_the_report():
    from braintumor.detect import analyse_result

    masks = np.zeros((8, 8, 2), bool)
    masks[1:3, 1:3, 0] = masks[4:7, 4:7, 1] = True
    res = {"rois": np.array([[1, 1, 3, 3], [4, 4, 7, 7]]), "class_ids": np.array([1, 1]),
           "scores": np.array([0.3, 0.6], np.float32), "masks": masks,
           "detector_scores": np.array([0.9, 0.4], np.float32), "region_scores": np.array([0.1, 0.9], np.float32)}
    kept = filter_result(res, 0.5)
    assert kept["detector_scores"].tolist() == pytest.approx([0.4]) and kept["region_scores"].tolist() == pytest.approx([0.9])
    [d] = analyse_result(np.zeros((8, 8, 3), np.uint8), res, None, 0.5, ["BG", "tumor"]).report["detections"]
    assert (d["confidence"], d["detector_confidence"], d["region_confidence"]) == pytest.approx((0.6, 0.4, 0.9))


def test_a_checkpoint_that_does_not_load_is_one_error_line(tmp_path, fake, capsys):
    def load():
        raise OSError("Unable to synchronously open file (truncated file: eof = 96)\ndetails")

    fake.load = load
    a = _png(tmp_path / "a.png")
    assert main(["detect", str(a), "--weights", "last", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: logs/fake20240101T0000/mask_rcnn_fake_0001.h5: cannot load checkpoint "
                   "(Unable to synchronously open file (truncated file: eof = 96))"]


def _head(threshold=0.5, confident=0.9):
    """An image-level head whose probability is sigmoid(4 * feature 0): 0.5 at feature 0 = 0."""
    from braintumor.image_score import ImageScore

    return ImageScore(mean=np.zeros(2), scale=np.ones(2), weights=np.array([4.0, 0.0]), bias=0.0,
                      threshold=threshold, confident_detection=confident)


@pytest.mark.parametrize("score, feature, verdict, found", [
    (0.95, -3.0, "tumor", True),       # a confident detection flags the image whatever the head says
    (0.60, 3.0, "tumor", True),        # the head flags it; the detection at the threshold is outlined
    (None, 3.0, "suspected", True),    # the head flags it, nothing to outline: never green
    (0.60, -3.0, "uncertain", False),  # a weak detection the head does not back: not green either
    (None, -3.0, "no_tumor", False),   # both see nothing: the only green verdict
])
def test_the_verdict_combines_outlines_with_the_image_level_head(score, feature, verdict, found):
    from braintumor.detect import analyse_result

    image = np.full((32, 32, 3), 30, np.uint8)
    masks = np.zeros((32, 32, 0 if score is None else 1), bool)
    masks[4:12, 4:12] = True
    result = {"rois": np.array([[4, 4, 12, 12]] if score is not None else np.zeros((0, 4)), np.int32),
              "class_ids": np.ones(masks.shape[2], np.int32), "scores": np.array([score] if score is not None else [], np.float32),
              "masks": masks, "image_features": np.array([feature, 7.0], np.float32)}
    a = analyse_result(image, result, None, 0.5, ["BG", "tumor"], name="x.png", image_score=_head())
    rep = a.report
    assert rep["verdict"] == verdict and rep["tumor_found"] is found
    assert rep["num_tumors"] == (0 if score is None else 1)
    s = rep["image_score"]
    assert s["flagged"] is found and s["threshold"] == 0.5 and s["confident_detection"] == 0.9
    assert s["probability"] == pytest.approx(1 / (1 + np.exp(-4 * feature)), abs=1e-4)
    line = summary_line(rep)
    expected = {"tumor": "1 tumor (", "suspected": "Tumor suspected, no region outlined",
                "uncertain": "Uncertain: weak finding", "no_tumor": "No tumor found"}[verdict]
    assert line.startswith("x.png: ") and expected in line and "image score" in line, line
    # without a head (or without features) the outlines alone decide, as before
    plain = analyse_result(image, result, None, 0.5, ["BG", "tumor"]).report
    assert plain["verdict"] == ("tumor" if score else "no_tumor") and plain["image_score"] is None
    no_feats = {k: v for k, v in result.items() if k != "image_features"}
    assert analyse_result(image, no_feats, None, 0.5, ["BG", "tumor"], image_score=_head()).report["image_score"] is None


@pytest.mark.parametrize("feature, score, verdict, outlined, bar", [
    (3.0, 0.30, "tumor", 1, 0.25),       # flagged by the head: its region at 0.30 is outlined down to 0.25
    (3.0, 0.20, "suspected", 0, 0.25),   # flagged, but nothing reaches even 0.25
    (-3.0, 0.30, "no_tumor", 0, 0.5),    # not flagged: the threshold 0.5 applies as before
    (-3.0, 0.60, "uncertain", 1, 0.5),
])
def test_a_flagged_scan_is_outlined_down_to_the_flagged_threshold(feature, score, verdict, outlined, bar):
    from braintumor.detect import analyse_result

    image = np.full((32, 32, 3), 30, np.uint8)
    masks = np.zeros((32, 32, 1), bool)
    masks[4:12, 4:12] = True
    result = {"rois": np.array([[4, 4, 12, 12]], np.int32), "class_ids": np.ones(1, np.int32),
              "scores": np.array([score], np.float32), "masks": masks,
              "image_features": np.array([feature, 0.0], np.float32)}
    rep = analyse_result(image, result, None, 0.5, ["BG", "tumor"], name="x.png", image_score=_head(),
                         flagged_threshold=0.25).report
    assert (rep["verdict"], rep["num_tumors"], rep["outline_threshold"], rep["threshold"]) == (verdict, outlined, bar, 0.5)
    if verdict == "suspected":
        assert "nothing at threshold 0.25" in summary_line(rep)
    # a flagged threshold above the threshold, or none, changes nothing; without a head it never applies
    for other in (None, 0.0, 0.7):
        same = analyse_result(image, result, None, 0.5, ["BG", "tumor"], image_score=_head(), flagged_threshold=other).report
        assert same["outline_threshold"] == 0.5 and same["num_tumors"] == int(score >= 0.5)
    plain = analyse_result(image, result, None, 0.5, ["BG", "tumor"], flagged_threshold=0.25).report
    assert plain["num_tumors"] == int(score >= 0.5) and plain["outline_threshold"] == 0.5
