"""Would a second opinion on the image pixels of each proposal pick the tumor the class head scores low?

``class_logit_probe.py`` found that the release's ROI features (ROIAlign 7x7 of the FPN, the class head's
1,024-vector) do not set the Figshare val gliomas apart from normal tissue, whatever linear readout is fitted.
This probe asks whether the *pixels* do: a small CNN of its own (trained from random init here, in minutes)
looks at each proposal's refined box with some context, at the molded image's resolution, and scores
"tumor" against "elsewhere". Its score re-ranks the release's proposals, offline, like ``class_logit_probe``:

- proposals and refined boxes are the release's own (float32 inference graph); a crop is the square around
  the refined box, ``--context`` times its longer side, resized to ``--size`` pixels (grey: the channels' mean);
  four geometry values go beside it (the box's centre and log side lengths, normalized);
- training crops: the thesis train scans, every ``--figshare-every``-th Figshare training slice and every
  ``--tumor-free-every``-th tumor-free training image; a proposal whose refined box has IoU >= 0.5 with a
  tumor's box is positive (at most 16 an image), IoU < 0.3 negative (the 16 the release scores highest and 16
  at random an image); positives and negatives weigh the same in all;
- val: the 200 best-scored proposals (by the release) of each of the 61 thesis val scans, 298 Figshare val
  slices and 204 held-out tumor-free slices; a scan's best region is its highest-scoring proposal, "on the
  tumor" at refined-box IoU >= 0.5, and the operating point is chosen as ``evaluate`` chooses it
  (``class_logit_probe.simulate``).

Rows: the release's score; the crop score alone; their geometric mean; their product. Built into the package
since: :mod:`braintumor.region_score` (the crops, the CNN, its fit), :mod:`braintumor.fit_region_score` (the
proposals); on the detection layer's own regions, with Dice and mask mAP, ``region_score_sweep.py``.

    .venv/bin/python benchmarks/crop_rescore_probe.py [--weights models/<release>.h5] [--epochs 8] [--seed 0]

Crops are cached in ``--cache`` (float16); writes ``report_*.json`` and ``clf_*.h5`` (a region-score file) there.
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
sys.path.insert(0, str(ROOT / "benchmarks"))
POS_CAP, NEG_TOP, NEG_RANDOM, VAL_TOP = 16, 16, 16, 200


def collect(regions, parts: list, split: str, path: Path, size: int, context: float, seed: int = 0,
            source_size: int = 0) -> dict:
    """Cached crops of one split (module docstring); ``image`` indexes ``images`` ("source/kind/name"). With
    ``source_size``, every tumor image is first shown as a scan of that many pixels (``evaluate --source-size``)."""
    from class_logit_probe import image_name, save_rows, training_rows

    from braintumor.evaluate import degrade_resolution
    from braintumor.region_score import region_crops

    if path.is_file():
        return dict(np.load(path, allow_pickle=False))
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("crops", "geom", "score", "iou_refined", "image")}
    images = []
    t0 = time.perf_counter()
    for source, ds, ids in parts:
        for i in ids:
            image = ds.load_image(i)
            if source_size and source != "tumor_free":
                image = degrade_resolution(image, source_size)
            r = regions(image, np.asarray(ds.load_mask(i)[0], bool))
            if split == "train":
                keep = training_rows(r["iou"], r["score"], rng, POS_CAP, NEG_TOP, NEG_RANDOM, neg_below=0.3)
            else:
                keep = np.argsort(-r["score"])[:VAL_TOP]
            crops, geom = region_crops(r["molded"], r["refined"][keep], size, context)
            rows["crops"].append(crops[..., 0].astype(np.float16))
            rows["geom"].append(geom)
            rows["score"].append(r["score"][keep].astype(np.float32))
            rows["iou_refined"].append(r["iou"][keep].astype(np.float32))
            rows["image"].append(np.full(len(keep), len(images), np.int32))
            images.append(image_name(source, ds, i))
            if len(images) % 100 == 0:
                print(f"  {split}: {len(images)} images, {time.perf_counter() - t0:.0f} s", flush=True)
    return save_rows(rows, images, path)


def train_classifier(train: dict, size: int, epochs: int, seed: int):
    """:func:`braintumor.region_score.fit_scorer` on the cached training crops (IoU >= 0.5 tumor, < 0.3 elsewhere)."""
    from braintumor.region_score import fit_scorer, training_labels

    return fit_scorer(train["crops"], train["geom"], training_labels(train["iou_refined"]), epochs=epochs, seed=seed,
                      size=size)


def main(argv=None) -> int:
    from class_logit_probe import datasets, simulate

    from braintumor.fit_region_score import ProposalRegions
    from braintumor.inference import load_predictor
    from braintumor.region_score import RegionScore, load_region_score
    from braintumor.release.files import default_release

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="model file (default: the release)")
    ap.add_argument("--figshare-every", type=int, default=2)
    ap.add_argument("--tumor-free-every", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--context", type=float, default=1.5)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source-size", type=int, default=0,
                    help="the shortcut probe: val tumor images shown as scans of this many pixels (needs --classifier)")
    ap.add_argument("--classifier", default=None, help="a region-score file (clf_*.h5): score val with it instead of training")
    ap.add_argument("--cache", default=str(ROOT / "logs/crop_rescore_probe"))
    args = ap.parse_args(argv)
    weights = Path(args.weights) if args.weights else default_release()
    cache = Path(args.cache)
    tag = f"s{args.size}_c{args.context:g}"
    val_path = cache / f"val_{tag}{f'_src{args.source_size}' if args.source_size else ''}.npz"
    train_path = cache / f"train_{tag}_f{args.figshare_every}_t{args.tumor_free_every}.npz"
    t0 = time.perf_counter()
    if args.source_size and not args.classifier:
        raise SystemExit("--source-size scores val with a trained classifier: give --classifier clf_*.h5")
    if not (val_path.is_file() and (args.classifier or train_path.is_file())):
        regions = ProposalRegions(load_predictor(str(weights), precision="float32").load())
        parts = datasets(args.figshare_every, args.tumor_free_every)
        collect(regions, parts["val"], "val", val_path, args.size, args.context, source_size=args.source_size)
        if not args.classifier:
            collect(regions, parts["train"], "train", train_path, args.size, args.context)
    val = dict(np.load(val_path))
    t1 = time.perf_counter()
    if args.classifier:
        clf, train = load_region_score(args.classifier), {"score": []}
    else:
        train = dict(np.load(train_path))
        print(f"crops: {len(train['score'])} training ({int((train['iou_refined'] >= 0.5).sum())} positive), "
              f"{len(val['score'])} val, {time.perf_counter() - t0:.0f} s", flush=True)
        clf = RegionScore(train_classifier(train, args.size, args.epochs, args.seed), size=args.size, context=args.context,
                          fit={"from": "benchmarks/crop_rescore_probe.py", "args": vars(args)})
    fit_s = time.perf_counter() - t1
    s_crop = np.concatenate([clf.probability(val["crops"][k:k + 512].astype(np.float32)[..., None], val["geom"][k:k + 512])
                             for k in range(0, len(val["score"]), 512)]).astype(np.float64)
    s_rel = val["score"].astype(np.float64)
    rows = {"release": simulate(val, s_rel), "crop alone": simulate(val, s_crop),
            "geometric mean": simulate(val, np.sqrt(s_rel * s_crop)), "product": simulate(val, s_rel * s_crop)}
    report = {"weights": weights.name, "args": vars(args), "train_crops": int(len(train["score"])),
              "fit_seconds": round(fit_s), "rows": rows}
    keys = list(rows["release"])
    print(f"\n{'':>16} " + " ".join(f"{k[:20]:>20}" for k in keys))
    for name, row in rows.items():
        print(f"{name:>16} " + " ".join(f"{row[k]:>20.4g}" if isinstance(row[k], float) else f"{row[k]:>20d}"
                                        for k in keys))
    if args.classifier:
        out = cache / f"report_{Path(args.classifier).stem}_src{args.source_size}.json"
    else:
        out = cache / f"report_{tag}_e{args.epochs}_s{args.seed}.json"
        clf.save(cache / f"clf_{tag}_e{args.epochs}_s{args.seed}.h5")
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
