"""Drawing detections for people: translucent masks, outlines, boxes, score labels.

Everything is drawn with NumPy and Pillow (no matplotlib), so an overlay of a
512 x 512 image with a few tumors takes milliseconds. All images are RGB
``uint8 [H, W, 3]``; boxes are the project's ``(y1, x1, y2, x2)`` pixels with
``y2, x2`` exclusive (see :mod:`braintumor.boxes`); a detection result is the
dict :meth:`braintumor.mrcnn.MaskRCNN.detect` returns for one image::

    {"rois": int32 [N, (y1, x1, y2, x2)], "class_ids": int32 [N],
     "scores": float32 [N], "masks": bool [H, W, N]}
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.morphology import dilation, disk
from skimage.segmentation import find_boundaries

from braintumor.imageio import as_rgb_uint8  # noqa: F401  (re-exported: callers draw on any image array)

# distinct, saturated colours that stay visible on grey MR slices; instance i gets PALETTE[i % len]
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 59, 48), (0, 199, 255), (255, 204, 0), (175, 82, 222),
    (52, 199, 89), (255, 105, 180), (255, 149, 0), (90, 200, 250),
)


def _n_instances(result: dict[str, Any]) -> int:
    scores = result.get("scores")
    if scores is not None:
        return int(np.asarray(scores).shape[0])
    return int(np.asarray(result.get("rois", np.zeros((0, 4)))).reshape(-1, 4).shape[0])


def _instance_mask(result: dict[str, Any], i: int, shape: tuple[int, int]) -> np.ndarray | None:
    """Instance ``i``'s bool mask ``[H, W]``, or None when the result has no usable mask."""
    masks = result.get("masks")
    if masks is None:
        return None
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[:2] != tuple(shape) or masks.shape[2] <= i:
        return None
    return masks[:, :, i].astype(bool, copy=False)


@lru_cache(maxsize=16)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size only
        return ImageFont.load_default()


def _label_text(result: dict[str, Any], i: int, class_names: Sequence[str] | None) -> str:
    class_ids = result.get("class_ids")
    cid = int(np.asarray(class_ids)[i]) if class_ids is not None and len(class_ids) > i else 1
    name = class_names[cid] if class_names is not None and 0 <= cid < len(class_names) else str(cid)
    scores = result.get("scores")
    if scores is None:
        return name
    return f"{name} {float(np.asarray(scores)[i]):.2f}"


def draw_overlay(image: np.ndarray, result: dict[str, Any], class_names: Sequence[str] | None,
                 show_boxes: bool = True, alpha: float = 0.35) -> np.ndarray:
    """The image with every detection drawn on it.

    image: ``uint8 [H, W, 3]`` (grey ``[H, W]`` is accepted). result: one detection
    dict (``rois``, ``class_ids``, ``scores``, ``masks [H, W, N]``) at the image's
    size. class_names: index = class id (``['BG', 'tumor']``). Each instance gets
    its own colour: mask filled with opacity ``alpha``, its outline opaque, its box
    (when ``show_boxes``) and a ``"tumor 0.93"`` label above the box.
    Returns a new ``uint8 [H, W, 3]``; the input is not modified.
    """
    out = as_rgb_uint8(image)
    h, w = out.shape[:2]
    n = _n_instances(result)
    if n == 0:
        return out
    rois = np.asarray(result.get("rois", np.zeros((n, 4))), dtype=np.float64).reshape(-1, 4)
    thick = max(1, int(round(min(h, w) / 300)))

    # filled masks, then outlines (outline of instance i computed on its box crop: fast on big images)
    fimg = out.astype(np.float32)
    outlines: list[tuple[np.ndarray, tuple[int, int, int]]] = []
    for i in range(n):
        color = PALETTE[i % len(PALETTE)]
        m = _instance_mask(result, i, (h, w))
        if m is None or not m.any():
            continue
        fimg[m] = fimg[m] * (1.0 - alpha) + np.asarray(color, np.float32) * alpha
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        pad = thick + 1
        y1, y2 = max(rows[0] - pad, 0), min(rows[-1] + 1 + pad, h)
        x1, x2 = max(cols[0] - pad, 0), min(cols[-1] + 1 + pad, w)
        edge = np.zeros((h, w), bool)
        crop = find_boundaries(m[y1:y2, x1:x2], mode="inner")
        if thick > 1:
            crop = dilation(crop, disk(thick - 1)) & m[y1:y2, x1:x2] | crop
        edge[y1:y2, x1:x2] = crop
        outlines.append((edge, color))
    out = np.clip(fimg + 0.5, 0, 255).astype(np.uint8)
    for edge, color in outlines:
        out[edge] = color

    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    font = _font(max(10, int(round(min(h, w) / 36))))
    for i in range(n):
        color = PALETTE[i % len(PALETTE)]
        y1, x1, y2, x2 = (float(v) for v in rois[i]) if i < len(rois) else (0.0, 0.0, 0.0, 0.0)
        if y2 <= y1 or x2 <= x1:
            m = _instance_mask(result, i, (h, w))
            if m is None or not m.any():
                continue
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            y1, x1, y2, x2 = rows[0], cols[0], rows[-1] + 1, cols[-1] + 1
        if show_boxes:
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=color, width=thick)
        text = _label_text(result, i, class_names)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        ty = y1 - th if y1 - th >= 0 else min(y1, h - th)
        tx = min(max(x1, 0), max(w - tw, 0))
        draw.rectangle([tx, ty, tx + tw - 1, ty + th - 1], fill=color)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text((tx + 2 - left, ty + 2 - top), text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255), font=font)
    return np.asarray(pil, dtype=np.uint8)


