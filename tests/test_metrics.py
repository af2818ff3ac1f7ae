"""Metrics on hand-made predictions whose values are known exactly."""

import json

import numpy as np
import pytest

from braintumor import metrics as M
from braintumor.boxes import masks_to_boxes

H = W = 64


def square(y, x, size=10, h=H, w=W):
    m = np.zeros((h, w, 1), dtype=bool)
    m[y:y + size, x:x + size, 0] = True
    return m


def stack(*masks, h=H, w=W):
    return np.concatenate(masks, axis=-1) if masks else np.zeros((h, w, 0), dtype=bool)


def result(masks, scores, class_ids=None):
    n = masks.shape[-1]
    return {"rois": masks_to_boxes(masks), "class_ids": np.ones(n, np.int32) if class_ids is None else np.asarray(class_ids),
            "scores": np.asarray(scores, np.float32), "masks": masks}


def record(name, gt, pred, scores, **kw):
    return M.ImageRecord.from_arrays(name, gt, np.ones(gt.shape[-1], np.int32), result(pred, scores, **kw))


EMPTY = stack()


# --------------------------------------------------------------------------- Dice / IoU
def test_dice_iou_conventions():
    a = square(10, 10)[..., 0]
    assert M.dice_iou(a, a) == (1.0, 1.0)
    assert M.dice_iou(np.zeros_like(a), np.zeros_like(a)) == (1.0, 1.0)  # both empty
    assert M.dice_iou(a, np.zeros_like(a)) == (0.0, 0.0)
    assert M.dice_iou(np.zeros_like(a), a) == (0.0, 0.0)


def test_half_overlap_by_hand():
    # GT rows/cols 10..19; prediction shifted 5 px right: 50 px shared of 150 -> IoU 1/3, Dice 100/200
    r = record("shift", square(10, 10), square(10, 15), [0.9])
    dice, iou = r.dice_iou(0.5)
    assert dice == pytest.approx(0.5)
    assert iou == pytest.approx(1 / 3)
    assert M.dice_iou(square(10, 10)[..., 0], square(10, 15)[..., 0]) == pytest.approx((0.5, 1 / 3))
    # IoU 1/3 < 0.5: one false positive and one missed tumor, mAP 0
    assert r.counts(0.5) == (0, 1, 1)
    coco = M.coco_map([r])
    assert coco["segm"]["map50"] == 0.0 and coco["segm"]["map"] == 0.0
    # but the detection touches the tumor: detected at image level under both definitions
    img = M.image_level([r], 0.5)
    assert img["sensitivity_any"] == 1.0 and img["sensitivity_overlap"] == 1.0


def test_dice_uses_union_of_masks_at_threshold():
    gt = stack(square(0, 0), square(30, 30))
    pred = stack(square(0, 0), square(30, 30))
    r = record("two", gt, pred, [0.9, 0.4])
    assert r.dice_iou(0.3) == (1.0, 1.0)
    # at 0.5 only the first prediction counts: |P| = 100, |G| = 200, |P∩G| = 100
    assert r.dice_iou(0.5) == pytest.approx((200 / 300, 100 / 200))
    assert r.counts(0.5) == (1, 0, 1)
    assert r.counts(0.3) == (2, 0, 0)


def test_segmentation_summary_counts_both_empty_images():
    perfect = record("p", square(5, 5), square(5, 5), [0.9])
    empty_ok = record("e", EMPTY, EMPTY, [])
    miss = record("m", square(5, 5), EMPTY, [])
    s = M.segmentation_summary([perfect, empty_ok, miss], 0.5)
    assert s["n_both_empty"] == 1
    assert s["dice_mean"] == pytest.approx(2 / 3)
    assert s["dice_mean_tumor_images"] == pytest.approx(0.5)
    assert s["dice_pooled"] == pytest.approx(2 * 100 / 300)


# --------------------------------------------------------------------------- COCO mAP and instances
def test_perfect_predictions_score_one():
    recs = [record("a", square(10, 10), square(10, 10), [0.95]),
            record("b", stack(square(0, 0, 8), square(40, 40, 12)), stack(square(40, 40, 12), square(0, 0, 8)), [0.8, 0.7])]
    coco = M.coco_map(recs)
    for kind in ("segm", "bbox"):
        assert coco[kind]["map50"] == pytest.approx(1.0)
        assert coco[kind]["map"] == pytest.approx(1.0)
    inst = M.instance_metrics(recs, 0.5)
    assert (inst["tp"], inst["fp"], inst["fn"]) == (3, 0, 0)
    assert inst["precision"] == inst["recall"] == inst["f1"] == 1.0
    seg = M.segmentation_summary(recs, 0.5)
    assert seg["dice_mean"] == 1.0 and seg["iou_mean"] == 1.0


