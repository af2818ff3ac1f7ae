"""FusedGroupNorm against keras.layers.GroupNormalization: forward, gradients, weights, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from braintumor.mrcnn.norm import FusedGroupNorm  # noqa: E402


def _pair(channels, groups, eps=1e-5, seed=0):
    """A Keras GroupNormalization and a FusedGroupNorm with the same random gamma and beta."""
    ref = keras.layers.GroupNormalization(groups=groups, epsilon=eps)
    new = FusedGroupNorm(groups=groups, epsilon=eps)
    ref.build((None, None, None, channels))
    new.build((None, None, None, channels))
    rng = np.random.default_rng(seed)
    weights = [rng.normal(1.0, 0.5, channels).astype(np.float32), rng.normal(0.0, 0.5, channels).astype(np.float32)]
    ref.set_weights(weights)
    new.set_weights(weights)
    return ref, new


def _grads(layer, x, dy):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * dy)
    gx, gg, gb = tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])
    return y.numpy(), gx.numpy(), gg.numpy(), gb.numpy()


def _close(a, b, rtol=1e-4):
    scale = max(float(np.max(np.abs(b))), 1e-6)
    assert np.max(np.abs(a - b)) <= rtol * scale, (np.max(np.abs(a - b)), scale)


@pytest.mark.parametrize("shape,groups", [
    ((2, 7, 5, 64), 32),       # H, W not multiples of anything
    ((1, 13, 11, 96), 32),
    ((3, 1, 1, 1024), 32),     # the class head: 1 x 1 maps, 32 channels per group
    ((2, 14, 14, 256), 32),    # the mask head
    ((1, 9, 17, 12), 4),
    ((2, 5, 3, 8), 8),         # one channel per group
])
def test_forward_and_gradients_match_keras(shape, groups):
    rng = np.random.default_rng(1)
    # a mean well away from 0 and an uneven spread, as after a convolution with bias
    x = (rng.normal(0.7, 2.0, shape) * rng.uniform(0.2, 3.0, shape[-1])).astype(np.float32)
    dy = rng.normal(0.0, 1.0, shape).astype(np.float32)
    ref, new = _pair(shape[-1], groups)
    for a, b in zip(_grads(new, x, dy), _grads(ref, x, dy)):
        assert a.dtype == np.float32 and a.shape == b.shape
        _close(a, b)


def test_same_weight_names_shapes_order_and_initialisers():
    ref = keras.layers.GroupNormalization(groups=32, epsilon=1e-5, gamma_initializer="zeros")
    new = FusedGroupNorm(groups=32, epsilon=1e-5, gamma_initializer="zeros")
    ref.build((None, 8, 8, 64))
    new.build((None, 8, 8, 64))
    assert [(w.name, tuple(w.shape), w.dtype) for w in new.weights] == [(w.name, tuple(w.shape), w.dtype) for w in ref.weights]
    assert not np.any(new.gamma.numpy()) and not np.any(new.beta.numpy())
    assert new.trainable and len(new.trainable_weights) == 2


def test_dynamic_spatial_shape_in_a_model():
    inp = keras.Input((None, None, 64))
    model = keras.Model(inp, FusedGroupNorm(32, 1e-5)(inp))
    y = model(np.random.default_rng(0).normal(size=(2, 5, 9, 64)).astype(np.float32))
    assert tuple(y.shape) == (2, 5, 9, 64)


def test_checkpoint_of_one_impl_loads_into_the_other_with_identical_outputs(tmp_path):
    from braintumor.mrcnn import MaskRCNN
    from braintumor.mrcnn.weights import save_weights_h5
    from mrcnn_testutil import blob_image, tiny_config

    image, _ = blob_image(64, 64, [(10, 12, 40, 44)])
    outs = {}
    for impl, other in (("keras", "fused"), ("fused", "keras")):
        src = MaskRCNN("inference", tiny_config(NORM="gn", GN_IMPL=impl, SEED=3), tmp_path)
        path = tmp_path / f"{impl}.h5"
        save_weights_h5(src.keras_model, path)
        dst = MaskRCNN("inference", tiny_config(NORM="gn", GN_IMPL=other, SEED=4), tmp_path)
        kinds = {type(l).__name__ for l in dst.keras_model.layers}
        assert ("FusedGroupNorm" in kinds) == (other == "fused")
        report = dst.load_weights(path)
        assert report.complete, str(report)
        for a, b in zip(src.keras_model.get_weights(), dst.keras_model.get_weights()):
            np.testing.assert_array_equal(a, b)
        ra, rb = src.detect([image])[0], dst.detect([image])[0]
        assert len(ra["scores"]) == len(rb["scores"]) > 0
        # the same weights through two float32 orders of summation: each layer agrees to ~1e-6, and
        # a random-weight network, 100+ layers deep, carries that to ~1e-3 in its scores
        np.testing.assert_allclose(ra["scores"], rb["scores"], atol=5e-3)
        np.testing.assert_allclose(ra["rois"], rb["rois"], atol=1.0)
        outs[impl] = ra
    np.testing.assert_array_equal(outs["keras"]["rois"].shape, outs["fused"]["rois"].shape)
