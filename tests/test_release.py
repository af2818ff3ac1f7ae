"""The released model (braintumor.release): export, checksums, equivalence, the card, demo models, defaults.

One tiny checkpoint (ResNet-50, 128 px, heads biased so that it detects) is
exported once per module into a temporary models folder ($BRAINTUMOR_MODELS);
the tests read that release. No training: a few seconds of model building.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from braintumor import release as R
from braintumor.cli import main
from braintumor.errors import BrainTumorError
from mrcnn_testutil import blob_image, tiny_config

THRESHOLD = 0.8
SIZE = 128


def _decisive(model) -> None:
    """Bias the heads of a freshly built model so that it detects (scores 0.75-0.95, masks of a fair size)."""
    for v in model.keras_model.weights:
        a = v.numpy()
        if v.path.startswith("mrcnn_class_logits/"):
            v.assign((a * 3 + (np.array([0.0, 1.0]) if v.path.endswith("bias") else 0)).astype(np.float32))
        elif v.path.startswith("mrcnn_mask/"):
            v.assign((a * 3 + (0.3 if v.path.endswith("bias") else 0)).astype(np.float32))


def _scan(i: int) -> tuple[np.ndarray, np.ndarray]:
    return blob_image(SIZE, SIZE, [(20 + 5 * i, 30, 60 + 5 * i, 80)], seed=i)


def _write_via_val(root: Path, n: int = 3) -> Path:
    """``root/val``: n synthetic scans with one rectangle-polygon tumor each (VIA 2 annotations)."""
    d = root / "val"
    d.mkdir(parents=True)
    doc = {}
    for i in range(n):
        img, _ = _scan(i)
        Image.fromarray(img).save(d / f"{i}.png")
        xs, ys = [30, 80, 80, 30], [20 + 5 * i, 20 + 5 * i, 60 + 5 * i, 60 + 5 * i]
        doc[f"{i}.png1"] = {"filename": f"{i}.png", "size": 1, "file_attributes": {},
                            "regions": [{"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
                                         "region_attributes": {}}]}
    (d / "annotations.json").write_text(json.dumps(doc))
    return root


def _metrics(path: Path, dice: float) -> Path:
    doc = {"kind": "split", "threshold": THRESHOLD, "weights": "x.h5",
           "dataset": {"label": "val", "n_images": 61, "n_extra_tumor_free_images": 204},
           "segmentation": {"dice_mean": dice}, "coco": {"segm": {"map50": 0.8, "map": 0.4}, "bbox": {"map50": 0.79, "map": 0.38}},
           "instances": {"precision": 0.9, "recall": 0.7, "fp_per_image": 0.05},
           "image_level": {"sensitivity_any": 0.951, "sensitivity_overlap": 0.93, "specificity": 0.5},
           "tumor_free": {"n_images": 204, "fp_per_image": 0.6},
           "operating_point": {"threshold": THRESHOLD, "sensitivity": 0.951, "specificity": 0.5}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _make_run(logs: Path, name: str, epoch: int, steps_per_epoch: int, decisive: bool = True,
              precision: str = "float32", init: str = "random") -> Path:
    """A run folder with config.toml, history.csv and ``mask_rcnn_<name>_<epoch>.h5``; returns the checkpoint."""
    import keras

    from braintumor.mrcnn import MaskRCNN

    keras.utils.set_random_seed(1)
    cfg = tiny_config(NAME=name, IMAGE_MIN_DIM=SIZE, IMAGE_MAX_DIM=SIZE, DETECTION_MIN_CONFIDENCE=THRESHOLD,
                      STEPS_PER_EPOCH=steps_per_epoch, PRECISION=precision, INIT=init)
    run = logs / f"{name}20240101T0000"
    run.mkdir(parents=True)
    cfg.save(run / "config.toml")
    model = MaskRCNN("inference", cfg, model_dir=logs)
    if decisive:
        _decisive(model)
    ckpt = run / f"mask_rcnn_{name}_{epoch:04d}.h5"
    model.save_weights(ckpt, epoch=epoch)
    rows = "".join(f"{e},1.0,0.9,{10 + e}\n" for e in range(1, epoch + 1))
    (run / "history.csv").write_text("epoch,loss,val_loss,epoch_seconds\n" + rows)
    (run / "data.json").write_text(json.dumps({"train": [{"name": "brain_tumor_data", "images": 202, "per_pass": None},
                                                         {"name": "tumor_free", "images": 529, "per_pass": 50}],
                                               "val": {"images": 61}, "tumor_free_held_out": {"images": 204}}))
    return ckpt


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    ckpt = _make_run(root / "logs", "tiny", epoch=2, steps_per_epoch=600, precision="mixed_bfloat16")
    data = _write_via_val(root / "data")
    models = root / "models"
    metrics = _metrics(root / "eval" / "metrics.json", dice=0.61)
    card = R.export(ckpt, out=models, metrics=[str(metrics)], data=str(data), equivalence_images=3,
                    command="braintumor train --config tiny.toml", log=lambda *a: None)
    head = R.find_releases(models)[0]
    return {"root": root, "ckpt": ckpt, "models": models, "card": card, "head": head, "data": data, "metrics": metrics}


@pytest.fixture
def release_env(exported, monkeypatch):
    monkeypatch.setenv("BRAINTUMOR_MODELS", str(exported["models"]))
    return exported


# ----------------------------------------------------------------------------- the files
def test_release_files_names_and_checksums(exported):
    head, card = exported["head"], exported["card"]
    files = R.release_files(head)
    assert [p.name for p in files] == [head.name, R.card_path(head).name], "a tiny model fits one file"
    digest = R.sha256_file(head)
    assert head.name == f"tiny-resnet50-{digest[:8]}.h5"
    (entry,) = [f for f in card["files"] if f["role"] == "head"]
    assert entry["sha256"] == digest and entry["bytes"] == head.stat().st_size
    assert json.loads(R.card_path(head).read_text()) == json.loads(json.dumps(card))
    assert head.stat().st_size < 0.6 * exported["ckpt"].stat().st_size, "float16 halves the float32 checkpoint"


def test_card_has_what_the_issue_asks_for(exported):
    card = exported["card"]
    for key in ("name", "architecture", "operating_point", "training", "val", "evaluations", "licences", "files",
                "equivalence", "export_commit", "storage"):
        assert key in card, key
    assert card["architecture"]["backbone"] == "resnet50" and card["architecture"]["class_names"] == ["BG", "tumor"]
    assert card["operating_point"]["threshold"] == THRESHOLD
    t = card["training"]
    assert t["steps"] == 1200 and t["epoch"] == 2 and t["wall_seconds"] == 23.0
    assert t["command"] == "braintumor train --config tiny.toml" and t["run_folder"] == "tiny20240101T0000"
    v = card["val"]
    assert v["dice_mean"] == 0.61 and v["mask_map50"] == 0.8 and v["box_map"] == 0.38
    assert v["sensitivity"] == 0.951 and v["specificity"] == 0.5 and v["fp_per_image"] == 0.05
    licences = " ".join(x["licence"] + x["source"] for x in card["licences"])
    assert "CC BY 4.0" in licences and "10.6084/m9.figshare.1512427" in licences and "rastislavkopal" in licences
    md = R.render_card_markdown(card)
    assert card["files"][0]["sha256"] in md and "0.610" in md and "CC BY 4.0" in md
    assert t["data"]["val"]["images"] == 61
    assert "brain_tumor_data 202 images, tumor_free 529 images (50 per pass); val 61 images; held-out tumor-free slices 204" in md


def test_embedded_config_and_threshold(exported):
    rel = R.open_release(exported["head"])
    cfg = rel.config()
    assert cfg.NAME == "tiny" and cfg.BACKBONE == "resnet50" and cfg.DETECTION_MIN_CONFIDENCE == THRESHOLD
    assert rel.threshold == THRESHOLD and rel.encoding == "float16"
    assert json.loads(rel.meta["class_names.json"]) == ["BG", "tumor"]
    assert "STEPS_PER_EPOCH = 600" in rel.meta["run_config.toml"]
    # trained with bfloat16, released for float32 inference everywhere
    assert 'PRECISION = "mixed_bfloat16"' in rel.meta["run_config.toml"] and cfg.PRECISION == "float32"
    arch = exported["card"]["architecture"]
    assert (arch["training_precision"], arch["inference_precision"]) == ("mixed_bfloat16", "float32")
    assert "Trained in mixed_bfloat16, it computes in float32 on every machine." in R.render_card_markdown(exported["card"])


def test_released_model_detects_like_the_float32_checkpoint(exported):
    """Synthetic scans: same decisions, boxes within 1 px, masks within Dice 0.005 of the checkpoint's."""
    from braintumor.mrcnn import MaskRCNN

    cfg = R.open_release(exported["head"]).config(DETECTION_MIN_CONFIDENCE=R.EQUIVALENCE_FLOOR)
    f32 = MaskRCNN("inference", cfg, model_dir=exported["root"])
    assert f32.load_weights(str(exported["ckpt"])).complete
    rel = R.load_release(exported["head"], DETECTION_MIN_CONFIDENCE=R.EQUIVALENCE_FLOOR)
    samples = [(f"s{i}", _scan(i)[0], _scan(i)[1], None) for i in range(4)]
    ref, got = R.records_for(f32, samples, THRESHOLD), R.records_for(rel, samples, THRESHOLD)
    assert all(r["decision"] for r in ref), "the test model must detect something to compare"
    cmp = R.compare_records(ref, got)
    assert cmp["equivalent"] and cmp["decisions_identical"], cmp
    assert cmp["max_box_diff_px"] <= 1 and cmp["min_mask_dice_between_models"] > 0.995