def test_no_predictions_score_zero_without_crash():
    recs = [record("a", square(10, 10), EMPTY, []), record("b", square(20, 20), EMPTY, [])]
    coco = M.coco_map(recs)
    assert coco["segm"]["map"] == 0.0 and coco["bbox"]["map50"] == 0.0
    inst = M.instance_metrics(recs, 0.5)
    assert inst["precision"] == 0.0 and inst["recall"] == 0.0 and inst["f1"] == 0.0
    assert M.segmentation_summary(recs, 0.5)["dice_mean"] == 0.0
    assert M.pr_curve(recs) == {"score": [], "precision": [], "recall": []}


def test_map_over_iou_thresholds_by_hand():
    # prediction = 82 of the GT's 100 pixels -> IoU 0.82: matched at 0.50 ... 0.80 (7 of the 10 COCO thresholds)
    pred = square(10, 10).copy()
    pred[18:20, 10:20, 0] = False
    pred[18, 10:12, 0] = True
    assert pred.sum() == 82
    coco = M.coco_map([record("a", square(10, 10), pred, [0.9])])
    assert coco["segm"]["map50"] == pytest.approx(1.0)
    assert coco["segm"]["map"] == pytest.approx(0.7)


def test_map_images_without_tumor_and_nothing_to_find():
    fp_only = record("free", EMPTY, square(3, 3), [0.8])
    assert M.coco_map([fp_only])["segm"]["map"] is None  # no GT anywhere: undefined, not a crash
    # a true positive ranked above a false positive on a tumor-free image keeps AP at 1 (COCO interpolation);
    # ranked below it, precision at full recall is 1/2 -> AP@0.5 = 0.5
    tp_hi = record("t", square(10, 10), square(10, 10), [0.9])
    assert M.coco_map([tp_hi, fp_only])["segm"]["map50"] == pytest.approx(1.0)
    tp_lo = record("t", square(10, 10), square(10, 10), [0.7])
    assert M.coco_map([tp_lo, fp_only])["segm"]["map50"] == pytest.approx(0.5)


def test_greedy_matching_highest_score_first():
    # two detections on one tumor: the higher-scored one is the match, the other a false positive
    gt = square(10, 10)
    near = square(10, 11)  # IoU 90/110
    exact = square(10, 10)
    r = record("dup", gt, stack(near, exact), [0.9, 0.6])
    assert r.matched.tolist() == [True, False]
    assert r.counts(0.5) == (1, 1, 0)
    assert r.counts(0.7) == (1, 0, 0)
    inst = M.instance_metrics([r], 0.5)
    assert inst["precision"] == 0.5 and inst["recall"] == 1.0 and inst["f1"] == pytest.approx(2 / 3)
    pr = M.pr_curve([r])
    assert pr["precision"] == pytest.approx([1.0, 0.5]) and pr["recall"] == pytest.approx([1.0, 1.0])


def test_class_must_agree_to_match():
    r = record("cls", square(10, 10), square(10, 10), [0.9], class_ids=[2])
    assert r.counts(0.5) == (0, 1, 1)


# --------------------------------------------------------------------------- image level
def test_false_positive_on_tumor_free_images_by_hand():
    recs = [record("t1", square(10, 10), square(10, 10), [0.9]),
            record("t2", square(30, 30), EMPTY, []),                                # missed tumor
            record("f1", EMPTY, stack(square(0, 0), square(40, 40)), [0.8, 0.6]),  # 2 FPs at 0.5
            record("f2", EMPTY, square(5, 5), [0.3]),                              # below threshold
            record("f3", EMPTY, EMPTY, []),
            record("f4", EMPTY, EMPTY, [])]
    img = M.image_level(recs, 0.5)
    assert img["n_tumor_images"] == 2 and img["n_tumor_free_images"] == 4
    assert img["sensitivity_any"] == 0.5
    assert img["specificity"] == 0.75
    assert img["tumor_free_fp_per_image"] == 0.5  # 2 detections / 4 images
    assert [f["name"] for f in img["flagged_tumor_free"]] == ["f1"]
    inst = M.instance_metrics(recs, 0.5)
    assert (inst["tp"], inst["fp"], inst["fn"]) == (1, 2, 1)
    assert inst["fp_per_image"] == pytest.approx(2 / 6)
    # at 0.25 the low-scoring one is flagged too
    assert M.image_level(recs, 0.25)["specificity"] == 0.5


def test_overlap_sensitivity_is_stricter_than_any_detection():
    r = record("elsewhere", square(10, 10), square(40, 40), [0.9])
    img = M.image_level([r], 0.5)
    assert img["sensitivity_any"] == 1.0
    assert img["sensitivity_overlap"] == 0.0
    assert r.max_overlap_score == 0.0


