"""Tests of braintumor.mrcnn.weights: Matterport/Keras-2 HDF5 checkpoints and ImageNet backbone mapping.

Everything is tiny and self-contained: small Keras models whose layers carry
Matterport names (with a nested ``rpn_model``), and HDF5 files written by hand
with h5py in Matterport's layout (not with the module's own writer).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from braintumor.errors import BrainTumorError  # noqa: E402
from braintumor.mrcnn import weights as W  # noqa: E402

L = keras.layers
COCO_EXCLUDE = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def tiny_model(num_classes: int = 2, seed: int = 0, bn_epsilon: float = 1e-3) -> keras.Model:
    """conv1 -> bn_conv1 -> res2a_branch2a -> nested rpn_model; two Dense heads."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((16, 16, 3), name="input_image")
    x = L.Conv2D(8, 3, padding="same", name="conv1")(inp)
    x = L.BatchNormalization(epsilon=bn_epsilon, name="bn_conv1")(x)
    x = L.Activation("relu", name="conv1_relu")(x)
    x = L.Conv2D(8, 1, name="res2a_branch2a")(x)
    fin = keras.Input((None, None, 8), name="input_rpn_feature_map")
    shared = L.Conv2D(8, 3, padding="same", name="rpn_conv_shared")(fin)
    cls = L.Conv2D(6, 1, name="rpn_class_raw")(shared)
    box = L.Conv2D(12, 1, name="rpn_bbox_pred")(shared)
    rpn = keras.Model(fin, [cls, box], name="rpn_model")
    cls, box = rpn(x)
    pooled = L.GlobalAveragePooling2D(name="pool")(x)
    logits = L.Dense(num_classes, name="mrcnn_class_logits")(pooled)
    bbox = L.Dense(num_classes * 4, name="mrcnn_bbox_fc")(pooled)
    return keras.Model(inp, [cls, box, logits, bbox], name="mask_rcnn")


def layer_values(model, name: str) -> list[np.ndarray]:
    """Weights of ``name`` or ``"outer/inner"`` as numpy arrays, in layer.weights order."""
    layer = model
    for part in name.split("/"):
        layer = layer.get_layer(part)
    return [np.array(v.numpy()) for v in layer.weights]


def snapshot(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.array(v.numpy()) for v in layer.weights] for layer in model.layers if layer.weights}


def write_matterport_h5(path, layers, *, under: str | None = None) -> None:
    """Write ``[(layer_name, [(weight_name, array), ...]), ...]`` the way Keras 2 save_weights did."""
    with h5py.File(path, "w") as f:
        root = f.create_group(under) if under else f
        root.attrs["layer_names"] = np.array([n.encode() for n, _ in layers])
        f.attrs["keras_version"] = b"2.1.3"
        f.attrs["backend"] = b"tensorflow"
        for name, ws in layers:
            g = root.create_group(name)
            g.attrs["weight_names"] = np.array([w.encode() for w, _ in ws]) if ws else np.asarray([])
            for wname, arr in ws:
                g.create_dataset(wname, data=arr)


def coco_like_layers(rng, num_classes: int = 81):
    """Matterport-layout layers fitting tiny_model (heads sized for ``num_classes``), plus
    weightless layers and one layer the model does not have."""
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    bn = [("bn_conv1/gamma:0", r(8)), ("bn_conv1/beta:0", r(8)),
          ("bn_conv1/moving_mean:0", r(8)), ("bn_conv1/moving_variance:0", np.abs(r(8)) + 0.5)]
    return [
        ("input_image", []),
        ("conv1", [("conv1/kernel:0", r(3, 3, 3, 8)), ("conv1/bias:0", r(8))]),
        ("bn_conv1", bn),
        ("conv1_relu", []),
        ("res2a_branch2a", [("res2a_branch2a/kernel:0", r(1, 1, 8, 8)), ("res2a_branch2a/bias:0", r(8))]),
        ("fpn_c5p5", [("fpn_c5p5/kernel:0", r(1, 1, 8, 4)), ("fpn_c5p5/bias:0", r(4))]),
        ("rpn_model", [("rpn_conv_shared/kernel:0", r(3, 3, 8, 8)), ("rpn_conv_shared/bias:0", r(8)),
                       ("rpn_class_raw/kernel:0", r(1, 1, 8, 6)), ("rpn_class_raw/bias:0", r(6)),
                       ("rpn_bbox_pred/kernel:0", r(1, 1, 8, 12)), ("rpn_bbox_pred/bias:0", r(12))]),
        ("mrcnn_class_logits", [("mrcnn_class_logits/kernel:0", r(8, num_classes)),
                                ("mrcnn_class_logits/bias:0", r(num_classes))]),
        ("mrcnn_bbox_fc", [("mrcnn_bbox_fc/kernel:0", r(8, 4 * num_classes)),
                           ("mrcnn_bbox_fc/bias:0", r(4 * num_classes))]),
    ]


