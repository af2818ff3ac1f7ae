"""MaskRCNN end to end on a tiny config: train step, frozen layers, empty ground truth,
detect() at the original sizes, checkpoints (save -> load -> same detections), run folders."""

import numpy as np
import pytest
import keras

from braintumor.errors import BrainTumorError
from braintumor.mrcnn import MaskRCNN
from braintumor.mrcnn.inputs import INPUT_ORDER, build_training_sample
from mrcnn_testutil import blob_dataset, blob_image, tiny_config


def _batch(ds, cfg, ids):
    samples = [build_training_sample(ds, cfg, i, rng=np.random.default_rng(i)) for i in ids]
    return [np.stack([s[k] for s in samples]) for k in INPUT_ORDER]


def _weights(model, name):
    return [np.array(w) for w in model.get_layer(name).weights]


@pytest.mark.slow
def test_heads_step_changes_heads_only_and_empty_gt_losses(tmp_path):
    cfg = tiny_config()
    m = MaskRCNN("training", cfg, tmp_path)
    km = m.keras_model
    m.set_trainable("heads")
    m.compile(0.01)
    ds = blob_dataset(2, empty_every=2)
    x = _batch(ds, cfg, [0])
    names = ["mrcnn_class_logits", "mrcnn_mask", "fpn_p2", "res5c_branch2c", "conv1", "bn_conv1",
             "mrcnn_class_bn1"]
    before = {n: _weights(km, n) for n in names}
    rpn_before = [np.array(w) for w in km.get_layer("rpn_model").weights]
    logs = km.train_on_batch(x, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values())
    for n in ("mrcnn_class_logits", "mrcnn_mask", "fpn_p2"):
        assert any(not np.array_equal(a, b) for a, b in zip(before[n], _weights(km, n))), n
    assert any(not np.array_equal(a, np.array(b)) for a, b in zip(rpn_before, km.get_layer("rpn_model").weights))
    for n in ("res5c_branch2c", "conv1", "bn_conv1", "mrcnn_class_bn1"):  # backbone and frozen BN untouched
        assert all(np.array_equal(a, b) for a, b in zip(before[n], _weights(km, n))), n
    # a tumor-free sample: box and mask losses exactly zero, class losses positive, a step stays finite
    e = _batch(ds, cfg, [1])
    parts = km.compute_losses(e, km(e, training=False))
    parts = {k: float(v) for k, v in parts.items()}
    assert parts["rpn_bbox_loss"] == 0.0 and parts["mrcnn_bbox_loss"] == 0.0 and parts["mrcnn_mask_loss"] == 0.0
    assert parts["rpn_class_loss"] > 0 and parts["mrcnn_class_loss"] > 0
    logs = km.train_on_batch(e, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values())
    assert all(np.all(np.isfinite(np.array(w))) for w in km.trainable_weights)


def test_set_trainable_groups_and_train_bn(tmp_path):
    m = MaskRCNN("training", tiny_config(TRAIN_BN=True), tmp_path)
    km = m.keras_model
    m.set_trainable("4+")
    assert km.get_layer("res4a_branch2a").trainable and km.get_layer("bn4a_branch2a").trainable
    assert not km.get_layer("res3a_branch2a").trainable and not km.get_layer("bn_conv1").trainable
    m.set_trainable("all")
    assert km.get_layer("conv1").trainable and km.get_layer("bn_conv1").trainable
    m2 = MaskRCNN("training", tiny_config(TRAIN_BN=False), tmp_path)
    m2.set_trainable("all")
    assert not m2.keras_model.get_layer("bn_conv1").trainable
    assert not m2.keras_model.get_layer("mrcnn_mask_bn1").trainable


_MASK_BRANCH = ["mrcnn_mask", "mrcnn_mask_conv1", "mrcnn_mask_bn1", "mrcnn_mask_deconv"]
_BOX_HEADS = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_class_conv1", "mrcnn_class_bn1"]
_FEATURES = ["fpn_p2", "fpn_p4", "fpn_p5", "res5c_branch2c", "conv1", "bn_conv1"]


