"""The detection layer's regions on the training images: the data for a ranker fitted on the regions it will rank.

The region scorer was fitted on proposals labelled by box IoU (``braintumor fit-region-score``). A ranker over a
larger pool of regions (``region_score_sweep.py --detector-floor 0.01 --max-instances 50 --detection-nms 0.5``)
should learn from what that pool holds: each region's box, detector score and outline, and how well the outline
fits the tumor (mask IoU). This pass runs the release over the training sets ``fit-region-score`` reads (thesis
train, every ``--figshare-every``-th Figshare training slice, every ``--tumor-free-every``-th tumor-free training
image; never a val image) with that detection layer and pickles ``[(source, source, image_id, ImageRecord)]``
(every region's RLE outline, score, box; the tumors' RLEs) as ``region_score_sweep.py`` does for val.

    .venv/bin/python benchmarks/pool_pass.py --detector-floor 0.01 --max-instances 50 --detection-nms 0.5
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def output_path(cache, weights: Path, floor: float, max_instances: int | None, nms: float | None,
                figshare_every: int = 2, tumor_free_every: int = 2) -> Path:
    """The pass's pickle: per model, detection layer and the training sets' sampling."""
    import region_score_sweep as S

    return Path(cache) / (f"train_detections_{weights.stem}_floor{floor:g}{S.layer_tag(max_instances, nms)}"
                          f"_f{figshare_every}_t{tumor_free_every}.pkl")


def pool_sets(figshare_every: int = 2, tumor_free_every: int = 2) -> list:
    """``[(name, dataset, image_ids)]`` the pass runs over (``fit_region_score.training_sets`` on ../shared/data)."""
    import region_score_sweep as S

    from braintumor.fit_region_score import training_sets

    return training_sets(S.SHARED / "brain_tumor_data", S.SHARED / "figshare", S.SHARED / "tumor_free",
                         figshare_every, tumor_free_every)


def main(argv=None) -> int:
    import region_score_sweep as S

    from braintumor.release.files import default_release

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="model file (default: the release)")
    ap.add_argument("--detector-floor", type=float, default=0.01, help="the detection layer's floor")
    S.add_layer_args(ap)
    ap.add_argument("--figshare-every", type=int, default=2, help="every n-th Figshare training slice")
    ap.add_argument("--tumor-free-every", type=int, default=2, help="every n-th tumor-free training image")
    ap.add_argument("--cache", default=str(ROOT / "logs/region_score"))
    args = ap.parse_args(argv)
    if args.figshare_every < 1 or args.tumor_free_every < 1:
        raise SystemExit("--figshare-every and --tumor-free-every must be at least 1")
    weights = Path(args.weights) if args.weights else default_release()
    out = output_path(args.cache, weights, args.detector_floor, args.max_instances, args.detection_nms,
                      args.figshare_every, args.tumor_free_every)
    if out.is_file():
        print(f"{out} exists")
        return 0
    sets = pool_sets(args.figshare_every, args.tumor_free_every)
    print(", ".join(f"{name}: {len(ids)}" for name, _, ids in sets), flush=True)
    t0 = time.perf_counter()
    rows = S.detection_pass(S.pass_predictor(weights, args.detector_floor, args.max_instances, args.detection_nms), sets)
    S.write_pickle(out, rows)
    print(f"{len(rows)} training images, {time.perf_counter() - t0:.0f} s; written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
