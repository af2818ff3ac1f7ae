"""Config: defaults, presets, validation, derived values, TOML round trip."""

from pathlib import Path

import pytest

from braintumor.config import DEFAULTS, COMMENTS, Config, ConfigError, load_config
from braintumor.paths import PRESETS_DIR, resolve_preset

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_has_a_comment():
    assert set(DEFAULTS) == set(COMMENTS)
    assert all(len(c) > 10 for c in COMMENTS.values())


def test_2022_preset_matches_the_2022_run():
    c = Config.from_toml(ROOT / "mrcnn_config" / "resnet101_2022.toml")
    assert c.BACKBONE == "resnet101"
    assert c.NUM_CLASSES == 2 and c.CLASS_NAMES == ["BG", "tumor"]
    assert (c.EPOCHS, c.STEPS_PER_EPOCH, c.LEARNING_RATE) == (15, 100, 0.001)
    assert c.DETECTION_MIN_CONFIDENCE == 0.85
    assert (c.NORM, c.TRAIN_BN, c.WARMUP_STEPS, c.LR_DECAY) == ("bn", False, 0, "none")
    assert c.RPN_ANCHOR_SCALES == [32, 64, 128, 256, 512]
    assert c.IMAGE_RESIZE_MODE == "square" and c.IMAGE_SHAPE == [512, 512, 3]
    assert c.BACKBONE_SHAPES[0] == [128, 128] and c.BACKBONE_SHAPES[-1] == [8, 8]


def test_shipped_preset_keeps_the_thesis_shape_and_trains_from_scratch():
    c = Config.from_toml(ROOT / "mrcnn_config" / "resnet101.toml")
    assert (c.BACKBONE, c.EPOCHS, c.STEPS_PER_EPOCH, c.IMAGE_SHAPE) == ("resnet101", 15, 100, [512, 512, 3])
    assert c.NORM == "gn" and c.LR_DECAY == "cosine" and c.WARMUP_STEPS > 0
    assert max(c.RPN_ANCHOR_SCALES) <= 256 and 0 < c.TUMOR_FREE_FRACTION < 0.5


@pytest.mark.parametrize("preset", sorted(p.name for p in PRESETS_DIR.glob("*.toml")))
def test_every_preset_loads(preset):
    from braintumor.augment import build_augmentation
    from braintumor.copy_paste import validate

    c = Config.from_toml(PRESETS_DIR / preset)
    assert c.BATCH_SIZE == c.IMAGES_PER_GPU * c.GPU_COUNT
    build_augmentation(c.AUGMENTATION)
    validate(c.COPY_PASTE, [s["NAME"] for s in c.SOURCES] if c.SOURCES else None)


def test_quick_preset_is_small():
    c = Config.from_toml(resolve_preset("quick"))
    assert c.IMAGE_MAX_DIM <= 256 and c.BACKBONE == "resnet50"


