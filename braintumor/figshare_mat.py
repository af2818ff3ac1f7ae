"""``braintumor fetch-data --dataset figshare``: download and convert J. Cheng's Figshare brain-tumor set, with patient ids.

The set (figshare article 1512427, CC BY 4.0; 3064 T1-weighted contrast-enhanced
slices of 233 patients) comes as four zip parts, ``brainTumorDataPublic_1-766.zip``
... ``_2299-3064.zip``, of MATLAB v7.3 files ``N.mat``, each a struct ``cjdata``:

- ``image``: int16 slice (mostly 512 x 512);
- ``tumorMask``: the tumor as a binary mask;
- ``label``: 1 meningioma, 2 glioma, 3 pituitary tumor;
- ``PID``: the patient id (a MATLAB char array: uint16 codes);
- ``tumorBorder``: the hand-drawn outline the mask was filled from, as a flat vector of point pairs.

MATLAB v7.3 files are HDF5, read here with h5py. MATLAB stores arrays column-major
and HDF5 row-major, so an ``m x n`` MATLAB array reads as ``n x m``: image and
mask are transposed back (``.T``) to the orientation MATLAB shows. The outline
is checked against the mask of every slice (see :func:`border_order`); the
conversion reports in which pair order the outlines agree with the masks.

Intensities: each int16 slice is mapped linearly from its own min..max onto
0..255 (what MATLAB's ``imshow(I, [])`` shows, and what
:mod:`braintumor.imageio` does with 16-bit images that carry no window).

Written to ``<dest>/figshare/``::

    images/N.jpg              8-bit grey JPEG per slice (quality 95)
    annotations.json          COCO: categories meningioma 1, glioma 2, pituitary 3;
                              every image record carries "patient_id"; RLE masks
    split.json                patient-wise split: patients and image ids of train and val

``braintumor.data.load_split(DIR, "train" | "val")`` reads it through
:func:`braintumor.figshare.load_figshare` (the split from ``split.json``).

The split puts whole patients into train or val (never both): the sorted patient
ids are shuffled with a fixed seed and the first :data:`VAL_FRACTION` of them are val.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

import numpy as np

from braintumor.errors import BrainTumorError

ARTICLE_ID = 1512427
ARTICLE_URL = "https://figshare.com/articles/dataset/brain_tumor_dataset/1512427"
API_URL = f"https://api.figshare.com/v2/articles/{ARTICLE_ID}"
PARTS = ("brainTumorDataPublic_1-766.zip", "brainTumorDataPublic_767-1532.zip",
         "brainTumorDataPublic_1533-2298.zip", "brainTumorDataPublic_2299-3064.zip")
FOLDER = "figshare"
DOWNLOAD_FOLDER = "figshare_download"
COCO_CATEGORIES = ({"id": 1, "name": "meningioma", "supercategory": "tumor"},
              {"id": 2, "name": "glioma", "supercategory": "tumor"},
              {"id": 3, "name": "pituitary", "supercategory": "tumor"})
VAL_FRACTION = 0.2
SPLIT_SEED = 0
JPEG_QUALITY = 95
TIMEOUT_S = 60.0
_CHUNK = 1 << 20
_BORDER_TOLERANCE_PX = 2
_BORDER_AGREEMENT = 0.9


# ----------------------------------------------------------------------------- one .mat file
@dataclass
class Slice:
    """One slice of the set, in MATLAB's orientation: ``image`` uint8 [H, W], ``mask`` bool [H, W]."""

    number: int
    image: np.ndarray
    mask: np.ndarray
    label: int
    patient_id: str
    border: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """The outline's point pairs as stored, ``[K, 2]`` (see :func:`border_order`)."""


def to_uint8(image: np.ndarray) -> np.ndarray:
    """int16 slice -> uint8 by its own min..max (a constant slice becomes 0)."""
    from braintumor.imageio import _scale_to_uint8

    return _scale_to_uint8(image)


