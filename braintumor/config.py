"""Configuration: Matterport-style UPPER_CASE settings, TOML presets, validation.

A :class:`Config` holds every setting of a run. Defaults live in :data:`DEFAULTS`
(one line of comment each, the names people know from Matterport's ``Config``);
a preset in ``mrcnn_config/*.toml`` overrides some of them::

    NAME = "tumor"
    BACKBONE = "resnet101"
    [AUGMENTATION]
    HORIZONTAL_FLIP = 0.5

Derived values (``BATCH_SIZE``, ``IMAGE_SHAPE``, ``IMAGE_META_SIZE``,
``BACKBONE_STRIDES``-based feature shapes) are computed once, in ``__init__``,
after validation. Unknown keys and impossible values raise :class:`ConfigError`
with a one-line message that names the key (and the file, for presets).
"""

from __future__ import annotations

import copy
import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.errors import BrainTumorError


class ConfigError(BrainTumorError, ValueError):
    """A configuration problem, reported in one line."""


# name: (default, one-line comment). Order is the order of display().
_SETTINGS: dict[str, tuple[Any, str]] = {
    # --- run ---------------------------------------------------------------
    "NAME": ("tumor", "run name: prefix of the log folder and of checkpoint files"),
    "SEED": (42, "seed for Python, NumPy and TensorFlow; same seed, same machine -> same losses"),
    "GPU_COUNT": (1, "number of GPUs (>1 trains under tf.distribute.MirroredStrategy)"),
    "IMAGES_PER_GPU": (1, "images per replica per step"),
    "STEPS_PER_EPOCH": (100, "training steps per epoch"),
    "VALIDATION_STEPS": (20, "validation batches at the end of every epoch"),
    "EPOCHS": (15, "total epochs of the run (the last stage of SCHEDULE ends here)"),
    "SCHEDULE": ([], "staged training: list of {epochs, layers, learning_rate}; empty = one stage"),
    "LAYERS": ("all", "layer group trained when SCHEDULE is empty: heads, 3+, 4+, 5+, all, mask (the mask branch alone) or detector (RPN and heads; backbone and FPN frozen)"),
    "INIT": ("random", "initial weights: random, imagenet, coco, last or a path to an .h5"),
    "EVAL_EACH_EPOCH": (False, "compute val Dice and mAP@0.5 after each epoch (slower)"),
    # --- data --------------------------------------------------------------
    "NUM_CLASSES": (2, "classes including background (background + tumor)"),
    "CLASS_NAMES": (["BG", "tumor"], "class names, index = class id, 0 is background"),
    "TUMOR_FREE_DIRS": ([], "folders of tumor-free images mixed into training as empty targets"),
    "TUMOR_FREE_FRACTION": (0.0, "share of training samples drawn from TUMOR_FREE_DIRS (0..0.9)"),
    "CLASS_MAP": ({}, "COCO category name -> class name (glioma = \"tumor\"); unmapped categories are skipped, counted"),
    "SOURCES": ([], "training sources, each {NAME, KIND, DIR, SPLIT, WEIGHT, CATEGORIES, EXCLUDE_SLICES, SLICES}: KIND "
                    "split (VIA/COCO split folders), figshare or tumor_free; DIR relative to the --data folder's "
                    "parent; WEIGHT: share of every epoch's samples; CATEGORIES: keep only images with an annotation "
                    "of one of these COCO categories (e.g. [\"glioma\"], to give one tumor type its own share); "
                    "EXCLUDE_SLICES (tumor_free only): leave out every copy of these slices (their keys, the first "
                    "file name of each group of copies, e.g. \"no1002.jpg\"); SLICES (tumor_free only): keep only the "
                    "copies of these slices (hard negatives with their own WEIGHT); empty = --data's train split (+ the "
                    "TUMOR_FREE_DIRS mix)"),
    "AUGMENTATION": ({}, "albumentations settings (see braintumor.augment); empty = none"),
    "COPY_PASTE": ({}, "copy-paste augmentation {P, SOURCES, RECEIVERS}: a tumor of a SOURCES image pasted into a "
                       "RECEIVERS image with probability P (see braintumor.copy_paste); empty = none"),
    # --- optimisation --------------------------------------------------------
    "LEARNING_RATE": (0.001, "SGD learning rate"),
    "LEARNING_MOMENTUM": (0.9, "SGD momentum"),
    "WEIGHT_DECAY": (0.0001, "L2 weight decay on conv/dense kernels"),
    "GRADIENT_CLIP_NORM": (5.0, "clip gradients to this global norm"),
    "GRADIENT_ACCUMULATION_STEPS": (1, "average the gradients of this many steps and take one optimizer step on "
                                       "their mean (an effective batch of this many x BATCH_SIZE; 1 = a step "
                                       "per batch). STEPS_PER_EPOCH counts batches and must be a multiple; "
                                       "WARMUP_STEPS and the cosine count batches too; the clip applies to the mean"),
    "WARMUP_STEPS": (0, "linear learning-rate warm-up steps at the start of training"),
    "LR_DECAY": ("none", "learning-rate decay over the run: none or cosine"),
    "LOSS_WEIGHTS": (
        {"rpn_class_loss": 1.0, "rpn_bbox_loss": 1.0, "mrcnn_class_loss": 1.0,
         "mrcnn_bbox_loss": 1.0, "mrcnn_mask_loss": 1.0},
        "weight of each of the five losses in the total",
    ),
    # --- model -------------------------------------------------------------
    "BACKBONE": ("resnet101", "backbone: resnet50 or resnet101"),
    "BACKBONE_STRIDES": ([4, 8, 16, 32, 64], "strides of the FPN levels P2..P6 in pixels"),
    "TOP_DOWN_PYRAMID_SIZE": (256, "channels of the FPN feature maps"),
    "FPN_CLASSIF_FC_LAYERS_SIZE": (1024, "width of the classifier head's two FC layers"),
    "NORM": ("bn", "normalisation: bn (BatchNorm, Matterport's) or gn (GroupNorm, for training from scratch)"),
    "TRAIN_BN": (False, "train BatchNorm layers (False freezes them: batches are small); gn always trains"),
    "GN_IMPL": ("fused", "GroupNorm code: keras (keras.layers.GroupNormalization) or fused (same weights and "
                         "output, statistics per channel and a hand-written gradient; braintumor.mrcnn.norm)"),
    "POOL_SIZE": (7, "ROIAlign output size for the classifier head"),
    "MASK_POOL_SIZE": (14, "ROIAlign output size for the mask head"),
    "MASK_SHAPE": ([28, 28], "mask head output size (2 x MASK_POOL_SIZE)"),
    # --- anchors and RPN -----------------------------------------------------
    "RPN_ANCHOR_SCALES": ([32, 64, 128, 256, 512], "anchor side in pixels, one per FPN level"),
    "RPN_ANCHOR_RATIOS": ([0.5, 1.0, 2.0], "anchor width/height ratios at every position"),
    "RPN_ANCHOR_STRIDE": (1, "anchor every N feature-map cells"),
    "RPN_NMS_THRESHOLD": (0.7, "NMS IoU threshold on RPN proposals"),
    "RPN_TRAIN_ANCHORS_PER_IMAGE": (256, "anchors sampled per image for the RPN losses"),
    "RPN_BBOX_STD_DEV": ([0.1, 0.1, 0.2, 0.2], "scale of RPN box-delta targets"),
    "PRE_NMS_LIMIT": (6000, "top-scoring anchors kept before proposal NMS"),
    "POST_NMS_ROIS_TRAINING": (2000, "proposals kept after NMS in training"),
    "POST_NMS_ROIS_INFERENCE": (1000, "proposals kept after NMS in inference"),
    # --- image sizing --------------------------------------------------------
    "IMAGE_RESIZE_MODE": ("square", "square (pad to MAX x MAX), pad64, crop or none"),
    "IMAGE_MIN_DIM": (512, "shorter side is scaled up to at least this"),
    "IMAGE_MAX_DIM": (512, "longer side is scaled down to at most this (multiple of 64)"),
    "IMAGE_MIN_SCALE": (0, "minimum scale factor (0 = no minimum)"),
    "IMAGE_CHANNEL_COUNT": (3, "channels of the network input"),
    "MEAN_PIXEL": ([123.7, 116.8, 103.9], "subtracted from RGB pixels before the network"),
    "PIXEL_STD": ([58.4, 57.1, 57.4], "molded pixels are divided by this (1 = Matterport)"),
    # --- heads / training targets --------------------------------------------
    "TRAIN_ROIS_PER_IMAGE": (200, "ROIs sampled per image for the classifier and mask heads"),
    "ROI_POSITIVE_RATIO": (0.33, "share of positive ROIs among TRAIN_ROIS_PER_IMAGE"),
    "MAX_GT_INSTANCES": (20, "ground-truth instances kept per image"),
    "USE_MINI_MASK": (True, "store GT masks resized to their box (saves memory)"),
    "MINI_MASK_SHAPE": ([56, 56], "size of mini masks (height, width)"),
    "BBOX_STD_DEV": ([0.1, 0.1, 0.2, 0.2], "scale of head box-delta targets"),
    # --- inference -----------------------------------------------------------
    "DETECTION_MAX_INSTANCES": (20, "detections kept per image"),
    "DETECTION_MIN_CONFIDENCE": (0.7, "detections below this score are dropped"),
    "DETECTION_NMS_THRESHOLD": (0.3, "per-class NMS IoU threshold on detections"),
    "DETECTION_SECONDARY_MIN_CONFIDENCE": (0.0, "every detection but an image's best one needs at least this score "
                                                "(0: no extra bar); cuts false regions where scans hold one tumor"),
    "DETECTION_FLAGGED_MIN_CONFIDENCE": (0.0, "on a scan the image-level head flags, regions count down to this score "
                                              "when it is below DETECTION_MIN_CONFIDENCE, so a flagged scan's best region "
                                              "is outlined (0: no lower bar; needs a head, braintumor/image_score.py)"),
    "DETECTION_MASK_THRESHOLD": (0.5, "a region's outline: the pixels where its mask probability is at least this "
                                      "(the mask head's 28 x 28 output resized to the box)"),
    "TEST_TIME_FLIP": (False, "also detect on the left-right mirror image and merge the two views (scores and masks "
                              "averaged; braintumor/mrcnn/flip.py): twice the detect time"),
    "MIN_STEPS_FOR_READING": (1000, "a checkpoint trained fewer steps is a demo model: no 'no tumor' verdicts"),
    # --- speed (benchmarks/README.md, "How to measure issue 12") ------------------
    "PRECISION": ("float32", "float32, or mixed_bfloat16: bfloat16 compute, float32 weights, losses and box "
                            "arithmetic; only on CPUs with avx512_bf16 or amx_bf16 (float32 elsewhere, said once)"),
    "INPUT_WORKERS": (0, "threads preparing training samples ahead of the step (0 = one generator thread); "
                         "the samples are the same for any number"),
    "VALIDATION_EVERY": (1, "run the VALIDATION_STEPS validation batches every N epochs only (1 = every epoch)"),
    "VALIDATION_CACHE": (False, "keep the validation batches in memory after the first validation (every "
                                "validation uses the same seeded batches; this only skips rebuilding them)"),
}

