"""Tiny configs and a synthetic Dataset-like class for the Mask R-CNN tests (no real data)."""

from __future__ import annotations

import numpy as np

from braintumor.config import Config

TINY = dict(
    NAME="tiny", BACKBONE="resnet50", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, TOP_DOWN_PYRAMID_SIZE=32,
    FPN_CLASSIF_FC_LAYERS_SIZE=64, RPN_ANCHOR_SCALES=[8, 16, 32, 64, 128], PRE_NMS_LIMIT=300,
    POST_NMS_ROIS_TRAINING=64, POST_NMS_ROIS_INFERENCE=32, TRAIN_ROIS_PER_IMAGE=32,
    RPN_TRAIN_ANCHORS_PER_IMAGE=64, MAX_GT_INSTANCES=4, MINI_MASK_SHAPE=[28, 28], STEPS_PER_EPOCH=2,
    VALIDATION_STEPS=1, DETECTION_MIN_CONFIDENCE=0.0, DETECTION_MAX_INSTANCES=8, SEED=7,
)


def tiny_config(**overrides) -> Config:
    d = dict(TINY)
    d.update(overrides)
    return Config(d)


def blob_image(h, w, boxes, value=220, seed=0):
    """uint8 [h, w, 3]: dark noisy background with bright ellipses inside ``boxes`` (pixel y1,x1,y2,x2)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 40, size=(h, w, 3)).astype(np.uint8)
    masks = np.zeros((h, w, len(boxes)), bool)
    yy, xx = np.mgrid[0:h, 0:w]
    for i, (y1, x1, y2, x2) in enumerate(boxes):
        cy, cx = (y1 + y2 - 1) / 2, (x1 + x2 - 1) / 2
        ry, rx = (y2 - y1) / 2, (x2 - x1) / 2
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        masks[:, :, i] = m
        image[m] = value
    return image, masks


class SyntheticDataset:
    """Implements the Dataset interface of common.md on in-memory images.

    samples: list of ``(image uint8 [H, W, 3], masks bool [H, W, N])``; every instance is class 1.
    """

    class_names = ["BG", "tumor"]
    num_classes = 2

    def __init__(self, samples):
        self.samples = list(samples)
        self.image_ids = list(range(len(self.samples)))
        self.image_info = [{"name": f"img{i}.png", "path": f"img{i}.png", "height": s[0].shape[0],
                            "width": s[0].shape[1]} for i, s in enumerate(self.samples)]
        self.problems = []

    def __len__(self):
        return len(self.samples)

    def load_image(self, i):
        return self.samples[i][0].copy()

    def load_mask(self, i):
        masks = self.samples[i][1]
        return masks.copy(), np.ones(masks.shape[2], np.int32)


def blob_dataset(n=4, h=64, w=64, seed=0, empty_every=0):
    """``n`` images with one bright blob each at varied places (every ``empty_every``-th image empty)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        if empty_every and i % empty_every == empty_every - 1:
            img, m = blob_image(h, w, [], seed=seed + i)
        else:
            bh, bw = int(rng.integers(h // 4, h // 2)), int(rng.integers(w // 4, w // 2))
            y, x = int(rng.integers(2, h - bh - 2)), int(rng.integers(2, w - bw - 2))
            img, m = blob_image(h, w, [(y, x, y + bh, x + bw)], seed=seed + i)
        samples.append((img, m))
    return SyntheticDataset(samples)
