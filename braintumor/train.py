"""``braintumor train``: a whole training run from a preset, logged, checkpointed, resumable.

A run folder ``logs/<name><YYYYMMDDTHHMM>/`` receives:

- ``config.toml`` — every setting the run used;
- ``mask_rcnn_<name>_<epoch:04d>.h5`` — after every epoch, written atomically;
- ``history.csv`` — per epoch: the five losses and their total, for train and val
  (``val_*``), the learning rate, wall time, and (``EVAL_EACH_EPOCH``) val Dice and mAP@0.5;
- ``tensorboard/`` — TensorBoard event files;
- ``loss_curves.png`` — the losses per epoch, redrawn after every epoch.

``--init last`` continues the newest run of the preset's NAME from its last
checkpoint; epochs count on from there and the staged schedule resumes at the
right stage; ``--stop-after N`` ends a run cleanly after epoch N so that a long schedule
can be trained in sittings. Ctrl-C saves the weights as the checkpoint of the epoch in progress
(it is then counted as done) and exits cleanly; a killed process loses at most
the epoch in progress, never a checkpoint (they are written to a temp file and renamed).
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.config import Config
from braintumor.errors import BrainTumorError
from braintumor.paths import read_history, resolve_data_dir, resolve_preset

LOSS_NAMES = ("loss", "rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss", "mrcnn_mask_loss")


# ----------------------------------------------------------------------------- config
def build_config(args) -> Config:
    """The preset with the command line's overrides applied (and validated)."""
    overrides: dict[str, Any] = {}
    if args.steps is not None:
        overrides["STEPS_PER_EPOCH"] = args.steps
    if getattr(args, "val_steps", None) is not None:
        overrides["VALIDATION_STEPS"] = args.val_steps
    if args.name:
        overrides["NAME"] = args.name
    if args.init:
        overrides["INIT"] = args.init
    if args.tumor_free:
        overrides["TUMOR_FREE_DIRS"] = list(args.tumor_free)
    if args.tumor_free_fraction is not None:
        overrides["TUMOR_FREE_FRACTION"] = args.tumor_free_fraction
    config = Config.from_toml(resolve_preset(args.config), **overrides)
    if args.layers:
        config = config.replace(LAYERS=args.layers, SCHEDULE=[])
    if args.epochs is not None:
        config = config.replace(EPOCHS=args.epochs, SCHEDULE=fit_schedule(config.SCHEDULE, args.epochs))
    if config.TUMOR_FREE_DIRS and config.TUMOR_FREE_FRACTION == 0:
        config = config.replace(TUMOR_FREE_FRACTION=0.25)
    return config


def fit_schedule(schedule: list[dict], epochs: int) -> list[dict]:
    """Cut (or stretch the last stage of) a staged schedule so it spans ``epochs`` epochs."""
    out, total = [], 0
    for stage in schedule:
        if total >= epochs:
            break
        take = min(stage["epochs"], epochs - total)
        out.append({**stage, "epochs": take})
        total += take
    if out and total < epochs:
        out[-1] = {**out[-1], "epochs": out[-1]["epochs"] + epochs - total}
    return out


def stage_plan(config: Config, start_epoch: int, stop_after: int | None = None) -> list[dict]:
    """The stages still to run from ``start_epoch``, each with its cumulative end epoch ``until``.

    ``stop_after``: run only up to that epoch of the schedule this time (a long run split over
    several sittings); the learning-rate schedule still spans the preset's ``EPOCHS``."""
    plan, end = [], 0
    for stage in config.schedule():
        begin, end = end, end + stage["epochs"]
        until = end if stop_after is None else min(end, stop_after)
        if until > max(start_epoch, begin):
            plan.append({**stage, "until": until})
    return plan


