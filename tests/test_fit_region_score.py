"""``braintumor fit-region-score``: training regions from a model's own proposals, cached crops, the command."""

from __future__ import annotations

import numpy as np
import pytest

from braintumor import fit_region_score as F
from braintumor.cli import main
from mrcnn_testutil import blob_dataset, tiny_config


def test_pick_regions_caps_positives_and_takes_the_top_scored_and_random_negatives():
    rng = np.random.default_rng(0)
    iou = np.r_[np.full(20, 0.8), np.full(5, 0.4), np.zeros(60)]      # 20 on the tumor, 5 between, 60 elsewhere
    score = np.r_[np.full(25, 0.5), np.linspace(1.0, 0.0, 60)]
    keep = F.pick_regions(iou, score, rng)
    pos, neg = keep[iou[keep] >= 0.5], keep[iou[keep] < 0.3]
    assert len(pos) == F.POSITIVES and len(neg) == F.TOP_NEGATIVES + F.RANDOM_NEGATIVES and len(keep) == len(set(keep))
    assert not np.isin(np.arange(20, 25), keep).any(), "the ambiguous band is never picked"
    assert np.isin(np.arange(25, 25 + F.TOP_NEGATIVES), keep).all(), "the highest-scored negatives are all in"
    few = F.pick_regions(np.array([0.9, 0.0]), np.array([0.2, 0.9]), rng)
    assert sorted(few.tolist()) == [0, 1]


def test_proposal_regions_label_refined_boxes_and_crops_are_cached(tmp_path):
    from braintumor.mrcnn import MaskRCNN

    model = MaskRCNN("inference", tiny_config(), tmp_path)
    regions = F.ProposalRegions(model)
    ds = blob_dataset(n=3, h=64, w=64, seed=1, empty_every=3)
    r = regions(ds.load_image(0), ds.load_mask(0)[0])
    n = len(r["score"])
    assert 0 < n <= tiny_config().POST_NMS_ROIS_INFERENCE and r["refined"].shape == (n, 4) and r["iou"].shape == (n,)
    assert ((r["refined"] >= 0) & (r["refined"] <= 1)).all() and ((r["iou"] >= 0) & (r["iou"] <= 1)).all()
    empty = regions(ds.load_image(2), ds.load_mask(2)[0])
    assert (empty["iou"] == 0).all(), "no tumor: every region is elsewhere"

    weights = tmp_path / "w.h5"
    weights.write_bytes(b"model")
    sets = [("blobs", ds, list(ds.image_ids))]
    first = F.cached_crops(regions, sets, weights, 16, (1.5, 3.0), tmp_path / "cache", log=lambda *a: None)["blobs"]
    k = len(first["iou"])
    assert first["crops"].shape == (k, 16, 16, 2) and first["crops"].dtype == np.float16 and first["geometry"].shape == (k, 4)
    assert first["image"].max() == 2 and list(first["names"]) == ["img0.png", "img1.png", "img2.png"]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1

    class Never:
        def __call__(self, *a):
            raise AssertionError("the cache is read instead")

    again = F.cached_crops(Never(), sets, weights, 16, (1.5, 3.0), tmp_path / "cache", log=lambda *a: None)["blobs"]
    np.testing.assert_array_equal(again["crops"], first["crops"])
    wide = F.cached_crops(Never(), sets, weights, 16, 3.0, tmp_path / "cache", log=lambda *a: None)["blobs"]
    np.testing.assert_array_equal(wide["crops"], first["crops"][..., 1:])   # one context of the file serves alone
    assert list(wide["contexts"]) == [3.0]
    with pytest.raises(AssertionError, match="the cache is read instead"):    # a context the file lacks
        F.cached_crops(Never(), sets, weights, 16, 2.0, tmp_path / "cache", log=lambda *a: None)
    weights.write_bytes(b"another model")  # another model file never reads the old crops
    with pytest.raises(AssertionError, match="the cache is read instead"):
        F.cached_crops(Never(), sets, weights, 16, 1.5, tmp_path / "cache", log=lambda *a: None)


def test_the_command_refuses_bad_input_in_one_line(tmp_path, capsys):
    assert main(["fit-region-score", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    (tmp_path / "d" / "train").mkdir(parents=True)
    assert main(["fit-region-score", "--data", str(tmp_path / "d"), "--figshare", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing: not a folder (--figshare)" in err and "\n" not in err
    assert main(["fit-region-score", "--data", str(tmp_path / "d"), "--epochs", "0", "--out", str(tmp_path / "x.h5")]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert main(["fit-region-score", "--data", str(tmp_path / "d"), "--context", "1.5", "0", "--out", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert "context must be one or more positive numbers" in err and "\n" not in err
