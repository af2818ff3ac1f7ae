"""Issue 12's speed settings: INPUT_WORKERS (same samples), PRECISION (bfloat16), VALIDATION_EVERY."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mrcnn_testutil import blob_dataset, blob_image, tiny_config

AUG = {"HORIZONTAL_FLIP": 0.5, "AFFINE": 0.7, "ROTATE": 15, "SCALE": [0.8, 1.2], "TRANSLATE": 0.08,
       "BRIGHTNESS_CONTRAST": 0.7, "GAUSS_NOISE": 0.3}


def _take(gen, n):
    return list(itertools.islice(gen, n))


def test_input_workers_give_bit_identical_samples_in_the_same_order():
    from braintumor.augment import build_augmentation
    from braintumor.mrcnn.inputs import pass_orders, sample_generator, sample_indices

    ds = blob_dataset(5, seed=3, empty_every=4)
    cfg = tiny_config()
    aug = build_augmentation(AUG)
    runs = {w: _take(sample_generator(ds, cfg, aug, seed=11, workers=w), 13) for w in (0, 1, 2)}
    for w in (1, 2):
        for a, b in zip(runs[0], runs[w]):
            for x, y in zip(a, b):
                assert x.dtype == y.dtype and x.shape == y.shape
                np.testing.assert_array_equal(x, y)
    # the order is pass_orders' with default_rng(seed), pass after pass (image id = meta[0])
    passes = pass_orders(ds, np.random.default_rng(11))
    expected = np.concatenate([next(passes) for _ in range(3)])[:13]
    assert [int(s[1][0]) for s in runs[0]] == list(expected) == _take(sample_indices(ds, 11), 13)
    # augmentation really happens, and differs between two draws of one image
    firsts = [s for s in runs[0] if int(s[1][0]) == int(expected[0])]
    assert len(firsts) >= 2 and not np.array_equal(firsts[0][0], firsts[1][0])
    # another seed, other samples
    other = _take(sample_generator(ds, cfg, aug, seed=12, workers=2), 3)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(other, runs[0][:3]))


def test_tf_dataset_same_batches_with_and_without_workers():
    from braintumor.augment import build_augmentation
    from braintumor.mrcnn.inputs import make_tf_dataset

    ds = blob_dataset(3, seed=1)
    aug = build_augmentation(AUG)
    batches = {}
    for w in (0, 2):
        cfg = tiny_config(IMAGES_PER_GPU=2, INPUT_WORKERS=w)
        batches[w] = [[t.numpy() for t in x] for (x,) in make_tf_dataset(ds, cfg, aug, seed=5).take(3)]
    for a, b in zip(batches[0], batches[2]):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_a_bad_image_names_itself_from_a_worker_thread():
    from braintumor.errors import BrainTumorError
    from braintumor.mrcnn.inputs import sample_generator

    ds = blob_dataset(2)
    ds.load_image = lambda i: (_ for _ in ()).throw(OSError("truncated file"))
    with pytest.raises(BrainTumorError, match="img.\\.png: cannot build a training sample"):
        _take(sample_generator(ds, tiny_config(), None, seed=0, workers=2), 1)


def test_speed_settings_are_validated():
    from braintumor.config import ConfigError

    for key, bad in (("GN_IMPL", "fast"), ("PRECISION", "float16"), ("INPUT_WORKERS", -1), ("VALIDATION_EVERY", 0)):
        with pytest.raises(ConfigError, match=key):
            tiny_config(**{key: bad})


def test_precision_falls_back_to_float32_without_bf16_flags(capsys):
    from braintumor.mrcnn import precision

    cfg = tiny_config(PRECISION="mixed_bfloat16")
    assert precision.cpu_bf16_flags("flags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n") == ["avx512_bf16"]
    assert precision.compute_policy(cfg, "flags\t\t: fpu sse2 amx_bf16\n") == "mixed_bfloat16"
    precision._said.clear()
    assert precision.compute_policy(cfg, "flags\t\t: fpu sse2 avx2\n") == "float32"
    assert precision.compute_policy(cfg, "flags\t\t: fpu sse2 avx2\n") == "float32"
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "avx512_bf16" in out and "float32" in out
    assert precision.compute_policy(tiny_config(), "flags: avx512_bf16") == "float32"


def _has_bf16():
    from braintumor.mrcnn.precision import cpu_bf16_flags

    return bool(cpu_bf16_flags())


@pytest.mark.skipif(not _has_bf16(), reason="this CPU has neither avx512_bf16 nor amx_bf16: PRECISION = "
                    "\"mixed_bfloat16\" falls back to float32 here, nothing in bfloat16 to test")
def test_mixed_bfloat16_trains_and_detects_with_float32_boundaries(tmp_path):
    import keras

    from braintumor.mrcnn import MaskRCNN
    from braintumor.mrcnn.weights import save_weights_h5

    cfg = tiny_config(PRECISION="mixed_bfloat16", NORM="gn", EPOCHS=1, STEPS_PER_EPOCH=2)
    m = MaskRCNN("training", cfg, tmp_path)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left alone
    km = m.keras_model
    policy = {l.name: l.dtype_policy.name for l in km.layers}
    assert policy["conv1"] == policy["res2a_branch2a"] == policy["fpn_p2"] == policy["mrcnn_class_conv1"] == "mixed_bfloat16"
    assert policy["mrcnn_mask_conv1"] == policy["mrcnn_class_logits"] == "mixed_bfloat16"
    for name in ("ROI", "proposal_targets", "roi_align_classifier", "roi_align_mask", "mrcnn_mask", "mrcnn_class_unfold",
                 "rpn_class_logits", "rpn_bbox"):
        assert policy[name] == "float32", name
    rpn = km.get_layer("rpn_model")
    assert rpn.get_layer("rpn_conv_shared").dtype_policy.name == "mixed_bfloat16"
    assert all(v.dtype == "float32" for v in km.weights)
    assert all(str(t.dtype) in ("float32", "int32") for t in km.outputs)
    ds = blob_dataset(4, seed=2)
    hist = m.train(ds, ds, learning_rate=0.01, epochs=1, layers="all", verbose=0)
    for key, values in hist.history.items():
        assert len(values) == 1 and np.isfinite(values[0]), key
    assert hist.history["loss"][0] > 0
    ckpt = tmp_path / "mixed.h5"
    save_weights_h5(km, ckpt)

    det = MaskRCNN("inference", cfg.replace(DETECTION_MIN_CONFIDENCE=0.0), tmp_path)
    assert det.load_weights(ckpt).complete
    image, _ = blob_image(64, 80, [(10, 12, 40, 44)])
    out = det._predict(*_molded(image, det.config))
    assert out[0].dtype == np.float32 and out[1].dtype == np.float32 and np.all(np.isfinite(out[0]))
    r = det.detect([image])[0]
    assert r["masks"].shape[:2] == (64, 80) and r["scores"].dtype == np.float32 and len(r["scores"]) > 0
    # the same weights in float32 give nearly the same scores
    ref = MaskRCNN("inference", cfg.replace(DETECTION_MIN_CONFIDENCE=0.0, PRECISION="float32"), tmp_path)
    ref.load_weights(ckpt)
    ref_out = ref._predict(*_molded(image, ref.config))
    assert np.max(np.abs(ref_out[0][:, :, 5] - out[0][:, :, 5])) < 0.1


def _molded(image, config):
    from braintumor.mrcnn.inputs import mold_inputs

    molded, metas, _ = mold_inputs([image], config)
    return molded, metas


def test_validation_every_n_epochs_and_after_the_last(tmp_path):
    from braintumor.mrcnn import MaskRCNN

    cfg = tiny_config(VALIDATION_EVERY=2, EPOCHS=3, STEPS_PER_EPOCH=1, INPUT_WORKERS=1)
    m = MaskRCNN("training", cfg, tmp_path)
    seen = []

    import keras

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch + 1, "val_loss" in (logs or {})))

    ds = blob_dataset(2)
    m.train(ds, ds, learning_rate=0.01, epochs=3, layers="heads", callbacks=[Spy()], verbose=0)
    assert seen == [(1, False), (2, True), (3, True)]


def test_validation_cache_gives_the_same_validation_losses(tmp_path):
    from braintumor.mrcnn import MaskRCNN

    ds = blob_dataset(3, seed=5)
    vals = {}
    for cache in (False, True):
        cfg = tiny_config(VALIDATION_CACHE=cache, EPOCHS=2, STEPS_PER_EPOCH=1, VALIDATION_STEPS=2)
        h = MaskRCNN("training", cfg, tmp_path / str(cache)).train(ds, ds, learning_rate=1e-9, epochs=2,
                                                                      layers="heads", verbose=0)
        vals[cache] = [h.history[k] for k in sorted(h.history) if k.startswith("val_")]
    np.testing.assert_allclose(vals[True], vals[False], rtol=1e-5)