# ----------------------------------------------------------------------------- data
def mix_tumor_free(tumor: Any, free: Any, fraction: float) -> Any:
    """A dataset of ``tumor``'s images plus the whole pool of tumor-free images, of which each
    training pass draws enough to make up ``fraction`` of the pass.

    The tumor-free images carry no instances (empty targets: they teach the RPN and
    the classifier what background looks like). The dataset's ``free_per_pass``
    tells :func:`braintumor.mrcnn.inputs.pass_orders` how many to draw per pass; the
    draws go through the pool without replacement before any image comes back, so a
    long run sees every tumor-free image, not one fixed subset. The draws follow the
    training seed.
    """
    from braintumor.data import Dataset

    if fraction <= 0 or len(free) == 0:
        return tumor
    want = max(1, int(round(fraction / (1.0 - fraction) * len(tumor))))
    mixed = Dataset(tumor.class_names, source=tumor.source, format="mixed")
    for info in tumor.image_info:
        mixed.add_image(info["path"], info["height"], info["width"], info["shapes"])
    for info in free.image_info:
        mixed.add_image(info["path"], info["height"], info["width"], [], tumor_free=True)
    mixed.free_per_pass = want
    mixed.problems = list(tumor.problems) + list(free.problems)
    return mixed


def source_dir(source: dict, data_dir: Path, overrides: dict[str, str] | None = None) -> Path:
    """The folder of one ``SOURCES`` entry: ``--source NAME=DIR``, else its ``DIR`` (relative to the
    parent of the ``--data`` folder, where ``../shared/data`` keeps its siblings), else that parent / NAME."""
    if overrides and source["NAME"] in overrides:
        return Path(overrides[source["NAME"]])
    d = Path(source.get("DIR") or source["NAME"])
    return d if d.is_absolute() else Path(data_dir).parent / d


def per_pass_counts(weights: list[float], total: int) -> list[int]:
    """Split ``total`` samples by ``weights`` into integers that sum to ``total`` (largest remainders)."""
    w = np.asarray(weights, dtype=float) / float(np.sum(weights))
    raw = w * total
    counts = np.floor(raw).astype(int)
    for j in np.argsort(-(raw - counts), kind="stable")[: total - int(counts.sum())]:
        counts[j] += 1
    return [int(c) for c in counts]


def with_categories(ds: Any, categories: list[str], where: str) -> Any:
    """The images of ``ds`` holding an annotation of one of ``categories`` (the COCO category names
    the loader records per image, before ``CLASS_MAP``; case-insensitive), as a new Dataset.
    A clear error when none is left: a misspelt category must not silently empty a source."""
    wanted = {c.lower() for c in categories}
    keep = [info for info in ds.image_info if wanted & {c.lower() for c in info.get("categories", [])}]
    if not keep:
        raise BrainTumorError(f"{where}: no image with an annotation of category {', '.join(sorted(wanted))}")
    return ds.subset(keep)


def combine_sources(parts: list[tuple[str, Any, float]], samples_per_pass: int, class_names) -> Any:
    """One training dataset from several ``(name, dataset, weight)`` sources: every pass (one
    epoch of ``samples_per_pass`` samples) draws :func:`per_pass_counts` images from each
    source, cycling through each source's images without replacement
    (:func:`braintumor.mrcnn.inputs.pass_orders`). Images keep a ``source`` tag."""
    from braintumor.data import Dataset

    out = Dataset(class_names, source=None, format="sources")
    pools = []
    counts = per_pass_counts([w for _, _, w in parts], samples_per_pass)
    for (name, ds, _w), k in zip(parts, counts):
        start = len(out)
        for info in ds.image_info:
            extra = {kk: v for kk, v in info.items() if kk not in ("id", "path", "name", "height", "width", "shapes")}
            out.add_image(info["path"], info["height"], info["width"], info["shapes"], **{**extra, "source": name})
        pools.append((list(range(start, len(out))), k))
        out.problems += list(ds.problems)
    out.pass_pools = pools
    out.source_names = [name for name, _, _ in parts]
    return out


def describe_training_set(train: Any) -> str:
    """``"202 images"``, ``"202 tumor images + 50 of 529 tumor-free images per pass"``, or per source
    ``"brain_tumor_data 25 of 202, figshare 55 of 1424, tumor_free 20 of 529 images per pass"``."""
    pools = getattr(train, "pass_pools", None)
    if pools:
        names = getattr(train, "source_names", [f"source {j}" for j in range(len(pools))])
        return ", ".join(f"{n} {k} of {len(ids)}" for n, (ids, k) in zip(names, pools)) + " images per pass"
    free = sum(1 for i in train.image_info if i.get("tumor_free"))
    per_pass = getattr(train, "free_per_pass", None)
    if not free or per_pass is None:
        return f"{len(train)} images"
    return f"{len(train) - free} tumor images + {per_pass} of {free} tumor-free images per pass"


