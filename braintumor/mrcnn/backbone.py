"""ResNet-50/101 backbone and Feature Pyramid Network, with Matterport's layer names.

Layer names follow Matterport's ``mrcnn/model.py`` exactly so that its ``.h5``
checkpoints load by name: ``conv1``/``bn_conv1``, then per stage ``s`` (2..5)
and block ``b`` (a, b, ...): ``res{s}{b}_branch2a|2b|2c`` + ``bn{s}{b}_branch2a|2b|2c``,
and for the first block ``res{s}a_branch1`` + ``bn{s}a_branch1`` (projection
shortcut). Stage 4 has 6 blocks (a..f) in ResNet-50, 23 (a..w) in ResNet-101.
Convolutions have biases; strides sit on the first 1x1 convolution (Caffe style).

FPN: ``fpn_c5p5``, ``fpn_c4p4``, ``fpn_c3p3``, ``fpn_c2p2`` (1x1 laterals),
``fpn_p2``..``fpn_p5`` (3x3 smoothing), P6 = 1x1 max-pool stride 2 of P5.
"""

from __future__ import annotations

from keras import layers

STAGE4_BLOCKS = {"resnet50": 6, "resnet101": 23}


GN_GROUPS = 32  # GroupNorm groups (Wu & He, 2018); every ResNet width is a multiple of 32


def norm_layer(name, train_bn, norm="bn", zero_gamma=False):
    """The normalisation after a convolution, named ``name`` (Matterport's ``bn...`` names either way).

    ``norm="bn"``: BatchNormalization (Matterport); frozen unless ``train_bn`` (frozen BN
    runs on its moving statistics, which is what fine-tuning pretrained weights wants).
    ``norm="gn"``: GroupNormalization with :data:`GN_GROUPS` groups (``"gn_fused"``: the same
    as :class:`braintumor.mrcnn.norm.FusedGroupNorm`, see :func:`norm_kind`), always trained: the
    same computation in training and inference whatever the batch size, which is what
    training from random initialisation at one image per step needs. ``zero_gamma``
    starts its scale at 0 (used on the last norm of each residual branch, so every
    block starts as the identity).
    """
    if norm == "gn":
        return layers.GroupNormalization(groups=GN_GROUPS, epsilon=1e-5, name=name,
                                         gamma_initializer="zeros" if zero_gamma else "ones")
    if norm == "gn_fused":  # the same layer (weights, output), faster on the CPU: braintumor.mrcnn.norm
        from braintumor.mrcnn.norm import FusedGroupNorm

        return FusedGroupNorm(groups=GN_GROUPS, epsilon=1e-5, name=name,
                              gamma_initializer="zeros" if zero_gamma else "ones")
    bn = layers.BatchNormalization(name=name, epsilon=1e-3, momentum=0.99)
    # frozen BN: trainable=False also makes Keras 3 use the moving statistics
    bn.trainable = bool(train_bn)
    return bn


def _bottleneck(x, filters, stage, block, train_bn, strides=1, projection=False, norm="bn"):
    """One bottleneck block: 1x1 -> 3x3 -> 1x1 (+ shortcut), ReLU.

    x: ``[B, H, W, C]`` -> ``[B, H / strides, W / strides, filters[2]]``.
    """
    f1, f2, f3 = filters
    conv = f"res{stage}{block}_branch"
    bn = f"bn{stage}{block}_branch"
    y = layers.Conv2D(f1, 1, strides=strides, use_bias=True, name=conv + "2a")(x)
    y = norm_layer(bn + "2a", train_bn, norm)(y)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(f2, 3, padding="same", use_bias=True, name=conv + "2b")(y)
    y = norm_layer(bn + "2b", train_bn, norm)(y)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(f3, 1, use_bias=True, name=conv + "2c")(y)
    y = norm_layer(bn + "2c", train_bn, norm, zero_gamma=True)(y)
    if projection:
        shortcut = layers.Conv2D(f3, 1, strides=strides, use_bias=True, name=conv + "1")(x)
        shortcut = norm_layer(bn + "1", train_bn, norm)(shortcut)
    else:
        shortcut = x
    y = layers.Add()([y, shortcut])
    return layers.Activation("relu", name=f"res{stage}{block}_out")(y)


