"""Annotated datasets: VIA or COCO annotations -> images and instance masks.

A dataset folder holds one sub-folder per split::

    brain_tumor_data/
        train/annotations.json  0.jpg 1.jpg ...
        val/annotations.json    ...
        test/...                (optional)

``annotations.json`` is a VIA (VGG Image Annotator) export, 1.x or 2.x, or a VIA 2
project file (``_via_img_metadata``), or COCO instance JSON; ``coco.json`` is read
when there is no ``annotations.json``. :func:`load_split` picks the right reader.

Problems are reported, never hidden. Fatal ones (missing or malformed annotation
file) raise :class:`~braintumor.errors.BrainTumorError`. Per-entry ones are recorded
in ``Dataset.problems`` as :class:`Problem` strings — one line each, naming the file:

- severity ``"error"`` (the image is left out of the dataset): image file missing,
  unreadable or truncated image, malformed entry, size mismatch (COCO);
- severity ``"warning"`` (the shape is skipped or fixed): too few points, zero area,
  shape covering no pixel, unsupported shape (point, ...), unknown class, points
  outside the image (clipped).

``braintumor data check`` prints them and fails when there is any error.

Masks are rasterised lazily, in :meth:`Dataset.load_mask`; image sizes are read
from file headers when the dataset is loaded. VIA coordinates are pixel
coordinates of the image as displayed, i.e. after its EXIF orientation, which is
how :func:`braintumor.imageio.read_image` returns it. Polygons are rasterised with
:func:`skimage.draw.polygon` (pixel centres inside the polygon, as Matterport did).
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from braintumor.errors import BrainTumorError
from braintumor.imageio import IMAGE_EXTENSIONS, read_image, read_size

CLASS_NAMES = ["BG", "tumor"]
SPLITS = ("train", "val", "test")


# ============================================================================= problems
class Problem(str):
    """One problem found while loading: a one-line string with ``severity`` and ``kind``.

    ``severity`` is ``"error"`` or ``"warning"``; ``kind`` a short label used for
    counting (``"missing image"``, ``"clipped points"``, ...). Being a ``str``,
    a Problem prints as its message.
    """

    severity: str
    kind: str

    def __new__(cls, message: str, severity: str, kind: str) -> "Problem":
        obj = super().__new__(cls, " ".join(message.split()))  # one line, always
        obj.severity = severity
        obj.kind = kind
        return obj

    def __getnewargs__(self) -> tuple[str, str, str]:  # pickling (e.g. to data-loader processes)
        return (str(self), self.severity, self.kind)


@dataclass(frozen=True)
class Shape:
    """One annotated instance before rasterisation.

    ``kind`` is ``polygon`` (params ``(ys, xs)`` float arrays, pixels), ``rect``
    (``(y1, x1, y2, x2)``, y2/x2 exclusive), ``circle`` (``(cy, cx, r)``),
    ``ellipse`` (``(cy, cx, ry, rx, theta)``, theta in radians, clockwise on screen
    as in VIA) or ``coco`` (a pycocotools RLE dict).
    """

    kind: str
    params: Any
    class_id: int


def _shape_pixels(shape: Shape, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the pixels a (non-COCO) shape covers, clipped to ``h x w``."""
    from skimage import draw

    p = shape.params
    if shape.kind == "polygon":
        return draw.polygon(p[0], p[1], shape=(h, w))
    if shape.kind == "rect":
        y1, x1 = max(int(round(p[0])), 0), max(int(round(p[1])), 0)
        y2, x2 = min(int(round(p[2])), h), min(int(round(p[3])), w)
        if y2 <= y1 or x2 <= x1:
            return np.zeros(0, np.intp), np.zeros(0, np.intp)
        rr, cc = np.mgrid[y1:y2, x1:x2]
        return rr.ravel(), cc.ravel()
    if shape.kind == "circle":
        return draw.disk((p[0], p[1]), p[2], shape=(h, w))
    if shape.kind == "ellipse":
        # skimage turns counter-clockwise on screen, VIA (canvas) clockwise
        return draw.ellipse(p[0], p[1], p[2], p[3], shape=(h, w), rotation=-p[4])
    raise ValueError(f"no pixel rasteriser for shape kind {shape.kind!r}")


