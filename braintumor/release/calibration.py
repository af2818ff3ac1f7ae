"""A release's calibration for another inference precision: its own thresholds, measured on val.

A release computes in float32 and its card's figures are float32's. On a CPU with bfloat16
(``avx512_bf16`` or ``amx_bf16``) the same weights run about 1.4 × faster in
``mixed_bfloat16`` (benchmarks/README.md) and segment as well, but every score moves a
little, so the two thresholds chosen on float32's scores no longer keep their meaning (the
image-level rule read sensitivity 0.984 and specificity 0.902 instead of 0.951 and 0.931).
A *calibration* is the pair of thresholds chosen again on val from the bfloat16 scores, by
the same rules as float32's (``braintumor calibrate``, :mod:`braintumor.calibrate`):

- ``operating_point``: ``DETECTION_MIN_CONFIDENCE`` (val sensitivity ≥ 0.95 over the val
  scans and the held-out tumor-free slices, :func:`braintumor.metrics.choose_operating_point`);
- ``image_score_threshold``: the image-level head's threshold (val scans' sensitivity ≥ 0.95,
  :func:`braintumor.image_score.choose_threshold`; the head's weights are the release's).

It lives in the model card, ``calibrations[<precision>]``, with the val figures it gave
beside float32's and whether it is **accepted**: Dice and mask mAP@0.5 within
:data:`FIGURE_TOLERANCE` of float32's, the rule's sensitivity ≥ the target and its
specificity at most :data:`SPECIFICITY_TOLERANCE` below float32's. Only an accepted
calibration is used (:func:`braintumor.inference.load_predictor`), and only on a CPU with
bfloat16; everywhere else the release runs in float32 as before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from braintumor.errors import BrainTumorError
from braintumor.release.files import card_path

CALIBRATED_PRECISIONS = ("mixed_bfloat16",)
FIGURE_TOLERANCE = 0.01       # Dice and mask mAP@0.5 may differ from float32's by at most this (issue 12)
SPECIFICITY_TOLERANCE = 0.01  # the rule's specificity may be at most this below float32's (2 of 204 slices)
_NUMBERS = ("operating_point", "image_score_threshold")


def val_figures(summary: dict[str, Any] | None) -> dict[str, float | None]:
    """The figures a calibration is judged by, from a card ``val`` summary
    (:func:`braintumor.release.card.metrics_summary`)."""
    s = summary or {}
    rule = s.get("image_rule") or {}
    return {"dice_mean": s.get("dice_mean"), "mask_map50": s.get("mask_map50"),
            "rule_sensitivity": rule.get("sensitivity"), "rule_specificity": rule.get("specificity"),
            "n_images": s.get("n_images"), "n_tumor_free_images": s.get("n_tumor_free_images")}


def judge(new: dict[str, Any], reference: dict[str, Any], target_sensitivity: float = 0.95) -> list[str]:
    """Why a calibration with val figures ``new`` may not replace float32's ``reference``
    (both from :func:`val_figures`); empty when it is accepted."""
    why = []
    for key, label in (("dice_mean", "Dice"), ("mask_map50", "mask mAP@0.5")):
        a, b = new.get(key), reference.get(key)
        if a is None or b is None:
            why.append(f"{label} missing")
        elif abs(a - b) > FIGURE_TOLERANCE + 1e-9:
            why.append(f"{label} {a:.3f} against float32's {b:.3f} (more than {FIGURE_TOLERANCE} apart)")
    sens, spec, ref_spec = new.get("rule_sensitivity"), new.get("rule_specificity"), reference.get("rule_specificity")
    if sens is None or spec is None or ref_spec is None:
        why.append("image-level rule figures missing")
    else:
        if sens < target_sensitivity - 1e-9:
            why.append(f"rule sensitivity {sens:.3f} below {target_sensitivity:.2f}")
        if spec < ref_spec - SPECIFICITY_TOLERANCE - 1e-9:
            why.append(f"rule specificity {spec:.3f} against float32's {ref_spec:.3f} "
                       f"(more than {SPECIFICITY_TOLERANCE} lower)")
    return why


def check_entry(entry: Any, where: str) -> dict[str, Any]:
    """``entry`` if it is a usable calibration (both thresholds in (0, 1], ``accepted`` a bool), else a one-line error."""
    if not isinstance(entry, dict):
        raise BrainTumorError(f"{where}: a calibration must be a table, got {type(entry).__name__}")
    for key in _NUMBERS:
        v = entry.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) <= 1.0:
            raise BrainTumorError(f"{where}: calibration {key} must be a number in (0, 1], got {v!r}")
    if not isinstance(entry.get("accepted"), bool):
        raise BrainTumorError(f"{where}: calibration 'accepted' must be true or false, got {entry.get('accepted')!r}")
    return entry


def calibration(card: dict[str, Any], precision: str, where: str = "model card") -> dict[str, Any] | None:
    """The card's calibration for ``precision`` (checked), or None when it has none."""
    entries = card.get("calibrations") or {}
    if not isinstance(entries, dict):
        raise BrainTumorError(f"{where}: 'calibrations' must be a table keyed by precision")
    if precision not in entries:
        return None
    return check_entry(entries[precision], f"{where} calibrations.{precision}")


