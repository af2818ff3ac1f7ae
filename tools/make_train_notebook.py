"""Writes notebooks/01_train.ipynb (the training chapter) from the cells below, without outputs.

Edit the cells here, then run ``.venv/bin/python tools/make_train_notebook.py``; ``tests/test_notebooks.py``
checks that the committed notebook is what this script writes.
"""

from pathlib import Path

import nbformat as nbf

md = nbf.v4.new_markdown_cell
code = nbf.v4.new_code_cell

import sys

sys.path.insert(0, str(Path(__file__).resolve().parent))
from setup_cell import setup_cell  # noqa: E402  (the cell is built from braintumor/colab.py)

SETUP = setup_cell("train")

PARAMS = r'''# Parameters: the preset and how long to train. CI runs this notebook with
# BT_PRESET=quick BT_EPOCHS=1 BT_STEPS=2 (minutes on a CPU); the thesis run is resnet101, 15 x 100.
PRESET = os.environ.get("BT_PRESET", "resnet101")
EPOCHS = int(os.environ["BT_EPOCHS"]) if os.environ.get("BT_EPOCHS") else None  # None: the preset's
STEPS = int(os.environ["BT_STEPS"]) if os.environ.get("BT_STEPS") else None
VAL_STEPS = int(os.environ["BT_VAL_STEPS"]) if os.environ.get("BT_VAL_STEPS") else None
EVAL_LIMIT = int(os.environ["BT_EVAL_LIMIT"]) if os.environ.get("BT_EVAL_LIMIT") else None  # None: every val image
LOGS = Path(os.environ.get("BT_LOGS", "logs"))
# Tumor-free scans (Br35H), mixed into training as empty targets and held out (split by slice) for specificity.
# None: looked for at data/tumor_free; the resnet101 preset expects them.
TUMOR_FREE = os.environ.get("BT_TUMOR_FREE") or ("data/tumor_free" if Path("data/tumor_free").is_dir() else None)

from braintumor.paths import resolve_data_dir

DATA = resolve_data_dir(None)
if not DATA.is_dir():
    subprocess.run([sys.executable, "-m", "braintumor", "fetch-data", "--dest", "data"], check=True)
    DATA = Path("data/brain_tumor_data")
print("data:", DATA, "| tumor-free:", TUMOR_FREE, "| preset:", PRESET, "| epochs:", EPOCHS or "preset", "| steps:", STEPS or "preset")'''

DATA = r'''from braintumor.data import load_split, summarize

train_ds = load_split(DATA, "train")
val_ds = load_split(DATA, "val")
for name, ds in (("train", train_ds), ("val", val_ds)):
    print(name)
    print("\n".join("  " + line for line in summarize(ds)))'''

SHOW_DATA = r'''import matplotlib.pyplot as plt
import numpy as np

from braintumor.boxes import masks_to_boxes
from braintumor.visualize import draw_overlay


def ground_truth(ds, i):
    """The annotation of image i as a 'result' (score 1.0 per tumor) for drawing."""
    masks, class_ids = ds.load_mask(i)
    return {"rois": masks_to_boxes(masks), "class_ids": class_ids,
            "scores": np.ones(len(class_ids), np.float32), "masks": masks}


fig, axes = plt.subplots(1, 4, figsize=(16, 4.5))
for ax, i in zip(axes, np.linspace(0, len(train_ds) - 1, 4).astype(int)):
    ax.imshow(draw_overlay(train_ds.load_image(i), ground_truth(train_ds, i), train_ds.class_names))
    ax.set_title(train_ds.image_info[i]["name"])
    ax.axis("off")
plt.show()'''

CONFIG = r'''from braintumor.paths import resolve_preset
from braintumor.train import build_config
import argparse

args = argparse.Namespace(config=str(resolve_preset(PRESET)), data=str(DATA), logs=str(LOGS), init=None,
                          epochs=EPOCHS, steps=STEPS, val_steps=VAL_STEPS, layers=None, tumor_free=[TUMOR_FREE] if TUMOR_FREE else None,
                          tumor_free_fraction=None, name=None)
config = build_config(args)
config.display();'''