DEFAULTS: dict[str, Any] = {k: v for k, (v, _) in _SETTINGS.items()}
COMMENTS: dict[str, str] = {k: c for k, (_, c) in _SETTINGS.items()}

LAYER_GROUPS = ("heads", "3+", "4+", "5+", "all", "mask", "detector")
BACKBONES = ("resnet50", "resnet101")
NORMS = ("bn", "gn")
GN_IMPLS = ("keras", "fused")
PRECISIONS = ("float32", "mixed_bfloat16")
RESIZE_MODES = ("square", "pad64", "crop", "none")
INIT_CHOICES = ("random", "imagenet", "coco", "last")


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{name} must be a positive integer, got {v!r}")


SOURCE_KINDS = ("split", "figshare", "tumor_free")
SOURCE_KEYS = {"NAME", "KIND", "DIR", "SPLIT", "WEIGHT", "CATEGORIES", "EXCLUDE_SLICES", "SLICES"}


def _check_sources(sources) -> None:
    if not isinstance(sources, list):
        raise ConfigError("SOURCES must be a list of tables ([[SOURCES]] in TOML)")
    names = []
    for s in sources:
        if not isinstance(s, dict) or not {"NAME", "KIND", "WEIGHT"} <= set(s) or set(s) - SOURCE_KEYS:
            raise ConfigError(f"every SOURCES entry needs NAME, KIND, WEIGHT (and optionally DIR, SPLIT, CATEGORIES, "
                              f"EXCLUDE_SLICES, SLICES), got {s!r}")
        if s["KIND"] not in SOURCE_KINDS:
            raise ConfigError(f"SOURCES {s['NAME']!r}: KIND must be one of {SOURCE_KINDS}, got {s['KIND']!r}")
        w = s["WEIGHT"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0:
            raise ConfigError(f"SOURCES {s['NAME']!r}: WEIGHT must be a positive number, got {w!r}")
        cats = s.get("CATEGORIES")
        if cats is not None and (s["KIND"] == "tumor_free" or not isinstance(cats, list) or not cats
                                 or not all(isinstance(c, str) and c for c in cats)):
            raise ConfigError(f"SOURCES {s['NAME']!r}: CATEGORIES must be a non-empty list of category names "
                              f"(not for KIND tumor_free), got {cats!r}")
        for key, non_empty in (("EXCLUDE_SLICES", False), ("SLICES", True)):
            keys = s.get(key)
            if keys is not None and (s["KIND"] != "tumor_free" or not isinstance(keys, list) or (non_empty and not keys)
                                     or not all(isinstance(k, str) and k for k in keys)):
                raise ConfigError(f"SOURCES {s['NAME']!r}: {key} must be a {'non-empty ' if non_empty else ''}"
                                  f"list of slice keys (file names; only for KIND tumor_free), got {keys!r}")
        names.append(s["NAME"])
    if len(set(names)) != len(names):
        raise ConfigError(f"SOURCES names must be unique, got {names}")


def _unit(name, v, lo=0.0, hi=1.0):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ConfigError(f"{name} must be a number in [{lo}, {hi}], got {v!r}")


BASE_KEY = "BASE"  # a preset's parent preset (Config.from_toml); never a setting itself
MAX_BASE_DEPTH = 8


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def _read_preset(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """A preset's settings with its ``BASE`` chain resolved (``chain``: the presets that led here)."""
    here = path.resolve()
    if here in chain:
        raise ConfigError(f"{path}: BASE presets form a cycle ({' -> '.join(p.name for p in (*chain, here))})")
    if len(chain) >= MAX_BASE_DEPTH:
        raise ConfigError(f"{path}: more than {MAX_BASE_DEPTH} BASE presets in a chain")
    data = _read_toml(path)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: BASE must be a preset file name, got {base!r}")
    merged = _read_preset(path.parent / base, (*chain, here))
    for k, v in data.items():
        merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


class Config:
    """All settings of a run, as attributes (``config.LEARNING_RATE``).

    ``Config(overrides)`` starts from :data:`DEFAULTS`, applies ``overrides``,
    validates, then computes the derived values:

    - ``BATCH_SIZE`` = ``IMAGES_PER_GPU * GPU_COUNT``
    - ``IMAGE_SHAPE`` = ``[H, W, C]`` of the network input (square: MAX x MAX)
    - ``IMAGE_META_SIZE`` = length of the per-image meta vector
    - ``BACKBONE_SHAPES`` = ``[[H/stride, W/stride], ...]`` for P2..P6
    """

    def __init__(self, overrides: dict[str, Any] | None = None, *, source: str | None = None):
        self.source = source
        values = copy.deepcopy(DEFAULTS)
        for key, value in (overrides or {}).items():
            if key not in DEFAULTS:
                where = f"{source}: " if source else ""
                raise ConfigError(f"{where}unknown setting {key!r}")
            values[key] = value
        for key, value in values.items():
            setattr(self, key, value)
        try:
            self.validate()
        except ConfigError as e:
            if source:
                raise ConfigError(f"{source}: {e}") from None
            raise
        self._derive()

    # ------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` on the first impossible value."""
        for key in ("GPU_COUNT", "IMAGES_PER_GPU", "STEPS_PER_EPOCH", "VALIDATION_STEPS", "EPOCHS",
                    "NUM_CLASSES", "TRAIN_ROIS_PER_IMAGE", "MAX_GT_INSTANCES", "DETECTION_MAX_INSTANCES",
                    "POST_NMS_ROIS_TRAINING", "POST_NMS_ROIS_INFERENCE", "PRE_NMS_LIMIT", "POOL_SIZE",
                    "MASK_POOL_SIZE", "RPN_ANCHOR_STRIDE", "RPN_TRAIN_ANCHORS_PER_IMAGE",
                    "TOP_DOWN_PYRAMID_SIZE", "FPN_CLASSIF_FC_LAYERS_SIZE", "IMAGE_CHANNEL_COUNT"):
            _positive_int(key, getattr(self, key))
        if not isinstance(self.SEED, int) or isinstance(self.SEED, bool):
            raise ConfigError(f"SEED must be an integer, got {self.SEED!r}")
        if not isinstance(self.NAME, str) or not self.NAME or not self.NAME.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"NAME must be letters, digits, '-' or '_', got {self.NAME!r}")
        if self.BACKBONE not in BACKBONES:
            raise ConfigError(f"BACKBONE must be one of {', '.join(BACKBONES)}, got {self.BACKBONE!r}")
        if self.NORM not in NORMS:
            raise ConfigError(f"NORM must be one of {', '.join(NORMS)}, got {self.NORM!r}")
        if self.GN_IMPL not in GN_IMPLS:
            raise ConfigError(f"GN_IMPL must be one of {', '.join(GN_IMPLS)}, got {self.GN_IMPL!r}")
        if self.PRECISION not in PRECISIONS:
            raise ConfigError(f"PRECISION must be one of {', '.join(PRECISIONS)}, got {self.PRECISION!r}")
        if isinstance(self.INPUT_WORKERS, bool) or not isinstance(self.INPUT_WORKERS, int) or self.INPUT_WORKERS < 0:
            raise ConfigError(f"INPUT_WORKERS must be a non-negative integer, got {self.INPUT_WORKERS!r}")
        _positive_int("VALIDATION_EVERY", self.VALIDATION_EVERY)
        if not isinstance(self.VALIDATION_CACHE, bool):
            raise ConfigError(f"VALIDATION_CACHE must be true or false, got {self.VALIDATION_CACHE!r}")
        if not isinstance(self.TEST_TIME_FLIP, bool):
            raise ConfigError(f"TEST_TIME_FLIP must be true or false, got {self.TEST_TIME_FLIP!r}")
        if self.LAYERS not in LAYER_GROUPS:
            raise ConfigError(f"LAYERS must be one of {', '.join(LAYER_GROUPS)}, got {self.LAYERS!r}")
        if self.IMAGE_RESIZE_MODE not in RESIZE_MODES:
            raise ConfigError(f"IMAGE_RESIZE_MODE must be one of {', '.join(RESIZE_MODES)}, got {self.IMAGE_RESIZE_MODE!r}")
        _positive_int("IMAGE_MAX_DIM", self.IMAGE_MAX_DIM)
        _positive_int("IMAGE_MIN_DIM", self.IMAGE_MIN_DIM)
        if self.IMAGE_MAX_DIM % 64:
            raise ConfigError(f"IMAGE_MAX_DIM must be a multiple of 64 (6 halvings down to P6), got {self.IMAGE_MAX_DIM}")
        if self.IMAGE_MIN_DIM > self.IMAGE_MAX_DIM:
            raise ConfigError(f"IMAGE_MIN_DIM ({self.IMAGE_MIN_DIM}) must not exceed IMAGE_MAX_DIM ({self.IMAGE_MAX_DIM})")
        if len(self.CLASS_NAMES) != self.NUM_CLASSES:
            raise ConfigError(f"CLASS_NAMES has {len(self.CLASS_NAMES)} names but NUM_CLASSES is {self.NUM_CLASSES}")
        if self.NUM_CLASSES < 2:
            raise ConfigError("NUM_CLASSES must be at least 2 (background + one class)")
        for key in ("LEARNING_RATE",):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 10:
                raise ConfigError(f"{key} must be a number in (0, 10), got {v!r}")
        _unit("LEARNING_MOMENTUM", self.LEARNING_MOMENTUM)
        _unit("WEIGHT_DECAY", self.WEIGHT_DECAY, 0.0, 0.1)
        _unit("ROI_POSITIVE_RATIO", self.ROI_POSITIVE_RATIO, 0.01, 1.0)
        _unit("DETECTION_MIN_CONFIDENCE", self.DETECTION_MIN_CONFIDENCE)
        _unit("DETECTION_FLAGGED_MIN_CONFIDENCE", self.DETECTION_FLAGGED_MIN_CONFIDENCE)
        _unit("DETECTION_NMS_THRESHOLD", self.DETECTION_NMS_THRESHOLD)
        _unit("DETECTION_MASK_THRESHOLD", self.DETECTION_MASK_THRESHOLD, 0.05, 0.95)
        _unit("RPN_NMS_THRESHOLD", self.RPN_NMS_THRESHOLD)
        _unit("TUMOR_FREE_FRACTION", self.TUMOR_FREE_FRACTION, 0.0, 0.9)
        _unit("GRADIENT_CLIP_NORM", self.GRADIENT_CLIP_NORM, 0.0, 1e6)
        _positive_int("GRADIENT_ACCUMULATION_STEPS", self.GRADIENT_ACCUMULATION_STEPS)
        if self.STEPS_PER_EPOCH % self.GRADIENT_ACCUMULATION_STEPS:
            raise ConfigError(f"STEPS_PER_EPOCH ({self.STEPS_PER_EPOCH}) must be a multiple of "
                              f"GRADIENT_ACCUMULATION_STEPS ({self.GRADIENT_ACCUMULATION_STEPS}): an epoch ends on "
                              "an optimizer step, so no accumulated gradient is left over at a checkpoint")
        if not isinstance(self.WARMUP_STEPS, int) or self.WARMUP_STEPS < 0:
            raise ConfigError(f"WARMUP_STEPS must be a non-negative integer, got {self.WARMUP_STEPS!r}")
        if isinstance(self.MIN_STEPS_FOR_READING, bool) or not isinstance(self.MIN_STEPS_FOR_READING, int) or self.MIN_STEPS_FOR_READING < 0:
            raise ConfigError(f"MIN_STEPS_FOR_READING must be a non-negative integer, got {self.MIN_STEPS_FOR_READING!r}")
        if self.LR_DECAY not in ("none", "cosine"):
            raise ConfigError(f"LR_DECAY must be 'none' or 'cosine', got {self.LR_DECAY!r}")
        if len(self.BACKBONE_STRIDES) != 5 or len(self.RPN_ANCHOR_SCALES) != 5:
            raise ConfigError("BACKBONE_STRIDES and RPN_ANCHOR_SCALES need 5 entries (P2..P6)")
        if any((not isinstance(s, (int, float))) or s <= 0 for s in self.RPN_ANCHOR_SCALES + self.RPN_ANCHOR_RATIOS):
            raise ConfigError("RPN_ANCHOR_SCALES and RPN_ANCHOR_RATIOS must be positive numbers")
        if list(self.MASK_SHAPE) != [2 * self.MASK_POOL_SIZE] * 2:
            raise ConfigError(f"MASK_SHAPE must be [2*MASK_POOL_SIZE]*2 = {[2 * self.MASK_POOL_SIZE] * 2}, got {self.MASK_SHAPE}")
        if len(self.MEAN_PIXEL) != self.IMAGE_CHANNEL_COUNT or len(self.PIXEL_STD) != self.IMAGE_CHANNEL_COUNT:
            raise ConfigError("MEAN_PIXEL and PIXEL_STD need one value per image channel")
        if any(s <= 0 for s in self.PIXEL_STD):
            raise ConfigError("PIXEL_STD values must be positive")
        if len(self.RPN_BBOX_STD_DEV) != 4 or len(self.BBOX_STD_DEV) != 4:
            raise ConfigError("RPN_BBOX_STD_DEV and BBOX_STD_DEV need 4 values")
        if self.TRAIN_ROIS_PER_IMAGE > self.POST_NMS_ROIS_TRAINING:
            raise ConfigError("TRAIN_ROIS_PER_IMAGE must not exceed POST_NMS_ROIS_TRAINING")
        if not isinstance(self.INIT, str) or not self.INIT:
            raise ConfigError(f"INIT must be one of {', '.join(INIT_CHOICES)} or a path, got {self.INIT!r}")
        if not isinstance(self.LOSS_WEIGHTS, dict) or set(self.LOSS_WEIGHTS) != set(DEFAULTS["LOSS_WEIGHTS"]):
            raise ConfigError(f"LOSS_WEIGHTS needs exactly the keys {sorted(DEFAULTS['LOSS_WEIGHTS'])}")
        if not isinstance(self.CLASS_MAP, dict) or not all(isinstance(v, str) for v in self.CLASS_MAP.values()):
            raise ConfigError(f"CLASS_MAP must map category names to class names, got {self.CLASS_MAP!r}")
        bad = sorted({v for v in self.CLASS_MAP.values() if v.lower() not in [c.lower() for c in self.CLASS_NAMES[1:]]})
        if bad:
            raise ConfigError(f"CLASS_MAP maps onto {bad}, which are not in CLASS_NAMES {self.CLASS_NAMES[1:]}")
        _check_sources(self.SOURCES)
        if not isinstance(self.TUMOR_FREE_DIRS, list):
            raise ConfigError("TUMOR_FREE_DIRS must be a list of folders")
        if not isinstance(self.AUGMENTATION, dict):
            raise ConfigError("AUGMENTATION must be a table of settings")
        if not isinstance(self.COPY_PASTE, dict):
            raise ConfigError("COPY_PASTE must be a table of settings (see braintumor.copy_paste)")
        total = 0
        for i, stage in enumerate(self.SCHEDULE):
            if not isinstance(stage, dict) or not {"epochs", "layers"} <= set(stage) or set(stage) - {"epochs", "layers", "learning_rate"}:
                raise ConfigError(f"SCHEDULE[{i}] must be a table with epochs, layers and optional learning_rate")
            _positive_int(f"SCHEDULE[{i}].epochs", stage["epochs"])
            if stage["layers"] not in LAYER_GROUPS:
                raise ConfigError(f"SCHEDULE[{i}].layers must be one of {', '.join(LAYER_GROUPS)}, got {stage['layers']!r}")
            total += stage["epochs"]
        if self.SCHEDULE and total != self.EPOCHS:
            raise ConfigError(f"SCHEDULE stages add up to {total} epochs but EPOCHS is {self.EPOCHS}")

    def _derive(self) -> None:
        self.BATCH_SIZE = self.IMAGES_PER_GPU * self.GPU_COUNT
        if self.IMAGE_RESIZE_MODE == "crop":
            self.IMAGE_SHAPE = [self.IMAGE_MIN_DIM, self.IMAGE_MIN_DIM, self.IMAGE_CHANNEL_COUNT]
        else:
            self.IMAGE_SHAPE = [self.IMAGE_MAX_DIM, self.IMAGE_MAX_DIM, self.IMAGE_CHANNEL_COUNT]
        # image_id, original shape (3), molded shape (3), window (4), scale, active class ids
        self.IMAGE_META_SIZE = 1 + 3 + 3 + 4 + 1 + self.NUM_CLASSES
        self.BACKBONE_SHAPES = [
            [int(math.ceil(self.IMAGE_SHAPE[0] / s)), int(math.ceil(self.IMAGE_SHAPE[1] / s))]
            for s in self.BACKBONE_STRIDES
        ]

    # ------------------------------------------------------------------
    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> "Config":
        """Load a preset file; ``overrides`` (e.g. ``EPOCHS=1``) win over the file.

        A preset may start from another: ``BASE = "other.toml"`` (a path relative to the preset's
        folder) reads that one first, then this file's keys override it (tables such as
        ``AUGMENTATION`` key by key, arrays of tables such as ``SOURCES`` as a whole).
        """
        data = _read_preset(Path(path), ())
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The settings (not the derived values), ready for TOML."""
        return {k: copy.deepcopy(getattr(self, k)) for k in DEFAULTS}

    def to_toml(self) -> str:
        """The settings as a TOML document, each with its comment."""
        import tomli_w

        lines, arrays, tables = [], [], []
        for k in DEFAULTS:
            v = getattr(self, k)
            if isinstance(v, dict):
                tables.append(k)
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                arrays.append(k)
            else:
                lines.append(f"# {COMMENTS[k]}")
                lines.append(tomli_w.dumps({k: v}).strip())
        text = "\n".join(lines) + "\n"
        # After every plain key, since a table header claims the keys below it: first the arrays of tables,
        # always as [[KEY]] blocks (tomli_w writes short ones inline, long ones as blocks), then the [TABLE]s.
        for k in arrays:
            text += f"\n# {COMMENTS[k]}\n" + "\n".join(f"[[{k}]]\n" + tomli_w.dumps(x) for x in getattr(self, k))
        for k in tables:
            text += f"\n# {COMMENTS[k]}\n" + tomli_w.dumps({k: getattr(self, k)})
        return text

    def save(self, path: str | Path) -> None:
        """Write the settings as TOML, atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_toml(), encoding="utf-8")
        tmp.replace(path)

    def replace(self, **overrides: Any) -> "Config":
        """A copy with some settings changed (validated again)."""
        d = self.to_dict()
        d.update(overrides)
        return Config(d, source=self.source)

    def display(self) -> str:
        """Print (and return) every setting and derived value, one per line."""
        rows = [f"{k:30} {getattr(self, k)!r}" for k in DEFAULTS]
        rows += [f"{k:30} {getattr(self, k)!r}  (derived)" for k in
                 ("BATCH_SIZE", "IMAGE_SHAPE", "IMAGE_META_SIZE", "BACKBONE_SHAPES")]
        text = "Configurations:\n" + "\n".join(rows)
        print(text)
        return text

    def __repr__(self) -> str:
        return f"Config(NAME={self.NAME!r}, BACKBONE={self.BACKBONE!r}, source={self.source!r})"

    # convenience used by the model
    @property
    def mean_pixel(self) -> np.ndarray:
        return np.asarray(self.MEAN_PIXEL, dtype=np.float32)

    def schedule(self) -> list[dict[str, Any]]:
        """The training stages: SCHEDULE, or one stage of EPOCHS on LAYERS at LEARNING_RATE."""
        if self.SCHEDULE:
            return [{"epochs": s["epochs"], "layers": s["layers"],
                     "learning_rate": s.get("learning_rate", self.LEARNING_RATE)} for s in self.SCHEDULE]
        return [{"epochs": self.EPOCHS, "layers": self.LAYERS, "learning_rate": self.LEARNING_RATE}]


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """A preset file, or the defaults when ``path`` is None."""
    if path is None:
        return Config({k: v for k, v in overrides.items() if v is not None})
    return Config.from_toml(path, **overrides)
