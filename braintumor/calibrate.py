"""``braintumor calibrate``: a released model's thresholds chosen again for bfloat16 inference, on val.

The release's operating point and its image-level head's threshold were chosen on float32
scores (:mod:`braintumor.release.calibration` says why bfloat16 needs its own). This command
runs the release in ``mixed_bfloat16`` on the val split and the held-out tumor-free slices,
once, and from those detections:

1. chooses the operating point by :func:`braintumor.metrics.choose_operating_point` (val
   sensitivity ≥ ``sensitivity``; its robust threshold, as ``evaluate --at-operating-point``);
2. chooses the head's threshold by :func:`braintumor.image_score.choose_threshold` on the val
   scans (as ``fit-image-score --operating-point`` does: the sensitivity its fit asked for, and no
   val scan called "no tumor"; the head's weights stay the release's); with ``--figshare`` (needed
   when the release's head was held so, ``fit-image-score --figshare``), no Figshare val slice either;
3. reports every figure at those thresholds beside the card's float32 ones and judges them
   (:func:`braintumor.release.calibration.judge`; a Figshare val slice called "no tumor" refuses it too);
4. writes the result into the model card as ``calibrations.mixed_bfloat16``, accepted or not.

It needs a CPU with bfloat16: elsewhere bfloat16 is not used, so there is nothing to calibrate.
"""

from __future__ import annotations

import datetime
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.errors import BrainTumorError


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def calibrate_records(records, free_records, head, class_names, sensitivity: float, groups=None,
                      floor: float = 0.05, flagged_min_confidence: float | None = None,
                      head_sensitivity: float | None = None, free_slices=None,
                      no_green_records=()) -> tuple[dict[str, Any], Any]:
    """The two thresholds from detections already made: ``(results at them, head with its new threshold)``.

    records / free_records: :class:`braintumor.metrics.ImageRecord` of the val split and of the
    held-out tumor-free slices, with ``image_features``; head: the release's
    :class:`~braintumor.image_score.ImageScore`. The results are :func:`braintumor.evaluate.evaluate_records`'s
    at the chosen operating point, with the recalibrated head's rule (and flagged images outlined down to
    ``flagged_min_confidence``, the release's ``DETECTION_FLAGGED_MIN_CONFIDENCE``). The operating point
    keeps ``sensitivity``; the head's threshold ``head_sensitivity`` (default ``sensitivity``), the
    target its float32 threshold was chosen for. ``free_slices``: each tumor-free record's slice
    (:func:`braintumor.evaluate.record_slices`), so the flagged ones are also counted per distinct slice.
    ``no_green_records``: more tumor records (e.g. the Figshare val slices) that no threshold may call "no tumor"
    (:func:`braintumor.image_score.choose_threshold`'s ``no_green_also``).
    """
    from braintumor.evaluate import evaluate_records
    from braintumor.image_score import choose_threshold

    first = evaluate_records(records, floor, free_records, class_names, sensitivity, head, groups,
                             free_slices=free_slices)
    op = first["operating_point"]
    if op is None or op.get("robust_threshold") is None:
        raise BrainTumorError(f"no operating point reaches sensitivity {sensitivity:.2f} on these images")
    scans = [r for r in records if r.has_tumor]
    if not scans or any(r.image_features is None for r in scans):
        raise BrainTumorError("the val scans have no image features: the image-level head cannot be calibrated")
    feats, best = _features_and_best(scans)
    more = tuple(_features_and_best(rs) for rs in no_green_records if rs)
    new_head = choose_threshold(head, feats, best, head_sensitivity or sensitivity, op["robust_threshold"], more)
    res = evaluate_records(records, op["robust_threshold"], free_records, class_names, sensitivity, new_head, groups,
                           flagged_min_confidence, free_slices)
    res["threshold_from"] = "operating point"
    return res, new_head


def _features_and_best(records) -> tuple[np.ndarray, np.ndarray]:
    """``([N, F] image features, [N] best scores)`` of tumor records; one line when a record has no features."""
    if any(r.image_features is None for r in records):
        raise BrainTumorError("a tumor scan has no image features: the image-level head cannot be calibrated")
    return (np.stack([np.asarray(r.image_features, np.float64) for r in records]),
            np.asarray([r.max_score for r in records], np.float64))


