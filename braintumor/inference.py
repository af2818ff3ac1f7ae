"""From a checkpoint to a ready detector: find checkpoints, pick their config, load once.

Run folders and checkpoints are named as :mod:`braintumor.paths` declares; a run folder's
``config.toml`` holds the settings the run used. ``--weights last`` means the newest checkpoint
of the newest run folder.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.config import Config
from braintumor.errors import BrainTumorError
from braintumor.paths import RUN_DIR_RE, checkpoint_epoch, resolve_preset, run_stamp


def _run_key(run_dir: Path) -> tuple:
    return (run_stamp(run_dir) or "", run_dir.stat().st_mtime)


def find_run_dirs(logs: str | Path = "logs", name: str | None = None) -> list[Path]:
    """Run folders under ``logs`` (optionally of one config NAME), newest first."""
    logs = Path(logs)
    if not logs.is_dir():
        return []
    runs = [d for d in logs.iterdir() if d.is_dir() and run_stamp(d)]
    if name is not None:
        runs = [d for d in runs if RUN_DIR_RE.match(d.name).group("name") == name.lower()]
    return sorted(runs, key=_run_key, reverse=True)


def find_checkpoints(logs: str | Path = "logs") -> list[Path]:
    """Every ``mask_rcnn_*_NNNN.h5`` under ``logs/<run>/``: newest run first, highest epoch first."""
    out: list[Path] = []
    for run in find_run_dirs(logs):
        out += sorted((p for p in run.glob("mask_rcnn_*.h5") if checkpoint_epoch(p) is not None),
                      key=checkpoint_epoch, reverse=True)
    return out


def resolve_weights(weights: str | Path | None, logs: str | Path = "logs") -> Path:
    """None -> the released model (``models/``); ``"last"`` -> the newest checkpoint under ``logs``;
    a path -> itself, checked to exist."""
    if weights is None or str(weights) in ("", "release"):
        from braintumor.release import default_release

        return default_release()
    if str(weights) == "last":
        found = find_checkpoints(logs)
        if not found:
            raise BrainTumorError(
                f"{logs}: no checkpoint found (train one: braintumor train --config mrcnn_config/quick.toml)")
        return found[0]
    p = Path(weights)
    if not p.is_file():
        raise BrainTumorError(f"{p}: checkpoint file not found")
    return p


def config_for_checkpoint(weights_path: Path, config: str | Path | None = None, **overrides: Any) -> Config:
    """The run's ``config.toml`` beside the checkpoint, or ``config`` (a preset) when given."""
    if config is not None:
        return Config.from_toml(resolve_preset(config), **overrides)
    from braintumor.release import is_release, open_release

    if is_release(weights_path):  # a release carries its config (verified with the file)
        return open_release(weights_path).config(**overrides)
    beside = Path(weights_path).parent / "config.toml"
    if not beside.is_file():
        raise BrainTumorError(f"{weights_path}: no config.toml beside the checkpoint; pass --config PRESET")
    return Config.from_toml(beside, **overrides)


