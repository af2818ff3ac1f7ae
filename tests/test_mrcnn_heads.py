"""Heads and RPN: Matterport's names and weight shapes, output shapes, folding of the ROI axis."""

import numpy as np

from braintumor.mrcnn.model import build_inference_model
from braintumor.mrcnn.rpn import build_rpn_model
from mrcnn_testutil import tiny_config


def test_rpn_model_shapes_and_names():
    rpn = build_rpn_model(3, 32)
    assert rpn.name == "rpn_model"
    assert {l.name for l in rpn.layers if l.weights} == {"rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred"}
    logits, probs, bbox = rpn(np.zeros((2, 4, 5, 32), np.float32))
    assert logits.shape == (2, 60, 2) and probs.shape == (2, 60, 2) and bbox.shape == (2, 60, 4)
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1, rtol=1e-5)
    assert tuple(rpn.get_layer("rpn_class_raw").kernel.shape) == (1, 1, 512, 6)


def test_head_weight_shapes_match_matterport():
    cfg = tiny_config(NUM_CLASSES=3, CLASS_NAMES=["BG", "a", "b"])
    m = build_inference_model(cfg)
    shapes = {l.name: [tuple(w.shape) for w in l.weights] for l in m.layers}
    fc, c = 64, 3
    assert shapes["mrcnn_class_conv1"] == [(7, 7, 32, fc), (fc,)]
    assert shapes["mrcnn_class_conv2"] == [(1, 1, fc, fc), (fc,)]
    assert shapes["mrcnn_class_bn1"] == [(fc,)] * 4 and shapes["mrcnn_class_bn2"] == [(fc,)] * 4
    assert shapes["mrcnn_class_logits"] == [(fc, c), (c,)]
    assert shapes["mrcnn_bbox_fc"] == [(fc, 4 * c), (4 * c,)]
    for i in range(1, 5):
        assert shapes[f"mrcnn_mask_conv{i}"] == [(3, 3, 32 if i == 1 else 256, 256), (256,)]
        assert shapes[f"mrcnn_mask_bn{i}"] == [(256,)] * 4
    assert shapes["mrcnn_mask_deconv"] == [(2, 2, 256, 256), (256,)]
    assert shapes["mrcnn_mask"] == [(1, 1, 256, c), (c,)]
    assert [l.name for l in m.layers if l.name.startswith("rpn_model")] == ["rpn_model"]


def test_inference_graph_output_shapes():
    cfg = tiny_config()
    m = build_inference_model(cfg)
    image = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    meta = np.zeros((2, cfg.IMAGE_META_SIZE), np.float32)
    meta[:, 4:7] = (64, 64, 3)
    meta[:, 7:11] = (0, 0, 64, 64)
    det, probs, deltas, masks, rois, rpn_probs, rpn_bbox = [np.asarray(t) for t in m([image, meta], training=False)]
    d, r = cfg.DETECTION_MAX_INSTANCES, cfg.POST_NMS_ROIS_INFERENCE
    assert det.shape == (2, d, 6) and masks.shape == (2, d, 28, 28, 2)
    assert probs.shape == (2, r, 2) and deltas.shape == (2, r, 2, 4) and rois.shape == (2, r, 4)
    assert rpn_probs.shape == (2, 1023, 2) and rpn_bbox.shape == (2, 1023, 4)
    assert np.all((masks >= 0) & (masks <= 1))
    # folding ROIs into the batch keeps images apart: a different second image changes only its own rows
    image2 = image.copy()
    image2[1] = 0
    det2 = np.asarray(m([image2, meta], training=False)[0])
    np.testing.assert_allclose(det2[0], det[0], atol=1e-5)


def test_mask_head_on_valid_rows_only_matches_full_run():
    import keras

    from braintumor.mrcnn.heads import mask_head

    cfg = tiny_config()
    rois = keras.Input((3, 4))
    meta = keras.Input((cfg.IMAGE_META_SIZE,))
    valid = keras.Input((3,), dtype="bool")
    maps = [keras.Input((s, s, 32)) for s in (16, 8, 4, 2)]
    full = keras.Model([rois, meta] + maps, mask_head(rois, meta, maps, cfg, 3))
    part = keras.Model([rois, meta, valid] + maps, mask_head(rois, meta, maps, cfg, 3, valid=valid))
    part.set_weights(full.get_weights())
    rng = np.random.default_rng(0)
    b = np.array([[[0.1, 0.1, 0.5, 0.6], [0.2, 0.3, 0.9, 0.8], [0.0, 0.0, 0.3, 0.3]]] * 2, np.float32)
    m = np.zeros((2, cfg.IMAGE_META_SIZE), np.float32)
    m[:, 4:6] = 64
    fm = [rng.normal(size=(2, s, s, 32)).astype(np.float32) for s in (16, 8, 4, 2)]
    v = np.array([[True, False, True], [False, False, False]])
    want = np.asarray(full([b, m] + fm))
    got = np.asarray(part([b, m, v] + fm))
    assert got.shape == (2, 3, 28, 28, 2)
    np.testing.assert_allclose(got[0, [0, 2]], want[0, [0, 2]], atol=1e-5)
    assert np.all(got[0, 1] == 0) and np.all(got[1] == 0)


def test_whole_window_conv_computes_the_valid_conv_with_the_same_weights():
    import keras

    from braintumor.mrcnn.heads import WholeWindowConv

    x = np.random.default_rng(1).normal(size=(5, 7, 7, 6)).astype("float32")
    conv = keras.layers.Conv2D(4, 7, padding="valid")
    ref = np.array(conv(x))
    ours = WholeWindowConv(4, 7)
    ours.build(x.shape)
    assert [tuple(w.shape) for w in ours.weights] == [tuple(w.shape) for w in conv.weights]
    assert [w.name for w in ours.weights] == [w.name for w in conv.weights] == ["kernel", "bias"]
    ours.set_weights(conv.get_weights())
    out = np.array(ours(x))
    assert out.shape == (5, 1, 1, 4)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_groupnorm_heads_have_no_batch_statistics():
    import keras

    from braintumor.mrcnn.norm import FusedGroupNorm

    for impl, cls in (("keras", keras.layers.GroupNormalization), ("fused", FusedGroupNorm)):
        m = build_inference_model(tiny_config(NORM="gn", GN_IMPL=impl))
        for name in ("mrcnn_class_bn1", "mrcnn_class_bn2", "mrcnn_mask_bn1", "mrcnn_mask_bn4", "bn_conv1", "bn2a_branch2c"):
            layer = m.get_layer(name)
            assert isinstance(layer, cls) and [w.name for w in layer.weights] == ["gamma", "beta"], (impl, name)
        assert not any(isinstance(l, keras.layers.BatchNormalization) for l in m.layers)
