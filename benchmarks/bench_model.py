"""Speed and memory of braintumor's Mask R-CNN on this machine, beside two references.

Measured, each in its own subprocess (so peak RSS is per model: ``ru_maxrss`` of that child):

- ``ours-detect-resnet101`` / ``ours-detect-resnet50``: ``MaskRCNN(mode="inference").detect([image])``
  on one 512x512 uint8 RGB image (random init), median over ``--runs`` after ``--warmup`` calls.
- ``ours-features-resnet101``: ``MaskRCNN.image_features([image])``, the same image's ``image_features``
  from the backbone and FPN alone (what ``fit-image-score`` computes for the images it only fits on).
- ``ours-train-resnet101`` / ``ours-train-resnet50``: one training step (``MaskRCNN.train``, layers
  ``all``, frozen BN as ``TRAIN_BN = False``, batch of 1 synthetic image with one tumor-like blob),
  timed per batch by a Keras callback.
- ``keras-forward-*`` / ``keras-train-*``: the floor, bare ``keras.applications.ResNet101/ResNet50
  (weights=None, include_top=False)`` forward, and SGD step on ``mean(features**2)`` (BN frozen), same size.
- ``ours-train-preset``: one training step with the shipped preset's settings
  (``mrcnn_config/resnet101.toml``: GroupNorm, its ROI counts, its augmentation through the real
  input pipeline; ``--set`` overrides, ``--no-augment`` turns augmentation off), to read against
  ``keras-train-resnet101`` measured in the same run (aim: at most 2.5 x).
- ``ours-epoch-preset``: two epochs of ``--epoch-steps`` steps through ``MaskRCNN.train`` with the preset
  (input pipeline, augmentation, validation scaled to the preset's ``VALIDATION_STEPS`` per
  ``STEPS_PER_EPOCH``, the checkpoint); the second epoch's wall time against steps x its median step
  time (aim: at most 1.15 x).
- ``--profile DIR``: ``ours-train-preset`` also traces ``--profile-steps`` more steps with TensorFlow's
  profiler into ``DIR`` and prints the top ops by self time, and the input pipeline's share.
- ``torch-detect-resnet50`` / ``torch-train-resnet50``: torchvision ``maskrcnn_resnet50_fpn(weights=None,
  weights_backbone=None, num_classes=2)`` eval forward / train step at the same size, run with
  ``.venv-bench`` (torch + torchvision; made on first use from benchmarks/requirements-bench.txt).

Usage::

    .venv/bin/python benchmarks/bench_model.py                 # everything, writes results.json + README.md
    .venv/bin/python benchmarks/bench_model.py --quick --no-write   # smoke run, few iterations
    .venv/bin/python benchmarks/bench_model.py --only ours-detect-resnet50 torch-detect-resnet50

This file imports only the standard library at the top: its workers run under
either virtualenv (TensorFlow in ``.venv``, PyTorch in ``.venv-bench``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCH_VENV = ROOT / ".venv-bench"
BENCH_PY = BENCH_VENV / "bin" / "python"
REQUIREMENTS = HERE / "requirements-bench.txt"
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"

# name -> (interpreter: "main" | "torch", worker function name, backbone, kind)
BENCHES = {
    "ours-detect-resnet101": ("main", "ours_detect", "resnet101", "detect"),
    "ours-detect-resnet50": ("main", "ours_detect", "resnet50", "detect"),
    "ours-features-resnet101": ("main", "ours_features", "resnet101", "detect"),
    "ours-train-resnet101": ("main", "ours_train", "resnet101", "train"),
    "ours-train-resnet50": ("main", "ours_train", "resnet50", "train"),
    "ours-train-preset": ("main", "ours_train_preset", "resnet101", "train"),
    "ours-epoch-preset": ("main", "ours_epoch_preset", "resnet101", "epoch"),
    "keras-forward-resnet101": ("main", "keras_forward", "resnet101", "detect"),
    "keras-forward-resnet50": ("main", "keras_forward", "resnet50", "detect"),
    "keras-train-resnet101": ("main", "keras_train", "resnet101", "train"),
    "keras-train-resnet50": ("main", "keras_train", "resnet50", "train"),
    "torch-detect-resnet50": ("torch", "torch_detect", "resnet50", "detect"),
    "torch-train-resnet50": ("torch", "torch_train", "resnet50", "train"),
}

# (label, numerator, denominator, aim: ratio must be <= this, or None)
RATIOS = [
    ("detect / backbone forward, ResNet-101", "ours-detect-resnet101", "keras-forward-resnet101", 2.0),
    ("detect / backbone forward, ResNet-50", "ours-detect-resnet50", "keras-forward-resnet50", None),
    ("image features alone / detect, ResNet-101", "ours-features-resnet101", "ours-detect-resnet101", None),
    ("our ResNet-50 detect / torchvision detect", "ours-detect-resnet50", "torch-detect-resnet50", 1.0),
    ("train step / backbone train step, ResNet-101", "ours-train-resnet101", "keras-train-resnet101", None),
    ("train step / backbone train step, ResNet-50", "ours-train-resnet50", "keras-train-resnet50", None),
    ("our ResNet-50 train step / torchvision train step", "ours-train-resnet50", "torch-train-resnet50", None),
    ("preset train step (GroupNorm) / backbone train step, ResNet-101", "ours-train-preset", "keras-train-resnet101", 2.5),
]
PRESET = ROOT / "mrcnn_config" / "resnet101.toml"


# =============================================================================
# workers (run in a child process; return a dict)
# =============================================================================
def _timed(fn, runs: int, warmup: int) -> tuple[list[float], list[float], object]:
    """Call ``fn`` ``warmup`` times, then ``runs`` times; seconds of each (warm-up ones separately)."""
    warm, times, last = [], [], None
    for _ in range(warmup):
        t = time.perf_counter()
        last = fn()
        warm.append(time.perf_counter() - t)
    for _ in range(runs):
        t = time.perf_counter()
        last = fn()
        times.append(time.perf_counter() - t)
    return warm, times, last


def _synthetic_image(size: int, seed: int = 0):
    """uint8 ``[size, size, 3]``: dark background, a bright textured ellipse (a 'head'), a brighter blob (a 'tumor').
    Returns ``(image, tumor_mask bool [size, size])``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    head = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.36) ** 2 < 1
    tumor = ((yy - 0.4) / 0.08) ** 2 + ((xx - 0.6) / 0.1) ** 2 < 1
    img = 20 + 90 * head + 80 * tumor + rng.normal(0, 12, (size, size))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(img[:, :, None], 3, axis=2), tumor