def file_arrays(layers, name):
    return [a for _, a in dict(layers)[name]]


def assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert np.array_equal(g, w)


# ----------------------------------------------------------------------------
# load_weights_h5
# ----------------------------------------------------------------------------
def test_load_by_name_puts_each_file_layer_into_its_model_layer(tmp_path):
    layers = coco_like_layers(np.random.default_rng(1), num_classes=2)
    path = tmp_path / "w.h5"
    write_matterport_h5(path, layers)
    model = tiny_model()
    report = W.load_weights_h5(model, path)

    for name in ("conv1", "bn_conv1", "res2a_branch2a", "mrcnn_class_logits", "mrcnn_bbox_fc"):
        assert_same(layer_values(model, name), file_arrays(layers, name))
    rpn = file_arrays(layers, "rpn_model")
    assert_same(layer_values(model, "rpn_model/rpn_conv_shared"), rpn[0:2])
    assert_same(layer_values(model, "rpn_model/rpn_class_raw"), rpn[2:4])
    assert_same(layer_values(model, "rpn_model/rpn_bbox_pred"), rpn[4:6])

    assert set(report.loaded) == {"conv1", "bn_conv1", "res2a_branch2a", "mrcnn_class_logits", "mrcnn_bbox_fc",
                                  "rpn_model/rpn_conv_shared", "rpn_model/rpn_class_raw", "rpn_model/rpn_bbox_pred"}
    assert report.unused_in_file == ["fpn_c5p5"]
    assert report.missing_in_file == [] and report.shape_mismatched == [] and report.complete


def test_exclude_leaves_coco_heads_untouched_for_a_two_class_model(tmp_path):
    layers = coco_like_layers(np.random.default_rng(2), num_classes=81)
    path = tmp_path / "mask_rcnn_coco.h5"
    write_matterport_h5(path, layers)
    model = tiny_model(num_classes=2)
    before = snapshot(model)
    report = W.load_weights_h5(model, path, exclude=COCO_EXCLUDE)

    for name in ("mrcnn_class_logits", "mrcnn_bbox_fc"):
        assert_same(layer_values(model, name), before[name])
    assert_same(layer_values(model, "conv1"), file_arrays(layers, "conv1"))
    assert sorted(report.skipped_excluded) == ["mrcnn_bbox_fc", "mrcnn_class_logits"]
    assert report.shape_mismatched == []
    assert "mrcnn_bbox_fc" not in report.unused_in_file  # excluded, not "unused"


def test_exclude_accepts_fnmatch_patterns_and_inner_layer_names(tmp_path):
    layers = coco_like_layers(np.random.default_rng(3), num_classes=81)
    path = tmp_path / "w.h5"
    write_matterport_h5(path, layers)
    model = tiny_model()
    before = snapshot(model)
    rpn_before = layer_values(model, "rpn_model/rpn_class_raw")
    report = W.load_weights_h5(model, path, exclude=["mrcnn_*", "rpn_class_*"])
    assert_same(layer_values(model, "mrcnn_bbox_fc"), before["mrcnn_bbox_fc"])
    assert_same(layer_values(model, "rpn_model/rpn_class_raw"), rpn_before)
    assert_same(layer_values(model, "rpn_model/rpn_bbox_pred"), file_arrays(layers, "rpn_model")[4:6])
    assert "rpn_model/rpn_class_raw" in report.skipped_excluded

    one = tiny_model(num_classes=81)
    report = W.load_weights_h5(one, path, exclude="mrcnn_bbox_fc")  # a single name, not its characters
    assert report.skipped_excluded == ["mrcnn_bbox_fc"] and "mrcnn_class_logits" in report.loaded