def _matlab_array(group, key: str, name: str) -> np.ndarray:
    """``cjdata.<key>`` in MATLAB's orientation (HDF5 holds MATLAB arrays transposed)."""
    if key not in group:
        raise BrainTumorError(f"{name}: cjdata has no '{key}' field (not a file of the Figshare brain-tumor set)")
    ds = group[key]
    if not hasattr(ds, "shape"):
        raise BrainTumorError(f"{name}: cjdata.{key} is not an array")
    if ds.attrs.get("MATLAB_empty", 0):
        return np.zeros((0, 0))
    return np.asarray(ds[()]).T


def _matlab_string(a: np.ndarray) -> str:
    """A MATLAB char array (uint16 character codes) as text."""
    return "".join(chr(int(c)) for c in np.asarray(a).ravel(order="F") if int(c)).strip()


def read_mat(source: str | os.PathLike | bytes, name: str | None = None) -> Slice:
    """Read one ``N.mat`` (a path or its bytes) of the Figshare set; errors name the file."""
    import h5py

    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "<bytes>"
        handle: Any = io.BytesIO(bytes(source))
    else:
        name = name or str(source)
        handle = str(source)
    stem = PurePosixPath(name.replace("\\", "/").rsplit(":", 1)[-1]).stem  # "part.zip:dir/12.mat" -> 12
    try:
        number = int(stem)
    except ValueError:
        raise BrainTumorError(f"{name}: not named N.mat (the set numbers its slices 1.mat ... 3064.mat)") from None
    try:
        f = h5py.File(handle, "r")
    except FileNotFoundError:
        raise BrainTumorError(f"{name}: no such file") from None
    except OSError:
        raise BrainTumorError(f"{name}: not a MATLAB v7.3 (HDF5) file; the Figshare set's files are v7.3") from None
    with f:
        group = f.get("cjdata")
        if group is None or not hasattr(group, "keys"):
            raise BrainTumorError(f"{name}: no 'cjdata' struct (not a file of the Figshare brain-tumor set)")
        image = _matlab_array(group, "image", name)
        mask = _matlab_array(group, "tumorMask", name)
        label_a = _matlab_array(group, "label", name)
        pid = _matlab_string(_matlab_array(group, "PID", name))
        border = (_matlab_array(group, "tumorBorder", name) if "tumorBorder" in group else np.zeros((0,)))
    if image.ndim != 2 or min(image.shape) < 1:
        raise BrainTumorError(f"{name}: cjdata.image has shape {image.shape}, expected a 2-D slice")
    if mask.shape != image.shape:
        raise BrainTumorError(f"{name}: cjdata.tumorMask has shape {mask.shape} but the image {image.shape}")
    labels = np.asarray(label_a, dtype=np.float64).ravel()
    if labels.size != 1 or float(labels[0]) not in (1.0, 2.0, 3.0):
        shown = ", ".join(f"{v:g}" for v in labels[:3]) or "empty"
        raise BrainTumorError(f"{name}: cjdata.label is {shown}, expected 1, 2 or 3")
    if not pid:
        raise BrainTumorError(f"{name}: cjdata.PID (the patient id) is empty")
    border = np.asarray(border, dtype=np.float64).ravel()
    border = border[: border.size // 2 * 2].reshape(-1, 2)
    return Slice(number=number, image=to_uint8(image), mask=np.asarray(mask) != 0,
                 label=int(labels[0]), patient_id=pid, border=border)


def _agreement(mask: np.ndarray, points_rc: np.ndarray, tol: int = _BORDER_TOLERANCE_PX) -> float:
    """Share of ``points_rc`` (row, col; MATLAB's 1-based) within ``tol`` pixels of the mask."""
    if not len(points_rc) or not mask.any():
        return 0.0
    h, w = mask.shape
    hits = 0
    for r, c in np.rint(points_rc - 1).astype(int):
        r0, r1, c0, c1 = max(r - tol, 0), min(r + tol + 1, h), max(c - tol, 0), min(c + tol + 1, w)
        hits += bool(r0 < r1 and c0 < c1 and mask[r0:r1, c0:c1].any())
    return hits / len(points_rc)


def border_order(s: Slice) -> str:
    """In which order ``tumorBorder``'s pairs follow the mask: ``"row,col"``, ``"x,y"``, ``"both"`` or ``"none"``.

    Image and mask are in MATLAB's orientation (transposed back from HDF5). An
    outline lies on its mask's edge, so at least 90 % of its points are within
    2 pixels of the mask in the right reading. Swapping the pair order is the same
    as transposing the mask, so this checks the outline's convention against the
    mask; a slice whose outline fits neither way is reported.
    """
    if not len(s.border):
        return "none"
    rc = _agreement(s.mask, s.border) >= _BORDER_AGREEMENT
    xy = _agreement(s.mask, s.border[:, ::-1]) >= _BORDER_AGREEMENT
    return "both" if rc and xy else "row,col" if rc else "x,y" if xy else "none"


# ----------------------------------------------------------------------------- finding the .mat files
def iter_mat_files(source: str | os.PathLike) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """``(name, read)`` of every ``*.mat`` in ``source``: a folder (searched recursively), a zip part,
    or the whole-article zip (zips inside a zip); ``read()`` returns the file's bytes."""
    source = Path(source)
    if source.is_file():
        paths = [source]
    elif source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in (".mat", ".zip"))
    else:
        raise BrainTumorError(f"{source}: no such file or folder")
    for p in paths:
        if p.suffix.lower() == ".mat":
            yield str(p), p.read_bytes
        elif p.suffix.lower() == ".zip":
            yield from _iter_zip(p, str(p))
        else:
            raise BrainTumorError(f"{p}: not a .zip or .mat file of the Figshare set")


