"""Would a refitted "tumor" logit on the release's own ROI features find the tumors its class head scores low?

``miss_probe.py`` shows that on the Figshare val gliomas the RPN does propose a box on the tumor
(90 of 100), but the class head scores every such proposal below the operating point in 50 of them.
The tumor probability is a softmax over ``mrcnn_class_logits``, one linear layer on the class head's
shared 1,024-vector (``pool_squeeze``). This probe refits that layer alone, as an L2 logistic regression
on frozen features, everything else (RPN, box refinement, masks, image-level head) staying the
release's, and simulates the best region of every val scan offline:

- training rows: the proposals of the thesis train scans, every ``--figshare-every``-th Figshare training
  slice and every ``--tumor-free-every``-th tumor-free training image; proposals with IoU >= 0.5 against
  a tumor's box are positives (at most 64 an image), the others negatives (the 32 the release scores
  highest and 32 at random an image); every image's positives weigh 1 in all, and its negatives 1;
- val: all proposals of the 61 thesis val scans, the 298 Figshare val slices and the 204 held-out
  tumor-free slices. A scan's best region is its highest-scoring proposal's refined box (per-class
  NMS never removes the top one); it is "on the tumor" at box IoU >= 0.5. The operating point is
  chosen as ``evaluate`` chooses it, on the thesis val scans and the tumor-free slices (a region on
  >= 95 % of the scans, then the fewest tumor-free slices).

    .venv/bin/python benchmarks/class_logit_probe.py [--weights models/<release>.h5] [--l2 0.01,0.1,1]
    .venv/bin/python benchmarks/class_logit_probe.py --write logs/class_logit_probe/logit_0.1.npz logs/refit01

The release's own logit goes through the same simulation (its first row), so the rows compare like with
like. Features are cached in ``logs/class_logit_probe`` (float16; about 1.2 GB for val); writes
``report.json`` there and ``logit_<l2>.npz`` (the refitted ``mrcnn_class_logits`` kernel and bias).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared/data"
POS_CAP, NEG_TOP, NEG_RANDOM = 64, 32, 32


class ProposalFeatures:
    """One inference pass: every proposal's box, tumor probability, refined box and ``pool_squeeze`` vector."""

    def __init__(self, model):
        import keras
        import tensorflow as tf

        km = model.keras_model
        self.config = model.config
        sub = keras.Model(km.inputs, [km.outputs[4], km.outputs[1], km.outputs[2], km.get_layer("pool_squeeze").output])
        self._fn = tf.function(lambda im, meta: sub([im, meta], training=False), reduce_retracing=True)

    def __call__(self, image: np.ndarray, masks: np.ndarray) -> dict:
        """``image`` uint8 ``[H, W, 3]``, ``masks`` bool ``[H, W, N]`` (N may be 0) -> ``{"score" [R], "iou" [R]
        proposal IoU with the nearest tumor box, "iou_refined" [R] the refined box's, "feats" [R, F]}`` over the real
        (non-padding) proposals; boxes normalized in the molded frame."""
        import tensorflow as tf

        from tumor_type_probe import molded_boxes

        from braintumor.boxes import box_iou
        from braintumor.mrcnn.box_coder import np_decode
        from braintumor.mrcnn.inputs import mold_inputs

        molded, metas, infos = mold_inputs([image], self.config)
        rois, probs, deltas, feats = (t.numpy() for t in self._fn(tf.constant(molded), tf.constant(metas, tf.float32)))
        rois, probs, deltas = rois[0], probs[0], deltas[0]
        real = (rois[:, 2] > rois[:, 0]) & (rois[:, 3] > rois[:, 1])
        refined = np_decode(rois, deltas[:, 1], self.config.BBOX_STD_DEV)
        gt = molded_boxes(masks, infos[0])
        iou = box_iou(rois, gt).max(1) if len(gt) else np.zeros(len(rois))
        iou_r = box_iou(refined, gt).max(1) if len(gt) else np.zeros(len(rois))
        return {"score": probs[real, 1], "iou": iou[real], "iou_refined": iou_r[real], "feats": feats[real]}


def datasets(figshare_every: int, tumor_free_every: int) -> dict[str, list]:
    """``{"train": [(source, kind, dataset, image_ids)], "val": [...]}``."""
    from braintumor.data import load_split
    from braintumor.figshare import load_figshare
    from braintumor.tumor_free import load_tumor_free

    fs_train, fs_val = load_figshare(SHARED / "figshare", "train"), load_figshare(SHARED / "figshare", "val")
    th_train, th_val = load_split(SHARED / "brain_tumor_data", "train"), load_split(SHARED / "brain_tumor_data", "val")
    tf_train = load_tumor_free(SHARED / "tumor_free", "train")
    tf_val = load_tumor_free(SHARED / "tumor_free", "held-out")
    return {"train": [("thesis", th_train, list(th_train.image_ids)),
                      ("figshare", fs_train, list(fs_train.image_ids)[::figshare_every]),
                      ("tumor_free", tf_train, list(tf_train.image_ids)[::tumor_free_every])],
            "val": [("thesis", th_val, list(th_val.image_ids)), ("figshare", fs_val, list(fs_val.image_ids)),
                    ("tumor_free", tf_val, list(tf_val.image_ids))]}