def test_shape_mismatch_is_reported_and_the_whole_layer_left_untouched(tmp_path):
    rng = np.random.default_rng(4)
    layers = coco_like_layers(rng, num_classes=81)
    # res2a_branch2a: file kernel 3x3 where the model has 1x1; the bias (8,) fits but must stay untouched too
    layers[4] = ("res2a_branch2a", [("res2a_branch2a/kernel:0", rng.standard_normal((3, 3, 8, 8)).astype("f4")),
                                    ("res2a_branch2a/bias:0", rng.standard_normal(8).astype("f4"))])
    path = tmp_path / "w.h5"
    write_matterport_h5(path, layers)
    model = tiny_model(num_classes=2)
    before = snapshot(model)
    report = W.load_weights_h5(model, path)  # no exclude: must not raise

    for name in ("res2a_branch2a", "mrcnn_class_logits", "mrcnn_bbox_fc"):
        assert_same(layer_values(model, name), before[name])
    assert_same(layer_values(model, "bn_conv1"), file_arrays(layers, "bn_conv1"))
    assert ("res2a_branch2a", "kernel", (3, 3, 8, 8), (1, 1, 8, 8)) in report.shape_mismatched
    assert ("mrcnn_bbox_fc", "kernel", (8, 324), (8, 8)) in report.shape_mismatched
    assert "res2a_branch2a" not in report.loaded and not report.complete
    text = str(report)
    assert "5 shape-mismatched" in text and "res2a_branch2a/kernel (3, 3, 8, 8) vs (1, 1, 8, 8)" in text
    assert "\n" not in text


def test_weight_count_mismatch_is_reported(tmp_path):
    layers = coco_like_layers(np.random.default_rng(5), num_classes=2)
    layers[1] = ("conv1", [layers[1][1][0]])  # kernel only, no bias
    path = tmp_path / "w.h5"
    write_matterport_h5(path, layers)
    model = tiny_model()
    before = snapshot(model)
    report = W.load_weights_h5(model, path)
    assert report.count_mismatched == [("conv1", 1, 2)]
    assert_same(layer_values(model, "conv1"), before["conv1"])


def test_full_model_file_with_model_weights_group(tmp_path):
    layers = coco_like_layers(np.random.default_rng(6), num_classes=2)
    path = tmp_path / "full_model.h5"
    write_matterport_h5(path, layers, under="model_weights")
    with h5py.File(path, "a") as f:
        f.attrs["model_config"] = b"{}"
        f.create_group("optimizer_weights")
    model = tiny_model()
    report = W.load_weights_h5(model, path)
    assert_same(layer_values(model, "bn_conv1"), file_arrays(layers, "bn_conv1"))
    assert_same(layer_values(model, "rpn_model/rpn_bbox_pred"), file_arrays(layers, "rpn_model")[4:6])
    assert "conv1" in report.loaded


def test_weight_names_without_suffix_with_scope_prefix_and_in_another_order(tmp_path):
    rng = np.random.default_rng(7)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    gamma, beta, mean, var = r(8), r(8), r(8), np.abs(r(8)) + 1
    k_shared, b_shared = r(3, 3, 8, 8), r(8)
    layers = [
        ("conv1", [("tower_0/conv1/kernel", r(3, 3, 3, 8)), ("tower_0/conv1/bias", r(8))]),
        # moving statistics first: matched by name, not position
        ("bn_conv1", [("bn_conv1/moving_mean:0", mean), ("bn_conv1/moving_variance:0", var),
                      ("bn_conv1/gamma:0", gamma), ("bn_conv1/beta:0", beta)]),
        ("rpn_model", [("rpn_model/rpn_conv_shared/kernel", k_shared),
                       ("rpn_model/rpn_conv_shared/bias", b_shared)]),
    ]
    path = tmp_path / "w.h5"
    write_matterport_h5(path, layers)
    model = tiny_model()
    report = W.load_weights_h5(model, path)
    assert_same(layer_values(model, "conv1"), file_arrays(layers, "conv1"))
    assert_same(layer_values(model, "bn_conv1"), [gamma, beta, mean, var])
    assert_same(layer_values(model, "rpn_model/rpn_conv_shared"), [k_shared, b_shared])
    assert "rpn_model/rpn_class_raw" in report.missing_in_file
    assert "mrcnn_bbox_fc" in report.missing_in_file