def _tf_setup():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))


OVERRIDES: dict = {}  # --set KEY=VALUE settings for the ours-* rows (parsed as TOML values)
OPTIONS: dict = {"augment": True, "profile": None, "profile_steps": 3}  # --no-augment, --profile, --profile-steps


def _parse_overrides(pairs) -> dict:
    import tomllib

    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set needs KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value  # a bare word: a string (NORM=gn)
    return out


def _ours_config(backbone: str, size: int):
    from braintumor.config import Config

    # DETECTION_MIN_CONFIDENCE 0: with random weights every call keeps DETECTION_MAX_INSTANCES (20)
    # detections, so both models do the full mask unmolding work (torchvision likewise below)
    return Config({"BACKBONE": backbone, "IMAGE_MAX_DIM": size, "IMAGE_MIN_DIM": size,
                   "IMAGES_PER_GPU": 1, "GPU_COUNT": 1, "DETECTION_MIN_CONFIDENCE": 0.0, **OVERRIDES})


def ours_detect(backbone: str, size: int, runs: int, warmup: int) -> dict:
    _tf_setup()
    t = time.perf_counter()
    from braintumor.mrcnn import MaskRCNN

    config = _ours_config(backbone, size)
    with tempfile.TemporaryDirectory() as logs:
        model = MaskRCNN(mode="inference", config=config, model_dir=logs)
        build = time.perf_counter() - t
        image, _ = _synthetic_image(size)
        warm, times, res = _timed(lambda: model.detect([image]), runs, warmup)
    return {"build_s": build, "warmup_s": warm, "times_s": times, "detections": int(len(res[0]["class_ids"])),
            "params": int(model.keras_model.count_params())}


def ours_features(backbone: str, size: int, runs: int, warmup: int) -> dict:
    _tf_setup()
    t = time.perf_counter()
    from braintumor.mrcnn import MaskRCNN

    with tempfile.TemporaryDirectory() as logs:
        model = MaskRCNN(mode="inference", config=_ours_config(backbone, size), model_dir=logs)
        build = time.perf_counter() - t
        image, _ = _synthetic_image(size)
        warm, times, _ = _timed(lambda: model.image_features([image]), runs, warmup)
    return {"build_s": build, "warmup_s": warm, "times_s": times, "params": int(model.keras_model.count_params())}


class _SyntheticDataset:
    """The Dataset interface (``image_ids``, ``load_image``, ``load_mask``...) over one synthetic image."""

    class_names = ["BG", "tumor"]
    num_classes = 2

    def __init__(self, size: int):
        self.image, self.mask = _synthetic_image(size)
        self.image_ids = range(1)
        self.image_info = [{"path": Path("synthetic.png"), "name": "synthetic.png", "height": size, "width": size}]
        self.problems = []

    def __len__(self):
        return 1

    def load_image(self, i):
        return self.image

    def load_mask(self, i):
        import numpy as np

        return self.mask[:, :, None].copy(), np.ones(1, np.int32)