def write_calibration(head: str | os.PathLike, precision: str, entry: dict[str, Any]) -> Path:
    """Put ``entry`` into the card beside the release ``head`` as ``calibrations[precision]`` (atomically)."""
    if precision not in CALIBRATED_PRECISIONS:
        raise BrainTumorError(f"calibration for {precision!r}: one of {', '.join(CALIBRATED_PRECISIONS)} expected")
    cp = card_path(head)
    if not cp.is_file():
        raise BrainTumorError(f"{cp}: no model card beside {Path(head).name} to write the calibration into")
    check_entry(entry, f"{cp} calibrations.{precision}")
    try:
        card = json.loads(cp.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BrainTumorError(f"{cp}: model card is not valid JSON ({e})") from None
    card.setdefault("calibrations", {})[precision] = entry
    tmp = cp.with_name(f".{cp.name}.tmp")
    tmp.write_text(json.dumps(card, indent=1, allow_nan=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, cp)
    return cp


def green_on_tumors(image_rule: dict[str, Any] | None) -> int | None:
    """Tumor images an ``image_rule`` summary (``evaluate``'s) calls "no tumor"; None when it does not say."""
    return (((image_rule or {}).get("verdicts") or {}).get("no_tumor") or {}).get("tumor_images")


def render_lines(card: dict[str, Any]) -> list[str]:
    """Markdown lines for the card's calibrations (none when it has none)."""
    lines = []
    for precision, e in sorted((card.get("calibrations") or {}).items()):
        if not isinstance(e, dict):
            continue
        new, ref = val_figures(e.get("val")), e.get("float32_val") or {}
        f = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        figures = (f"val Dice {f(new.get('dice_mean'))} (float32 {f(ref.get('dice_mean'))}), mask mAP@0.5 "
                   f"{f(new.get('mask_map50'))} ({f(ref.get('mask_map50'))}), rule sensitivity / specificity "
                   f"{f(new.get('rule_sensitivity'))} / {f(new.get('rule_specificity'))} "
                   f"({f(ref.get('rule_sensitivity'))} / {f(ref.get('rule_specificity'))})")
        fig = e.get("figshare_val") if isinstance(e.get("figshare_val"), dict) else None
        if fig:
            rule = fig.get("image_rule") or {}
            green = green_on_tumors(rule)
            figures += (f"; Figshare val ({fig.get('n_images')}) Dice {f(fig.get('dice_mean'))}, rule sensitivity "
                        f"{f(rule.get('sensitivity'))}, {green if green is not None else '—'} called \"no tumor\"")
        flags = ", ".join((e.get("measured_on") or {}).get("bf16_flags") or [])
        if e.get("accepted"):
            lines.append(f"Inference precision: float32, and `{precision}` on CPUs with the bfloat16 flags it was "
                         f"calibrated on ({flags or 'bfloat16'}; `braintumor calibrate`, "
                         f"{e.get('created', '')[:10]}), with its own operating point {f(e.get('operating_point'))} and head "
                         f"threshold {f(e.get('image_score_threshold'))}: {figures}. `--precision float32` (or "
                         f"`BRAINTUMOR_PRECISION=float32`) gives float32 everywhere.")
        else:
            lines.append(f"Inference precision: float32 everywhere. A `{precision}` calibration was measured and NOT "
                         f"accepted ({'; '.join(e.get('why_not') or [])}): {figures}.")
        lines.append("")
    return lines
