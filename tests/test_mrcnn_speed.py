"""Issue 12's speed settings: INPUT_WORKERS (same samples), PRECISION (bfloat16), VALIDATION_EVERY."""

from __future__ import annotations

import itertools
from pathlib import Path

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
