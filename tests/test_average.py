"""Weight averaging (braintumor.average): the mean is exact, the run folder is complete, bad input is refused."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from braintumor.average import average_weights, coefficients
from braintumor.cli import main
from braintumor.errors import BrainTumorError
from mrcnn_testutil import tiny_config

SIZE = 64


def _run(logs: Path, stamp: str, epoch: int, seed: int, **overrides) -> Path:
    """A run folder (config.toml, history.csv, data.json) with one checkpoint of a randomly initialised tiny model."""
    import keras

    from braintumor.mrcnn import MaskRCNN

    keras.utils.set_random_seed(seed)
    cfg = tiny_config(NAME="tiny", IMAGE_MIN_DIM=SIZE, IMAGE_MAX_DIM=SIZE, SEED=seed, **overrides)
    run = logs / f"tiny{stamp}"
    run.mkdir(parents=True)
    cfg.save(run / "config.toml")
    model = MaskRCNN("training", cfg, model_dir=logs)
    ckpt = run / f"mask_rcnn_tiny_{epoch:04d}.h5"
    model.save_weights(ckpt, epoch=epoch)
    rows = "".join(f"{e},1.0,0.9,{10 + e}\n" for e in range(1, epoch + 3))  # the run went on past this checkpoint
    (run / "history.csv").write_text("epoch,loss,val_loss,epoch_seconds\n" + rows)
    (run / "data.json").write_text(json.dumps({"val": {"images": 61}}))
    return ckpt


def _datasets(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    logs = tmp_path_factory.mktemp("avg") / "logs"
    return _run(logs, "20240101T0000", epoch=3, seed=1), _run(logs, "20240102T0000", epoch=5, seed=2)


def test_coefficients_are_normalised_and_bad_ones_refused():
    assert coefficients(4, None) == [0.25] * 4
    assert coefficients(2, [1, 3]) == [0.25, 0.75]
    for n, c in [(1, None), (2, [1.0]), (2, [1.0, -1.0]), (2, [0.0, 0.0]), (2, [1.0, float("nan")])]:
        with pytest.raises(BrainTumorError):
            coefficients(n, c)


def test_every_weight_is_the_weighted_mean_and_the_folder_reads_like_the_base_run(two_runs, tmp_path):
    a, b = two_runs
    out = tmp_path / "soup"
    ckpt = average_weights([a, b], out, coefs=[1, 3], log=lambda *x: None)
    assert ckpt == out / "mask_rcnn_tiny_0005.h5"  # named by the base member (the last checkpoint)'s epoch
    wa, wb, wm = _datasets(a), _datasets(b), _datasets(ckpt)
    assert set(wm) == set(wa) == set(wb) and len(wm) > 100
    differing = 0
    for k in wm:
        np.testing.assert_allclose(wm[k], 0.25 * wa[k] + 0.75 * wb[k], rtol=1e-6, atol=1e-7, err_msg=k)
        differing += not np.array_equal(wa[k], wb[k])
    assert differing > 50  # every kernel differs (zero biases and unit GroupNorm gammas do not): the mean is neither member
    assert (out / "config.toml").read_text() == (b.parent / "config.toml").read_text()
    hist = (out / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in hist[1:]] == ["1", "2", "3", "4", "5"]  # rows past the member's epoch dropped
    assert (out / "data.json").is_file()
    record = json.loads((out / "average.json").read_text())
    assert [m["coefficient"] for m in record["members"]] == [0.25, 0.75]
    assert [m["epoch"] for m in record["members"]] == [3, 5]
    assert all(len(m["sha256"]) == 64 for m in record["members"])


def test_the_average_loads_for_inference_and_detects(two_runs, tmp_path):
    from braintumor.inference import load_predictor

    ckpt = average_weights(list(two_runs), tmp_path / "soup", log=lambda *x: None)
    predictor = load_predictor(ckpt)
    r = predictor.detect([np.zeros((SIZE, SIZE, 3), np.uint8)])[0]
    assert predictor.load_report.complete
    assert r["masks"].shape[:2] == (SIZE, SIZE)
    from braintumor import release as R

    card = R.export(ckpt, out=tmp_path / "models", threshold=0.5, equivalence_images=0, log=lambda *x: None)
    members = card["training"]["average"]["members"]
    assert [m["sha256"] for m in members] == [R.sha256_file(p) for p in two_runs], "the card names the members"


def test_a_release_can_be_a_member(two_runs, tmp_path):
    from braintumor import release as R

    a, b = two_runs
    R.export(a, out=tmp_path / "models", threshold=0.5, log=lambda *x: None)
    head = R.find_releases(tmp_path / "models")[0]
    ckpt = average_weights([head, b], tmp_path / "soup", log=lambda *x: None)
    wa, wb, wm = _datasets(a), _datasets(b), _datasets(ckpt)
    for k in wm:  # the release stores float16: its half of the mean is within float16 rounding
        np.testing.assert_allclose(wm[k], 0.5 * wa[k] + 0.5 * wb[k], rtol=2e-3, atol=1e-4, err_msg=k)


def test_another_architecture_is_refused_in_one_line_naming_the_file(two_runs, tmp_path, capsys):
    other = _run(tmp_path / "logs", "20240103T0000", epoch=1, seed=3, TOP_DOWN_PYRAMID_SIZE=16)
    with pytest.raises(BrainTumorError, match=str(other)):
        average_weights([other, two_runs[1]], tmp_path / "soup", log=lambda *x: None)
    rc = main(["average", "--weights", str(two_runs[0]), "--weights", str(tmp_path / "missing.h5"),
               "--out", str(tmp_path / "soup2")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "missing.h5" in err


def test_a_folder_that_already_holds_a_checkpoint_is_not_overwritten(two_runs, tmp_path):
    out = tmp_path / "soup"
    first = average_weights(list(two_runs), out, log=lambda *x: None)
    before = first.read_bytes()
    with pytest.raises(BrainTumorError, match="already holds a checkpoint"):
        average_weights(list(two_runs), out, coefs=[1, 9], log=lambda *x: None)
    assert first.read_bytes() == before