def _iter_zip(file, label: str) -> Iterator[tuple[str, Callable[[], bytes]]]:
    try:
        zf = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError) as e:
        raise BrainTumorError(f"{label}: not a readable zip archive ({e}); download it again") from None
    with zf:
        for m in zf.infolist():
            if m.is_dir():
                continue
            lower = m.filename.lower()
            where = f"{label}:{m.filename}"
            if lower.endswith(".mat") and not PurePosixPath(m.filename).name.startswith("._"):
                def read(m=m, where=where, zf=zf) -> bytes:
                    try:
                        return zf.read(m)
                    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                        raise BrainTumorError(f"{where}: corrupt archive member ({e}); download it again") from None
                yield where, read
            elif lower.endswith(".zip"):
                try:
                    inner = io.BytesIO(zf.read(m))
                except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                    raise BrainTumorError(f"{where}: corrupt archive member ({e}); download it again") from None
                yield from _iter_zip(inner, where)


# ----------------------------------------------------------------------------- split and COCO
def split_patients(patient_ids, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """Whole patients into ``train`` and ``val``: the sorted unique ids shuffled with ``seed``; the first
    ``round(val_fraction * n)`` (at least 1 when there are 2 or more patients) are val."""
    if not 0 <= val_fraction < 1:
        raise BrainTumorError(f"val fraction must be in [0, 1), got {val_fraction}")
    ids = sorted(set(patient_ids))
    random.Random(seed).shuffle(ids)
    n_val = round(val_fraction * len(ids))
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    return {"train": sorted(ids[n_val:]), "val": sorted(ids[:n_val])}


def _rle(mask: np.ndarray) -> tuple[dict, int, list[float]]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    area = int(mask_utils.area(rle))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    rle["counts"] = rle["counts"].decode("ascii")
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]}, area, bbox


INFO = {"description": "Figshare brain tumor dataset (J. Cheng, 2017), CC BY 4.0, doi 10.6084/m9.figshare.1512427; "
                       "converted by braintumor fetch-data --dataset figshare",
        "url": ARTICLE_URL}