@pytest.mark.slow
@pytest.mark.parametrize("group, prefixes, moved, kept, rpn_moves", [
    # the mask branch alone: nothing that makes a detection, its score or the image features moves
    ("mask", ("mrcnn_mask",), _MASK_BRANCH, _BOX_HEADS + _FEATURES, False),
    # RPN and every head: the backbone and the FPN (the image-level head's features) stay as they are
    ("detector", ("mrcnn_", "rpn_"), _MASK_BRANCH + _BOX_HEADS, _FEATURES, True),
])
def test_partial_groups_train_only_their_layers(tmp_path, group, prefixes, moved, kept, rpn_moves):
    """``LAYERS = "mask"`` / ``"detector"``: two steps move exactly the group's layers (GroupNorm included)."""
    cfg = tiny_config(NORM="gn")
    m = MaskRCNN("training", cfg, tmp_path)
    km = m.keras_model
    m.set_trainable(group)
    assert km.trainable_weights
    assert all(any(p in w.path for p in prefixes) for w in km.trainable_weights)
    m.compile(0.05)
    ds = blob_dataset(2)
    x = _batch(ds, cfg, [0])
    before = {n: _weights(km, n) for n in moved + kept}
    rpn_before = [np.array(w) for w in km.get_layer("rpn_model").weights]
    for _ in range(2):
        logs = km.train_on_batch(x, return_dict=True)
    assert logs["mrcnn_mask_loss"] > 0 and all(np.isfinite(v) for v in logs.values())
    for n in moved:
        assert any(not np.array_equal(a, b) for a, b in zip(before[n], _weights(km, n))), n
    for n in kept:
        assert all(np.array_equal(a, b) for a, b in zip(before[n], _weights(km, n))), n
    rpn_same = all(np.array_equal(a, np.array(b)) for a, b in zip(rpn_before, km.get_layer("rpn_model").weights))
    assert rpn_same != rpn_moves


@pytest.mark.slow
def test_detect_returns_original_sizes_and_save_load_round_trip(tmp_path):
    cfg = tiny_config(DETECTION_MIN_CONFIDENCE=0.0)
    a = MaskRCNN("inference", cfg, tmp_path)
    logits = a.keras_model.get_layer("mrcnn_class_logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * 0.01, np.array([0.0, 4.0], np.float32)])  # random net, but it "sees" tumors
    img1, _ = blob_image(48, 96, [(10, 20, 30, 60)])
    img2, _ = blob_image(80, 40, [(10, 5, 40, 30)], seed=1)
    res = a.detect([img1, img2])
    assert len(res) == 2
    for r, img in zip(res, (img1, img2)):
        n = len(r["class_ids"])
        assert r["masks"].shape == img.shape[:2] + (n,) and r["masks"].dtype == bool
        assert r["rois"].shape == (n, 4) and r["rois"].dtype == np.int32 and r["scores"].shape == (n,)
        assert 1 <= n <= cfg.DETECTION_MAX_INSTANCES
        assert r["rois"][:, 2].max() <= img.shape[0] and r["rois"][:, 3].max() <= img.shape[1]
        assert np.all(r["rois"][:, 2:] > r["rois"][:, :2]) and np.all(r["class_ids"] == 1)
        assert np.all(np.diff(r["scores"]) <= 0) and np.all(r["scores"] > 0.9)
        # each mask lies inside its box
        for j, (y1, x1, y2, x2) in enumerate(r["rois"]):
            outside = r["masks"][:, :, j].copy()
            outside[y1:y2, x1:x2] = False
            assert not outside.any()
    path = tmp_path / "w.h5"
    a.save_weights(path)
    keras.utils.set_random_seed(123)
    b = MaskRCNN("inference", tiny_config(DETECTION_MIN_CONFIDENCE=0.0, SEED=99), tmp_path)
    assert not np.array_equal(np.array(a.keras_model.get_layer("fpn_p2").kernel),
                              np.array(b.keras_model.get_layer("fpn_p2").kernel))
    report = b.load_weights(path)
    assert report.complete
    for wa, wb in zip(a.keras_model.weights, b.keras_model.weights):
        np.testing.assert_array_equal(np.array(wa), np.array(wb))
    res_b = b.detect([img1, img2])
    for ra, rb in zip(res, res_b):
        np.testing.assert_array_equal(ra["rois"], rb["rois"])
        np.testing.assert_array_equal(ra["masks"], rb["masks"])
        np.testing.assert_allclose(ra["scores"], rb["scores"], rtol=1e-6)


@pytest.mark.slow
def test_train_writes_checkpoints_resumes_and_find_last(tmp_path):
    cfg = tiny_config()
    m = MaskRCNN("training", cfg, tmp_path)
    with pytest.raises(BrainTumorError, match="no checkpoint"):
        m.find_last()
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, sorted(logs)))

    ds = blob_dataset(3, empty_every=3)
    m.train(ds, blob_dataset(2, seed=5), learning_rate=0.01, epochs=1, layers="heads", callbacks=[Spy()], verbose=0)
    ck = m.log_dir / "mask_rcnn_tiny_0001.h5"
    assert ck.is_file() and (m.log_dir / "config.toml").is_file()
    assert m.log_dir.parent == tmp_path and m.log_dir.name.startswith("tiny")
    assert m.epoch == 1 and seen[0][0] == 0
    assert {"loss", "rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss", "mrcnn_mask_loss",
            "val_loss"} <= set(seen[0][1])
    assert m.find_last() == ck
    # a new model resumes that run: same folder, next epoch number
    m2 = MaskRCNN("training", cfg, tmp_path)
    m2.load_weights(m2.find_last())
    assert m2.epoch == 1 and m2.log_dir == m.log_dir
    m2.train(ds, None, learning_rate=0.01, epochs=2, layers="all", verbose=0)
    assert (m.log_dir / "mask_rcnn_tiny_0002.h5").is_file() and m2.epoch == 2
    assert m2.find_last().name == "mask_rcnn_tiny_0002.h5"
    with pytest.raises(BrainTumorError):
        MaskRCNN("inference", cfg, tmp_path).train(ds, None, 0.01, 1, "heads")