def load_training_data(config: Config, data_dir: Path, source_overrides: dict[str, str] | None = None):
    """``(train, val, tumor_free_held_out)`` datasets for a run: ``config.SOURCES`` when set
    (each folder from :func:`source_dir`), else ``data_dir``'s train split mixed with ``TUMOR_FREE_DIRS``;
    val is always ``data_dir``'s val split (the loss curve stays comparable between presets)."""
    from braintumor.data import load_split
    from braintumor.tumor_free import load_tumor_free, with_slices, without_slices

    val = load_split(data_dir, "val", class_names=config.CLASS_NAMES, class_map=config.CLASS_MAP)
    if config.SOURCES:
        parts, free_dirs = [], []
        for src in config.SOURCES:
            folder = source_dir(src, data_dir, source_overrides)
            if not folder.is_dir() and not (src["KIND"] == "tumor_free" and config.TUMOR_FREE_DIRS):
                raise BrainTumorError(f"{folder}: folder of training source {src['NAME']!r} not found "
                                      f"(pass --source {src['NAME']}=DIR)")
            if src["KIND"] == "tumor_free":
                folders = [folder]
                if config.TUMOR_FREE_DIRS and src["NAME"] not in (source_overrides or {}):
                    folders = [Path(d) for d in config.TUMOR_FREE_DIRS]  # --tumor-free DIR wins
                ds = load_tumor_free(folders, "train", config.CLASS_NAMES)
                if src.get("EXCLUDE_SLICES"):
                    ds = without_slices(ds, src["EXCLUDE_SLICES"], f"training source {src['NAME']!r}")
                if src.get("SLICES"):
                    ds = with_slices(ds, src["SLICES"], f"training source {src['NAME']!r}")
                free_dirs += [str(f) for f in folders]
            else:
                ds = load_split(folder, src.get("SPLIT", "train"), class_names=config.CLASS_NAMES,
                                class_map=config.CLASS_MAP)
                if src.get("CATEGORIES"):
                    ds = with_categories(ds, src["CATEGORIES"], f"{folder} (training source {src['NAME']!r})")
            if ds.errors:
                raise BrainTumorError(f"{ds.errors[0]} ({len(ds.errors)} errors; run: braintumor data check)")
            parts.append((src["NAME"], ds, float(src["WEIGHT"])))
        train = combine_sources(parts, config.STEPS_PER_EPOCH * config.BATCH_SIZE, config.CLASS_NAMES)
        held = load_tumor_free(free_dirs, "held-out", config.CLASS_NAMES) if free_dirs else None
        return train, val, held
    train = load_split(data_dir, "train", class_names=config.CLASS_NAMES, class_map=config.CLASS_MAP)
    for ds in (train, val):
        if ds.errors:
            raise BrainTumorError(f"{ds.errors[0]} ({len(ds.errors)} errors; run: braintumor data check)")
    held = None
    if config.TUMOR_FREE_DIRS:
        free = load_tumor_free(config.TUMOR_FREE_DIRS, "train", config.CLASS_NAMES)
        held = load_tumor_free(config.TUMOR_FREE_DIRS, "held-out", config.CLASS_NAMES)
        train = mix_tumor_free(train, free, config.TUMOR_FREE_FRACTION)
    return train, val, held