def test_nested_model_takes_inner_layers_from_top_level_groups(tmp_path):
    """A file saved from a flat model (rpn layers at top level) still fills the nested rpn_model."""
    rng = np.random.default_rng(8)
    k, b = rng.standard_normal((1, 1, 8, 6)).astype("f4"), rng.standard_normal(6).astype("f4")
    path = tmp_path / "w.h5"
    write_matterport_h5(path, [("rpn_class_raw", [("rpn_class_raw/kernel:0", k), ("rpn_class_raw/bias:0", b)])])
    model = tiny_model()
    report = W.load_weights_h5(model, path)
    assert_same(layer_values(model, "rpn_model/rpn_class_raw"), [k, b])
    assert report.loaded == ["rpn_model/rpn_class_raw"] and report.unused_in_file == []


def test_file_matching_nothing_raises_one_line(tmp_path):
    path = tmp_path / "other.h5"
    write_matterport_h5(path, [("dense_7", [("dense_7/kernel:0", np.zeros((2, 2), "f4"))])])
    with pytest.raises(BrainTumorError) as e:
        W.load_weights_h5(tiny_model(), path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------
# save_weights_h5
# ----------------------------------------------------------------------------
def randomize(model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for v in model.weights:
        val = rng.standard_normal(tuple(v.shape)).astype(np.float32)
        if "variance" in v.name:
            val = np.abs(val) + 0.1
        v.assign(val)


def test_save_then_load_is_bit_equal_including_bn_moving_stats(tmp_path):
    src = tiny_model(seed=0)
    randomize(src, 11)
    path = tmp_path / "ckpt.h5"
    W.save_weights_h5(src, path, epoch=3)
    dst = tiny_model(seed=1)
    report = W.load_weights_h5(dst, path)
    assert report.complete and report.unused_in_file == []
    for a, b in zip(src.weights, dst.weights):
        assert np.array_equal(np.array(a.numpy()), np.array(b.numpy())), a.path
    mm = layer_values(dst, "bn_conv1")[2]
    assert np.array_equal(mm, layer_values(src, "bn_conv1")[2]) and np.any(mm != 0)
    assert W.read_weights_info(path)["braintumor"]["epoch"] == 3


def test_saved_file_has_matterport_layout(tmp_path):
    model = tiny_model()
    path = tmp_path / "ckpt.h5"
    W.save_weights_h5(model, path)
    with h5py.File(path, "r") as f:
        names = [n.decode() for n in f.attrs["layer_names"]]
        assert names == [layer.name for layer in model.layers]
        assert f.attrs["backend"] == b"tensorflow" and f.attrs["keras_version"].decode() == keras.__version__
        assert "braintumor" in f.attrs
        assert [n.decode() for n in f["bn_conv1"].attrs["weight_names"]] == [
            "bn_conv1/gamma:0", "bn_conv1/beta:0", "bn_conv1/moving_mean:0", "bn_conv1/moving_variance:0"]
        assert [n.decode() for n in f["rpn_model"].attrs["weight_names"]] == [
            "rpn_conv_shared/kernel:0", "rpn_conv_shared/bias:0", "rpn_class_raw/kernel:0",
            "rpn_class_raw/bias:0", "rpn_bbox_pred/kernel:0", "rpn_bbox_pred/bias:0"]
        assert f["rpn_model"]["rpn_class_raw/kernel:0"].shape == (1, 1, 8, 6)
        assert f["conv1"]["conv1/kernel:0"].dtype == np.float32
        assert len(f["conv1_relu"].attrs["weight_names"]) == 0
        assert not any(k.startswith("input_rpn") for k in f["rpn_model"].keys())


def test_failed_save_keeps_the_old_checkpoint_and_leaves_no_tmp(tmp_path, monkeypatch):
    model = tiny_model()
    path = tmp_path / "ckpt.h5"
    W.save_weights_h5(model, path)
    old = path.read_bytes()

    randomize(model, 5)
    real = h5py.Group.create_dataset
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk full")
        return real(self, *a, **k)

    monkeypatch.setattr(h5py.Group, "create_dataset", flaky)
    with pytest.raises(OSError, match="disk full"):
        W.save_weights_h5(model, path)
    monkeypatch.undo()
    assert calls["n"] == 4
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.h5"]


def test_by_name_false_loads_in_order_and_requires_an_exact_match(tmp_path):
    src = tiny_model()
    randomize(src, 21)
    path = tmp_path / "ckpt.h5"
    W.save_weights_h5(src, path)
    dst = tiny_model(seed=3)
    W.load_weights_h5(dst, path, by_name=False)
    for a, b in zip(src.weights, dst.weights):
        assert np.array_equal(np.array(a.numpy()), np.array(b.numpy()))

    wrong = tiny_model(num_classes=3)
    before = snapshot(wrong)
    with pytest.raises(BrainTumorError) as e:
        W.load_weights_h5(wrong, path, by_name=False)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    for name, vals in before.items():  # nothing assigned when the check fails
        assert_same(layer_values(wrong, name), vals)


# ----------------------------------------------------------------------------
# bad files
# ----------------------------------------------------------------------------
def _truncated(tmp_path):
    good = tmp_path / "good.h5"
    W.save_weights_h5(tiny_model(), good)
    bad = tmp_path / "truncated.h5"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return bad


def _text(tmp_path):
    p = tmp_path / "notes.h5"
    p.write_text("this is not HDF5\n")
    return p


def _no_layer_names(tmp_path):
    p = tmp_path / "keras3.weights.h5"
    with h5py.File(p, "w") as f:
        f.create_group("layers/conv1/vars").create_dataset("0", data=np.zeros(3))
    return p


def _missing(tmp_path):
    return tmp_path / "nowhere.h5"


@pytest.mark.parametrize("make, words", [(_truncated, "HDF5"), (_text, "HDF5"),
                                         (_no_layer_names, "layer_names"), (_missing, "not found")])
def test_bad_file_gives_one_line_error_naming_the_file(tmp_path, make, words):
    path = make(tmp_path)
    with pytest.raises(BrainTumorError) as e:
        W.load_weights_h5(tiny_model(), path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and words in msg and "\n" not in msg


# ----------------------------------------------------------------------------
# ImageNet backbone
# ----------------------------------------------------------------------------
def matterport_resnet(backbone: str, size: int = 64, bn_epsilon: float = 1e-3) -> keras.Model:
    """Stand-in for the model's backbone: Matterport's ResNet layer names and shapes."""
    blocks = {"resnet50": 6, "resnet101": 23}[backbone]
    bn = lambda name: L.BatchNormalization(epsilon=bn_epsilon, name=name)  # noqa: E731
    inp = keras.Input((size, size, 3))
    x = L.ZeroPadding2D(3)(inp)
    x = L.Conv2D(64, 7, strides=2, name="conv1")(x)
    x = L.Activation("relu")(bn("bn_conv1")(x))
    x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    for stage, n, (f1, f2, f3), stride in ((2, 3, (64, 64, 256), 1), (3, 4, (128, 128, 512), 2),
                                           (4, blocks, (256, 256, 1024), 2), (5, 3, (512, 512, 2048), 2)):
        for i in range(n):
            tag = f"{stage}{chr(ord('a') + i)}_branch"
            s = stride if i == 0 else 1
            y = L.Activation("relu")(bn(f"bn{tag}2a")(L.Conv2D(f1, 1, strides=s, name=f"res{tag}2a")(x)))
            y = L.Activation("relu")(bn(f"bn{tag}2b")(L.Conv2D(f2, 3, padding="same", name=f"res{tag}2b")(y)))
            y = bn(f"bn{tag}2c")(L.Conv2D(f3, 1, name=f"res{tag}2c")(y))
            short = bn(f"bn{tag}1")(L.Conv2D(f3, 1, strides=s, name=f"res{tag}1")(x)) if i == 0 else x
            x = L.Activation("relu")(L.Add()([y, short]))
    return keras.Model(inp, x)


def test_imagenet_name_map_letters_and_counts():
    m50, m101 = W.IMAGENET_NAME_MAP("resnet50"), W.IMAGENET_NAME_MAP("resnet101")
    assert m50["conv1_conv"] == "conv1" and m50["conv1_bn"] == "bn_conv1"
    assert m50["conv2_block1_0_conv"] == "res2a_branch1" and m50["conv2_block1_0_bn"] == "bn2a_branch1"
    assert m50["conv3_block4_3_conv"] == "res3d_branch2c" and m50["conv5_block3_2_bn"] == "bn5c_branch2b"
    assert m101["conv4_block23_1_conv"] == "res4w_branch2a" and "conv4_block7_1_conv" not in m50
    assert "conv2_block2_0_conv" not in m50  # identity blocks have no shortcut
    assert len(m50) == 2 * (1 + 3 * 16 + 4) and len(m101) == 2 * (1 + 3 * 33 + 4)
    assert len(set(m101.values())) == len(m101)
    with pytest.raises(BrainTumorError):
        W.IMAGENET_NAME_MAP("resnet18")


def keras_app_file(net, path) -> None:
    """The keras.applications weights file of ``net`` (Keras 2 layout, like the downloaded one)."""
    write_matterport_h5(path, [(layer.name, [(f"{layer.name}/{v.name}:0", np.array(v.numpy()))
                                             for v in layer.weights]) for layer in net.layers])


def project_resnet(backbone: str, size: int = 64) -> keras.Model:
    """The model's own backbone (braintumor.mrcnn.backbone), frozen BN as in training."""
    from braintumor.mrcnn.backbone import resnet

    inp = keras.Input((size, size, 3))
    return keras.Model(inp, resnet(inp, backbone, train_bn=False)[-1])


@pytest.mark.parametrize("build_target", [matterport_resnet, project_resnet], ids=["stand-in", "project"])
def test_imagenet_map_covers_keras_resnet50_and_loads_every_backbone_layer(tmp_path, build_target):
    net = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    randomize(net, 31)
    target = build_target("resnet50")
    name_map = W.IMAGENET_NAME_MAP("resnet50")
    targets = {layer.name: layer for layer in target.layers}
    src_layers = [layer for layer in net.layers if isinstance(layer, (L.Conv2D, L.BatchNormalization))]
    assert len(src_layers) == len(name_map) == len([t for t in target.layers if t.weights])
    for layer in src_layers:
        dst = targets[name_map[layer.name]]
        assert [tuple(v.shape) for v in layer.weights] == [tuple(v.shape) for v in dst.weights], layer.name

    path = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    keras_app_file(net, path)
    report = W.load_imagenet_backbone(target, "resnet50", weights_path=path)
    assert len(report.loaded) == len(name_map) and report.complete and report.unused_in_file == []
    assert_same(layer_values(target, "res4f_branch2c"), layer_values(net, "conv4_block6_3_conv"))
    src_bn, dst_bn = layer_values(net, "conv3_block2_2_bn"), layer_values(target, "bn3b_branch2b")
    assert_same(dst_bn[1:], src_bn[1:])  # beta and moving stats as they are; gamma rescaled for epsilon
    want_gamma = src_bn[0] * np.sqrt((src_bn[3] + 1e-3) / (src_bn[3] + 1.001e-5))
    np.testing.assert_allclose(dst_bn[0], want_gamma, rtol=1e-6)


def test_conv1_and_bn_are_converted_to_give_the_imagenet_network_outputs(tmp_path):
    """Our molded RGB input through the loaded conv1 + BN (eps 1e-3) equals the Caffe-preprocessed
    BGR input through keras.applications' conv1_conv + conv1_bn (eps 1.001e-5)."""
    rng = np.random.default_rng(9)
    k = (rng.standard_normal((7, 7, 3, 4)) * 0.05).astype("f4")
    b = rng.standard_normal(4).astype("f4")
    gamma, beta, mean = rng.standard_normal(4).astype("f4"), rng.standard_normal(4).astype("f4"), rng.standard_normal(4).astype("f4")
    var = np.array([1e-4, 1e-3, 0.5, 2.0], "f4")  # small variances: the epsilon matters
    path = tmp_path / "resnet50_notop.h5"
    write_matterport_h5(path, [("conv1_conv", [("conv1_conv/kernel:0", k), ("conv1_conv/bias:0", b)]),
                               ("conv1_bn", [("conv1_bn/gamma:0", gamma), ("conv1_bn/beta:0", beta),
                                             ("conv1_bn/moving_mean:0", mean), ("conv1_bn/moving_variance:0", var)])])
    inp = keras.Input((20, 20, 3))
    x = L.BatchNormalization(name="bn_conv1")(L.Conv2D(4, 7, name="conv1")(inp))  # eps 1e-3 (Keras default)
    ours = keras.Model(inp, x)
    mean_pixel, pixel_std = [120.0, 110.0, 100.0], [60.0, 55.0, 50.0]
    report = W.load_imagenet_backbone(ours, "resnet50", weights_path=path, mean_pixel=mean_pixel, pixel_std=pixel_std)
    assert sorted(report.loaded) == ["bn_conv1", "conv1"]

    rgb = rng.uniform(0, 255, (1, 20, 20, 3)).astype("f4")
    molded = (rgb - np.array(mean_pixel, "f4")) / np.array(pixel_std, "f4")
    got = np.array(ours(molded, training=False))

    caffe = rgb[..., ::-1] - np.array(W.CAFFE_MEAN_BGR, "f4")
    ref_in = keras.Input((20, 20, 3))
    ref_out = L.BatchNormalization(epsilon=1.001e-5, name="conv1_bn")(L.Conv2D(4, 7, name="conv1_conv")(ref_in))
    ref = keras.Model(ref_in, ref_out)
    ref.get_layer("conv1_conv").set_weights([k, b])
    ref.get_layer("conv1_bn").set_weights([gamma, beta, mean, var])
    want = np.array(ref(caffe, training=False))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_imagenet_download_failure_is_one_clear_line(monkeypatch):
    def offline(*a, **k):
        raise Exception("URL fetch failure on https://storage.googleapis.com/tensorflow/keras-applications/"
                        "resnet/resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5: None -- "
                        "[Errno -2] Name or service not known")

    monkeypatch.setattr(keras.applications, "ResNet101", offline)
    with pytest.raises(BrainTumorError) as e:
        W.load_imagenet_backbone(tiny_model(), "resnet101")
    msg = str(e.value)
    assert "\n" not in msg
    assert "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg and "download failed" in msg
    assert "Colab" in msg and "--init random" in msg and "Name or service not known" in msg


def test_imagenet_into_a_model_without_backbone_names_raises(tmp_path):
    path = tmp_path / "resnet50_notop.h5"
    write_matterport_h5(path, [("conv1_conv", [("conv1_conv/kernel:0", np.zeros((7, 7, 3, 4), "f4")),
                                               ("conv1_conv/bias:0", np.zeros(4, "f4"))])])
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, L.Conv2D(2, 1, name="stem")(inp))
    with pytest.raises(BrainTumorError) as e:
        W.load_imagenet_backbone(model, "resnet50", weights_path=path)
    assert "\n" not in str(e.value) and "Matterport" in str(e.value)


def test_imagenet_loads_backbone_layers_inside_a_nested_model(tmp_path):
    rng = np.random.default_rng(10)
    k, b = rng.standard_normal((1, 1, 4, 4)).astype("f4"), rng.standard_normal(4).astype("f4")
    path = tmp_path / "resnet50_notop.h5"
    write_matterport_h5(path, [("conv2_block1_1_conv", [("conv2_block1_1_conv/kernel:0", k),
                                                        ("conv2_block1_1_conv/bias:0", b)])])
    fin = keras.Input((8, 8, 4))
    inner = keras.Model(fin, L.Conv2D(4, 1, name="res2a_branch2a")(fin), name="resnet")
    inp = keras.Input((8, 8, 4))
    model = keras.Model(inp, inner(inp))
    report = W.load_imagenet_backbone(model, "resnet50", weights_path=path)
    assert report.loaded == ["res2a_branch2a"]
    assert_same(layer_values(model, "resnet/res2a_branch2a"), [k, b])
    assert "conv1" not in report.missing_in_file  # the model has no conv1: not "missing"


def test_report_summary_is_short():
    r = W.LoadReport(loaded=["a"] * 235, skipped_excluded=["x"] * 4,
                     shape_mismatched=[("mrcnn_bbox_fc", "kernel", (1024, 324), (1024, 8))],
                     missing_in_file=[f"m{i}" for i in range(9)])
    s = str(r)
    assert s.startswith("loaded 235 layers, skipped 4 excluded, 1 shape-mismatched")
    assert "mrcnn_bbox_fc/kernel (1024, 324) vs (1024, 8)" in s and "9 missing in file" in s and "(+5)" in s


# ----------------------------------------------------------------------------
# interoperability with Keras's own (Keras 2 format) HDF5 reader and writer
# ----------------------------------------------------------------------------
def test_keras_legacy_h5_loader_reads_our_checkpoints(tmp_path):
    src = tiny_model()
    randomize(src, 41)
    path = tmp_path / "ckpt.h5"
    W.save_weights_h5(src, path)
    for by_name in (False, True):
        dst = tiny_model(seed=9)
        dst.load_weights(str(path), **({"by_name": True} if by_name else {}))
        for a, b in zip(src.weights, dst.weights):
            assert np.array_equal(np.array(a.numpy()), np.array(b.numpy())), (by_name, a.path)


def test_we_read_a_full_model_h5_written_by_keras(tmp_path):
    src = tiny_model()
    randomize(src, 42)
    path = tmp_path / "full.h5"
    src.save(str(path))  # legacy full-model file: weights under model_weights, names without ":0"
    dst = tiny_model(seed=8)
    report = W.load_weights_h5(dst, path)
    assert report.complete and report.unused_in_file == []
    for a, b in zip(src.weights, dst.weights):
        assert np.array_equal(np.array(a.numpy()), np.array(b.numpy())), a.path


def test_long_name_lists_are_split_into_numbered_attributes_like_keras2(tmp_path, monkeypatch):
    """HDF5 attributes hold at most 64 KiB: Keras 2 wrote layer_names0, layer_names1, ... beyond that."""
    src = tiny_model()
    randomize(src, 43)
    path = tmp_path / "ckpt.h5"
    monkeypatch.setattr(W, "_ATTR_LIMIT", 40)  # bytes: forces chunks on this tiny model
    W.save_weights_h5(src, path)
    with h5py.File(path, "r") as f:
        assert "layer_names" not in f.attrs and "layer_names1" in f.attrs
        chunks = [f.attrs[f"layer_names{i}"] for i in range(len(f.attrs)) if f"layer_names{i}" in f.attrs]
        assert [n.decode() for c in chunks for n in c] == [layer.name for layer in src.layers]
    dst = tiny_model(seed=4)
    assert W.load_weights_h5(dst, path).complete
    for a, b in zip(src.weights, dst.weights):
        assert np.array_equal(np.array(a.numpy()), np.array(b.numpy()))


def test_groupnorm_model_checkpoint_round_trip_and_bn_file_mismatch_is_reported(tmp_path):
    from braintumor.mrcnn.model import build_inference_model
    from mrcnn_testutil import tiny_config

    src = build_inference_model(tiny_config(NORM="gn"))
    randomize(src, 5)
    path = tmp_path / "gn.h5"
    W.save_weights_h5(src, path, epoch=1)
    keras.utils.set_random_seed(3)
    dst = build_inference_model(tiny_config(NORM="gn"))
    report = W.load_weights_h5(dst, path)
    assert report.complete and report.unused_in_file == []
    for a, b in zip(src.weights, dst.weights):
        assert np.array_equal(np.array(a.numpy()), np.array(b.numpy())), a.path
    # a BatchNorm checkpoint (4 arrays per norm layer) into a GroupNorm model: reported, never half-loaded
    bn_path = tmp_path / "bn.h5"
    bn_model = build_inference_model(tiny_config())
    W.save_weights_h5(bn_model, bn_path)
    before = layer_values(dst, "bn_conv1")
    report = W.load_weights_h5(dst, bn_path)
    assert not report.complete and "bn_conv1" in [c[0] for c in report.count_mismatched]
    assert all(np.array_equal(x, y) for x, y in zip(before, layer_values(dst, "bn_conv1")))
    assert np.array_equal(layer_values(dst, "fpn_p2")[0], layer_values(bn_model, "fpn_p2")[0])