@pytest.mark.slow
def test_resumed_training_gets_the_checkpoints_momentum_back(tmp_path, capsys):
    from braintumor.mrcnn.model import OPTIMIZER_STATE

    cfg = tiny_config()
    ds = blob_dataset(3, empty_every=3)
    m = MaskRCNN("training", cfg, tmp_path)
    m.train(ds, None, learning_rate=0.01, epochs=1, layers="heads", verbose=0)
    state = m.log_dir / OPTIMIZER_STATE
    assert state.is_file() and not list(m.log_dir.glob("*.tmp*"))
    after = {v.path: keras.ops.convert_to_numpy(mo) for v, mo in m._optimizer_slots()}
    assert after and any(np.abs(a).max() > 0 for a in after.values())

    seen = {}

    class AtStart(keras.callbacks.Callback):  # runs after the checkpoint callback's on_train_begin
        def __init__(self, owner):
            super().__init__()
            self.owner = owner

        def on_train_begin(self, logs=None):
            seen.update({v.path: keras.ops.convert_to_numpy(mo) for v, mo in self.owner._optimizer_slots()})

    m2 = MaskRCNN("training", cfg, tmp_path)
    m2.load_weights(m2.find_last())
    m2.train(ds, None, learning_rate=0.01, epochs=2, layers="heads", callbacks=[AtStart(m2)], verbose=0)
    assert capsys.readouterr().out.count("momentum of") == 1
    assert set(seen) == set(after)
    for k, a in after.items():
        np.testing.assert_array_equal(seen[k], a)
    with np.load(state) as z:
        assert int(z["epoch"]) == 2
    # a later stage of the same process is no resumption: its momentum starts at zero, as before
    seen.clear()
    m2.train(ds, None, learning_rate=0.01, epochs=3, layers="heads", callbacks=[AtStart(m2)], verbose=0)
    assert "momentum" not in capsys.readouterr().out and not seen  # a new optimizer, not built yet

    # the weights of epoch 1 with the momentum of epoch 2: zero momentum, and the message says why
    m3 = MaskRCNN("training", cfg, tmp_path)
    m3.load_weights(m.log_dir / "mask_rcnn_tiny_0001.h5")
    m3.set_trainable("heads")
    m3.compile(0.01)
    assert "is of epoch 3, the weights of epoch 1" in m3.restore_optimizer_state()
    # another set of trainable variables (another stage): zero momentum
    m4 = MaskRCNN("training", cfg, tmp_path)
    m4.load_weights(m2.find_last())
    m4.set_trainable("all")
    m4.compile(0.01)
    assert "other trainable variables" in m4.restore_optimizer_state()
    assert all(np.abs(keras.ops.convert_to_numpy(mo)).max() == 0 for _, mo in m4._optimizer_slots())