def test_unknown_key_names_file_and_key(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('NAME = "x"\nLEARNIG_RATE = 0.1\n')
    with pytest.raises(ConfigError) as e:
        Config.from_toml(p)
    msg = str(e.value)
    assert "bad.toml" in msg and "LEARNIG_RATE" in msg and "\n" not in msg


@pytest.mark.parametrize("key,value,needle", [
    ("IMAGE_MAX_DIM", 500, "multiple of 64"),
    ("BACKBONE", "vgg16", "BACKBONE"),
    ("DETECTION_MIN_CONFIDENCE", 1.5, "DETECTION_MIN_CONFIDENCE"),
    ("DETECTION_FLAGGED_MIN_CONFIDENCE", -0.1, "DETECTION_FLAGGED_MIN_CONFIDENCE"),
    ("DETECTION_MASK_THRESHOLD", 1.0, "DETECTION_MASK_THRESHOLD"),
    ("DETECTION_MASK_THRESHOLD", 0.0, "DETECTION_MASK_THRESHOLD"),
    ("NUM_CLASSES", 3, "CLASS_NAMES"),
    ("STEPS_PER_EPOCH", 0, "STEPS_PER_EPOCH"),
    ("LAYERS", "6+", "LAYERS"),
    ("NORM", "layernorm", "NORM"),
    ("MASK_SHAPE", [14, 14], "MASK_SHAPE"),
    ("LEARNING_RATE", -1, "LEARNING_RATE"),
    ("SCHEDULE", [{"epochs": 2, "layers": "heads"}], "SCHEDULE"),
    ("GRADIENT_ACCUMULATION_STEPS", 0, "GRADIENT_ACCUMULATION_STEPS"),
    ("GRADIENT_ACCUMULATION_STEPS", 3, r"STEPS_PER_EPOCH \(100\) must be a multiple"),
])
def test_impossible_values_are_rejected(key, value, needle):
    with pytest.raises(ConfigError, match=needle):
        Config({key: value})


def test_bad_toml_is_one_line(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("NAME = \n")
    with pytest.raises(ConfigError) as e:
        Config.from_toml(p)
    assert "broken.toml" in str(e.value) and "TOML" in str(e.value)
    with pytest.raises(ConfigError, match="not found"):
        Config.from_toml(tmp_path / "missing.toml")


def test_toml_round_trip(tmp_path):
    c = Config.from_toml(PRESETS_DIR / "resnet101.toml", EPOCHS=3, SCHEDULE=[
        {"epochs": 1, "layers": "heads", "learning_rate": 0.01}, {"epochs": 2, "layers": "all"}])
    p = tmp_path / "config.toml"
    c.save(p)
    d = Config.from_toml(p)
    assert d.to_dict() == c.to_dict()
    assert d.schedule() == [{"epochs": 1, "layers": "heads", "learning_rate": 0.01},
                            {"epochs": 2, "layers": "all", "learning_rate": c.LEARNING_RATE}]
    assert not list(tmp_path.glob("*.tmp"))


def test_overrides_and_display(capsys):
    c = load_config(None, EPOCHS=3, STEPS_PER_EPOCH=None)
    assert c.EPOCHS == 3 and c.STEPS_PER_EPOCH == DEFAULTS["STEPS_PER_EPOCH"]
    text = c.display()
    assert "LEARNING_RATE" in capsys.readouterr().out and "IMAGE_SHAPE" in text
    assert c.replace(IMAGE_MIN_DIM=256, IMAGE_MAX_DIM=256).IMAGE_SHAPE == [256, 256, 3]
    assert c.schedule() == [{"epochs": 3, "layers": "all", "learning_rate": c.LEARNING_RATE}]


def test_sources_and_class_map_round_trip_through_the_run_config(tmp_path):
    from braintumor.config import Config

    for preset in ("resnet101_figshare", "resnet101_figshare_stage5"):  # stage 5: a source with a CATEGORIES list
        c = Config.from_toml(ROOT / "mrcnn_config" / f"{preset}.toml")
        assert c.SOURCES and c.CLASS_MAP and c.AUGMENTATION
        c = c.replace(EPOCHS=5, SCHEDULE=[{"epochs": 2, "layers": "heads"}, {"epochs": 3, "layers": "all", "learning_rate": 0.01}])
        c.save(tmp_path / "config.toml")
        back = Config.from_toml(tmp_path / "config.toml")  # the keys after the sources must not fall into the last one
        assert back.SOURCES == c.SOURCES and back.CLASS_MAP == c.CLASS_MAP and back.to_dict() == c.to_dict()
        assert back.SCHEDULE[1]["learning_rate"] == 0.01 and back.LEARNING_RATE == c.LEARNING_RATE


def test_a_preset_starts_from_its_base_and_overrides_it(tmp_path):
    (tmp_path / "base.toml").write_text(
        'NAME = "base"\nEPOCHS = 20\nLEARNING_RATE = 0.001\n'
        '[[SOURCES]]\nNAME = "a"\nKIND = "split"\nWEIGHT = 0.5\n[[SOURCES]]\nNAME = "b"\nKIND = "tumor_free"\nWEIGHT = 0.5\n'
        '[AUGMENTATION]\nHORIZONTAL_FLIP = 0.5\nROTATE = 15\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.toml").write_text(
        'BASE = "../base.toml"\nNAME = "child"\nEPOCHS = 5\n[[SOURCES]]\nNAME = "a"\nKIND = "split"\nWEIGHT = 1.0\n'
        '[AUGMENTATION]\nROTATE = 5\n')
    (tmp_path / "sub" / "grandchild.toml").write_text('BASE = "child.toml"\nSEED = 7\n')
    c = Config.from_toml(tmp_path / "sub" / "grandchild.toml", EPOCHS=3)
    assert (c.NAME, c.EPOCHS, c.LEARNING_RATE, c.SEED) == ("child", 3, 0.001, 7)
    assert [s["NAME"] for s in c.SOURCES] == ["a"], "a list of tables replaces the base's as a whole"
    assert c.AUGMENTATION["ROTATE"] == 5 and c.AUGMENTATION["HORIZONTAL_FLIP"] == 0.5, "a table is merged key by key"
    assert "BASE" not in c.to_toml(), "a run's saved config is the resolved one"


@pytest.mark.parametrize("files, needle", [
    ({"a.toml": 'BASE = "b.toml"\n', "b.toml": 'BASE = "a.toml"\n'}, "cycle (a.toml -> b.toml -> a.toml)"),
    ({"a.toml": 'BASE = "missing.toml"\n'}, "missing.toml: config file not found"),
    ({"a.toml": "BASE = 3\n"}, "BASE must be a preset file name"),
])
def test_a_bad_base_is_one_line_naming_the_file(tmp_path, files, needle):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as e:
        Config.from_toml(tmp_path / "a.toml")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_stage_presets_differ_from_the_release_preset_only_where_they_say():
    from braintumor.paths import PRESETS_DIR

    base = Config.from_toml(PRESETS_DIR / "resnet101_figshare_stage6.toml").to_dict()
    stage9 = Config.from_toml(PRESETS_DIR / "resnet101_figshare_stage9.toml").to_dict()
    assert {k for k in base if base[k] != stage9[k]} == {"NAME", "SEED", "EPOCHS", "LEARNING_RATE"}
    stage8 = Config.from_toml(PRESETS_DIR / "resnet101_figshare_stage8.toml")
    assert [s["WEIGHT"] for s in stage8.SOURCES] == [0.45, 0.15, 0.05, 0.35]
