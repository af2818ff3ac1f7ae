"""``braintumor fit-image-score``: features (through detect() where the best score is read), cached, fitted,
threshold on val."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import braintumor.inference as inference
from braintumor import fit_image_score as F
from braintumor.cli import main
from braintumor.image_score import load_image_score


class GreyPredictor:
    """``image_features`` = [mean grey, a fixed second feature]; one detection scoring mean grey / 255.
    ``calls``: images read by either path; ``detected``: of them, by detect()."""

    def __init__(self, path: Path):
        self.weights_path = path
        self.calls = self.detected = 0

    def detect(self, images):
        self.calls += 1
        self.detected += 1
        g = float(images[0].mean())
        return [{"scores": np.array([g / 255], np.float32), "image_features": np.array([g, 1.0], np.float32)}]

    def image_features(self, images):
        self.calls += len(images)
        return np.stack([np.array([float(im.mean()), 1.0], np.float32) for im in images])


def _sets(rng):
    """Tumor images are bright (grey ~ 120), tumor-free ones dark (~ 60); val bright too."""
    def read(grey, n):
        return lambda: ([f"{grey}_{i}.png" for i in range(n)],
                        (np.full((8, 8, 3), grey + rng.integers(-20, 20), np.uint8) for _ in range(n)))
    return {"val": (1, read(120, 20)), "train": (1, read(120, 30)), "tumor_free_train": (0, read(60, 40))}


def test_features_are_cached_per_model_and_the_head_separates_and_keeps_val_sensitivity(tmp_path):
    weights = tmp_path / "model.h5"
    weights.write_bytes(b"x")
    pred = GreyPredictor(weights)
    sets = _sets(np.random.default_rng(0))
    feats = F.collect(pred, sets, tmp_path / "cache", log=lambda *a: None)
    assert pred.detected == 20, "only val's best scores are read: the fitted sets skip detection"
    assert np.isnan(feats["train"]["best"]).all() and not np.isnan(feats["val"]["best"]).any()
    assert pred.calls == 90 and sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()) == [
        "train", "tumor_free_train", "val"]
    again = F.collect(pred, sets, tmp_path / "cache", log=lambda *a: None)
    assert pred.calls == 90, "the second fit reads the cache"
    np.testing.assert_array_equal(again["train"]["features"], feats["train"]["features"])
    weights.write_bytes(b"another model")  # a changed model file never reuses old features
    F.collect(pred, sets, tmp_path / "cache", log=lambda *a: None)
    assert pred.calls == 180
    from braintumor.config import Config
    pred.config = Config({"PRECISION": "float32"})  # the same file read with other settings: other features
    F.collect(pred, sets, tmp_path / "cache", log=lambda *a: None)
    assert pred.calls == 270
    pred.config = Config({"PRECISION": "float32"})  # equal settings: the cache again
    F.collect(pred, sets, tmp_path / "cache", log=lambda *a: None)
    assert pred.calls == 270
    pred.config = Config({"PRECISION": "mixed_bfloat16"})
    F.collect(pred, sets, tmp_path / "cache", log=lambda *a: None)
    assert pred.calls == 360

    detected = pred.detected
    every = F.collect(pred, sets, tmp_path / "cache", log=lambda *a: None, need_best=None)
    assert pred.detected == detected + 70, "a cached set without best scores is detected again when they are read"
    assert not np.isnan(every["train"]["best"]).any()

    head, record = F.fit_head(feats, l2=0.01, confident_detection=0.99, sensitivity=0.95)
    assert record["val_sensitivity"] >= 0.95 and record["val_images"] == 20
    assert record["sets"]["tumor_free_train"] == {"images": 40, "label": "no tumor", "role": "fit"}
    assert record["sets"]["val"] == {"images": 20, "label": "tumor", "role": "threshold"}
    bright, dark = np.array([[120.0, 1.0]]), np.array([[60.0, 1.0]])
    assert head.probability(bright)[0] > head.threshold > head.probability(dark)[0]


def test_the_rewindowed_copies_change_the_grey_levels_only():
    img = np.zeros((40, 40, 3), np.uint8)
    img[10:30, 10:30] = 100
    dark = F.darken_like_tumor_scans(np.clip(img.astype(int) * 2, 0, 255).astype(np.uint8))
    assert np.percentile(dark, 99) == pytest.approx(F.TUMOR_P99, abs=1)
    assert ((dark > 0) == (img > 0)).all()


def test_the_command_writes_a_head_the_release_accepts_and_refuses_bad_folders(tmp_path, monkeypatch, capsys):
    weights = tmp_path / "model.h5"
    weights.write_bytes(b"x")
    configs, precisions = [], []
    monkeypatch.setattr(inference, "load_predictor",
                        lambda w, config=None, logs="logs", min_confidence=None, precision=None:
                        configs.append(config) or precisions.append(precision) or GreyPredictor(weights))
    monkeypatch.setattr(F, "image_sets", lambda data, figshare, free, n, seed, **kw: _sets(np.random.default_rng(1)))
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "head" / "image_score.json"
    assert main(["fit-image-score", "--data", str(data), "--tumor-free", str(tmp_path), "--out", str(out)]) == 0
    assert "val sensitivity" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["fit"]["weights"] == "model.h5" and doc["fit"]["l2"] == 0.01
    assert load_image_score(out).threshold == doc["threshold"]
    assert configs == [None] and "--config" not in doc["fit"]["command"]
    assert precisions == ["float32"], "the head is fitted on the float32 features a release computes by default"
    assert main(["fit-image-score", "--data", str(data), "--tumor-free", str(tmp_path), "--out", str(out),
                 "--config", "run/config_f32.toml"]) == 0
    assert configs[-1] == "run/config_f32.toml"
    assert "--config run/config_f32.toml" in json.loads(out.read_text())["fit"]["command"]
    assert main(["fit-image-score", "--data", str(data), "--tumor-free", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "not a folder" in err[0]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(Exception) as e:
        load_image_score(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_each_figshare_sample_is_its_own_set_so_the_cache_never_mixes_them(tmp_path):
    keys = lambda **kw: [k for k in F.image_sets(tmp_path, tmp_path, tmp_path, **kw) if k.startswith("figshare")]  # noqa: E731
    assert keys() == ["figshare_train"]
    assert keys(figshare_seed=1) == ["figshare_train_seed1"]
    assert keys(figshare_sample=400) == ["figshare_train_n400"]
    assert keys(figshare_seed=2, figshare_sample=50) == ["figshare_train_seed2_n50"]
    assert not [k for k in F.image_sets(tmp_path, None, tmp_path) if k.startswith("figshare")]


def test_a_figshare_sample_is_a_deterministic_sorted_subset_and_all_when_it_asks_for_as_many():
    ids = list(range(50))
    a = F.sample_ids(ids, 20, seed=3)
    assert a == F.sample_ids(ids, 20, seed=3) and a == sorted(a) and len(set(a)) == 20 and set(a) <= set(ids)
    assert a != F.sample_ids(ids, 20, seed=4)
    assert F.sample_ids(ids, 50) == ids and F.sample_ids(ids, 999) == ids and F.sample_ids(ids, None) == ids


@pytest.fixture
def weak_val(tmp_path, monkeypatch):
    """A grey predictor (best detection = grey / 255) on 20 val scans of grey 100, 103, ..., 157 (best
    detections 0.39 .. 0.62), and a head file whose probability rises with the grey level and whose own
    confident detection, 0.6, flags only the two brightest: ``(predictor, data folder, head, head file)``."""
    from braintumor.image_score import ImageScore

    weights = tmp_path / "model.h5"
    weights.write_bytes(b"x")
    pred = GreyPredictor(weights)
    monkeypatch.setattr(inference, "load_predictor", lambda w, config=None, logs="logs", min_confidence=None, precision=None: pred)

    class Val:
        image_ids = list(range(20))
        image_info = [{"name": f"{i}.png"} for i in range(20)]

        def load_image(self, i):
            return np.full((8, 8, 3), 100 + 3 * i, np.uint8)

    import braintumor.data as D
    monkeypatch.setattr(D, "load_split", lambda data, split: Val())
    head = ImageScore(np.array([100.0, 0.0]), np.array([10.0, 1.0]), np.array([1.0, 0.0]), 0.0, threshold=0.99,
                      confident_detection=0.6)
    src = tmp_path / "head.json"
    src.write_text(json.dumps({**head.to_dict(), "fit": {"l2": 0.5}}))
    data = tmp_path / "data"
    data.mkdir()
    return pred, data, head, src


def test_threshold_of_keeps_the_head_and_chooses_its_threshold_again_on_val_alone(tmp_path, weak_val, capsys):
    """--threshold-of: the weights of the head file unchanged, only val read, the threshold chosen for the
    detections the model gives now (here: every val scan's best detection is weak, so the head must flag them)."""
    pred, data, head, src = weak_val
    out = tmp_path / "again.json"
    assert main(["fit-image-score", "--data", str(data), "--threshold-of", str(src), "--sensitivity", "0.9",
                 "--out", str(out)]) == 0
    assert "0.9900 ->" in capsys.readouterr().out and pred.calls == 20, "val alone is read"
    doc = json.loads(out.read_text())
    again = load_image_score(out)
    assert np.array_equal(again.weights, head.weights) and again.bias == head.bias and again.threshold < 0.99
    feats = np.array([[100 + 3 * i, 1.0] for i in range(20)])
    best = feats[:, 0] / 255
    assert again.flags(feats, best).mean() >= 0.9 and head.flags(feats, best).mean() < 0.9
    assert doc["fit"]["l2"] == 0.5 and doc["fit"]["rethresholded"]["threshold_before"] == 0.99
    assert "--threshold-of" in doc["fit"]["rethresholded"]["command"]
    assert main(["fit-image-score", "--data", str(data), "--threshold-of", "model", "--out", str(out)]) == 2
    assert "no embedded image-level head" in capsys.readouterr().err
    assert main(["fit-image-score", "--data", str(data), "--out", str(out)]) == 2
    assert "--tumor-free is needed" in capsys.readouterr().err


def test_threshold_of_with_a_confident_detection_level_flags_from_it_and_records_the_old_one(tmp_path, weak_val, capsys):
    """--threshold-of --confident-detection C: the head's level replaced by C before its threshold is chosen. At
    0.45, 15 of the 20 val scans (grey >= 115) are flagged by their detection alone, which meets sensitivity 0.75,
    so the head adds nothing (threshold 1); at its own 0.6 the head must flag 13 of the 18 weaker ones."""
    pred, data, head, src = weak_val
    own, low = tmp_path / "own.json", tmp_path / "low.json"
    assert main(["fit-image-score", "--data", str(data), "--threshold-of", str(src), "--sensitivity", "0.75",
                 "--out", str(own)]) == 0
    assert main(["fit-image-score", "--data", str(data), "--threshold-of", str(src), "--sensitivity", "0.75",
                 "--confident-detection", "0.45", "--out", str(low)]) == 0
    feats = np.array([[100 + 3 * i, 1.0] for i in range(20)])
    best = feats[:, 0] / 255
    a, b = load_image_score(own), load_image_score(low)
    assert a.confident_detection == 0.6 and b.confident_detection == 0.45
    assert a.threshold < 0.99 and b.threshold == 1.0
    assert np.array_equal(b.flags(feats, best), best >= 0.45) and b.flags(feats, best).sum() == 15
    bright_weak, dark_sure = np.array([[157.0, 1.0], [100.0, 1.0]]), np.array([0.1, 0.5])
    assert a.flags(bright_weak, dark_sure).tolist() == [True, False], "its own level: the head flags, 0.5 does not"
    assert b.flags(bright_weak, dark_sure).tolist() == [False, True], "at 0.45: the detection flags, the head never"
    doc = json.loads(low.read_text())["fit"]["rethresholded"]
    assert doc["confident_detection_before"] == 0.6 and "--confident-detection 0.45" in doc["command"]
    capsys.readouterr()
    assert main(["fit-image-score", "--data", str(data), "--threshold-of", str(src), "--confident-detection", "1.5",
                 "--out", str(low)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--confident-detection" in err[0] and "1.5" in err[0]


def test_threshold_of_with_figshare_keeps_its_val_slices_from_green_and_reads_them_once(tmp_path, weak_val,
                                                                                        monkeypatch, capsys):
    """--threshold-of --figshare F --operating-point T: the Figshare val slices are read too (cached like val), and a
    dark one without a detection at T lowers the threshold until the head flags it; they do not count toward the
    val sensitivity. Without --operating-point Figshare is not read at all."""
    import braintumor.figshare as FS

    pred, data, head, src = weak_val

    class FigVal:
        image_ids = [0, 1]
        image_info = [{"name": "1572.jpg"}, {"name": "1573.jpg"}]

        def load_image(self, i):
            return np.full((8, 8, 3), (80, 200)[i], np.uint8)  # best 0.31 (no detection at 0.35) and 0.78

    splits = []
    monkeypatch.setattr(FS, "load_figshare", lambda folder, split: splits.append(split) or FigVal())
    fig = tmp_path / "figshare"
    fig.mkdir()
    plain, held = tmp_path / "plain.json", tmp_path / "held.json"
    args = ["fit-image-score", "--data", str(data), "--threshold-of", str(src), "--sensitivity", "0.9",
            "--operating-point", "0.35"]
    assert main(args + ["--out", str(plain)]) == 0 and pred.calls == 20 and splits == []
    cache = tmp_path / "cache"
    assert main(args + ["--figshare", str(fig), "--cache", str(cache), "--out", str(held)]) == 0
    assert splits == ["val"] and pred.calls == 42
    assert "Figshare val flagged 1.000 of 2" in capsys.readouterr().out
    a, b = load_image_score(plain), load_image_score(held)
    dark = np.array([[80.0, 1.0]])
    assert not a.flags(dark, np.array([80 / 255])).any(), "held to val alone, the dark slice would be green"
    assert b.flags(dark, np.array([80 / 255])).all() and b.threshold < a.threshold
    doc = json.loads(held.read_text())["fit"]["rethresholded"]
    assert doc["no_green_sets"] == ["val", "figshare_val"] and doc["figshare_val_images"] == 2
    assert doc["val_images"] == 20 and f"--figshare {fig}" in doc["command"]
    assert main(args + ["--figshare", str(fig), "--cache", str(cache), "--out", str(held)]) == 0
    assert pred.calls == 42, "the second run reads both sets from the cache"
    assert load_image_score(held).threshold == b.threshold


def test_an_unreadable_cache_file_is_one_line_and_the_set_is_computed_again(tmp_path):
    weights = tmp_path / "model.h5"
    weights.write_bytes(b"x")
    pred = GreyPredictor(weights)
    sets = _sets(np.random.default_rng(0))
    feats = F.collect(pred, sets, tmp_path / "cache", log=lambda *a: None)
    calls = pred.calls
    (bad,) = [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("train-")]
    bad.write_bytes(b"not a zip")  # e.g. a copy cut short
    lines = []
    again = F.collect(pred, sets, tmp_path / "cache", log=lines.append)
    unreadable = [s for s in lines if "unreadable" in s]
    assert len(unreadable) == 1 and bad.name in unreadable[0] and "\n" not in unreadable[0]
    assert pred.calls == calls + len(feats["train"]["names"]), "only the unreadable set is computed again"
    assert again["train"]["features"].shape == feats["train"]["features"].shape
    assert F.read_cached(bad, log=lambda *a: None) is not None, "and its cache is written anew"
