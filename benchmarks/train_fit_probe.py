"""Does a detector fit its own training slices? ``braintumor evaluate`` on Figshare training slices and on val.

A model that scores its training slices far better than the val ones overfits (regularise, add data); one that
scores them alike does not fit its data (more steps, larger steps, less regularisation). The probe draws ``--per-type``
slices of each tumor type from the Figshare **train** split (seeded), builds a folder that holds them as its
``val`` split (symlinks to the images and annotations, and a ``split.json``: :mod:`braintumor.figshare`'s first
rule), and runs the same evaluation on it and on the real val blocks: the same threshold, mask threshold and
precision, so that the two rows differ only by the slices.

    .venv/bin/python benchmarks/train_fit_probe.py --weights logs/RUN/mask_rcnn_X_0030.h5 --min-confidence 0.4 \\
        --mask-threshold 0.4
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TYPES = ("meningioma", "glioma", "pituitary")


def probe_folder(figshare: Path, out: Path, per_type: int, seed: int) -> list[int]:
    """Write ``out`` (images and annotations.json symlinked to ``figshare``'s, a split.json whose ``val`` is
    ``per_type`` seeded training slices of each type); returns their COCO ids."""
    from braintumor.figshare import split_image_ids

    doc = json.loads((figshare / "annotations.json").read_text(encoding="utf-8"))
    ids = split_image_ids(figshare, doc["images"])
    names = {c["id"]: c["name"] for c in doc["categories"]}
    type_of = {a["image_id"]: names[a["category_id"]] for a in doc["annotations"]}
    rng = random.Random(seed)
    pick = []
    for t in TYPES:
        pool = sorted(i for i in ids["train"] if type_of.get(i) == t)
        pick += rng.sample(pool, min(per_type, len(pool)))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("images", "annotations.json"):
        link = out / name
        if not link.exists():
            link.symlink_to((figshare / name).resolve())
    rest = sorted(set(ids["train"]) - set(pick))
    (out / "split.json").write_text(json.dumps({"images": {"train": rest, "val": sorted(pick)}}))
    return sorted(pick)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--figshare", default=str(ROOT.parent / "shared/data/figshare"))
    ap.add_argument("--per-type", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-confidence", type=float, required=True, help="the same threshold on both sets")
    ap.add_argument("--mask-threshold", type=float, default=0.4)
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--out", default=str(ROOT / "logs/train_fit"))
    args = ap.parse_args()

    out = Path(args.out)
    folder = out / f"figshare_train_probe_seed{args.seed}"
    picked = probe_folder(Path(args.figshare), folder, args.per_type, args.seed)
    print(f"{len(picked)} Figshare training slices ({args.per_type} per type, seed {args.seed}) in {folder}", flush=True)
    stem = Path(args.weights).stem
    rows = {}
    for label, data in (("train", folder), ("val", Path(args.figshare))):
        target = out / f"{stem}_{label}"
        cmd = [str(ROOT / ".venv/bin/braintumor"), "evaluate", "--weights", args.weights, "--data", str(data),
               "--split", "val", "--min-confidence", str(args.min_confidence), "--mask-threshold",
               str(args.mask_threshold), "--precision", args.precision, "--out", str(target)]
        subprocess.run(cmd, check=True)
        m = json.loads((target / "metrics.json").read_text(encoding="utf-8"))
        rows[label] = {"images": m["dataset"]["n_images"], "dice": m["segmentation"]["dice_mean"],
                       "by_category": {k: v["dice_mean"] for k, v in (m.get("by_category") or {}).items()}}
    print(f"\n{'set':6} {'images':>6} {'Dice':>6}  " + "  ".join(f"{t:>10}" for t in TYPES))
    for label, r in rows.items():
        print(f"{label:6} {r['images']:6d} {r['dice']:6.3f}  " + "  ".join(f"{(r['by_category'].get(t) or 0):10.3f}" for t in TYPES))
    (out / f"{stem}.json").write_text(json.dumps({"weights": args.weights, "min_confidence": args.min_confidence,
                                                   "mask_threshold": args.mask_threshold, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