def collect(pf: ProposalFeatures, parts: list, split: str, path: Path, seed: int = 0) -> dict:
    """Cached rows of one split (see module docstring); ``image`` indexes ``images`` (source, kind)."""
    if path.is_file():
        return dict(np.load(path, allow_pickle=False))
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("feats", "score", "iou", "iou_refined", "image")}
    images = []
    t0 = time.perf_counter()
    for source, ds, ids in parts:
        for i in ids:
            masks = np.asarray(ds.load_mask(i)[0], bool)
            r = pf(ds.load_image(i), masks)
            if split == "train":
                keep = training_rows(r["iou"], r["score"], rng, POS_CAP, NEG_TOP, NEG_RANDOM, neg_below=0.5)
            else:
                keep = np.arange(len(r["score"]))
            for k in ("score", "iou", "iou_refined"):
                rows[k].append(r[k][keep].astype(np.float32))
            rows["feats"].append(r["feats"][keep].astype(np.float16))
            rows["image"].append(np.full(len(keep), len(images), np.int32))
            images.append(image_name(source, ds, i))
            if len(images) % 100 == 0:
                print(f"  {split}: {len(images)} images, {time.perf_counter() - t0:.0f} s", flush=True)
    return save_rows(rows, images, path)


def image_name(source: str, ds, image_id) -> str:
    """``"source/kind/file"``: kind is the Figshare tumor type, ``none`` for a tumor-free image, else the source."""
    info = ds.image_info[image_id]
    cats = list(info.get("categories") or [])
    kind = cats[0] if len(cats) == 1 else ("none" if source == "tumor_free" else source)
    return f"{source}/{kind}/{Path(str(info.get('path', info.get('name', image_id)))).name}"


def training_rows(iou: np.ndarray, score: np.ndarray, rng, pos_cap: int, neg_top: int, neg_random: int,
                  neg_below: float) -> np.ndarray:
    """Indices of one image's training proposals: up to ``pos_cap`` positives (IoU >= 0.5) at random, and of the
    negatives (IoU < ``neg_below``) the ``neg_top`` the release scores highest plus ``neg_random`` at random."""
    pos = np.flatnonzero(iou >= 0.5)
    neg = np.flatnonzero(iou < neg_below)
    pos = rng.choice(pos, min(pos_cap, len(pos)), replace=False) if len(pos) else pos
    top = neg[np.argsort(-score[neg])[:neg_top]]
    rest = np.setdiff1d(neg, top)
    return np.concatenate([pos, top, rng.choice(rest, min(neg_random, len(rest)), replace=False)])


