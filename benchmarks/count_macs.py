"""Multiply-accumulates of one ``detect()`` forward, counted from the built inference model.

Every ``Conv2D``/``Conv2DTranspose``/``Dense``/``WholeWindowConv`` kernel, times the positions it
is applied at: the body's and FPN's output maps at the configured image size, the RPN on every
pyramid level (P2..P6), the box head once per proposal (``POST_NMS_ROIS_INFERENCE``), the mask
head once per detection (14 × 14, its last 1 × 1 convolution at 28 × 28). GroupNorm, ROIAlign,
NMS and element-wise ops are not counted: this is the arithmetic floor behind the timings of
``bench_model.py`` (issue 12's ``detect()`` aim is read against it in benchmarks/README.md).

    .venv/bin/python benchmarks/count_macs.py [--config mrcnn_config/resnet101_figshare.toml] [--proposals 300]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _leaves(model):
    for layer in model.layers:
        if getattr(layer, "layers", None):
            yield from _leaves(layer)
        else:
            yield layer


def count(config) -> dict[str, float]:
    """GMAC by part: ``body``, ``fpn``, ``rpn``, ``box head (all proposals)``, ``mask head (each detection)``."""
    import keras

    from braintumor.mrcnn import MaskRCNN
    from braintumor.mrcnn.heads import WholeWindowConv

    km = MaskRCNN("inference", config, model_dir=ROOT / "logs").keras_model
    size = int(config.IMAGE_MAX_DIM)
    rpn_positions = sum((size // s) ** 2 for s in config.BACKBONE_STRIDES)
    parts = {"body": 0.0, "fpn": 0.0, "rpn": 0.0, "box head (all proposals)": 0.0, "mask head (each detection)": 0.0}
    for layer in _leaves(km):
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.Dense, WholeWindowConv)):
            continue
        kernel = float(np.prod(layer.kernel.shape))
        name = layer.name
        if name.startswith("rpn"):
            parts["rpn"] += rpn_positions * kernel
        elif name.startswith(("mrcnn_class", "mrcnn_bbox")):
            parts["box head (all proposals)"] += config.POST_NMS_ROIS_INFERENCE * kernel
        elif name.startswith("mrcnn_mask"):
            side = 2 * config.MASK_POOL_SIZE if name == "mrcnn_mask" else config.MASK_POOL_SIZE
            parts["mask head (each detection)"] += side * side * kernel
        else:  # body and FPN: their output maps have static shapes at a fixed image size
            h, w = layer.output.shape[1:3]
            parts["fpn" if name.startswith("fpn") else "body"] += h * w * kernel
    return {k: v / 1e9 for k, v in parts.items()}


def main(argv=None) -> int:
    from braintumor.config import load_config

    ap = argparse.ArgumentParser(description="MACs of one detect() forward, by part")
    ap.add_argument("--config", default=str(ROOT / "mrcnn_config" / "resnet101_figshare.toml"))
    ap.add_argument("--proposals", type=int, nargs="*", default=[1000, 300])
    ap.add_argument("--detections", type=int, default=1)
    args = ap.parse_args(argv)
    for n in args.proposals:
        cfg = load_config(args.config, IMAGES_PER_GPU=1, GPU_COUNT=1, PRECISION="float32", POST_NMS_ROIS_INFERENCE=n)
        g = count(cfg)
        total = sum(v for k, v in g.items() if k != "mask head (each detection)") + args.detections * g["mask head (each detection)"]
        print(f"{n} proposals: " + ", ".join(f"{k} {v:.1f} G" for k, v in g.items())
              + f"; total with {args.detections} detection(s) {total:.1f} G = {total / g['body']:.2f} x the body")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