def side_by_side(original: np.ndarray, overlay: np.ndarray, gap: int = 8,
                 titles: Sequence[str] | None = None, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Two images next to each other: ``uint8 [H, W1 + gap + W2, 3]``, ``H = max(H1, H2)``.

    Shorter images are top-aligned on ``background``. ``titles`` (two strings,
    ASCII is safest for the built-in font) adds a caption band above each image.
    """
    a, b = as_rgb_uint8(original), as_rgb_uint8(overlay)
    h = max(a.shape[0], b.shape[0])
    band = 0
    font = None
    if titles:
        font = _font(max(12, int(round(h / 30))))
        band = int(round(font.size * 1.6)) if hasattr(font, "size") else 16
    canvas = np.empty((band + h, a.shape[1] + gap + b.shape[1], 3), np.uint8)
    canvas[:] = background
    canvas[band:band + a.shape[0], :a.shape[1]] = a
    canvas[band:band + b.shape[0], a.shape[1] + gap:] = b
    if titles:
        pil = Image.fromarray(canvas)
        draw = ImageDraw.Draw(pil)
        for text, x0, width in ((titles[0], 0, a.shape[1]), (titles[1], a.shape[1] + gap, b.shape[1])):
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            draw.text((x0 + (width - (right - left)) / 2 - left, (band - (bottom - top)) / 2 - top), text,
                      fill=(30, 30, 30), font=font)
        canvas = np.asarray(pil, dtype=np.uint8)
    return canvas


def instance_stats(result: dict[str, Any], pixel_spacing_mm: Sequence[float] | None = None,
                   class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per detection: what a reader wants to know, JSON-ready.

    pixel_spacing_mm: ``(row spacing, column spacing)`` in mm per pixel (DICOM
    PixelSpacing: row spacing is the vertical distance between rows), or None.
    Each dict has ``class`` (name, or the id as text without ``class_names``),
    ``class_id``, ``confidence`` (0..1), ``area_px`` (mask pixels; the box area
    when there is no mask), ``area_mm2`` (None without spacing), ``bbox``
    ``[y1, x1, y2, x2]`` pixels, ``extent_px`` ``{"height", "width"}`` of the
    mask's tight box in pixels, ``extent_mm`` (same in mm, None without spacing)
    and ``centroid`` ``[y, x]`` in pixels (mask centre of mass); with a region scorer
    (:mod:`braintumor.region_score`) also ``detector_confidence`` and ``region_confidence``,
    the two scores ``confidence`` combines.
    """
    n = _n_instances(result)
    rois = np.asarray(result.get("rois", np.zeros((n, 4))), dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(result.get("scores", np.ones(n)), dtype=np.float64)
    class_ids = np.asarray(result.get("class_ids", np.ones(n)), dtype=np.int64)
    parts = {k: np.asarray(result[f"{k}_scores"], dtype=np.float64).reshape(-1) for k in ("detector", "region")
             if result.get(f"{k}_scores") is not None}
    masks = result.get("masks")
    shape = tuple(np.asarray(masks).shape[:2]) if masks is not None else None
    sp = None
    if pixel_spacing_mm is not None:
        sp = (float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1]))
    out = []
    for i in range(n):
        y1, x1, y2, x2 = (int(round(v)) for v in rois[i])
        m = _instance_mask(result, i, shape) if shape is not None else None
        if m is not None and m.any():
            area = int(m.sum())
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            eh, ew = int(rows[-1] + 1 - rows[0]), int(cols[-1] + 1 - cols[0])
            ys, xs = np.nonzero(m)
            centroid = [float(ys.mean()), float(xs.mean())]
        else:
            eh, ew = max(y2 - y1, 0), max(x2 - x1, 0)
            area = eh * ew
            centroid = [(y1 + y2) / 2.0, (x1 + x2) / 2.0]
        cid = int(class_ids[i])
        name = class_names[cid] if class_names is not None and 0 <= cid < len(class_names) else str(cid)
        out.append({
            "class": name,
            "class_id": cid,
            "confidence": round(float(scores[i]), 4),
            **{f"{k}_confidence": round(float(v[i]), 4) for k, v in parts.items()},
            "area_px": area,
            "area_mm2": round(area * sp[0] * sp[1], 2) if sp else None,
            "bbox": [y1, x1, y2, x2],
            "extent_px": {"height": eh, "width": ew},
            "extent_mm": {"height": round(eh * sp[0], 2), "width": round(ew * sp[1], 2)} if sp else None,
            "centroid": [round(centroid[0], 1), round(centroid[1], 1)],
        })
    return out
