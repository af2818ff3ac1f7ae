"""Where does the detector lose a tumor: no proposal on it, a proposal scored too low, or outranked?

On the Figshare val gliomas the release's best region lies on the tumor in about a third of the
slices, while its ROI heads' features at the tumor's own box tell the type well
(``tumor_type_probe.py --roi``). This probe asks which stage drops the tumor. For every slice it
runs the release's inference graph once (float32) and reads the RPN's proposals
(``POST_NMS_ROIS_INFERENCE`` boxes), the class head's tumor probability of each and its refined
box, and the final detections. Each tumor falls in the first of:

- ``found``: the best detection overlaps the tumor's box (IoU >= ``--iou``);
- ``outranked``: some refined proposal on the tumor scores at least the operating point, but a
  region elsewhere scores higher;
- ``scored low``: a proposal on the tumor exists (before or after refinement), but the class head
  scores every such proposal below the operating point;
- ``no proposal``: no proposal overlaps the tumor by ``--iou``, before or after refinement.

    .venv/bin/python benchmarks/miss_probe.py [--weights models/<release>.h5] [--set figshare|thesis] \
        [--op 0.3814] [--iou 0.5]

Boxes are compared in the molded frame, as the model sees them; the tumor's box is the one round all its
instances' masks. Prints the counts per tumor type and writes ``logs/miss_probe/<set>.json``.
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

STAGES = ("found", "outranked", "scored low", "no proposal")


def classify(gt: np.ndarray, proposals: np.ndarray, refined: np.ndarray, scores: np.ndarray,
             best_box: np.ndarray | None, op: float, iou: float) -> tuple[str, dict]:
    """The stage that lost the tumor box ``gt [4]`` (see module docstring) and the figures behind it.

    ``proposals``/``refined`` ``[R, 4]`` normalized, ``scores`` ``[R]`` tumor probability of each proposal,
    ``best_box`` ``[4]`` the best detection's box or None.
    """
    from braintumor.boxes import box_iou

    iou_p = box_iou(proposals, gt[None])[:, 0]
    iou_r = box_iou(refined, gt[None])[:, 0]
    on = (iou_p >= iou) | (iou_r >= iou)
    facts = {"best_proposal_iou": float(max(iou_p.max(initial=0), iou_r.max(initial=0))),
             "best_score_on_tumor": float(scores[on].max(initial=0.0)),
             "best_detection_iou": float(box_iou(best_box[None], gt[None])[0, 0]) if best_box is not None else 0.0}
    if facts["best_detection_iou"] >= iou:
        return "found", facts
    if not on.any():
        return "no proposal", facts
    if facts["best_score_on_tumor"] >= op:
        return "outranked", facts
    return "scored low", facts


def main(argv=None) -> int:
    import tensorflow as tf

    from tumor_type_probe import molded_boxes

    from braintumor.inference import load_predictor
    from braintumor.mrcnn.box_coder import np_decode
    from braintumor.mrcnn.inputs import mold_inputs
    from braintumor.release.files import default_release

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None, help="model file (default: the release)")
    ap.add_argument("--set", choices=("figshare", "thesis"), default="figshare")
    ap.add_argument("--data", default=None, help="the set's folder (default: ../shared/data/...)")
    ap.add_argument("--op", type=float, default=0.3814, help="the operating point (the release's: 0.3814)")
    ap.add_argument("--iou", type=float, default=0.5)
    args = ap.parse_args(argv)
    weights = Path(args.weights) if args.weights else default_release()
    model = load_predictor(str(weights), precision="float32", min_confidence=0.05).load()
    config = model.config
    km = model.keras_model
    graph = tf.function(lambda im, meta: km([im, meta], training=False), reduce_retracing=True)
    if args.set == "figshare":
        from braintumor.figshare import load_figshare
        ds = load_figshare(args.data or ROOT.parent / "shared/data/figshare", "val")
    else:
        from braintumor.data import load_split
        ds = load_split(args.data or ROOT.parent / "shared/data/brain_tumor_data", "val")
    counts: dict[str, dict[str, int]] = {}
    rows = []
    t0 = time.perf_counter()
    for k, i in enumerate(ds.image_ids):
        info = ds.image_info[i]
        cats = list(info.get("categories") or []) if args.set == "figshare" else ["tumor"]
        kind = cats[0] if len(cats) == 1 else "mixed"
        im = ds.load_image(i)
        masks, _ = ds.load_mask(i)
        masks = np.asarray(masks, bool)
        if masks.shape[-1] == 0 or not masks.any():
            continue
        molded, metas, infos = mold_inputs([im], config)
        det, probs, deltas, _, rois = (t.numpy()[0] for t in graph(tf.constant(molded),
                                                                   tf.constant(metas, tf.float32))[:5])
        gt = molded_boxes(masks.any(-1, keepdims=True), infos[0])
        if not len(gt):
            continue  # the tumor vanishes at the model's size
        gt = gt[0]
        refined = np_decode(rois, deltas[:, 1], config.BBOX_STD_DEV)
        det = det[det[:, 5] > 0]
        best = det[det[:, 5].argmax(), :4] if len(det) else None
        stage, facts = classify(gt, rois, refined, probs[:, 1], best, args.op, args.iou)
        counts.setdefault(kind, dict.fromkeys(STAGES, 0))[stage] += 1
        rows.append({"name": str(info.get("name", i)), "type": kind, "stage": stage, **facts})
        if (k + 1) % 50 == 0:
            print(f"  {k + 1}/{len(ds.image_ids)}, {time.perf_counter() - t0:.0f} s", flush=True)
    total = {s: sum(c[s] for c in counts.values()) for s in STAGES}
    print(f"\n{args.set} val, {len(rows)} slices, operating point {args.op}, IoU >= {args.iou} "
          f"({time.perf_counter() - t0:.0f} s)")
    print(f"{'':>12} " + " ".join(f"{s:>12}" for s in STAGES))
    for kind, c in sorted(counts.items()) + [("all", total)]:
        print(f"{kind:>12} " + " ".join(f"{c[s]:>12d}" for s in STAGES))
    out = ROOT / "logs/miss_probe" / f"{args.set}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"weights": weights.name, "op": args.op, "iou": args.iou, "counts": counts,
                               "total": total, "slices": rows}, indent=1) + "\n", encoding="utf-8")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
