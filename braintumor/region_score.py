"""A second opinion on each detected region: a small CNN scores the pixels around the region's box.

Why: the release's class head scores most Figshare gliomas low, whatever linear readout of its
ROI features is fitted (``benchmarks/class_logit_probe.py``), while a small CNN of its own on the
grey pixels around each region tells tumor from elsewhere far better
(``benchmarks/crop_rescore_probe.py``: Figshare val Dice 0.512 -> 0.636 after the detection layer).

What it reads, per region: a square crop of the **molded** image (as the Mask R-CNN reads it,
``(pixel - MEAN_PIXEL)``, the channels' mean), centred on the region's box, ``context`` times the
box's longer side, resized to ``size`` x ``size`` pixels (several contexts, e.g. ``(1.5, 3.0)``: one such
crop each, as channels); and its geometry ``[cy, cx, log h, log w]`` of the box, normalized to the molded
frame. Output: P(tumor) ``[K]`` in (0, 1).

How it is used (:meth:`RegionScore.rescore`): the detection layer runs down to ``detector_floor``
(every region it keeps, up to ``DETECTION_MAX_INSTANCES``); each region's score becomes
``detector ** (1 - weight) * region ** weight``; regions below the caller's floor go, and the
best region plus others scoring at least ``DETECTION_SECONDARY_MIN_CONFIDENCE`` stay
(:func:`braintumor.mrcnn.inputs.keep_best_and_strong`).

File: HDF5, attributes ``braintumor_region_score`` (format version: 1 for one context, 2 for several),
``size``, ``context`` (a number, or an array of them),
``widths``, ``weight``, ``detector_floor``; datasets ``weights/NNN`` (the Keras model's weights
in order, float32) and ``fit.json`` (how it was fitted). Fitted by ``braintumor fit-region-score``
(:mod:`braintumor.fit_region_score`).

Several scorers read as one (:class:`RegionScoreSet`; ``--region-score`` given more than once): each reads
its own crops, and a region's probability is the geometric mean of theirs (:func:`mean_probability`), then
combined with the detector's score as one scorer's. In a file (or a release's head): attributes
``braintumor_region_score_set`` (format 1), ``weight``, ``detector_floor``; one group per member,
``member_000``, ``member_001``, ... (each written as a scorer of its own).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.errors import BrainTumorError

FORMAT_VERSION = 2  # 2: crops of several contexts (files of one context are still written as 1)
SIZE = 64          # crop side, pixels
CONTEXT = 1.5      # crop side / the box's longer side
WIDTHS = (16, 32, 64, 128)  # channels of the four conv blocks
WEIGHT = 0.5       # combined = detector ** (1 - WEIGHT) * region ** WEIGHT: the geometric mean
DETECTOR_FLOOR = 0.05  # the detection layer's floor when regions are re-scored
POSITIVE_IOU, NEGATIVE_IOU = 0.5, 0.3  # training labels: a region's box IoU with a tumor's box
SET_FORMAT_VERSION = 1  # a set of scorers (RegionScoreSet)
PROBABILITY_FLOOR = 1e-12  # the geometric mean's floor: a member's 0 does not make log(0)


def to_molded_frame(rois: np.ndarray, info) -> np.ndarray:
    """Boxes ``[K, (y1, x1, y2, x2)]`` in pixels of the original image -> normalized to the molded frame of
    ``info`` (:class:`braintumor.mrcnn.inputs.ResizeInfo`), the inverse of ``unmold_detections``'s mapping."""
    boxes = np.asarray(rois, np.float64).reshape(-1, 4)
    oy, ox = (info.crop[0], info.crop[1]) if info.crop is not None else (0, 0)
    wy, wx = info.window[0], info.window[1]
    mh, mw = info.molded_shape[:2]
    boxes = boxes * info.scale - np.array([oy, ox, oy, ox]) + np.array([wy, wx, wy, wx])
    return (boxes / np.array([mh, mw, mh, mw])).astype(np.float32)


