"""Reading image files into RGB ``uint8 [H, W, 3]`` arrays: JPEG, PNG, BMP, TIFF and DICOM.

Every reader here turns bad input into a :class:`~braintumor.errors.BrainTumorError`
with one line that names the file::

    scan.png: truncated or corrupt image (image file is truncated (3 bytes not processed))

Conversions (:func:`read_image`):

- any PIL mode becomes RGB: ``L``/``1``/``P``/``CMYK``/``YCbCr``/... via PIL;
  ``LA``/``RGBA``/``PA`` and palette transparency are composited on black;
  16-bit (``I;16*``), 32-bit integer (``I``) and float (``F``) images are scaled
  to 0..255 by their own min..max range;
- the EXIF orientation tag is applied (:func:`PIL.ImageOps.exif_transpose`), so
  the array is the image as a viewer shows it;
- DICOM (``.dcm``/``.dicom`` or the ``DICM`` magic at byte 128) is read with pydicom:
  rescale slope/intercept applied, then the first WindowCenter/WindowWidth (or the
  min..max range when there is none) mapped to 0..255; MONOCHROME1 is inverted;
  a multi-frame file gives its middle frame.

Images above :data:`MAX_MEGAPIXELS` are refused before decoding.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from braintumor.errors import BrainTumorError

MAX_MEGAPIXELS = 50.0
"""Largest accepted image, in megapixels (10^6 pixels)."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
"""File name endings recognised as images when listing folders."""

_DICOM_EXTENSIONS = (".dcm", ".dicom")
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # transposed / rotated by 90 degrees: width and height swap

