"""The model card: what a release was trained on, how, and how well (JSON and a README section)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Sequence

from braintumor.errors import BrainTumorError
from braintumor.paths import PROJECT_ROOT, checkpoint_epoch, read_history
from braintumor.release.calibration import render_lines as calibration_lines
from braintumor.release.demo import release_training, training_steps
from braintumor.release.files import card_path, is_release

CARD_START = "<!-- model-card:start -->"
CARD_END = "<!-- model-card:end -->"

LICENCES = [
    {"data": "brain_tumor_data (train 202 / val 61 images, VIA polygons)",
     "source": "https://github.com/rastislavkopal/brain-tumor-segmentation",
     "licence": "the terms of its repository (see there)"},
    {"data": "Figshare brain tumor dataset (J. Cheng, 2017; 3064 T1-weighted contrast-enhanced slices)",
     "source": "https://doi.org/10.6084/m9.figshare.1512427", "licence": "CC BY 4.0"},
    {"data": "Br35H tumor-free slices (the 'no' folder)",
     "source": "https://github.com/AhmedHamada0/Brain-Tumor-Detection-Dataset",
     "licence": "the terms of its repository and of Br35H :: Brain Tumor Detection 2020 (see there)"},
]


# =============================================================================== the model card
def _git_commit(root: Path = PROJECT_ROOT) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+local changes" if dirty.stdout.strip() else "")


def tumor_free_share(config) -> float:
    """Fraction of the training samples that are tumor-free: the tumor_free sources' share of the
    SOURCES weights when the run has sources, else TUMOR_FREE_FRACTION."""
    sources = list(getattr(config, "SOURCES", None) or [])
    if not sources:
        return float(config.TUMOR_FREE_FRACTION)
    total = sum(float(s["WEIGHT"]) for s in sources)
    free = sum(float(s["WEIGHT"]) for s in sources if s["KIND"] == "tumor_free")
    return round(free / total, 6) if total > 0 else 0.0


INIT_RUN_KEYS = ("run_folder", "checkpoint", "epoch", "steps", "wall_seconds", "wall_seconds_total", "init",
                 "init_release", "init_run")  # what the card keeps of each run a checkpoint's run started from


def run_summary(ckpt: Path, config, _depth: int = 0) -> dict[str, Any]:
    """What the run folder says about training: steps, wall time (s, sum of ``epoch_seconds``), epochs, data
    (and, for a weight average, its members: ``average``).

    A run started from a release names it (``init_release``, its steps and wall time from its card); one started
    from another run's checkpoint summarises that run too (``init_run``, the :data:`INIT_RUN_KEYS`, followed up
    to 5 runs back); ``wall_seconds_total`` then adds up the whole chain."""
    run = ckpt.parent
    epoch = checkpoint_epoch(ckpt)
    rows = [r for r in read_history(run / "history.csv") if epoch is None or int(r["epoch"]) <= epoch]
    secs = [float(r["epoch_seconds"]) for r in rows if r.get("epoch_seconds") not in (None, "")]
    out: dict[str, Any] = {
        "run_folder": run.name, "checkpoint": ckpt.name, "epoch": epoch,
        "steps_per_epoch": int(config.STEPS_PER_EPOCH), "steps": training_steps(ckpt, config),
        "wall_seconds": round(sum(secs), 1) if secs else None,
        "history_epochs": len(rows) or None,
        "init": config.INIT,
        "tumor_free_dirs": list(config.TUMOR_FREE_DIRS), "tumor_free_fraction": tumor_free_share(config),
    }
    init = Path(str(config.INIT))
    if str(config.INIT) not in ("random", "imagenet", "coco", "last") and is_release(init):
        before = release_training(init)  # a second stage from a released model: what that model had behind it
        out["init_release"] = {"file": init.name, "steps": before.get("steps"), "wall_seconds": before.get("wall_seconds"),
                               "run_folder": before.get("run_folder"), "checkpoint": before.get("checkpoint")}
        if isinstance(before.get("wall_seconds"), (int, float)) and out["wall_seconds"] is not None:
            out["wall_seconds_total"] = round(out["wall_seconds"] + before["wall_seconds"], 1)
    elif str(config.INIT) not in ("random", "imagenet", "coco", "last") and init.is_file() and _depth < 5:
        from braintumor.inference import config_for_checkpoint

        try:
            before = run_summary(init, config_for_checkpoint(init), _depth + 1)
        except (BrainTumorError, OSError, ValueError):
            before = None  # not a run's checkpoint (e.g. a bare .h5): the card names it by INIT alone
        if before is not None:
            out["init_run"] = {k: before[k] for k in INIT_RUN_KEYS if k in before}
            earlier = before.get("wall_seconds_total", before.get("wall_seconds"))
            if isinstance(earlier, (int, float)) and out["wall_seconds"] is not None:
                out["wall_seconds_total"] = round(out["wall_seconds"] + earlier, 1)
    if rows:
        last = rows[-1]
        out["final_losses"] = {k: float(last[k]) for k in ("loss", "val_loss", "mrcnn_mask_loss", "val_mrcnn_mask_loss")
                               if last.get(k) not in (None, "")}
    for extra in ("SOURCES",):
        if hasattr(config, extra):
            out[extra.lower()] = getattr(config, extra)
    for name in ("data.json", "run.json", "average.json"):  # average.json: braintumor average's members
        p = run / name
        if p.is_file():
            try:
                out[name[:-5]] = json.loads(p.read_text(encoding="utf-8"))
            except ValueError:
                out[name[:-5]] = f"{name}: not valid JSON"
    for name in ("command.txt", "commit.txt"):
        p = run / name
        if p.is_file():
            out[name[:-4]] = p.read_text(encoding="utf-8").strip()
    return out


def _get(d: Any, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def metrics_summary(metrics: dict[str, Any], source: str = "") -> dict[str, Any]:
    """The card's figures from one ``metrics.json`` of ``braintumor evaluate`` (None where absent)."""
    r = lambda v: v if isinstance(v, (bool, int)) else round(float(v), 4) if isinstance(v, float) else v  # noqa: E731
    op = metrics.get("operating_point") or {}
    return {
        "file": source,
        "split": _get(metrics, "dataset", "label"),
        "source_size_px": _get(metrics, "dataset", "source_size"),
        "weights": metrics.get("weights"),
        "threshold": metrics.get("threshold"),  # a setting, kept exact (the release may use it)
        "threshold_from": metrics.get("threshold_from"),
        "n_images": _get(metrics, "dataset", "n_images"),
        "n_tumor_free_images": _get(metrics, "tumor_free", "n_images", default=_get(metrics, "dataset", "n_extra_tumor_free_images")),
        "dice_mean": r(_get(metrics, "segmentation", "dice_mean")),
        "mask_map50": r(_get(metrics, "coco", "segm", "map50")),
        "mask_map": r(_get(metrics, "coco", "segm", "map")),
        "box_map50": r(_get(metrics, "coco", "bbox", "map50")),
        "box_map": r(_get(metrics, "coco", "bbox", "map")),
        "precision": r(_get(metrics, "instances", "precision")),
        "recall": r(_get(metrics, "instances", "recall")),
        "fp_per_image": r(_get(metrics, "instances", "fp_per_image")),
        "sensitivity": r(_get(metrics, "image_level", "sensitivity_any")),
        "sensitivity_overlap": r(_get(metrics, "image_level", "sensitivity_overlap")),
        "specificity": r(_get(metrics, "image_level", "specificity")),
        "tumor_free_fp_per_image": r(_get(metrics, "tumor_free", "fp_per_image")),
        "operating_point": {k: r(op.get(k)) for k in ("threshold", "sensitivity", "specificity")} if op else None,
        "image_rule": ({k: r(v) for k, v in metrics["image_rule"].items() if k not in ("per_image", "green_on_tumor_images")}
                       if isinstance(metrics.get("image_rule"), dict) else None),
        "by_category": ({g: {k: r(v) for k, v in c.items()} for g, c in metrics["by_category"].items()}
                        if isinstance(metrics.get("by_category"), dict) else None),
    }