TRAIN = r'''from braintumor.train import live_curves_callback, run_training

run_dir = run_training(config, DATA, LOGS, verbose=2, callbacks=[live_curves_callback()])
print("run folder:", run_dir)'''

HISTORY = r'''from braintumor.train import read_history

rows = read_history(run_dir / "history.csv")
try:
    import pandas as pd

    display(pd.DataFrame(rows).set_index("epoch"))
except ImportError:
    for r in rows:
        print(r)''' 

EVAL = r'''from braintumor.evaluate import evaluate_dataset, format_summary, write_report
from braintumor.inference import load_predictor

predictor = load_predictor(sorted(run_dir.glob("mask_rcnn_*.h5"))[-1], min_confidence=0.05)
eval_ds = val_ds.head(EVAL_LIMIT)
free_ds = None
if TUMOR_FREE:
    from braintumor.tumor_free import load_tumor_free

    free_ds = load_tumor_free(TUMOR_FREE, "held-out").head(EVAL_LIMIT)  # slices training never saw
results = evaluate_dataset(predictor, eval_ds, predictor.threshold, tumor_free_dataset=free_ds, progress=False)
written = write_report(results, None, run_dir / "eval_val")
print(format_summary(results))'''

GALLERY = r'''from IPython.display import Image as IPImage, display

for name in ("pr_curve.png", "threshold_curves.png", "worst.png"):
    if (run_dir / "eval_val" / name).is_file():
        display(IPImage(filename=str(run_dir / "eval_val" / name)))'''

SIDE = r'''from braintumor.detect import filter_result
from braintumor.visualize import side_by_side

fig, axes = plt.subplots(min(3, len(eval_ds)), 1, figsize=(10, 5 * min(3, len(eval_ds))), squeeze=False)
for ax, i in zip(axes[:, 0], range(min(3, len(eval_ds)))):
    image = eval_ds.load_image(i)
    pred = filter_result(predictor.detect([image])[0], predictor.threshold)  # the detections at the threshold
    ax.imshow(side_by_side(draw_overlay(image, ground_truth(eval_ds, i), eval_ds.class_names),
                           draw_overlay(image, pred, eval_ds.class_names)))
    ax.set_title(f"{eval_ds.image_info[i]['name']}: ground truth (left), prediction (right)")
    ax.axis("off")
plt.show()'''

