"""braintumor runs: run folders read from their text files, evaluations matched to their runs, bad files skipped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from braintumor.cli import main
from braintumor.runs import collect, format_runs

FIELDS = ["epoch", "loss", "val_loss", "learning_rate", "epoch_seconds", "wall_seconds"]


def make_run(logs: Path, folder: str, name: str, epochs: int, seconds: list[float], val_losses: list[float],
             seed: int = 1, init: str = "random") -> Path:
    run = logs / folder
    run.mkdir(parents=True)
    (run / "config.toml").write_text(f'NAME = "{name}"\nSEED = {seed}\nEPOCHS = {epochs}\n'
                                     f'STEPS_PER_EPOCH = 10\nINIT = "{init}"\n')
    with open(run / "history.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for i, (sec, vl) in enumerate(zip(seconds, val_losses), start=1):
            w.writerow([i, 3.0 - 0.1 * i, vl, 0.001, sec, sec * i])
            (run / f"mask_rcnn_{name}_{i:04d}.h5").write_bytes(b"")
    return run


def write_metrics(path: Path, weights: str, folder: str | None, n: int, dice: float, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = {"label": "val", "n_images": n}
    if folder:
        ds["folder"] = folder
    path.write_text(json.dumps({"weights": weights, "dataset": ds, "threshold": 0.3814,
                                "threshold_from": "operating point", "segmentation": {"dice_mean": dice},
                                "coco": {"segm": {"map50": 0.9}}, **extra}))
    return path


@pytest.fixture()
def logs(tmp_path):
    logs = tmp_path / "logs"
    a = make_run(logs, "a20261201T0100", "a", 3, [60, 60, 120], [2.0, 1.5, 1.7])
    make_run(logs, "long20261205T0622", "long", 70, [200] * 30, [3.0] * 30, seed=50, init="models/rel-abc.h5")
    write_metrics(logs / "evals" / "val" / "metrics.json", f"logs/{a.name}/mask_rcnn_a_0002.h5",
                  "../shared/data/brain_tumor_data", 61, 0.804,
                  tumor_free={"n_images": 204, "n_flagged": 7},
                  image_rule={"sensitivity": 0.984, "specificity": 0.966}, image_score_from="head.json")
    write_metrics(tmp_path / "out" / "fs" / "metrics.json", str(a / "mask_rcnn_a_0003.h5"), "/data/figshare", 298, 0.512,
                  by_category={"glioma": {"dice_mean": 0.213}, "meningioma": {"dice_mean": 0.75}})
    write_metrics(logs / "evals" / "other" / "metrics.json", "logs/elsewhere/mask_rcnn_x_0001.h5", None, 5, 0.1)
    (logs / "notes").mkdir()  # not a run folder: no config.toml
    return logs


def test_runs_progress_losses_and_time(logs):
    runs, problems = collect(logs)
    assert problems == []
    a, long = runs  # oldest first, by the folder's time stamp
    assert (a.name, a.seed, a.epochs_done, a.epochs_total, a.status) == ("a", 1, 3, 3, "done (3 epochs)")
    assert a.train_seconds == 240 and (a.best_val_loss, a.best_val_epoch) == (1.5, 2)
    assert a.last_loss == pytest.approx(2.7) and a.last_val_loss == 1.7
    assert long.status == "30 of 70 epochs" and long.init == "models/rel-abc.h5"


def test_evaluations_belong_to_the_run_that_holds_their_checkpoint(logs, tmp_path):
    runs, _ = collect(logs)
    assert [e["epoch"] for e in runs[0].evaluations] == [2]           # out/ is not searched unless asked
    assert runs[1].evaluations == []                                  # "elsewhere" is no run: not listed
    runs, _ = collect(logs, [tmp_path / "out"])
    val, fs = runs[0].evaluations
    assert (val["epoch"], val["n_images"], val["dice"], val["tumor_free_flagged"]) == (2, 61, 0.804, [7, 204])
    assert val["rule"] == {"sensitivity": 0.984, "specificity": 0.966, "head": "head.json"}
    assert (fs["epoch"], fs["data"], fs["by_category"]) == (3, "/data/figshare", {"glioma": 0.213, "meningioma": 0.75})
    text = format_runs(runs, logs)
    assert "| a20261201T0100 | 2 | brain_tumor_data/val | 61 | 0.3814 (op) | 0.804 | 0.900 | 7 of 204 | 0.984 / 0.966 |" in text
    assert "| a20261201T0100 | 3 | figshare/val | 298 |" in text and "glioma 0.213, meningioma 0.750" in text
    assert "| long20261205T0622 | long | 50 | rel-abc.h5 | 30 of 70 epochs | 300 | 1 h 40 min |" in text
    # the unfinished run, with the command that goes on
    assert f"long20261205T0622: 30 of 70 epochs; to go on: braintumor train --config {logs / 'long20261205T0622' / 'config.toml'} --init last" in text


def test_an_average_shows_its_members(logs):
    avg = make_run(logs, "avg_x", "a", 3, [60, 60, 120], [2.0, 1.5, 1.7])
    (avg / "average.json").write_text(json.dumps({"members": [{"path": "models/rel.h5", "coefficient": 0.75},
                                                              {"path": "logs/r/mask_rcnn_a_0003.h5", "coefficient": 0.25}]}))
    (run,) = [r for r in collect(logs)[0] if r.folder == avg]
    assert run.init == "average of 0.75 × rel.h5 + 0.25 × mask_rcnn_a_0003.h5" and run.train_seconds == 0


def test_cli_json_name_filter_and_bad_files(logs, capsys):
    (logs / "evals" / "broken").mkdir()
    (logs / "evals" / "broken" / "metrics.json").write_text("{not json")
    bad = logs / "bad20261130T0900"
    bad.mkdir()
    (bad / "config.toml").write_text("EPOCHS = [")
    (bad / "history.csv").write_text("epoch,loss\n1,2.0\n")
    assert main(["runs", "--logs", str(logs), "--json"]) == 0
    out, err = capsys.readouterr()
    rows = {Path(r["folder"]).name: r for r in json.loads(out)}
    assert set(rows) == {"bad20261130T0900", "a20261201T0100", "long20261205T0622"}
    assert rows["bad20261130T0900"]["epochs_done"] == 1 and rows["bad20261130T0900"]["name"] is None
    assert f"warning: {bad / 'config.toml'}: unreadable" in err
    assert f"warning: {logs / 'evals' / 'broken' / 'metrics.json'}: unreadable" in err
    assert main(["runs", "--logs", str(logs), "--name", "LONG"]) == 0
    out = capsys.readouterr().out
    assert "long20261205T0622" in out and "a20261201T0100" not in out


def test_missing_logs_folder_is_one_line(tmp_path, capsys):
    assert main(["runs", "--logs", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'nowhere'}: logs folder not found (braintumor train writes its runs there; pass --logs)"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["runs", "--logs", str(empty)]) == 0
    assert capsys.readouterr().out.strip() == f"No training runs in {empty}."


def test_run_folder_and_checkpoint_names_are_read_by_one_rule(tmp_path):
    from braintumor.inference import find_checkpoints, find_run_dirs
    from braintumor.paths import checkpoint_epoch, run_stamp

    assert run_stamp(Path("logs/tumorfs1020261205T0203")) == "20261205T0203"
    assert run_stamp("avg_det") is None and run_stamp("tumorfs10") is None
    assert checkpoint_epoch(Path("run/mask_rcnn_tumorfs10_0022.h5")) == 22
    assert checkpoint_epoch("mask_rcnn_tumor_12345.h5") == 12345
    for other in ("mask_rcnn_tumor_22.h5", "tumorfs-resnet101-f6368f50.h5", "mask_rcnn_tumor_0022.h5.tmp", "x_0022.h5"):
        assert checkpoint_epoch(other) is None, other
    make_run(tmp_path, "tumorfs120261201T0900", "tumorfs1", 2, [5.0, 5.0], [3.0, 2.9])
    ten = make_run(tmp_path, "tumorfs1020261205T0203", "tumorfs10", 3, [5.0] * 3, [3.0, 2.9, 2.8])
    (ten / "mask_rcnn_tumorfs10_0003.h5.tmp").write_bytes(b"")  # an unfinished write is no checkpoint
    (tmp_path / "avg_det").mkdir()
    assert [d.name for d in find_run_dirs(tmp_path, "tumorfs10")] == ["tumorfs1020261205T0203"]
    assert [d.name for d in find_run_dirs(tmp_path, "tumorfs1")] == ["tumorfs120261201T0900"]
    assert [p.name for p in find_checkpoints(tmp_path)][:2] == ["mask_rcnn_tumorfs10_0003.h5", "mask_rcnn_tumorfs10_0002.h5"]
    assert len(find_checkpoints(tmp_path)) == 5
