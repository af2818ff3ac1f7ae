"""Shared test doubles: a blob-finding predictor and a DICOM writer."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from skimage.measure import label

from braintumor.boxes import masks_to_boxes


def blob_results(images):
    """Every bright blob (grey > 128) is a tumor scoring its mean brightness / 255."""
    out = []
    for im in images:
        g = im[..., 0]
        lab = label(g > 128)
        masks = np.stack([lab == k for k in range(1, lab.max() + 1)], -1) if lab.max() else \
            np.zeros(g.shape + (0,), bool)
        scores = np.array([g[masks[..., i]].mean() / 255 for i in range(masks.shape[-1])], np.float32)
        out.append({"rois": masks_to_boxes(masks), "class_ids": np.ones(len(scores), np.int32),
                    "scores": scores, "masks": masks})
    return out


def dicom_bytes(px: np.ndarray, spacing=None, window=None, with_pixels: bool = True) -> bytes:
    """A single-frame 16-bit MONOCHROME2 MR DICOM file of ``px`` (uint16 [H, W]), as bytes.

    spacing: (row, col) mm or None; window: (center, width) or None.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Rows, ds.Columns = px.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if spacing is not None:
        ds.PixelSpacing = [str(s) for s in spacing]
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if with_pixels:
        ds.PixelData = px.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_dicom(path: Path, px: np.ndarray, **kw) -> Path:
    Path(path).write_bytes(dicom_bytes(px, **kw))
    return Path(path)
