"""model-summary: layer groups and parameter counts."""

from braintumor.cli import main
from braintumor.mrcnn.model import build_inference_model
from braintumor.mrcnn.summary import format_summary, group_of, layer_groups
from mrcnn_testutil import TINY, tiny_config


def test_group_of_names():
    assert [group_of(n) for n in ("conv1", "bn_conv1", "res2a_branch2a", "bn3d_branch2c", "res4w_branch1",
                                  "bn5c_branch2b", "fpn_c5p5", "rpn_model", "mrcnn_mask_bn4", "ROI")] == \
        ["conv1", "conv1", "res2", "res3", "res4", "res5", "fpn", "rpn", "heads", "other"]


def test_layer_groups_add_up_to_the_model():
    cfg = tiny_config()
    m = build_inference_model(cfg)
    groups = layer_groups(m)
    assert sum(g["trainable"] + g["non_trainable"] for g in groups.values()) == m.count_params()
    assert sum(g["trainable"] for g in groups.values()) == sum(int(w.numpy().size) for w in m.trainable_weights)
    assert groups["res4"]["layers"] == 6 * 3 * 2 + 2 and groups["rpn"]["layers"] == 1
    assert groups["conv1"]["non_trainable"] == 4 * 64  # frozen BN: gamma, beta, mean, variance
    text = format_summary(m, cfg, "inference")
    assert "total" in text and f"{m.count_params():,d}" in text


def test_cli_model_summary_tiny_preset(tmp_path, capsys):
    import tomli_w

    preset = tmp_path / "tiny.toml"
    preset.write_text(tomli_w.dumps(TINY))
    assert main(["model-summary", "--config", str(preset), "--mode", "training"]) == 0
    out = capsys.readouterr().out
    assert "resnet50" in out and "heads" in out and "res5" in out


def test_cli_model_summary_resnet101_preset(capsys):
    assert main(["model-summary", "--config", "mrcnn_config/resnet101.toml"]) == 0
    out = capsys.readouterr().out
    total = [line for line in out.splitlines() if line.startswith("total")][0]
    assert int(total.split()[-1].replace(",", "")) > 60_000_000
    res4 = [line for line in out.splitlines() if line.startswith("res4")][0]
    assert res4.split()[1] == str(23 * 3 * 2 + 2)  # 23 bottlenecks of 3 conv + 3 BN, plus the projection


def test_cli_missing_preset_is_one_line_error(capsys):
    assert main(["model-summary", "--config", "nope/missing.toml"]) == 2
    assert "config file not found" in capsys.readouterr().err
