"""A release's bfloat16 calibration: the thresholds chosen again, the judgement, the card, and who uses it.

braintumor.release.calibration (the card entry and its judgement), braintumor.calibrate (choosing
the two thresholds from detections) and braintumor.inference.release_precision (which precision a
release computes in on this CPU). Synthetic records and cards; no model is built.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from braintumor.calibrate import calibrate_records, format_entry
from braintumor.errors import BrainTumorError
from braintumor.image_score import fit
from braintumor.inference import PRECISION_ENV, release_precision
from braintumor.metrics import ImageRecord, encode_masks
from braintumor.release.calibration import (FIGURE_TOLERANCE, calibration, judge, render_lines, val_figures,
                                            write_calibration)

BF16_CPU = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
PLAIN_CPU = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n"
REFERENCE = {"dice_mean": 0.756, "mask_map50": 0.835, "rule_sensitivity": 0.951, "rule_specificity": 0.931}


def _entry(accepted: bool = True, **kw) -> dict:
    return {"operating_point": 0.52, "image_score_threshold": 0.91, "accepted": accepted, "why_not": [], **kw}


# ----------------------------------------------------------------------------- the judgement
def test_judge_accepts_figures_within_the_tolerances():
    same = dict(REFERENCE)
    assert judge(same, REFERENCE) == []
    near = {**REFERENCE, "dice_mean": 0.756 - FIGURE_TOLERANCE + 1e-4, "mask_map50": 0.844,
            "rule_specificity": 0.931 - 0.0098}
    assert judge(near, REFERENCE) == []
    better = {**REFERENCE, "rule_specificity": 0.99, "rule_sensitivity": 1.0}
    assert judge(better, REFERENCE) == []


@pytest.mark.parametrize("change, word", [({"dice_mean": 0.74}, "Dice"), ({"mask_map50": 0.85}, "mask mAP"),
                                          ({"rule_specificity": 0.902}, "specificity"),
                                          ({"rule_sensitivity": 0.934}, "sensitivity"),
                                          ({"rule_specificity": None}, "missing")])
def test_judge_refuses_a_calibration_that_moves_a_figure(change, word):
    why = judge({**REFERENCE, **change}, REFERENCE)
    assert len(why) == 1 and word in why[0], why


def test_val_figures_read_the_card_summary():
    summary = {"dice_mean": 0.7, "mask_map50": 0.8, "n_images": 61, "n_tumor_free_images": 204,
               "image_rule": {"sensitivity": 0.95, "specificity": 0.9}}
    assert val_figures(summary) == {"dice_mean": 0.7, "mask_map50": 0.8, "rule_sensitivity": 0.95,
                                    "rule_specificity": 0.9, "n_images": 61, "n_tumor_free_images": 204}
    assert val_figures(None)["dice_mean"] is None


# ----------------------------------------------------------------------------- the card
def test_calibration_is_read_checked_and_written_atomically(tmp_path):
    head = tmp_path / "m-0123abcd.h5"
    card = tmp_path / "m-0123abcd.card.json"
    card.write_text(json.dumps({"name": "m", "val": {"dice_mean": 0.7}}))
    assert calibration(json.loads(card.read_text()), "mixed_bfloat16") is None
    write_calibration(head, "mixed_bfloat16", _entry())
    doc = json.loads(card.read_text())
    assert doc["name"] == "m" and doc["val"] == {"dice_mean": 0.7}, "the rest of the card is kept"
    assert calibration(doc, "mixed_bfloat16")["operating_point"] == 0.52
    assert [p.name for p in tmp_path.iterdir()] == [card.name], "no temporary file left"
    with pytest.raises(BrainTumorError, match="no model card"):
        write_calibration(tmp_path / "other-00000000.h5", "mixed_bfloat16", _entry())
    with pytest.raises(BrainTumorError, match="one of"):
        write_calibration(head, "float16", _entry())


@pytest.mark.parametrize("bad", [{"operating_point": 0.0}, {"operating_point": "0.5"}, {"image_score_threshold": 1.5},
                                 {"accepted": "yes"}, {"operating_point": True}])
def test_a_bad_calibration_is_a_one_line_error(bad):
    card = {"calibrations": {"mixed_bfloat16": _entry(**bad)}}
    with pytest.raises(BrainTumorError) as e:
        calibration(card, "mixed_bfloat16", where="m.card.json")
    assert str(e.value).startswith("m.card.json calibrations.mixed_bfloat16") and "\n" not in str(e.value)
    with pytest.raises(BrainTumorError, match="table keyed by precision"):
        calibration({"calibrations": [1]}, "mixed_bfloat16")


def test_the_card_says_which_precision_the_release_computes_in():
    val = {"dice_mean": 0.75, "mask_map50": 0.83, "image_rule": {"sensitivity": 0.95, "specificity": 0.93}}
    ok = {"calibrations": {"mixed_bfloat16": _entry(val=val, float32_val=REFERENCE, created="2026-12-02T00:00:00Z")}}
    text = "\n".join(render_lines(ok))
    assert "`mixed_bfloat16` on CPUs with the bfloat16 flags" in text and "0.520" in text and "0.930 (0.951 / 0.931)" in text
    fig = {"n_images": 298, "dice_mean": 0.6306, "image_rule": {"sensitivity": 0.9933, "verdicts": {
        "no_tumor": {"tumor_images": 0}}}}
    held = {"calibrations": {"mixed_bfloat16": _entry(val=val, float32_val=REFERENCE, figshare_val=fig,
                                                      measured_on={"bf16_flags": ["avx512_bf16", "amx_bf16"]})}}
    text = "\n".join(render_lines(held))
    assert "flags it was calibrated on (avx512_bf16, amx_bf16" in text
    assert 'Figshare val (298) Dice 0.631, rule sensitivity 0.993, 0 called "no tumor"' in text
    no = {"calibrations": {"mixed_bfloat16": _entry(False, why_not=["rule specificity 0.902 against 0.931"], val=val)}}
    text = "\n".join(render_lines(no))
    assert "float32 everywhere" in text and "NOT accepted (rule specificity 0.902" in text
    assert render_lines({}) == []


# ----------------------------------------------------------------------------- which precision, here
def test_release_precision_auto_takes_bfloat16_only_with_the_cpu_and_an_accepted_calibration(monkeypatch):
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    card = {"calibrations": {"mixed_bfloat16": _entry()}}
    chosen, cal, _ = release_precision(card, cpuinfo=BF16_CPU)
    assert chosen == "mixed_bfloat16" and cal["operating_point"] == 0.52
    assert release_precision(card, cpuinfo=PLAIN_CPU)[:2] == ("float32", None)
    assert release_precision({}, cpuinfo=BF16_CPU)[:2] == ("float32", None)
    refused = {"calibrations": {"mixed_bfloat16": _entry(False)}}
    chosen, cal, why = release_precision(refused, cpuinfo=BF16_CPU)
    assert (chosen, cal) == ("float32", None) and "not accepted" in why
    assert release_precision(card, "float32", cpuinfo=BF16_CPU)[:2] == ("float32", None)


def test_auto_keeps_float32_where_the_cpu_has_other_bfloat16_kernels_than_the_calibration(monkeypatch):
    """oneDNN computes bfloat16 with AMX where the CPU has it and with AVX-512 otherwise; the release
    0d02451e, calibrated with avx512_bf16 alone, flagged one val scan fewer on an AMX CPU (0.967 -> 0.951)."""
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    amx_cpu = BF16_CPU.rstrip("\n") + " amx_bf16 amx_tile\n"
    card = {"calibrations": {"mixed_bfloat16": _entry(measured_on={"cpu": "AMD EPYC", "bf16_flags": ["avx512_bf16"]})}}
    assert release_precision(card, cpuinfo=BF16_CPU)[0] == "mixed_bfloat16"
    chosen, cal, why = release_precision(card, cpuinfo=amx_cpu)
    assert (chosen, cal) == ("float32", None) and "measured with avx512_bf16" in why and "amx_bf16" in why
    assert release_precision(card, "mixed_bfloat16", cpuinfo=amx_cpu)[0] == "mixed_bfloat16", "asked for: used"
    on_amx = {"calibrations": {"mixed_bfloat16": _entry(measured_on={"bf16_flags": ["amx_bf16", "avx512_bf16"]})}}
    assert release_precision(on_amx, cpuinfo=amx_cpu)[0] == "mixed_bfloat16"
    assert release_precision(on_amx, cpuinfo=BF16_CPU)[0] == "float32"


def test_release_precision_asked_for_and_from_the_environment(monkeypatch):
    card = {"calibrations": {"mixed_bfloat16": _entry(False)}}
    assert release_precision(card, "mixed_bfloat16", cpuinfo=BF16_CPU)[0] == "mixed_bfloat16", "asked for: used"
    with pytest.raises(BrainTumorError, match="none of avx512_bf16"):
        release_precision(card, "mixed_bfloat16", cpuinfo=PLAIN_CPU)
    with pytest.raises(BrainTumorError, match="no calibration for mixed_bfloat16"):
        release_precision({}, "mixed_bfloat16", cpuinfo=BF16_CPU)
    accepted = {"calibrations": {"mixed_bfloat16": _entry()}}
    monkeypatch.setenv(PRECISION_ENV, "float32")
    assert release_precision(accepted, cpuinfo=BF16_CPU)[0] == "float32"
    monkeypatch.setenv(PRECISION_ENV, "fp16")
    with pytest.raises(BrainTumorError, match=r"\$BRAINTUMOR_PRECISION"):
        release_precision(accepted, cpuinfo=BF16_CPU)


# ----------------------------------------------------------------------------- choosing the thresholds
def _record(name: str, score: float | None, features: np.ndarray, tumor: bool) -> ImageRecord:
    """A 32x32 image: a tumor square at rows/cols 8..20 (when ``tumor``), one detection on it scoring ``score``."""
    gt = np.zeros((32, 32, 1), bool)
    gt[8:20, 8:20, 0] = True
    det = np.zeros((32, 32, 1 if score is not None else 0), bool)
    if score is not None:
        det[9:20, 8:20, 0] = True
    gts = gt if tumor else gt[..., :0]
    return ImageRecord(name=name, height=32, width=32, gt_rles=encode_masks(gts),
                       gt_class_ids=np.ones(gts.shape[-1], np.int64), gt_boxes=np.tile([8.0, 8, 20, 20], (gts.shape[-1], 1)),
                       rles=encode_masks(det), scores=np.asarray([score] if score is not None else [], np.float64),
                       class_ids=np.ones(det.shape[-1], np.int64), boxes=np.tile([9.0, 8, 20, 20], (det.shape[-1], 1)),
                       image_features=features.astype(np.float32))


def _shifted(f: int = 6):
    """A head fitted on float32-like features, and 40 tumor scans and 60 tumor-free records whose detections and
    features are shifted up, as bfloat16 moved them: ``(head, scans, free)``."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(1.0, 1.0, (200, f)), rng.normal(-1.0, 1.0, (200, f))])
    head = fit(x, np.r_[np.ones(200), np.zeros(200)], confident_detection=0.9)
    scans = [_record(f"t{i}", float(np.clip(0.5 + 0.02 * i, 0, 0.89)), rng.normal(1.3, 1.0, f), True) for i in range(40)]
    free = [_record(f"n{i}", (0.3 + 0.01 * i) if i % 2 else None, rng.normal(-0.7, 1.0, f), False) for i in range(60)]
    return head, scans, free


