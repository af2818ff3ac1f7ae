"""The ``braintumor`` command line (also ``python -m braintumor``).

Every sub-command lives in the module of its stage; this file only parses
arguments and turns :class:`~braintumor.errors.BrainTumorError` into a one-line
``error: ...`` on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from braintumor.config import LAYER_GROUPS
from braintumor.errors import BrainTumorError

# sub-command -> "module:function"; modules are imported only when used (TensorFlow is slow to import)
_HANDLERS = {
    "data check": "braintumor.data:cli_check",
    "data export-coco": "braintumor.data:cli_export_coco",
    "data preview": "braintumor.preview:cli_preview",
    "fetch-data": "braintumor.fetch:cli_fetch",
    "model-summary": "braintumor.mrcnn.summary:cli_summary",
    "train": "braintumor.train:cli_train",
    "evaluate": "braintumor.evaluate:cli_evaluate",
    "detect": "braintumor.detect:cli_detect",
    "app": "braintumor.app:cli_app",
    "fit-image-score": "braintumor.fit_image_score:cli_fit_image_score",
    "fit-region-score": "braintumor.fit_region_score:cli_fit_region_score",
    "calibrate": "braintumor.calibrate:cli_calibrate",
    "average": "braintumor.average:cli_average",
    "export": "braintumor.release:cli_export",
    "model-card": "braintumor.release:cli_model_card",
    "runs": "braintumor.runs:cli_runs",
}


PRECISION_HELP = ("auto, float32 or mixed_bfloat16: a released model computes in bfloat16 (with its calibrated "
                  "thresholds) only on a CPU with bfloat16 and when its card holds an accepted calibration; "
                  "for a checkpoint it overrides PRECISION (default: auto, or $BRAINTUMOR_PRECISION)")


def _region_options(parser, what: str) -> None:
    """``--region-score`` and ``--region-weight`` (:mod:`braintumor.region_score`); ``what`` the scorer does there."""
    parser.add_argument("--region-score", metavar="FILE.h5", action="append",
                        help=f"region scorer of braintumor fit-region-score: {what}; repeated: the scorers read as "
                             f"one (the geometric mean of their P(tumor); the first one's weight and floor)")
    parser.add_argument("--region-weight", type=float, metavar="W",
                        help="with a region scorer: combined = detector^(1-W) x region^W (default: the scorer's own)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="braintumor", description="Brain-MRI tumor detection and segmentation (Mask R-CNN).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    data = sub.add_parser("data", help="inspect or convert an annotated dataset")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    check = dsub.add_parser("check", help="count images and instances per split, report problems")
    check.add_argument("--data", help="dataset folder (default: $BRAIN_TUMOR_DATA or data/brain_tumor_data)")
    check.add_argument("--splits", nargs="+", default=None, help="splits to check (default: those present of train, val, test)")
    exp = dsub.add_parser("export-coco", help="write a split as COCO instance JSON")
    exp.add_argument("--data", help="dataset folder")
    exp.add_argument("--split", required=True, help="split name (train, val, test)")
    exp.add_argument("--out", required=True, help="output JSON file")
    pre = dsub.add_parser("preview", help="draw training samples as a preset's run sees them (augmented, copy-paste "
                                          "included) with their outlines, as one PNG")
    pre.add_argument("--config", default="mrcnn_config/resnet101.toml", help="preset TOML file or name")
    pre.add_argument("--data", help="dataset folder (the thesis data; the other SOURCES beside it)")
    pre.add_argument("--source", action="append", default=None, metavar="NAME=DIR",
                     help="folder of one of the preset's SOURCES (default: DIR or NAME beside the --data folder)")
    pre.add_argument("--n", type=int, default=16, help="samples to draw (default 16)")
    pre.add_argument("--seed", type=int, default=0, help="seed of the draw and the augmentation (default 0)")
    pre.add_argument("--out", required=True, help="output PNG file")

    fetch = sub.add_parser("fetch-data", help="download a dataset: brain_tumor_data (GitHub) or figshare (3064 slices)")
    fetch.add_argument("--dest", default="data", help="folder to put the dataset folder in (default: data)")
    fetch.add_argument("--dataset", choices=["brain_tumor_data", "figshare"], default="brain_tumor_data",
                       help="brain_tumor_data (default) or figshare: Cheng's .mat archive, converted to COCO "
                            "with patient ids and a patient-wise split")
    fetch.add_argument("--from", dest="from_dir", metavar="DIR",
                       help="figshare: convert an archive already downloaded (its zip parts or .mat files)")

    ms = sub.add_parser("model-summary", help="print the inference model's layer groups and parameter counts")
    ms.add_argument("--config", default="mrcnn_config/resnet101.toml", help="preset TOML file or name")
    ms.add_argument("--mode", choices=["inference", "training"], default="inference")

    tr = sub.add_parser("train", help="train Mask R-CNN on an annotated dataset")
    tr.add_argument("--config", default="mrcnn_config/resnet101.toml", help="preset TOML file or name")
    tr.add_argument("--data", help="dataset folder")
    tr.add_argument("--init", default=None, help="coco, imagenet, last, random or a path to an .h5 (default: the preset's INIT)")
    tr.add_argument("--epochs", type=int, help="total epochs (overrides EPOCHS)")
    tr.add_argument("--stop-after", type=int, metavar="EPOCH",
                    help="stop cleanly after this epoch (the schedule still spans EPOCHS; continue later with --init last)")
    tr.add_argument("--steps", type=int, help="steps per epoch (overrides STEPS_PER_EPOCH)")
    tr.add_argument("--val-steps", type=int, help="validation steps (overrides VALIDATION_STEPS)")
    tr.add_argument("--layers", choices=list(LAYER_GROUPS), help="layer group to train (overrides the preset)")
    tr.add_argument("--tumor-free", action="append", default=None, metavar="DIR", help="folder of tumor-free images mixed in as empty targets (repeatable)")
    tr.add_argument("--tumor-free-fraction", type=float, help="share of tumor-free samples per epoch")
    tr.add_argument("--source", action="append", default=None, metavar="NAME=DIR",
                    help="folder of one of the preset's SOURCES (default: DIR or NAME beside the --data folder)")
    tr.add_argument("--logs", default="logs", help="folder for run folders (default: logs)")
    tr.add_argument("--name", help="run name (overrides NAME)")

    ev = sub.add_parser("evaluate", help="measure a checkpoint on a split or an image folder")
    ev.add_argument("--weights", help="checkpoint .h5 path, or 'last' (default: the released model in models/)")
    ev.add_argument("--config", help="preset (default: the config.toml of the checkpoint's run folder)")
    ev.add_argument("--data", help="dataset folder")
    ev.add_argument("--split", default="val", help="split to evaluate (default: val)")
    ev.add_argument("--images", help="folder of unannotated images (e.g. tumor-free scans) instead of a split")
    ev.add_argument("--tumor-free", help="folder of tumor-free images for image-level specificity")
    ev.add_argument("--tumor-free-part", choices=["held-out", "train", "all"], default="held-out",
                    help="which slices of --tumor-free to use (split by slice; training mixes in 'train')")
    ev.add_argument("--out", help="output folder (default: <run folder>/eval_<split>, for a Figshare folder eval_<folder>_<split>)")
    ev.add_argument("--logs", default="logs", help="logs folder for --weights last")
    ev.add_argument("--min-confidence", type=float, help="override DETECTION_MIN_CONFIDENCE")
    ev.add_argument("--flagged-min-confidence", type=float, metavar="X",
                    help="on images the image-level head flags, detections count down to X "
                         "(default: DETECTION_FLAGGED_MIN_CONFIDENCE of the model's config; 0: off)")
    ev.add_argument("--at-operating-point", action="store_true",
                    help="report at the operating point found on these images (sensitivity >= 0.95), "
                         "from the same detections: one pass instead of two")
    ev.add_argument("--flip", action="store_true",
                    help="test-time horizontal flip: detect on each image and its mirror image, merged (TEST_TIME_FLIP)")
    ev.add_argument("--mask-threshold", type=float, metavar="P",
                    help="override DETECTION_MASK_THRESHOLD: a region's outline is where its mask probability >= P")
    ev.add_argument("--source-size", type=int, metavar="PX",
                    help="shortcut probe: shrink every image to PX on its longer side and back before detection")
    ev.add_argument("--image-score", metavar="FILE.json",
                    help="image-level head of braintumor fit-image-score (default: the release's own, if it has one)")
    _region_options(ev, "each region's score becomes the combined one (default: the release's own, if it has one)")
    ev.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16"], help=PRECISION_HELP)
    ev.add_argument("--source-probe", choices=["window"],
                    help="shortcut probe: window: brighten every image to the tumor-free Br35H slices' grey levels")
    ev.add_argument("--window-p99", type=float, metavar="GREY",
                    help="with --source-probe window: the 99th grey percentile every image is scaled to "
                         "(default 213, Br35H's; 165, the tumor scans', normalises every image to one windowing)")

    de = sub.add_parser("detect", help="detect tumors in image files (JPEG, PNG, DICOM); writes overlays and JSON")
    de.add_argument("images", nargs="+", help="image files")
    de.add_argument("--weights", help="checkpoint .h5 path, or 'last' (default: the released model in models/)")
    de.add_argument("--config", help="preset (default: from the checkpoint's run folder)")
    de.add_argument("--out", default="detections", help="output folder (default: detections)")
    de.add_argument("--min-confidence", type=float, help="override DETECTION_MIN_CONFIDENCE")
    de.add_argument("--logs", default="logs", help="logs folder for --weights last")
    de.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16"], help=PRECISION_HELP)

    ap = sub.add_parser("app", help="serve the decision-support app in the browser (Voila)")
    ap.add_argument("--port", type=int, default=8866)
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    ap.add_argument("--logs", default="logs", help="logs folder with checkpoints")
    ap.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    ap.add_argument("--ensure-weights", action="store_true", help="say in one line what is missing when there is no released model")

    fi = sub.add_parser("fit-image-score", help="fit a model's image-level 'tumor present' head (for export --image-score)")
    fi.add_argument("--weights", help="checkpoint or release (default: the released model in models/)")
    fi.add_argument("--config", help="preset (default: the config.toml of the checkpoint's run folder); e.g. the run's "
                                     "config with PRECISION = \"float32\", as the release computes")
    fi.add_argument("--data", help="dataset folder: train (fit) and val (threshold)")
    fi.add_argument("--tumor-free", help="folder of tumor-free images (its 'train' slices are fitted; needed unless "
                                         "--threshold-of)")
    fi.add_argument("--figshare", help="Figshare folder: a sample of its train blocks is fitted too; with "
                                       "--operating-point its val blocks, too, get no green 'no tumor'")
    fi.add_argument("--figshare-sample", type=int, default=200, metavar="N", help="Figshare train slices used (default 200; 1537 or more: all of them)")
    fi.add_argument("--figshare-seed", type=int, default=0, help="seed of that sample (default 0)")
    fi.add_argument("--out", required=True, help="output JSON file")
    fi.add_argument("--cache", help="folder to cache features in (one .npz per set and model)")
    fi.add_argument("--l2", type=float, default=0.01, help="L2 penalty on standardised features (default 0.01)")
    fi.add_argument("--confident-detection", type=float, metavar="C",
                    help="a detection scoring at least this flags the image by itself (default 0.9 for a new head; "
                         "with --threshold-of: the head's own unless given)")
    fi.add_argument("--sensitivity", type=float, default=0.95, help="val sensitivity the threshold keeps (default 0.95)")
    fi.add_argument("--threshold-of", metavar="HEAD.json|model",
                    help="keep this head (a file, or 'model': the release's own) and choose only its threshold again "
                         "on val, e.g. for detections re-scored by --region-score")
    _region_options(fi, "each image's best score is the combined one")
    fi.add_argument("--operating-point", type=float, metavar="T",
                    help="the model's operating point: the threshold is also low enough that no val scan (and with "
                         "--figshare no Figshare val slice) without a detection at T goes unflagged (no green "
                         "'no tumor' on a val tumor scan)")

    fr = sub.add_parser("fit-region-score", help="fit a model's region scorer, a second opinion on each region's pixels "
                                                 "(for evaluate/export --region-score)")
    fr.add_argument("--weights", help="checkpoint or release (default: the released model in models/)")
    fr.add_argument("--config", help="preset (default: the config.toml of the checkpoint's run folder)")
    fr.add_argument("--logs", default="logs", help="logs folder with checkpoints")
    fr.add_argument("--data", help="dataset folder: its train split is fitted (default: the thesis data)")
    fr.add_argument("--figshare", help="Figshare folder: its train blocks are fitted too")
    fr.add_argument("--tumor-free", help="folder of tumor-free images: its 'train' slices are fitted too")
    fr.add_argument("--figshare-every", type=int, default=2, metavar="N", help="every N-th Figshare train slice (default 2)")
    fr.add_argument("--tumor-free-every", type=int, default=2, metavar="N", help="every N-th tumor-free train image (default 2)")
    fr.add_argument("--size", type=int, default=64, help="crop side in pixels (default 64)")
    fr.add_argument("--context", type=float, nargs="+", default=[1.5], metavar="C",
                    help="crop side / the region box's longer side; several: one channel each (default 1.5)")
    fr.add_argument("--epochs", type=int, default=8, help="passes over the training regions (default 8)")
    fr.add_argument("--seed", type=int, default=0)
    fr.add_argument("--weight", type=float, default=0.5,
                    help="combined score = detector^(1-w) x region^w (default 0.5; choose it on val with "
                         "benchmarks/region_score_sweep.py)")
    fr.add_argument("--cache", default="logs/region_score_cache", help="folder to cache crops in ('' for none)")
    fr.add_argument("--out", required=True, help="output file (.h5)")
    fi.add_argument("--logs", default="logs", help="logs folder for --weights last")
    fi.add_argument("--precision", choices=["float32", "mixed_bfloat16"], default="float32",
                    help="precision of the features (default float32: the head serves the release's float32 "
                         "computation; other precisions get a calibrated threshold, braintumor calibrate)")

    ca = sub.add_parser("calibrate", help="choose a released model's thresholds again for bfloat16 inference, on val, "
                                          "and write them with their figures into its model card")
    ca.add_argument("--weights", help="released model (default: the one in models/)")
    ca.add_argument("--data", help="dataset folder with the val split")
    ca.add_argument("--split", default="val", help="split the thresholds are chosen on (default: val)")
    ca.add_argument("--tumor-free", required=True, help="folder of tumor-free images (its held-out slices are used)")
    ca.add_argument("--figshare", help="Figshare folder: no threshold may call one of its val slices 'no tumor' "
                                       "(needed when the release's head was held so, fit-image-score --figshare)")
    ca.add_argument("--precision", choices=["mixed_bfloat16"], default="mixed_bfloat16", help="precision to calibrate")
    ca.add_argument("--sensitivity", type=float, default=0.95, help="val sensitivity both thresholds keep (default 0.95)")
    ca.add_argument("--readme", help="README to render the updated model card into (between its card markers)")

    av = sub.add_parser("average", help="average several checkpoints' weights (one run's tail, or runs from one start) "
                                        "into a new run folder")
    av.add_argument("--weights", action="append", required=True, metavar="H5",
                    help="training checkpoint or release (repeat for each member; two or more)")
    av.add_argument("--coef", type=float, nargs="+", metavar="C",
                    help="one coefficient per member, normalised to sum 1 (default: equal shares)")
    av.add_argument("--out", required=True, help="new folder for the averaged checkpoint (a run folder)")

    ex = sub.add_parser("export", help="write the released model (models/) from a training checkpoint, with its model card")
    ex.add_argument("--weights", required=True,
                    help="training checkpoint .h5 (its run's config.toml beside it), 'last', or a release to release "
                         "again with new thresholds and figures")
    ex.add_argument("--out", help="models folder (default: $BRAINTUMOR_MODELS or models/)")
    ex.add_argument("--metrics", action="append", metavar="METRICS.json",
                    help="metrics.json (or its folder) of braintumor evaluate on this checkpoint (repeatable; val first)")
    ex.add_argument("--threshold", type=float, help="operating point (default: the run's DETECTION_MIN_CONFIDENCE)")
    ex.add_argument("--encoding", choices=["float16", "int8"], default="float16",
                    help="float16 (2 files, ~128 MB for ResNet-101) or per-channel int8 (1 file, ~65 MB)")
    ex.add_argument("--replace", action="store_true", help="replace the release already in the models folder")
    ex.add_argument("--config", help="preset for a checkpoint without config.toml beside it")
    ex.add_argument("--data", help="dataset folder: its first val images check the release against the checkpoint")
    ex.add_argument("--equivalence-images", type=int, default=5, metavar="N", help="val images for that check (default 5)")
    ex.add_argument("--train-command", help="the command that trained the run (for the card)")
    ex.add_argument("--name", help="release name (default: <NAME>-<BACKBONE>, e.g. tumor-resnet101; a release keeps its own)")
    ex.add_argument("--readme", help="README to write the model card into (between the model-card markers)")
    ex.add_argument("--image-score", metavar="FILE.json", help="image-level head of braintumor fit-image-score, embedded in the release")
    _region_options(ex, "embedded in the release, which re-scores its regions with it (evaluate with --region-score "
                        "for the --metrics)")
    ex.add_argument("--flagged-threshold", type=float, metavar="X",
                    help="DETECTION_FLAGGED_MIN_CONFIDENCE: on scans the image-level head flags, outline regions "
                         "down to X (default: the run's; 0: off)")
    ex.add_argument("--mask-threshold", type=float, metavar="P",
                    help="DETECTION_MASK_THRESHOLD: outline the pixels whose mask probability is >= P (default: the run's)")
    ex.add_argument("--force", action="store_true", help="keep the release even if it is not equivalent to the checkpoint")

    ru = sub.add_parser("runs", help="list the training runs in a logs folder with their progress and the "
                                     "evaluations made of them, to compare runs")
    ru.add_argument("--logs", default="logs", help="logs folder (default: logs)")
    ru.add_argument("--evals", action="append", metavar="DIR",
                    help="another folder to search for evaluation reports (metrics.json), e.g. out (repeatable)")
    ru.add_argument("--name", help="only run folders whose name contains this")
    ru.add_argument("--json", action="store_true", help="print JSON instead of Markdown tables")

    mc = sub.add_parser("model-card", help="print the released model's card as Markdown, or write it into the README")
    mc.add_argument("--release", help="release head file (default: the one in the models folder)")
    mc.add_argument("--models", help="models folder (default: $BRAINTUMOR_MODELS or models/)")
    mc.add_argument("--readme", help="README to update between the model-card markers")
    return p


def _handler_for(args: argparse.Namespace):
    key = args.command if args.command != "data" else f"data {args.data_command}"
    module_name, func_name = _HANDLERS[key].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, func_name)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        handler = _handler_for(args)
        rc = handler(args)
        return int(rc or 0)
    except BrainTumorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