def test_export_recorded_the_equivalence_check(exported):
    eq = exported["card"]["equivalence"]
    assert eq["checked"] and eq["n_images"] == 3 and eq["equivalent"] and eq["decisions_identical"]
    assert [r["file"] for r in eq["reference"]] == ["0.png", "1.png", "2.png"]
    assert all(r["image_sha256"] and "dice_gt" in r for r in eq["reference"])
    assert 0 < eq["max_abs_weight_error"] < 1e-2


def test_training_can_start_from_a_release_as_a_new_run(exported, tmp_path):
    """``train --init models/<release>.h5``: a training model gets the release's weights (float16
    storage, restored as float32) and a new run folder, not the release's folder."""
    from braintumor.mrcnn import MaskRCNN
    from braintumor.train import initialise

    cfg = R.open_release(exported["head"]).config(NAME="stage2")
    model = MaskRCNN("training", cfg, model_dir=tmp_path / "logs")
    before = {v.path: v.numpy().copy() for v in model.keras_model.weights}
    said = initialise(model, cfg, str(exported["head"]), tmp_path / "logs")
    assert said.startswith(f"weights of the released model {exported['head']}")
    assert model.epoch == 0 and model.log_dir.parent == tmp_path / "logs" and model.log_dir.name.startswith("stage2")
    stored = R.read_tensors(R.open_release(exported["head"]))
    entries = R.storage.model_entries(model.keras_model)
    assert len(entries) == len(stored)
    for key, v in entries:
        np.testing.assert_array_equal(v.numpy(), stored[key].astype(np.float32), err_msg=key)
    after = {w.path: w.numpy() for w in model.keras_model.weights}
    changed = [p for p, v in before.items() if not np.array_equal(v, after[p])]
    kernels = [p for p in before if p.endswith("kernel")]
    assert kernels and set(kernels) <= set(changed), "every random kernel was replaced by the release's"


def test_a_second_stage_from_a_release_counts_the_release_steps(exported, tmp_path):
    """A run started with ``--init <release>``: its card counts the release's steps and names it."""
    from braintumor.config import load_config

    ckpt = _make_run(tmp_path / "logs", "stage", epoch=3, steps_per_epoch=100, init=str(exported["head"]))
    cfg = load_config(ckpt.parent / "config.toml")
    assert R.training_steps(ckpt, cfg) == 300 + 1200, "3 epochs x 100 here, 2 x 600 behind the release"
    summary = R.run_summary(ckpt, cfg)
    assert summary["init_release"]["file"] == exported["head"].name and summary["init_release"]["steps"] == 1200
    assert summary["wall_seconds_total"] == summary["wall_seconds"] + exported["card"]["training"]["wall_seconds"]
    text = R.render_card_markdown({"training": summary})
    assert "1500 steps in all" in text and "this stage 300 steps" in text and exported["head"].name in text


def test_a_run_from_another_runs_checkpoint_counts_the_whole_chain_back_to_the_release(exported, tmp_path):
    """release (1,200 steps) -> run a (2 x 100) -> run b (3 x 100): b's card counts 1,700 steps, adds up the wall
    time of all three and names each stage; a bare .h5 as init is named alone."""
    from braintumor.config import load_config

    a = _make_run(tmp_path / "logs", "first", epoch=2, steps_per_epoch=100, init=str(exported["head"]))
    b = _make_run(tmp_path / "logs", "second", epoch=3, steps_per_epoch=100, init=str(a))
    summary = R.run_summary(b, load_config(b.parent / "config.toml"))
    assert summary["steps"] == 1700 and summary["init_run"]["checkpoint"] == a.name
    assert summary["init_run"]["init_release"]["file"] == exported["head"].name
    release_wall = exported["card"]["training"]["wall_seconds"]
    assert summary["wall_seconds_total"] == pytest.approx((11 + 12 + 13) + (11 + 12) + release_wall)
    text = R.render_card_markdown({"training": summary})
    assert "1700 steps in all" in text and "this stage 300 steps" in text and f"`{a.name}`" in text
    assert "200 steps, from the released model" in text and exported["head"].name in text
    bare = tmp_path / "bare.h5"
    bare.write_bytes(a.read_bytes())
    c = _make_run(tmp_path / "logs2", "third", epoch=1, steps_per_epoch=100, init=str(bare))
    alone = R.run_summary(c, load_config(c.parent / "config.toml"))
    assert "init_run" not in alone and alone["init"] == str(bare)


