"""The Mask R-CNN model: graph construction, training loop, detection.

``MaskRCNN(mode, config, model_dir)`` mirrors Matterport's class of the same
name: ``.keras_model``, ``.train(...)``, ``.detect(images)``,
``.load_weights(path, by_name=True, exclude=...)``, ``.save_weights(path)``,
``.find_last()``, ``.set_trainable(layers)``, ``.set_log_dir(path)``, ``.epoch``.

Training model inputs (see :func:`braintumor.mrcnn.inputs.build_training_sample`):
``input_image [B, H, W, 3]`` molded, ``input_image_meta [B, META]``,
``input_rpn_match [B, A, 1]``, ``input_rpn_bbox [B, RPN_TRAIN_ANCHORS_PER_IMAGE, 4]``,
``input_gt_class_ids [B, G]``, ``input_gt_boxes [B, G, 4]`` (normalized),
``input_gt_masks [B, G, mh, mw]``. Its outputs feed the five losses, computed
in :meth:`MaskRCNNTrainModel.train_step`. In training the mask head runs only on
the positive sampled ROIs (the mask loss uses positives only; positives are the
first rows, at most ``int(TRAIN_ROIS_PER_IMAGE * ROI_POSITIVE_RATIO)``).

Inference model inputs: ``input_image``, ``input_image_meta``; outputs
``[detections [B, D, 6], mrcnn_class [B, R, C], mrcnn_bbox [B, R, C, 4],
mrcnn_mask [B, D, 28, 28, C], rpn_rois [B, R, 4], rpn_class [B, A, 2], rpn_bbox [B, A, 4]]``
(``D = DETECTION_MAX_INSTANCES``, ``R = POST_NMS_ROIS_INFERENCE``).
"""

from __future__ import annotations

import datetime
import math
import re
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from braintumor.config import Config
from braintumor.errors import BrainTumorError
from braintumor.image_score import POOLED_LAYERS
from braintumor.mrcnn import losses as L
from braintumor.mrcnn.backbone import backbone_and_fpn
from braintumor.mrcnn.detection import DetectionLayer
from braintumor.mrcnn.flip import merge_views, unflip
from braintumor.mrcnn.heads import classifier_head, mask_head
from braintumor.mrcnn.inputs import keep_best_and_strong, make_tf_dataset, mold_inputs, unmold_detections
from braintumor.mrcnn.precision import compute_scope
from braintumor.mrcnn.proposals import ProposalLayer
from braintumor.mrcnn.rpn import rpn_outputs
from braintumor.mrcnn.targets import DetectionTargetLayer
from braintumor.paths import CHECKPOINT_RE, RUN_DIR_RE, checkpoint_epoch

# pooled into every detect() result as ``image_features``: the contract is braintumor.image_score's
IMAGE_FEATURE_LAYERS = POOLED_LAYERS

