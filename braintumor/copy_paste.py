"""Copy-paste augmentation: a tumor of another training image pasted into a training image.

After the "simple copy-paste" of Ghiasi et al. (2021, *Simple Copy-Paste is a Strong Data Augmentation
Method for Instance Segmentation*), for scans: the donor tumor is scaled by the ratio of the two heads'
sizes, its intensity by the ratio of the two heads' median brightness, and it is placed at a random
point of the receiving head with a feathered edge. The pasted region becomes a new instance; it hides
what it covers of the receiver's own instances (an instance hidden entirely is dropped). Set in a
preset as::

    [COPY_PASTE]
    P = 0.5                           # probability that a receiving sample gets a pasted tumor
    SOURCES = ["figshare_glioma"]     # the training SOURCES whose tumors are pasted (empty: every source)
    RECEIVERS = ["tumor_free"]        # the training SOURCES whose images receive them (empty: every source)

The place is any point of the receiving head (:func:`head_mask`), so on sagittal and coronal slices,
where the head includes face and neck, a tumor may land outside the brain: receivers of axial
slices (the tumor-free set) keep it in the skull. A tumor inside a tumor-free image's anatomy is a
positive the model cannot tell by the image's source.

Coordinates are pixels of the image as loaded (before the resize to the network's size); masks are
``bool [H, W, N]``, images ``uint8 [H, W, 3]``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from braintumor.config import ConfigError
from braintumor.imageio import as_rgb_uint8

KEYS = {"P": "probability that a receiving sample gets a pasted tumor", "SOURCES": "donor training sources",
        "RECEIVERS": "receiving training sources"}
HEAD_LEVEL = 0.1  # a pixel belongs to the head when brighter than this share of the image's 99th percentile
SCALE_LIMITS = (0.5, 2.0)  # the donor's size factor is clipped to this range
GAIN_LIMITS = (0.5, 2.0)  # the donor's brightness factor is clipped to this range
FEATHER_PX = 2.0  # Gaussian sigma of the pasted edge, pixels of the receiving image
MIN_ON_HEAD = 0.9  # share of the pasted tumor that must lie on the receiving head
TRIES = 10  # placements tried before the sample is left as it is


def validate(spec: Any, source_names: list[str] | None = None) -> dict[str, Any]:
    """A ``COPY_PASTE`` table with defaults filled in (``{}``: off); ConfigError naming the key otherwise.
    ``source_names``: the preset's SOURCES names, which SOURCES must be among."""
    if not isinstance(spec, dict):
        raise ConfigError(f"COPY_PASTE must be a table of settings, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise ConfigError(f"COPY_PASTE: unknown setting {unknown[0]!r} (known: {', '.join(KEYS)})")
    if not spec:
        return {}
    p = spec.get("P")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ConfigError(f"COPY_PASTE.P is a probability and must be in [0, 1], got {p!r}")
    out = {"P": float(p)}
    for key in ("SOURCES", "RECEIVERS"):
        names = spec.get(key, [])
        if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
            raise ConfigError(f"COPY_PASTE.{key} must be a list of SOURCES names, got {names!r}")
        missing = [s for s in names if source_names is not None and s not in source_names]
        if missing:
            raise ConfigError(f"COPY_PASTE.{key} names {missing[0]!r}, which is not one of the preset's SOURCES "
                              f"{source_names}")
        out[key] = list(names)
    return out


def head_mask(image: np.ndarray) -> np.ndarray:
    """``bool [H, W]``: the pixels brighter than :data:`HEAD_LEVEL` of the image's 99th percentile
    (the head against the scanner's dark background)."""
    gray = image.mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    top = float(np.percentile(gray, 99))
    return gray > HEAD_LEVEL * top if top > 0 else np.zeros(gray.shape, bool)


def _gaussian(mask: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    k = int(2 * round(3 * sigma) + 1)
    return cv2.GaussianBlur(mask.astype(np.float32), (k, k), sigma)


def paste(image: np.ndarray, masks: np.ndarray, class_ids: np.ndarray, donor_image: np.ndarray,
          donor_mask: np.ndarray, donor_class: int, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``donor_mask``'s tumor (``bool [h, w]`` of ``donor_image``) pasted into ``image``.

    Returns ``(image, masks [H, W, N'], class_ids [N'])`` with the pasted instance last, or None when no
    placement puts :data:`MIN_ON_HEAD` of it on the receiving head within :data:`TRIES` draws.
    """
    import cv2

    head_r, head_d = head_mask(image), head_mask(donor_image)
    if head_r.sum() == 0 or head_d.sum() == 0 or donor_mask.sum() == 0:
        return None
    scale = float(np.clip(np.sqrt(head_r.sum() / head_d.sum()), *SCALE_LIMITS))
    gain = float(np.clip(np.median(image[head_r]) / max(float(np.median(donor_image[head_d])), 1.0), *GAIN_LIMITS))
    ys, xs = np.nonzero(donor_mask)
    pad = int(np.ceil(3 * FEATHER_PX / scale)) + 1
    y1, y2 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, donor_mask.shape[0])
    x1, x2 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, donor_mask.shape[1])
    h, w = max(int(round((y2 - y1) * scale)), 1), max(int(round((x2 - x1) * scale)), 1)
    H, W = image.shape[:2]
    if h >= H or w >= W:
        return None
    patch = cv2.resize(donor_image[y1:y2, x1:x2].astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) * gain
    tumor = cv2.resize(donor_mask[y1:y2, x1:x2].astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    if not tumor.any():
        return None
    soft = _gaussian(tumor, FEATHER_PX)
    alpha = np.where(soft > 0.01, np.clip(soft, 0.0, 1.0), 0.0)
    if not (alpha >= 0.5).any():  # a tumor of a few pixels blurs away: nothing to outline
        return None
    on_head = np.argwhere(head_r)
    for _ in range(TRIES):
        cy, cx = on_head[rng.integers(len(on_head))]
        top, left = int(cy) - h // 2, int(cx) - w // 2
        if top < 0 or left < 0 or top + h > H or left + w > W:
            continue
        if head_r[top:top + h, left:left + w][tumor].mean() < MIN_ON_HEAD:
            continue
        out = image.astype(np.float32)
        region = out[top:top + h, left:left + w]
        a = alpha[:, :, None]
        out[top:top + h, left:left + w] = a * patch + (1.0 - a) * region
        new = np.zeros((H, W), bool)
        new[top:top + h, left:left + w] = alpha >= 0.5
        kept = masks & ~new[:, :, None]
        keep = kept.any(axis=(0, 1))
        return (np.clip(np.rint(out), 0, 255).astype(np.uint8),
                np.concatenate([kept[:, :, keep], new[:, :, None]], axis=2),
                np.concatenate([np.asarray(class_ids, np.int32)[keep], [np.int32(donor_class)]]).astype(np.int32))
    return None


class CopyPaste:
    """Callable ``(image, masks, class_ids, rng, image_info) -> (image, masks, class_ids)``: the signature
    of :class:`braintumor.augment.Augmenter` and ``image_info``, the dataset's record of the image. An
    image of one of ``receivers`` (``image_info["source"]``, a :func:`braintumor.train.combine_sources`
    tag; every image when empty) gets, with probability ``p``,
    one tumor of a donor image of ``dataset`` (an image of one of ``sources``; every annotated image
    when empty) pasted in (:func:`paste`); then ``then`` (an augmenter) runs.

    ``rng``: a :class:`numpy.random.Generator` or an int seed; the same seed gives the same result.
    ``takes_image_info`` tells :func:`braintumor.mrcnn.inputs.load_image_gt` to pass ``image_info``.
    Copies share the dataset (each input thread gets one: the callable holds no random state).
    """

    takes_image_info = True

    def __init__(self, dataset, p: float, sources: list[str] | tuple[str, ...] = (),
                 receivers: list[str] | tuple[str, ...] = (), then: Callable | None = None):
        self.dataset, self.p, self.then, self.receivers = dataset, float(p), then, tuple(receivers)
        self.donors = [i for i, info in enumerate(dataset.image_info)
                       if info.get("shapes") and (not sources or info.get("source") in sources)]
        if self.p > 0 and not self.donors:
            raise ConfigError(f"COPY_PASTE: no annotated image among the sources {list(sources) or 'of the run'}")
        self.pasted = 0

    def __deepcopy__(self, memo):
        import copy

        twin = copy.copy(self)
        twin.then = copy.deepcopy(self.then, memo)
        return twin

    def __call__(self, image: np.ndarray, masks: np.ndarray, class_ids: np.ndarray,
                 rng: np.random.Generator | int | None = None, image_info: dict | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        receives = not self.receivers or (image_info or {}).get("source") in self.receivers
        if receives and self.p > 0 and gen.random() < self.p:
            donor = self.donors[int(gen.integers(len(self.donors)))]
            d_masks, d_ids = self.dataset.load_mask(donor)
            k = int(gen.integers(len(d_ids)))
            done = paste(as_rgb_uint8(image), np.asarray(masks, bool), class_ids,
                         as_rgb_uint8(self.dataset.load_image(donor)), d_masks[:, :, k], int(d_ids[k]), gen)
            if done is not None:
                image, masks, class_ids = done
                self.pasted += 1
        if self.then is not None:
            if getattr(self.then, "takes_image_info", False):
                return self.then(image, masks, class_ids, rng=gen, image_info=image_info)
            return self.then(image, masks, class_ids, rng=gen)
        return image, masks, np.asarray(class_ids, np.int32)

    def __repr__(self) -> str:
        return (f"CopyPaste(p={self.p}, {len(self.donors)} donor images, receivers {list(self.receivers) or 'all'}, "
                f"then={self.then!r})")


def build_copy_paste(spec: dict[str, Any], dataset, augmenter: Callable | None) -> Callable | None:
    """The run's augmentation: ``augmenter`` after a :class:`CopyPaste` when ``spec`` (a ``COPY_PASTE``
    table) is set with P > 0, else ``augmenter`` itself."""
    spec = validate(spec, getattr(dataset, "source_names", None))
    if not spec or spec["P"] == 0:
        return augmenter
    return CopyPaste(dataset, spec["P"], spec["SOURCES"], spec["RECEIVERS"], then=augmenter)