def ours_train(backbone: str, size: int, runs: int, warmup: int) -> dict:
    _tf_setup()
    t = time.perf_counter()
    import keras

    from braintumor.mrcnn import MaskRCNN

    config = _ours_config(backbone, size).replace(STEPS_PER_EPOCH=warmup + runs, VALIDATION_STEPS=1,
                                                   EPOCHS=1, LAYERS="all")
    steps: list[float] = []

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            steps.append(time.perf_counter() - self._t)

    with tempfile.TemporaryDirectory() as logs:
        model = MaskRCNN(mode="training", config=config, model_dir=logs)
        build = time.perf_counter() - t
        ds = _SyntheticDataset(size)
        model.train(ds, None, learning_rate=config.LEARNING_RATE, epochs=1, layers="all",
                    callbacks=[StepTimer()], verbose=0)
    return {"build_s": build, "warmup_s": steps[:warmup], "times_s": steps[warmup:],
            "params": int(model.keras_model.count_params())}


def _preset_config(size: int):
    """The shipped preset at ``size`` x ``size``, one image per step, with the ``--set`` overrides."""
    from braintumor.config import Config

    return Config.from_toml(PRESET, IMAGE_MAX_DIM=size, IMAGE_MIN_DIM=size, IMAGES_PER_GPU=1, GPU_COUNT=1, **OVERRIDES)


class _SyntheticSet(_SyntheticDataset):
    """``n`` synthetic scans, the tumor at varied places; every ``free_every``-th one without a tumor
    (the preset's tumor-free share, 1 in 5)."""

    def __init__(self, size: int, n: int = 10, free_every: int = 5):
        import numpy as np

        self.samples = []
        for i in range(n):
            image, _ = _synthetic_image(size, seed=i)
            rng = np.random.default_rng(100 + i)
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
            cy, cx, ry, rx = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.15), rng.uniform(0.05, 0.15)
            tumor = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
            if free_every and i % free_every == free_every - 1:
                tumor[:] = False
            image = image.copy()
            image[tumor] = np.clip(image[tumor].astype(int) + 70, 0, 255).astype(np.uint8)
            self.samples.append((image, tumor))
        self.image_ids = range(n)
        self.image_info = [{"path": Path(f"synthetic{i}.png"), "name": f"synthetic{i}.png", "height": size,
                            "width": size, "tumor_free": not t.any()} for i, (_, t) in enumerate(self.samples)]
        self.problems = []

    def __len__(self):
        return len(self.samples)

    def load_image(self, i):
        return self.samples[i][0]

    def load_mask(self, i):
        import numpy as np

        m = self.samples[i][1]
        return (m[:, :, None].copy(), np.ones(1, np.int32)) if m.any() else (np.zeros(m.shape + (0,), bool), np.zeros(0, np.int32))


def _step_timer(steps: list, epochs: list | None = None, val: list | None = None):
    import keras

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self._t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            steps.append(time.perf_counter() - self._t)

        def on_epoch_begin(self, epoch, logs=None):
            self._e = time.perf_counter()
            if epochs is not None:
                epochs.append({"steps": []})
                steps.clear()

        def on_epoch_end(self, epoch, logs=None):  # after validation and the checkpoint
            if epochs is not None:
                epochs[-1].update(wall=time.perf_counter() - self._e, steps=list(steps))

        def on_test_begin(self, logs=None):
            self._v = time.perf_counter()

        def on_test_end(self, logs=None):
            if val is not None:
                val.append(time.perf_counter() - self._v)

    return Timer()