def test_tensors_decode_to_the_recorded_float32_statistics(exported):
    """What the CI test of the real release does: every restored tensor matches its float32 norm and sum."""
    rel = R.open_release(exported["head"])
    stats, tensors = rel.tensor_stats(), R.read_tensors(rel)
    assert set(stats) == set(tensors) and len(tensors) > 100
    for key, s in stats.items():
        t = tensors[key].astype(np.float64)
        assert list(t.shape) == s["shape"]
        bound = s["max_abs_error"] * np.sqrt(t.size) + 1e-6
        assert abs(np.linalg.norm(t) - s["l2"]) <= bound, key
        assert abs(t.sum() - s["sum"]) <= s["max_abs_error"] * t.size + 1e-5, key


# ----------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("damage", ["truncate", "flip", "rename", "empty"])
def test_damaged_release_is_refused_in_one_line_naming_the_file(exported, tmp_path, damage):
    d = tmp_path / "models"
    d.mkdir()
    for p in R.release_files(exported["head"]):
        shutil.copy(p, d / p.name)
    head = d / exported["head"].name
    data = head.read_bytes()
    if damage == "truncate":
        head.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        pos = len(data) // 2
        head.write_bytes(data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:])
    elif damage == "rename":  # another file under the release's name, no card
        R.card_path(head).unlink()
        head.write_bytes(exported["ckpt"].read_bytes())
    else:
        head.write_bytes(b"")
    with pytest.raises(BrainTumorError) as e:
        R.open_release(head)
    msg = str(e.value)
    assert str(head) in msg and "\n" not in msg
    assert ("truncated" in msg) or ("damaged" in msg)


