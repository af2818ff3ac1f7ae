"""`braintumor data preview`: a preset's training samples, augmented and pasted, as one PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from braintumor.cli import main
from mrcnn_testutil import TINY
from test_train import write_via_split


@pytest.fixture()
def two_sources(tmp_path):
    """``data/brain_tumor_data/{train,val}`` and a second source ``data/more/train`` (4 synthetic scans
    each), and a preset pasting brain_tumor_data's tumors into every image of ``more``."""
    import tomli_w

    data = tmp_path / "data"
    write_via_split(data / "brain_tumor_data" / "train", 4, seed=1)
    write_via_split(data / "brain_tumor_data" / "val", 2, seed=50)
    write_via_split(data / "more" / "train", 4, seed=9)
    for png in [*(data / "brain_tumor_data" / "train").glob("*.png"), *(data / "more" / "train").glob("*.png")]:
        Image.fromarray(np.maximum(np.asarray(Image.open(png)), 60)).save(png)  # the whole square is "head"
    preset = tmp_path / "paste.toml"
    preset.write_text(tomli_w.dumps({
        **TINY, "STEPS_PER_EPOCH": 4,
        "SOURCES": [{"NAME": "brain_tumor_data", "KIND": "split", "SPLIT": "train", "WEIGHT": 0.5},
                    {"NAME": "more", "KIND": "split", "SPLIT": "train", "WEIGHT": 0.5}],
        "COPY_PASTE": {"P": 1.0, "SOURCES": ["brain_tumor_data"], "RECEIVERS": ["more"]}}))
    return data / "brain_tumor_data", preset


def test_preview_draws_a_pass_of_both_sources_with_the_pasted_tumors(two_sources, tmp_path, capsys):
    from braintumor.config import Config
    from braintumor.preview import contact_sheet, preview_samples

    data, preset = two_sources
    cfg = Config.from_toml(preset)
    samples = preview_samples(cfg, data, n=4, seed=0)
    assert sorted(s["source"] for s in samples) == ["brain_tumor_data", "brain_tumor_data", "more", "more"]
    for s in samples:
        assert s["image"].shape == (cfg.IMAGE_MAX_DIM, cfg.IMAGE_MAX_DIM, 3)
        assert s["pasted"] == (s["source"] == "more")
        assert s["masks"].shape[2] == (2 if s["pasted"] else 1), "its own tumor, and the pasted one"
    sheet = contact_sheet(samples, tile=64, columns=2)
    assert sheet.shape == (128, 128, 3)
    red = (sheet[:, :, 0] == 255) & (sheet[:, :, 1] == 40)
    assert red.any(), "the pasted tumors are outlined in red"

    out = tmp_path / "sheets" / "preview.png"
    assert main(["data", "preview", "--config", str(preset), "--data", str(data), "--n", "4", "--out", str(out)]) == 0
    assert Image.open(out).size == (4 * 256, 256)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"wrote {out}: 4 samples (brain_tumor_data 2, more 2), 2 with a pasted tumor")


def test_preview_errors_are_one_line(two_sources, tmp_path, capsys):
    data, preset = two_sources
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for argv, needle in (
            (["--n", "0", "--out", str(tmp_path / "a.png")], "--n must be at least 1"),
            (["--source", "nosuch=x", "--out", str(tmp_path / "a.png")], "--source nosuch"),
            (["--out", str(blocker / "a.png")], f"{blocker / 'a.png'}: cannot write the preview")):
        assert main(["data", "preview", "--config", str(preset), "--data", str(data), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not np.any([p.name.endswith(".tmp.png") for p in tmp_path.rglob("*")])