# ----------------------------------------------------------------------------- helpers
def _name_and_bytes(source: Any, name: str | None) -> tuple[str, bytes]:
    """The display name and the whole content of ``source`` (a path or bytes)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = name or "<bytes>"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = name or str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BrainTumorError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise BrainTumorError(f"{name}: is a folder, not an image file") from None
        except OSError as e:
            raise BrainTumorError(f"{name}: cannot read ({e.strerror or e})") from None
    else:
        raise TypeError(f"read_image needs a path or bytes, got {type(source).__name__}")
    if not data:
        raise BrainTumorError(f"{name}: empty file")
    return name, data


def _is_dicom(name: str, data: bytes) -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith(_DICOM_EXTENSIONS)


def _check_pixels(name: str, pixels: int) -> None:
    mp = pixels / 1e6
    if mp > MAX_MEGAPIXELS:
        raise BrainTumorError(f"{name}: image is {mp:.1f} megapixels; the limit is {MAX_MEGAPIXELS:g}")


def _open_pil(name: str, stream) -> Image.Image:
    """``Image.open`` with PIL's decompression-bomb warning/error turned into our limit's message."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(stream)
    except Image.DecompressionBombError as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        if m:
            _check_pixels(name, int(m.group(1)))
        raise BrainTumorError(f"{name}: image is too large (more than {MAX_MEGAPIXELS:g} megapixels)") from None
    except UnidentifiedImageError:
        raise BrainTumorError(f"{name}: not an image (unrecognised format; expected JPEG, PNG, BMP, TIFF or DICOM)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise BrainTumorError(f"{name}: unreadable image header ({e})") from None
    _check_pixels(name, im.width * im.height)
    return im


def _scale_to_uint8(a: np.ndarray) -> np.ndarray:
    """Linear map of ``a``'s finite min..max onto 0..255 (a constant image becomes 0)."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, dtype=np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    out = np.where(finite, a, lo) - lo
    if hi > lo:
        out *= 255.0 / (hi - lo)
    else:
        out[:] = 0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _gray_to_rgb(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[:, :, None], 3, axis=2)


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """``[H, W, 4]`` uint8 RGBA -> ``[H, W, 3]`` uint8, colour times alpha (black background)."""
    rgb = rgba[:, :, :3].astype(np.uint16)
    alpha = rgba[:, :, 3:4].astype(np.uint16)
    return ((rgb * alpha + 127) // 255).astype(np.uint8)


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    """A loaded PIL image of any mode -> RGB ``uint8 [H, W, 3]``."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _gray_to_rgb(_scale_to_uint8(np.asarray(im)))
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "LA":
        la = np.asarray(im)
        return _composite_on_black(np.dstack([la[:, :, 0]] * 3 + [la[:, :, 1]]))
    elif mode == "L" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif mode == "RGB" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        return _composite_on_black(np.asarray(im))
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


# ----------------------------------------------------------------------------- DICOM
def _read_dicom(name: str, data: bytes, stop_before_pixels: bool = False):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as e:
        raise BrainTumorError(f"{name}: not a readable DICOM file ({e})") from None


def _dicom_spacing(ds) -> tuple[float, float] | None:
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        v = ds.get(key)
        if v is not None:
            try:
                row, col = (float(x) for x in list(v)[:2])
                return (row, col)
            except (TypeError, ValueError):
                continue
    return None


def _first(v) -> float | None:
    """First value of a possibly multi-valued DICOM number (WindowCenter can hold several)."""
    if v is None:
        return None
    try:
        if isinstance(v, (list, tuple)) or hasattr(v, "__getitem__") and not isinstance(v, (str, bytes)):
            v = v[0]
        return float(v)
    except (TypeError, ValueError, IndexError):
        return None


def _dicom_to_rgb(name: str, data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    ds = _read_dicom(name, data)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise BrainTumorError(f"{name}: DICOM file has no pixel data")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_pixels(name, rows * cols)
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for missing decoders / bad data
        raise BrainTumorError(f"{name}: cannot decode DICOM pixel data ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and arr.ndim >= (4 if samples > 1 else 3):
        arr = arr[arr.shape[0] // 2]
    if samples > 1:  # colour: pydicom already converted YBR to RGB
        rgb = arr if arr.dtype == np.uint8 else _scale_to_uint8(arr)
        image = np.ascontiguousarray(rgb[:, :, :3])
    else:
        a = arr.astype(np.float64) * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)
        center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if center is not None and width is not None and width >= 1:
            # DICOM PS3.3 C.11.2.1.2 linear window function
            g = ((a - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5) * 255.0
            g8 = np.clip(np.rint(g), 0, 255).astype(np.uint8)
        else:
            g8 = _scale_to_uint8(a)
        if photometric == "MONOCHROME1":
            g8 = 255 - g8
        image = _gray_to_rgb(g8)
    bits = ds.get("BitsAllocated")
    meta = {"format": "dicom", "original_mode": f"{photometric} {bits}-bit" if bits else photometric,
            "pixel_spacing_mm": _dicom_spacing(ds), "frames": frames}
    return image, meta


# ----------------------------------------------------------------------------- public API
def read_image_with_meta(source, name: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image file (path or bytes) as RGB, with facts about it.

    Returns ``(image, meta)``: ``image`` is ``uint8 [H, W, 3]`` (after EXIF orientation);
    ``meta`` has ``format`` (``"jpeg"``, ``"png"``, ``"bmp"``, ``"tiff"``, ``"dicom"``, ...),
    ``original_mode`` (PIL mode such as ``"I;16"``, or ``"MONOCHROME2 16-bit"`` for DICOM)
    and ``pixel_spacing_mm`` (``(row, col)`` in millimetres from DICOM PixelSpacing, else None).

    ``name`` is used in error messages (default: the path, or ``<bytes>``).
    Raises :class:`BrainTumorError` (one line naming the file) for a missing or empty
    file, something that is not an image, a truncated image, a DICOM file without
    pixel data, or more than :data:`MAX_MEGAPIXELS` megapixels.
    """
    name, data = _name_and_bytes(source, name)
    if _is_dicom(name, data):
        return _dicom_to_rgb(name, data)
    im = _open_pil(name, io.BytesIO(data))
    fmt = (im.format or "unknown").lower()
    mode = im.mode
    try:
        im.load()  # force the full decode: truncated files fail here, not later
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise BrainTumorError(f"{name}: truncated or corrupt image ({e})") from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a malformed EXIF block: keep the stored orientation
        pass
    image = _pil_to_rgb(im)
    return image, {"format": fmt, "original_mode": mode, "pixel_spacing_mm": None}


def read_image(source, name: str | None = None) -> np.ndarray:
    """Read an image file (path or bytes) as RGB ``uint8 [H, W, 3]``; see :func:`read_image_with_meta`."""
    return read_image_with_meta(source, name)[0]


def read_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` in pixels of an image file as :func:`read_image` would return it.

    Cheap: reads only the header (PIL) or the non-pixel elements (DICOM); the EXIF
    orientation is honoured (a 90-degree orientation swaps height and width).
    Does not detect truncated pixel data — :func:`read_image` does.
    """
    path = Path(path)
    name = str(path)
    if path.suffix.lower() in _DICOM_EXTENSIONS or _has_dicm_magic(path):
        _, data = _name_and_bytes(path, name)
        ds = _read_dicom(name, data, stop_before_pixels=True)
        rows, cols = ds.get("Rows"), ds.get("Columns")
        if not rows or not cols:
            raise BrainTumorError(f"{name}: DICOM file has no image size (Rows/Columns)")
        _check_pixels(name, int(rows) * int(cols))
        return int(rows), int(cols)
    try:
        if path.stat().st_size == 0:
            raise BrainTumorError(f"{name}: empty file")
        f = path.open("rb")
    except FileNotFoundError:
        raise BrainTumorError(f"{name}: no such file") from None
    except OSError as e:
        raise BrainTumorError(f"{name}: cannot read ({e.strerror or e})") from None
    with f:
        im = _open_pil(name, f)
        w, h = im.size
        try:
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:
            orientation = 1
    return (w, h) if orientation in _SWAPPING_ORIENTATIONS else (h, w)


def _has_dicm_magic(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` -> ``uint8 [H, W, 3]`` (a copy)."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise BrainTumorError(f"expected an image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return np.array(img, copy=True)


def shrink_to(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` ``[H, W, C]`` uint8 shrunk (box filter, i.e. area average) so its longer side is at most ``max_side``."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
