"""An image-level "tumor present" score: a logistic head on pooled FPN features, or-ed with a confident detection.

Why: the highest detection score alone flags about half of the held-out tumor-free slices at
val sensitivity 0.95 (README, *Results*). Measured by ``benchmarks/image_score_probe.py``: a
logistic regression on pooled features, fitted with re-windowed copies of the training
images (so that it cannot tell the sources apart by their grey levels), or-ed with a
detection scoring at least ``confident_detection``, flags 14 of 204.

Features, one row per image: ``[N, 1024]`` float32, global average then global max pooling
of ``fpn_p4`` and then of ``fpn_p5`` (256 channels each), in that order: the ``image_features``
of every :meth:`braintumor.mrcnn.MaskRCNN.detect` result.

The rule: an image is flagged when ``max detection score >= confident_detection`` or
``probability(features) >= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from braintumor.errors import BrainTumorError

POOLED_LAYERS = ("fpn_p4", "fpn_p5")  # pooled into the ``image_features`` of every MaskRCNN.detect() result
VERDICTS = ("tumor", "suspected", "uncertain", "no_tumor")
DEFAULT_CONFIDENT_DETECTION = 0.9  # a detection scoring at least this flags the image by itself, unless a head says
# otherwise (``fit-image-score --confident-detection``: the release with a region scorer flags from its combined score)
THRESHOLD_MARGIN_LOGIT = 0.1  # the chosen threshold sits this far (log-odds) below the last val scan it must flag:
# the float16 release moved one head probability by up to 0.004 (0.05 in log-odds at 0.92), enough to unflag a
# scan whose probability was the threshold itself (stage 4, 2026-12-02: a green "no tumor" on a val tumor scan)


def verdict(flagged: bool, outlined: bool) -> str:
    """What an image is called: flagged by the rule or not, with a region outlined or not
    (table in :mod:`braintumor.detect`)."""
    if flagged:
        return "tumor" if outlined else "suspected"
    return "uncertain" if outlined else "no_tumor"


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


@dataclass(frozen=True)
class ImageScore:
    """A fitted head and its two thresholds (see the module docstring)."""

    mean: np.ndarray          # [F] feature means of the fit's training rows
    scale: np.ndarray         # [F] their standard deviations (> 0)
    weights: np.ndarray       # [F] logistic weights on standardised features
    bias: float
    threshold: float = 0.5    # on probability()
    confident_detection: float = DEFAULT_CONFIDENT_DETECTION  # a detection at least this confident flags the image by itself

    def probability(self, features: np.ndarray) -> np.ndarray:
        """``[N]`` in (0, 1): the head's "tumor present" probability for ``features [N, F]``."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != self.weights.shape[0]:
            raise BrainTumorError(f"image score: features must be [N, {self.weights.shape[0]}], got {list(x.shape)}")
        return _sigmoid(((x - self.mean) / self.scale) @ self.weights + self.bias)

    def flags(self, features: np.ndarray, max_detection_scores: np.ndarray) -> np.ndarray:
        """``[N]`` bool: the rule, for features ``[N, F]`` and each image's highest detection score ``[N]``
        (0 for an image without detections)."""
        det = np.asarray(max_detection_scores, np.float64).reshape(-1)
        return (det >= self.confident_detection) | (self.probability(features) >= self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(POOLED_LAYERS), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "weights": self.weights.tolist(), "bias": float(self.bias), "threshold": float(self.threshold),
                "confident_detection": float(self.confident_detection)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageScore":
        try:
            if list(d["features"]) != list(POOLED_LAYERS):
                raise ValueError(f"features {d['features']}, expected {list(POOLED_LAYERS)}")
            arrays = [np.asarray(d[k], np.float64) for k in ("mean", "scale", "weights")]
            if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
                raise ValueError("mean, scale and weights must be vectors of one length")
            if not (arrays[1] > 0).all():
                raise ValueError("scale must be positive")
            return cls(*arrays, bias=float(d["bias"]), threshold=float(d["threshold"]),
                       confident_detection=float(d["confident_detection"]))
        except (KeyError, TypeError, ValueError) as e:
            raise BrainTumorError(f"image score: not a valid head ({e})") from None


def load_image_score(path) -> ImageScore:
    """The head in a JSON file of ``braintumor fit-image-score``; one-line errors naming the file."""
    import json
    from pathlib import Path

    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BrainTumorError(f"{path}: image-score file not found") from None
    except (OSError, ValueError) as e:
        raise BrainTumorError(f"{path}: not an image-score file ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise BrainTumorError(f"{path}: not an image-score file (no JSON object)")
    try:
        return ImageScore.from_dict(doc)
    except BrainTumorError as e:
        raise BrainTumorError(f"{path}: {e}") from None


def fit(features: np.ndarray, labels: np.ndarray, l2: float = 0.01, confident_detection: float = DEFAULT_CONFIDENT_DETECTION,
        sample_weight: np.ndarray | None = None, maxiter: int = 1000) -> ImageScore:
    """L2-regularised logistic regression on standardised ``features [N, F]``, ``labels [N]`` (1 = tumor).

    Both classes weigh the same in the loss, whatever their counts, unless ``sample_weight [N]``
    (>= 0) gives each row its own weight instead; either way the weights are scaled to sum to N,
    so ``l2`` means the same. The threshold is left at 0.5: choose it on val with
    :func:`choose_threshold`.
    """
    from scipy.optimize import minimize

    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.float64).reshape(-1)
    if x.ndim != 2 or len(x) != len(y):
        raise BrainTumorError(f"image score: features [N, F] and labels [N] expected, got {list(x.shape)} and {list(y.shape)}")
    if not (0 < y.mean() < 1):
        raise BrainTumorError("image score: the fit needs images with and without a tumor")
    mean, scale = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / scale
    if sample_weight is None:
        w_row = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    else:
        w_row = np.asarray(sample_weight, np.float64).reshape(-1)
        if len(w_row) != len(y) or np.any(w_row < 0) or not w_row.sum() > 0:
            raise BrainTumorError(f"image score: sample_weight must be [N] = [{len(y)}] non-negative weights, not all 0")
        w_row = w_row * (len(y) / w_row.sum())

    def loss_and_grad(params):
        w, b = params[:-1], params[-1]
        s = z @ w + b
        err = w_row * (_sigmoid(s) - y) / len(y)
        loss = np.sum(w_row * (np.logaddexp(0.0, s) - y * s)) / len(y) + 0.5 * l2 * w @ w
        return loss, np.append(z.T @ err + l2 * w, err.sum())

    res = minimize(loss_and_grad, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": maxiter})
    return ImageScore(mean, scale, res.x[:-1], float(res.x[-1]), confident_detection=confident_detection)


def choose_threshold(head: ImageScore, features: np.ndarray, max_detection_scores: np.ndarray,
                     sensitivity: float = 0.95, outline_threshold: float | None = None,
                     no_green_also: tuple = ()) -> ImageScore:
    """``head`` with the highest ``threshold`` at which the rule flags at least ``sensitivity`` of
    the tumor images given (val scans: ``features [N, F]``, highest detection scores ``[N]``),
    less :data:`THRESHOLD_MARGIN_LOGIT` in log-odds, so that rounding cannot unflag those scans.

    ``outline_threshold`` (the operating point): also low enough that no scan given gets the green
    "no tumor" verdict, i.e. every scan without a detection at the operating point is flagged.
    ``no_green_also``: more tumor scans held to that, as ``(features [M, F], best scores [M])`` pairs
    (e.g. the Figshare val slices); they do not count toward ``sensitivity``.
    """
    det = np.asarray(max_detection_scores, np.float64).reshape(-1)
    p = head.probability(features)
    need = int(np.ceil(sensitivity * len(p) - 1e-9))
    confident = det >= head.confident_detection
    if confident.sum() >= need:
        t = 1.0  # confident detections alone reach the sensitivity; the head may still add flags at 1.0
    else:
        rest = np.sort(p[~confident])[::-1]
        t = float(rest[need - int(confident.sum()) - 1])
    if outline_threshold is not None:
        for f, d in ((features, det), *no_green_also):
            d = np.asarray(d, np.float64).reshape(-1)
            pf = head.probability(f) if f is not features else p
            green = (d < float(outline_threshold)) & (d < head.confident_detection)
            if green.any():
                t = min(t, float(pf[green].min()))
    if t < 1.0:  # a margin below the last scan it must flag: float16 storage or bfloat16 compute must not unflag it
        z = np.log(t / (1.0 - t)) - THRESHOLD_MARGIN_LOGIT
        t = float(_sigmoid(np.asarray(z)))
    from dataclasses import replace

    return replace(head, threshold=t)
