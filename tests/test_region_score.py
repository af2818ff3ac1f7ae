"""braintumor.region_score: crops, the combined score, rescoring detect() results, the file, the fit."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from braintumor.errors import BrainTumorError
from braintumor.mrcnn.inputs import ResizeInfo
from braintumor import region_score as R

SMALL = dict(size=16, widths=(4, 8))


def _scorer(weight=0.5, **kw) -> R.RegionScore:
    return R.RegionScore(R.build_scorer(SMALL["size"], SMALL["widths"]), weight=weight, **SMALL, **kw)


def test_boxes_map_to_the_molded_frame_by_hand():
    # a 100 x 50 image in a 128 x 128 square: scale 1.28, padded 32 px left and right
    info = ResizeInfo(window=(0, 32, 128, 96), scale=1.28, padding=[(0, 0), (32, 32), (0, 0)], crop=None,
                      original_shape=(100, 50, 3), molded_shape=(128, 128, 3))
    got = R.to_molded_frame(np.array([[10, 5, 60, 45]]), info)
    np.testing.assert_allclose(got, [[12.8 / 128, 38.4 / 128, 76.8 / 128, 89.6 / 128]], atol=1e-6)
    cropped = ResizeInfo(window=(0, 0, 64, 64), scale=1.0, padding=[(0, 0)] * 3, crop=(10, 20, 64, 64),
                         original_shape=(100, 100, 3), molded_shape=(64, 64, 3))
    np.testing.assert_allclose(R.to_molded_frame(np.array([[10, 20, 42, 52]]), cropped), [[0, 0, 0.5, 0.5]], atol=1e-6)


def test_from_molded_frame_inverts_to_molded_frame_even_outside_the_image():
    padded = ResizeInfo(window=(0, 32, 128, 96), scale=1.28, padding=[(0, 0), (32, 32), (0, 0)], crop=None,
                        original_shape=(100, 50, 3), molded_shape=(128, 128, 3))
    cropped = ResizeInfo(window=(0, 0, 64, 64), scale=1.0, padding=[(0, 0)] * 3, crop=(10, 20, 64, 64),
                         original_shape=(100, 100, 3), molded_shape=(64, 64, 3))
    px = np.array([[10, 5, 60, 45], [-20, -10, 110, 70]], np.float64)   # the second reaches outside the image
    for info in (padded, cropped):
        back = R.from_molded_frame(R.to_molded_frame(px, info), info)
        h, w = info.original_shape[:2]
        np.testing.assert_allclose(back * np.array([h, w, h, w]), px, atol=1e-3)
    # by hand: the window (x 32..96 of 128, all 128 rows) is the whole image
    np.testing.assert_allclose(R.from_molded_frame(np.array([[0.0, 0.25, 1.0, 0.75]]), padded), [[0, 0, 1, 1]],
                               atol=1e-6)


def test_a_crop_is_the_grey_square_around_the_box_with_context():
    molded = np.full((1, 64, 64, 3), 5.0, np.float32)
    molded[0, 24:40, 16:48] = [30.0, 60.0, 90.0]          # a 16 x 32 box of grey 60 on grey 5
    box = np.array([[24 / 64, 16 / 64, 40 / 64, 48 / 64]])
    tight, geometry = R.region_crops(molded, box, size=16, context=1.0)
    assert tight.shape == (1, 16, 16, 1)
    # the square is the longer side (32 px) about the centre: rows 16..48, the box's 16 rows in the middle half
    assert tight[0, 5:11, 1:15, 0].min() == pytest.approx(60.0) and tight[0, :3, :, 0].max() == pytest.approx(5.0)
    np.testing.assert_allclose(geometry, [[0.5, 0.5, np.log(0.25), np.log(0.5)]], atol=1e-6)
    wide, _ = R.region_crops(molded, box, size=16, context=2.0)
    assert wide[0, 7:9, 7:9, 0].min() == pytest.approx(60.0)   # centre on the box
    assert wide[0, :, :2, 0].max() == pytest.approx(5.0)        # 64 px square: the sides are outside the box
    corner, _ = R.region_crops(molded, np.array([[0.0, 0.0, 0.1, 0.1]]), size=16, context=3.0)
    assert corner[0, :4, :4, 0].max() == 0.0                    # outside the image reads 0 (the mean pixel)
    assert corner[0, 8:, 8:, 0].min() == pytest.approx(5.0)
    empty, g = R.region_crops(molded, np.zeros((0, 4)), size=16)
    assert empty.shape == (0, 16, 16, 1) and g.shape == (0, 4)


def test_a_crop_square_is_context_times_the_longer_side_in_pixels():
    # a 20 x 20 px box in a 100 x 200 frame (0.2 of the height, 0.1 of the width), context 2: a 40 px square
    got = R.crop_squares(np.array([[0.4, 0.4, 0.6, 0.5]]), 100, 200, 2.0)
    np.testing.assert_allclose(got, [[0.3, 0.35, 0.7, 0.55]], atol=1e-6)
    # a wide box: the square follows its width (60 px), centred, reaching above the frame
    got = R.crop_squares(np.array([[0.0, 0.2, 0.1, 0.5]]), 100, 200, 1.0)
    np.testing.assert_allclose(got, [[0.05 - 0.3, 0.2, 0.05 + 0.3, 0.5]], atol=1e-6)
    assert R.crop_squares(np.zeros((0, 4)), 64, 64, 1.5).shape == (0, 4)


def test_several_contexts_give_one_channel_each():
    molded = np.random.default_rng(3).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    boxes = np.array([[0.2, 0.3, 0.5, 0.45], [0.6, 0.1, 0.9, 0.7]])
    both, geometry = R.region_crops(molded, boxes, size=16, context=(1.5, 3.0))
    assert both.shape == (2, 16, 16, 2)
    for k, c in enumerate((1.5, 3.0)):
        one, g = R.region_crops(molded, boxes, size=16, context=c)
        np.testing.assert_allclose(both[..., k], one[..., 0], atol=1e-4)
        np.testing.assert_array_equal(g, geometry)
    assert not np.allclose(both[..., 0], both[..., 1])
    assert R.region_crops(molded, np.zeros((0, 4)), size=16, context=[1.5, 3])[0].shape == (0, 16, 16, 2)
    assert R.contexts_of(2) == (2.0,) and R.contexts_of([1.5, 3]) == (1.5, 3.0)
    for bad in ([], [1.5, 0.0], -1):
        with pytest.raises(BrainTumorError, match="context"):
            R.contexts_of(bad)


def test_the_combined_score_is_a_weighted_geometric_mean():
    det, reg = np.array([0.9, 0.4, 0.2]), np.array([0.1, 0.9, 1.0])
    np.testing.assert_allclose(_scorer(0.0).combine(det, reg), det, rtol=1e-6)
    np.testing.assert_allclose(_scorer(1.0).combine(det, reg), reg, rtol=1e-6)
    np.testing.assert_allclose(_scorer(0.5).combine(det, reg), np.sqrt(det * reg), rtol=1e-6)
    np.testing.assert_allclose(_scorer(0.25).combine(det, reg), det ** 0.75 * reg ** 0.25, rtol=1e-6)
    for bad in (-0.1, 1.5):
        with pytest.raises(BrainTumorError, match="weight"):
            _scorer(bad)
    with pytest.raises(BrainTumorError, match="detector_floor"):
        _scorer(0.5, detector_floor=0.0)


def _result(scores, h=64, w=64):
    n = len(scores)
    rois = np.array([[4 * k, 4 * k, 4 * k + 20, 4 * k + 20] for k in range(n)], np.int32).reshape(-1, 4)
    masks = np.zeros((h, w, n), bool)
    for k, (y1, x1, y2, x2) in enumerate(rois):
        masks[y1:y2, x1:x2, k] = True
    return {"rois": rois, "class_ids": np.ones(n, np.int32), "scores": np.asarray(scores, np.float32),
            "masks": masks, "image_features": np.ones(4, np.float32)}


def test_rescore_reorders_by_the_combined_score_and_applies_floor_and_secondary_rule(monkeypatch):
    from tests.mrcnn_testutil import tiny_config

    rs = _scorer(0.5)
    region = np.array([0.01, 0.81, 0.64, 0.25], np.float32)
    monkeypatch.setattr(R.RegionScore, "score_regions", lambda self, r, molded, info: region[:len(r["scores"])])
    image = np.zeros((64, 64, 3), np.uint8)
    res = _result([0.9, 0.36, 0.64, 0.04])                  # combined 0.095, 0.54, 0.64, 0.1
    out = rs.rescore(res, image, tiny_config(), floor=0.09, secondary=0.0)
    np.testing.assert_allclose(out["scores"], [0.64, 0.54, 0.1, 0.094868], atol=1e-5)
    np.testing.assert_allclose(out["detector_scores"], [0.64, 0.36, 0.04, 0.9], atol=1e-6)
    np.testing.assert_allclose(out["region_scores"], [0.64, 0.81, 0.25, 0.01], atol=1e-6)
    assert out["rois"][:, 0].tolist() == [8, 4, 12, 0] and out["masks"][:, :, 0].sum() == 400
    assert out["masks"][8, 8, 0] and not out["masks"][0, 0, 0]
    assert out["image_features"] is res["image_features"]
    floor = rs.rescore(res, image, tiny_config(), floor=0.5, secondary=0.0)
    assert floor["scores"].shape == (2,) and floor["masks"].shape == (64, 64, 2)
    strong = rs.rescore(res, image, tiny_config(), floor=0.05, secondary=0.6)   # the best, and others >= 0.6
    np.testing.assert_allclose(strong["scores"], [0.64], atol=1e-6)
    none = rs.rescore(_result([]), image, tiny_config(), floor=0.05)
    assert none["scores"].shape == (0,) and none["masks"].shape == (64, 64, 0) and none["region_scores"].shape == (0,)


def test_score_regions_reads_the_molded_image_and_gives_probabilities():
    from braintumor.mrcnn.inputs import mold_inputs
    from tests.mrcnn_testutil import blob_image, tiny_config

    image, _ = blob_image(48, 64, [(10, 10, 30, 40)])
    molded, _, infos = mold_inputs([image], tiny_config())
    p = _scorer().score_regions(_result([0.5, 0.7], 48, 64), molded, infos[0])
    assert p.shape == (2,) and p.dtype == np.float32 and ((p > 0) & (p < 1)).all()


def test_the_file_round_trips_and_bad_files_fail_in_one_line(tmp_path):
    rs = _scorer(0.35, detector_floor=0.1, fit={"epochs": 1})
    path = rs.save(tmp_path / "rs.h5")
    again = R.load_region_score(path)
    assert (again.size, again.widths, again.weight, again.detector_floor, again.fit) == (16, (4, 8), 0.35, 0.1, {"epochs": 1})
    rng = np.random.default_rng(0)
    crops, geometry = rng.normal(0, 50, (5, 16, 16, 1)).astype(np.float32), rng.uniform(-2, 1, (5, 4)).astype(np.float32)
    np.testing.assert_allclose(again.probability(crops, geometry), rs.probability(crops, geometry), atol=1e-6)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"
    with pytest.raises(BrainTumorError, match="missing.h5: region-score file not found"):
        R.load_region_score(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(BrainTumorError, match="text.h5: not a region-score file"):
        R.load_region_score(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(BrainTumorError, match="other.h5: not a region-score model"):
        R.load_region_score(tmp_path / "other.h5")
    with h5py.File(path, "a") as f:                       # weights of another architecture
        f.attrs["widths"] = np.array([4, 8, 16])
    with pytest.raises(BrainTumorError, match="rs.h5: not a region-score model .*do not fit"):
        R.load_region_score(path)


def test_a_scorer_of_two_contexts_round_trips_and_reads_two_channels(tmp_path):
    from braintumor.mrcnn.inputs import mold_inputs
    from tests.mrcnn_testutil import blob_image, tiny_config

    rs = R.RegionScore(R.build_scorer(16, (4, 8), channels=2), size=16, widths=(4, 8), context=[1.5, 3.0])
    assert rs.contexts == (1.5, 3.0) and rs.context == (1.5, 3.0)
    path = rs.save(tmp_path / "two.h5")
    with h5py.File(path, "r") as f:
        assert f.attrs["braintumor_region_score"] == 2 and list(f.attrs["context"]) == [1.5, 3.0]
    with h5py.File(_scorer().save(tmp_path / "one.h5"), "r") as f:
        assert f.attrs["braintumor_region_score"] == 1 and float(f.attrs["context"]) == 1.5  # as before
    again = R.load_region_score(path)
    assert again.contexts == (1.5, 3.0)
    image, _ = blob_image(48, 64, [(10, 10, 30, 40)])
    molded, _, infos = mold_inputs([image], tiny_config())
    res = _result([0.5, 0.7], 48, 64)
    np.testing.assert_allclose(again.score_regions(res, molded, infos[0]), rs.score_regions(res, molded, infos[0]),
                               atol=1e-6)
    with h5py.File(path, "a") as f:                       # one context named, two channels of weights
        f.attrs["context"] = 1.5
    with pytest.raises(BrainTumorError, match="two.h5: not a region-score model .*1 context"):
        R.load_region_score(path)


def test_training_labels_leave_the_ambiguous_band_out():
    y = R.training_labels(np.array([0.0, 0.29, 0.3, 0.49, 0.5, 0.9]))
    assert y[:2].tolist() == [0, 0] and np.isnan(y[2:4]).all() and y[4:].tolist() == [1, 1]


def test_the_fit_learns_bright_blobs_from_noise():
    rng = np.random.default_rng(0)
    n = 192
    crops = rng.normal(0, 20, (n, 16, 16)).astype(np.float32)
    labels = (np.arange(n) % 4 == 0).astype(np.float32)          # a quarter positive: the class weights matter
    crops[labels == 1, 5:11, 5:11] += 120.0
    geometry = rng.uniform(0, 1, (n, 4)).astype(np.float32)      # carries no signal
    labels_with_ambiguous = labels.copy()
    labels_with_ambiguous[1] = np.nan
    model = R.fit_scorer(crops, geometry, labels_with_ambiguous, epochs=6, seed=0, batch=32, learning_rate=3e-3,
                         verbose=0, **SMALL)
    p = R.RegionScore(model, **SMALL).probability(crops[..., None], geometry)
    assert p[labels == 1].min() > p[labels == 0].max()            # every blob ranks above every noise crop
    with pytest.raises(BrainTumorError, match="on a tumor and regions elsewhere"):
        R.fit_scorer(crops, geometry, np.zeros(n), epochs=1, verbose=0, **SMALL)
    two = np.stack([rng.normal(0, 20, (n, 16, 16)).astype(np.float32), crops], -1)  # the signal in channel 2 only
    model = R.fit_scorer(two, geometry, labels, epochs=6, seed=0, batch=32, learning_rate=3e-3, verbose=0, **SMALL)
    assert model.inputs[0].shape[-1] == 2
    p = R.RegionScore(model, context=(1.5, 3.0), **SMALL).probability(two, geometry)
    assert p[labels == 1].min() > p[labels == 0].max()
    with pytest.raises(BrainTumorError, match="crops are 8 x 8 px, the scorer reads 16"):
        R.fit_scorer(crops[:, :8, :8], geometry, labels, epochs=1, verbose=0, **SMALL)


def test_predictor_builds_the_network_with_the_scorer_floor_and_rescores(monkeypatch, tmp_path):
    from braintumor.inference import Predictor
    from tests.mrcnn_testutil import tiny_config

    cfg = tiny_config(DETECTION_MIN_CONFIDENCE=0.4, DETECTION_SECONDARY_MIN_CONFIDENCE=0.95)
    pred = Predictor(tmp_path / "w.h5", cfg, threshold=0.4)
    assert pred.model_config() is cfg
    pred.region_score = _scorer(0.5, detector_floor=0.05)
    built = pred.model_config()
    assert built.DETECTION_MIN_CONFIDENCE == 0.05 and built.DETECTION_SECONDARY_MIN_CONFIDENCE == 0.0

    class Net:
        def detect(self, images):
            return [_result([0.9, 0.36])]

    pred._model = Net()
    monkeypatch.setattr(R.RegionScore, "score_regions", lambda self, r, molded, info: np.array([0.01, 0.81], np.float32))
    out = pred.detect([np.zeros((64, 64, 3), np.uint8)])[0]
    # combined 0.095 and 0.54: the floor 0.4 (the config's) leaves the second region only
    np.testing.assert_allclose(out["scores"], [0.54], atol=1e-6)
    np.testing.assert_allclose(out["detector_scores"], [0.36], atol=1e-6)


# ------------------------------------------------------------------ several scorers read as one
def test_the_geometric_mean_of_probabilities_by_hand():
    p = R.mean_probability([np.array([0.25, 0.9, 0.0], np.float32), np.array([0.64, 0.1, 0.5], np.float32)])
    np.testing.assert_allclose(p[:2], [0.4, 0.3], atol=1e-6)          # sqrt(0.25 x 0.64), sqrt(0.9 x 0.1)
    assert 0 < p[2] < 1e-5                                              # a member's 0 stays near 0, not NaN
    one = np.array([0.3, 0.7], np.float32)
    np.testing.assert_array_equal(R.mean_probability([one]), one)


def test_a_set_scores_each_region_by_its_members_own_crops_then_combines(monkeypatch):
    """Each member reads the crops of its own size (the members differ), the set's probability is their geometric
    mean, and the combined score uses the set's weight, whatever the members' own."""
    from braintumor.mrcnn.inputs import mold_inputs
    from tests.mrcnn_testutil import blob_image, tiny_config

    a = _scorer(0.3, detector_floor=0.05)
    b = R.RegionScore(R.build_scorer(24, (4, 8), 2), size=24, context=(1.5, 3.0), widths=(4, 8), weight=0.9)
    s = R.RegionScoreSet((a, b))
    assert (s.weight, s.detector_floor) == (0.3, 0.05)                 # the first member's
    image, _ = blob_image(48, 64, [(10, 10, 30, 40)])
    molded, _, infos = mold_inputs([image], tiny_config())
    res = _result([0.5, 0.7], 48, 64)
    pa, pb = a.score_regions(res, molded, infos[0]), b.score_regions(res, molded, infos[0])
    np.testing.assert_allclose(s.score_regions(res, molded, infos[0]), np.sqrt(pa * pb), rtol=1e-5)
    monkeypatch.setattr(R.RegionScore, "score_regions", lambda self, r, m, i: np.array([0.16, 0.81], np.float32)
                        if self is a else np.array([1.0, 0.81], np.float32))
    out = s.with_settings(weight=0.5).rescore(res, image, tiny_config(), floor=0.0)
    np.testing.assert_allclose(out["region_scores"], [0.81, 0.4], atol=1e-6)     # sqrt(.81 x .81), sqrt(.16 x 1)
    np.testing.assert_allclose(out["scores"], [np.sqrt(0.7 * 0.81), np.sqrt(0.5 * 0.4)], atol=1e-6)
    with pytest.raises(BrainTumorError, match="two or more scorers"):
        R.RegionScoreSet((a,))


def test_with_settings_changes_weight_or_floor_of_a_scorer_and_a_set_alike_and_checks_them():
    """The sweep changes the floor and weight of whatever file it was given: one scorer or a set (a set once
    crashed it). Unnamed settings stay; out-of-range ones are the construction's one-line errors."""
    a, b = _scorer(0.3, detector_floor=0.05), _scorer(0.7, detector_floor=0.2)
    for s in (a, R.RegionScoreSet((a, b))):
        f = s.with_settings(detector_floor=0.1)
        assert type(f) is type(s) and (f.weight, f.detector_floor) == (0.3, 0.1)
        w = s.with_settings(weight=0.6)
        assert (w.weight, w.detector_floor) == (0.6, 0.05) and (s.weight, s.detector_floor) == (0.3, 0.05)
        with pytest.raises(BrainTumorError, match="detector_floor must be in"):
            s.with_settings(detector_floor=1.0)
        with pytest.raises(BrainTumorError, match="weight must be in"):
            s.with_settings(weight=-0.1)
    assert a.with_settings(weight=0.6).model is a.model