# ----------------------------------------------------------------------------- callbacks
def _keras_callbacks(run_dir: Path, model, config: Config, val_dataset, started: float):
    import keras

    class HistoryCSV(keras.callbacks.Callback):
        """Appends one row per epoch to ``history.csv`` (and keeps earlier rows when resuming)."""

        def __init__(self):
            super().__init__()
            self.path = run_dir / "history.csv"
            self.t0 = time.time()

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            row = {"epoch": epoch + 1}
            for k in LOSS_NAMES:
                row[k] = logs.get(k)
                row[f"val_{k}"] = logs.get(f"val_{k}")
            row["grad_norm"] = logs.get("grad_norm")  # before the clip (epoch mean)
            row["clipped"] = logs.get("clipped")  # share of the epoch's steps the clip shortened
            row["learning_rate"] = _current_lr(model)
            row["epoch_seconds"] = round(time.time() - self.t0, 1)
            row["wall_seconds"] = round(time.time() - started, 1)
            if config.EVAL_EACH_EPOCH and val_dataset is not None:
                row.update(_quick_eval(model, config, val_dataset, epoch + 1))
            append_history(self.path, row)
            plot_history(self.path, run_dir / "loss_curves.png")

    class EpochTracker(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            model.epoch_in_progress = epoch + 1

    cbs = [EpochTracker(), HistoryCSV()]
    try:
        cbs.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), write_graph=False,
                                               update_freq="epoch", profile_batch=0))
    except Exception:  # pragma: no cover - TensorBoard missing: the CSV still has everything
        pass
    return cbs


def _current_lr(model) -> float | None:
    try:
        opt = model.keras_model.optimizer
        lr = opt.learning_rate
        if callable(lr) and not hasattr(lr, "numpy"):
            lr = lr(opt.iterations)
        return float(np.asarray(lr))
    except Exception:
        return None


def _quick_eval(model, config: Config, val_dataset, epoch: int) -> dict:
    """Val Dice and mAP@0.5 of the checkpoint just written (an inference model sharing its weights by name)."""
    from braintumor.evaluate import evaluate_dataset
    from braintumor.mrcnn import MaskRCNN

    ckpt = model.checkpoint_path_for(epoch)
    if not hasattr(model, "_eval_model"):
        model._eval_model = MaskRCNN("inference", config.replace(IMAGES_PER_GPU=1, GPU_COUNT=1,
                                                                 DETECTION_MIN_CONFIDENCE=0.05),
                                     model_dir=model.model_dir)
    model._eval_model.load_weights(str(ckpt), by_name=True)
    res = evaluate_dataset(model._eval_model, val_dataset, config.DETECTION_MIN_CONFIDENCE, progress=False)
    return {"val_dice": res["segmentation"]["dice_mean"], "val_map50": res["coco"]["segm"]["map50"]}


def append_history(path: Path, row: dict) -> None:
    """Append ``row`` to the CSV at ``path``, rewriting it atomically (header from the union of keys)."""
    rows = read_history(path)
    rows = [r for r in rows if int(r["epoch"]) < int(row["epoch"])] + [{k: ("" if v is None else v) for k, v in row.items()}]
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def plot_history(csv_path: Path, png_path: Path) -> None:
    """Draw every loss (train solid, val dashed) against the epoch into ``png_path`` (atomically)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    rows = read_history(csv_path)
    if not rows:
        return
    fig = Figure(figsize=(10, 6))
    axes = fig.subplots(2, 3).ravel()
    epochs = [int(r["epoch"]) for r in rows]
    for ax, name in zip(axes, LOSS_NAMES):
        for key, style in ((name, "-o"), (f"val_{name}", "--s")):
            ys = [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows]
            if not np.all(np.isnan(ys)):
                ax.plot(epochs, ys, style, label="val" if key.startswith("val_") else "train", ms=3)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, png_path)


# ----------------------------------------------------------------------------- run
def tf_config_workers(value: str | None = None) -> int:
    """How many machines ``$TF_CONFIG`` (or ``value``) names: its cluster's chief + workers; 0 when unset."""
    import json

    value = os.environ.get("TF_CONFIG", "") if value is None else value
    if not value.strip():
        return 0
    try:
        cluster = json.loads(value).get("cluster") or {}
        return sum(len(cluster.get(role) or []) for role in ("chief", "worker"))
    except (ValueError, AttributeError, TypeError):
        raise BrainTumorError("TF_CONFIG: not JSON of the form {\"cluster\": {\"worker\": [\"host:port\", ...]}, "
                              "\"task\": {\"type\": \"worker\", \"index\": N}}") from None