def read_metrics(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """:func:`metrics_summary` of each metrics.json (a folder means its metrics.json); one-line errors."""
    out = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            p = p / "metrics.json"
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BrainTumorError(f"{p}: metrics file not found (braintumor evaluate ... --out DIR writes it)") from None
        except (OSError, ValueError) as e:
            raise BrainTumorError(f"{p}: not a readable metrics.json ({e})") from None
        if not isinstance(doc, dict) or doc.get("kind") not in ("split", "folder"):
            raise BrainTumorError(f"{p}: not a metrics.json of braintumor evaluate (no 'kind')")
        out.append(metrics_summary(doc, str(p)))
    return out


def headline_val(summaries: Sequence[dict]) -> dict[str, Any] | None:
    """The val figures of the card: the first full-resolution evaluation of the val split, else the first one."""
    split = [s for s in summaries if s.get("split") is not None and s.get("n_images")]
    for s in split:
        if s["split"] == "val" and not s.get("source_size_px"):
            return s
    return split[0] if split else None


def _region_score_entry(region_score) -> dict[str, Any]:
    """The card's ``region_score``: the scorer's (or set's) own entry and the rule it applies."""
    entry = region_score.card_entry()
    entry["rule"] = ("each region's score is detector^(1-weight) x region^weight, the region score a small CNN's "
                     "P(tumor) on the grey pixels around the region's box"
                     + (" (the geometric mean of the members' P(tumor), each on its own crops)" if "members" in entry else ""))
    return entry


def build_card(*, name: str, config, run: dict, metrics: list[dict], threshold: float, encoding: str,
               command: str | None, equivalence: dict | None, replaces: dict | None,
               training_precision: str | None = None, image_score: dict | None = None,
               region_score=None) -> dict[str, Any]:
    """The model card (JSON-ready) before files and digests are known; ``config`` is the
    release's (inference) config, ``training_precision`` the run's ``PRECISION``; ``image_score``
    the embedded image-level head's file (:mod:`braintumor.fit_image_score`), if any;
    ``region_score`` the embedded :class:`braintumor.region_score.RegionScore`, if any."""
    from braintumor import __version__

    val = headline_val(metrics)
    return {
        "card_version": 1,
        "name": name,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "braintumor_version": __version__,
        "export_commit": _git_commit(),
        "architecture": {"model": "Mask R-CNN + FPN", "backbone": config.BACKBONE, "norm": config.NORM,
                         "preset_name": config.NAME, "image_size_px": int(config.IMAGE_MAX_DIM),
                         "inference_precision": config.PRECISION,
                         "training_precision": training_precision or config.PRECISION,
                         "class_names": list(config.CLASS_NAMES)},
        "operating_point": {"threshold": round(float(threshold), 4),
                            "meaning": "DETECTION_MIN_CONFIDENCE: a scan is flagged when a detection scores at least this",
                            "secondary_min_confidence": float(getattr(config, "DETECTION_SECONDARY_MIN_CONFIDENCE", 0.0)),
                            "flagged_min_confidence": float(getattr(config, "DETECTION_FLAGGED_MIN_CONFIDENCE", 0.0)),
                            "mask_threshold": float(getattr(config, "DETECTION_MASK_THRESHOLD", 0.5))},
        "storage": {"encoding": encoding,
                    "restored_as": "float32",
                    "note": ("float16: 2 bytes per weight, relative rounding error <= 2**-11"
                             if encoding == "float16" else
                             "int8 per output channel with float32 scales: 1 byte per weight")},
        "training": {**run, "command": command or run.get("command")},
        "val": val,
        "evaluations": list(metrics),
        "licences": LICENCES,
        "equivalence": equivalence,
        "replaces": replaces,
        "image_score": ({"threshold": image_score.get("threshold"), "confident_detection": image_score.get("confident_detection"),
                         "features": image_score.get("features"), "fit": image_score.get("fit"),
                         "rule": "flagged when a detection scores >= confident_detection or the head >= threshold"}
                        if image_score else None),
        "region_score": _region_score_entry(region_score) if region_score is not None else None,
        "intended_use": "research tool, not a medical device: every result must be reviewed by a qualified physician",
    }


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _contexts(v) -> str:
    """A region scorer's crop context(s) as text: ``1.50``, or ``1.50 and 3.00`` (one crop each)."""
    return " and ".join(_fmt(float(c), 2) for c in v) if isinstance(v, (list, tuple)) else _fmt(v, 2)


def _init_release_note(training: dict) -> str:
    """`` (this stage N steps, from the released model <file>: run <run>, <checkpoint>, M steps)``; for a run
    started from another run's checkpoint `` (this stage N steps, from run <run>, <checkpoint>: M steps, from …)``
    back to the first run or release; else ''."""
    parts, t = [], training
    while True:
        r, run = t.get("init_release"), t.get("init_run")
        before = r if isinstance(r, dict) else run if isinstance(run, dict) else None
        if before is None:
            break
        steps, total = before.get("steps"), t.get("steps")
        stage = total - steps if isinstance(steps, int) and isinstance(total, int) else None
        parts.append(f"this stage {_fmt(stage)} steps" if not parts else f"{_fmt(stage)} steps")
        if before is r:
            parts.append(f"from the released model `{r.get('file')}`: run `{r.get('run_folder')}`, "
                         f"`{r.get('checkpoint')}`, {_fmt(steps)} steps")
            break
        parts.append(f"from run `{run.get('run_folder')}`, `{run.get('checkpoint')}`")
        if not (isinstance(run.get("init_release"), dict) or isinstance(run.get("init_run"), dict)):
            parts.append(f"{_fmt(steps)} steps from init `{run.get('init')}`")
            break
        t = run
    return f" ({', '.join(parts)})" if parts else ""


def render_card_markdown(card: dict[str, Any]) -> str:
    """The card as a README section (Markdown, no markers)."""
    a, t, v = card.get("architecture", {}), card.get("training", {}), card.get("val") or {}
    bf16_ok = bool(((card.get("calibrations") or {}).get("mixed_bfloat16") or {}).get("accepted"))
    files = card.get("files", [])
    total = sum(f.get("bytes", 0) for f in files if str(f.get("path", "")).endswith(".h5"))
    lines = [f"**Released model: `{card.get('name')}`** ({a.get('model')}, {a.get('backbone')}, "
             f"{a.get('norm')} norm, {a.get('image_size_px')} px; preset `{a.get('preset_name')}`), "
             f"stored as {card.get('storage', {}).get('encoding')} and restored as float32: "
             + ", ".join(f"`{Path(f['path']).name}` ({f['bytes'] / 1e6:.1f} MB)" for f in files
                         if str(f.get("path", "")).endswith(".h5"))
             + (f", {total / 1e6:.1f} MB in all." if total else ".")
             + (f" Trained in {a['training_precision']}, it computes in {a.get('inference_precision')}"
                + (", or in bfloat16 where its calibration below applies." if bf16_ok else " on every machine.")
                if a.get("training_precision") not in (None, a.get("inference_precision")) else ""), ""]
    if files:
        head = next((f for f in files if f.get("role") == "head"), files[0])
        lines += [f"sha256 `{head.get('sha256')}`; card `{Path(card_path(head['path'])).name}`; "
                  f"exported {card.get('created')} from commit `{card.get('export_commit')}`.", ""]
    wall = t.get("wall_seconds_total", t.get("wall_seconds"))
    hours = wall / 3600 if isinstance(wall, (int, float)) else None
    lines += [f"Training: run `{t.get('run_folder')}`, checkpoint `{t.get('checkpoint')}`, "
              + (f"{_fmt(t.get('steps'))} steps in all" if t.get("init_release") or t.get("init_run") else
                 f"{_fmt(t.get('steps'))} steps ({_fmt(t.get('epoch'))} epochs × {_fmt(t.get('steps_per_epoch'))})")
              + (f", {hours:.1f} h of training" if hours is not None else "")
              + f", init `{t.get('init')}`" + _init_release_note(t) + (f"; `{t['command']}`" if t.get("command") else "") + ".", ""]
    before = t.get("released_before_as") if isinstance(t.get("released_before_as"), dict) else None
    if before:
        lines += [f"The weights of release `{before.get('file')}` (threshold {_fmt(before.get('threshold'))}), "
                  f"released again with the thresholds and figures below (`braintumor export --weights` a release).", ""]
    data = t.get("data") if isinstance(t.get("data"), dict) else None
    if data:
        train = ", ".join(f"{x.get('name')} {x.get('images')} images" + (f" ({x['per_pass']} per pass)" if x.get("per_pass") else "")
                          for x in data.get("train", []) if isinstance(x, dict))
        lines += [f"Training data (the run's data.json): {train or '—'}; val {_get(data, 'val', 'images', default='—')} "
                  f"images; held-out tumor-free slices {_get(data, 'tumor_free_held_out', 'images', default='—')}.", ""]
    elif t.get("tumor_free_dirs") or t.get("sources"):
        lines += [f"Training data: the run folder has no data.json; config sources {t.get('sources') or '—'}, "
                  f"tumor-free folders {t.get('tumor_free_dirs') or '—'}.", ""]
    if v:
        op = v.get("operating_point") or {}
        lines += ["| val figure | value |", "|---|---:|",
                  f"| images (tumor-free held-out slices) | {_fmt(v.get('n_images'))} ({_fmt(v.get('n_tumor_free_images'))}) |",
                  f"| threshold (operating point) | {_fmt(card.get('operating_point', {}).get('threshold'))} |",
                  *([f"| regions after an image's best one need | ≥ {_fmt(sec, 2)} (`DETECTION_SECONDARY_MIN_CONFIDENCE`) |"]
                    if (sec := card.get('operating_point', {}).get('secondary_min_confidence')) else []),
                  *([f"| on scans the image-level head flags, regions count from | {_fmt(fl, 2)} "
                     f"(`DETECTION_FLAGGED_MIN_CONFIDENCE`) |"]
                    if (fl := card.get('operating_point', {}).get('flagged_min_confidence')) else []),
                  *([f"| outlines: mask probability at least | {_fmt(mt, 2)} (`DETECTION_MASK_THRESHOLD`) |"]
                    if (mt := card.get('operating_point', {}).get('mask_threshold')) not in (None, 0.5) else []),
                  f"| Dice (mean over val images) | {_fmt(v.get('dice_mean'))} |",
                  f"| mask mAP@0.5 / @[.5:.95] | {_fmt(v.get('mask_map50'))} / {_fmt(v.get('mask_map'))} |",
                  f"| box mAP@0.5 / @[.5:.95] | {_fmt(v.get('box_map50'))} / {_fmt(v.get('box_map'))} |",
                  f"| image-level sensitivity / specificity at {_fmt(v.get('threshold'))} | "
                  f"{_fmt(v.get('sensitivity'))} / {_fmt(v.get('specificity'))} |",
                  f"| false positives per val image | {_fmt(v.get('fp_per_image'))} |"]
        if op:
            lines.append(f"| operating point chosen by evaluate (sens ≥ 0.95) | {_fmt(op.get('threshold'))}: "
                         f"{_fmt(op.get('sensitivity'))} / {_fmt(op.get('specificity'))} |")
        rule = v.get("image_rule") or {}
        if rule:
            lines.append(f"| **image-level rule** (detection ≥ {_fmt(rule.get('confident_detection'), 2)} or head ≥ "
                         f"{_fmt(rule.get('threshold'))}): sensitivity / specificity | **{_fmt(rule.get('sensitivity'))} / "
                         f"{_fmt(rule.get('specificity'))}** ({_fmt(rule.get('n_tumor_free_flagged'))} of "
                         f"{_fmt(rule.get('n_tumor_free_images'))} tumor-free flagged"
                         + (f"; {_fmt(rule['n_tumor_free_flagged_slices'])} of {_fmt(rule['n_tumor_free_slices'])} "
                            f"distinct slices" if rule.get("n_tumor_free_slices") is not None else "") + ") |")
            verdicts = rule.get("verdicts") or {}
            for who, key in (("tumor", "tumor_images"), ("tumor-free", "tumor_free_images")):
                lines.append(f"| verdicts on {who} images: tumor / suspected / uncertain / no tumor | "
                             + " / ".join(_fmt(_get(verdicts, k, key)) for k in ("tumor", "suspected", "uncertain", "no_tumor"))
                             + " |")
        lines.append("")
    head = card.get("image_score") or {}
    if head:
        fit = head.get("fit") or {}
        sets = ", ".join(f"{k} {_get(x, 'images')}" for k, x in (fit.get("sets") or {}).items()
                         if k != "val" and _get(x, "role") != "threshold")
        held = [k for k in fit.get("no_green_sets") or () if k != "val"]
        no_green = ("; no val scan" + "".join(f" and none of the {_fmt(fit.get(f'{k}_images'))} {k} slices" for k in held)
                    + f" without a region at {_fmt(fit.get('no_green_at'), 4)} goes unflagged"
                    if fit.get("no_green_at") is not None else "")
        lines += [f"Image-level head (`braintumor fit-image-score`): logistic regression (L2 {_fmt(fit.get('l2'))}) on the "
                  f"pooled {', '.join(head.get('features') or [])} features, fitted on {sets or '—'} images; its threshold "
                  f"{_fmt(head.get('threshold'))} keeps val sensitivity ≥ {_fmt(fit.get('target_sensitivity'), 2)} "
                  f"({_fmt(fit.get('val_images'))} val scans{no_green}). Verdicts: *tumor* (flagged, outlined), *suspected* "
                  f"(flagged, nothing outlined), *uncertain* (not flagged, a weak outline), *no tumor* (neither; the "
                  f"only green answer).", ""]
    rs = card.get("region_score") or {}
    if rs:
        combined = (f"the score reported for a region is detector^{_fmt(1 - rs['weight'], 2)} × region^{_fmt(rs['weight'], 2)} "
                    f"(regions from detector score {_fmt(rs.get('detector_floor'), 2)} up)")
        if rs.get("members"):
            parts = []
            for m in rs["members"]:
                sets = ", ".join(f"{k} {_get(x, 'images')}" for k, x in ((m.get("fit") or {}).get("sets") or {}).items())
                fit = m.get("fit") or {}
                source = (f" on the regions of `{fit['weights']}`" if fit.get("weights") else "") + (
                    f", seed {fit['seed']}" if fit.get("seed") is not None else "")
                parts.append(f"{_fmt(m.get('parameters'))} weights, {_fmt(m.get('crop_px'))} px crops at "
                             f"{_contexts(m.get('context'))} × the box, fitted{source} on {sets or '—'} training images")
            lines += [f"Region scorer (`braintumor fit-region-score`, {len(parts)} of them read as one): small CNNs each "
                      f"read a grey crop around each region and give P(tumor); a region's is the geometric mean of "
                      f"theirs ({'; '.join(parts)}); {combined}.", ""]
        else:
            sets = ", ".join(f"{k} {_get(x, 'images')}" for k, x in ((rs.get("fit") or {}).get("sets") or {}).items())
            lines += [f"Region scorer (`braintumor fit-region-score`): a CNN of {_fmt(rs.get('parameters'))} weights reads a "
                      f"{_fmt(rs.get('crop_px'))} px grey crop around each region ({_contexts(rs.get('context'))} × its box) "
                      f"and gives P(tumor); {combined}; fitted on {sets or '—'} training images.", ""]
    lines += calibration_lines(card)
    eq = card.get("equivalence") or {}
    if eq.get("checked"):
        lines += [f"Equivalence with the float32 checkpoint on {eq.get('n_images')} val images: decisions "
                  f"{'identical' if eq.get('decisions_identical') else 'DIFFERENT'}, largest box difference "
                  f"{_fmt(eq.get('max_box_diff_px'), 1)} px, largest Dice difference {_fmt(eq.get('max_dice_diff'), 4)}, "
                  f"largest weight error {_fmt(eq.get('max_abs_weight_error'), 6)}.", ""]
    rep = card.get("replaces")
    if rep:
        spec = (f", specificity at sensitivity ≥ 0.95 {_fmt(rep.get('val_specificity'))} → "
                f"{_fmt(rep.get('new_val_specificity'))}" if rep.get("new_val_specificity") is not None else "")
        if rep.get("new_figshare_val_dice") is not None:
            spec += (f", Figshare val Dice {_fmt(rep.get('figshare_val_dice'))} → "
                     f"{_fmt(rep.get('new_figshare_val_dice'))}")
        lines += [f"Replaces `{rep.get('file')}` (val Dice {_fmt(rep.get('val_dice'))} → {_fmt(v.get('dice_mean'))}{spec}; "
                  f"{'better' if rep.get('better_on_val') else 'NOT better'} on val).", ""]
    lines += ["Data: " + "; ".join(f"{x['data']} — {x['source']} ({x['licence']})" for x in card.get("licences", [])) + ".",
              "", f"Use: {card.get('intended_use')}."]
    return "\n".join(lines) + "\n"


def update_readme(readme: str | os.PathLike, card: dict[str, Any]) -> None:
    """Replace the text between :data:`CARD_START` and :data:`CARD_END` in ``readme`` with the rendered card."""
    p = Path(readme)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise BrainTumorError(f"{p}: cannot read ({e.strerror or e})") from None
    i, j = text.find(CARD_START), text.find(CARD_END)
    if i < 0 or j < i:
        raise BrainTumorError(f"{p}: no {CARD_START} ... {CARD_END} markers to put the model card between")
    new = text[: i + len(CARD_START)] + "\n" + render_card_markdown(card) + text[j:]
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, p)