cells = [
    md("# Training Mask R-CNN for brain-tumor segmentation\n\n"
       "This notebook is the training chapter of the project: the annotated MR images, the model's settings, "
       "a training run with its loss curves, and an honest evaluation on the validation split.\n\n"
       "The model is Mask R-CNN (He et al., 2017) with a ResNet-101 + FPN backbone, written for TensorFlow 2 / "
       "Keras 3 in `braintumor/mrcnn/`. The 2022 thesis fine-tuned COCO weights for 15 epochs x 100 steps "
       "(preset `resnet101_2022`). No pretrained weights are needed here: the `resnet101` preset keeps that "
       "schedule and is set up to train from random initialisation (GroupNorm, anchors sized to the tumors, "
       "learning-rate warm-up and cosine decay, tumor-free scans as negatives). Every cell calls the `braintumor` package: the "
       "logic lives there, with its tests."),
    md("## 1. Setup\n\nIn a source checkout nothing is installed. In **Colab**, opened from the project's GitHub "
       "repository, this cell clones that repository, installs what Colab lacks from `requirements.txt` (Colab's "
       "TensorFlow, Keras and NumPy stay as they are) and can keep `logs/` on Google Drive. Opened any other way, "
       "set `PROJECT_SOURCE` (a git URL, GitHub `owner/name`, or a checkout's folder on Drive); without it the cell "
       "stops and says so."),
    code(SETUP),
    md("## 2. Parameters\n\nPick the preset (`mrcnn_config/*.toml`) and, optionally, shorter epochs for a try-out. "
       "The dataset is found at `$BRAIN_TUMOR_DATA` or `data/brain_tumor_data` (downloaded when missing). "
       "Tumor-free scans (`TUMOR_FREE`, e.g. the `no` images of Br35H) are optional: training mixes them in as images "
       "with nothing to find, and evaluation measures on the slices held out from training how often a scan without "
       "a tumor is flagged."),
    code(PARAMS),
    md("## 3. The data\n\n`brain_tumor_data`: brain MR slices with tumor outlines drawn in the VGG Image Annotator "
       "(polygons), one class, `tumor`. The check below counts images, tumors and image sizes per split."),
    code(DATA),
    md("Four training images with their annotated tumors (filled mask, outline and box):"),
    code(SHOW_DATA),
    md("## 4. Configuration\n\nThe preset overrides the defaults of `braintumor.config` (Matterport's setting names). "
       "Derived values (batch size, input shape, feature-map sizes) are computed once."),
    code(CONFIG),
    md("## 5. Training\n\nEach epoch writes a checkpoint (`mask_rcnn_<name>_<epoch>.h5`, atomically), a row of "
       "`history.csv` with the five losses (RPN class and box, head class and box, mask) for train and val, and "
       "redraws the loss curves shown here. Interrupting the kernel saves the epoch in progress; "
       "`braintumor train --init last` continues."),
    code(TRAIN),
    code(HISTORY),
    md("## 6. Evaluation on the validation split\n\nDice and IoU of the predicted tumor area, COCO mask mAP, "
       "instance precision/recall, and image-level sensitivity, at the preset's confidence threshold "
       "(`DETECTION_MIN_CONFIDENCE`). With tumor-free scans, also specificity (the share of tumor-free scans with no "
       "detection), both as curves over the threshold, and the operating point: the threshold that keeps "
       "sensitivity ≥ 0.95 at the best specificity. The report (`metrics.json`, `metrics.md`, curves, gallery) is "
       "written into the run folder."),
    code(EVAL),
    md("Precision-recall curve, sensitivity and specificity over the threshold (with tumor-free scans), and the six "
       "images the model does worst on (ground truth beside prediction):"),
    code(GALLERY),
    md("## 7. Predictions beside ground truth"),
    code(SIDE),
    md("## 8. What next\n\n- `braintumor evaluate --weights last --split val --tumor-free DIR` does the same "
       "evaluation on every image from the command line; `--source-size 225` repeats it with every image shrunk to "
       "225 px, to check that the model does not tell tumor from no tumor by sharpness (the tumor-free scans are "
       "small).\n- `braintumor runs` lists the runs in `logs/` with their progress, losses and every evaluation "
       "made of them, to compare runs; a long run can be trained in sittings with `braintumor train ... "
       "--stop-after N` and `--init last`.\n- The released model was not trained on the 202 thesis images alone: "
       "the preset `resnet101_figshare` adds the Figshare slices (split by patient) and tumor-free slices as "
       "sources of their own, and its stages (`resnet101_figshare_stage4`, `_stage6`, ...) went on from each "
       "release; the README's *All runs at a glance* gives each run's settings and val figures. With the "
       "`figshare` and `tumor_free` folders beside the dataset folder, `PRESET = \"resnet101_figshare\"` above "
       "trains its first stage.\n- `notebooks/02_detect.ipynb` (or `braintumor app`) puts a "
       "checkpoint in the radiologist's hands."),
]

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01_train.ipynb"


def build():
    """The notebook (nbformat v4), cells without outputs. Cell ids are the cells' places
    (``cell-00``, ...), not random: writing the notebook again changes only what changed."""
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i:02d}"
    return nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                      "language": "python"}})


if __name__ == "__main__":
    nbf.write(build(), NOTEBOOK)
    print("wrote", NOTEBOOK)