class Predictor:
    """A Mask R-CNN inference model built and loaded once, lazily, then reused.

    ``detect(images)`` takes a list of RGB uint8 ``[H, W, 3]`` arrays and returns,
    per image, ``{"rois": int32 [N, (y1, x1, y2, x2)] pixels, "class_ids": int32 [N],
    "scores": float32 [N], "masks": bool [H, W, N], "image_features": float32 [F]}`` for every detection scoring at
    least ``config.DETECTION_MIN_CONFIDENCE`` (the model's floor).
    ``threshold`` is the run's own operating point (its preset's
    ``DETECTION_MIN_CONFIDENCE``), which callers apply for reporting; ``flagged_threshold``
    (``DETECTION_FLAGGED_MIN_CONFIDENCE``, None when 0) the lower one for images the
    ``image_score`` head flags (:mod:`braintumor.detect`).
    """

    def __init__(self, weights_path: Path, config: Config, threshold: float):
        self.weights_path = Path(weights_path)
        self.config = config
        self.threshold = float(threshold)
        self.flagged_threshold = float(config.DETECTION_FLAGGED_MIN_CONFIDENCE) or None
        self.class_names = list(config.CLASS_NAMES)
        self.demo: str | None = None  # why this is a demo model (braintumor.release.demo_reason), or None
        self.image_score = None  # the release's image-level head (braintumor.image_score.ImageScore), or None
        self.region_score = None  # a second opinion on each region (braintumor.region_score.RegionScore), or None
        self.precision = config.PRECISION  # what the model computes in (load_predictor: a release's calibrated choice)
        self.precision_reason = "the config's PRECISION"
        self._model = None
        self._lock = threading.Lock()
        self.load_report = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self):
        """Build the inference model and load the checkpoint (once)."""
        with self._lock:
            if self._model is None:
                from braintumor.mrcnn import MaskRCNN

                from braintumor.release import load_model_weights

                model = MaskRCNN(mode="inference", config=self.model_config(),
                                 model_dir=str(self.weights_path.parent.parent))
                # a release is verified again: the file may have changed since its config was read
                self.load_report = load_model_weights(model, self.weights_path)
                self._model = model
        return self._model

    def model_config(self) -> Config:
        """The config the network is built with: :attr:`config`, but with a ``region_score`` the detection
        layer keeps every region down to its ``detector_floor`` and the floor and the secondary rule apply to
        the combined score instead (:meth:`braintumor.region_score.RegionScore.rescore`)."""
        if self.region_score is None:
            return self.config
        return self.config.replace(
            DETECTION_MIN_CONFIDENCE=min(float(self.config.DETECTION_MIN_CONFIDENCE), self.region_score.detector_floor),
            DETECTION_SECONDARY_MIN_CONFIDENCE=0.0)

    def image_features(self, images: list[np.ndarray]) -> np.ndarray:
        """float32 ``[N, F]``: each image's ``image_features`` as :meth:`detect` gives them, without detecting."""
        return self.load().image_features(images)

    def detect(self, images: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        model = self.load()
        results = [model.detect([img])[0] for img in images]
        if self.region_score is None:
            return results
        c = self.config
        return [self.region_score.rescore(r, img, c, float(c.DETECTION_MIN_CONFIDENCE),
                                          float(c.DETECTION_SECONDARY_MIN_CONFIDENCE)) for r, img in zip(results, images)]


PRECISION_ENV = "BRAINTUMOR_PRECISION"  # auto (default), float32 or mixed_bfloat16: a release's inference precision
PRECISION_CHOICES = ("auto", "float32", "mixed_bfloat16")


def _checked_precision(value: str, source: str = "") -> str:
    if value not in PRECISION_CHOICES:
        raise BrainTumorError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {value!r}{source}")
    return value


def calibrated_here(cal: dict, cpuinfo: str | None = None) -> bool:
    """Whether a bfloat16 calibration was measured on a CPU with this CPU's bfloat16 flags (a card
    that does not record them counts as calibrated here)."""
    from braintumor.mrcnn.precision import cpu_bf16_flags

    flags = (cal.get("measured_on") or {}).get("bf16_flags")
    return flags is None or sorted(flags) == sorted(cpu_bf16_flags(cpuinfo))


def release_precision(card: dict, requested: str | None = None, cpuinfo: str | None = None,
                      where: str = "model card") -> tuple[str, dict | None, str]:
    """Which precision a release computes in here: ``(precision, calibration or None, why)``.

    ``requested`` (else ``$BRAINTUMOR_PRECISION``, else ``auto``): ``float32`` always;
    ``mixed_bfloat16`` needs a CPU with bfloat16 and the card's calibration for it
    (:mod:`braintumor.release.calibration`), else a one-line error; ``auto`` takes
    bfloat16 when both are there, the calibration was accepted and it was measured on a CPU
    with the same bfloat16 flags as this one (``measured_on.bf16_flags``; oneDNN picks its
    kernels by them, AMX or AVX-512, and their scores differ enough to move a verdict),
    float32 otherwise.
    """
    import os

    from braintumor.mrcnn.precision import BF16_FLAGS, cpu_bf16_flags
    from braintumor.release.calibration import calibration

    want = _checked_precision((requested or os.environ.get(PRECISION_ENV) or "auto").strip(),
                              "" if requested else f" (from ${PRECISION_ENV})")
    if want == "float32":
        return "float32", None, "float32 asked for"
    cal = calibration(card, "mixed_bfloat16", where)
    has_bf16 = bool(cpu_bf16_flags(cpuinfo))
    if want == "mixed_bfloat16":
        if not has_bf16:
            raise BrainTumorError(f"mixed_bfloat16 asked for, but this CPU has none of {', '.join(BF16_FLAGS)}")
        if cal is None:
            raise BrainTumorError(f"{where}: no calibration for mixed_bfloat16 (run braintumor calibrate)")
        return "mixed_bfloat16", cal, "mixed_bfloat16 asked for" + ("" if cal["accepted"] else " (calibration NOT accepted)")
    if not has_bf16:
        return "float32", None, "this CPU has no bfloat16"
    if cal is None:
        return "float32", None, "no bfloat16 calibration in the model card"
    if not cal["accepted"]:
        return "float32", None, "the model card's bfloat16 calibration was not accepted"
    if not calibrated_here(cal, cpuinfo):
        return "float32", None, (f"the model card's bfloat16 calibration was measured with "
                                 f"{', '.join(cal['measured_on']['bf16_flags'])}, this CPU has "
                                 f"{', '.join(cpu_bf16_flags(cpuinfo))}")
    return "mixed_bfloat16", cal, "this CPU has bfloat16 and the model card an accepted calibration for it"


def operating_point(weights_path: Path, config: str | Path | None = None) -> float:
    """The threshold ``weights_path`` is read at here: a release's calibrated operating point when it
    computes in bfloat16 on this CPU (:func:`release_precision`), else its config's ``DETECTION_MIN_CONFIDENCE``."""
    cfg = config_for_checkpoint(Path(weights_path), config)
    from braintumor.release import is_release, open_release

    if config is None and is_release(weights_path):
        release = open_release(weights_path)
        _, cal, _ = release_precision(release.card, where=str(release.head))
        if cal is not None:
            return float(cal["operating_point"])
    return float(cfg.DETECTION_MIN_CONFIDENCE)


def load_predictor(weights: str | Path | None, config: str | Path | None = None, logs: str | Path = "logs",
                   min_confidence: float | None = None, precision: str | None = None) -> Predictor:
    """A :class:`Predictor` for ``weights`` (None: the release, ``"last"`` or a path); the model loads on first use.

    ``min_confidence`` sets the model's detection floor (``DETECTION_MIN_CONFIDENCE``)
    so that callers can see scores below the run's operating point, e.g. for curves.
    ``precision``: a release's inference precision (:func:`release_precision`); with bfloat16 its
    calibrated operating point and image-level threshold replace float32's. A checkpoint, or a
    release read with an explicit ``config``, computes as its config says unless ``precision``
    (``float32`` or ``mixed_bfloat16``) overrides ``PRECISION``.
    """
    path = resolve_weights(weights, logs)
    base = config_for_checkpoint(path, config)
    from braintumor.release import demo_reason, is_release, open_release

    release = open_release(path) if is_release(path) else None
    cal, why = None, "the config's PRECISION"
    if release is not None and config is None:
        chosen, cal, why = release_precision(release.card, precision, where=str(release.head))
        if cal is not None:
            base = base.replace(PRECISION=chosen, DETECTION_MIN_CONFIDENCE=float(cal["operating_point"]))
    elif precision not in (None, "auto"):  # a checkpoint (or a release with --config): PRECISION as asked
        base, why = base.replace(PRECISION=_checked_precision(precision)), f"{precision} asked for"
    overrides = {"IMAGES_PER_GPU": 1, "GPU_COUNT": 1}
    if min_confidence is not None:
        overrides["DETECTION_MIN_CONFIDENCE"] = float(min_confidence)
    if 0 < base.DETECTION_FLAGGED_MIN_CONFIDENCE < overrides.get("DETECTION_MIN_CONFIDENCE", base.DETECTION_MIN_CONFIDENCE):
        overrides["DETECTION_MIN_CONFIDENCE"] = float(base.DETECTION_FLAGGED_MIN_CONFIDENCE)  # the floor reaches it
    predictor = Predictor(path, base.replace(**overrides), threshold=base.DETECTION_MIN_CONFIDENCE)
    predictor.precision, predictor.precision_reason = base.PRECISION, why
    predictor.demo = demo_reason(path, base)
    if release is not None:
        head = release.image_score()
        if head is not None and cal is not None:
            from dataclasses import replace

            head = replace(head, threshold=float(cal["image_score_threshold"]))
        predictor.image_score = head
        predictor.region_score = release.region_score()
    return predictor