def test_unreadable_or_missing_momentum_file_is_one_line_and_training_goes_on(tmp_path):
    from braintumor.mrcnn.model import OPTIMIZER_STATE

    m = MaskRCNN("training", tiny_config(), tmp_path)
    run = tmp_path / "tiny20260101T0930"
    run.mkdir()
    m.set_log_dir(run / "mask_rcnn_tiny_0003.h5")
    m.compile(0.01)
    msg = m.restore_optimizer_state()
    assert msg.startswith("momentum starts at zero: no optimizer_state.npz") and "\n" not in msg
    (run / OPTIMIZER_STATE).write_bytes(b"not a zip file")
    msg = m.restore_optimizer_state()
    assert msg.startswith("momentum starts at zero:") and str(run / OPTIMIZER_STATE) in msg and "unreadable" in msg
    assert "\n" not in msg


def test_set_log_dir_parses_run_folder_and_epoch(tmp_path):
    m = MaskRCNN("inference", tiny_config(), tmp_path)
    assert m.epoch == 0 and m.log_dir.parent == tmp_path and m.log_dir.name.startswith("tiny")
    run = tmp_path / "tiny20260101T0930"
    m.set_log_dir(run / "mask_rcnn_tiny_0007.h5")
    assert m.epoch == 7 and m.log_dir == run
    assert m.checkpoint_path_for(8) == run / "mask_rcnn_tiny_0008.h5"
    m.set_log_dir(tmp_path / "elsewhere.h5")  # not a checkpoint of a run: a new run from epoch 0
    assert m.epoch == 0 and m.log_dir != run
    other = tmp_path / "tumor20250101T0000"
    m.set_log_dir(other / "mask_rcnn_tumor_0015.h5")  # another preset's run: a new "tiny" run from epoch 0
    assert m.epoch == 0 and m.log_dir.parent == tmp_path and m.log_dir.name.startswith("tiny")


def test_find_last_picks_newest_run_with_a_checkpoint(tmp_path):
    m = MaskRCNN("inference", tiny_config(), tmp_path)
    old, new, empty, other = (tmp_path / n for n in ("tiny20250101T0000", "tiny20260101T0000",
                                                     "tiny20270101T0000", "quick20280101T0000"))
    for d in (old, new, empty, other):
        d.mkdir()
    for p in (old / "mask_rcnn_tiny_0009.h5", new / "mask_rcnn_tiny_0002.h5", new / "mask_rcnn_tiny_0010.h5",
              other / "mask_rcnn_quick_0001.h5"):
        p.write_bytes(b"")
    assert m.find_last() == new / "mask_rcnn_tiny_0010.h5"


def test_same_seed_same_initial_weights(tmp_path):
    a = MaskRCNN("training", tiny_config(), tmp_path).keras_model
    b = MaskRCNN("training", tiny_config(), tmp_path).keras_model
    c = MaskRCNN("training", tiny_config(SEED=8), tmp_path).keras_model
    for n in ("conv1", "fpn_p2", "mrcnn_mask"):
        np.testing.assert_array_equal(np.array(a.get_layer(n).kernel), np.array(b.get_layer(n).kernel))
    assert not np.array_equal(np.array(a.get_layer("fpn_p2").kernel), np.array(c.get_layer("fpn_p2").kernel))


def test_warmup_cosine_schedule():
    from braintumor.mrcnn.model import WarmupCosine

    s = WarmupCosine(0.1, offset=0, warmup=10, total=100, cosine=True)
    lr = [float(s(i)) for i in (0, 4, 9, 50, 99, 150)]
    cos = [0.5 * (1 + np.cos(np.pi * i / 100)) for i in (0, 4, 9)]
    np.testing.assert_allclose(lr[:3], [0.1 * 0.1 * cos[0], 0.1 * 0.5 * cos[1], 0.1 * 1.0 * cos[2]], rtol=1e-5)
    np.testing.assert_allclose(lr[3], 0.05, rtol=1e-5)
    assert lr[4] < 1e-3 and lr[5] == pytest.approx(0.0, abs=1e-9)
    resumed = WarmupCosine(0.1, offset=50, warmup=10, total=100, cosine=True)
    assert float(resumed(0)) == pytest.approx(0.05, rel=1e-5)  # continues the run's curve


