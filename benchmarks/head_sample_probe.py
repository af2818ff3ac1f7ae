"""How many Figshare training slices should the image-level head be fitted on, and does the sample matter?

Issue 14, item 3. The released head (``braintumor fit-image-score --figshare-sample 600``) was
fitted on one random sample (seed 0) of 600 of the 1,537 Figshare training slices. This probe
extracts the features of every set once (float32, cached in ``--out``): the fit's own sets,
**all** Figshare training slices, and the three sets the head is judged on:

- val (61 thesis scans): chooses each head's threshold (sensitivity target, and no val scan
  green at the operating point), exactly as ``fit-image-score`` does;
- the held-out tumor-free slices (204): how many the rule flags;
- the Figshare val blocks (298 slices): the rule's sensitivity, overall and by tumor type.

Then it fits one head per Figshare sample (sizes ``--sizes``, seeds ``--seeds``; the sample of
size N and seed S is the very one ``fit-image-score --figshare-sample N --figshare-seed S``
draws) and reports each under the app's rule: flagged when a detection scores ≥ 0.9 or the
head ≥ its threshold. Fitting a head from cached features takes about a second.

Usage (about 1 s an image on 2 cores the first time; 3,562 images)::

    .venv/bin/python benchmarks/head_sample_probe.py --weights models/tumorfs-resnet101-f6368f50.h5 \\
        --data ../shared/data --operating-point 0.3814 --out logs/head_sample_probe
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _reader(load):
    """A set reader for :func:`braintumor.fit_image_score.collect`: every image of ``load()``, in order."""
    def run():
        ds = load()
        ids = list(ds.image_ids)
        names = [str(ds.image_info[i].get("name") or Path(ds.image_info[i].get("path", i)).name) for i in ids]
        return names, (ds.load_image(i) for i in ids)
    return run


def figshare_types(folder: Path) -> dict[str, str]:
    """file name -> tumor type of the Figshare folder (the category of its first annotation)."""
    coco = json.loads((folder / "annotations.json").read_text(encoding="utf-8"))
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    first: dict[int, str] = {}
    for a in coco["annotations"]:
        first.setdefault(a["image_id"], cats[a["category_id"]])
    return {Path(im["file_name"]).name: first.get(im["id"], "none") for im in coco["images"]}


def main(argv=None) -> int:
    from braintumor.figshare import load_figshare
    from braintumor.fit_image_score import collect, fit_head, image_sets, sample_ids
    from braintumor.inference import load_predictor
    from braintumor.tumor_free import load_tumor_free

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", default="../shared/data", help="folder holding brain_tumor_data, tumor_free, figshare")
    ap.add_argument("--operating-point", type=float, required=True, help="no val scan green at this detection score")
    ap.add_argument("--sizes", default="200,600,1000,all", help="Figshare sample sizes ('all': 1,537)")
    ap.add_argument("--seeds", default="0,1,2", help="sample seeds (one for 'all')")
    ap.add_argument("--sensitivity", default="0.96", help="val sensitivity targets, comma-separated")
    ap.add_argument("--l2", type=float, default=0.01)
    ap.add_argument("--out", required=True, help="folder: feature cache and results.json")
    args = ap.parse_args(argv)

    root, out = Path(args.data), Path(args.out)
    data, free, fs = root / "brain_tumor_data", root / "tumor_free", root / "figshare"
    predictor = load_predictor(args.weights, precision="float32")
    fit_sets = image_sets(data, None, free)
    judge_sets = {
        "figshare_train_all": (1, _reader(lambda: load_figshare(fs, "train"))),
        "tumor_free_held_out": (0, _reader(lambda: load_tumor_free(free, "held-out"))),
        "figshare_val": (1, _reader(lambda: load_figshare(fs, "val"))),
    }
    feats = collect(predictor, {**fit_sets, **judge_sets}, out / "cache", need_best=("val", *judge_sets))
    types = figshare_types(fs)
    fs_val, free_out, fs_all = feats["figshare_val"], feats["tumor_free_held_out"], feats["figshare_train_all"]
    val_types = np.asarray([types.get(n, "none") for n in fs_val["names"]])

    rows = []
    for size_s in args.sizes.split(","):
        size = None if size_s == "all" else int(size_s)
        for seed in ([0] if size is None else [int(s) for s in args.seeds.split(",")]):
            # the rows fit-image-score --figshare-sample size --figshare-seed seed reads (dataset ids = rows)
            pick = np.asarray(sample_ids(list(range(len(fs_all["names"]))), size, seed))
            train = {k: feats[k] for k in fit_sets}
            train["figshare_train"] = {"label": 1, "names": [fs_all["names"][i] for i in pick],
                                       "features": fs_all["features"][pick], "best": fs_all["best"][pick]}
            for sens in (float(s) for s in args.sensitivity.split(",")):
                head, record = fit_head(train, args.l2, 0.9, sens, args.operating_point)
                flagged_free = head.flags(free_out["features"], free_out["best"])
                flagged_fs = head.flags(fs_val["features"], fs_val["best"])
                row = {"figshare_slices": len(pick), "seed": seed, "target": sens,
                       "threshold": round(float(head.threshold), 4), "val_sensitivity": record["val_sensitivity"],
                       "tumor_free_flagged": int(flagged_free.sum()), "tumor_free_images": int(len(flagged_free)),
                       "figshare_sensitivity": round(float(flagged_fs.mean()), 4),
                       "figshare_missed": int((~flagged_fs).sum()), "figshare_images": int(len(flagged_fs))}
                for t in sorted(set(val_types)):
                    row[f"figshare_{t}"] = round(float(flagged_fs[val_types == t].mean()), 3)
                rows.append(row)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"weights": str(args.weights), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