@dataclass
class ConversionReport:
    """What :func:`convert` did."""

    out_dir: Path
    slices: int = 0
    patients: int = 0
    empty_masks: list[int] = field(default_factory=list)
    duplicates: int = 0
    border_orders: dict[str, int] = field(default_factory=dict)
    border_mismatches: list[str] = field(default_factory=list)
    split: dict[str, list[str]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        by = ", ".join(f"{k}: {v}" for k, v in sorted(self.border_orders.items()))
        out = [f"{self.slices} slices of {self.patients} patients -> {self.out_dir}",
               f"patient-wise split: train {len(self.split.get('train', []))} patients, "
               f"val {len(self.split.get('val', []))} patients (split.json)",
               f"tumorBorder pairs that follow the mask, per slice: {by or 'no outlines'}"]
        if self.empty_masks:
            out.append(f"warning: {len(self.empty_masks)} slice(s) with an empty tumorMask kept without annotation: "
                       + ", ".join(map(str, self.empty_masks[:10])))
        if self.border_mismatches:
            out.append(f"warning: {len(self.border_mismatches)} outline(s) fit their mask in neither order, e.g. "
                       + ", ".join(self.border_mismatches[:5]))
        if self.duplicates:
            out.append(f"{self.duplicates} duplicate slice file(s) skipped (the same N.mat found twice)")
        return out


def convert(source: str | os.PathLike, out_dir: str | os.PathLike, val_fraction: float = VAL_FRACTION,
            seed: int = SPLIT_SEED, progress: bool = True) -> ConversionReport:
    """Convert every ``N.mat`` under ``source`` (zips or extracted files) into the COCO layout in ``out_dir``.

    ``out_dir`` is written in place (use :func:`fetch_figshare` for an all-or-nothing folder).
    """
    from PIL import Image

    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    report = ConversionReport(out_dir=out_dir)
    images: list[dict] = []
    annotations: list[dict] = []
    seen: set[int] = set()
    for name, read in iter_mat_files(source):
        s = read_mat(read(), name=name)
        if s.number in seen:
            report.duplicates += 1
            continue
        seen.add(s.number)
        order = border_order(s)
        report.border_orders[order] = report.border_orders.get(order, 0) + 1
        if order == "none" and len(s.border) and s.mask.any():
            report.border_mismatches.append(name)
        h, w = s.image.shape
        Image.fromarray(s.image, mode="L").save(images_dir / f"{s.number}.jpg", quality=JPEG_QUALITY)
        images.append({"id": s.number, "file_name": f"{s.number}.jpg", "width": int(w), "height": int(h),
                       "patient_id": s.patient_id})
        if s.mask.any():
            rle, area, bbox = _rle(s.mask)
            annotations.append({"id": s.number, "image_id": s.number, "category_id": s.label, "segmentation": rle,
                                "area": area, "bbox": bbox, "iscrowd": 0})
        else:
            report.empty_masks.append(s.number)
        if progress and len(images) % 500 == 0:
            print(f"  {len(images)} slices converted", flush=True)
    if not images:
        raise BrainTumorError(f"{source}: no N.mat files found (expected the four brainTumorDataPublic_*.zip "
                              f"of {ARTICLE_URL} or the .mat files extracted from them)")
    images.sort(key=lambda r: r["id"])
    annotations.sort(key=lambda r: r["id"])
    report.slices = len(images)
    split = split_patients((r["patient_id"] for r in images), val_fraction, seed)
    report.split = split
    report.patients = len(split["train"]) + len(split["val"])
    doc = {"info": INFO, "images": images, "annotations": annotations, "categories": list(COCO_CATEGORIES)}
    _write_json(out_dir / "annotations.json", doc)
    val_patients = set(split["val"])
    ids = {"train": [r["id"] for r in images if r["patient_id"] not in val_patients],
           "val": [r["id"] for r in images if r["patient_id"] in val_patients]}
    _write_json(out_dir / "split.json", {"seed": seed, "val_fraction": val_fraction, "by": "patient_id",
                                         "patients": split, "images": ids})
    return report


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- download
def _offline_hint(download_dir: Path) -> str:
    return (f"download the four brainTumorDataPublic_*.zip parts of {ARTICLE_URL} into {download_dir}/ "
            f"and run: braintumor fetch-data --dataset figshare --from {download_dir}")


def _get(url: str, timeout: float, download_dir: Path):
    host = urllib.parse.urlsplit(url).netloc or url
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise BrainTumorError(f"{host} answered HTTP {e.code} ({e.reason}) for {url}; "
                              f"{_offline_hint(download_dir)}") from None
    except urllib.error.URLError as e:
        raise BrainTumorError(f"cannot reach {host} ({e.reason}); {_offline_hint(download_dir)}") from None
    except (TimeoutError, OSError) as e:
        raise BrainTumorError(f"cannot reach {host} ({e}); {_offline_hint(download_dir)}") from None


def download_parts(download_dir: str | os.PathLike, api_url: str | None = None,
                   timeout: float = TIMEOUT_S) -> list[Path]:
    """Download the four zip parts into ``download_dir`` (parts already there with the right size are kept).

    The addresses come from the Figshare API (``api_url``, default :data:`API_URL` or
    ``$BRAIN_TUMOR_FIGSHARE_API``); every part is written to ``<name>.part`` and renamed
    when complete (and its MD5 matches the API's).
    """
    download_dir = Path(download_dir)
    api_url = api_url or os.environ.get("BRAIN_TUMOR_FIGSHARE_API") or API_URL
    with _get(api_url, timeout, download_dir) as resp:
        try:
            meta = json.loads(resp.read().decode("utf-8"))
            files = {f["name"]: f for f in meta["files"]}
        except (ValueError, KeyError, TypeError):
            raise BrainTumorError(f"{api_url}: not the Figshare article description; "
                                  f"{_offline_hint(download_dir)}") from None
    missing = [p for p in PARTS if p not in files]
    if missing:
        raise BrainTumorError(f"{api_url}: the article lists no {', '.join(missing)}; {_offline_hint(download_dir)}")
    download_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name in PARTS:
        entry = files[name]
        target = download_dir / name
        size = entry.get("size")
        if target.is_file() and size is not None and target.stat().st_size == int(size):
            print(f"{target} already downloaded")
            out.append(target)
            continue
        tmp = download_dir / (name + ".part")
        md5 = hashlib.md5()
        total = 0
        with _get(entry["download_url"], timeout, download_dir) as resp, tmp.open("wb") as f:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (TimeoutError, OSError) as e:
                    raise BrainTumorError(f"{name}: download interrupted ({e}); run the command again to retry "
                                          f"or {_offline_hint(download_dir)}") from None
                if not chunk:
                    break
                f.write(chunk)
                md5.update(chunk)
                total += len(chunk)
        expected = entry.get("supplied_md5") or entry.get("computed_md5")
        if (size is not None and total != int(size)) or (expected and md5.hexdigest() != expected):
            raise BrainTumorError(f"{name}: incomplete or corrupt download ({total} bytes, MD5 {md5.hexdigest()}); "
                                  f"run the command again or {_offline_hint(download_dir)}")
        os.replace(tmp, target)
        print(f"downloaded {name} ({total / 1e6:.1f} MB)", flush=True)
        out.append(target)
    return out


def fetch_figshare(dest: str | os.PathLike = "data", from_dir: str | os.PathLike | None = None,
                   api_url: str | None = None, timeout: float = TIMEOUT_S, force: bool = False,
                   val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED) -> tuple[Path, ConversionReport | None]:
    """Download (unless ``from_dir``) and convert the set into ``<dest>/figshare``; returns it and the report.

    Does nothing when ``<dest>/figshare/annotations.json`` exists (unless ``force``).
    The folder appears in one rename when the conversion has finished.
    """
    dest = Path(dest)
    target = dest / FOLDER
    if not force and (target / "annotations.json").is_file():
        return target, None
    if from_dir is None:
        from_dir = dest / DOWNLOAD_FOLDER
        download_parts(from_dir, api_url=api_url, timeout=timeout)
    elif not Path(from_dir).exists():
        raise BrainTumorError(f"{from_dir}: no such file or folder (--from takes the folder holding the "
                              "brainTumorDataPublic_*.zip parts or the extracted .mat files)")
    dest.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".figshare-", dir=dest))
    try:
        report = convert(from_dir, work / FOLDER, val_fraction=val_fraction, seed=seed)
        if target.exists():
            os.replace(target, work / "old")  # deleted with the work folder
        os.replace(work / FOLDER, target)
        report.out_dir = target
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target, report