def test_missing_shard_and_cli_error_are_one_line(exported, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(R.storage, "SHARD_TARGET_BYTES", 10_000_000)  # force several shards
    from braintumor.mrcnn import MaskRCNN

    model = MaskRCNN("inference", R.open_release(exported["head"]).config(), model_dir=tmp_path)
    files = R.write_release(model.keras_model, tmp_path / "m", "tiny-resnet50", "float16",
                            {"config.toml": R.open_release(exported["head"]).meta["config.toml"]})
    assert len(files) > 2 and all(f.stat().st_size < 11_000_000 for f in files)
    assert R.load_release_weights(model.keras_model, files[0]).loaded
    files[2].unlink()
    with pytest.raises(BrainTumorError, match="release file missing") as e:
        R.open_release(files[0])
    assert str(files[2]) in str(e.value)
    img = tmp_path / "a.png"
    Image.fromarray(_scan(0)[0]).save(img)
    assert main(["detect", str(img), "--weights", str(files[0]), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(files[2]) in err[0]


# ----------------------------------------------------------------------------- one release at a time
def test_export_refuses_to_replace_without_replace_then_replaces(exported, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(exported["models"], models)
    old = R.find_releases(models)[0]
    with pytest.raises(BrainTumorError) as e:
        R.export(exported["ckpt"], out=models, log=lambda *a: None, equivalence_images=0)
    assert old.name in str(e.value) and "0.61" in str(e.value) and "--replace" in str(e.value)
    better = _metrics(tmp_path / "m2" / "metrics.json", dice=0.7)
    figshare = _metrics(tmp_path / "m3" / "metrics.json", dice=0.6)
    doc = json.loads(figshare.read_text())
    doc["dataset"]["n_images"], doc["by_category"] = 298, {"glioma": {"n_images": 100, "dice_mean": 0.4}}
    figshare.write_text(json.dumps(doc))
    card = R.export(exported["ckpt"], out=models, metrics=[str(better), str(figshare)], replace=True, encoding="int8",
                    equivalence_images=0, log=lambda *a: None)
    (new,) = R.find_releases(models)
    assert new != old and not old.exists() and not R.card_path(old).exists()
    assert card["replaces"]["file"] == old.name and card["replaces"]["better_on_val"] is True
    assert card["replaces"]["figshare_val_dice"] is None and card["replaces"]["new_figshare_val_dice"] == 0.6
    assert "Figshare val Dice — → 0.600" in R.render_card_markdown(card)
    assert card["replaces"]["val_dice"] == 0.61 and card["storage"]["encoding"] == "int8"
    assert sorted(p.name for p in models.iterdir()) == sorted([new.name, R.card_path(new).name])


def test_export_takes_the_operating_point_of_evaluate_at_operating_point(exported, tmp_path):
    doc = json.loads(exported["metrics"].read_text())
    doc.update(threshold=0.61234567, threshold_from="operating point")
    metrics = tmp_path / "op" / "metrics.json"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps(doc))
    card = R.export(exported["ckpt"], out=tmp_path / "models", metrics=[str(metrics)], equivalence_images=0,
                    log=lambda *a: None)
    rel = R.open_release(R.find_releases(tmp_path / "models")[0])
    assert rel.threshold == 0.61234567 and card["val"]["threshold"] == 0.61234567  # exact, not rounded
    assert card["val"]["threshold_from"] == "operating point"


def test_readme_section_between_markers(exported, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{R.CARD_START}\nold text\n{R.CARD_END}\nafter\n")
    R.update_readme(readme, exported["card"])
    text = readme.read_text()
    assert "old text" not in text and "before" in text and "after" in text
    assert exported["card"]["files"][0]["sha256"] in text
    (tmp_path / "plain.md").write_text("no markers\n")
    with pytest.raises(BrainTumorError, match="markers"):
        R.update_readme(tmp_path / "plain.md", exported["card"])


def test_model_card_command_prints_or_writes(release_env, tmp_path, capsys):
    assert main(["model-card"]) == 0
    assert "Released model: `tiny-resnet50`" in capsys.readouterr().out
    readme = tmp_path / "R.md"
    readme.write_text(f"{R.CARD_START}\n{R.CARD_END}\n")
    assert main(["model-card", "--readme", str(readme)]) == 0
    assert "tiny-resnet50" in readme.read_text()


# ----------------------------------------------------------------------------- the default everywhere
def test_detect_without_weights_uses_the_release(release_env, tmp_path, capsys):
    img = tmp_path / "scan.png"
    Image.fromarray(_scan(1)[0]).save(img)
    out = tmp_path / "o"
    assert main(["detect", str(img), "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert release_env["head"].name in cap.out and "threshold: 0.80" in cap.out and "Demo model" not in cap.err
    rep = json.loads((out / "scan.json").read_text())
    assert rep["weights"].endswith(release_env["head"].name) and rep["demo_model"] is None
    ref = release_env["card"]["equivalence"]["reference"][1]  # the same picture as val 1.png
    assert rep["tumor_found"] == ref["decision"] and rep["num_tumors"] == len(ref["boxes"])


def test_evaluate_without_weights_uses_the_release_and_writes_outside_models(release_env, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--data", str(release_env["data"]), "--split", "val"]) == 0
    out = tmp_path / "out" / f"eval_{release_env['head'].stem}_val" / "metrics.json"
    metrics = json.loads(out.read_text())
    assert metrics["weights"].endswith(release_env["head"].name) and metrics["threshold"] == THRESHOLD
    assert sorted(p.name for p in release_env["models"].iterdir()) == sorted(
        [release_env["head"].name, R.card_path(release_env["head"]).name])


def test_no_release_and_no_weights_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BRAINTUMOR_MODELS", str(tmp_path / "models"))
    img = tmp_path / "a.png"
    Image.fromarray(_scan(0)[0]).save(img)
    assert main(["detect", str(img), "--out", str(tmp_path / "o")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and str(tmp_path / "models") in line and "no released model" in line


def test_app_lists_the_release_first_and_preselected(release_env, tmp_path):
    from braintumor.config import Config
    from braintumor.ui import build_app

    run = tmp_path / "logs" / "tumor20240101T0000"
    run.mkdir(parents=True)
    Config({"STEPS_PER_EPOCH": 500}).save(run / "config.toml")
    (run / "mask_rcnn_tumor_0003.h5").write_bytes(b"")
    app = build_app(logs_dir=tmp_path / "logs", predictor_factory=lambda p: None)
    labels = [label for label, _ in app.checkpoint.options]
    assert labels[0] == "Yayımlanan model: tiny-resnet50 (doğrulama Dice 0.61)"
    assert labels[1] == "tumor20240101T0000/mask_rcnn_tumor_0003.h5"
    assert app.checkpoint.value == str(release_env["head"]) and app.threshold.value == pytest.approx(THRESHOLD)
    assert app.banner.value == ""
    app.set_language("en")
    assert app.checkpoint.options[0][0] == "Released: tiny-resnet50 (val Dice 0.61)"
    assert app.checkpoint.value == str(release_env["head"])


# ----------------------------------------------------------------------------- demo models
class _NothingFound:
    class_names = ["BG", "tumor"]
    loaded = True

    def __init__(self, path):
        self.weights_path = Path(path)

    def detect(self, images):
        h, w = images[0].shape[:2]
        return [{"rois": np.zeros((0, 4), np.int32), "class_ids": np.zeros(0, np.int32),
                 "scores": np.zeros(0, np.float32), "masks": np.zeros((h, w, 0), bool)}]


def test_demo_reason_counts_steps(tmp_path, exported):
    from braintumor.config import Config

    assert R.demo_reason(exported["head"]) is None, "a release is never a demo model"
    assert R.demo_reason(exported["ckpt"]) is None, "2 epochs x 600 steps >= 1000"
    run = tmp_path / "quick20240101T0000"
    run.mkdir()
    Config({"NAME": "quick", "STEPS_PER_EPOCH": 20}).save(run / "config.toml")
    quick = run / "mask_rcnn_quick_0002.h5"
    assert "trained 40 steps" in R.demo_reason(quick) and "MIN_STEPS_FOR_READING = 1000" in R.demo_reason(quick)
    assert R.demo_reason(quick, Config({"STEPS_PER_EPOCH": 20, "MIN_STEPS_FOR_READING": 10})) is None
    second = tmp_path / "neg20240102T0000"  # a second stage: 3 x 100 steps on top of a 1200-step checkpoint
    second.mkdir()
    Config({"NAME": "neg", "STEPS_PER_EPOCH": 100, "INIT": str(exported["ckpt"])}).save(second / "config.toml")
    assert R.training_steps(second / "mask_rcnn_neg_0003.h5") == 1500
    assert R.demo_reason(second / "mask_rcnn_neg_0003.h5") is None
    assert "unknown" in R.demo_reason(tmp_path / "elsewhere" / "weights.h5")


def test_demo_model_in_the_app_banner_and_no_green_verdict(tmp_path):
    import ipywidgets as W

    from braintumor.config import Config
    from braintumor.ui import build_app
    from test_ui import png_bytes, v8

    run = tmp_path / "logs" / "quick20240101T0000"
    run.mkdir(parents=True)
    Config({"NAME": "quick", "STEPS_PER_EPOCH": 20, "DETECTION_MIN_CONFIDENCE": 0.5}).save(run / "config.toml")
    ckpt = run / "mask_rcnn_quick_0002.h5"
    ckpt.write_bytes(b"")
    app = build_app(logs_dir=tmp_path / "logs", predictor_factory=_NothingFound, checkpoint_finder=lambda logs: [ckpt])
    assert "Demo model: tarama okumak için eğitilmedi" in app.banner.value and "bt-demo-banner" in app.banner.value
    (a,) = app.run_detection(upload_value=v8(("clean.png", png_bytes())))
    assert a.report["tumor_found"] is False and "trained 40 steps" in a.report["demo_model"]

    def html(w):
        return w.value if isinstance(w, W.HTML) else "\n".join(html(c) for c in getattr(w, "children", ()))

    text = html(app.results)
    assert "Demo model: karar yok" in text and "bt-no-tumor" not in text and "Tümör bulunamadı" not in text
    app.set_language("en")
    text = html(app.results)
    assert "Demo model: no verdict" in text and "No tumor found" not in text and "#1b5e20" not in text
    assert "Demo model: not trained for reading scans" in app.banner.value


def test_detect_warns_about_a_demo_model(tmp_path, capsys):
    ckpt = _make_run(tmp_path / "logs", "quick", epoch=1, steps_per_epoch=20, decisive=False)
    img = tmp_path / "a.png"
    Image.fromarray(_scan(0)[0]).save(img)
    assert main(["detect", str(img), "--weights", str(ckpt), "--out", str(tmp_path / "o")]) == 0
    cap = capsys.readouterr()
    assert "warning: Demo model: not trained for reading scans (trained 20 steps" in cap.err
    rep = json.loads((tmp_path / "o" / "a.json").read_text())
    assert rep["demo_model"].startswith("trained 20 steps")
    if not rep["tumor_found"]:
        assert "a.png: Demo model: no verdict" in cap.out and "No tumor found" not in cap.out


def test_export_command_prints_files_and_refuses_bad_input_in_one_line(exported, tmp_path, capsys):
    models = tmp_path / "models"
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{R.CARD_START}\n{R.CARD_END}\n")
    args = ["export", "--weights", str(exported["ckpt"]), "--out", str(models), "--equivalence-images", "0",
            "--metrics", str(exported["metrics"].parent), "--threshold", "0.85", "--readme", str(readme)]
    assert main(args) == 0
    out = capsys.readouterr().out
    (head,) = R.find_releases(models)
    assert f"models/{head.name}" in out and R.sha256_file(head) in out and "README updated" in out
    assert R.open_release(head).threshold == 0.85 and "0.850" in readme.read_text()
    for bad, words in ((["--metrics", str(tmp_path / "nope.json")], "nope.json: metrics file not found"),
                       (["--threshold", "1.5"], "--threshold must be in (0, 1]"),
                       ([], "already holds release")):
        assert main(args[:7] + bad) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: ") and words in line, line
    assert main(["export", "--weights", str(head), "--out", str(tmp_path / "m2"), "--flagged-threshold", "1.5"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "--flagged-threshold must be in [0, 1]" in line, line
    assert main(["export", "--weights", str(head), "--out", str(tmp_path / "m2"), "--mask-threshold", "1.5"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "DETECTION_MASK_THRESHOLD must be a number in [0.05, 0.95]" in line, line


def test_release_embeds_an_image_score_and_refuses_a_bad_one_in_one_line(exported, tmp_path):
    from braintumor.image_score import fit

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8))
    head = fit(x, (x[:, 0] > 0).astype(float))
    good = tmp_path / "score.json"
    good.write_text(json.dumps(head.to_dict()))
    R.export(exported["ckpt"], out=tmp_path / "models", image_score=str(good), equivalence_images=0, log=lambda *a: None)
    rel = R.open_release(R.find_releases(tmp_path / "models")[0])
    np.testing.assert_allclose(rel.image_score().probability(x), head.probability(x))
    assert R.open_release(exported["head"]).image_score() is None, "a release without one says so"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**head.to_dict(), "scale": [0.0] * 8}))
    for path in (bad, tmp_path / "missing.json"):
        with pytest.raises(BrainTumorError) as e:
            R.export(exported["ckpt"], out=tmp_path / "other", image_score=str(path), log=lambda *a: None)
        assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    assert not (tmp_path / "other").exists() or not R.find_releases(tmp_path / "other")


def test_better_on_val_weighs_dice_and_specificity_with_tolerances():
    from braintumor.release.export import better_on_val, val_figures

    assert better_on_val((0.71, 0.93), (0.708, 0.466)), "same Dice, far fewer false alarms"
    assert better_on_val((0.75, 0.47), (0.70, 0.466)), "better Dice, same specificity"
    assert not better_on_val((0.709, 0.47), (0.708, 0.466)), "a tie is not better"
    assert not better_on_val((0.80, 0.40), (0.70, 0.466)), "Dice up but specificity down is not better"
    assert better_on_val((0.60, None), (0.55, 0.48)), "unknown figures are left out"
    rule = {"dice_mean": 0.7, "operating_point": {"specificity": 0.466}, "image_rule": {"specificity": 0.931}}
    assert val_figures(rule) == (0.7, 0.931) and val_figures({"dice_mean": 0.7, "operating_point": {"specificity": 0.466}}) == (0.7, 0.466)


def test_better_on_val_weighs_the_figshare_val_dice_when_both_cards_have_it():
    from braintumor.release.export import better_on_val, figshare_val_dice

    assert better_on_val((0.81, 0.96, 0.66), (0.81, 0.96, 0.613)), "same thesis figures, better Figshare Dice"
    assert not better_on_val((0.83, 0.96, 0.58), (0.81, 0.96, 0.613)), "thesis Dice up but Figshare Dice down"
    assert not better_on_val((0.81, 0.96, 0.616), (0.81, 0.96, 0.613)), "a tie on all three is not better"
    assert better_on_val((0.83, 0.96, None), (0.81, 0.96, 0.613)), "an old card without it: left out"
    thesis = {"split": "val", "n_images": 61, "dice_mean": 0.81, "by_category": None}
    figshare = {"split": "val", "n_images": 298, "dice_mean": 0.613, "by_category": {"glioma": {"dice_mean": 0.42}}}
    assert figshare_val_dice([thesis, figshare]) == 0.613
    assert figshare_val_dice([thesis]) is None and figshare_val_dice(None) is None


def test_the_card_reports_the_image_level_rule_and_its_verdicts(tmp_path):
    from braintumor.release.card import metrics_summary, render_card_markdown

    doc = json.loads(_metrics(tmp_path / "m.json", dice=0.75).read_text())
    doc["image_rule"] = {"threshold": 0.8875, "confident_detection": 0.9, "sensitivity": 0.9508, "specificity": 0.9314,
                         "n_tumor_free_images": 204, "n_tumor_free_flagged": 14, "per_image": [{"name": "x"}],
                         "verdicts": {"tumor": {"tumor_images": 55, "tumor_free_images": 13},
                                      "suspected": {"tumor_images": 3, "tumor_free_images": 1},
                                      "uncertain": {"tumor_images": 3, "tumor_free_images": 96},
                                      "no_tumor": {"tumor_images": 0, "tumor_free_images": 94}}}
    val = metrics_summary(doc, "m.json")
    assert "per_image" not in val["image_rule"] and val["image_rule"]["n_tumor_free_flagged"] == 14
    text = render_card_markdown({"val": val, "operating_point": {"threshold": 0.4962, "secondary_min_confidence": 0.95},
                                 "image_score": {"threshold": 0.8875, "features": ["fpn_p4", "fpn_p5"],
                                                 "fit": {"l2": 0.01, "sets": {"train": {"images": 202}}}}})
    assert "0.951 / 0.931** (14 of 204 tumor-free flagged)" in text, text
    assert "| 55 / 3 / 3 / 0 |" in text and "| 13 / 1 / 96 / 94 |" in text and "≥ 0.95" in text
    assert "fitted on train 202 images" in text
    held = {"threshold": 0.91, "features": ["fpn_p4"], "fit": {
        "l2": 0.01, "no_green_at": 0.3407, "no_green_sets": ["val", "figshare_val"], "figshare_val_images": 298,
        "sets": {"val": {"images": 61, "role": "threshold"}, "figshare_val": {"images": 298, "role": "threshold"},
                 "train": {"images": 202, "role": "fit"}}}}
    text = render_card_markdown({"image_score": held})
    assert "fitted on train 202 images;" in text, "the sets that chose the threshold are not among the fitted ones"
    assert "none of the 298 figshare_val slices without a region at 0.3407 goes unflagged" in text
    # with the slices the copies belong to (evaluate with load_tumor_free), they are counted too
    doc["image_rule"].update(n_tumor_free_slices=41, n_tumor_free_flagged_slices=5)
    text = render_card_markdown({"val": metrics_summary(doc, "m.json")})
    assert "0.951 / 0.931** (14 of 204 tumor-free flagged; 5 of 41 distinct slices)" in text, text


def test_the_card_keeps_the_figures_per_tumor_type(tmp_path):
    from braintumor.release.card import metrics_summary

    doc = json.loads(_metrics(tmp_path / "m.json", dice=0.45).read_text())
    assert metrics_summary(doc, "m.json")["by_category"] is None
    doc["by_category"] = {"glioma": {"n_images": 100, "dice_mean": 0.09213, "sensitivity_any": 0.79},
                          "pituitary": {"n_images": 100, "dice_mean": 0.56312, "sensitivity_any": 0.93}}
    by = metrics_summary(doc, "m.json")["by_category"]
    assert by == {"glioma": {"n_images": 100, "dice_mean": 0.0921, "sensitivity_any": 0.79},
                  "pituitary": {"n_images": 100, "dice_mean": 0.5631, "sensitivity_any": 0.93}}


def _release_with_head(exported, tmp_path, fit_record: dict | None = None) -> tuple[Path, int]:
    """The tiny release exported again into ``tmp_path/models`` with a random image-level head (with ``fit_record`` as
    its ``fit``); (head file, features)."""
    from braintumor.image_score import fit

    n_features = 4 * R.open_release(exported["head"]).config().TOP_DOWN_PYRAMID_SIZE  # avg + max of P4, P5
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, n_features))
    good = tmp_path / "score.json"
    good.write_text(json.dumps({**fit(x, (x[:, 0] > 0).astype(float)).to_dict(),
                                **({"fit": fit_record} if fit_record else {})}))
    R.export(exported["ckpt"], out=tmp_path / "models", image_score=str(good), equivalence_images=0,
             metrics=[str(exported["metrics"])], log=lambda *a: None)
    return R.find_releases(tmp_path / "models")[0], n_features


def test_an_accepted_bfloat16_calibration_is_used_where_the_cpu_has_bfloat16(exported, tmp_path, monkeypatch):
    """braintumor.release.calibration: the release computes in bfloat16 with the calibrated thresholds, float32 elsewhere."""
    from braintumor import inference
    from braintumor.mrcnn import precision as P
    from braintumor.release.calibration import write_calibration

    head, n_features = _release_with_head(exported, tmp_path)
    monkeypatch.delenv(inference.PRECISION_ENV, raising=False)
    monkeypatch.setattr(P, "cpu_bf16_flags", lambda cpuinfo=None: ["avx512_bf16"])
    plain = inference.load_predictor(head)
    assert plain.precision == "float32" and plain.threshold == pytest.approx(THRESHOLD), "no calibration: float32"
    write_calibration(head, "mixed_bfloat16", {"operating_point": 0.85, "image_score_threshold": 0.7, "accepted": True})
    assert "or in bfloat16 where its calibration below applies" in R.render_card_markdown(R.open_release(head).card)
    pred = inference.load_predictor(head, min_confidence=0.05)
    assert pred.precision == "mixed_bfloat16" and "accepted calibration" in pred.precision_reason
    assert pred.threshold == pytest.approx(0.85) and pred.config.DETECTION_MIN_CONFIDENCE == pytest.approx(0.05)
    assert pred.image_score.threshold == pytest.approx(0.7), "the head's threshold is the calibrated one"
    assert inference.operating_point(head) == pytest.approx(0.85), "the app's slider starts there"
    img, _ = _scan(0)
    out = pred.detect([img])[0]
    assert out["image_features"].dtype == np.float32 and out["image_features"].shape == (n_features,)
    forced = inference.load_predictor(head, precision="float32")
    assert forced.precision == "float32" and forced.threshold == pytest.approx(THRESHOLD)
    assert forced.image_score.threshold != pytest.approx(0.7)
    monkeypatch.setattr(P, "cpu_bf16_flags", lambda cpuinfo=None: [])
    assert inference.load_predictor(head).precision == "float32", "a CPU without bfloat16 reads it in float32"
    assert inference.operating_point(head) == pytest.approx(THRESHOLD)
    assert main(["detect", "--weights", str(head), "--precision", "mixed_bfloat16", str(tmp_path / "x.png")]) == 2


def test_calibrate_command_writes_the_card_and_refuses_what_it_cannot_do(exported, tmp_path, monkeypatch, capsys):
    from braintumor import inference
    from braintumor.mrcnn import precision as P

    head, _ = _release_with_head(exported, tmp_path)
    free = tmp_path / "free"
    free.mkdir()
    rng = np.random.default_rng(5)
    for i in range(12):
        Image.fromarray((rng.random((SIZE, SIZE)) * 60).astype(np.uint8)).convert("RGB").save(free / f"no{i}.png")
    args = ["calibrate", "--weights", str(head), "--data", str(exported["data"]), "--tumor-free", str(free)]
    monkeypatch.setattr(P, "cpu_bf16_flags", lambda cpuinfo=None: [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: calibrate --precision mixed_bfloat16: this CPU has none of") and "\n" not in err
    monkeypatch.setattr(P, "cpu_bf16_flags", lambda cpuinfo=None: ["amx_bf16"])
    assert main(["calibrate", "--weights", str(exported["ckpt"]), "--data", str(exported["data"]),
                 "--tumor-free", str(free)]) == 2
    assert "not a released model" in capsys.readouterr().err
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{R.CARD_START}\nold\n{R.CARD_END}\n")
    assert main(args + ["--readme", str(readme)]) == 0
    out = capsys.readouterr().out
    assert "operating point" in out and "written:" in out
    card = json.loads(R.card_path(head).read_text())
    cal = card["calibrations"]["mixed_bfloat16"]
    assert 0 < cal["operating_point"] <= 1 and 0 < cal["image_score_threshold"] <= 1
    assert cal["val"]["n_images"] == 3 and cal["val"]["n_tumor_free_images"] >= 1 and cal["val"]["image_rule"]
    assert cal["float32_val"]["dice_mean"] == pytest.approx(0.61), "judged against the card's float32 figures"
    assert cal["accepted"] == (cal["why_not"] == []) and "Inference precision" in readme.read_text()
    chosen = inference.load_predictor(head).precision
    assert chosen == ("mixed_bfloat16" if cal["accepted"] else "float32")
    R.open_release(head)  # the card still verifies the release


def test_calibrate_holds_the_figshare_val_slices_when_the_release_head_was_held_so(exported, tmp_path, monkeypatch,
                                                                                   capsys):
    """A head fitted with ``fit-image-score --figshare --operating-point``: calibrate refuses in one line without
    --figshare, and with it detects the Figshare val slices too and records their figures in the calibration."""
    from pycocotools import mask as mask_utils

    from braintumor.figshare import VAL_BLOCKS
    from braintumor.mrcnn import precision as P

    head, _ = _release_with_head(exported, tmp_path, {"no_green_sets": ["val", "figshare_val"], "no_green_at": 0.5})
    free = tmp_path / "free"
    free.mkdir()
    rng = np.random.default_rng(6)
    for i in range(6):
        Image.fromarray((rng.random((SIZE, SIZE)) * 60).astype(np.uint8)).convert("RGB").save(free / f"no{i}.png")
    fig = tmp_path / "figshare"
    (fig / "images").mkdir(parents=True)
    images, anns = [], []
    for k, n in enumerate(range(VAL_BLOCKS[0][0], VAL_BLOCKS[0][0] + 3)):
        image, mask = blob_image(SIZE, SIZE, [(20 + 4 * k, 20, 44, 48)])
        Image.fromarray(image).save(fig / "images" / f"{n}.jpg")
        rle = mask_utils.encode(np.asfortranarray(mask[..., 0].astype(np.uint8)))
        images.append({"id": k + 1, "file_name": f"{n}.jpg", "width": SIZE, "height": SIZE})
        anns.append({"id": k + 1, "image_id": k + 1, "category_id": k % 3 + 1, "iscrowd": 0, "area": int(mask.sum()),
                     "segmentation": {"size": [SIZE, SIZE], "counts": rle["counts"].decode("ascii")}, "bbox": [20, 20, 28, 24]})
    (fig / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "meningioma"}, {"id": 2, "name": "glioma"}, {"id": 3, "name": "pituitary"}]}))
    monkeypatch.setattr(P, "cpu_bf16_flags", lambda cpuinfo=None: ["amx_bf16"])
    args = ["calibrate", "--weights", str(head), "--data", str(exported["data"]), "--tumor-free", str(free)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Figshare val" in err and "--figshare" in err and "\n" not in err
    assert main(args + ["--figshare", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope" in err and "not a folder (--figshare)" in err and "\n" not in err
    import braintumor.calibrate as C

    held, original = [], C.calibrate_records
    monkeypatch.setattr(C, "calibrate_records", lambda *a, **kw: held.append(kw.get("no_green_records")) or original(*a, **kw))
    assert main(args + ["--figshare", str(fig)]) == 0
    assert [[r.name for r in rs] for rs in held[0]] == [[f"{n}.jpg" for n in range(VAL_BLOCKS[0][0], VAL_BLOCKS[0][0] + 3)]]
    cal = json.loads(R.card_path(head).read_text())["calibrations"]["mixed_bfloat16"]
    assert cal["figshare_val"]["n_images"] == 3 and "--figshare" in cal["command"]
    green = cal["figshare_val"]["image_rule"]["verdicts"]["no_tumor"]["tumor_images"]
    assert green == 0, "the head's threshold is chosen so that no Figshare val slice is green"


def test_the_card_counts_the_tumor_free_share_of_a_multi_source_run():
    """A SOURCES run's tumor-free share is its tumor_free sources' part of the weights, not TUMOR_FREE_FRACTION."""
    from braintumor.config import load_config
    from braintumor.release.card import tumor_free_share

    root = Path(__file__).resolve().parent.parent / "mrcnn_config"
    stage6 = load_config(root / "resnet101_figshare_stage6.toml")
    assert stage6.TUMOR_FREE_FRACTION != 0.35
    assert tumor_free_share(stage6) == pytest.approx(0.35)
    cfg = tiny_config(TUMOR_FREE_FRACTION=0.2)
    assert tumor_free_share(cfg) == pytest.approx(0.2)
    cfg = tiny_config(SOURCES=[{"NAME": "a", "KIND": "split", "WEIGHT": 3.0},
                               {"NAME": "b", "KIND": "tumor_free", "WEIGHT": 1.0}])
    assert tumor_free_share(cfg) == pytest.approx(0.25)


def test_a_release_is_released_again_with_new_thresholds_and_the_same_weights(exported, tmp_path):
    """export --weights RELEASE: the weights unchanged, the card's training carried over and the
    source named; DETECTION_FLAGGED_MIN_CONFIDENCE set, loaded as the predictor's flagged threshold
    with the model's floor down to it."""
    from braintumor import inference
    from braintumor.release.storage import read_tensors

    head, _ = _release_with_head(exported, tmp_path)
    before = R.open_release(head)
    old_t = read_tensors(before)
    with pytest.raises(BrainTumorError, match="pass --replace"):
        R.export(head, out=head.parent, metrics=[str(exported["metrics"])], equivalence_images=0, log=lambda *a: None)
    card = R.export(head, out=head.parent, metrics=[str(exported["metrics"])], threshold=0.6, flagged_threshold=0.3,
                    mask_threshold=0.4, replace=True, data=str(exported["data"]), equivalence_images=3, log=lambda *a: None)
    [new] = R.find_releases(head.parent)
    assert new != head and not head.exists(), "the source release is replaced"
    assert new.name.startswith(before.name + "-"), "named as the release it came from"
    after = R.open_release(new)
    new_t = read_tensors(after)
    assert old_t.keys() == new_t.keys() and all(np.array_equal(old_t[k], new_t[k]) for k in old_t)
    assert card["equivalence"]["checked"] and card["equivalence"]["equivalent"]
    was = before.card["training"]
    assert {k: v for k, v in card["training"].items() if k != "released_before_as"} == was
    assert card["training"]["released_before_as"] == {"file": head.name, "sha256": before.sha256, "threshold": THRESHOLD}
    assert card["architecture"]["training_precision"] == "mixed_bfloat16", "the run's, not the release's float32"
    assert after.meta["image_score.json"] == before.meta["image_score.json"]
    assert after.meta["run_config.toml"] == before.meta["run_config.toml"] != ""
    cfg = after.config()
    assert cfg.DETECTION_MIN_CONFIDENCE == pytest.approx(0.6) and cfg.DETECTION_FLAGGED_MIN_CONFIDENCE == pytest.approx(0.3)
    assert card["operating_point"]["flagged_min_confidence"] == pytest.approx(0.3)
    assert cfg.DETECTION_MASK_THRESHOLD == pytest.approx(0.4) and card["operating_point"]["mask_threshold"] == 0.4
    text = R.render_card_markdown(after.card)
    assert "released again" in text and "DETECTION_FLAGGED_MIN_CONFIDENCE" in text and "DETECTION_MASK_THRESHOLD" in text
    assert "DETECTION_MASK_THRESHOLD" not in R.render_card_markdown(before.card), "0.5, the default, goes unsaid"
    pred = inference.load_predictor(new, precision="float32")
    assert pred.threshold == pytest.approx(0.6) and pred.flagged_threshold == pytest.approx(0.3)
    assert pred.config.DETECTION_MASK_THRESHOLD == pytest.approx(0.4)
    assert pred.config.DETECTION_MIN_CONFIDENCE == pytest.approx(0.3), "the model's floor reaches the flagged threshold"
    assert inference.load_predictor(new, min_confidence=0.05).config.DETECTION_MIN_CONFIDENCE == pytest.approx(0.05)


def test_a_flagged_threshold_without_an_image_level_head_is_refused(exported, tmp_path):
    with pytest.raises(BrainTumorError, match="needs an image-level head"):
        R.export(exported["ckpt"], out=tmp_path / "models", flagged_threshold=0.3, equivalence_images=0,
                 log=lambda *a: None)
    assert not (tmp_path / "models").exists() or not R.find_releases(tmp_path / "models")


def test_one_loader_takes_a_release_or_a_checkpoint_and_can_insist_on_every_layer(exported, tmp_path):
    """``load_model_weights``: a release and a whole checkpoint fill the model; a checkpoint that lacks a
    layer loads the rest by name, or with ``complete=True`` is refused in one line naming the file."""
    import h5py

    from braintumor.mrcnn import MaskRCNN

    cfg = R.open_release(exported["head"]).config()
    model = MaskRCNN("inference", cfg, model_dir=tmp_path / "logs")
    assert R.load_model_weights(model, exported["head"], complete=True).complete
    assert R.load_model_weights(model, exported["ckpt"], complete=True).complete
    partial = tmp_path / "mask_rcnn_tiny_0002.h5"
    shutil.copyfile(exported["ckpt"], partial)
    with h5py.File(partial, "r+") as f:
        root = f["model_weights"] if "model_weights" in f else f
        del root[next(k for k in root if len(root[k].keys()))]
    assert not R.load_model_weights(model, partial).complete
    with pytest.raises(BrainTumorError) as e:
        R.load_model_weights(model, partial, complete=True)
    assert str(partial) in str(e.value) and "\n" not in str(e.value)


def test_release_embeds_a_region_scorer_that_detect_uses_and_carries_it_over(exported, tmp_path):
    """export --region-score: the scorer in the head (the checksum covers it), in the card, loaded by
    load_predictor so that detect() reports combined scores; released again, it stays; a bad file is one line."""
    from braintumor import inference
    from braintumor.region_score import RegionScore, build_scorer

    scorer = RegionScore(build_scorer(16, (4, 8)), size=16, widths=(4, 8), weight=0.4, detector_floor=0.1,
                         fit={"sets": {"thesis_train": {"images": 3}}})
    path = scorer.save(tmp_path / "rs.h5")
    card = R.export(exported["ckpt"], out=tmp_path / "models", region_score=str(path), equivalence_images=0,
                    log=lambda *a: None)
    head = R.find_releases(tmp_path / "models")[0]
    assert card["region_score"]["weight"] == 0.4 and card["region_score"]["parameters"] == scorer.model.count_params()
    assert "Region scorer" in R.render_card_markdown(card) and "thesis_train 3" in R.render_card_markdown(card)
    assert card["region_score"]["context"] == 1.5 and "(1.50 × its box)" in R.render_card_markdown(card)
    two = {**card, "region_score": {**card["region_score"], "context": [1.5, 3.0]}}  # a scorer of two crops
    assert "(1.50 and 3.00 × its box)" in R.render_card_markdown(two)
    got = R.open_release(head).region_score()
    rng = np.random.default_rng(0)
    crops, geometry = rng.normal(0, 50, (4, 16, 16, 1)).astype(np.float32), rng.uniform(-2, 1, (4, 4)).astype(np.float32)
    np.testing.assert_allclose(got.probability(crops, geometry), scorer.probability(crops, geometry), atol=1e-6)
    assert R.open_release(exported["head"]).region_score() is None, "a release without one says so"

    pred = inference.load_predictor(head, precision="float32", min_confidence=0.05)
    assert pred.region_score is not None and pred.model_config().DETECTION_MIN_CONFIDENCE == pytest.approx(0.05)
    image, _ = blob_image(SIZE, SIZE, [(30, 30, 80, 90)])
    r = pred.detect([image])[0]
    assert set(r) >= {"detector_scores", "region_scores", "image_features"} and len(r["scores"]) >= 1
    np.testing.assert_allclose(r["scores"], r["detector_scores"] ** 0.6 * r["region_scores"] ** 0.4, rtol=1e-4)
    assert (np.diff(r["scores"]) <= 0).all() and (r["scores"] >= 0.05).all()

    again = R.export(head, out=head.parent, replace=True, threshold=0.5, equivalence_images=0, log=lambda *a: None)
    assert again["region_score"]["weight"] == 0.4, "released again, the scorer stays as it was"
    head = R.find_releases(head.parent)[0]
    again = R.export(head, out=head.parent, replace=True, region_weight=0.25, equivalence_images=0, log=lambda *a: None)
    assert again["region_score"]["weight"] == 0.25 and R.open_release(R.find_releases(head.parent)[0]).region_score().weight == 0.25
    with pytest.raises(BrainTumorError, match="--region-weight needs a region scorer"):
        R.export(exported["ckpt"], out=tmp_path / "none", region_weight=0.3, equivalence_images=0, log=lambda *a: None)
    assert R.open_release(R.find_releases(head.parent)[0]).region_score() is not None

    (tmp_path / "bad.h5").write_text("no")
    with pytest.raises(BrainTumorError) as e:
        R.export(exported["ckpt"], out=tmp_path / "other", region_score=str(tmp_path / "bad.h5"), log=lambda *a: None)
    assert str(e.value).startswith(str(tmp_path / "bad.h5")) and "\n" not in str(e.value)


def test_release_embeds_two_scorers_read_as_one(exported, tmp_path):
    """export --region-score A --region-score B: both in the head, read back as a set whose region score is the
    geometric mean of the two; the card lists both; released again, the set stays."""
    from braintumor import inference
    from braintumor.mrcnn.inputs import mold_inputs
    from braintumor.region_score import RegionScore, RegionScoreSet, build_scorer

    a = RegionScore(build_scorer(16, (4, 8)), size=16, widths=(4, 8), weight=0.4, detector_floor=0.1,
                    fit={"sets": {"thesis_train": {"images": 3}}, "weights": "mask_rcnn_x_0030.h5", "seed": 1})
    b = RegionScore(build_scorer(24, (4, 8), 2), size=24, context=(1.5, 3.0), widths=(4, 8), weight=0.9,
                    fit={"sets": {"figshare_train": {"images": 5}}})
    paths = [str(a.save(tmp_path / "a.h5")), str(b.save(tmp_path / "b.h5"))]
    card = R.export(exported["ckpt"], out=tmp_path / "models", region_score=paths, equivalence_images=0,
                    log=lambda *a: None)
    head = R.find_releases(tmp_path / "models")[0]
    rs = card["region_score"]
    assert (rs["weight"], rs["detector_floor"], len(rs["members"])) == (0.4, 0.1, 2)
    assert rs["parameters"] == a.model.count_params() + b.model.count_params()
    md = R.render_card_markdown(card)
    assert "2 of them read as one" in md and "thesis_train 3" in md and "figshare_train 5" in md
    assert "fitted on the regions of `mask_rcnn_x_0030.h5`, seed 1 on thesis_train 3" in md, md
    got = R.open_release(head).region_score()
    assert isinstance(got, RegionScoreSet) and got.weight == 0.4

    pred = inference.load_predictor(head, precision="float32", min_confidence=0.05)
    image, _ = blob_image(SIZE, SIZE, [(30, 30, 80, 90)])
    r = pred.detect([image])[0]
    assert len(r["scores"]) >= 1
    molded, _, infos = mold_inputs([image], pred.model_config())
    kept = {"rois": r["rois"]}
    mean = np.sqrt(a.score_regions(kept, molded, infos[0]) * b.score_regions(kept, molded, infos[0]))
    np.testing.assert_allclose(r["region_scores"], mean, rtol=1e-4)
    np.testing.assert_allclose(r["scores"], r["detector_scores"] ** 0.6 * r["region_scores"] ** 0.4, rtol=1e-4)
    again = R.export(head, out=head.parent, replace=True, region_weight=0.3, equivalence_images=0, log=lambda *a: None)
    assert again["region_score"]["weight"] == 0.3 and len(again["region_score"]["members"]) == 2