def _profiler_callback(first: int, count: int, logdir: str):
    """Traces train batches ``first`` .. ``first + count - 1`` of the first epoch into ``logdir``."""
    import keras
    import tensorflow as tf

    class Profile(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == first:
                tf.profiler.experimental.start(logdir)

        def on_train_batch_end(self, batch, logs=None):
            if batch == first + count - 1:
                tf.profiler.experimental.stop()

    return Profile()


def ours_train_preset(backbone: str, size: int, runs: int, warmup: int) -> dict:
    _tf_setup()
    t = time.perf_counter()
    from braintumor.mrcnn import MaskRCNN

    profile, k = OPTIONS["profile"], (int(OPTIONS["profile_steps"]) if OPTIONS["profile"] else 0)
    config = _preset_config(size).replace(STEPS_PER_EPOCH=warmup + runs + k, EPOCHS=1, LAYERS="all")
    steps: list[float] = []
    callbacks = [_step_timer(steps)]
    if profile:
        callbacks.append(_profiler_callback(warmup + runs, k, str(profile)))
    with tempfile.TemporaryDirectory() as logs:
        model = MaskRCNN(mode="training", config=config, model_dir=logs)
        build = time.perf_counter() - t
        aug = config.AUGMENTATION if OPTIONS["augment"] and config.AUGMENTATION else None
        model.train(_SyntheticSet(size), None, learning_rate=config.LEARNING_RATE, epochs=1, layers="all",
                    augmentation=aug, callbacks=callbacks, verbose=0)
    res = {"build_s": build, "warmup_s": steps[:warmup], "times_s": steps[warmup:warmup + runs],
           "params": int(model.keras_model.count_params()), "settings": _speed_settings(config, aug)}
    if profile:
        res["profile_steps_s"] = steps[warmup + runs:]
        res["profile"] = summarize_profile(profile)
    return res


def ours_epoch_preset(backbone: str, size: int, runs: int, warmup: int) -> dict:
    """Two epochs of ``runs`` steps; the second is timed whole (the first traces the graphs)."""
    _tf_setup()
    t = time.perf_counter()
    import statistics as st

    from braintumor.mrcnn import MaskRCNN

    preset = _preset_config(size)
    val_steps = max(1, round(runs * preset.VALIDATION_STEPS / preset.STEPS_PER_EPOCH))
    config = preset.replace(STEPS_PER_EPOCH=runs, VALIDATION_STEPS=val_steps, EPOCHS=2, LAYERS="all")
    steps: list[float] = []
    epochs: list[dict] = []
    val: list[float] = []
    with tempfile.TemporaryDirectory() as logs:
        model = MaskRCNN(mode="training", config=config, model_dir=logs)
        build = time.perf_counter() - t
        saves: list[float] = []
        save = model.save_weights

        def timed_save(*a, **k):  # the checkpoint written at every epoch's end
            t0 = time.perf_counter()
            save(*a, **k)
            saves.append(time.perf_counter() - t0)

        model.save_weights = timed_save
        aug = config.AUGMENTATION if OPTIONS["augment"] and config.AUGMENTATION else None
        model.train(_SyntheticSet(size), _SyntheticSet(size, n=4, free_every=0), learning_rate=config.LEARNING_RATE,
                    epochs=2, layers="all", augmentation=aug, callbacks=[_step_timer(steps, epochs, val)], verbose=0)
    last = epochs[-1]
    median = st.median(last["steps"])
    return {"build_s": build, "warmup_s": [epochs[0]["wall"]], "times_s": [last["wall"]],
            "params": int(model.keras_model.count_params()), "steps": len(last["steps"]), "val_steps": val_steps,
            "step_median_s": median, "steps_sum_s": sum(last["steps"]), "val_s": val[-1] if val else None,
            "checkpoint_s": saves[-1] if saves else None,
            "epoch_ratio": last["wall"] / (len(last["steps"]) * median), "settings": _speed_settings(config, aug)}


def _speed_settings(config, aug) -> dict:
    from braintumor.mrcnn.precision import compute_policy

    return {"NORM": config.NORM, "GN_IMPL": config.GN_IMPL, "PRECISION": config.PRECISION,
            "compute_policy": compute_policy(config), "INPUT_WORKERS": config.INPUT_WORKERS,
            "TRAIN_ROIS_PER_IMAGE": config.TRAIN_ROIS_PER_IMAGE, "POST_NMS_ROIS_TRAINING": config.POST_NMS_ROIS_TRAINING,
            "augmentation": bool(aug), "TF_XLA_FLAGS": os.environ.get("TF_XLA_FLAGS", "")}


def summarize_profile(logdir, top: int = 10) -> dict:
    """Top ops by self time in the newest ``*.xplane.pb`` under ``logdir`` (TensorFlow's profiler trace).

    Op events are the ``name:Type`` events of the executor threads (``tf_Compute``); an op's self
    time is its duration minus the op events nested in it on the same thread. Also: the time the
    step waited for input (``PrefetchConsume``), and the time spent making samples in Python
    (``PyFunc``, the generator of ``tf.data.Dataset.from_generator``)."""
    import collections

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = sorted(Path(logdir).glob("plugins/profile/*/*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not files:
        return {"error": f"no .xplane.pb under {logdir}"}
    space = xplane_pb2.XSpace()
    space.ParseFromString(files[-1].read_bytes())
    by_type, by_layer = collections.Counter(), collections.Counter()
    count = collections.Counter()
    input_wait = sample_making = steps_wall = 0.0
    for plane in space.planes:
        if not plane.name.startswith("/host"):
            continue
        for line in plane.lines:
            name = line.name
            events = sorted(((e.offset_ps, e.duration_ps, plane.event_metadata[e.metadata_id].name) for e in line.events))
            if name.startswith("tf_data_iterator_get_next"):
                input_wait += sum(d for _, d, n in events if n == "PrefetchConsume") / 1e12
            if name == "python":
                steps_wall += sum(d for _, d, n in events if n == "multi_step_on_iterator") / 1e12
            if name.startswith("tf_data"):
                sample_making += sum(d for _, d, n in events if n.startswith("PyFunc")) / 1e12
            if not name.startswith("tf_Compute"):
                continue
            stack: list[list] = []  # [end, name, time of nested ops, duration]
            ops = [(o, d, n) for o, d, n in events if ":" in n and "::" not in n]

            def close(upto):
                while stack and stack[-1][0] <= upto:
                    end, n, child, dur = stack.pop()
                    self_t = max(dur - child, 0) / 1e12
                    node, _, op_type = n.rpartition(":")
                    by_type[op_type] += self_t
                    count[op_type] += 1
                    by_layer[_layer_of(node)] += self_t
                    if stack:
                        stack[-1][2] += dur

            for o, d, n in ops:
                close(o)
                stack.append([o + d, n, 0, d])
            close(float("inf"))
    total = sum(by_type.values()) or 1.0
    return {"file": str(files[-1]), "op_self_s": total, "steps_wall_s": steps_wall, "input_wait_s": input_wait,
            "sample_making_s": sample_making,
            "top_op_types": [(k, v, v / total, count[k]) for k, v in by_type.most_common(top)],
            "top_layers": [(k, v, v / total) for k, v in by_layer.most_common(top)]}


def _layer_of(node: str) -> str:
    """``StatefulPartitionedCall/gradient_tape/mask_rcnn_1/res4a_branch2b_1/convolution/...`` ->
    ``res4a_branch2b (backward)``; ops outside the model's layers (optimizer, losses) by their scope."""
    import re

    parts = node.split("/")
    direction = "backward" if "gradient_tape" in parts else "forward"
    for i, p in enumerate(parts):
        if p.startswith("mask_rcnn") and i + 1 < len(parts):
            layer = re.sub(r"_\d+$", "", parts[i + 1])
            if layer.startswith("rpn_model") and i + 2 < len(parts):
                layer = "rpn_model/" + re.sub(r"_\d+$", "", parts[i + 2])
            return f"{layer} ({direction})"
    scope = [p for p in parts if p not in ("StatefulPartitionedCall", "gradient_tape")]
    top = re.sub(r"_[0-9]+$", "", scope[0]) if scope else node
    if top.lower() == "sgd":
        return "SGD update (optimizer)"
    # ops of train_step itself: the L2 weight-decay term (Square, AddN; Mul backward), the loss sum
    return f"train_step/{top} ({direction})"


def format_profile(name: str, prof: dict) -> str:
    if "error" in prof:
        return f"profile of {name}: {prof['error']}"
    lines = [f"profile of {name} ({prof['file']}): op self time {prof['op_self_s']:.2f} s over "
             f"{prof['steps_wall_s']:.2f} s of steps; waited for input {prof['input_wait_s']:.2f} s; "
             f"sample making (Python generator) {prof['sample_making_s']:.2f} s",
             "", "| op type | self time (s) | share | calls |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v:.3f} | {f:.1%} | {c} |" for k, v, f, c in prof["top_op_types"]]
    lines += ["", "| layer (direction) | self time (s) | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.3f} | {f:.1%} |" for k, v, f in prof["top_layers"]]
    return "\n".join(lines)


def _keras_resnet(backbone: str, size: int):
    import keras

    build = keras.applications.ResNet50 if backbone == "resnet50" else keras.applications.ResNet101
    return build(weights=None, include_top=False, input_shape=(size, size, 3))


def keras_forward(backbone: str, size: int, runs: int, warmup: int) -> dict:
    _tf_setup()
    t = time.perf_counter()
    import numpy as np
    import tensorflow as tf

    net = _keras_resnet(backbone, size)
    build = time.perf_counter() - t
    x = tf.constant(np.random.default_rng(0).normal(0, 1, (1, size, size, 3)).astype(np.float32))
    fn = tf.function(lambda v: net(v, training=False))
    warm, times, _ = _timed(lambda: fn(x).numpy(), runs, warmup)
    return {"build_s": build, "warmup_s": warm, "times_s": times, "params": int(net.count_params())}


def keras_train(backbone: str, size: int, runs: int, warmup: int) -> dict:
    _tf_setup()
    t = time.perf_counter()
    import keras
    import numpy as np
    import tensorflow as tf

    net = _keras_resnet(backbone, size)
    for layer in net.layers:  # frozen BN, as our TRAIN_BN = False
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    opt = keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9, global_clipnorm=5.0)
    build = time.perf_counter() - t
    x = tf.constant(np.random.default_rng(0).normal(0, 1, (1, size, size, 3)).astype(np.float32))
    variables = net.trainable_variables

    @tf.function
    def step(v):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(net(v, training=True)))
        opt.apply(tape.gradient(loss, variables), variables)
        return loss

    warm, times, _ = _timed(lambda: float(step(x)), runs, warmup)
    return {"build_s": build, "warmup_s": warm, "times_s": times, "params": int(net.count_params())}


def _torch_model(size: int):
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    # the same sizes and output limits as our benchmark config: 512 in, 2 classes, any score, <= 20 detections
    return torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=2, min_size=size, max_size=size,
        box_score_thresh=0.0, box_detections_per_img=20)