def save_rows(rows: dict[str, list], images: list[str], path: Path) -> dict:
    """Concatenate the per-image lists, add ``images``, write ``path`` atomically; returns the arrays."""
    out = {k: np.concatenate(v) for k, v in rows.items()}
    out["images"] = np.array(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return out


def fit_logit(x: np.ndarray, y: np.ndarray, w_row: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """``braintumor.image_score.fit`` with these row weights (L2 on the standardised weights) ->
    ``(w [F], b)`` in the raw feature space, ready for a Dense layer."""
    from braintumor.image_score import fit

    head = fit(x, y, l2=l2, sample_weight=w_row, maxiter=3000)
    w = head.weights / head.scale
    return w, float(head.bias - np.sum(w * head.mean))


def simulate(val: dict, score: np.ndarray) -> dict:
    """Per val scan: the best proposal's score and whether its refined box is on the tumor; the operating point."""
    from braintumor.metrics import choose_operating_point

    images = val["images"]
    n = len(images)
    best = np.full(n, -1.0)
    on = np.zeros(n, bool)
    order = np.lexsort((-score, val["image"]))  # by image, best score first
    first = np.ones(len(order), bool)
    first[1:] = val["image"][order][1:] != val["image"][order][:-1]
    for j in order[first]:
        best[val["image"][j]] = score[j]
        on[val["image"][j]] = val["iou_refined"][j] >= 0.5
    src = np.array([s.split("/")[0] for s in images])
    kind = np.array([s.split("/")[1] for s in images])
    th, free = best[src == "thesis"], best[src == "tumor_free"]
    op = float(choose_operating_point(th, free)["robust_threshold"])  # as evaluate chooses it
    out = {"operating_point": op, "tumor_free_flagged": int(np.sum(free >= op)),
           "tumor_free_above_0.9": int(np.sum(free >= 0.9)),
           "thesis_on_tumor": int(np.sum(on[src == "thesis"])), "thesis_on_tumor_at_op": int(np.sum(
               on[src == "thesis"] & (th >= op))), "thesis": int(np.sum(src == "thesis"))}
    for k in ("meningioma", "glioma", "pituitary"):
        m = (src == "figshare") & (kind == k)
        out[f"figshare_{k}_on_tumor"] = int(np.sum(on[m]))
        out[f"figshare_{k}_on_tumor_at_op"] = int(np.sum(on[m] & (best[m] >= op)))
        out[f"figshare_{k}_outlined_at_op"] = int(np.sum(best[m] >= op))
    return out


def write_checkpoint(weights: Path, logit: Path, out: Path) -> Path:
    """The release ``weights`` with ``mrcnn_class_logits`` replaced by ``logit`` (a ``logit_<l2>.npz``), written like
    a run folder (``config.toml`` from the release, ``refit.json``) so that ``evaluate`` and ``export`` read it."""
    from braintumor.inference import config_for_checkpoint
    from braintumor.mrcnn import MaskRCNN
    from braintumor.mrcnn.weights import save_weights_h5
    from braintumor.release import open_release, sha256_file
    from braintumor.release.storage import load_model_weights

    if out.exists() and any(out.glob("mask_rcnn_*.h5")):
        raise SystemExit(f"{out}: already holds a checkpoint; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    model = MaskRCNN("training", config_for_checkpoint(weights), model_dir=str(out.parent))
    load_model_weights(model, weights, complete=True)
    new = np.load(logit)
    layer = model.keras_model.get_layer("mrcnn_class_logits")
    old_kernel, old_bias = layer.get_weights()
    layer.set_weights([new["kernel"].astype(old_kernel.dtype), new["bias"].astype(old_bias.dtype)])
    (out / "config.toml").write_text(open_release(weights).meta["config.toml"], encoding="utf-8")
    ckpt = out / f"mask_rcnn_{model.run_name}_0000.h5"
    save_weights_h5(model.keras_model, ckpt, epoch=None)
    (out / "refit.json").write_text(json.dumps({"base": str(weights), "base_sha256": sha256_file(weights),
                                                "logit": str(logit), "layer": "mrcnn_class_logits"}, indent=2) + "\n",
                                    encoding="utf-8")
    return ckpt


def main(argv=None) -> int:
    from scipy.special import expit

    from braintumor.inference import load_predictor
    from braintumor.release.files import default_release

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="model file (default: the release)")
    ap.add_argument("--figshare-every", type=int, default=2)
    ap.add_argument("--tumor-free-every", type=int, default=2)
    ap.add_argument("--l2", default="0.001,0.01,0.1,1")
    ap.add_argument("--cache", default=str(ROOT / "logs/class_logit_probe"))
    ap.add_argument("--write", nargs=2, metavar=("LOGIT_NPZ", "OUT_DIR"),
                    help="only write the release with that refitted logit as a checkpoint folder, for evaluate")
    args = ap.parse_args(argv)
    weights = Path(args.weights) if args.weights else default_release()
    cache = Path(args.cache)
    if args.write:
        print(f"wrote {write_checkpoint(weights, Path(args.write[0]), Path(args.write[1]))}")
        return 0
    model = load_predictor(str(weights), precision="float32").load()
    pf = ProposalFeatures(model)
    parts = datasets(args.figshare_every, args.tumor_free_every)
    t0 = time.perf_counter()
    val = collect(pf, parts["val"], "val", cache / "val.npz")
    train = collect(pf, parts["train"], "train", cache / f"train_f{args.figshare_every}_t{args.tumor_free_every}.npz")
    print(f"features: {len(train['score'])} training rows, {len(val['score'])} val proposals, "
          f"{time.perf_counter() - t0:.0f} s")
    y = (train["iou"] >= 0.5).astype(np.float64)
    w_row = np.zeros(len(y))
    for img in np.unique(train["image"]):
        for lab in (0.0, 1.0):
            m = (train["image"] == img) & (y == lab)
            if m.any():
                w_row[m] = 1.0 / m.sum()
    x = train["feats"].astype(np.float64)
    xv = val["feats"].astype(np.float32)
    report = {"weights": weights.name, "train_rows": int(len(y)), "train_positives": int(y.sum()),
              "rows": {"release": simulate(val, val["score"])}}
    for l2 in (float(v) for v in args.l2.split(",")):
        w, b = fit_logit(x, y, w_row, l2)
        s = expit(xv @ w.astype(np.float32) + b)
        report["rows"][f"refit l2={l2:g}"] = simulate(val, s)
        np.savez(cache / f"logit_{l2:g}.npz", kernel=np.stack([np.zeros_like(w), w], 1).astype(np.float32),
                 bias=np.array([0.0, b], np.float32))
    keys = list(report["rows"]["release"])
    print(f"\n{'':>20} " + " ".join(f"{k[:22]:>22}" for k in keys))
    for name, row in report["rows"].items():
        print(f"{name:>20} " + " ".join(f"{row[k]:>22.4g}" if isinstance(row[k], float) else f"{row[k]:>22d}"
                                        for k in keys))
    (cache / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"written {cache / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