def rasterise(shape: Shape, h: int, w: int) -> np.ndarray:
    """One shape -> ``bool [h, w]`` mask."""
    if shape.kind == "coco":
        from pycocotools import mask as mask_utils

        return mask_utils.decode(shape.params).astype(bool)
    m = np.zeros((h, w), dtype=bool)
    rr, cc = _shape_pixels(shape, h, w)
    m[rr, cc] = True
    return m


# ============================================================================= dataset
class Dataset:
    """Images with instance annotations (the interface every stage uses).

    - ``class_names``: ``['BG', 'tumor']`` (index = class id); ``num_classes``
    - ``len(ds)``, ``ds.image_ids`` (``range(n)``)
    - ``ds.image_info[i]``: dict with ``path`` (Path), ``name`` (file name),
      ``height``, ``width`` (pixels, after EXIF orientation), ``shapes``
      (list of :class:`Shape`); COCO images also ``categories`` (the annotations' own category
      names before ``CLASS_MAP``, e.g. ``["glioma"]``) and, from Figshare, ``patient_id``
    - :meth:`load_image` -> ``uint8 [H, W, 3]`` RGB
    - :meth:`load_mask` -> ``(bool [H, W, N], int32 [N])``
    - ``problems`` (list of :class:`Problem`), ``errors``, ``warnings``
    - ``source``: the annotation file or image folder; ``format``: ``via``, ``coco`` or ``folder``
    """

    def __init__(self, class_names: Iterable[str] = CLASS_NAMES, source: str | Path | None = None,
                 format: str = "none"):
        self.class_names = list(class_names)
        self.image_info: list[dict[str, Any]] = []
        self.problems: list[Problem] = []
        self.source = Path(source) if source is not None else None
        self.format = format
        # training passes draw this many of the images marked tumor_free (None: every image, every pass)
        self.free_per_pass: int | None = None
        # several sources (braintumor.train.combine_sources): [(image indices, count per pass)]
        self.pass_pools: list[tuple[list[int], int | None]] | None = None

    # --- construction -------------------------------------------------------
    def add_image(self, path: str | Path, height: int, width: int, shapes: list[Shape] | None = None,
                  **extra: Any) -> int:
        """Append an image; returns its id."""
        path = Path(path)
        self.image_info.append({"id": len(self.image_info), "path": path, "name": path.name,
                                "height": int(height), "width": int(width),
                                "shapes": list(shapes or []), **extra})
        return len(self.image_info) - 1

    def add_problem(self, message: str, severity: str, kind: str) -> None:
        if severity not in ("error", "warning"):
            raise ValueError(f"severity must be 'error' or 'warning', got {severity!r}")
        self.problems.append(Problem(message, severity, kind))

    # --- the interface ----------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.image_info)

    @property
    def image_ids(self) -> range:
        return range(len(self.image_info))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def instance_count(self, image_id: int) -> int:
        """Number of instances of an image, without rasterising."""
        return len(self.image_info[image_id]["shapes"])

    def load_image(self, image_id: int) -> np.ndarray:
        """The image as RGB ``uint8 [H, W, 3]``; BrainTumorError if it cannot be read."""
        info = self.image_info[image_id]
        image = read_image(info["path"])
        if image.shape[:2] != (info["height"], info["width"]):
            raise BrainTumorError(f"{info['path']}: image is {image.shape[1]}x{image.shape[0]} "
                                  f"but was {info['width']}x{info['height']} when the dataset was loaded")
        return image

    def load_mask(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Instance masks ``bool [H, W, N]`` and class ids ``int32 [N]`` (N may be 0)."""
        info = self.image_info[image_id]
        h, w, shapes = info["height"], info["width"], info["shapes"]
        masks = np.zeros((h, w, len(shapes)), dtype=bool)
        for k, s in enumerate(shapes):
            masks[:, :, k] = rasterise(s, h, w)
        return masks, np.array([s.class_id for s in shapes], dtype=np.int32)

    def head(self, n: int | None) -> "Dataset":
        """The first ``n`` images as a new Dataset (same classes, source, format and problems); all when ``n`` is None."""
        return self.subset(self.image_info[:n])

    def subset(self, infos: Iterable[dict]) -> "Dataset":
        """A new Dataset of the given ``image_info`` records (renumbered; same classes, source, format, problems)."""
        out = Dataset(self.class_names, source=self.source, format=self.format)
        for info in infos:
            extra = {k: v for k, v in info.items() if k not in ("id", "path", "name", "height", "width", "shapes")}
            out.add_image(info["path"], info["height"], info["width"], info["shapes"], **extra)
        out.problems = list(self.problems)
        return out

    def __repr__(self) -> str:
        n = sum(len(i["shapes"]) for i in self.image_info)
        return f"Dataset({self.source}, {len(self)} images, {n} instances, {len(self.problems)} problems)"


# ============================================================================= reading JSON
def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BrainTumorError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise BrainTumorError(f"{path}: not UTF-8 text (expected a JSON annotation file)") from None
    except OSError as e:
        raise BrainTumorError(f"{path}: cannot read ({e.strerror or e})") from None
    if not text.strip():
        raise BrainTumorError(f"{path}: empty file (expected a JSON annotation file)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BrainTumorError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None


def _is_coco(doc: Any) -> bool:
    return isinstance(doc, dict) and "images" in doc and "annotations" in doc


def _class_id(attrs: Any, class_names: list[str]) -> tuple[int | None, str]:
    """Class of a VIA region from its region_attributes: first non-empty string value
    (or the first ticked key of a checkbox dict); none -> ``class_names[1]``."""
    label = None
    if isinstance(attrs, dict):
        for v in attrs.values():
            if isinstance(v, str) and v.strip():
                label = v.strip()
                break
            if isinstance(v, dict):
                ticked = [k for k, on in v.items() if on]
                if ticked:
                    label = str(ticked[0]).strip()
                    break
    if label is None:
        return 1, class_names[1]
    lowered = [c.lower() for c in class_names]
    if label.lower() in lowered[1:]:
        return lowered.index(label.lower()), label
    return None, label


def _image_size(ds: Dataset, path: Path, listed_in: Path, verify: bool) -> tuple[int, int] | None:
    """Height and width of an entry's image, or None after recording an error."""
    if not path.is_file():
        ds.add_problem(f"{path}: image file not found (listed in {listed_in})", "error", "missing image")
        return None
    try:
        if verify:
            return read_image(path).shape[:2]
        return read_size(path)
    except BrainTumorError as e:
        ds.add_problem(str(e), "error", "unreadable image")
        return None


# ============================================================================= VIA
def _via_shape(sa: dict, h: int, w: int, where: str, ds: Dataset, class_id: int) -> Shape | None:
    """A VIA shape_attributes dict -> :class:`Shape`, or None after recording a warning."""
    name = str(sa.get("name", "")).lower()
    try:
        if name in ("polygon", "polyline"):
            xs = np.asarray(sa["all_points_x"], dtype=np.float64)
            ys = np.asarray(sa["all_points_y"], dtype=np.float64)
            if xs.shape != ys.shape or xs.ndim != 1:
                raise ValueError("all_points_x and all_points_y differ in length")
            if len(xs) < 3:
                ds.add_problem(f"{where}: {name} has {len(xs)} points (needs at least 3); skipped", "warning", "too few points")
                return None
            area = 0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))
            if area == 0:
                ds.add_problem(f"{where}: {name} has zero area; skipped", "warning", "zero area")
                return None
            outside = int(np.count_nonzero((xs < 0) | (xs > w - 1) | (ys < 0) | (ys > h - 1)))
            if outside:
                ds.add_problem(f"{where}: {outside} of {len(xs)} points outside the {w}x{h} image; clipped",
                               "warning", "clipped points")
                xs, ys = np.clip(xs, 0, w - 1), np.clip(ys, 0, h - 1)
            return Shape("polygon", (ys, xs), class_id)
        if name == "rect":
            x, y, rw, rh = (float(sa[k]) for k in ("x", "y", "width", "height"))
            shape = Shape("rect", (y, x, y + rh, x + rw), class_id)
            extent = (y, x, y + rh, x + rw)
        elif name == "circle":
            cx, cy, r = (float(sa[k]) for k in ("cx", "cy", "r"))
            shape = Shape("circle", (cy, cx, r), class_id)
            extent = (cy - r, cx - r, cy + r, cx + r)
        elif name == "ellipse":
            cx, cy, rx, ry = (float(sa[k]) for k in ("cx", "cy", "rx", "ry"))
            theta = float(sa.get("theta", 0.0) or 0.0)
            shape = Shape("ellipse", (cy, cx, ry, rx, theta), class_id)
            big = max(rx, ry)
            extent = (cy - big, cx - big, cy + big, cx + big)
        else:
            ds.add_problem(f"{where}: unsupported shape {name or '(unnamed)'!r} (only polygon, polyline, rect, circle, "
                           "ellipse make masks); skipped", "warning", "unsupported shape")
            return None
    except (KeyError, TypeError, ValueError) as e:
        detail = f"missing {e}" if isinstance(e, KeyError) else str(e)
        ds.add_problem(f"{where}: malformed {name or 'shape'} ({detail}); skipped", "warning", "malformed shape")
        return None
    if extent[0] < 0 or extent[1] < 0 or extent[2] > h or extent[3] > w:
        ds.add_problem(f"{where}: {name} extends outside the {w}x{h} image; clipped", "warning", "clipped points")
    return shape