def test_threshold_curves_by_hand():
    c = M.threshold_curves([0.9, 0.5, 0.0], [0.6, 0.0], thresholds=[0.1, 0.55, 0.95])
    assert c["sensitivity"] == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert c["specificity"] == pytest.approx([0.5, 0.5, 1.0])
    # no tumor-free images: specificity undefined, not NaN
    assert M.threshold_curves([0.9], [], thresholds=[0.5])["specificity"] == [None]


# --------------------------------------------------------------------------- operating point
def test_operating_point_basic():
    op = M.choose_operating_point([0.9, 0.8, 0.7, 0.6], [0.65, 0.2, 0.0], min_sensitivity=0.75)
    assert op["threshold"] == pytest.approx(0.7)
    assert op["robust_threshold"] == pytest.approx(0.675)  # halfway down to the next score, 0.65
    tumor, free = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0.65, 0.2, 0.0])
    for jitter in (-0.01, 0.01):  # round-off of 0.01 on every score changes no decision
        assert ((tumor + jitter >= op["robust_threshold"]).mean(), (free + jitter < op["robust_threshold"]).mean()) \
            == (op["sensitivity"], op["specificity"]) == (0.75, 1.0)
        assert (tumor + jitter >= op["threshold"]).mean() != 0.75 or jitter > 0  # the score itself is fragile
    assert op["sensitivity"] == 0.75 and op["specificity"] == 1.0 and op["reachable"]


def test_operating_point_trades_specificity_for_sensitivity():
    # 20 tumors: 0.95 needs 19 of them -> threshold at the 19th highest score (0.2); the 20th (0.05) is given up
    tumor = [0.9] * 18 + [0.2, 0.05]
    free = [0.1, 0.3, 0.0, 0.0]
    op = M.choose_operating_point(tumor, free, 0.95)
    assert op["threshold"] == pytest.approx(0.2)
    assert op["sensitivity"] == pytest.approx(0.95)
    assert op["specificity"] == pytest.approx(0.75)


def test_operating_point_ties_go_to_highest_threshold():
    # specificity is 1 everywhere; every candidate up to 0.5 keeps sensitivity 1 -> the highest, 0.5
    op = M.choose_operating_point([0.9, 0.9, 0.5, 0.5], [0.0, 0.0], 0.95)
    assert op["threshold"] == pytest.approx(0.5) and op["sensitivity"] == 1.0 and op["specificity"] == 1.0
    # a tumor-free image scored exactly at the threshold is flagged (score >= t)
    op = M.choose_operating_point([0.9, 0.9, 0.5, 0.5], [0.5, 0.1], 0.95)
    assert op["threshold"] == pytest.approx(0.5) and op["specificity"] == 0.5


def test_operating_point_unreachable_reports_highest_sensitivity():
    # two tumors never detected: at best 2 of 4 at any threshold > 0 -> lowest positive tumor score
    op = M.choose_operating_point([0.9, 0.0, 0.0, 0.8], [0.85, 0.1], 0.95)
    assert not op["reachable"]
    assert op["threshold"] == pytest.approx(0.8)
    assert op["sensitivity"] == 0.5 and op["specificity"] == 0.5
    assert "not reachable" in op["note"]


def test_operating_point_degenerate_inputs():
    op = M.choose_operating_point([0.0, 0.0], [0.0], 0.95)
    assert op["threshold"] == 1.0 and op["sensitivity"] == 0.0 and op["specificity"] == 1.0 and not op["reachable"]
    assert M.choose_operating_point([], [0.3])["threshold"] is None
    op = M.choose_operating_point([0.9, 0.4], [], 0.95)
    assert op["threshold"] == pytest.approx(0.4) and op["specificity"] is None


# --------------------------------------------------------------------------- JSON
def test_to_jsonable_has_no_nan():
    obj = {"a": np.float32(0.5), "b": float("nan"), "c": np.array([1, 2]), "d": [np.inf, np.bool_(True)], "e": np.int64(3)}
    out = M.to_jsonable(obj)
    assert out == {"a": 0.5, "b": None, "c": [1, 2], "d": [None, True], "e": 3}
    json.dumps(out, allow_nan=False)


def test_record_rejects_mask_of_wrong_size():
    with pytest.raises(ValueError, match="img"):
        M.ImageRecord.from_arrays("img", square(1, 1), [1], result(square(1, 1, h=32, w=32), [0.9]))


def test_slice_counts_count_a_slice_once_and_flagged_if_any_copy_is():
    from braintumor.metrics import slice_counts

    names = ["a1", "a2", "b1", "c1", "d1"]
    assert slice_counts(names, ["a", "a", "b", None, None], [False, True, False, True, False]) == {
        "n_slices": 4, "n_flagged_slices": 2}
    assert slice_counts(names, None, [True] * 5) == {"n_slices": 5, "n_flagged_slices": 5}
    assert slice_counts([], None, []) == {"n_slices": 0, "n_flagged_slices": 0}
    with pytest.raises(ValueError, match="slice keys"):
        slice_counts(names, ["a"], [False] * 5)