def _strategy(config: Config):
    """The distribution strategy of a run, or None for one device.

    - ``$TF_CONFIG`` naming more than one machine: ``MultiWorkerMirroredStrategy``
      (every machine runs the same command with its own ``task.index``; each contributes
      all its GPUs, or its CPU, and the gradients are all-reduced across machines);
    - else ``GPU_COUNT > 1``: ``MirroredStrategy`` over that many local devices (GPUs, else logical CPUs);
    - else None.
    """
    if tf_config_workers() > 1:
        import tensorflow as tf

        class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
            """TensorFlow's, with the two reductions Keras 3's ``fit`` asks of it made to work
            (keras-team/keras#20585): a nested value (its first ``(x, y)`` batch) is reduced leaf
            by leaf, and a scalar (every loss it logs) across replicas only (``axis=0`` has no meaning there)."""

            def reduce(self, reduce_op, value, axis):
                parent = super()

                def one(v):
                    local = self.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v
                    scalar = axis is not None and getattr(getattr(local, "shape", None), "rank", None) == 0
                    return parent.reduce(reduce_op, v, None if scalar else axis)

                return tf.nest.map_structure(one, value)

        # created before any other TensorFlow op: collectives are configured at start-up
        return MultiWorkerMirroredStrategy()
    if config.GPU_COUNT <= 1:
        return None
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) < config.GPU_COUNT:
        raise BrainTumorError(f"GPU_COUNT is {config.GPU_COUNT} but only {len(devices)} device(s) are visible")
    return tf.distribute.MirroredStrategy(devices[: config.GPU_COUNT])


def initialise(model, config: Config, init: str, logs: Path) -> str:
    """Apply ``INIT`` (random, imagenet, coco, last or a path) to a training model; returns what was done."""
    if init == "random":
        return "random initialisation"
    if init == "imagenet":
        report = model.load_imagenet_weights()
        return f"ImageNet backbone: {report}"
    if init == "coco":
        path = Path(os.environ.get("MASK_RCNN_COCO_WEIGHTS", logs / "mask_rcnn_coco.h5"))
        if not path.is_file():
            raise BrainTumorError(
                f"{path}: COCO weights not found; download mask_rcnn_coco.h5 (Matterport release v2.0) "
                "there or set $MASK_RCNN_COCO_WEIGHTS")
        report = model.load_weights(str(path), by_name=True,
                                    exclude=["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"])
        model.set_log_dir()  # a new run, not a continuation of the COCO file
        return f"COCO weights from {path}: {report}"
    if init == "last":
        path = model.find_last()
        report = model.load_weights(str(path), by_name=True)
        return f"resuming {path} at epoch {model.epoch}: {report}"
    path = Path(init)
    if not path.is_file():
        raise BrainTumorError(f"{path}: weights file not found (--init takes random, imagenet, coco, last or a path)")
    from braintumor.release import is_release, load_model_weights

    report = load_model_weights(model, path)
    if is_release(path):  # a released model (float16 storage, shards): a new run starts from its weights
        model.set_log_dir()
        return f"weights of the released model {path}: {report}"
    if not str(path.resolve()).startswith(str(Path(logs).resolve())):
        model.set_log_dir()
    return f"weights from {path}: {report}"


def live_curves_callback():
    """A keras callback that shows the run's ``loss_curves.png`` in a notebook after every epoch."""
    import keras

    class LiveCurves(keras.callbacks.Callback):
        run_dir: Path | None = None

        def on_epoch_end(self, epoch, logs=None):
            from IPython.display import Image as IPImage, clear_output, display

            png = self.run_dir / "loss_curves.png" if self.run_dir else None
            if png is not None and png.is_file():
                clear_output(wait=True)
                display(IPImage(filename=str(png)))

    return LiveCurves()


def record_resumed_config(path: Path, config: Config, epoch: int) -> list[str]:
    """A run resumed with changed settings (a longer schedule, another precision...): ``path``
    (the run's ``config.toml``) then holds the settings in force from ``epoch + 1`` on, and the
    earlier ones move to ``config_until_<epoch>.toml`` beside it. Returns the changes,
    ``"KEY old -> new"`` (``INIT`` is not a change: resuming sets it to ``last``)."""
    try:
        old = Config.from_toml(path).to_dict()
    except Exception as err:  # an unreadable record is kept aside, never lost
        old, changed = None, [f"unreadable earlier config ({err})"]
    new = config.to_dict()
    if old is not None:
        changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                   if k != "INIT" and old.get(k) != new.get(k)]
    if changed:
        keep = path.with_name(f"config_until_{epoch:04d}.toml")
        if not keep.exists():
            os.replace(path, keep)
        config.save(path)
    return changed


