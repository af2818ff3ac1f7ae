"""evaluate_dataset / write_report / cli_evaluate with a fake predictor and fake datasets (no TensorFlow)."""

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from braintumor import evaluate as E
from braintumor.boxes import masks_to_boxes
from braintumor.config import Config
from braintumor.errors import BrainTumorError

H = W = 64
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def square(y, x, size=10):
    m = np.zeros((H, W, 1), dtype=bool)
    m[y:y + size, x:x + size, 0] = True
    return m


def stack(*masks):
    return np.concatenate(masks, axis=-1) if masks else np.zeros((H, W, 0), dtype=bool)


class FakeDataset:
    """Same interface as braintumor.data.Dataset; image k carries k+1 in pixel (0, 0, 0) so the predictor knows it."""

    def __init__(self, names, gt_masks, key_offset=0):
        self.class_names = ["BG", "tumor"]
        self.num_classes = 2
        self.problems = []
        self._gt = gt_masks
        self.key_offset = key_offset
        self.image_info = [{"path": Path("/fake") / n, "name": n, "height": H, "width": W} for n in names]
        self.image_ids = list(range(len(names)))

    def __len__(self):
        return len(self.image_info)

    def load_image(self, i):
        img = np.full((H, W, 3), 40, np.uint8)
        img[0, 0, 0] = self.key_offset + i + 1
        return img

    def load_mask(self, i):
        m = self._gt[i]
        return m, np.ones(m.shape[-1], np.int32)


class FakePredictor:
    """``detect`` returns the prepared (masks, scores) of the image with the key in pixel (0, 0, 0)."""

    def __init__(self, predictions, weights_path=Path("/fake/run/mask_rcnn_tumor_0001.h5")):
        self.predictions = predictions
        self.weights_path = weights_path
        self.config = Config()
        self.calls = 0
        self.loaded = False

    def load(self):
        self.loaded = True

    def detect(self, images):
        assert len(images) == 1 and self.loaded
        self.calls += 1
        masks, scores = self.predictions[int(images[0][0, 0, 0])]
        return [{"rois": masks_to_boxes(masks), "class_ids": np.ones(masks.shape[-1], np.int32),
                 "scores": np.asarray(scores, np.float32), "masks": masks}]


def scenario():
    """Split: perfect (0.9), shifted by 5 px (0.8, Dice 1/2), missed at 0.5 but exact at 0.3.

    Tumor-free: a false positive at 0.6, one at 0.2 (below the threshold 0.5), two clean images.
    """
    split = FakeDataset(["perfect.jpg", "shifted.jpg", "missed.jpg"], [square(10, 10), square(20, 20), square(30, 30)])
    free = FakeDataset(["f0.jpg", "f1.jpg", "f2.jpg", "f3.jpg"], [stack()] * 4, key_offset=100)
    preds = {1: (square(10, 10), [0.9]), 2: (square(20, 25), [0.8]), 3: (square(30, 30), [0.3]),
             101: (square(0, 0), [0.6]), 102: (square(40, 40), [0.2]), 103: (stack(), []), 104: (stack(), [])}
    return split, free, FakePredictor(preds)


# numbers of the scenario at threshold 0.5, worked out by hand
EXPECTED_AP = 56 / 101  # TP .9, FP .8, TP .3 of 3 tumors: 34 recall points at precision 1, 33 at 2/3


