"""Backbone and FPN: Matterport's layer names, stage sizes and output strides."""

import keras
import numpy as np
import pytest

from braintumor.mrcnn.backbone import fpn, resnet


def matterport_backbone_names(blocks4):
    names = {"conv1", "bn_conv1"}
    for stage, blocks in ((2, 3), (3, 4), (4, blocks4), (5, 3)):
        for i in range(blocks):
            b = chr(ord("a") + i)
            for br in ("2a", "2b", "2c") + (("1",) if i == 0 else ()):
                names |= {f"res{stage}{b}_branch{br}", f"bn{stage}{b}_branch{br}"}
    return names


@pytest.mark.parametrize("arch,blocks4,last4", [("resnet50", 6, "f"), ("resnet101", 23, "w")])
def test_resnet_layer_names_and_shapes(arch, blocks4, last4):
    image = keras.Input((64, 96, 3))
    c2, c3, c4, c5 = resnet(image, arch)
    model = keras.Model(image, [c2, c3, c4, c5])
    weighted = {l.name for l in model.layers if l.weights}
    assert weighted == matterport_backbone_names(blocks4)
    assert f"res4{last4}_branch2c" in weighted and f"res4{chr(ord(last4) + 1)}_branch2a" not in weighted
    assert [tuple(t.shape[1:]) for t in (c2, c3, c4, c5)] == [(16, 24, 256), (8, 12, 512), (4, 6, 1024), (2, 3, 2048)]
    conv = model.get_layer("res3a_branch2a")
    assert conv.use_bias and conv.strides == (2, 2)  # stride on the first 1x1 (Caffe style)
    assert tuple(model.get_layer("conv1").kernel.shape) == (7, 7, 3, 64)
    bn = model.get_layer("bn_conv1")
    assert not bn.trainable and bn.trainable_weights == []


def test_fpn_names_and_levels():
    image = keras.Input((64, 64, 3))
    ps = fpn(*resnet(image, "resnet50"), size=32)
    model = keras.Model(image, ps)
    names = {l.name for l in model.layers if l.weights}
    assert {"fpn_c5p5", "fpn_c4p4", "fpn_c3p3", "fpn_c2p2", "fpn_p2", "fpn_p3", "fpn_p4", "fpn_p5"} <= names
    assert not model.get_layer("fpn_p6").weights
    assert [tuple(p.shape[1:3]) for p in ps] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert all(p.shape[-1] == 32 for p in ps)
    assert tuple(model.get_layer("fpn_c5p5").kernel.shape) == (1, 1, 2048, 32)


def test_groupnorm_backbone_keeps_names_trains_and_starts_each_block_as_identity():
    image = keras.Input((64, 64, 3))
    outs = resnet(image, "resnet50", train_bn=False, norm="gn")
    model = keras.Model(image, outs)
    weighted = {l.name for l in model.layers if l.weights}
    assert weighted == matterport_backbone_names(6)  # same names: checkpoints stay Matterport-shaped
    norms = [l for l in model.layers if l.name.startswith("bn")]
    assert norms and all(isinstance(l, keras.layers.GroupNormalization) and l.trainable for l in norms)
    # the last norm of every residual branch starts at gamma 0: the branch adds nothing
    for l in norms:
        gamma = np.array(l.gamma)
        if l.name.endswith("branch2c"):
            assert not gamma.any(), l.name
        else:
            assert np.all(gamma == 1.0), l.name
    # no batch statistics: training and inference compute the same thing, image by image
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")
    train_out = model(x, training=True)[-1]
    infer_out = model(x, training=False)[-1]
    single = model(x[:1], training=False)[-1]
    np.testing.assert_allclose(np.array(train_out), np.array(infer_out), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(infer_out)[:1], np.array(single), rtol=1e-4, atol=1e-4)
