"""The Figshare brain tumor slices (J. Cheng, 2017; CC BY 4.0; doi 10.6084/m9.figshare.1512427)
and their patient-wise train/val split.

A Figshare folder holds ``annotations.json`` (COCO instances, RLE masks; categories
``meningioma``, ``glioma``, ``pituitary``) beside ``images/N.jpg``, where ``N`` is
Figshare's own slice number (1..3064). Neighbouring numbers are mostly one patient's
neighbouring slices, so a split by slice would put one patient on both sides and
inflate every val figure. The split, by the first rule the folder supports:

1. ``split.json`` with ``{"images": {"train": [coco ids], "val": [coco ids]}}``, written by
   ``braintumor fetch-data --dataset figshare`` (:mod:`braintumor.figshare_mat`) from the
   patient ids of the original ``.mat`` files;
2. ``patient_id`` on every image record: :func:`braintumor.figshare_mat.split_patients`;
3. **number blocks** (a folder without patient ids, e.g. ``../shared/data/figshare``): the
   numbers in :data:`VAL_BLOCKS` are val, every number within :data:`GAP` of a val block is
   left out of both sides (a patient's slices straddling a block edge), the rest is train.
   The archive is ordered by tumor type in long runs, so the three blocks hold one type
   each: meningioma 601-700, pituitary 1501-1600, glioma 2701-2800. None of these slices is
   axial (meningioma sagittal, pituitary coronal, glioma coronal then sagittal): the Figshare val
   figures are figures on sagittal and coronal slices.

Every rule is a property of the slice number or patient, never a random draw: the same
split on every machine and in every run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from braintumor.errors import BrainTumorError

CATEGORIES = ("meningioma", "glioma", "pituitary")
"""The set's category names (COCO ids 1, 2, 3 = ``cjdata.label``)."""
VAL_BLOCKS: tuple[tuple[int, int], ...] = ((601, 700), (1501, 1600), (2701, 2800))  # inclusive number ranges
GAP = 10  # numbers this close to a val block belong to neither split
LICENCE = "Figshare brain tumor dataset, J. Cheng (2017), CC BY 4.0, doi 10.6084/m9.figshare.1512427"


def slice_number(name: str | Path) -> int | None:
    """Figshare's number of ``images/N.jpg`` (or ``N.mat``); None when the name is not a number."""
    m = re.fullmatch(r"(\d+)", Path(name).stem)
    return int(m.group(1)) if m else None


def block_split(number: int) -> str | None:
    """``"val"``, ``"train"`` or None (inside the gap around a val block) for a slice number."""
    for lo, hi in VAL_BLOCKS:
        if lo <= number <= hi:
            return "val"
    for lo, hi in VAL_BLOCKS:
        if lo - GAP <= number <= hi + GAP:
            return None
    return "train"


def is_figshare_folder(data_dir: str | Path) -> bool:
    """A Figshare folder: ``annotations.json`` (COCO) beside an ``images/`` folder."""
    d = Path(data_dir)
    return (d / "annotations.json").is_file() and (d / "images").is_dir()


def split_image_ids(data_dir: str | Path, images: list[dict]) -> dict[str, set]:
    """COCO image ids per split (``{"train": {...}, "val": {...}}``), by the first rule of the module docstring."""
    d = Path(data_dir)
    split_file = d / "split.json"
    if split_file.is_file():
        try:
            doc = json.loads(split_file.read_text(encoding="utf-8"))
            return {k: set(v) for k, v in doc["images"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BrainTumorError(f"{split_file}: not a split file (needs 'images': {{'train': [ids], 'val': [ids]}})") from None
    if images and all(r.get("patient_id") is not None for r in images):
        from braintumor.figshare_mat import SPLIT_SEED, VAL_FRACTION, split_patients

        by_patient = split_patients((str(r["patient_id"]) for r in images), VAL_FRACTION, SPLIT_SEED)
        val = set(by_patient["val"])
        return {"train": {r["id"] for r in images if str(r["patient_id"]) not in val},
                "val": {r["id"] for r in images if str(r["patient_id"]) in val}}
    out: dict[str, set] = {"train": set(), "val": set()}
    for r in images:
        number = slice_number(r.get("file_name", ""))
        if number is None:
            raise BrainTumorError(f"{d / 'annotations.json'}: image {r.get('file_name')!r} has neither a patient_id "
                                  "nor a Figshare number as its name, and there is no split.json: no patient-wise "
                                  "split can be made (convert the archive with braintumor fetch-data --dataset figshare)")
        side = block_split(number)
        if side is not None:
            out[side].add(r["id"])
    return out


def load_figshare(data_dir: str | Path, split: str, class_names: Iterable[str] | None = None,
                  class_map: dict[str, str] | None = None, verify: bool = False):
    """The ``split`` (``train``, ``val`` or ``all``) of a Figshare folder as a :class:`braintumor.data.Dataset`;
    no patient is on both sides. ``class_map``: category name -> class name (default for a
    ``["BG", "tumor"]`` model: all three types -> ``tumor``); the annotations of categories it leaves out are skipped, one counted warning each."""
    from braintumor.data import CLASS_NAMES, _read_json, load_coco

    d = Path(data_dir)
    names = [c.lower() for c in (class_names or ["BG", "tumor"])]
    if class_map is None and names[1:] == ["tumor"]:  # a tumor / no-tumor model: every type is a tumor
        class_map = {c: "tumor" for c in CATEGORIES}
    if not is_figshare_folder(d):
        raise BrainTumorError(f"{d}: not a Figshare folder (needs annotations.json and images/)")
    doc = _read_json(d / "annotations.json")
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise BrainTumorError(f"{d / 'annotations.json'}: not COCO instance JSON (needs 'images' and 'annotations' lists)")
    records = [r for r in doc["images"] if isinstance(r, dict) and "id" in r]
    if split != "all":
        ids = split_image_ids(d, records)
        if split not in ids:
            raise BrainTumorError(f"{d}: unknown Figshare split {split!r} (a Figshare folder has "
                                  f"{', '.join(sorted(ids))} or all)")
        doc = {**doc, "images": [r for r in records if r["id"] in ids[split]]}
    ds = load_coco(d / "annotations.json", d / "images", class_names or CLASS_NAMES, verify, doc=doc,
                   class_map=class_map)
    ds.format = "figshare"
    return ds