# which layers each training group trains (regular expressions on layer names)
LAYER_REGEX = {
    "heads": r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "3+": r"(res3.*)|(bn3.*)|(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "4+": r"(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "5+": r"(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "all": r".*",
    "mask": r"mrcnn\_mask.*",  # the mask branch alone: boxes, scores and image features stay as they are
    "detector": r"(mrcnn\_.*)|(rpn\_.*)",  # RPN + box/class/mask heads: backbone and FPN (image features) stay
}


class _SliceBoxes(layers.Layer):
    """``[B, D, 6]`` detections -> ``[B, D, 4]`` boxes."""

    def call(self, x):
        return x[..., :4]

    def compute_output_shape(self, s):
        return tuple(s[:-1]) + (4,)


class _ValidDetections(layers.Layer):
    """``[B, D, 6]`` detections -> ``[B, D]`` bool: real detections (class id > 0), not padding."""

    def call(self, x):
        return x[..., 4] > 0

    def compute_output_spec(self, x):
        return keras.KerasTensor(tuple(x.shape[:-1]), "bool")


class _Positive(layers.Layer):
    """``[B, N]`` target class ids -> ``[B, N]`` bool (id > 0)."""

    def call(self, x):
        return x > 0

    def compute_output_spec(self, x):
        return keras.KerasTensor(tuple(x.shape), "bool")


class _FirstRows(layers.Layer):
    """``[B, N, ...] -> [B, n, ...]``: the first ``n`` rows."""

    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.n = int(n)

    def call(self, x):
        return x[:, : self.n]

    def compute_output_shape(self, s):
        return (s[0], self.n) + tuple(s[2:])


def _image_input(config):
    fixed = config.IMAGE_RESIZE_MODE in ("square", "crop")
    h, w = (config.IMAGE_SHAPE[0], config.IMAGE_SHAPE[1]) if fixed else (None, None)
    return keras.Input(shape=(h, w, config.IMAGE_CHANNEL_COUNT), name="input_image")


def build_inference_model(config: Config) -> keras.Model:
    """The inference graph (see module docstring)."""
    image = _image_input(config)
    meta = keras.Input(shape=(config.IMAGE_META_SIZE,), name="input_image_meta")
    with compute_scope(config):  # PRECISION (braintumor.mrcnn.precision)
        p2, p3, p4, p5, p6 = backbone_and_fpn(image, config)
    rpn_logits, rpn_probs, rpn_bbox = rpn_outputs([p2, p3, p4, p5, p6], config)
    r = config.POST_NMS_ROIS_INFERENCE
    rois = ProposalLayer(r, config.RPN_NMS_THRESHOLD, config, name="ROI")([rpn_probs, rpn_bbox, image])
    maps = [p2, p3, p4, p5]
    _, probs, deltas = classifier_head(rois, meta, maps, config, r)
    detections = DetectionLayer(config.DETECTION_MAX_INSTANCES, config.DETECTION_MIN_CONFIDENCE,
                                config.DETECTION_NMS_THRESHOLD, config.BBOX_STD_DEV,
                                name="mrcnn_detection")([rois, probs, deltas, meta])
    det_boxes = _SliceBoxes(name="detection_boxes")(detections)
    det_valid = _ValidDetections(name="detection_valid")(detections)
    masks = mask_head(det_boxes, meta, maps, config, config.DETECTION_MAX_INSTANCES, valid=det_valid)
    return keras.Model([image, meta], [detections, probs, deltas, masks, rois, rpn_probs, rpn_bbox],
                       name="mask_rcnn")


class MaskRCNNTrainModel(keras.Model):
    """The training graph with its own ``train_step``/``test_step``.

    Loss = sum of ``LOSS_WEIGHTS[name] * loss`` over the five losses, plus
    ``WEIGHT_DECAY / 2 * sum(kernel²)`` over trainable conv/dense kernels
    (logged as ``l2_loss``). Gradients are clipped by the optimizer
    (``global_clipnorm``). Metrics: ``loss`` and each loss name (epoch means); in training
    also ``grad_norm``, the global norm of the gradient before the clip, and ``clipped``, the
    share of steps the clip shortened (0 without a clip): a step is taken at
    ``min(1, GRADIENT_CLIP_NORM / grad_norm)`` of the learning rate (under ``tf.distribute``: each
    replica's gradient of its share of the loss). With ``GRADIENT_ACCUMULATION_STEPS`` > 1 both are of
    each batch's gradient, while the clip applies to the mean of the accumulated ones.
    """

    TRAIN_ONLY = ("grad_norm", "clipped")

    def __init__(self, inputs, outputs, loss_weights=None, weight_decay=0.0, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.loss_weights = dict(loss_weights or {n: 1.0 for n in L.LOSS_NAMES})
        self.weight_decay = float(weight_decay)
        self._trackers = {n: keras.metrics.Mean(name=n)
                          for n in ("loss",) + L.LOSS_NAMES + ("l2_loss",) + self.TRAIN_ONLY}

    @property
    def metrics(self):
        return list(self._trackers.values())

    def compute_losses(self, x, outputs):
        """Dict of the five scalar losses for inputs ``x`` (list) and model ``outputs`` (list)."""
        (rpn_logits, rpn_bbox, _rois, t_ids, t_deltas, t_masks, m_logits, m_bbox, m_mask) = outputs
        return {
            "rpn_class_loss": L.rpn_class_loss(x[2], rpn_logits),
            "rpn_bbox_loss": L.rpn_bbox_loss(x[2], x[3], rpn_bbox),
            "mrcnn_class_loss": L.mrcnn_class_loss(t_ids, m_logits),
            "mrcnn_bbox_loss": L.mrcnn_bbox_loss(t_deltas, t_ids, m_bbox),
            "mrcnn_mask_loss": L.mrcnn_mask_loss(t_masks, t_ids[:, :m_mask.shape[1]], m_mask),
        }

    def _l2(self):
        if not self.weight_decay:
            return ops.convert_to_tensor(0.0)
        terms = [ops.sum(ops.square(v)) for v in self.trainable_variables if v.path.endswith("kernel")]
        if not terms:
            return ops.convert_to_tensor(0.0)
        return 0.5 * self.weight_decay * ops.sum(ops.stack(terms))

    def _total(self, parts):
        total = ops.convert_to_tensor(0.0)
        for n in L.LOSS_NAMES:
            total = total + float(self.loss_weights.get(n, 1.0)) * parts[n]
        return total

    def _update(self, parts, l2, total, grad_norm=None):
        for n, v in parts.items():
            self._trackers[n].update_state(v)
        self._trackers["l2_loss"].update_state(l2)
        self._trackers["loss"].update_state(total)
        if grad_norm is not None:
            self._trackers["grad_norm"].update_state(grad_norm)
            clip = getattr(self.optimizer, "global_clipnorm", None)
            self._trackers["clipped"].update_state(
                ops.cast(grad_norm > clip, "float32") if clip else ops.convert_to_tensor(0.0))
            return {n: t.result() for n, t in self._trackers.items()}
        return {n: t.result() for n, t in self._trackers.items() if n not in self.TRAIN_ONLY}

    @staticmethod
    def _unpack(data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return list(x)

    def train_step(self, data):
        import tensorflow as tf

        x = self._unpack(data)
        with tf.GradientTape() as tape:
            outputs = self(x, training=True)
            parts = self.compute_losses(x, outputs)
            l2 = self._l2()
            total = self._total(parts) + l2
            scaled = total / tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        grad_norm = tf.linalg.global_norm([g for g in grads if g is not None])
        self.optimizer.apply(grads, variables)
        return self._update(parts, l2, total, grad_norm)

    def test_step(self, data):
        x = self._unpack(data)
        outputs = self(x, training=False)
        parts = self.compute_losses(x, outputs)
        l2 = self._l2()
        return self._update(parts, l2, self._total(parts) + l2)


def build_training_model(config: Config) -> MaskRCNNTrainModel:
    """The training graph (see module docstring)."""
    image = _image_input(config)
    meta = keras.Input(shape=(config.IMAGE_META_SIZE,), name="input_image_meta")
    rpn_match = keras.Input(shape=(None, 1), dtype="int32", name="input_rpn_match")
    rpn_bbox_t = keras.Input(shape=(config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4), name="input_rpn_bbox")
    g = config.MAX_GT_INSTANCES
    gt_ids = keras.Input(shape=(g,), dtype="int32", name="input_gt_class_ids")
    gt_boxes = keras.Input(shape=(g, 4), name="input_gt_boxes")
    if config.USE_MINI_MASK:
        mshape = tuple(config.MINI_MASK_SHAPE)
    else:
        mshape = tuple(image.shape[1:3])
    gt_masks = keras.Input(shape=(g,) + mshape, name="input_gt_masks")

    with compute_scope(config):  # PRECISION (braintumor.mrcnn.precision)
        p2, p3, p4, p5, p6 = backbone_and_fpn(image, config)
    rpn_logits, rpn_probs, rpn_bbox = rpn_outputs([p2, p3, p4, p5, p6], config)
    proposals = ProposalLayer(config.POST_NMS_ROIS_TRAINING, config.RPN_NMS_THRESHOLD, config,
                              name="ROI")([rpn_probs, rpn_bbox, image])
    t = config.TRAIN_ROIS_PER_IMAGE
    targets = DetectionTargetLayer(t, config.ROI_POSITIVE_RATIO, config.BBOX_STD_DEV, config.MASK_SHAPE,
                                   config.USE_MINI_MASK, seed=config.SEED, name="proposal_targets")
    rois, t_ids, t_deltas, t_masks = targets([proposals, gt_ids, gt_boxes, gt_masks])
    maps = [p2, p3, p4, p5]
    m_logits, _, m_bbox = classifier_head(rois, meta, maps, config, t)
    # positives are the first rows of `rois`: the mask head (and its loss) only needs those
    cap = targets.positive_capacity
    mask_valid = _Positive(name="mask_rows_positive")(_FirstRows(cap, name="mask_class_ids")(t_ids))
    m_mask = mask_head(_FirstRows(cap, name="mask_rois")(rois), meta, maps, config, cap, valid=mask_valid)
    return MaskRCNNTrainModel(
        [image, meta, rpn_match, rpn_bbox_t, gt_ids, gt_boxes, gt_masks],
        [rpn_logits, rpn_bbox, rois, t_ids, t_deltas, t_masks, m_logits, m_bbox, m_mask],
        loss_weights=config.LOSS_WEIGHTS, weight_decay=config.WEIGHT_DECAY, name="mask_rcnn")


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """``lr`` with linear warm-up over the first ``warmup`` batches and optional cosine decay to 0 at
    ``total`` batches; ``offset`` = batches done before the optimizer's first. Keras calls a schedule with
    the batches the optimizer has seen (with gradient accumulation too, where it steps every k of them), so
    the curve reads in batches either way."""

    def __init__(self, lr, offset=0, warmup=0, total=0, cosine=False):
        self.lr, self.offset, self.warmup, self.total, self.cosine = float(lr), int(offset), int(warmup), int(total), bool(cosine)

    def __call__(self, step):
        s = ops.cast(step, "float32") + float(self.offset)
        lr = ops.convert_to_tensor(self.lr)
        if self.warmup > 0:
            lr = lr * ops.minimum(1.0, (s + 1.0) / float(self.warmup))
        if self.cosine and self.total > 0:
            lr = lr * 0.5 * (1.0 + ops.cos(math.pi * ops.minimum(s / float(self.total), 1.0)))
        return lr

    def get_config(self):
        return {"lr": self.lr, "offset": self.offset, "warmup": self.warmup, "total": self.total, "cosine": self.cosine}


OPTIMIZER_STATE = "optimizer_state.npz"  # in the run folder: the SGD momentum after the newest checkpoint


class _EpochCheckpoint(keras.callbacks.Callback):
    """Saves ``mask_rcnn_<name>_<epoch:04d>.h5`` and the optimizer's momentum (:data:`OPTIMIZER_STATE`,
    the newest epoch's only) after every epoch, advances ``MaskRCNN.epoch``, and on a resumed run puts
    the momentum saved with the checkpoint it resumes from back before the first step."""

    def __init__(self, owner: "MaskRCNN", log=print):
        super().__init__()
        self.owner = owner
        self.log = log

    def on_train_begin(self, logs=None):
        if self.owner.resuming:  # the first stage after load_weights() of this run's checkpoint
            self.owner.resuming = False
            self.log(self.owner.restore_optimizer_state())

    def on_epoch_end(self, epoch, logs=None):
        self.owner.epoch = epoch + 1
        self.owner.save_weights(self.owner.checkpoint_path_for(epoch + 1), epoch=epoch + 1)
        self.owner.save_optimizer_state(epoch + 1)


class MaskRCNN:
    """Mask R-CNN with Matterport's interface.

    mode: ``"training"`` or ``"inference"``; config: :class:`~braintumor.config.Config`;
    model_dir: folder of run folders ``<name><YYYYMMDDTHHMM>/`` (e.g. ``logs``).
    """

    def __init__(self, mode: str, config: Config, model_dir: str | Path = "logs"):
        if mode not in ("training", "inference"):
            raise BrainTumorError(f"mode must be 'training' or 'inference', got {mode!r}")
        self.mode = mode
        self.config = config
        self.model_dir = Path(model_dir)
        self.epoch = 0
        self.resuming = False  # load_weights() read a checkpoint of this run: train() puts its momentum back
        self._predict_fn = None
        self._features_fn = None
        if mode == "training":  # same SEED -> same initial weights (and sampling in the graph)
            keras.utils.set_random_seed(config.SEED)
        self.set_log_dir()
        self.keras_model = build_training_model(config) if mode == "training" else build_inference_model(config)
        if mode == "training":
            self.set_trainable(config.LAYERS if config.LAYERS else "all", verbose=0)

    # ---------------------------------------------------------------- runs
    @property
    def run_name(self) -> str:
        return self.config.NAME.lower()

    def set_log_dir(self, model_path: str | Path | None = None) -> None:
        """Set ``log_dir`` and ``epoch``: a new run folder stamped now, or, for a checkpoint
        ``<run>/mask_rcnn_<name>_<NNNN>.h5`` of this config's ``NAME``, that run folder and epoch
        ``NNNN`` (training resumes after it). A checkpoint of another ``NAME`` starts a new run
        (a second stage with its own preset, e.g. ``resnet101_negatives`` from a ``resnet101`` run)."""
        self.epoch = 0
        now = datetime.datetime.now()
        log_dir = self.model_dir / f"{self.run_name}{now:%Y%m%dT%H%M}"
        if model_path is not None:
            model_path = Path(model_path)
            m = CHECKPOINT_RE.match(model_path.name)
            if m and m.group("name") == self.run_name and RUN_DIR_RE.match(model_path.parent.name):
                log_dir = model_path.parent
                self.epoch = int(m.group("epoch"))
        self.log_dir = log_dir
        self.checkpoint_path = str(log_dir / f"mask_rcnn_{self.run_name}_{{epoch:04d}}.h5")

    def checkpoint_path_for(self, epoch: int) -> Path:
        return Path(self.checkpoint_path.format(epoch=epoch))

    def find_last(self) -> Path:
        """Newest checkpoint of the newest run folder of this config's NAME under ``model_dir``
        (run folders without any checkpoint are passed over)."""
        runs = []
        if self.model_dir.is_dir():
            for d in self.model_dir.iterdir():
                m = RUN_DIR_RE.match(d.name)
                if d.is_dir() and m and m.group("name") == self.run_name:
                    runs.append(d)
        for run in sorted(runs, key=lambda d: d.name, reverse=True):
            ckpts = sorted((p for p in run.glob(f"mask_rcnn_{self.run_name}_*.h5") if checkpoint_epoch(p) is not None),
                           key=checkpoint_epoch)
            if ckpts:
                return ckpts[-1]
        raise BrainTumorError(f"{self.model_dir}: no checkpoint of a '{self.run_name}' run found")

    # ------------------------------------------------------------- weights
    def load_weights(self, filepath, by_name: bool = True, exclude=None):
        """Load an ``.h5`` checkpoint (Matterport layout) by layer name; returns the ``LoadReport``.
        Sets ``log_dir``/``epoch`` from the path so that training continues that run."""
        from braintumor.mrcnn.weights import load_weights_h5

        report = load_weights_h5(self.keras_model, filepath, by_name=by_name, exclude=tuple(exclude or ()))
        self.set_log_dir(filepath)
        self.resuming = self.epoch > 0
        return report

    def load_imagenet_weights(self):
        """Copy ImageNet ResNet weights (keras.applications) onto the backbone; returns the ``LoadReport``."""
        from braintumor.mrcnn.weights import load_imagenet_backbone

        return load_imagenet_backbone(self.keras_model, self.config.BACKBONE)

    def save_weights(self, filepath, epoch: int | None = None) -> None:
        """Write all weights to ``filepath`` (``.h5``, Matterport layout, atomic)."""
        from braintumor.mrcnn.weights import save_weights_h5

        Path(filepath).parent.mkdir(parents=True, exist_ok=True)
        save_weights_h5(self.keras_model, filepath, epoch=epoch)

    def _optimizer_slots(self) -> list:
        """``[(trainable variable, its momentum variable)]`` of the built SGD optimizer ([] without momentum)."""
        opt = self.keras_model.optimizer
        momentums = list(getattr(opt, "momentums", None) or [])
        variables = list(getattr(opt, "_trainable_variables", None) or self.keras_model.trainable_variables)
        return list(zip(variables, momentums)) if len(variables) == len(momentums) else []

    def save_optimizer_state(self, epoch: int) -> Path | None:
        """Write the SGD momentum of every trainable variable, with ``epoch``, to the run folder's
        :data:`OPTIMIZER_STATE` (atomically; it replaces the previous epoch's). None when there is none."""
        opt = getattr(self.keras_model, "optimizer", None)
        slots = self._optimizer_slots() if opt is not None and opt.built else []
        if not slots:
            return None
        path = self.log_dir / OPTIMIZER_STATE
        tmp = path.with_name("optimizer_state.tmp.npz")
        arrays = {f"m{i}": keras.ops.convert_to_numpy(m) for i, (_, m) in enumerate(slots)}
        np.savez(tmp, names=np.array([v.path for v, _ in slots]), epoch=np.int64(epoch), **arrays)
        tmp.replace(path)
        return path

    def restore_optimizer_state(self) -> str:
        """Put back the momentum :meth:`save_optimizer_state` wrote with the checkpoint of ``self.epoch``
        (the optimizer is built on the trainable variables first); returns what was done. The momentum
        stays at zero, and the message says why, when the file is missing, of another epoch, or saved
        for another set of trainable variables (another ``LAYERS`` stage)."""
        import tensorflow as tf

        path = self.log_dir / OPTIMIZER_STATE
        if not path.is_file():
            return f"momentum starts at zero: no {OPTIMIZER_STATE} in {self.log_dir}"
        try:
            with np.load(path) as z:
                saved_epoch = int(z["epoch"])
                saved = {str(n): z[f"m{i}"] for i, n in enumerate(z["names"])}
        except (OSError, ValueError, KeyError) as e:
            return f"momentum starts at zero: {path}: unreadable ({e})"
        if saved_epoch != self.epoch:
            return f"momentum starts at zero: {path} is of epoch {saved_epoch}, the weights of epoch {self.epoch}"
        opt = getattr(self.keras_model, "optimizer", None)
        if opt is None:
            return "momentum starts at zero: the model is not compiled"
        if not opt.built:
            if tf.distribute.has_strategy():
                return "momentum starts at zero: the optimizer is not built inside the distribution strategy"
            opt.build(self.keras_model.trainable_variables)
        slots = self._optimizer_slots()
        if not slots:
            return "momentum starts at zero: the optimizer has no momentum"
        for v, m in slots:
            a = saved.get(v.path)
            if a is None or tuple(a.shape) != tuple(m.shape):
                return (f"momentum starts at zero: {path} was saved for other trainable variables "
                        f"({len(saved)} saved, {len(slots)} now; first unmatched: {v.path})")
        for v, m in slots:
            m.assign(saved[v.path])
        return f"momentum of {len(slots)} variables restored from {path} (epoch {saved_epoch})"

    # ------------------------------------------------------------ training
    def set_trainable(self, layers: str, verbose: int = 0) -> None:
        """Train only the layer group ``layers`` (``heads``, ``3+``, ``4+``, ``5+``, ``all``, ``mask``) or a regex.

        BatchNormalization layers train only when ``TRAIN_BN`` is true (frozen BN
        runs on its moving statistics)."""
        regex = LAYER_REGEX.get(layers, layers)
        pattern = re.compile(regex)

        def visit(model):
            for layer in model.layers:
                if isinstance(layer, keras.Model):
                    # (setting a model's `trainable` sets it on all its layers: do that first)
                    on = bool(pattern.fullmatch(layer.name))
                    layer.trainable = on
                    if on:
                        for inner in layer.layers:
                            inner.trainable = not isinstance(inner, layers_BN) or bool(self.config.TRAIN_BN)
                    continue
                if not layer.weights:
                    continue
                on = bool(pattern.fullmatch(layer.name))
                if isinstance(layer, layers_BN):
                    on = on and bool(self.config.TRAIN_BN)
                layer.trainable = on
                if verbose and on:
                    print(f"{layer.name:30} ({type(layer).__name__})")

        visit(self.keras_model)

    def compile(self, learning_rate, momentum=None, total_epochs=None, start_epoch=0):
        """(Re)create the SGD optimizer and compile the training model. With ``GRADIENT_ACCUMULATION_STEPS``
        = k > 1 the optimizer (Keras' own ``gradient_accumulation_steps``) takes one step every k batches
        on their mean gradient, clipped to ``GRADIENT_CLIP_NORM``; the schedule still counts batches."""
        c = self.config
        k = int(c.GRADIENT_ACCUMULATION_STEPS)
        schedule = WarmupCosine(learning_rate, offset=start_epoch * c.STEPS_PER_EPOCH,
                                warmup=c.WARMUP_STEPS, total=(total_epochs or c.EPOCHS) * c.STEPS_PER_EPOCH,
                                cosine=c.LR_DECAY == "cosine")
        lr = schedule if (c.WARMUP_STEPS or c.LR_DECAY == "cosine") else float(learning_rate)
        opt = keras.optimizers.SGD(learning_rate=lr, momentum=c.LEARNING_MOMENTUM if momentum is None else momentum,
                                   global_clipnorm=c.GRADIENT_CLIP_NORM or None,
                                   gradient_accumulation_steps=k if k > 1 else None)
        self.keras_model.compile(optimizer=opt, jit_compile=False)

    def train(self, train_dataset, val_dataset, learning_rate, epochs, layers, augmentation=None,
              callbacks=None, initial_epoch=None, verbose=1):
        """Train ``layers`` from ``self.epoch`` (or ``initial_epoch``) up to epoch ``epochs`` (total, as in Matterport).

        train_dataset/val_dataset: Dataset objects (``val_dataset`` may be None);
        augmentation: an augmenter ``(image, masks, class_ids, rng) -> (...)``, a config
        ``AUGMENTATION`` dict, or None; callbacks: extra keras callbacks.
        Writes ``config.toml``, ``mask_rcnn_<name>_<epoch:04d>.h5`` and the momentum
        (:data:`OPTIMIZER_STATE`) after each epoch into ``self.log_dir``; a run resumed from its
        checkpoint (:meth:`load_weights`) gets that checkpoint's momentum back in its first call (later
        stages start theirs at zero, as a new stage always did). Returns the keras ``History``.
        """
        if self.mode != "training":
            raise BrainTumorError("create the model with mode='training' to train")
        c = self.config
        if initial_epoch is not None:
            self.epoch = int(initial_epoch)
        if isinstance(augmentation, dict):
            from braintumor.augment import build_augmentation

            augmentation = build_augmentation(augmentation)
        keras.utils.set_random_seed(c.SEED + self.epoch)
        train_ds = make_tf_dataset(train_dataset, c, augmentation, seed=c.SEED + self.epoch, shuffle=True)
        val_ds = None
        if val_dataset is not None and len(val_dataset) and c.VALIDATION_STEPS:
            val_ds = make_tf_dataset(val_dataset, c, None, seed=c.SEED + 1, shuffle=True)
            if getattr(c, "VALIDATION_CACHE", False):
                # every validation restarts this seeded stream: the same batches each time, so keep them
                val_ds = val_ds.take(c.VALIDATION_STEPS).cache()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.log_dir / "config.toml"
        if not cfg_path.exists():
            c.save(cfg_path)
        self.set_trainable(layers)
        self.compile(learning_rate, total_epochs=max(c.EPOCHS, epochs), start_epoch=self.epoch)
        start = self.epoch
        if start >= epochs:
            return None
        every = int(getattr(c, "VALIDATION_EVERY", 1))  # validate epochs N, 2N, ... and the last one
        history = self.keras_model.fit(
            train_ds, steps_per_epoch=c.STEPS_PER_EPOCH, epochs=epochs, initial_epoch=start,
            validation_data=val_ds, validation_steps=c.VALIDATION_STEPS if val_ds is not None else None,
            validation_freq=1 if every <= 1 else [e for e in range(start + 1, epochs + 1) if e % every == 0 or e == epochs],
            callbacks=[_EpochCheckpoint(self)] + list(callbacks or []), verbose=verbose, shuffle=False)
        self.epoch = max(self.epoch, epochs)
        return history

    # ----------------------------------------------------------- inference
    def _pooled_features(self):
        """The ``[batch, 4 × TOP_DOWN_PYRAMID_SIZE]`` tensor of ``image_features``: global average then max
        pooling of each of :data:`IMAGE_FEATURE_LAYERS`, in that order (a function of the image input alone)."""
        km = self.keras_model
        pooled = []
        for name in IMAGE_FEATURE_LAYERS:
            t = km.get_layer(name).output
            pooled += [keras.ops.mean(t, axis=(1, 2)), keras.ops.max(t, axis=(1, 2))]
        return keras.ops.concatenate(pooled, axis=-1)

    def _predict(self, molded, metas):
        import tensorflow as tf

        if self._predict_fn is None:
            km = self.keras_model
            model = keras.Model(km.inputs, [km.outputs[0], km.outputs[3], self._pooled_features()])
            img_spec = tf.TensorSpec((None,) + tuple(km.inputs[0].shape[1:]), tf.float32)
            meta_spec = tf.TensorSpec((None, self.config.IMAGE_META_SIZE), tf.float32)

            @tf.function(input_signature=[img_spec, meta_spec], reduce_retracing=True)
            def fn(images, meta):
                return model([images, meta], training=False)

            self._predict_fn = fn
        det, masks, feats = self._predict_fn(tf.convert_to_tensor(molded), tf.convert_to_tensor(metas))
        return det.numpy(), masks.numpy(), feats.numpy().astype(np.float32)

    def image_features(self, images) -> np.ndarray:
        """float32 ``[N, 4 × TOP_DOWN_PYRAMID_SIZE]``: the ``image_features`` :meth:`detect` returns for each
        uint8 RGB image ``[H, W, 3]``, from the backbone and FPN alone (no proposals, heads or masks: 0.42 × detect()'s
        time, ``benchmarks/bench_model.py --only ours-detect-resnet101 ours-features-resnet101``)."""
        import tensorflow as tf

        if self.mode != "inference":
            raise BrainTumorError("create the model with mode='inference' to read image features")
        if self._features_fn is None:
            km = self.keras_model
            model = keras.Model(km.inputs[0], self._pooled_features())
            img_spec = tf.TensorSpec((None,) + tuple(km.inputs[0].shape[1:]), tf.float32)

            @tf.function(input_signature=[img_spec], reduce_retracing=True)
            def fn(images):
                return model(images, training=False)

            self._features_fn = fn
        out = []
        for im in images:  # one at a time: mold_inputs pads each image as detect() does
            molded, _, _ = mold_inputs([im], self.config)
            out.append(self._features_fn(tf.convert_to_tensor(molded)).numpy().astype(np.float32)[0])
        width = 2 * len(IMAGE_FEATURE_LAYERS) * int(self.config.TOP_DOWN_PYRAMID_SIZE)
        return np.stack(out) if out else np.zeros((0, width), np.float32)

    def detect(self, images, verbose: int = 0) -> list[dict]:
        """Detect instances in uint8 RGB images ``[H, W, 3]`` (any sizes).

        Returns one dict per image: ``rois`` int32 ``[N, (y1, x1, y2, x2)]`` pixels of that
        image, ``class_ids`` int32 ``[N]``, ``scores`` float32 ``[N]``, ``masks`` bool ``[H, W, N]``,
        ``image_features`` float32 ``[4 × TOP_DOWN_PYRAMID_SIZE]``: global average then max pooling of
        each of :data:`IMAGE_FEATURE_LAYERS` (what :mod:`braintumor.image_score` reads).
        """
        if self.mode != "inference":
            raise BrainTumorError("create the model with mode='inference' to detect")
        images = list(images)
        results = []
        step = max(1, self.config.BATCH_SIZE)
        flip = bool(self.config.TEST_TIME_FLIP)  # braintumor.mrcnn.flip: a second view, twice the time
        mask_threshold = float(self.config.DETECTION_MASK_THRESHOLD)
        for i in range(0, len(images), step):
            chunk = images[i:i + step]
            try:
                groups = [(chunk, *mold_inputs(chunk, self.config))]
            except BrainTumorError:
                if len(chunk) == 1:
                    raise
                groups = [([im], *mold_inputs([im], self.config)) for im in chunk]
            for group, molded, metas, infos in groups:
                if verbose:
                    print(f"Processing {len(infos)} images, molded {molded.shape}")
                det, masks, feats = self._predict(molded, metas)
                if flip:  # the mirror view, molded on its own (padding and crop need not be symmetric)
                    molded_f, metas_f, infos_f = mold_inputs([np.ascontiguousarray(im[:, ::-1]) for im in group],
                                                             self.config)
                    det_f, masks_f, _ = self._predict(molded_f, metas_f)
                for j, info in enumerate(infos):
                    if flip:
                        r = merge_views(unmold_detections(det[j], masks[j], info, soft=True),
                                        unflip(unmold_detections(det_f[j], masks_f[j], infos_f[j], soft=True),
                                               info.original_shape[1]), mask_threshold=mask_threshold)
                    else:
                        r = unmold_detections(det[j], masks[j], info, mask_threshold=mask_threshold)
                    r = keep_best_and_strong(r, float(self.config.DETECTION_SECONDARY_MIN_CONFIDENCE))
                    results.append({**r, "image_features": feats[j]})
        return results


layers_BN = keras.layers.BatchNormalization