def _via_entries(doc: Any, path: Path) -> dict[str, Any]:
    if isinstance(doc, dict) and isinstance(doc.get("_via_img_metadata"), dict):
        return doc["_via_img_metadata"]  # VIA 2 project file
    if isinstance(doc, dict) and "project" in doc and "metadata" in doc and "file" in doc:
        raise BrainTumorError(f"{path}: VIA 3 project files are not supported; export annotations as VIA 2 JSON or COCO")
    if not isinstance(doc, dict):
        raise BrainTumorError(f"{path}: not a VIA or COCO annotation file (top level is a {type(doc).__name__}, expected an object)")
    return doc


def load_via(json_path: str | Path, image_dir: str | Path | None = None, class_names: Iterable[str] = CLASS_NAMES,
             verify: bool = False, doc: Any = None) -> Dataset:
    """Read a VIA 1.x/2.x annotation export (or VIA 2 project file).

    ``image_dir`` defaults to the JSON file's folder. ``verify=True`` decodes every
    image fully (finds truncated files) instead of reading headers only.
    """
    json_path = Path(json_path)
    image_dir = Path(image_dir) if image_dir is not None else json_path.parent
    ds = Dataset(class_names, source=json_path, format="via")
    entries = _via_entries(_read_json(json_path) if doc is None else doc, json_path)
    for key, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str) or not entry["filename"]:
            ds.add_problem(f"{json_path}: entry {key!r} is not a VIA image record (no filename)", "error", "malformed entry")
            continue
        filename = entry["filename"]
        regions = entry.get("regions") or []
        if isinstance(regions, dict):  # VIA 1.x: {"0": {...}, "1": {...}}
            regions = [regions[k] for k in sorted(regions, key=lambda k: (len(str(k)), str(k)))]
        if not isinstance(regions, list):
            ds.add_problem(f"{json_path}: {filename}: 'regions' is neither a list nor an object", "error", "malformed entry")
            continue
        img_path = image_dir / filename
        size = _image_size(ds, img_path, json_path, verify)
        if size is None:
            continue
        h, w = size
        shapes = []
        for j, region in enumerate(regions):
            where = f"{json_path}: {filename} region {j}"
            if not isinstance(region, dict) or not isinstance(region.get("shape_attributes"), dict):
                ds.add_problem(f"{where}: no shape_attributes; skipped", "warning", "malformed shape")
                continue
            class_id, label = _class_id(region.get("region_attributes"), ds.class_names)
            if class_id is None:
                ds.add_problem(f"{where}: unknown class {label!r} (known: {', '.join(ds.class_names[1:])}); skipped",
                               "warning", "unknown class")
                continue
            shape = _via_shape(region["shape_attributes"], h, w, where, ds, class_id)
            if shape is None:
                continue
            if len(_shape_pixels(shape, h, w)[0]) == 0:
                ds.add_problem(f"{where}: {region['shape_attributes'].get('name')} covers no pixel of the image; skipped",
                               "warning", "empty shape")
                continue
            shapes.append(shape)
        ds.add_image(img_path, h, w, shapes, via_key=key)
    return ds