def resnet(image, architecture="resnet101", train_bn=False, norm="bn"):
    """ResNet stages on ``image`` ``[B, H, W, 3]``: returns ``[C2, C3, C4, C5]``
    with strides 4, 8, 16, 32 and 256, 512, 1024, 2048 channels.

    norm: ``bn`` or ``gn``, see :func:`norm_layer`."""
    if architecture not in STAGE4_BLOCKS:
        raise ValueError(f"unknown backbone {architecture!r}")
    x = layers.ZeroPadding2D(3)(image)
    x = layers.Conv2D(64, 7, strides=2, use_bias=True, name="conv1")(x)
    x = norm_layer("bn_conv1", train_bn, norm)(x)
    x = layers.Activation("relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    outputs = []
    for stage, filters, blocks, strides in ((2, (64, 64, 256), 3, 1), (3, (128, 128, 512), 4, 2),
                                            (4, (256, 256, 1024), STAGE4_BLOCKS[architecture], 2),
                                            (5, (512, 512, 2048), 3, 2)):
        for i in range(blocks):
            x = _bottleneck(x, filters, stage, chr(ord("a") + i), train_bn,
                            strides=strides if i == 0 else 1, projection=(i == 0), norm=norm)
        outputs.append(x)
    return outputs


def fpn(c2, c3, c4, c5, size=256):
    """Feature pyramid: ``[P2, P3, P4, P5, P6]``, each ``size`` channels, strides 4..64."""
    p5 = layers.Conv2D(size, 1, name="fpn_c5p5")(c5)
    p4 = layers.Add(name="fpn_p4add")([layers.UpSampling2D(2, name="fpn_p5upsampled")(p5),
                                       layers.Conv2D(size, 1, name="fpn_c4p4")(c4)])
    p3 = layers.Add(name="fpn_p3add")([layers.UpSampling2D(2, name="fpn_p4upsampled")(p4),
                                       layers.Conv2D(size, 1, name="fpn_c3p3")(c3)])
    p2 = layers.Add(name="fpn_p2add")([layers.UpSampling2D(2, name="fpn_p3upsampled")(p3),
                                       layers.Conv2D(size, 1, name="fpn_c2p2")(c2)])
    p2 = layers.Conv2D(size, 3, padding="same", name="fpn_p2")(p2)
    p3 = layers.Conv2D(size, 3, padding="same", name="fpn_p3")(p3)
    p4 = layers.Conv2D(size, 3, padding="same", name="fpn_p4")(p4)
    p5 = layers.Conv2D(size, 3, padding="same", name="fpn_p5")(p5)
    p6 = layers.MaxPooling2D(pool_size=1, strides=2, name="fpn_p6")(p5)
    return [p2, p3, p4, p5, p6]


def norm_kind(config) -> str:
    """The ``norm`` argument of :func:`norm_layer` for ``config``: ``NORM``, or ``"gn_fused"``
    for ``NORM = "gn"`` with ``GN_IMPL = "fused"``."""
    if config.NORM == "gn" and getattr(config, "GN_IMPL", "keras") == "fused":
        return "gn_fused"
    return config.NORM


def backbone_and_fpn(image, config):
    """``image`` ``[B, H, W, 3]`` -> ``[P2, P3, P4, P5, P6]`` for ``config``."""
    _, c2, c3, c4, c5 = [None] + resnet(image, config.BACKBONE, config.TRAIN_BN, norm_kind(config))
    return fpn(c2, c3, c4, c5, config.TOP_DOWN_PYRAMID_SIZE)

