"""Training-time augmentation of an image and its instance masks together (albumentations).

Built from the ``[AUGMENTATION]`` table of a preset::

    [AUGMENTATION]
    HORIZONTAL_FLIP = 0.5        # probability of a left-right flip
    VERTICAL_FLIP = 0.0          # probability of an up-down flip
    AFFINE = 0.5                 # probability of one affine transform made of:
    ROTATE = 10                  #   rotation, uniform in [-10, 10] degrees
    SCALE = [0.9, 1.1]           #   zoom factor, uniform in [0.9, 1.1]
    TRANSLATE = 0.05             #   shift, uniform in [-5 %, 5 %] of width / height
    BRIGHTNESS_CONTRAST = 0.5    # probability of a brightness/contrast change of at most:
    BRIGHTNESS = 0.15            #   +-15 % of the maximum value
    CONTRAST = 0.15              #   +-15 % contrast
    GAMMA = 0.0                  # probability of a gamma change in [0.8, 1.2]
    GAUSS_NOISE = 0.0            # probability of Gaussian noise (std 1-4 % of 255)
    BLUR = 0.0                   # probability of a 3-5 pixel box blur
    DOWNSCALE = 0.0              # probability of losing resolution: down to 40-90 % and back up

Transforms run in that order. Geometry moves image and masks identically (masks
with nearest-neighbour interpolation, new pixels black / background); intensity
changes touch only the image. Instances whose mask leaves the image are dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from braintumor.config import ConfigError

# key -> (kind, default); kind: "p" probability, "deg" non-negative degrees, "range" [lo, hi] of positive
# numbers, "frac" fraction in [0, 1]
_KEYS: dict[str, tuple[str, Any]] = {
    "HORIZONTAL_FLIP": ("p", 0.0),
    "VERTICAL_FLIP": ("p", 0.0),
    "AFFINE": ("p", 0.0),
    "ROTATE": ("deg", 0.0),
    "SCALE": ("range", [1.0, 1.0]),
    "TRANSLATE": ("frac", 0.0),
    "BRIGHTNESS_CONTRAST": ("p", 0.0),
    "BRIGHTNESS": ("frac", 0.2),
    "CONTRAST": ("frac", 0.2),
    "GAMMA": ("p", 0.0),
    "GAUSS_NOISE": ("p", 0.0),
    "BLUR": ("p", 0.0),
    "DOWNSCALE": ("p", 0.0),
}
_AFFINE_PARTS = ("ROTATE", "SCALE", "TRANSLATE")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _validate(spec: dict[str, Any]) -> dict[str, Any]:
    """Check every key and value; returns the spec with defaults filled in."""
    if not isinstance(spec, dict):
        raise ConfigError(f"AUGMENTATION must be a table of settings, got {type(spec).__name__}")
    for key, value in spec.items():
        if key not in _KEYS:
            raise ConfigError(f"AUGMENTATION: unknown setting {key!r} (known: {', '.join(_KEYS)})")
        kind = _KEYS[key][0]
        name = f"AUGMENTATION.{key}"
        if kind == "p" and not (_number(value) and 0 <= value <= 1):
            raise ConfigError(f"{name} is a probability and must be in [0, 1], got {value!r}")
        if kind == "frac" and not (_number(value) and 0 <= value <= 1):
            raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
        if kind == "deg" and not (_number(value) and 0 <= value <= 180):
            raise ConfigError(f"{name} must be degrees in [0, 180], got {value!r}")
        if kind == "range" and not (isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_number, value))
                                    and 0 < value[0] <= value[1]):
            raise ConfigError(f"{name} must be [low, high] with 0 < low <= high, got {value!r}")
    if "AFFINE" not in spec and any(k in spec for k in _AFFINE_PARTS):
        part = next(k for k in _AFFINE_PARTS if k in spec)
        raise ConfigError(f"AUGMENTATION.{part} needs AFFINE (the probability of the affine transform)")
    full = {k: default for k, (_, default) in _KEYS.items()}
    full.update(spec)
    return full


class Augmenter:
    """Callable applying one random draw of the transforms to an image and its masks.

    ``augmenter(image, masks, class_ids, rng=None) -> (image, masks, class_ids)``:

    - ``image``: ``uint8 [H, W, 3]``; ``masks``: ``bool [H, W, N]``; ``class_ids``: ``int [N]``
    - returns the same shapes (H and W unchanged), ``masks`` bool, ``class_ids`` int32,
      without the instances whose mask became empty (``N`` may shrink)
    - ``rng``: None (the augmenter's own generator, seeded by ``seed``), an ``int``
      seed, or a :class:`numpy.random.Generator` (one integer is drawn from it);
      the same seed gives the same result.
    """

    def __init__(self, spec: dict[str, Any], seed: int | None = None):
        import albumentations as A
        import cv2

        self.spec = dict(spec)
        s = _validate(spec)
        transforms = []
        if s["HORIZONTAL_FLIP"] > 0:
            transforms.append(A.HorizontalFlip(p=s["HORIZONTAL_FLIP"]))
        if s["VERTICAL_FLIP"] > 0:
            transforms.append(A.VerticalFlip(p=s["VERTICAL_FLIP"]))
        if s["AFFINE"] > 0:
            t = float(s["TRANSLATE"])
            transforms.append(A.Affine(scale=tuple(float(v) for v in s["SCALE"]), translate_percent=(-t, t),
                                       rotate=(-float(s["ROTATE"]), float(s["ROTATE"])),
                                       interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                                       border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=s["AFFINE"]))
        if s["BRIGHTNESS_CONTRAST"] > 0:
            transforms.append(A.RandomBrightnessContrast(brightness_limit=float(s["BRIGHTNESS"]),
                                                         contrast_limit=float(s["CONTRAST"]), p=s["BRIGHTNESS_CONTRAST"]))
        if s["GAMMA"] > 0:
            transforms.append(A.RandomGamma(gamma_limit=(80, 120), p=s["GAMMA"]))
        if s["GAUSS_NOISE"] > 0:
            transforms.append(A.GaussNoise(std_range=(0.01, 0.04), p=s["GAUSS_NOISE"]))
        if s["BLUR"] > 0:
            transforms.append(A.Blur(blur_limit=(3, 5), p=s["BLUR"]))
        if s["DOWNSCALE"] > 0:
            transforms.append(A.Downscale(scale_range=(0.4, 0.9), p=s["DOWNSCALE"]))
        self.transforms = transforms
        self._compose = A.Compose(transforms, p=1.0, seed=seed)
        self._rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray, masks: np.ndarray, class_ids: np.ndarray,
                 rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image = np.ascontiguousarray(image)
        masks = np.asarray(masks, dtype=bool)
        class_ids = np.asarray(class_ids, dtype=np.int32).reshape(-1)
        if image.ndim != 3 or masks.ndim != 3 or masks.shape[:2] != image.shape[:2] or masks.shape[2] != len(class_ids):
            raise ValueError(f"need image [H, W, 3], masks [H, W, N] and class_ids [N]; got {image.shape}, "
                             f"{masks.shape}, {class_ids.shape}")
        gen = self._rng if rng is None else rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self._compose.set_random_seed(int(gen.integers(0, 2**31 - 1)))
        n = masks.shape[2]
        if n == 0:
            out = self._compose(image=image)
            return out["image"], np.zeros(out["image"].shape[:2] + (0,), dtype=bool), class_ids
        out = self._compose(image=image, masks=[masks[:, :, k].astype(np.uint8) for k in range(n)])
        new_masks = np.stack([np.asarray(m) > 0 for m in out["masks"]], axis=-1)
        keep = new_masks.any(axis=(0, 1))
        return out["image"], new_masks[:, :, keep], class_ids[keep]

    def __repr__(self) -> str:
        return f"Augmenter({', '.join(type(t).__name__ for t in self.transforms)})"


def build_augmentation(spec: dict[str, Any] | None, seed: int | None = None) -> Augmenter | None:
    """An :class:`Augmenter` from an ``AUGMENTATION`` table, or None when it is empty.

    Raises :class:`~braintumor.config.ConfigError` naming the key for an unknown
    setting or an impossible value.
    """
    if spec is None:
        return None
    _validate(spec)
    if not spec:
        return None
    return Augmenter(spec, seed=seed)
