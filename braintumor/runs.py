"""``braintumor runs``: the training runs in a logs folder and the evaluations made of them, side by side.

A run folder is what ``braintumor train`` writes (``config.toml`` and ``history.csv``, see
:mod:`braintumor.train`). For each one: its preset ``NAME``, seed and starting weights, how many of
its ``EPOCHS`` are done (a run trained in sittings with ``--stop-after`` shows where it stands and
the command that goes on), its training time, and its last and best val loss; a folder of
``braintumor average`` shows its members instead of a start. An evaluation is a
``metrics.json`` of ``braintumor evaluate`` anywhere under the folders searched (the logs folder,
and ``--evals`` folders such as ``out/``); it belongs to the run whose folder holds the checkpoint it
measured, and is shown with the epoch of that checkpoint, the data it was measured on, the threshold
and the figures a run is judged by (Dice, mask mAP@0.5, tumor-free slices flagged, the image-level
rule, Dice per tumor type).

    braintumor runs [--logs logs] [--evals out] [--name tumorfs] [--json]

Nothing here needs TensorFlow: it reads text files only, and an unreadable one is reported in one
line and skipped.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from braintumor.errors import BrainTumorError
from braintumor.paths import checkpoint_epoch, read_history, run_stamp

@dataclass
class Run:
    """One run folder, as read from its ``config.toml`` and ``history.csv``."""

    folder: Path
    name: str | None = None
    seed: int | None = None
    init: str | None = None
    epochs_total: int | None = None
    epochs_done: int = 0
    steps_per_epoch: int | None = None
    train_seconds: float = 0.0
    last_loss: float | None = None
    last_val_loss: float | None = None
    best_val_loss: float | None = None
    best_val_epoch: int | None = None
    last_written: str | None = None       # UTC time history.csv was last written
    evaluations: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.epochs_total is None:
            return f"{self.epochs_done} epochs"
        if self.epochs_done >= self.epochs_total:
            return f"done ({self.epochs_total} epochs)"
        return f"{self.epochs_done} of {self.epochs_total} epochs"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["folder"] = str(self.folder)
        d["status"] = self.status
        return d


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f else None  # NaN -> None


def read_run(folder: Path) -> Run:
    """A :class:`Run` from ``folder``; what cannot be read goes to ``problems``, never an exception."""
    import tomllib

    run = Run(folder=folder)
    try:
        cfg = tomllib.loads((folder / "config.toml").read_text(encoding="utf-8"))
        run.name, run.seed = cfg.get("NAME"), cfg.get("SEED")
        run.init = None if cfg.get("INIT") is None else str(cfg.get("INIT"))
        run.epochs_total, run.steps_per_epoch = cfg.get("EPOCHS"), cfg.get("STEPS_PER_EPOCH")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        run.problems.append(f"{folder / 'config.toml'}: unreadable ({e})")
    try:
        rows = read_history(folder / "history.csv")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        rows = []
        run.problems.append(f"{folder / 'history.csv'}: unreadable ({e})")
    epochs = [int(r["epoch"]) for r in rows if str(r.get("epoch", "")).isdigit()]
    checkpoints = [e for p in folder.glob("mask_rcnn_*.h5") if (e := checkpoint_epoch(p)) is not None]
    run.epochs_done = max(epochs + checkpoints, default=0)
    run.train_seconds = sum(_float(r.get("epoch_seconds")) or 0.0 for r in rows)
    if rows:
        run.last_loss, run.last_val_loss = _float(rows[-1].get("loss")), _float(rows[-1].get("val_loss"))
        vals = [(v, int(r["epoch"])) for r in rows if (v := _float(r.get("val_loss"))) is not None
                and str(r.get("epoch", "")).isdigit()]
        if vals:
            run.best_val_loss, run.best_val_epoch = min(vals)
        stamp = (folder / "history.csv").stat().st_mtime
        run.last_written = datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if (folder / "average.json").is_file():  # braintumor average: no training of its own
        try:
            members = json.loads((folder / "average.json").read_text(encoding="utf-8"))["members"]
            run.init = "average of " + " + ".join(f"{float(m['coefficient']):g} × {Path(m['path']).name}"
                                                  for m in members)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            run.init = "average"
            run.problems.append(f"{folder / 'average.json'}: unreadable ({e})")
        run.train_seconds = 0.0  # its history.csv is the base member's, copied
    return run


def summarize_metrics(metrics: dict, path: Path) -> dict[str, Any]:
    """The figures of one ``metrics.json`` that a run is compared by (None where it has none)."""
    ds = metrics.get("dataset") or {}
    weights = str(metrics.get("weights") or "")
    out: dict[str, Any] = {
        "path": str(path), "weights": weights, "epoch": checkpoint_epoch(Path(weights)) if weights else None,
        "data": ds.get("folder") or None, "label": ds.get("label"), "n_images": ds.get("n_images"),
        "threshold": _float(metrics.get("threshold")), "threshold_from": metrics.get("threshold_from"),
        "precision": metrics.get("precision"),
        "dice": _float((metrics.get("segmentation") or {}).get("dice_mean")),
        "mask_map50": _float(((metrics.get("coco") or {}).get("segm") or {}).get("map50")),
        "tumor_free_flagged": None, "rule": None, "by_category": {},
    }
    free = metrics.get("tumor_free")
    if free and free.get("n_images"):
        out["tumor_free_flagged"] = [int(free.get("n_flagged", 0)), int(free["n_images"])]
    rule = metrics.get("image_rule")
    if rule:
        out["rule"] = {"sensitivity": _float(rule.get("sensitivity")), "specificity": _float(rule.get("specificity")),
                       "head": metrics.get("image_score_from")}
    for cat, c in (metrics.get("by_category") or {}).items():
        out["by_category"][cat] = _float(c.get("dice_mean"))
    return out


def find_evaluations(roots: list[Path], problems: list[str]) -> list[dict[str, Any]]:
    """Every evaluation report under ``roots`` (``metrics.json`` with a ``weights`` entry)."""
    found, seen = [], set()
    for root in roots:
        for path in sorted(Path(root).rglob("metrics.json")):
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                metrics = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as e:
                problems.append(f"{path}: unreadable ({e})")
                continue
            if isinstance(metrics, dict) and metrics.get("weights"):
                found.append(summarize_metrics(metrics, path))
    return found


def _sort_key(folder: Path) -> tuple:
    return (run_stamp(folder) or datetime.fromtimestamp(folder.stat().st_mtime).strftime("%Y%m%dT%H%M"), folder.name)


def collect(logs: Path, evals: list[Path] | None = None, name: str | None = None) -> tuple[list[Run], list[str]]:
    """The runs in ``logs`` (oldest first; ``name``: only folders whose name contains it), each with its
    evaluations found under ``logs`` and ``evals``; and the problems met on the way."""
    logs = Path(logs)
    if not logs.is_dir():
        raise BrainTumorError(f"{logs}: logs folder not found (braintumor train writes its runs there; pass --logs)")
    problems: list[str] = []
    folders = [d for d in logs.iterdir() if d.is_dir() and (d / "config.toml").is_file()
               and ((d / "history.csv").is_file() or any(d.glob("mask_rcnn_*.h5")))]
    if name:
        folders = [d for d in folders if name.lower() in d.name.lower()]
    runs = [read_run(d) for d in sorted(folders, key=_sort_key)]
    by_folder = {r.folder.name: r for r in runs}
    for ev in find_evaluations([logs] + [Path(e) for e in evals or []], problems):
        run = by_folder.get(Path(ev["weights"]).parent.name)
        if run is not None:
            run.evaluations.append(ev)
    for run in runs:
        run.evaluations.sort(key=lambda e: (e["epoch"] if e["epoch"] is not None else -1, e["path"]))
        problems += run.problems
    return runs, problems


def _num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _duration(seconds: float) -> str:
    if not seconds:
        return "–"
    h, m = divmod(int(round(seconds / 60)), 60)
    return f"{h} h {m:02d} min" if h else f"{m} min"


def format_runs(runs: list[Run], logs: Path) -> str:
    """Markdown: a table of the runs, then one of their evaluations, then how to go on with unfinished runs."""
    if not runs:
        return f"No training runs in {logs}."
    lines = ["| run folder | NAME | seed | from | epochs | steps | training time | last loss / val loss "
             "| best val loss (epoch) | last written |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---|"]
    for r in runs:
        steps = r.epochs_done * r.steps_per_epoch if r.steps_per_epoch else None
        best = f"{_num(r.best_val_loss)} ({r.best_val_epoch})" if r.best_val_loss is not None else "–"
        lines.append(f"| {r.folder.name} | {r.name or '?'} | {r.seed if r.seed is not None else '?'} "
                     f"| {(r.init if r.init.startswith('average') else Path(r.init).name) if r.init else '?'} | {r.status} | {steps if steps is not None else '?'} "
                     f"| {_duration(r.train_seconds)} | {_num(r.last_loss)} / {_num(r.last_val_loss)} | {best} "
                     f"| {r.last_written or '–'} |")
    evals = [(r, e) for r in runs for e in r.evaluations]
    if evals:
        lines += ["", "| run folder | epoch | data | images | threshold | Dice | mask mAP@0.5 | tumor-free flagged "
                  "| rule sensitivity / specificity | Dice by type | report |",
                  "|---|---:|---|---:|---|---:|---:|---:|---:|---|---|"]
        for r, e in evals:
            data = f"{Path(e['data']).name}/{e['label']}" if e["data"] else (e["label"] or "?")
            th = _num(e["threshold"], 4) + (" (op)" if e["threshold_from"] == "operating point" else "")
            free = f"{e['tumor_free_flagged'][0]} of {e['tumor_free_flagged'][1]}" if e["tumor_free_flagged"] else "–"
            rule = (f"{_num(e['rule']['sensitivity'])} / {_num(e['rule']['specificity'])}"
                    if e["rule"] and e["rule"]["sensitivity"] is not None else "–")
            types = ", ".join(f"{k} {_num(v)}" for k, v in e["by_category"].items()) or "–"
            lines.append(f"| {r.folder.name} | {e['epoch'] if e['epoch'] is not None else '?'} | {data} "
                         f"| {e['n_images'] if e['n_images'] is not None else '?'} | {th} | {_num(e['dice'])} "
                         f"| {_num(e['mask_map50'])} | {free} | {rule} | {types} | {e['path']} |")
    unfinished = [r for r in runs if r.epochs_total is not None and r.epochs_done < r.epochs_total]
    if unfinished:
        lines += [""] + [f"{r.folder.name}: {r.status}; to go on: braintumor train --config "
                         f"{r.folder / 'config.toml'} --init last [--data DIR] [--stop-after N]" for r in unfinished]
    return "\n".join(lines)


def cli_runs(args) -> int:
    runs, problems = collect(Path(args.logs), [Path(e) for e in args.evals or []], args.name)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=1))
    else:
        print(format_runs(runs, Path(args.logs)))
    return 0