def check_numbers(m):
    assert m["threshold"] == 0.5
    assert m["dataset"]["n_images"] == 3 and m["dataset"]["n_instances"] == 3
    assert m["segmentation"]["dice_mean"] == pytest.approx(0.5)
    assert m["segmentation"]["iou_mean"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    inst = m["instances"]
    assert (inst["tp"], inst["fp"], inst["fn"]) == (1, 1, 2)
    assert inst["precision"] == pytest.approx(0.5)
    assert inst["recall"] == pytest.approx(1 / 3)
    assert inst["f1"] == pytest.approx(0.4)
    assert inst["fp_per_image"] == pytest.approx(1 / 3)
    assert m["coco"]["segm"]["map50"] == pytest.approx(EXPECTED_AP)
    assert m["coco"]["segm"]["map"] == pytest.approx(EXPECTED_AP)
    img = m["image_level"]
    assert img["sensitivity_any"] == pytest.approx(2 / 3)
    assert img["sensitivity_overlap"] == pytest.approx(2 / 3)
    assert img["specificity"] == pytest.approx(0.75)
    assert img["tumor_free_fp_per_image"] == pytest.approx(0.25)
    assert m["tumor_free"]["flagged"] == ["f0.jpg"]
    assert [(r["name"], r["n_det"], r["max_score"]) for r in m["tumor_free"]["per_image"]] == [
        ("f0.jpg", 1, 0.6), ("f1.jpg", 0, 0.2), ("f2.jpg", 0, 0.0), ("f3.jpg", 0, 0.0)]
    op = m["operating_point"]
    assert op["threshold"] == pytest.approx(0.3) and op["sensitivity"] == 1.0 and op["specificity"] == 0.75
    rows = {r["name"]: r for r in m["per_image"]}
    assert rows["shifted.jpg"]["dice"] == pytest.approx(0.5)
    assert rows["missed.jpg"]["n_det"] == 0 and rows["missed.jpg"]["max_score"] == pytest.approx(0.3)


def test_evaluate_dataset_numbers():
    split, free, predictor = scenario()
    res = E.evaluate_dataset(predictor, split, 0.5, tumor_free_dataset=free, progress=False)
    assert predictor.calls == 7
    check_numbers(res)
    assert res["speed"]["images"] == 7 and res["speed"]["images_per_second"] > 0
    assert predictor.loaded  # loaded before the timed calls
    curve = res["curves"]["threshold"]
    k = curve["threshold"].index(0.5)
    assert curve["sensitivity"][k] == pytest.approx(2 / 3) and curve["specificity"][k] == pytest.approx(0.75)


def test_at_operating_point_reports_there_from_one_pass():
    split, free, predictor = scenario()
    res = E.evaluate_dataset(predictor, split, 0.5, tumor_free_dataset=free, progress=False, at_operating_point=True)
    assert predictor.calls == 7  # the same detections, not a second pass
    # halfway between the lowest flagged tumor score (0.3) and the next lower score (0.2)
    assert res["threshold"] == pytest.approx(0.25) and res["threshold_from"] == "operating point"
    assert res["segmentation"]["dice_mean"] == pytest.approx((1 + 0.5 + 1) / 3)  # "missed" is found at 0.3
    assert res["image_level"]["sensitivity_any"] == 1.0 and res["image_level"]["specificity"] == pytest.approx(0.75)
    assert res["tumor_free"]["flagged"] == ["f0.jpg"]
    assert res["operating_point"]["threshold"] == pytest.approx(0.3)
    plain = E.evaluate_dataset(scenario()[2], split, 0.5, tumor_free_dataset=free, progress=False)
    assert plain["threshold_from"] == "given" and plain["segmentation"]["dice_mean"] == pytest.approx(0.5)


def test_at_operating_point_without_tumor_free_images_is_one_line():
    split, _, predictor = scenario()
    with pytest.raises(BrainTumorError, match="split: no operating point"):
        E.evaluate_dataset(predictor, split, 0.5, progress=False, at_operating_point=True)


def test_write_report_files_and_numbers(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "braintumor.visualize", None)  # force the matplotlib fallback
    split, free, predictor = scenario()
    res = E.evaluate_dataset(predictor, split, 0.5, tumor_free_dataset=free, progress=False)
    written = E.write_report(res, res["per_image"], tmp_path / "out")
    assert set(written) == {"metrics.json", "metrics.md", "pr_curve.png", "threshold_curves.png", "worst.png"}
    for name in ("pr_curve.png", "threshold_curves.png", "worst.png"):
        assert written[name].read_bytes()[:8] == PNG_MAGIC
    text = written["metrics.json"].read_text()
    assert "NaN" not in text
    m = json.loads(text)
    check_numbers(m)
    assert m["gallery"] == ["missed.jpg", "shifted.jpg", "perfect.jpg"]  # lowest Dice first
    assert not any(k.startswith("_") for k in m)
    md = written["metrics.md"].read_text()
    assert "| Dice mean (all images) | 0.500 |" in md
    assert "| shifted.jpg | 1 | 1 | 0.800 | 0.500 | 0.333 | 0 | 1 | 1 |" in md
    # the operating point and its robust value (halfway down to the next score) as they are, not rounded to 0.30
    assert "| operating point (sensitivity >= 0.95) | threshold 0.3 (robust 0.25): sensitivity 1.000, " in md
    assert "## Per image (threshold 0.5)" in md
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_gallery_uses_draw_overlay_when_available(tmp_path, monkeypatch):
    calls = []

    def draw_overlay(image, result, class_names, show_boxes=True):
        calls.append((result["masks"].shape[-1], len(result["scores"]), class_names))
        return image

    monkeypatch.setitem(sys.modules, "braintumor.visualize", types.SimpleNamespace(draw_overlay=draw_overlay))
    split, _, predictor = scenario()
    res = E.evaluate_dataset(predictor, split, 0.5, progress=False)
    written = E.write_report(res, None, tmp_path)
    assert written["worst.png"].read_bytes()[:8] == PNG_MAGIC
    # ground truth then prediction for each of the 3 images, worst first: missed (1 GT, 0 kept), shifted, perfect
    assert calls == [(1, 1, ["BG", "tumor"]), (0, 0, ["BG", "tumor"]), (1, 1, ["BG", "tumor"]),
                     (1, 1, ["BG", "tumor"]), (1, 1, ["BG", "tumor"]), (1, 1, ["BG", "tumor"])]
    assert "threshold_curves.png" not in written  # no tumor-free images, no specificity curve
    assert json.loads(written["metrics.json"].read_text())["operating_point"] is None


def test_evaluate_folder_counts_flagged_images(tmp_path):
    folder = FakeDataset(["a.jpg", "b.jpg", "c.jpg"], [stack()] * 3)
    predictor = FakePredictor({1: (stack(square(0, 0), square(30, 30)), [0.9, 0.6]), 2: (square(5, 5), [0.4]),
                               3: (stack(), [])})
    res = E.evaluate_folder(predictor, folder, 0.5, progress=False)
    assert res["n_flagged"] == 1
    assert res["flagged"] == [{"name": "a.jpg", "max_score": 0.9, "n_det": 2}]
    assert res["fp_per_image"] == pytest.approx(2 / 3)
    assert res["specificity_if_tumor_free"] == pytest.approx(2 / 3)
    written = E.write_report(res, None, tmp_path)
    assert {"metrics.json", "metrics.md", "threshold_curves.png", "worst.png"} <= set(written)
    m = json.loads(written["metrics.json"].read_text())
    assert m["n_flagged"] == 1 and m["gallery"] == ["a.jpg"]
    assert "| b.jpg | 0 | 0.400 |" in written["metrics.md"].read_text()


def test_no_detections_at_all_gives_zero_map(tmp_path):
    split = FakeDataset(["a.jpg"], [square(10, 10)])
    res = E.evaluate_dataset(FakePredictor({1: (stack(), [])}), split, 0.5, progress=False)
    assert res["coco"]["segm"]["map"] == 0.0 and res["segmentation"]["dice_mean"] == 0.0
    m = json.loads(E.write_report(res, None, tmp_path)["metrics.json"].read_text())
    assert m["instances"]["precision"] == 0.0 and m["instances"]["recall"] == 0.0


def test_empty_dataset_is_a_one_line_error():
    from braintumor.errors import BrainTumorError

    with pytest.raises(BrainTumorError, match="no images"):
        E.evaluate_dataset(FakePredictor({}), FakeDataset([], []), 0.5, progress=False)


# --------------------------------------------------------------------------- CLI
@pytest.fixture
def fake_stack(tmp_path, monkeypatch):
    """Fake braintumor.data and braintumor.inference modules, a run folder whose config.toml says 0.5."""
    split, free, predictor = scenario()
    run = tmp_path / "logs" / "tumor20250101T0000"
    run.mkdir(parents=True)
    Config({"DETECTION_MIN_CONFIDENCE": 0.5}).save(run / "config.toml")
    predictor.weights_path = run / "mask_rcnn_tumor_0003.h5"
    seen = {}

    def load_predictor(weights, config=None, logs="logs", min_confidence=None, precision=None):
        seen.update(weights=weights, config=config, logs=logs, min_confidence=min_confidence)
        return predictor

    def load_split(data_dir, split_name):
        seen.update(data_dir=Path(data_dir), split=split_name)
        return split

    def load_image_folder(folder):
        seen.setdefault("folders", []).append(Path(folder).name)
        return free

    def load_tumor_free(folder, part="held-out", class_names=None):
        seen.setdefault("folders", []).append(Path(folder).name)
        seen["tumor_free_part"] = part
        return free

    monkeypatch.setitem(sys.modules, "braintumor.tumor_free", types.SimpleNamespace(load_tumor_free=load_tumor_free))
    monkeypatch.setitem(sys.modules, "braintumor.inference", types.SimpleNamespace(load_predictor=load_predictor))
    monkeypatch.setitem(sys.modules, "braintumor.data",
                        types.SimpleNamespace(load_split=load_split, load_image_folder=load_image_folder))
    monkeypatch.setitem(sys.modules, "braintumor.visualize", None)
    (tmp_path / "data").mkdir()
    (tmp_path / "free").mkdir()
    return tmp_path, run, seen


def test_cli_evaluate_writes_metrics_next_to_checkpoint(fake_stack, capsys):
    from braintumor.cli import main

    tmp, run, seen = fake_stack
    rc = main(["evaluate", "--weights", "last", "--logs", str(tmp / "logs"), "--data", str(tmp / "data"),
               "--split", "val", "--tumor-free", str(tmp / "free")])
    assert rc == 0
    assert seen["min_confidence"] == E.EVAL_SCORE_FLOOR  # low floor for the curves
    assert seen["weights"] == "last" and seen["logs"] == str(tmp / "logs")
    assert seen["data_dir"] == tmp / "data" and seen["split"] == "val" and seen["folders"] == ["free"]
    assert seen["tumor_free_part"] == "held-out"  # never the slices training mixed in
    metrics = run / "eval_val" / "metrics.json"
    check_numbers(json.loads(metrics.read_text()))  # threshold 0.5 from the run folder's config.toml
    assert json.loads(metrics.read_text())["dataset"]["folder"] == str(tmp / "data")  # which val set (braintumor runs)
    out = capsys.readouterr().out
    assert str(metrics) in out and "mask mAP@0.5" in out


def test_a_figshare_folders_val_gets_its_own_default_report_folder(fake_stack):
    from braintumor.cli import main

    tmp, run, seen = fake_stack
    fs = tmp / "figshare"
    (fs / "images").mkdir(parents=True)
    (fs / "annotations.json").write_text("{}")
    assert main(["evaluate", "--weights", "x.h5", "--data", str(tmp / "data")]) == 0
    assert main(["evaluate", "--weights", "x.h5", "--data", str(fs)]) == 0
    assert seen["data_dir"] == fs
    thesis, figshare = (json.loads((run / d / "metrics.json").read_text()) for d in ("eval_val", "eval_figshare_val"))
    assert thesis["dataset"]["folder"] == str(tmp / "data") and figshare["dataset"]["folder"] == str(fs)


def test_cli_evaluate_min_confidence_and_out(fake_stack):
    from braintumor.cli import main

    tmp, _, seen = fake_stack
    rc = main(["evaluate", "--weights", "x.h5", "--data", str(tmp / "data"), "--min-confidence", "0.25",
               "--out", str(tmp / "report")])
    assert rc == 0
    m = json.loads((tmp / "report" / "metrics.json").read_text())
    assert m["threshold"] == 0.25
    assert m["instances"]["tp"] == 2  # the exact detection at 0.3 now counts
    assert seen["min_confidence"] == E.EVAL_SCORE_FLOOR


def test_cli_evaluate_uses_the_predictors_own_threshold(fake_stack):
    from braintumor.cli import main

    tmp, run, _ = fake_stack
    predictor = sys.modules["braintumor.inference"].load_predictor("x")
    predictor.threshold = 0.25  # braintumor.inference.Predictor.threshold: the run's operating point
    assert main(["evaluate", "--weights", "x.h5", "--data", str(tmp / "data")]) == 0
    assert json.loads((run / "eval_val" / "metrics.json").read_text())["threshold"] == 0.25


def test_cli_evaluate_mask_threshold_reaches_the_model_config_and_the_report(fake_stack, capsys):
    from braintumor.cli import main

    tmp, run, _ = fake_stack
    predictor = sys.modules["braintumor.inference"].load_predictor("x")
    predictor.config = Config({"DETECTION_MIN_CONFIDENCE": 0.5})
    assert main(["evaluate", "--weights", "x.h5", "--data", str(tmp / "data")]) == 0
    assert json.loads((run / "eval_val" / "metrics.json").read_text())["mask_threshold"] == 0.5
    assert "mask probability" not in capsys.readouterr().out
    assert main(["evaluate", "--weights", "x.h5", "--data", str(tmp / "data"), "--mask-threshold", "0.4"]) == 0
    assert predictor.config.DETECTION_MASK_THRESHOLD == 0.4, "set before the model is built from it"
    assert json.loads((run / "eval_val" / "metrics.json").read_text())["mask_threshold"] == 0.4
    assert "outlines at mask probability 0.4" in capsys.readouterr().out
    assert main(["evaluate", "--weights", "x.h5", "--data", str(tmp / "data"), "--mask-threshold", "1.5"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "DETECTION_MASK_THRESHOLD must be a number in [0.05, 0.95], got 1.5" in line


def test_cli_evaluate_image_folder(fake_stack):
    from braintumor.cli import main

    tmp, run, _ = fake_stack
    assert main(["evaluate", "--weights", "x.h5", "--images", str(tmp / "free")]) == 0
    m = json.loads((run / "eval_free" / "metrics.json").read_text())
    assert m["kind"] == "folder" and m["n_flagged"] == 1 and m["flagged"][0]["name"] == "f0.jpg"


def test_cli_evaluate_bad_input_is_one_line(fake_stack, capsys):
    from braintumor.cli import main

    tmp, _, _ = fake_stack
    assert main(["evaluate", "--weights", "x.h5", "--min-confidence", "1.5"]) == 2
    assert main(["evaluate", "--weights", "x.h5", "--images", str(tmp / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: --min-confidence") and err[1] == f"error: {tmp / 'nope'}: not a folder"
    assert main(["evaluate", "--weights", "x.h5", "--at-operating-point", "--min-confidence", "0.5"]) == 2
    assert main(["evaluate", "--weights", "x.h5", "--at-operating-point", "--images", str(tmp / "free")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --at-operating-point chooses the threshold itself; leave out --min-confidence",
                   "error: --at-operating-point needs an annotated split (with --tumor-free), not --images"]
    assert main(["evaluate", "--weights", "x.h5", "--flagged-min-confidence", "-0.2"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --flagged-min-confidence must be in [0, 1], got -0.2"]


def test_degrade_resolution_blurs_fine_detail_keeps_size_and_leaves_small_images():
    checker = np.zeros((64, 48, 3), np.uint8)
    checker[::2, ::2] = checker[1::2, 1::2] = 200  # 1-pixel checkerboard, mean 100
    out = E.degrade_resolution(checker, 16)
    assert out.shape == checker.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - 100).max() <= 2  # the pattern is gone, its mean kept
    block = np.zeros((64, 48, 3), np.uint8)
    block[:32] = 200  # detail coarser than the source size survives
    assert np.abs(E.degrade_resolution(block, 16).astype(int) - block).mean() < 10
    assert E.degrade_resolution(checker, 64) is checker  # already that small


def test_cli_evaluate_source_size_wraps_the_predictor_and_says_so(fake_stack, monkeypatch, capsys):
    from braintumor.cli import main

    tmp, run, _ = fake_stack
    sizes = []
    real = E.degrade_resolution
    monkeypatch.setattr(E, "degrade_resolution", lambda im, n: sizes.append(n) or real(im, n))
    rc = main(["evaluate", "--weights", "x.h5", "--data", str(tmp / "data"), "--tumor-free", str(tmp / "free"),
               "--source-size", "64"])
    assert rc == 0
    assert sizes == [64] * 7  # 3 val + 4 tumor-free images, every one through the probe
    m = json.loads((run / "eval_val_at64px" / "metrics.json").read_text())
    assert m["dataset"]["source_size"] == 64
    check_numbers(m)  # 64 px images are not shrunk, so the numbers are unchanged
    assert "images shrunk to (longer side)" in capsys.readouterr().out
    assert main(["evaluate", "--weights", "x.h5", "--data", str(tmp / "data"), "--source-size", "3"]) == 2


def test_rewindow_like_br35h_sets_the_99th_percentile_and_keeps_geometry():
    rng = np.random.default_rng(0)
    image = (rng.random((40, 30, 3)) * 150).astype(np.uint8)
    out = E.rewindow_like_br35h(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert abs(np.percentile(out, 99) - E.BR35H_P99) <= 2
    assert np.corrcoef(out.ravel(), image.ravel())[0, 1] > 0.999  # a linear change of grey levels only
    black = np.zeros((8, 8, 3), np.uint8)
    assert E.rewindow_like_br35h(black) is black


def test_cli_evaluate_window_probe_wraps_the_predictor_and_says_so(fake_stack, monkeypatch, capsys):
    from braintumor.cli import main

    tmp, run, _ = fake_stack
    seen = []  # the fake predictor keys its answers on pixel values: record, pass through unchanged
    monkeypatch.setattr(E, "rewindow_like_br35h", lambda im, p99: seen.append(p99) or im)
    rc = main(["evaluate", "--weights", "x.h5", "--data", str(tmp / "data"), "--tumor-free", str(tmp / "free"),
               "--source-probe", "window"])
    assert rc == 0 and seen == [E.BR35H_P99] * 7  # 3 val + 4 tumor-free images, every one through the probe
    m = json.loads((run / "eval_val_window" / "metrics.json").read_text())
    assert m["dataset"]["source_probe"] == "window" and m["dataset"]["window_p99"] == E.BR35H_P99
    assert "99th grey percentile -> 213 (Br35H's)" in capsys.readouterr().out


def test_cli_evaluate_window_p99_moves_the_probes_target(fake_stack, monkeypatch, capsys):
    from braintumor.cli import main

    tmp, run, _ = fake_stack
    seen = []
    monkeypatch.setattr(E, "rewindow_like_br35h", lambda im, p99: seen.append(p99) or im)
    args = ["evaluate", "--weights", "x.h5", "--data", str(tmp / "data"), "--tumor-free", str(tmp / "free")]
    assert main(args + ["--source-probe", "window", "--window-p99", "165"]) == 0
    assert seen == [165.0] * 7
    m = json.loads((run / "eval_val_window165" / "metrics.json").read_text())  # beside, not over, the Br35H probe's
    assert m["dataset"]["window_p99"] == 165.0
    assert "99th grey percentile -> 165\n" in capsys.readouterr().out
    assert main(args + ["--window-p99", "165"]) == 2  # only with the probe
    assert main(args + ["--source-probe", "window", "--window-p99", "300"]) == 2
    err = capsys.readouterr().err
    assert "--window-p99 needs --source-probe window" in err and "got 300" in err
    assert seen == [165.0] * 7  # neither refused run detected anything


# --------------------------------------------------------------------------- real data
class GroundTruthPredictor:
    """Returns each image's own ground truth as detections with score 1, in dataset order.

    (Not looked up by pixels: val has two identical images, 358.jpg and 359.jpg, annotated differently.)
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self.next = iter(dataset.image_ids)

    def detect(self, images):
        i = next(self.next)
        assert np.array_equal(images[0], self.dataset.load_image(i))
        masks, class_ids = self.dataset.load_mask(i)
        return [{"rois": masks_to_boxes(masks), "class_ids": class_ids.astype(np.int32),
                 "scores": np.ones(len(class_ids), np.float32), "masks": masks}]


def test_real_val_split_ground_truth_scores_one(real_data_dir, tmp_path):
    data = pytest.importorskip("braintumor.data")
    val = data.load_split(real_data_dir, "val")
    res = E.evaluate_dataset(GroundTruthPredictor(val), val, 0.5, progress=False, label="val")
    assert res["dataset"]["n_images"] == len(val) == 61
    assert res["dataset"]["n_instances"] == 62
    assert res["segmentation"]["dice_mean"] == 1.0
    assert res["coco"]["segm"]["map"] == pytest.approx(1.0)
    assert res["instances"]["precision"] == 1.0 and res["instances"]["recall"] == 1.0
    assert E.write_report(res, None, tmp_path)["metrics.json"].is_file()


def test_figures_by_category_worked_out_by_hand(tmp_path):
    """The scenario's scans as two tumor types: perfect and shifted are gliomas, missed a pituitary.
    At 0.5: glioma Dice (1 + 0.5) / 2, both flagged, both with a detection on the tumor (the shifted
    square overlaps its GT); AP@0.5 with TP 0.9, FP 0.8 (IoU 1/3) and one GT never matched: 51 of the
    101 recall points at precision 1. Pituitary: no detection at 0.5, Dice 0, but its 0.3 detection
    is exact, so AP 1."""
    split, free, predictor = scenario()
    for info, cats in zip(split.image_info, (["glioma"], ["glioma"], ["pituitary"])):
        info["categories"] = cats
    res = E.evaluate_dataset(predictor, split, 0.5, tumor_free_dataset=free, progress=False)
    check_numbers(res)  # the pooled figures do not change
    by = res["by_category"]
    assert list(by) == ["glioma", "pituitary"]
    g, p = by["glioma"], by["pituitary"]
    assert g["n_images"] == 2 and g["dice_mean"] == pytest.approx(0.75)
    assert g["sensitivity_any"] == 1.0 and g["sensitivity_overlap"] == 1.0
    assert g["mask_map50"] == pytest.approx(51 / 101)
    assert p["n_images"] == 1 and p["dice_mean"] == 0.0 and p["sensitivity_any"] == 0.0
    assert p["mask_map50"] == pytest.approx(1.0)
    assert [r.get("category") for r in res["per_image"]] == ["glioma", "glioma", "pituitary"]
    rows = dict(E.headline(res))
    assert rows["glioma (2 images)"] == "Dice 0.750, mask mAP@0.5 0.505, sensitivity 1.000 (on tumor 1.000)"
    assert rows["pituitary (1 images)"] == "Dice 0.000, mask mAP@0.5 1.000, sensitivity 0.000 (on tumor 0.000)"
    md = E.write_report(res, None, tmp_path)["metrics.md"].read_text()
    assert "| image | category | GT |" in md and "| missed.jpg | pituitary |" in md
    # one category only, or none: nothing to compare, no by_category
    for info in split.image_info:
        info["categories"] = ["glioma"]
    assert "by_category" not in E.evaluate_dataset(predictor, split, 0.5, progress=False)
    for info in split.image_info:
        del info["categories"]
    res = E.evaluate_dataset(predictor, split, 0.5, progress=False)
    assert "by_category" not in res and all("category" not in r for r in res["per_image"])


class WithFeatures(FakePredictor):
    """The scenario's predictor with an image-level head that says "yes" on shifted, missed and f1
    (keys 2, 3, 102) and flags a detection >= 0.85 by itself."""

    head_yes = {2, 3, 102}

    @property
    def image_score(self):
        from braintumor.image_score import ImageScore

        return ImageScore(mean=np.zeros(1), scale=np.ones(1), weights=np.ones(1), bias=0.0,
                          threshold=0.5, confident_detection=0.85)

    def detect(self, images):
        key = int(images[0][0, 0, 0])
        return [{**r, "image_features": np.array([5.0 if key in self.head_yes else -5.0], np.float32)}
                for r in super().detect(images)]


def test_the_image_level_rule_and_its_verdicts_are_reported():
    """The scenario with an image-level head. Head "yes" on shifted, missed and f1; the perfect
    scan is flagged by its confident detection (0.9 >= 0.85) alone. Worked out by hand:
    perfect tumor, shifted tumor, missed suspected (0.3 is below the outline threshold);
    f0 uncertain (0.6 outlined, head no), f1 suspected, f2 and f3 no tumor."""
    split, free, predictor = scenario()

    res = E.evaluate_dataset(WithFeatures(predictor.predictions), split, 0.5, tumor_free_dataset=free, progress=False)
    check_numbers(res)  # the detection figures do not change
    rule = res["image_rule"]
    assert rule["sensitivity"] == 1.0 and rule["specificity"] == 0.75 and rule["n_tumor_free_flagged"] == 1
    assert rule["threshold"] == 0.5 and rule["confident_detection"] == 0.85 and rule["outline_threshold"] == 0.5
    v = rule["verdicts"]
    assert [v[k]["tumor_images"] for k in ("tumor", "suspected", "uncertain", "no_tumor")] == [2, 1, 0, 0]
    assert [v[k]["tumor_free_images"] for k in ("tumor", "suspected", "uncertain", "no_tumor")] == [0, 1, 1, 2]
    assert rule["green_on_tumor_images"] == []
    assert {r["name"]: r["verdict"] for r in rule["per_image"]}["f0.jpg"] == "uncertain"
    text = E.format_summary(res)
    assert "image-level rule" in text and "2 / 1 / 0 / 0" in text and "0 / 1 / 1 / 2" in text
    assert E.evaluate_dataset(predictor, split, 0.5, tumor_free_dataset=free, progress=False)["image_rule"] is None
    # by tumor type the rule's sensitivity and green verdicts are counted too
    for info, cats in zip(split.image_info, (["glioma"], ["meningioma"], ["pituitary"])):
        info["categories"] = cats
    by = E.evaluate_dataset(WithFeatures(predictor.predictions), split, 0.5, tumor_free_dataset=free,
                            progress=False)["by_category"]
    assert {k: (c["rule_sensitivity"], c["green_on_tumor_images"]) for k, c in by.items()} == {
        "glioma": (1.0, 0), "meningioma": (1.0, 0), "pituitary": (1.0, 0)}
    assert by["pituitary"]["sensitivity_any"] == 0.0  # the head flags what the detector missed


def test_tumor_free_copies_are_also_counted_per_distinct_slice():
    """The scenario's tumor-free images as two slices of two copies each (f0 = f1, f2 = f3), as
    ``load_tumor_free`` marks them. At 0.5 only f0 is flagged: 1 of 2 slices; at 0.15 f0 and f1 are,
    still one slice. The head's rule flags f1 (head "yes") and f0 (uncertain is not flagged): 1 of 2.
    Without slice keys only images are counted."""
    split, free, predictor = scenario()
    for info, key in zip(free.image_info, ("f0.jpg", "f0.jpg", "f2.jpg", "f2.jpg")):
        info["slice"] = key

    res = E.evaluate_dataset(WithFeatures(predictor.predictions), split, 0.5, tumor_free_dataset=free, progress=False)
    tf = res["tumor_free"]
    assert (tf["n_images"], tf["n_flagged"], tf["n_slices"], tf["n_flagged_slices"]) == (4, 1, 2, 1)
    rule = res["image_rule"]
    assert (rule["n_tumor_free_flagged"], rule["n_tumor_free_slices"], rule["n_tumor_free_flagged_slices"]) == (1, 2, 1)
    text = E.format_summary(res)
    assert "1 of 4 (1 of 2 distinct slices)" in text and "1 of 4 tumor-free flagged; 1 of 2 distinct slices" in text
    low = E.evaluate_dataset(scenario()[2], split, 0.15, tumor_free_dataset=free, progress=False)["tumor_free"]
    assert (low["n_flagged"], low["n_flagged_slices"]) == (2, 1)
    for info, key in zip(free.image_info, ("f0.jpg", "f1.jpg", "f1.jpg", "f3.jpg")):
        info["slice"] = key
    low = E.evaluate_dataset(scenario()[2], split, 0.15, tumor_free_dataset=free, progress=False)["tumor_free"]
    assert (low["n_slices"], low["n_flagged_slices"]) == (3, 2)
    for info in free.image_info:
        del info["slice"]
    plain = E.evaluate_dataset(WithFeatures(predictor.predictions), split, 0.5, tumor_free_dataset=free, progress=False)
    assert "n_slices" not in plain["tumor_free"] and "n_tumor_free_slices" not in plain["image_rule"]
    assert "distinct slices" not in E.format_summary(plain), "no slice keys: images are all there is to count"


def test_images_the_head_flags_are_outlined_down_to_the_flagged_floor():
    """The scenario with a head saying "yes" on shifted, missed and f1, and a flagged floor of 0.15.
    By hand: missed (exact at 0.3) and f1 (0.2) are now outlined, perfect / shifted / f0 / f2 / f3
    are as before; mAP and the operating point (max scores alone) do not move."""
    split, free, predictor = scenario()

    res = E.evaluate_dataset(WithFeatures(predictor.predictions), split, 0.5, tumor_free_dataset=free, progress=False,
                             flagged_min_confidence=0.15)
    assert res["flagged_min_confidence"] == 0.15
    assert res["segmentation"]["dice_mean"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert (res["instances"]["tp"], res["instances"]["fp"], res["instances"]["fn"]) == (2, 1, 1)
    rows = {r["name"]: r for r in res["per_image"]}
    assert rows["missed.jpg"]["n_det"] == 1 and rows["missed.jpg"]["dice"] == pytest.approx(1.0)
    img = res["image_level"]
    assert img["sensitivity_any"] == 1.0 and img["sensitivity_overlap"] == 1.0 and img["specificity"] == 0.5
    assert res["tumor_free"]["flagged"] == ["f0.jpg", "f1.jpg"]
    assert res["coco"]["segm"]["map50"] == pytest.approx(EXPECTED_AP)
    op = res["operating_point"]
    assert op["threshold"] == pytest.approx(0.3) and op["specificity"] == 0.75 and op["sensitivity"] == 1.0
    rule = res["image_rule"]
    assert rule["sensitivity"] == 1.0 and rule["specificity"] == 0.75, "the rule itself does not change"
    v = rule["verdicts"]
    assert [v[k]["tumor_images"] for k in ("tumor", "suspected", "uncertain", "no_tumor")] == [3, 0, 0, 0]
    assert [v[k]["tumor_free_images"] for k in ("tumor", "suspected", "uncertain", "no_tumor")] == [1, 0, 1, 2]
    assert "down to" in E.format_summary(res)
    assert all(r.outline_floor is None for r in res["_records"]), "the records kept for the report are untouched"
    # a floor above the threshold, no floor, or no head: the figures of the plain scenario
    for kw, pred in (({"flagged_min_confidence": 0.7}, WithFeatures(predictor.predictions)),
                     ({"flagged_min_confidence": None}, WithFeatures(predictor.predictions)),
                     ({"flagged_min_confidence": 0.15}, FakePredictor(predictor.predictions))):
        check_numbers(E.evaluate_dataset(pred, split, 0.5, tumor_free_dataset=free, progress=False, **kw))


def test_cli_evaluate_reads_repeated_region_scores_as_one_set(fake_stack, tmp_path):
    from braintumor.cli import main
    from braintumor.region_score import RegionScore, RegionScoreSet, build_scorer

    tmp, run, _ = fake_stack
    paths = [str(RegionScore(build_scorer(16, (4, 8)), size=16, widths=(4, 8), weight=w).save(tmp_path / f"rs{k}.h5"))
             for k, w in enumerate((0.3, 0.8))]
    args = ["evaluate", "--weights", "x.h5", "--data", str(tmp / "data"), "--region-score", paths[0],
            "--region-score", paths[1]]
    assert main(args) == 0
    predictor = sys.modules["braintumor.inference"].load_predictor("x")
    assert isinstance(predictor.region_score, RegionScoreSet) and predictor.region_score.weight == 0.3
    rs = json.loads((run / "eval_val" / "metrics.json").read_text())["region_score"]
    assert rs["from"] == f"{paths[0]}, {paths[1]}" and rs["weight"] == 0.3
    assert main(args + ["--region-weight", "0.5"]) == 0
    assert json.loads((run / "eval_val" / "metrics.json").read_text())["region_score"]["weight"] == 0.5