def write_data_summary(path: Path, train: Any, val: Any, held: Any, data_dir: Path) -> None:
    """``data.json`` of a run: its training sources with image counts and per-pass draws, val and
    the held-out tumor-free slices (what a model card needs to say what the model was trained on)."""
    from braintumor.data import write_json_atomic

    pools = getattr(train, "pass_pools", None)
    if pools:
        names = getattr(train, "source_names", [])
        sources = []
        for name, (ids, k) in zip(names, pools):
            infos = [train.image_info[i] for i in ids]
            folder = str(Path(infos[0]["path"]).parent) if infos else None
            sources.append({"name": name, "images": len(ids), "per_pass": k, "folder": folder,
                            "instances": sum(len(i["shapes"]) for i in infos)})
    else:
        free = [i for i in train.image_info if i.get("tumor_free")]
        sources = [{"name": Path(data_dir).name, "images": len(train) - len(free), "per_pass": None,
                    "folder": str(Path(data_dir) / "train"),
                    "instances": sum(len(i["shapes"]) for i in train.image_info)}]
        if free:
            sources.append({"name": "tumor_free", "images": len(free), "per_pass": getattr(train, "free_per_pass", None),
                            "folder": str(Path(free[0]["path"]).parent), "instances": 0})
    write_json_atomic(path, {"train": sources,
                             "val": {"folder": str(Path(data_dir) / "val"), "images": len(val)},
                             "tumor_free_held_out": {"images": len(held) if held is not None else 0}})


def run_training(config: Config, data_dir: Path, logs: Path, verbose: int = 1, callbacks=None,
                 source_overrides: dict[str, str] | None = None, stop_after: int | None = None) -> Path:
    """Train per ``config`` (all stages, or up to epoch ``stop_after``); returns the run folder.

    ``callbacks``: extra keras callbacks; one with a ``run_dir`` attribute gets the run folder.
    ``stop_after``: end cleanly after that epoch; ``--init last`` then goes on at the learning
    rate a run without the stop would have had (the sample order restarts from the resumed epoch's seed).
    """
    import keras

    from braintumor.augment import build_augmentation
    from braintumor.copy_paste import build_copy_paste
    from braintumor.mrcnn import MaskRCNN

    keras.utils.set_random_seed(config.SEED)
    train, val, held = load_training_data(config, data_dir, source_overrides)
    print(f"data: {data_dir}: train {describe_training_set(train)}, val {len(val)} images", flush=True)
    strategy = _strategy(config)
    if strategy is not None:
        print(f"strategy: {type(strategy).__name__}, {strategy.num_replicas_in_sync} replicas "
              f"({', '.join(strategy.extended.worker_devices)})", flush=True)
        with strategy.scope():
            model = MaskRCNN("training", config, model_dir=logs)
    else:
        model = MaskRCNN("training", config, model_dir=logs)
    print(initialise(model, config, config.INIT, logs), flush=True)
    run_dir = Path(model.log_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "config.toml").exists():
        config.save(run_dir / "config.toml")
    else:
        changed = record_resumed_config(run_dir / "config.toml", config, model.epoch)
        if changed:
            print(f"settings changed on resuming at epoch {model.epoch}: " + ", ".join(changed)
                  + f"; the earlier ones kept in config_until_{model.epoch:04d}.toml", flush=True)
    if not (run_dir / "data.json").exists():
        write_data_summary(run_dir / "data.json", train, val, held, data_dir)
    print(f"run folder: {run_dir}", flush=True)
    augmentation = build_augmentation(config.AUGMENTATION, seed=config.SEED) if config.AUGMENTATION else None
    augmentation = build_copy_paste(config.COPY_PASTE, train, augmentation)
    if augmentation is not None:
        print(f"augmentation: {augmentation!r}", flush=True)
    plan = stage_plan(config, model.epoch, stop_after)
    if not plan:
        print(f"nothing to do: the run is already at epoch {model.epoch} of "
              f"{config.EPOCHS if stop_after is None else min(stop_after, config.EPOCHS)}")
        return run_dir
    started = time.time()
    callbacks = _keras_callbacks(run_dir, model, config, val, started) + list(callbacks or [])
    for cb in callbacks:
        if hasattr(cb, "run_dir"):
            cb.run_dir = run_dir
    model.epoch_in_progress = model.epoch + 1
    try:
        for stage in plan:
            print(f"stage: layers {stage['layers']}, learning rate {stage['learning_rate']}, "
                  f"epochs {model.epoch + 1}..{stage['until']}", flush=True)
            if strategy is not None:
                with strategy.scope():
                    model.train(train, val, stage["learning_rate"], stage["until"], stage["layers"],
                                augmentation=augmentation, callbacks=callbacks, verbose=verbose)
            else:
                model.train(train, val, stage["learning_rate"], stage["until"], stage["layers"],
                            augmentation=augmentation, callbacks=callbacks, verbose=verbose)
    except KeyboardInterrupt:
        epoch = model.epoch_in_progress
        path = model.checkpoint_path_for(epoch)
        model.save_weights(path, epoch=epoch)
        model.save_optimizer_state(epoch)  # the momentum of that moment, for --init last
        print(f"\ninterrupted during epoch {epoch}: weights saved to {path}; "
              f"continue with: braintumor train --config {run_dir / 'config.toml'} --init last", flush=True)
        return run_dir
    if model.epoch < config.EPOCHS:
        print(f"stopped after epoch {model.epoch} of {config.EPOCHS} (--stop-after) in {time.time() - started:.0f} s; "
              f"continue with: braintumor train --config {run_dir / 'config.toml'} --init last", flush=True)
        return run_dir
    print(f"done: {config.EPOCHS} epochs in {time.time() - started:.0f} s; last checkpoint "
          f"{model.checkpoint_path_for(model.epoch)}", flush=True)
    return run_dir