# ============================================================================= COCO
def load_coco(json_path: str | Path, image_dir: str | Path | None = None, class_names: Iterable[str] = CLASS_NAMES,
              verify: bool = False, doc: Any = None, class_map: dict[str, str] | None = None) -> Dataset:
    """Read COCO instance JSON (polygon or RLE segmentations, via pycocotools).

    Categories are matched to ``class_names`` by name (case-insensitive), after
    ``class_map`` (category name -> class name, e.g. the config's ``CLASS_MAP``
    ``{"glioma": "tumor", ...}``) renames them. The annotations of a category that
    matches no class are skipped, with one warning per category giving their count.
    ``image_dir`` defaults to the JSON file's folder.
    """
    from pycocotools import mask as mask_utils

    json_path = Path(json_path)
    image_dir = Path(image_dir) if image_dir is not None else json_path.parent
    doc = _read_json(json_path) if doc is None else doc
    if not _is_coco(doc) or not isinstance(doc["images"], list) or not isinstance(doc["annotations"], list):
        raise BrainTumorError(f"{json_path}: not COCO instance JSON (needs 'images' and 'annotations' lists)")
    ds = Dataset(class_names, source=json_path, format="coco")
    lowered = [c.lower() for c in ds.class_names]
    cat_to_class: dict[Any, int | None] = {}
    cat_names: dict[Any, str] = {}
    mapping = {str(k).lower(): str(v).lower() for k, v in (class_map or {}).items()}
    for cat in doc.get("categories") or []:
        name = str(cat.get("name", ""))
        cat_names[cat.get("id")] = name
        target = mapping.get(name.lower(), name.lower())
        cat_to_class[cat.get("id")] = lowered.index(target) if target in lowered[1:] else None
    unmapped: collections.Counter = collections.Counter()
    by_image = collections.defaultdict(list)
    for ann in doc["annotations"]:
        if isinstance(ann, dict):
            by_image[ann.get("image_id")].append(ann)
    for img in doc["images"]:
        if not isinstance(img, dict) or not isinstance(img.get("file_name"), str):
            ds.add_problem(f"{json_path}: image record {img!r:.60} has no file_name", "error", "malformed entry")
            continue
        img_path = image_dir / img["file_name"]
        size = _image_size(ds, img_path, json_path, verify)
        if size is None:
            continue
        h, w = size
        if (img.get("height"), img.get("width")) != (h, w):
            ds.add_problem(f"{img_path}: image is {w}x{h} but {json_path} says {img.get('width')}x{img.get('height')}",
                           "error", "size mismatch")
            continue
        shapes = []
        kept_categories: set[str] = set()
        for ann in by_image.get(img.get("id"), []):
            where = f"{json_path}: {img['file_name']} annotation {ann.get('id')}"
            class_id = cat_to_class.get(ann.get("category_id"))
            if class_id is None:
                unmapped[cat_names.get(ann.get("category_id"), f"category {ann.get('category_id')}")] += 1
                continue
            segm = ann.get("segmentation")
            try:
                if isinstance(segm, list):
                    polys = [p for p in segm if isinstance(p, list) and len(p) >= 6]
                    if len(polys) < len(segm):
                        ds.add_problem(f"{where}: polygon with fewer than 3 points; skipped", "warning", "too few points")
                    if not polys:
                        continue
                    rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
                elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
                    rle = mask_utils.frPyObjects(segm, h, w)  # uncompressed RLE
                elif isinstance(segm, dict):
                    rle = {"size": list(segm["size"]), "counts": segm["counts"]}
                    if isinstance(rle["counts"], str):
                        rle["counts"] = rle["counts"].encode("ascii")
                    if tuple(rle["size"]) != (h, w):
                        raise ValueError(f"RLE size {rle['size']} is not the image's {[h, w]}")
                else:
                    raise ValueError("no segmentation")
                empty = int(mask_utils.area(rle)) == 0
            except (KeyError, TypeError, ValueError) as e:
                ds.add_problem(f"{where}: malformed segmentation ({e}); skipped", "warning", "malformed shape")
                continue
            if empty:
                ds.add_problem(f"{where}: segmentation covers no pixel; skipped", "warning", "empty shape")
                continue
            shapes.append(Shape("coco", rle, class_id))
            if cat_names.get(ann.get("category_id")):
                kept_categories.add(cat_names[ann.get("category_id")])
        extra = {"patient_id": str(img["patient_id"])} if img.get("patient_id") is not None else {}
        if kept_categories:  # the annotation categories before CLASS_MAP (e.g. the tumor type)
            extra["categories"] = sorted(kept_categories)
        ds.add_image(img_path, h, w, shapes, coco_id=img.get("id"), **extra)
    for label, n in sorted(unmapped.items()):
        ds.add_problem(f"{json_path}: {n} annotation{'s' if n > 1 else ''} of class {label!r}, which is not one of "
                       f"{ds.class_names[1:]} (set CLASS_MAP to map it); skipped", "warning", "unknown class")
    return ds