def test_calibrate_records_keeps_both_sensitivities_on_shifted_scores():
    head, scans, free = _shifted()
    res, new_head = calibrate_records(scans, free, head, ["BG", "tumor"], 0.95)
    assert res["threshold_from"] == "operating point"
    op = res["threshold"]
    assert res["image_level"]["sensitivity_any"] >= 0.95 and op > 0.5, op
    rule = res["image_rule"]
    assert rule["threshold"] == pytest.approx(new_head.threshold, abs=1e-4)
    assert rule["sensitivity"] >= 0.95
    p = new_head.probability(np.stack([r.image_features for r in scans]))
    assert (p >= new_head.threshold).sum() == int(np.ceil(0.95 * 40)), "the highest threshold keeping 0.95"
    assert res["segmentation"]["dice_mean"] > 0.9, "the figures are computed at the chosen operating point"
    # a head fitted for sensitivity 0.975 keeps that target; the operating point keeps 0.95
    res2, head2 = calibrate_records(scans, free, head, ["BG", "tumor"], 0.95, head_sensitivity=0.975)
    assert res2["threshold"] == op and head2.threshold < new_head.threshold
    assert (head2.probability(np.stack([r.image_features for r in scans])) >= head2.threshold).sum() == 39
    # the tumor-free records as 20 slices of 3 copies: the same figures, also counted per slice
    assert "n_tumor_free_slices" not in rule and "n_slices" not in res["tumor_free"]
    res3, _ = calibrate_records(scans, free, head, ["BG", "tumor"], 0.95, free_slices=[f"s{i // 3}" for i in range(60)])
    assert res3["threshold"] == op and res3["image_rule"]["specificity"] == rule["specificity"]
    assert res3["image_rule"]["n_tumor_free_slices"] == 20 and res3["tumor_free"]["n_slices"] == 20
    flagged = {i // 3 for i, r in enumerate(free) if r.outlined(op)}
    assert res3["tumor_free"]["n_flagged_slices"] == len(flagged) < res3["tumor_free"]["n_flagged"]


def test_calibrate_records_holds_more_tumor_records_from_green():
    """no_green_records (the Figshare val slices): one without a detection at the operating point and a head
    probability below the chosen threshold lowers it until the head flags that slice; the val figures stay."""
    f = 6
    head, scans, free = _shifted(f)
    res, plain = calibrate_records(scans, free, head, ["BG", "tumor"], 0.95)
    weak = _record("1572.jpg", None, np.full(f, -0.5), True)  # no detection, a head probability below the threshold
    assert head.probability(weak.image_features[None])[0] < plain.threshold
    res2, held = calibrate_records(scans, free, head, ["BG", "tumor"], 0.95, no_green_records=([weak],))
    assert held.threshold < head.probability(weak.image_features[None])[0] < plain.threshold
    assert res2["threshold"] == res["threshold"] and res2["segmentation"] == res["segmentation"]
    sure = _record("1573.jpg", 0.95, np.full(f, -0.5), True)  # a confident detection flags it by itself
    assert calibrate_records(scans, free, head, ["BG", "tumor"], 0.95, no_green_records=([sure],))[1].threshold == \
        pytest.approx(plain.threshold)


def test_calibrate_records_needs_features_and_an_operating_point():
    rng = np.random.default_rng(0)
    head = fit(rng.normal(size=(20, 3)), np.r_[np.ones(10), np.zeros(10)])
    scans = [_record(f"t{i}", 0.8, rng.normal(size=3), True) for i in range(5)]
    with pytest.raises(BrainTumorError, match="operating point"):
        calibrate_records(scans, [], head, ["BG", "tumor"], 0.95)
    free = [_record("n0", 0.2, rng.normal(size=3), False)]
    for r in scans:
        r.image_features = None
    with pytest.raises(BrainTumorError, match="no image features"):
        calibrate_records(scans, free, head, ["BG", "tumor"], 0.95)


def test_format_entry_names_the_verdict():
    e = _entry(val={"dice_mean": 0.75, "mask_map50": 0.83, "image_rule": {"sensitivity": 0.95, "specificity": 0.93}},
               float32_val=REFERENCE, float32_thresholds={"operating_point": 0.4962, "image_score_threshold": 0.8875})
    text = format_entry(e)
    assert "operating point 0.5200 (float32 0.496)" in text and "accepted: the release computes in bfloat16" in text
    assert "NOT accepted (Dice off)" in format_entry({**e, "accepted": False, "why_not": ["Dice off"]})