def torch_detect(backbone: str, size: int, runs: int, warmup: int) -> dict:
    t = time.perf_counter()
    import numpy as np
    import torch

    model = _torch_model(size).eval()
    build = time.perf_counter() - t
    image, _ = _synthetic_image(size)

    def run():  # uint8 HWC -> float CHW in [0, 1], as a torchvision user would feed it
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
            out = model([x])[0]
            return {k: v.numpy() for k, v in out.items()}

    warm, times, res = _timed(run, runs, warmup)
    return {"build_s": build, "warmup_s": warm, "times_s": times, "detections": int(len(res["labels"])),
            "params": int(sum(p.numel() for p in model.parameters())), "torch_threads": torch.get_num_threads()}


def torch_train(backbone: str, size: int, runs: int, warmup: int) -> dict:
    t = time.perf_counter()
    import numpy as np
    import torch

    model = _torch_model(size).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    build = time.perf_counter() - t
    image, mask = _synthetic_image(size)
    ys, xs = np.nonzero(mask)
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    target = {"boxes": torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32),
              "labels": torch.tensor([1]), "masks": torch.from_numpy(mask[None].astype(np.uint8))}

    def step():
        losses = model([x], [target])
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return float(loss)

    warm, times, _ = _timed(step, runs, warmup)
    return {"build_s": build, "warmup_s": warm, "times_s": times,
            "params": int(sum(p.numel() for p in model.parameters())), "torch_threads": torch.get_num_threads()}