def test_groupnorm_trains_with_its_layer_group_whatever_train_bn(tmp_path):
    m = MaskRCNN("training", tiny_config(NORM="gn", TRAIN_BN=False), tmp_path)
    km = m.keras_model
    m.set_trainable("all")
    assert km.get_layer("bn_conv1").trainable and km.get_layer("mrcnn_mask_bn1").trainable
    m.set_trainable("heads")
    assert not km.get_layer("bn_conv1").trainable and not km.get_layer("bn4a_branch2a").trainable
    assert km.get_layer("mrcnn_class_bn1").trainable
    m.set_trainable("4+")
    assert km.get_layer("bn4a_branch2a").trainable and not km.get_layer("bn3a_branch2a").trainable


def test_detect_returns_pooled_fpn_features_of_each_image(tmp_path):
    """``image_features``: GAP then GMP of fpn_p4, then of fpn_p5, of that image (not of its batch mate)."""
    from braintumor.mrcnn.inputs import mold_inputs
    from braintumor.mrcnn.model import IMAGE_FEATURE_LAYERS

    cfg = tiny_config(IMAGES_PER_GPU=2)
    m = MaskRCNN("inference", cfg, tmp_path)
    imgs = [blob_image(64, 64, [(10, 20, 30, 50)])[0], blob_image(64, 64, [(30, 5, 60, 30)], seed=1)[0]]
    res = m.detect(imgs)
    km = m.keras_model
    maps = keras.Model(km.inputs, [km.get_layer(n).output for n in IMAGE_FEATURE_LAYERS])
    for r, img in zip(res, imgs):
        molded, metas, _ = mold_inputs([img], cfg)
        p4, p5 = [np.asarray(t)[0] for t in maps([molded, metas], training=False)]
        want = np.concatenate([p4.mean((0, 1)), p4.max((0, 1)), p5.mean((0, 1)), p5.max((0, 1))])
        assert r["image_features"].shape == (4 * cfg.TOP_DOWN_PYRAMID_SIZE,) and r["image_features"].dtype == np.float32
        np.testing.assert_allclose(r["image_features"], want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(res[0]["image_features"], res[1]["image_features"])


def test_image_features_alone_equal_detects_for_images_of_any_size(tmp_path):
    """The backbone-and-FPN path gives detect()'s ``image_features``, also for an image molded with padding."""
    cfg = tiny_config()
    m = MaskRCNN("inference", cfg, tmp_path)
    imgs = [blob_image(64, 64, [(10, 20, 30, 50)])[0], blob_image(48, 80, [(5, 5, 40, 30)], seed=1)[0]]
    feats = m.image_features(imgs)
    assert feats.shape == (2, 4 * cfg.TOP_DOWN_PYRAMID_SIZE) and feats.dtype == np.float32
    for f, img in zip(feats, imgs):
        np.testing.assert_allclose(f, m.detect([img])[0]["image_features"], rtol=1e-4, atol=1e-5)
    assert not np.allclose(feats[0], feats[1])
    assert m.image_features([]).shape == (0, 4 * cfg.TOP_DOWN_PYRAMID_SIZE)
    with pytest.raises(BrainTumorError, match="inference"):
        MaskRCNN("training", cfg, tmp_path).image_features(imgs)


def test_detect_applies_the_secondary_confidence_bar(tmp_path):
    """An untrained model scores its regions about 1 / NUM_CLASSES: with no floor it returns many;
    with DETECTION_SECONDARY_MIN_CONFIDENCE above every score only the best is left, the same one."""
    img = blob_image(64, 64, [(10, 20, 30, 50)])[0]
    keras.utils.set_random_seed(3)
    m = MaskRCNN("inference", tiny_config(DETECTION_MIN_CONFIDENCE=0.0), tmp_path)
    (many,) = m.detect([img])
    assert len(many["scores"]) >= 2, many["scores"]
    m.config = m.config.replace(DETECTION_SECONDARY_MIN_CONFIDENCE=0.999)
    (one,) = m.detect([img])
    best = int(np.argmax(many["scores"]))
    assert one["scores"].tolist() == [many["scores"][best]] and one["masks"].shape[2] == 1
    np.testing.assert_array_equal(one["rois"][0], many["rois"][best])


@pytest.mark.slow
def test_train_step_logs_the_gradient_norm_before_the_clip_and_the_clipped_share(tmp_path):
    """``grad_norm`` is the norm the optimizer clips: a first SGD step (no momentum yet) moves the weights by
    exactly lr x min(norm, clip); ``clipped`` says whether the clip bit; validation logs neither."""
    cfg = tiny_config(GRADIENT_CLIP_NORM=0.05, WEIGHT_DECAY=0.0)
    m = MaskRCNN("training", cfg, tmp_path)
    km = m.keras_model
    m.set_trainable("all")
    x = _batch(blob_dataset(2), cfg, [0])

    def step_norm():
        before = [np.array(v) for v in km.trainable_variables]
        logs = km.train_on_batch(x, return_dict=True)
        moved = np.sqrt(sum(np.sum((np.array(v, np.float64) - b) ** 2) for v, b in zip(km.trainable_variables, before)))
        return logs, moved

    m.compile(0.01)
    logs, moved = step_norm()
    assert logs["grad_norm"] > 0.05 and logs["clipped"] == 1.0
    assert moved == pytest.approx(0.01 * 0.05, rel=0.02)  # the clip bit: the step is lr x clip
    m.config = cfg.replace(GRADIENT_CLIP_NORM=1e6)
    m.compile(0.01)  # a new optimizer: no momentum
    logs, moved = step_norm()
    assert logs["clipped"] == 0.0
    assert moved == pytest.approx(0.01 * logs["grad_norm"], rel=0.02)  # unclipped: lr x the logged norm
    val = km.test_on_batch(x, return_dict=True)
    assert "grad_norm" not in val and "clipped" not in val and np.isfinite(val["loss"])


@pytest.mark.slow
def test_gradient_accumulation_takes_one_step_on_the_mean_of_k_batches(tmp_path):
    """GRADIENT_ACCUMULATION_STEPS = 3: the first two batches leave the weights alone and add their gradients
    (of the norm each logs) to the accumulator; the third moves the weights by lr x the mean of the three
    (no momentum, no clip), at the rate the cosine gives its batch (the schedule counts batches: 2 of 6 done,
    0.01 x 0.75), the optimizer has taken one step and the accumulator is empty again."""
    cfg = tiny_config(GRADIENT_CLIP_NORM=0.0, WEIGHT_DECAY=0.0, GRADIENT_ACCUMULATION_STEPS=3, STEPS_PER_EPOCH=3,
                      EPOCHS=2, LR_DECAY="cosine", WARMUP_STEPS=0)
    m = MaskRCNN("training", cfg, tmp_path)
    km = m.keras_model
    m.set_trainable("all")
    m.compile(0.01, momentum=0.0)
    opt = km.optimizer

    def norm(arrays):
        return float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays)))

    w0 = [np.array(v, np.float64) for v in km.trainable_variables]
    acc = None
    for i in range(3):
        logs = km.train_on_batch(_batch(blob_dataset(3), cfg, [i]), return_dict=True)
        if i < 2:
            assert all(np.array_equal(np.array(v, np.float64), w) for v, w in zip(km.trainable_variables, w0))
            now = [np.array(g, np.float64) for g in opt._accumulated_gradients]
            added = now if acc is None else [n - a for n, a in zip(now, acc)]
            assert norm(added) == pytest.approx(logs["grad_norm"], rel=1e-3)  # this batch's gradient
            acc = now
    assert int(opt.iterations) == 1
    step = [np.array(v, np.float64) - w for v, w in zip(km.trainable_variables, w0)]
    lr = 0.01 * 0.5 * (1 + np.cos(np.pi * 2 / 6))
    g3 = [-3.0 * d / lr - a for d, a in zip(step, acc)]  # step = -lr (g1 + g2 + g3) / 3
    assert norm(g3) == pytest.approx(logs["grad_norm"], rel=0.02)  # what is left is the third batch's gradient
    assert all(not np.any(np.array(g)) for g in opt._accumulated_gradients)