def from_molded_frame(boxes: np.ndarray, info) -> np.ndarray:
    """``[K, (y1, x1, y2, x2)]`` normalized to the molded frame of ``info`` -> normalized to the original image: the
    inverse of :func:`to_molded_frame` (no rounding or clipping: a crop's square may reach outside [0, 1])."""
    mh, mw = info.molded_shape[:2]
    oy, ox = (info.crop[0], info.crop[1]) if info.crop is not None else (0, 0)
    wy, wx = info.window[0], info.window[1]
    px = np.asarray(boxes, np.float64).reshape(-1, 4) * np.array([mh, mw, mh, mw])
    px = (px - np.array([wy, wx, wy, wx]) + np.array([oy, ox, oy, ox])) / info.scale
    h, w = info.original_shape[:2]
    return (px / np.array([h, w, h, w])).astype(np.float32)


def region_crops(molded: np.ndarray, boxes: np.ndarray, size: int = SIZE, context=CONTEXT
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``molded [1, h, w, C]`` float32 (``mold_inputs``), ``boxes [K, (y1, x1, y2, x2)]`` normalized ->
    ``(crops float32 [K, size, size, len(contexts)], geometry float32 [K, (cy, cx, log h, log w)])``: per
    context (a number or a sequence of them; one channel each) the channels' mean in a square ``context`` times
    the box's longer side (in pixels), centred on the box; outside the image is 0."""
    import tensorflow as tf

    contexts = contexts_of(context)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    h, w = molded.shape[1:3]
    cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    bh = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-3)
    bw = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-3)
    geometry = np.stack([cy, cx, np.log(bh), np.log(bw)], 1).astype(np.float32)
    if not len(boxes):
        return np.zeros((0, size, size, len(contexts)), np.float32), geometry.reshape(0, 4)
    grey = np.asarray(molded, np.float32).mean(-1, keepdims=True)
    channels = []
    for c in contexts:
        square = crop_squares(boxes, h, w, c)
        channels.append(tf.image.crop_and_resize(grey, square, np.zeros(len(square), np.int32),
                                                 (size, size), extrapolation_value=0.0).numpy())
    return np.concatenate(channels, -1), geometry