def _head_holds(release) -> list[str]:
    """The sets besides ``val`` the release's head was held from green on (its fit record's ``no_green_sets``)."""
    import json

    try:
        fit = json.loads(release.meta.get("image_score.json") or "{}").get("fit", {})
    except ValueError:
        return []
    return [k for k in fit.get("no_green_sets") or () if k != "val"]


def _head_target(release, sensitivity: float) -> float:
    """The val sensitivity the release's head threshold was chosen for (its fit record's
    ``target_sensitivity``, e.g. ``fit-image-score --sensitivity 0.96``), else ``sensitivity``."""
    import json

    try:
        target = json.loads(release.meta.get("image_score.json") or "{}").get("fit", {}).get("target_sensitivity")
    except ValueError:
        target = None
    return float(target) if isinstance(target, (int, float)) and 0.5 <= target < 1.0 else float(sensitivity)


def calibrate_release(weights: str | Path | None, data: Path, split: str, tumor_free: Path,
                      precision: str = "mixed_bfloat16", sensitivity: float = 0.95, progress: bool = True,
                      cpuinfo: str | None = None, figshare: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Calibrate the release ``weights`` (None: the one in ``models/``) and write the card; ``(card path, entry)``.
    ``figshare``: a Figshare folder whose val slices no threshold may call "no tumor" (required when the release's
    head was held so)."""
    from braintumor.data import load_split
    from braintumor.evaluate import EVAL_SCORE_FLOOR, collect_records, record_groups, record_slices
    from braintumor.inference import Predictor, resolve_weights
    from braintumor.mrcnn.precision import BF16_FLAGS, cpu_bf16_flags
    from braintumor.release import is_release, metrics_summary, open_release
    from braintumor.release.calibration import green_on_tumors, judge, val_figures, write_calibration
    from braintumor.tumor_free import load_tumor_free

    if not cpu_bf16_flags(cpuinfo):
        raise BrainTumorError(f"calibrate --precision {precision}: this CPU has none of {', '.join(BF16_FLAGS)}, so "
                              f"the release never computes in bfloat16 here; run it on a CPU that has")
    path = resolve_weights(weights)
    if not is_release(path):
        raise BrainTumorError(f"{path}: not a released model (calibrate writes into a release's model card; "
                              f"braintumor export makes one)")
    release = open_release(path)
    head = release.image_score()
    if head is None:
        raise BrainTumorError(f"{path}: the release has no image-level head to calibrate (export --image-score)")
    reference = val_figures(release.card.get("val"))
    if reference["dice_mean"] is None:
        raise BrainTumorError(f"{path}: its model card has no val figures to compare the calibration with")
    if not Path(tumor_free).is_dir():
        raise BrainTumorError(f"{tumor_free}: not a folder (--tumor-free)")
    if figshare is None and "figshare_val" in _head_holds(release):
        raise BrainTumorError(f"{path}: its head keeps every Figshare val slice from the green 'no tumor'; give "
                              f"--figshare FOLDER so that the bfloat16 thresholds are held to that too")
    dataset = load_split(data, split)
    fig_val = None
    if figshare is not None:
        from braintumor.figshare import load_figshare

        fig_val = load_figshare(figshare, "val", dataset.class_names)
    free = load_tumor_free(tumor_free, "held-out", dataset.class_names)
    fp32 = release.config()
    cfg = fp32.replace(PRECISION=precision, DETECTION_MIN_CONFIDENCE=EVAL_SCORE_FLOOR, IMAGES_PER_GPU=1, GPU_COUNT=1)
    predictor = Predictor(path, cfg, threshold=fp32.DETECTION_MIN_CONFIDENCE)
    predictor.region_score = release.region_score()  # its regions re-scored as the release re-scores them
    print(f"calibrating {path.name} for {precision} on {split} ({len(dataset)} images + {len(free)} tumor-free"
          + (f" + {len(fig_val)} Figshare val" if fig_val is not None else "") + ")", flush=True)
    t0 = time.perf_counter()
    records, times = collect_records(predictor, dataset, progress, split)
    free_records, more = collect_records(predictor, free, progress, "tumor-free")
    fig_records, fig_times = collect_records(predictor, fig_val, progress, "figshare val") if fig_val is not None else ([], [])
    head_target = _head_target(release, sensitivity)
    names = list(dataset.class_names)
    res, new_head = calibrate_records(records, free_records, head, names, sensitivity,
                                      record_groups(records, dataset), EVAL_SCORE_FLOOR,
                                      fp32.DETECTION_FLAGGED_MIN_CONFIDENCE, head_target,
                                      record_slices(free_records, free), no_green_records=(fig_records,))
    res["dataset"]["label"] = split
    res["weights"] = path.name
    res["precision"] = precision
    summary = metrics_summary(res, source=f"braintumor calibrate ({precision})")
    why = judge(val_figures(summary), reference, sensitivity)
    fig_summary = None
    if fig_records:
        from braintumor.evaluate import evaluate_records

        fig = evaluate_records(fig_records, res["threshold"], (), names, sensitivity, new_head,
                               record_groups(fig_records, fig_val), fp32.DETECTION_FLAGGED_MIN_CONFIDENCE)
        fig["dataset"]["label"], fig["weights"], fig["precision"] = "figshare val", path.name, precision
        fig_summary = metrics_summary(fig, source=f"braintumor calibrate ({precision}), Figshare val")
        green = green_on_tumors(fig.get("image_rule"))
        if green:
            why.append(f"{green} Figshare val slice(s) called 'no tumor'")
    det = times + more + fig_times
    entry = {
        "operating_point": float(res["threshold"]),
        "image_score_threshold": float(new_head.threshold),
        "accepted": not why,
        "why_not": why,
        "target_sensitivity": sensitivity,
        "head_target_sensitivity": head_target,
        "val": summary,
        **({"figshare_val": fig_summary} if fig_summary is not None else {}),
        "float32_val": reference,
        "float32_thresholds": {"operating_point": float(fp32.DETECTION_MIN_CONFIDENCE),
                               "image_score_threshold": float(head.threshold)},
        "detect_seconds_median": round(float(np.median(det)), 3) if det else None,
        "measured_on": {"cpu": _cpu_model(), "bf16_flags": cpu_bf16_flags(cpuinfo)},
        "seconds": round(time.perf_counter() - t0, 1),
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": (f"braintumor calibrate --weights {path} --data {data} --split {split} --tumor-free {tumor_free} "
                    + (f"--figshare {figshare} " if figshare is not None else "")
                    + f"--precision {precision} --sensitivity {sensitivity:g}"),
    }
    return write_calibration(path, precision, entry), entry


def format_entry(entry: dict[str, Any]) -> str:
    """A few lines: the thresholds and the judged figures, float32 beside."""
    from braintumor.release.calibration import val_figures

    new, ref = val_figures(entry.get("val")), entry.get("float32_val") or {}
    f = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    t32 = entry.get("float32_thresholds") or {}
    lines = [f"operating point {entry['operating_point']:.4f} (float32 {f(t32.get('operating_point'))}), "
             f"head threshold {entry['image_score_threshold']:.4f} (float32 {f(t32.get('image_score_threshold'))})"]
    for key, label in (("dice_mean", "Dice"), ("mask_map50", "mask mAP@0.5"), ("rule_sensitivity", "rule sensitivity"),
                       ("rule_specificity", "rule specificity")):
        lines.append(f"  {label:17s} {f(new.get(key))}  (float32 {f(ref.get(key))})")
    lines.append("accepted: the release computes in bfloat16 on CPUs that have it" if entry["accepted"] else
                 "NOT accepted (" + "; ".join(entry.get("why_not") or []) + "): the release stays float32")
    return "\n".join(lines)


def cli_calibrate(args) -> int:
    """``braintumor calibrate [--weights RELEASE] --data D --tumor-free T``."""
    from braintumor.paths import resolve_data_dir

    if not 0.5 <= args.sensitivity < 1.0:
        raise BrainTumorError(f"--sensitivity must be in [0.5, 1), got {args.sensitivity}")
    figshare = getattr(args, "figshare", None)
    if figshare is not None and not Path(figshare).is_dir():
        raise BrainTumorError(f"{figshare}: not a folder (--figshare)")
    card, entry = calibrate_release(args.weights, resolve_data_dir(args.data), args.split, Path(args.tumor_free),
                                    args.precision, args.sensitivity, figshare=Path(figshare) if figshare else None)
    print(format_entry(entry))
    print(f"written: {card}")
    if args.readme:
        import json

        from braintumor.release import update_readme

        update_readme(args.readme, json.loads(card.read_text(encoding="utf-8")))
        print(f"model card rendered into {args.readme}")
    return 0