@contextlib.contextmanager
def stop_signals_save():
    """While training from the command line, SIGTERM (``kill PID``, a scheduler's stop) and
    SIGINT act like Ctrl-C: the epoch in progress is saved and the run ends cleanly.

    SIGINT is handled even when the process started with it ignored (``nohup cmd &`` in a
    non-interactive shell does that). The previous handlers are restored on exit.
    """
    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    wanted = [signal.SIGINT, signal.SIGTERM]
    previous = {s: signal.getsignal(s) for s in wanted}
    try:
        for s in wanted:
            signal.signal(s, stop)
    except ValueError:  # not the main thread: leave the handlers alone
        previous = {}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def source_overrides(pairs: list[str] | None, config: Config) -> dict[str, str]:
    """``--source NAME=DIR`` arguments as ``{NAME: DIR}``; one-line errors for a malformed pair or a name
    that is not one of the preset's SOURCES."""
    overrides = {}
    for pair in pairs or []:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise BrainTumorError(f"--source needs NAME=DIR, got {pair!r}")
        if name not in [s["NAME"] for s in config.SOURCES]:
            raise BrainTumorError(f"--source {name}: the preset has no such source "
                                  f"(its SOURCES: {', '.join(s['NAME'] for s in config.SOURCES) or 'none'})")
        overrides[name] = folder
    return overrides


def cli_train(args) -> int:
    stop_after = getattr(args, "stop_after", None)
    if stop_after is not None and stop_after < 1:
        raise BrainTumorError(f"--stop-after must be an epoch number >= 1, got {stop_after}")
    config = build_config(args)
    data_dir = resolve_data_dir(args.data)
    if not data_dir.is_dir():
        raise BrainTumorError(f"{data_dir}: dataset folder not found (run: braintumor fetch-data, or pass --data)")
    overrides = source_overrides(getattr(args, "source", None), config)
    with stop_signals_save():
        run_training(config, data_dir, Path(args.logs), source_overrides=overrides,
                     stop_after=stop_after)
    return 0