def export_coco(dataset: Dataset, out_path: str | Path, encoding: str = "rle") -> dict[str, Any]:
    """Write ``dataset`` as COCO instance JSON (atomically); returns the document.

    ``encoding="rle"`` (exact; compressed RLE with ``iscrowd=0``) or ``"polygon"``
    (outlines from :func:`skimage.measure.find_contours`, approximate). Image ids
    start at 1; ``file_name`` is the image's name; category ids are class ids.
    """
    from pycocotools import mask as mask_utils

    if encoding not in ("rle", "polygon"):
        raise ValueError(f"encoding must be 'rle' or 'polygon', got {encoding!r}")
    images, annotations = [], []
    for i in dataset.image_ids:
        info = dataset.image_info[i]
        images.append({"id": i + 1, "file_name": info["name"], "height": info["height"], "width": info["width"]})
        masks, class_ids = dataset.load_mask(i)
        for k in range(masks.shape[-1]):
            m = masks[:, :, k]
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
            segm = ({"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
                    if encoding == "rle" else _mask_to_polygons(m))
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(class_ids[k]),
                                "segmentation": segm, "area": int(mask_utils.area(rle)),
                                "bbox": [x, y, bw, bh], "iscrowd": 0})
    doc = {"info": {"description": f"exported by braintumor from {dataset.source}"},
           "images": images, "annotations": annotations,
           "categories": [{"id": c, "name": n, "supercategory": "lesion"}
                          for c, n in enumerate(dataset.class_names) if c > 0]}
    write_json_atomic(out_path, doc)
    return doc