# =============================================================================
# parent: run workers, collect, report
# =============================================================================
def ensure_bench_venv() -> bool:
    """Create ``.venv-bench`` with torch + torchvision if it is missing (a ~5.5 GB install). True if usable."""
    if not BENCH_PY.exists():
        print(f"creating {BENCH_VENV} (torch + torchvision from {REQUIREMENTS.name}, ~5.5 GB; once) ...", flush=True)
        base = "python3.11" if subprocess.run(["which", "python3.11"], capture_output=True).returncode == 0 else sys.executable
        subprocess.run([base, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run([str(BENCH_PY), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    ok = subprocess.run([str(BENCH_PY), "-c", "import torch, torchvision"], capture_output=True).returncode == 0
    if not ok:
        print(f"warning: {BENCH_PY} cannot import torch/torchvision; torchvision rows skipped", flush=True)
    return ok


def run_child(name: str, args) -> dict:
    """Run one benchmark in a fresh process; add its peak RSS (``ru_maxrss`` from ``os.wait4``)."""
    interp, _, _, kind = BENCHES[name]
    python = str(BENCH_PY) if interp == "torch" else sys.executable
    runs = {"train": args.train_runs, "epoch": args.epoch_steps}.get(kind, args.runs)
    warmup = {"train": args.train_warmup, "epoch": 0}.get(kind, args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        out, log = Path(tmp) / "out.json", Path(tmp) / "log.txt"
        cmd = [python, str(Path(__file__).resolve()), "--worker", name, "--size", str(args.size),
               "--runs", str(runs), "--warmup", str(warmup), "--worker-out", str(out)]
        cmd += [a for pair in (args.set or ()) for a in ("--set", pair)]
        if args.no_augment:
            cmd.append("--no-augment")
        if args.profile and name == "ours-train-preset":
            cmd += ["--profile", str(Path(args.profile).resolve()), "--profile-steps", str(args.profile_steps)]
        env = dict(os.environ)
        if args.xla_auto and name.startswith("ours-"):  # XLA auto-clustering: must be set before TensorFlow starts
            env["TF_XLA_FLAGS"] = (env.get("TF_XLA_FLAGS", "") + " --tf_xla_auto_jit=2 --tf_xla_cpu_global_jit").strip()
        t = time.perf_counter()
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        if proc.returncode != 0 or not out.exists():
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            return {"error": f"exit {proc.returncode}", "log_tail": tail, "wall_s": wall}
        res = json.loads(out.read_text())
    res["median_s"] = statistics.median(res["times_s"]) if res["times_s"] else None
    res["peak_rss_mb"] = usage.ru_maxrss / 1024.0  # Linux: kilobytes
    res["wall_s"] = wall
    return res


def machine_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram_gb"] = round(int(line.split()[1]) / 1024 ** 2, 1)
        info["loadavg_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        pass
    try:
        v = subprocess.run([sys.executable, "-c", "import tensorflow as tf, keras; print(tf.__version__, keras.__version__)"],
                           capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout.split()
        info["tensorflow"], info["keras"] = v[-2], v[-1]
    except (IndexError, OSError):
        pass
    if BENCH_PY.exists():
        v = subprocess.run([str(BENCH_PY), "-c", "import torch, torchvision; print(torch.__version__, torchvision.__version__)"],
                           capture_output=True, text=True).stdout.split()
        if len(v) == 2:
            info["torch"], info["torchvision"] = v
    return info


def compute_ratios(results: dict) -> list[dict]:
    out = []
    for label, num, den, aim in RATIOS:
        a, b = results.get(num, {}).get("median_s"), results.get(den, {}).get("median_s")
        if a is None or b is None:
            continue
        r = a / b
        out.append({"label": label, "numerator": num, "denominator": den, "ratio": r, "aim_max": aim,
                    "meets_aim": None if aim is None else r <= aim})
    epoch = results.get("ours-epoch-preset", {})
    if "epoch_ratio" in epoch:
        out.append({"label": f"whole epoch / ({epoch['steps']} steps x median step), preset", "numerator": "ours-epoch-preset",
                    "denominator": "ours-epoch-preset steps", "ratio": epoch["epoch_ratio"], "aim_max": 1.15,
                    "meets_aim": epoch["epoch_ratio"] <= 1.15})
    return out


def format_table(results: dict, ratios: list[dict]) -> str:
    lines = ["| benchmark | median (s) | min (s) | runs | peak RSS (MB) | build (s) | params (M) | notes |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | | |")
            continue
        notes = []
        if "detections" in r:
            notes.append(f"{r['detections']} detections")
        if "torch_threads" in r:
            notes.append(f"{r['torch_threads']} torch threads")
        if "epoch_ratio" in r:
            notes.append(f"epoch of {r['steps']} steps + {r['val_steps']} val batches; median step {r['step_median_s']:.3f} s, "
                         f"steps {r['steps_sum_s']:.1f} s, validation {r['val_s'] or 0:.1f} s, checkpoint {r.get('checkpoint_s') or 0:.1f} s, "
                         f"other {r['times_s'][0] - r['steps_sum_s'] - (r['val_s'] or 0) - (r.get('checkpoint_s') or 0):.1f} s")
        if "settings" in r:
            st = r["settings"]
            notes.append(f"{st['NORM']}/{st['GN_IMPL']}, {st['compute_policy']}, {st['INPUT_WORKERS']} input workers, "
                         f"{'augmented' if st['augmentation'] else 'no augmentation'}"
                         + (", XLA auto-clustering" if "xla_auto_jit" in st["TF_XLA_FLAGS"] else ""))
        lines.append(f"| {name} | {r['median_s']:.3f} | {min(r['times_s']):.3f} | {len(r['times_s'])} | "
                     f"{r['peak_rss_mb']:.0f} | {r['build_s']:.1f} | {r['params'] / 1e6:.1f} | {', '.join(notes)} |")
    lines += ["", "| ratio | value | aim |", "|---|---:|---|"]
    for q in ratios:
        aim = "" if q["aim_max"] is None else f"≤ {q['aim_max']:g}: {'met' if q['meets_aim'] else 'NOT met'}"
        lines.append(f"| {q['label']} | {q['ratio']:.2f} | {aim} |")
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def update_readme(path: Path, summary: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else f"# Benchmarks\n\n{README_START}\n{README_END}\n"
    if README_START not in text or README_END not in text:
        text += f"\n{README_START}\n{README_END}\n"
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    write_atomic(path, f"{head}{README_START}\n{summary}\n{README_END}{tail}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    p.add_argument("--runs", type=int, default=10, help="timed detect/forward calls (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before (default 2)")
    p.add_argument("--train-runs", type=int, default=5, help="timed train steps (default 5)")
    p.add_argument("--train-warmup", type=int, default=2, help="untimed train steps before (default 2)")
    p.add_argument("--only", nargs="+", choices=list(BENCHES), help="run only these benchmarks")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 runs, 1 warm-up, 1 train step")
    p.add_argument("--no-torch", action="store_true", help="skip the torchvision rows (no .venv-bench)")
    p.add_argument("--no-write", action="store_true", help="print only; do not write results.json / README.md")
    p.add_argument("--out-dir", type=Path, default=HERE, help="where results.json and README.md go")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="config setting for the ours-* rows, e.g. --set NORM=gn --set TRAIN_BN=true (repeatable)")
    p.add_argument("--epoch-steps", type=int, default=20, help="steps per epoch of ours-epoch-preset (default 20; 3 with --quick)")
    p.add_argument("--no-augment", action="store_true", help="the preset rows without the preset's augmentation")
    p.add_argument("--xla-auto", action="store_true",
                   help="run our rows with XLA auto-clustering (TF_XLA_FLAGS=--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit)")
    p.add_argument("--profile", metavar="DIR", help="ours-train-preset also traces --profile-steps steps into DIR "
                   "(TensorFlow profiler; open with TensorBoard's profile plugin) and prints the top ops")
    p.add_argument("--profile-steps", type=int, default=3, help="steps traced with --profile (default 3)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    OVERRIDES.update(_parse_overrides(args.set))
    OPTIONS.update(augment=not args.no_augment, profile=args.profile, profile_steps=args.profile_steps)

    if args.worker:
        _, fn, backbone, _ = BENCHES[args.worker]
        res = globals()[fn](backbone, args.size, args.runs, args.warmup)
        Path(args.worker_out).write_text(json.dumps(res))
        return 0

    if args.quick:
        args.runs, args.warmup, args.train_runs, args.train_warmup = 2, 1, 1, 1
        args.epoch_steps = min(args.epoch_steps, 3)
    names = args.only or list(BENCHES)
    if any(BENCHES[n][0] == "torch" for n in names):
        if args.no_torch or not ensure_bench_venv():
            names = [n for n in names if BENCHES[n][0] != "torch"]
    info = machine_info()
    print(f"machine: {info.get('cpu', '?')}, {info.get('cpus')} CPUs, {info.get('ram_gb', '?')} GB RAM, "
          f"load {' '.join(info.get('loadavg_at_start', []))}", flush=True)
    results = {}
    for name in names:
        print(f"  {name} ...", end=" ", flush=True)
        r = run_child(name, args)
        results[name] = r
        if "error" in r:
            print(f"FAILED ({r['error']})\n    " + "\n    ".join(r["log_tail"]), flush=True)
        else:
            print(f"median {r['median_s']:.3f} s, peak RSS {r['peak_rss_mb']:.0f} MB ({r['wall_s']:.0f} s)", flush=True)
    ratios = compute_ratios(results)
    table = format_table(results, ratios)
    print()
    print(table)
    for name, r in results.items():
        if "profile" in r:
            print()
            print(format_profile(name, r["profile"]))
    if args.no_write:
        return 0 if all("error" not in r for r in results.values()) else 1
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    settings = {"overrides": OVERRIDES, "augment": not args.no_augment, "xla_auto": args.xla_auto,
                "epoch_steps": args.epoch_steps, "size": args.size, "runs": args.runs, "warmup": args.warmup, "train_runs": args.train_runs,
                "train_warmup": args.train_warmup, "benchmarks": names}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out_dir / "results.json", json.dumps(
        {"date": stamp, "machine": info, "settings": settings, "results": results, "ratios": ratios}, indent=2) + "\n")
    machine = (f"Measured {stamp} on {info.get('cpu', '?')} ({info.get('cpus')} CPUs, {info.get('ram_gb', '?')} GB RAM, "
               f"load average at start {' / '.join(info.get('loadavg_at_start', []))}); Python {info.get('python')}, "
               f"TensorFlow {info.get('tensorflow', '?')}, Keras {info.get('keras', '?')}"
               + (f", torch {info['torch']}, torchvision {info['torchvision']}" if "torch" in info else "")
               + (f". Settings changed for our rows: {OVERRIDES}" if OVERRIDES else "")
               + f". Image {args.size}x{args.size}, {args.runs} timed calls after {args.warmup} warm-up "
               f"({args.train_runs} / {args.train_warmup} for train steps).")
    update_readme(args.out_dir / "README.md", machine + "\n\n" + table)
    print(f"\nwrote {args.out_dir / 'results.json'} and {args.out_dir / 'README.md'}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
