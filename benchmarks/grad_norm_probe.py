"""How hard does the gradient clip bite? The global gradient norm of each loss on training samples, next to the clip.

The detector does not fit its own training slices (a checkpoint scores the Figshare training slices as it scores the
val ones), so the question is what holds the optimisation back. SGD clips the global gradient norm at
``GRADIENT_CLIP_NORM`` (default 5): when the norm is often far above it, every step is shortened by ``clip / norm``
and the nominal learning rate overstates the step taken.

For ``--n`` training samples of the preset's mix, drawn and augmented as a run draws them (the first pass's order,
:func:`braintumor.mrcnn.inputs.sample_indices`; copy-paste included), one forward and backward pass of the training
graph (``training=True``, the preset's precision) from ``--weights``; per sample: the global norm of the gradient of
the total loss (the five losses with ``LOSS_WEIGHTS`` plus the weight decay, as ``train_step`` takes it) and of each
loss alone, the source, and the scale a clipped step is taken at (``min(1, clip / norm)``). Summary: median and
quartiles of each norm, the share of samples clipped and the mean step scale, per source and overall.

    .venv/bin/python benchmarks/grad_norm_probe.py --config mrcnn_config/resnet101_figshare_long5.toml \\
        --weights logs/RUN/mask_rcnn_X_0030.h5 --data ../shared/data/brain_tumor_data --n 24
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def global_norm(grads) -> float:
    """The Euclidean norm of all gradients together (None entries skipped), as ``global_clipnorm`` computes it."""
    return float(np.sqrt(sum(float(np.sum(np.square(np.asarray(g, np.float64)))) for g in grads if g is not None)))


def summarise(rows: list[dict], clip: float) -> dict:
    """Median / quartiles of each norm, share clipped and mean step scale over ``rows``."""
    out = {"samples": len(rows)}
    for key in rows[0]["norms"]:
        v = np.array([r["norms"][key] for r in rows])
        out[key] = {"median": round(float(np.median(v)), 3), "q25": round(float(np.percentile(v, 25)), 3),
                    "q75": round(float(np.percentile(v, 75)), 3), "max": round(float(v.max()), 3)}
    total = np.array([r["norms"]["total"] for r in rows])
    out["clipped_share"] = round(float(np.mean(total > clip)), 3) if clip else 0.0
    out["mean_step_scale"] = round(float(np.mean(np.minimum(1.0, clip / np.maximum(total, 1e-12)))), 3) if clip else 1.0
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="the training preset (its sources, mix, augmentation, losses)")
    ap.add_argument("--weights", required=True, help="a checkpoint or release .h5")
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/brain_tumor_data"))
    ap.add_argument("--n", type=int, default=24, help="training samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON file (default: logs/grad_norm/<preset>_<weights>.json)")
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    from braintumor.augment import build_augmentation
    from braintumor.config import Config
    from braintumor.copy_paste import build_copy_paste
    from braintumor.mrcnn import MaskRCNN
    from braintumor.mrcnn import losses as L
    from braintumor.mrcnn.inputs import INPUT_ORDER, build_training_sample, sample_indices
    from braintumor.paths import resolve_data_dir, resolve_preset
    from braintumor.train import load_training_data

    config = Config.from_toml(resolve_preset(args.config))
    data_dir = resolve_data_dir(args.data)
    train, _, _ = load_training_data(config, data_dir)
    aug = build_augmentation(config.AUGMENTATION, seed=args.seed) if config.AUGMENTATION else None
    aug = build_copy_paste(config.COPY_PASTE, train, aug)
    model = MaskRCNN("training", config, model_dir=ROOT / "logs")
    model.load_weights(args.weights)
    model.set_trainable("all")
    km = model.keras_model
    variables = km.trainable_variables
    clip = float(config.GRADIENT_CLIP_NORM or 0.0)

    @tf.function(reduce_retracing=True)
    def grads_of(x):
        with tf.GradientTape(persistent=True) as tape:
            outputs = km(x, training=True)
            parts = km.compute_losses(x, outputs)
            l2 = km._l2()
            total = km._total(parts) + l2
            weighted = {n: float(km.loss_weights.get(n, 1.0)) * parts[n] for n in L.LOSS_NAMES}
        out = {"total": tape.gradient(total, variables), "weight_decay": tape.gradient(l2, variables)}
        for n in L.LOSS_NAMES:
            out[n] = tape.gradient(weighted[n], variables)
        del tape
        return out, parts

    rows = []
    started = time.time()
    for k, i in zip(range(args.n), sample_indices(train, args.seed)):
        s = build_training_sample(train, config, i, aug, np.random.default_rng([args.seed, k]))
        x = [tf.convert_to_tensor(s[name][None]) for name in INPUT_ORDER]
        g, parts = grads_of(x)
        norms = {key: round(global_norm(v), 4) for key, v in g.items()}
        info = train.image_info[i]
        rows.append({"source": info.get("source") or "train", "name": info["name"], "norms": norms,
                     "losses": {n: round(float(v), 4) for n, v in parts.items()}})
        print(f"{k + 1:3d} {rows[-1]['source']:18} total {norms['total']:8.3f}  "
              + "  ".join(f"{n.replace('_loss', '')} {norms[n]:.3f}" for n in L.LOSS_NAMES), flush=True)
    by_source = defaultdict(list)
    for r in rows:
        by_source[r["source"]].append(r)
    report = {"config": args.config, "weights": args.weights, "clip": clip, "seed": args.seed,
              "seconds": round(time.time() - started, 1), "all": summarise(rows, clip),
              "by_source": {s: summarise(v, clip) for s, v in sorted(by_source.items())}, "rows": rows}
    out = Path(args.out) if args.out else ROOT / "logs/grad_norm" / f"{config.NAME}_{Path(args.weights).stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    a = report["all"]
    print(f"\nclip {clip}: {a['clipped_share']:.0%} of {len(rows)} samples clipped, mean step scale "
          f"{a['mean_step_scale']:.3f}; total norm median {a['total']['median']} (q25 {a['total']['q25']}, "
          f"q75 {a['total']['q75']})")
    for s, v in report["by_source"].items():
        print(f"  {s:18} {v['samples']:3d} samples: total median {v['total']['median']}, clipped "
              f"{v['clipped_share']:.0%}, step scale {v['mean_step_scale']:.3f}")
    print(f"wrote {out}")
    keras.backend.clear_session()
    return 0


if __name__ == "__main__":
    sys.exit(main())