def _mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """``bool [H, W]`` -> COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` tracing pixel edges' midpoints."""
    from skimage import measure

    padded = np.pad(mask.astype(np.uint8), 1)
    polys = []
    for contour in measure.find_contours(padded, 0.5):
        contour = contour - 1  # undo the padding
        if len(contour) >= 3:
            polys.append([round(float(v), 2) for yx in contour for v in (yx[1], yx[0])])
    return polys


def write_json_atomic(path: str | Path, doc: Any) -> None:
    """Write JSON to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ============================================================================= entry points
def load_split(data_dir: str | Path, split: str, class_names: Iterable[str] = CLASS_NAMES,
               verify: bool = False, class_map: dict[str, str] | None = None) -> Dataset:
    """The ``split`` of a dataset folder: ``DIR/split/annotations.json`` (VIA or COCO), else ``DIR/split/coco.json``;
    for a Figshare folder (``DIR/annotations.json`` + ``DIR/images/``), its patient-wise split
    (:mod:`braintumor.figshare`). ``class_map`` renames COCO categories onto ``class_names``."""
    from braintumor.figshare import is_figshare_folder, load_figshare

    split_dir = Path(data_dir) / split
    if not split_dir.is_dir() and is_figshare_folder(data_dir):
        return load_figshare(data_dir, split, class_names, class_map, verify)
    if not split_dir.is_dir():
        raise BrainTumorError(f"{split_dir}: no such split folder")
    ann, coco = split_dir / "annotations.json", split_dir / "coco.json"
    if ann.is_file():
        doc = _read_json(ann)
        if _is_coco(doc):
            return load_coco(ann, split_dir, class_names, verify, doc=doc, class_map=class_map)
        return load_via(ann, split_dir, class_names, verify, doc=doc)
    if coco.is_file():
        return load_coco(coco, split_dir, class_names, verify, class_map=class_map)
    raise BrainTumorError(f"{split_dir}: no annotations.json or coco.json")


def list_image_files(folder: str | Path) -> list[Path]:
    """Image files (by extension) directly in ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def load_image_folder(folder: str | Path, class_names: Iterable[str] = CLASS_NAMES, verify: bool = False) -> Dataset:
    """Every image file in ``folder`` (not recursive) as a dataset with 0 instances per image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BrainTumorError(f"{folder}: no such folder")
    files = list_image_files(folder)
    if not files:
        raise BrainTumorError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    ds = Dataset(class_names, source=folder, format="folder")
    for path in files:
        size = _image_size(ds, path, folder, verify)
        if size is not None:
            ds.add_image(path, size[0], size[1], [])
    return ds


def _data_dir_or_error(arg: str | None) -> Path:
    from braintumor.paths import resolve_data_dir

    data_dir = resolve_data_dir(arg)
    if not data_dir.is_dir():
        raise BrainTumorError(f"dataset folder {data_dir} not found (looked in {data_dir.resolve()}); "
                              "run `braintumor fetch-data` or pass --data DIR")
    return data_dir


def summarize(ds: Dataset) -> list[str]:
    """Report lines for one split: counts, size distribution, classes, problems."""
    counts = [ds.instance_count(i) for i in ds.image_ids]
    lines = [f"  images: {len(ds)}, instances: {sum(counts)}"]
    if counts:
        lines.append(f"  instances per image: mean {np.mean(counts):.2f}, min {min(counts)}, max {max(counts)}")
        sizes = collections.Counter(f"{i['width']}x{i['height']}" for i in ds.image_info).most_common()
        shown = ", ".join(f"{s} ({n})" for s, n in sizes[:5])
        more = f", and {len(sizes) - 5} other sizes ({sum(n for _, n in sizes[5:])} images)" if len(sizes) > 5 else ""
        lines.append(f"  image sizes (width x height): {shown}{more}")
    per_class = collections.Counter(s.class_id for i in ds.image_info for s in i["shapes"])
    lines.append("  instances per class: " + (", ".join(f"{ds.class_names[c]} {per_class.get(c, 0)}"
                                                        for c in range(1, ds.num_classes))))
    if not ds.problems:
        lines.append("  problems: none")
    else:
        by_kind = collections.Counter((p.severity, p.kind) for p in ds.problems)
        lines.append(f"  problems: {len(ds.errors)} errors, {len(ds.warnings)} warnings ("
                     + ", ".join(f"{k} {n}" for (_, k), n in sorted(by_kind.items())) + ")")
        lines += [f"    {p.severity}: {p}" for p in sorted(ds.problems, key=lambda p: p.severity != "error")]
    return lines


def cli_check(args) -> int:
    """``braintumor data check``: report every split; 1 if any split has errors or none is found."""
    from braintumor.figshare import CATEGORIES, is_figshare_folder

    data_dir = _data_dir_or_error(getattr(args, "data", None))
    figshare = is_figshare_folder(data_dir)
    splits = args.splits or (["train", "val"] if figshare else [s for s in SPLITS if (data_dir / s).is_dir()])
    if not splits:
        print(f"error: {data_dir}: no split folders ({', '.join(SPLITS)}) found", file=sys.stderr)
        return 1
    print(f"data: {data_dir}")
    failed = False
    for split in splits:
        try:
            ds = load_split(data_dir, split, verify=True,
                            class_map={c: "tumor" for c in CATEGORIES} if figshare else None)
        except BrainTumorError as e:
            print(f"error: {e}", file=sys.stderr)
            failed = True
            continue
        print(f"{split} ({ds.format}: {ds.source.name}):")
        print("\n".join(summarize(ds)))
        failed |= bool(ds.errors)
    return 1 if failed else 0


def cli_export_coco(args) -> int:
    """``braintumor data export-coco``: write a split as COCO JSON (refused when the split has errors)."""
    data_dir = _data_dir_or_error(getattr(args, "data", None))
    ds = load_split(data_dir, args.split)
    if ds.errors:
        for p in ds.errors:
            print(f"error: {p}", file=sys.stderr)
        print(f"error: {args.out} not written: {len(ds.errors)} errors in {ds.source}", file=sys.stderr)
        return 1
    doc = export_coco(ds, args.out)
    print(f"wrote {args.out}: {len(doc['images'])} images, {len(doc['annotations'])} instances"
          + (f" ({len(ds.warnings)} warnings while loading)" if ds.warnings else ""))
    return 0