def crop_squares(boxes: np.ndarray, h: int, w: int, context: float) -> np.ndarray:
    """The crop of each box: ``boxes [K, (y1, x1, y2, x2)]`` normalized to an ``h`` x ``w`` pixel frame ->
    ``[K, (y1, x1, y2, x2)]`` float32 normalized, a square of ``context`` times the box's longer side (in pixels)
    centred on the box (it may reach outside the frame)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    bh = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-3)
    bw = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-3)
    side = np.maximum(bh * h, bw * w) * float(context)  # pixels
    return np.stack([cy - side / h / 2, cx - side / w / 2, cy + side / h / 2, cx + side / w / 2], 1).astype(np.float32)


def contexts_of(context) -> tuple[float, ...]:
    """A crop context (a number, or a sequence of them) -> a non-empty tuple of positive floats."""
    values = tuple(float(c) for c in np.atleast_1d(np.asarray(context, np.float64)).reshape(-1))
    if not values or min(values) <= 0:
        raise BrainTumorError(f"region score: context must be one or more positive numbers, got {context!r}")
    return values


def build_scorer(size: int = SIZE, widths=WIDTHS, channels: int = 1):
    """The CNN: crops ``[size, size, channels]`` (one channel per context) and geometry ``[4]`` -> P(tumor) ``[1]``;
    float32 whatever the global dtype policy (it is small, and its threshold-free combination must not move with
    the detector's precision).

    Four blocks of two 3x3 conv + BatchNorm + ReLU (``widths`` channels), 2x max pooling between blocks and
    global average pooling after the last; the geometry through Dense(16); Dense(64), dropout 0.3, sigmoid."""
    import keras
    from keras import layers

    from braintumor.mrcnn.precision import float32_scope

    with float32_scope():
        crop, geom = keras.Input((size, size, int(channels)), name="crop"), keras.Input((4,), name="geometry")
        x = crop
        for k, c in enumerate(widths):
            for j in range(2):
                x = layers.Conv2D(c, 3, padding="same", use_bias=False, name=f"block{k + 1}_conv{j + 1}")(x)
                x = layers.BatchNormalization(name=f"block{k + 1}_bn{j + 1}")(x)
                x = layers.ReLU()(x)
            x = layers.MaxPooling2D()(x) if k < len(widths) - 1 else layers.GlobalAveragePooling2D()(x)
        g = layers.Dense(16, activation="relu", name="geometry_fc")(geom)
        x = layers.Concatenate()([x, g])
        x = layers.Dropout(0.3)(layers.Dense(64, activation="relu", name="fc")(x))
        out = layers.Dense(1, activation="sigmoid", name="tumor")(x)
        return keras.Model([crop, geom], out, name="region_score")


def mean_probability(probabilities: list) -> np.ndarray:
    """``[K]`` float32: the geometric mean, region by region, of several scorers' P(tumor) (each ``[K]``);
    one scorer's are returned as they are."""
    if len(probabilities) == 1:
        return np.asarray(probabilities[0], np.float32)
    logs = [np.log(np.maximum(np.asarray(p, np.float64), PROBABILITY_FLOOR)) for p in probabilities]
    return np.exp(np.mean(logs, axis=0)).astype(np.float32)


class _Rescoring:
    """How a region's P(tumor) (``score_regions``) joins the detector's score: shared by one scorer and a set."""

    weight: float
    detector_floor: float

    def score_regions(self, result: dict, molded: np.ndarray, info) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def combine(self, detector: np.ndarray, region: np.ndarray) -> np.ndarray:
        """``detector ** (1 - weight) * region ** weight``, elementwise, float32."""
        a = float(self.weight)
        d = np.clip(np.asarray(detector, np.float64), 0.0, 1.0)
        r = np.clip(np.asarray(region, np.float64), 0.0, 1.0)
        return (d ** (1.0 - a) * r ** a).astype(np.float32)

    def rescore(self, result: dict, image: np.ndarray, config, floor: float, secondary: float = 0.0) -> dict:
        """``result`` of ``MaskRCNN.detect`` for ``image`` (regions down to :attr:`detector_floor`) with ``scores``
        replaced by the combined score, regions below ``floor`` dropped, then the best plus those >= ``secondary``
        kept; adds ``detector_scores`` and ``region_scores`` ``[N]`` float32 of the regions kept, and the order
        is by combined score, highest first."""
        from braintumor.mrcnn.inputs import mold_inputs

        det = np.asarray(result["scores"], np.float32)
        if len(det):
            molded, _, infos = mold_inputs([image], config)
            region = self.score_regions(result, molded, infos[0])
        else:
            region = np.zeros(0, np.float32)
        combined = self.combine(det, region)
        order = kept_order(combined, floor, secondary)
        return {**result, "rois": np.asarray(result["rois"])[order], "class_ids": np.asarray(result["class_ids"])[order],
                "scores": combined[order], "masks": np.asarray(result["masks"])[:, :, order],
                "detector_scores": det[order], "region_scores": region[order]}

    def with_settings(self, weight: float | None = None, detector_floor: float | None = None):
        """A copy with ``weight`` and/or ``detector_floor`` changed (checked as at construction); the scorer
        models, and a scorer's compiled call, are shared."""
        changes = {k: float(v) for k, v in (("weight", weight), ("detector_floor", detector_floor)) if v is not None}
        return replace(self, **changes)

    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` atomically (a temporary file, then renamed)."""
        import h5py

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with h5py.File(tmp, "w") as f:
                self.to_h5(f)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def to_h5(self, group) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class RegionScore(_Rescoring):
    """A fitted region scorer (module docstring) and how its score combines with the detector's."""

    model: Any                       # keras.Model of build_scorer(size, widths, len(contexts))
    size: int = SIZE
    context: Any = CONTEXT           # a number, or a tuple of them: one crop channel each
    widths: tuple = WIDTHS
    weight: float = WEIGHT
    detector_floor: float = DETECTOR_FLOOR
    fit: dict = field(default_factory=dict)
    _fn: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.weight) <= 1.0:
            raise BrainTumorError(f"region score: weight must be in [0, 1], got {self.weight}")
        if not 0.0 < float(self.detector_floor) < 1.0:
            raise BrainTumorError(f"region score: detector_floor must be in (0, 1), got {self.detector_floor}")
        contexts = contexts_of(self.context)
        self.context = contexts[0] if len(contexts) == 1 else contexts

    @property
    def contexts(self) -> tuple[float, ...]:
        return contexts_of(self.context)

    def probability(self, crops: np.ndarray, geometry: np.ndarray) -> np.ndarray:
        """``[K]`` float32 P(tumor) of ``crops [K, size, size, len(contexts)]`` and ``geometry [K, 4]``
        (:func:`region_crops`)."""
        if not len(crops):
            return np.zeros(0, np.float32)
        if self._fn is None:
            import tensorflow as tf

            model = self.model
            spec = [tf.TensorSpec((None, self.size, self.size, len(self.contexts)), tf.float32), tf.TensorSpec((None, 4), tf.float32)]
            self._fn = tf.function(lambda c, g: model([c, g], training=False), input_signature=spec)
        return np.asarray(self._fn(np.asarray(crops, np.float32), np.asarray(geometry, np.float32)))[:, 0]

    def score_regions(self, result: dict, molded: np.ndarray, info) -> np.ndarray:
        """``[N]`` P(tumor) of each region of ``result`` (``detect()``'s dict, ``rois`` in original pixels) of the
        image molded as ``molded [1, h, w, 3]`` with ``info``."""
        crops, geometry = region_crops(molded, to_molded_frame(result["rois"], info), self.size, self.context)
        return self.probability(crops, geometry)

    def card_entry(self) -> dict[str, Any]:
        """What a release's card says of this scorer (:func:`braintumor.release.card.build_card`)."""
        return {"weight": self.weight, "detector_floor": self.detector_floor, "crop_px": self.size,
                "context": self.context,  # a number, or a tuple (JSON list)
                "widths": list(self.widths), "parameters": int(self.model.count_params()), "fit": self.fit}

    # ------------------------------------------------------------------ files
    def to_h5(self, group) -> None:
        """Write into an open h5py group (a file of its own, or a release's head)."""
        contexts = self.contexts
        group.attrs["braintumor_region_score"] = 1 if len(contexts) == 1 else FORMAT_VERSION  # 1: one context
        group.attrs["size"] = int(self.size)
        group.attrs["context"] = contexts[0] if len(contexts) == 1 else np.asarray(contexts, np.float64)
        group.attrs["widths"] = np.asarray(self.widths, np.int64)
        group.attrs["weight"], group.attrs["detector_floor"] = float(self.weight), float(self.detector_floor)
        w = group.create_group("weights")
        for i, v in enumerate(self.model.get_weights()):
            w.create_dataset(f"{i:03d}", data=np.asarray(v, np.float32))
        group.create_dataset("fit.json", data=np.frombuffer(json.dumps(self.fit).encode("utf-8"), np.uint8))


@dataclass
class RegionScoreSet(_Rescoring):
    """Several fitted scorers read as one (module docstring): each member reads its own crops; a region's P(tumor)
    is the geometric mean of the members' (:func:`mean_probability`). ``weight`` and ``detector_floor`` are the
    set's (by default the first member's); the members' own are not used."""

    members: tuple
    weight: float | None = None
    detector_floor: float | None = None

    def __post_init__(self) -> None:
        self.members = tuple(self.members)
        if len(self.members) < 2 or not all(isinstance(m, RegionScore) for m in self.members):
            raise BrainTumorError(f"region score set: needs two or more scorers, got {len(self.members)}")
        self.weight = float(self.members[0].weight if self.weight is None else self.weight)
        self.detector_floor = float(self.members[0].detector_floor if self.detector_floor is None else self.detector_floor)
        if not 0.0 <= self.weight <= 1.0:
            raise BrainTumorError(f"region score set: weight must be in [0, 1], got {self.weight}")
        if not 0.0 < self.detector_floor < 1.0:
            raise BrainTumorError(f"region score set: detector_floor must be in (0, 1), got {self.detector_floor}")

    @property
    def fit(self) -> dict[str, Any]:
        return {"members": [m.fit for m in self.members]}

    def score_regions(self, result: dict, molded: np.ndarray, info) -> np.ndarray:
        """``[N]``: the geometric mean of the members' :meth:`RegionScore.score_regions`."""
        return mean_probability([m.score_regions(result, molded, info) for m in self.members])

    def card_entry(self) -> dict[str, Any]:
        members = []
        for m in self.members:
            e = m.card_entry()
            del e["weight"], e["detector_floor"]  # the set's count
            members.append(e)
        return {"weight": self.weight, "detector_floor": self.detector_floor, "members": members,
                "parameters": sum(e["parameters"] for e in members)}

    def to_h5(self, group) -> None:
        """Write into an open h5py group: the set's attributes, one group per member."""
        group.attrs["braintumor_region_score_set"] = SET_FORMAT_VERSION
        group.attrs["weight"], group.attrs["detector_floor"] = float(self.weight), float(self.detector_floor)
        for i, m in enumerate(self.members):
            m.to_h5(group.create_group(f"member_{i:03d}"))


def kept_order(scores: np.ndarray, floor: float, secondary: float = 0.0) -> np.ndarray:
    """Indices of the regions :meth:`RegionScore.rescore` keeps, highest ``scores [N]`` first: those at least
    ``floor``, and of them the best plus the others at least ``secondary`` (as ``keep_best_and_strong``)."""
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= float(floor)]
    if float(secondary) > 0 and len(order) > 1:
        keep = scores[order] >= float(secondary)
        keep[0] = True
        order = order[keep]
    return order


def scorer_paths(path) -> list:
    """``--region-score``'s value as a list of files: None, one path, or a list of them (the option repeated)."""
    return [path] if isinstance(path, (str, os.PathLike)) else list(path or [])


def chosen(path=None, weight: float | None = None, fallback=None):
    """The scorer of ``--region-score path`` (else ``fallback``, e.g. a release's own) with ``--region-weight``
    applied; None without either. ``path``: one file, or a list of them (``--region-score`` repeated: one
    file is that scorer, several a :class:`RegionScoreSet` with the first one's weight and floor). A weight
    without a scorer is a one-line error."""
    paths = scorer_paths(path)
    if len(paths) > 1:
        scorer = RegionScoreSet(tuple(load_region_score(p) for p in paths))
    else:
        scorer = load_region_score(paths[0]) if paths else fallback
    if weight is not None:
        if scorer is None:
            raise BrainTumorError("--region-weight needs a region scorer (--region-score, or a release with one)")
        scorer = scorer.with_settings(weight=weight)
    return scorer


def command_options(path=None, weight: float | None = None) -> str:
    """`` --region-score PATH [--region-score PATH2 ...] [--region-weight W]`` for a recorded command ('' without
    a scorer file); ``path`` one file or a list, as :func:`chosen` takes it."""
    paths = scorer_paths(path)
    if not paths:
        return ""
    return "".join(f" --region-score {p}" for p in paths) + (f" --region-weight {weight:g}" if weight is not None else "")


def from_h5(group, where: str) -> "RegionScore | RegionScoreSet":
    """A :class:`RegionScore` (or :class:`RegionScoreSet`) from an h5py group written by its ``to_h5``; one-line
    errors naming ``where``."""
    if "braintumor_region_score_set" in group.attrs:
        try:
            version = int(group.attrs["braintumor_region_score_set"])
            if version > SET_FORMAT_VERSION:
                raise ValueError(f"set format {version} is newer than this code reads ({SET_FORMAT_VERSION})")
            names = sorted(k for k in group if k.startswith("member_"))
            weight, floor = float(group.attrs["weight"]), float(group.attrs["detector_floor"])
        except (KeyError, TypeError, ValueError, OSError) as e:
            raise BrainTumorError(f"{where}: not a region-score set ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        members = [from_h5(group[k], f"{where}/{k}") for k in names]
        try:
            return RegionScoreSet(tuple(members), weight=weight, detector_floor=floor)
        except BrainTumorError as e:
            raise BrainTumorError(f"{where}: {e}") from None
    try:
        version = int(group.attrs["braintumor_region_score"])
        if version > FORMAT_VERSION:
            raise ValueError(f"format {version} is newer than this code reads ({FORMAT_VERSION})")
        size, widths = int(group.attrs["size"]), tuple(int(c) for c in group.attrs["widths"])
        contexts = contexts_of(group.attrs["context"])
        weights = [np.asarray(group["weights"][k][()], np.float32) for k in sorted(group["weights"])]
        fit = json.loads(bytes(np.asarray(group["fit.json"][()], np.uint8)).decode("utf-8"))
        model = build_scorer(size, widths, len(contexts))
        shapes = [tuple(v.shape) for v in model.get_weights()]
        if shapes != [w.shape for w in weights]:
            raise ValueError(f"{len(weights)} weight tensors do not fit a scorer of size {size}, widths {list(widths)}, "
                             f"{len(contexts)} context(s)")
        model.set_weights(weights)
        return RegionScore(model, size=size, context=contexts, widths=widths,
                           weight=float(group.attrs["weight"]), detector_floor=float(group.attrs["detector_floor"]),
                           fit=fit)
    except BrainTumorError as e:
        raise BrainTumorError(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise BrainTumorError(f"{where}: not a region-score model ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def load_region_score(path: str | os.PathLike) -> "RegionScore | RegionScoreSet":
    """The scorer (or set of them) in a file of ``braintumor fit-region-score`` or :meth:`RegionScoreSet.save`;
    one-line errors naming the file."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise BrainTumorError(f"{path}: region-score file not found")
    try:
        with h5py.File(path, "r") as f:
            return from_h5(f, str(path))
    except OSError as e:
        raise BrainTumorError(f"{path}: not a region-score file ({str(e).splitlines()[0]})") from None


def training_labels(iou: np.ndarray) -> np.ndarray:
    """``[K]`` float32: 1 for a region whose box has IoU >= :data:`POSITIVE_IOU` with a tumor's box, 0 below
    :data:`NEGATIVE_IOU`, NaN between (left out of the fit)."""
    iou = np.asarray(iou, np.float64)
    return np.where(iou >= POSITIVE_IOU, 1.0, np.where(iou < NEGATIVE_IOU, 0.0, np.nan)).astype(np.float32)


def fit_scorer(crops: np.ndarray, geometry: np.ndarray, labels: np.ndarray, epochs: int = 8, seed: int = 0,
               batch: int = 128, learning_rate: float = 1e-3, size: int = SIZE, widths=WIDTHS, verbose: int = 2):
    """A :func:`build_scorer` model fitted on ``crops [K, size, size(, C)]``, ``geometry [K, 4]``, ``labels [K]``
    (1 / 0; NaN rows are left out). Positives and negatives weigh the same in all; left-right flips (the crop
    and ``cx``); Adam with a cosine decay over ``epochs``; no val in the loop."""
    import keras
    import tensorflow as tf

    y = np.asarray(labels, np.float32).reshape(-1)
    use = np.isfinite(y)
    y = y[use]
    if not len(y) or y.min() == y.max():
        raise BrainTumorError("region score: the fit needs regions on a tumor and regions elsewhere")
    x = np.asarray(crops)[use].astype(np.float32)
    x = x.reshape(*x.shape[:3], -1)  # [K, size, size, C]
    if x.shape[1:3] != (size, size):
        raise BrainTumorError(f"region score: crops are {x.shape[1]} x {x.shape[2]} px, the scorer reads {size}")
    g = np.asarray(geometry, np.float32)[use]
    w = (np.where(y == 1, 0.5 / y.sum(), 0.5 / (1 - y).sum()) * len(y)).astype(np.float32)
    keras.utils.set_random_seed(seed)

    def flip(inputs, label, weight):
        c, gg = inputs
        do = tf.random.uniform(()) < 0.5
        c = tf.cond(do, lambda: tf.reverse(c, [1]), lambda: c)
        gg = tf.cond(do, lambda: tf.concat([gg[:1], 1.0 - gg[1:2], gg[2:]], 0), lambda: gg)
        return (c, gg), label, weight

    ds = (tf.data.Dataset.from_tensor_slices(((x, g), y, w)).shuffle(len(y), seed=seed)
          .map(flip).batch(batch).prefetch(2))
    model = build_scorer(size, widths, x.shape[-1])
    steps = max(1, epochs * int(np.ceil(len(y) / batch)))
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps)),
                  loss="binary_crossentropy", weighted_metrics=["AUC"])
    model.fit(ds, epochs=epochs, verbose=verbose, shuffle=False)  # ``ds`` reshuffles itself every epoch
    return model
