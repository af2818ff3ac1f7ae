"""braintumor.image_score: the logistic head, its threshold, the or-rule, serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from braintumor.errors import BrainTumorError
from braintumor.image_score import THRESHOLD_MARGIN_LOGIT, ImageScore, choose_threshold, fit


def _two_classes(n_pos=40, n_neg=120, f=6, shift=2.0, seed=0):
    rng = np.random.default_rng(seed)
    pos = rng.normal(0, 1, (n_pos, f))
    pos[:, 0] += shift  # only feature 0 carries the class
    neg = rng.normal(0, 1, (n_neg, f))
    return np.r_[pos, neg], np.r_[np.ones(n_pos), np.zeros(n_neg)]


def test_fit_finds_the_informative_feature_and_separates():
    x, y = _two_classes()
    head = fit(x, y, l2=0.01)
    assert np.argmax(np.abs(head.weights)) == 0 and head.weights[0] > 0
    p = head.probability(x)
    assert p[y == 1].mean() > 0.75 and p[y == 0].mean() < 0.25


def test_classes_weigh_the_same_whatever_their_counts():
    # 40 tumor rows against 120 without: unweighted, the bias would lean to "no tumor"
    x, y = _two_classes(shift=0.0, seed=1)  # no signal at all
    p = fit(x, y, l2=1.0).probability(x)
    assert abs(p.mean() - 0.5) < 0.05


def test_sample_weight_replaces_the_class_balance():
    x, y = _two_classes(shift=0.0, seed=1)  # no signal: the bias alone follows the weights
    balanced = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    default = fit(x, y, l2=1.0)
    given = fit(x, y, l2=1.0, sample_weight=3.0 * balanced)  # any scale: weights are scaled to sum to N
    assert np.allclose(given.weights, default.weights, atol=1e-6) and given.bias == pytest.approx(default.bias, abs=1e-6)
    plain = fit(x, y, l2=1.0, sample_weight=np.ones(len(y))).probability(x)
    assert abs(plain.mean() - y.mean()) < 0.05              # 40 of 160: unweighted, the head leans to "no tumor"
    for bad in (np.ones(len(y) - 1), -np.ones(len(y)), np.zeros(len(y))):
        with pytest.raises(BrainTumorError, match="sample_weight"):
            fit(x, y, sample_weight=bad)


def test_stronger_l2_shrinks_the_weights():
    x, y = _two_classes()
    assert np.linalg.norm(fit(x, y, l2=1.0).weights) < np.linalg.norm(fit(x, y, l2=0.001).weights)


def test_the_rule_is_a_confident_detection_or_the_head():
    head = ImageScore(np.zeros(1), np.ones(1), np.ones(1), 0.0, threshold=0.5, confident_detection=0.9)
    feats = np.array([[-5.0], [-5.0], [5.0], [-5.0]])      # head: no, no, yes, no
    det = np.array([0.95, 0.6, 0.0, 0.0])                   # detector: confident, not, none, none
    assert head.flags(feats, det).tolist() == [True, False, True, False]


def test_threshold_keeps_the_asked_sensitivity_and_is_the_highest_that_does():
    x, y = _two_classes(seed=2)
    head = fit(x, y)
    xs, det = x[y == 1], np.zeros(int(y.sum()))
    chosen = choose_threshold(head, xs, det, sensitivity=0.95)
    flagged = chosen.flags(xs, det)
    assert flagged.mean() >= 0.95
    z = np.log(chosen.threshold / (1 - chosen.threshold)) + THRESHOLD_MARGIN_LOGIT
    last = 1 / (1 + np.exp(-z))  # the last scan it must flag sits the margin above the threshold
    assert (chosen.probability(xs) >= last - 1e-9).mean() >= 0.95
    higher = ImageScore(chosen.mean, chosen.scale, chosen.weights, chosen.bias,
                        threshold=np.nextafter(last, 2.0), confident_detection=chosen.confident_detection)
    assert higher.flags(xs, det).mean() < 0.95


def test_confident_detections_count_toward_the_sensitivity():
    x, y = _two_classes(seed=3)
    head = fit(x, y)
    xs = x[y == 1]
    det = np.where(np.arange(len(xs)) < len(xs) // 2, 0.99, 0.0)   # half found by the detector
    alone = choose_threshold(head, xs, np.zeros(len(xs)))
    helped = choose_threshold(head, xs, det)
    assert helped.threshold >= alone.threshold
    assert helped.flags(xs, det).mean() >= 0.95


def test_round_trip_through_json_and_bad_heads_are_one_line():
    x, y = _two_classes()
    head = fit(x, y)
    back = ImageScore.from_dict(json.loads(json.dumps(head.to_dict())))
    np.testing.assert_allclose(back.probability(x), head.probability(x))
    d = head.to_dict()
    for bad in ({**d, "scale": [0.0] * len(d["scale"])}, {**d, "weights": d["weights"][:-1]},
                {k: v for k, v in d.items() if k != "bias"}, {**d, "features": ["res5c_out"]}):
        with pytest.raises(BrainTumorError) as e:
            ImageScore.from_dict(bad)
        assert "\n" not in str(e.value) and str(e.value).startswith("image score:")
    with pytest.raises(BrainTumorError, match=r"features must be \[N, 6\]"):
        head.probability(np.zeros((2, 5)))
    with pytest.raises(BrainTumorError, match="with and without"):
        fit(x, np.ones(len(x)))


def test_choose_threshold_with_the_operating_point_leaves_no_val_scan_green():
    head = ImageScore(mean=np.zeros(1), scale=np.ones(1), weights=np.ones(1), bias=0.0, confident_detection=0.9)
    # 20 scans: probabilities sigmoid(x); scan 0 is the least probable and has no detection at the operating point
    xs = np.linspace(-2.0, 3.0, 20)[:, None]
    det = np.full(20, 0.6)
    det[0] = 0.2
    plain = choose_threshold(head, xs, det, sensitivity=0.95)
    p = head.probability(xs)
    assert (p >= plain.threshold).sum() == 19 and p[0] < plain.threshold, "sensitivity alone leaves scan 0 out"
    safe = choose_threshold(head, xs, det, sensitivity=0.95, outline_threshold=0.5)
    assert safe.threshold < p[0] and (p >= safe.threshold).all(), "scan 0 is flagged now, with a margin"
    z0 = np.log(p[0] / (1 - p[0])) - THRESHOLD_MARGIN_LOGIT
    assert safe.threshold == pytest.approx(1 / (1 + np.exp(-z0)))
    det[0] = 0.55  # outlined at 0.5 ("uncertain", not green): nothing to add
    assert choose_threshold(head, xs, det, 0.95, outline_threshold=0.5).threshold == pytest.approx(plain.threshold)
    det[0] = 0.95  # a confident detection flags it by itself
    assert choose_threshold(head, xs, det, 0.95, outline_threshold=0.5).threshold == pytest.approx(
        choose_threshold(head, xs, det, 0.95).threshold)


def test_more_scans_held_to_no_green_lower_the_threshold_only_for_their_own_green_scans():
    """no_green_also: Figshare val slices without a detection at the operating point are flagged too; they never
    count toward the sensitivity, and one outlined (or confidently detected) changes nothing."""
    head = ImageScore(mean=np.zeros(1), scale=np.ones(1), weights=np.ones(1), bias=0.0, confident_detection=0.9)
    xs = np.linspace(-2.0, 3.0, 20)[:, None]
    det = np.full(20, 0.6)
    base = choose_threshold(head, xs, det, 0.95, outline_threshold=0.5)
    other = np.array([[-3.0], [5.0]])  # the first is below every val scan's probability
    for outlined in ([0.55, 0.1], [0.95, 0.1]):
        same = choose_threshold(head, xs, det, 0.95, outline_threshold=0.5, no_green_also=((other, outlined),))
        assert same.threshold == pytest.approx(base.threshold)
    held = choose_threshold(head, xs, det, 0.95, outline_threshold=0.5, no_green_also=((other, [0.1, 0.1]),))
    p = head.probability(other)
    assert held.threshold < p[0] < base.threshold and held.flags(other, np.array([0.1, 0.1])).all()
    z0 = np.log(p[0] / (1 - p[0])) - THRESHOLD_MARGIN_LOGIT
    assert held.threshold == pytest.approx(1 / (1 + np.exp(-z0)))
    assert choose_threshold(head, xs, det, 0.95, no_green_also=((other, [0.1, 0.1]),)).threshold == pytest.approx(
        choose_threshold(head, xs, det, 0.95).threshold), "without an operating point there is no green to avoid"
