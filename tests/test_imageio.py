"""braintumor.imageio: every PIL mode and DICOM to RGB uint8, EXIF orientation, one-line errors."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from braintumor.errors import BrainTumorError
from braintumor.imageio import read_image, read_image_with_meta, read_size


def _gradient(h=40, w=60) -> np.ndarray:
    """uint8 [h, w] horizontal ramp 0..255 (distinct left and right halves)."""
    return np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))


def _rgb_pattern(h=40, w=60) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:10, :20] = (255, 0, 0)      # red block top-left
    img[-10:, -20:] = (0, 0, 255)    # blue block bottom-right
    return img


def _assert_rgb(img, shape):
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape == (*shape, 3)


# ----------------------------------------------------------------------------- modes
@pytest.mark.parametrize("ext", ["png", "bmp", "tiff", "jpg"])
def test_grayscale_formats_become_rgb_with_equal_channels(tmp_path, ext):
    g = _gradient()
    p = tmp_path / f"g.{ext}"
    Image.fromarray(g, "L").save(p)
    img, meta = read_image_with_meta(p)
    _assert_rgb(img, g.shape)
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    tol = 3 if ext == "jpg" else 0
    assert np.abs(img[..., 0].astype(int) - g).max() <= tol
    assert meta["format"] == {"jpg": "jpeg"}.get(ext, ext)
    assert meta["original_mode"] == "L" and meta["pixel_spacing_mm"] is None


def test_rgb_png_is_returned_unchanged(tmp_path):
    rgb = _rgb_pattern()
    p = tmp_path / "c.png"
    Image.fromarray(rgb).save(p)
    assert np.array_equal(read_image(p), rgb)


def test_16bit_png_is_scaled_by_its_own_range(tmp_path):
    a = np.linspace(1000, 3000, 40 * 60).reshape(40, 60).astype(np.uint16)
    p = tmp_path / "16.png"
    Image.fromarray(a).save(p)
    img, meta = read_image_with_meta(p)
    assert meta["original_mode"].startswith("I")
    _assert_rgb(img, a.shape)
    assert img.min() == 0 and img.max() == 255
    expected = np.rint((a - 1000) / 2000 * 255)
    assert np.abs(img[..., 0] - expected).max() <= 1


def test_int32_and_float_tiffs_are_scaled(tmp_path):
    f = np.linspace(-1.5, 2.5, 40 * 60, dtype=np.float32).reshape(40, 60)
    Image.fromarray(f, "F").save(tmp_path / "f.tiff")
    Image.fromarray((f * 1000).astype(np.int32), "I").save(tmp_path / "i.tiff")
    for name in ("f.tiff", "i.tiff"):
        img = read_image(tmp_path / name)
        _assert_rgb(img, f.shape)
        assert img[0, 0, 0] == 0 and img[-1, -1, 0] == 255
        assert (np.diff(img[..., 0].ravel().astype(int)) >= 0).all()  # monotone like the ramp


def test_rgba_and_la_are_composited_on_black(tmp_path):
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :10, 3] = 255   # opaque left half
    rgba[:, 10:, 3] = 0     # transparent right half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert (img[:, :10] == 200).all() and (img[:, 10:] == 0).all()

    la = np.stack([np.full((20, 20), 100, np.uint8), np.full((20, 20), 128, np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    img = read_image(tmp_path / "la.png")
    assert np.abs(img.astype(int) - 50).max() <= 1  # 100 * 128/255


def test_palette_png_with_and_without_transparency(tmp_path):
    rgb = _rgb_pattern()
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pal.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert np.array_equal(read_image(tmp_path / "p.png"), rgb)

    red_index = pal.getpixel((0, 0))
    pal.save(tmp_path / "pt.png", transparency=red_index)
    img = read_image(tmp_path / "pt.png")
    assert (img[:10, :20] == 0).all()            # transparent red -> black
    assert (img[-10:, -20:] == (0, 0, 255)).all()


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    rgb = _rgb_pattern()
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    img, meta = read_image_with_meta(tmp_path / "cmyk.jpg")
    assert meta["original_mode"] == "CMYK"
    _assert_rgb(img, rgb.shape[:2])
    assert img[5, 5, 0] > 200 and img[5, 5, 2] < 60       # still red
    assert img[-5, -5, 2] > 200 and img[-5, -5, 0] < 60   # still blue


def test_exif_orientation_is_applied_and_read_size_agrees(tmp_path):
    rgb = _rgb_pattern(40, 60)  # red at top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # stored pixels must be rotated 90 degrees clockwise for display
    p = tmp_path / "rot.jpg"
    Image.fromarray(rgb).save(p, exif=exif, quality=95)
    img = read_image(p)
    _assert_rgb(img, (60, 40))
    assert read_size(p) == (60, 40)
    # rotated clockwise: the stored top-left corner is now top-right
    assert img[5, -5, 0] > 200 and img[5, -5, 2] < 60
    assert img[-5, 5, 2] > 200


def test_bytes_input_and_name_in_errors(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_rgb_pattern()).save(buf, format="PNG")
    assert np.array_equal(read_image(buf.getvalue()), _rgb_pattern())
    with pytest.raises(BrainTumorError, match=r"^upload\.png: not an image"):
        read_image(b"hello, not an image", name="upload.png")


# ----------------------------------------------------------------------------- errors
def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_empty_missing_and_not_image_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("just text\n")
    for name, pattern in [("empty.jpg", "empty file"), ("missing.jpg", "no such file"), ("text.png", "not an image")]:
        with pytest.raises(BrainTumorError) as e:
            read_image(tmp_path / name)
        msg = _one_line(e)
        assert str(tmp_path / name) in msg and pattern in msg
    with pytest.raises(BrainTumorError, match="empty file"):
        read_size(tmp_path / "empty.jpg")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_is_an_error_not_a_partial_image(tmp_path, fmt):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format=fmt)
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert read_size(p) == (64, 64)  # the header is intact
    with pytest.raises(BrainTumorError) as e:
        read_image(p)
    assert "truncated or corrupt" in _one_line(e) and str(p) in str(e.value)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width x height`` with a tiny (wrong) IDAT: enough for the header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("w,h,mp", [(8000, 7650, "61.2"), (20000, 10000, "200.0")])
def test_huge_images_are_refused_with_their_size(tmp_path, w, h, mp):
    p = tmp_path / "huge.png"
    p.write_bytes(_png_header_only(w, h))
    for reader in (read_image, read_size):
        with pytest.raises(BrainTumorError) as e:
            reader(p)
        assert _one_line(e) == f"{p}: image is {mp} megapixels; the limit is 50"


# ----------------------------------------------------------------------------- DICOM
def _dicom(path: Path, pixels: np.ndarray | None, **elements) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PhotometricInterpretation = elements.pop("PhotometricInterpretation", "MONOCHROME2")
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if pixels is not None:
        frames = pixels.shape[0] if pixels.ndim == 3 else 1
        ds.Rows, ds.Columns = pixels.shape[-2:]
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    else:
        ds.Rows, ds.Columns = 32, 48
    for k, v in elements.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_min_max_window_spacing_and_meta(tmp_path):
    a = np.tile(np.arange(100, 148, dtype=np.uint16), (32, 1))  # 100..147
    p = _dicom(tmp_path / "s.dcm", a, PixelSpacing=[0.5, 0.75])
    img, meta = read_image_with_meta(p)
    _assert_rgb(img, (32, 48))
    assert img[0, 0, 0] == 0 and img[0, -1, 0] == 255
    assert meta["format"] == "dicom" and meta["pixel_spacing_mm"] == (0.5, 0.75)
    assert meta["original_mode"] == "MONOCHROME2 16-bit"
    assert read_size(p) == (32, 48)


def test_dicom_rescale_window_and_monochrome1(tmp_path):
    a = np.tile(np.arange(0, 48, dtype=np.uint16), (32, 1)) * 10  # stored 0..470
    # HU = 2 * stored - 100 -> -100..840; window 300 +- 200 -> 100..500 HU
    p = _dicom(tmp_path / "w.dcm", a, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=300, WindowWidth=400)
    img = read_image(p)[..., 0].astype(int)
    hu = a[0].astype(float) * 2 - 100
    assert (img[0][hu <= 100] == 0).all() and (img[0][hu >= 500] == 255).all()
    mid = (hu > 120) & (hu < 480)
    assert mid.any() and (np.abs(img[0][mid] - (hu[mid] - 100) / 400 * 255) <= 2).all()
    assert read_image_with_meta(p)[1]["pixel_spacing_mm"] is None

    inv = read_image(_dicom(tmp_path / "m1.dcm", a, PhotometricInterpretation="MONOCHROME1"))
    plain = read_image(_dicom(tmp_path / "m2.dcm", a))
    assert np.array_equal(inv, 255 - plain)


def test_dicom_multiframe_gives_middle_frame_and_magic_without_extension(tmp_path):
    frames = np.stack([np.full((16, 16), v, np.uint16) for v in (0, 0, 0)])
    frames[1, :8] = 1000  # only the middle frame has a bright top half
    p = _dicom(tmp_path / "multi.dcm", frames)
    noext = tmp_path / "scan_without_extension"
    noext.write_bytes(p.read_bytes())
    for src in (p, noext):
        img = read_image(src)
        assert (img[:8] == 255).all() and (img[8:] == 0).all()


def test_dicom_without_pixel_data_and_garbage(tmp_path):
    p = _dicom(tmp_path / "nopix.dcm", None)
    with pytest.raises(BrainTumorError) as e:
        read_image(p)
    assert _one_line(e) == f"{p}: DICOM file has no pixel data"
    (tmp_path / "junk.dcm").write_bytes(b"\x01\x02garbage")
    with pytest.raises(BrainTumorError) as e:
        read_image(tmp_path / "junk.dcm")
    assert str(tmp_path / "junk.dcm") in _one_line(e)