def test_a_set_round_trips_through_its_file_and_chosen_builds_it_from_repeated_paths(tmp_path):
    a = _scorer(0.3, fit={"seed": 0})
    b = _scorer(0.7, detector_floor=0.2, fit={"seed": 1})
    pa, pb = a.save(tmp_path / "a.h5"), b.save(tmp_path / "b.h5")
    s = R.chosen([str(pa), str(pb)], weight=0.4)
    assert isinstance(s, R.RegionScoreSet) and (s.weight, s.detector_floor) == (0.4, 0.05)
    assert s.fit == {"members": [{"seed": 0}, {"seed": 1}]}
    again = R.load_region_score(s.save(tmp_path / "set.h5"))
    assert isinstance(again, R.RegionScoreSet) and (again.weight, again.detector_floor) == (0.4, 0.05)
    rng = np.random.default_rng(0)
    crops, geometry = rng.normal(0, 50, (3, 16, 16, 1)).astype(np.float32), rng.uniform(-2, 1, (3, 4)).astype(np.float32)
    for m, n in zip(again.members, (a, b)):
        np.testing.assert_allclose(m.probability(crops, geometry), n.probability(crops, geometry), atol=1e-6)
    entry = again.card_entry()
    assert len(entry["members"]) == 2 and "weight" not in entry["members"][0]
    assert entry["parameters"] == 2 * a.model.count_params()
    assert isinstance(R.chosen([str(pa)]), R.RegionScore) and R.chosen(str(pa)).weight == 0.3
    assert R.command_options([str(pa), str(pb)], 0.4) == f" --region-score {pa} --region-score {pb} --region-weight 0.4"
    with h5py.File(tmp_path / "set.h5", "a") as f:                    # a member that is not a scorer
        del f["member_001/weights"]
    with pytest.raises(BrainTumorError, match="set.h5/member_001: not a region-score model"):
        R.load_region_score(tmp_path / "set.h5")
    with pytest.raises(BrainTumorError, match="missing.h5: region-score file not found"):
        R.chosen([str(pa), str(tmp_path / "missing.h5")])
