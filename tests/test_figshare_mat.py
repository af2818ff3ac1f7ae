"""``braintumor fetch-data --dataset figshare``: MATLAB v7.3 slices -> COCO with patient ids, split by patient.

The .mat files are written here with h5py the way MATLAB writes v7.3 files: a
512-byte MATLAB header (userblock), a ``cjdata`` struct group, every array stored
transposed (MATLAB is column-major), the mask as uint8 ``logical``, the label as a
1 x 1 double, the patient id as a ``char`` array of uint16 codes, the outline as a
1 x 2K double vector of (row, col) pairs.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import zipfile
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from braintumor.errors import BrainTumorError
from braintumor.figshare_mat import (PARTS, border_order, convert, fetch_figshare, read_mat, split_patients,
                                     to_uint8)

H, W = 40, 56  # not square: a transposed reading cannot go unnoticed


def _matlab(ds, cls):
    ds.attrs["MATLAB_class"] = np.bytes_(cls)
    return ds


def slice_arrays(seed: int):
    """MATLAB's view of one slice: int16 image [H, W] with a gradient, an L-shaped tumor, its outline."""
    rng = np.random.default_rng(seed)
    rows = np.arange(H, dtype=np.int32)[:, None]
    cols = np.arange(W, dtype=np.int32)[None, :]
    image = (rows * 40 + cols * 3 + rng.integers(0, 5, (H, W)) - 300).astype(np.int16)  # negative values too
    mask = np.zeros((H, W), bool)
    r0, c0 = 4 + seed % 5, 6 + seed % 7
    mask[r0:r0 + 12, c0:c0 + 4] = True      # vertical bar
    mask[r0 + 8:r0 + 12, c0:c0 + 20] = True  # foot to the right: an asymmetric L
    edge = mask & ~np.pad(mask, 1)[2:, 1:-1] | mask & ~np.pad(mask, 1)[:-2, 1:-1] \
        | mask & ~np.pad(mask, 1)[1:-1, 2:] | mask & ~np.pad(mask, 1)[1:-1, :-2]
    border_rc = np.argwhere(edge).astype(np.float64) + 1.0  # MATLAB's 1-based (row, col)
    return image, mask, border_rc


def write_mat(path, number_or_none=None, *, image, mask, label, pid, border_rc):
    """One cjdata .mat (v7.3) as MATLAB writes it."""
    path = Path(path)
    with h5py.File(path, "w", userblock_size=512) as f:
        cj = f.create_group("cjdata")
        cj.attrs["MATLAB_class"] = np.bytes_("struct")
        _matlab(cj.create_dataset("image", data=image.T), "int16")
        m = _matlab(cj.create_dataset("tumorMask", data=mask.astype(np.uint8).T), "logical")
        m.attrs["MATLAB_int_decode"] = np.int32(1)
        _matlab(cj.create_dataset("label", data=np.array([[float(label)]])), "double")
        codes = np.array([[ord(c)] for c in pid], dtype=np.uint16)  # 1 x n char -> stored n x 1
        p = _matlab(cj.create_dataset("PID", data=codes), "char")
        p.attrs["MATLAB_int_decode"] = np.int32(2)
        _matlab(cj.create_dataset("tumorBorder", data=border_rc.reshape(1, -1).T), "double")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Aug 10 2015 HDF5 schema 1.00 ."
    with path.open("r+b") as f:
        f.write(header.ljust(116, b" "))
    return path


PATIENTS = {1: "100360", 2: "100360", 3: "MR040", 4: "MR040", 5: "112649", 6: "112649", 7: "9"}
LABELS = {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 2}


def write_set(folder: Path, numbers=tuple(PATIENTS)):
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for n in numbers:
        image, mask, border = slice_arrays(n)
        write_mat(folder / f"{n}.mat", image=image, mask=mask, label=LABELS[n], pid=PATIENTS[n], border_rc=border)
        expected[n] = (image, mask)
    return expected


def zip_parts(mats: Path, out: Path) -> list[Path]:
    """The .mat files in two zip parts, named like the Figshare ones."""
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(mats.glob("*.mat"), key=lambda p: int(p.stem))
    half = len(files) // 2
    paths = []
    for name, chunk in ((PARTS[0], files[:half]), (PARTS[1], files[half:])):
        with zipfile.ZipFile(out / name, "w", zipfile.ZIP_DEFLATED) as z:
            for p in chunk:
                z.write(p, p.name)
        paths.append(out / name)
    return paths


# ----------------------------------------------------------------------------- one file
def test_read_mat_gives_matlab_orientation_label_and_patient_id(tmp_path):
    image, mask, border = slice_arrays(3)
    p = write_mat(tmp_path / "12.mat", image=image, mask=mask, label=3, pid="MR040", border_rc=border)
    s = read_mat(p)
    assert s.number == 12 and s.label == 3 and s.patient_id == "MR040"
    assert s.image.shape == (H, W) and s.image.dtype == np.uint8
    np.testing.assert_array_equal(s.mask, mask)  # transposed back: the L's foot points right
    np.testing.assert_array_equal(s.image, to_uint8(image))
    assert s.image.min() == 0 and s.image.max() == 255  # min..max of the int16 slice onto 0..255
    assert s.image[0, 0] == 0 and s.image[-1, -1] == 255  # the gradient runs down and right, as in MATLAB
    assert border_order(s) == "row,col"  # the outline follows the mask read this way, not transposed
    # bytes work as well as paths (members of a zip)
    assert read_mat(p.read_bytes(), name="part.zip:12.mat").patient_id == "MR040"


def test_windowing_is_min_max_per_slice():
    a = np.array([[-100, 0], [50, 300]], np.int16)
    np.testing.assert_array_equal(to_uint8(a), [[0, 64], [96, 255]])
    assert not to_uint8(np.full((3, 3), 7, np.int16)).any()


def test_bad_files_are_one_line_naming_the_file(tmp_path):
    (tmp_path / "5.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    with pytest.raises(BrainTumorError, match=r"5\.mat: not a MATLAB v7\.3 \(HDF5\) file") as e:
        read_mat(tmp_path / "5.mat")
    assert "\n" not in str(e.value)
    with h5py.File(tmp_path / "6.mat", "w") as f:
        f.create_group("cjdata").create_dataset("image", data=np.zeros((4, 4), np.int16))
    with pytest.raises(BrainTumorError, match=r"6\.mat: cjdata has no 'tumorMask' field"):
        read_mat(tmp_path / "6.mat")
    image, mask, border = slice_arrays(1)
    write_mat(tmp_path / "7.mat", image=image, mask=mask, label=4, pid="1", border_rc=border)
    with pytest.raises(BrainTumorError, match=r"7\.mat: cjdata.label is 4, expected 1, 2 or 3"):
        read_mat(tmp_path / "7.mat")
    write_mat(tmp_path / "scan.mat", image=image, mask=mask, label=1, pid="1", border_rc=border)
    with pytest.raises(BrainTumorError, match=r"scan\.mat: not named N\.mat"):
        read_mat(tmp_path / "scan.mat")
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(BrainTumorError, match=r"broken\.zip: not a readable zip archive"):
        convert(tmp_path / "broken.zip", tmp_path / "out")


# ----------------------------------------------------------------------------- split
def test_patient_split_is_deterministic_and_disjoint():
    ids = [f"P{i:03d}" for i in range(50)] * 3
    a, b = split_patients(ids), split_patients(list(reversed(ids)))
    assert a == b
    assert len(a["val"]) == 10 and len(a["train"]) == 40 and not set(a["train"]) & set(a["val"])
    assert split_patients(ids, seed=1) != a
    assert split_patients(["x", "y"])["val"] and split_patients(["x", "y"])["train"]
    assert split_patients(["x"]) == {"train": ["x"], "val": []}


# ----------------------------------------------------------------------------- the whole conversion
def _check_converted(out: Path, expected: dict):
    doc = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in sorted(doc["categories"], key=lambda c: c["id"])] == ["meningioma", "glioma", "pituitary"]
    assert [r["id"] for r in doc["images"]] == sorted(expected)
    by_id = {r["id"]: r for r in doc["images"]}
    from pycocotools import mask as mask_utils

    for a in doc["annotations"]:
        n = a["image_id"]
        image, mask = expected[n]
        rec = by_id[n]
        assert (rec["height"], rec["width"]) == (H, W) and rec["file_name"] == f"{n}.jpg"
        assert rec["patient_id"] == PATIENTS[n] and a["category_id"] == LABELS[n]
        decoded = mask_utils.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), mask)
        assert a["area"] == int(mask.sum())
        y, x = np.nonzero(mask)
        assert a["bbox"] == [float(x.min()), float(y.min()), float(x.max() - x.min() + 1), float(y.max() - y.min() + 1)]
        jpg = np.asarray(Image.open(out / "images" / rec["file_name"]))
        assert jpg.shape == (H, W)
        assert np.abs(jpg.astype(int) - to_uint8(image).astype(int)).max() <= 8  # JPEG at quality 95
    split = json.loads((out / "split.json").read_text())
    train_p, val_p = set(split["patients"]["train"]), set(split["patients"]["val"])
    assert train_p and val_p and not train_p & val_p and train_p | val_p == set(PATIENTS.values())
    for part, patients in (("train", train_p), ("val", val_p)):
        assert {PATIENTS[i] for i in split["images"][part]} <= patients
    assert sorted(split["images"]["train"] + split["images"]["val"]) == sorted(expected)
    return doc, split


def test_convert_from_zip_parts(tmp_path):
    expected = write_set(tmp_path / "mats")
    zip_parts(tmp_path / "mats", tmp_path / "download")
    target, report = fetch_figshare(tmp_path / "data", from_dir=tmp_path / "download")
    assert target == tmp_path / "data" / "figshare"
    assert report.slices == 7 and report.patients == 4 and report.border_orders == {"row,col": 7}
    assert any("7 slices of 4 patients" in line for line in report.lines())
    _check_converted(target, expected)
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".figshare-")]  # no leftovers
    # the project's COCO reader takes it (three classes by name)
    from braintumor.data import load_coco

    ds = load_coco(target / "annotations.json", target / "images", ["BG", "meningioma", "glioma", "pituitary"])
    assert len(ds) == 7 and not ds.errors
    assert sorted(s.class_id for i in ds.image_info for s in i["shapes"]) == sorted(LABELS.values())


def test_convert_from_extracted_files_and_the_whole_article_zip(tmp_path):
    expected = write_set(tmp_path / "mats")
    target, _ = fetch_figshare(tmp_path / "a", from_dir=tmp_path / "mats")
    doc_a, split_a = _check_converted(target, expected)
    # the article's own download: one zip holding the zip parts (and a README)
    parts = zip_parts(tmp_path / "mats", tmp_path / "parts")
    (tmp_path / "article").mkdir()
    with zipfile.ZipFile(tmp_path / "article" / "1512427.zip", "w") as z:
        for p in parts:
            z.write(p, p.name)
        z.writestr("README.txt", "cjdata.image ...")
    target_b, _ = fetch_figshare(tmp_path / "b", from_dir=tmp_path / "article")
    doc_b, split_b = _check_converted(target_b, expected)
    assert split_a == split_b and doc_a == doc_b  # the same archive gives the same files, split included


def test_existing_folder_is_kept_unless_converting_again(tmp_path):
    write_set(tmp_path / "mats", numbers=(1, 3))
    target, report = fetch_figshare(tmp_path / "d", from_dir=tmp_path / "mats")
    again, report2 = fetch_figshare(tmp_path / "d")  # already there: no download attempted
    assert again == target and report2 is None


# ----------------------------------------------------------------------------- download
def test_offline_fails_in_one_line_saying_what_to_download_and_where(tmp_path, capsys, monkeypatch):
    from braintumor.cli import main

    monkeypatch.setenv("BRAIN_TUMOR_FIGSHARE_API", "http://127.0.0.1:9/api/articles/1512427")  # nothing listens
    rc = main(["fetch-data", "--dataset", "figshare", "--dest", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    download = tmp_path / "data" / "figshare_download"
    assert err.startswith("error: cannot reach 127.0.0.1:9")
    assert "brainTumorDataPublic_*.zip" in err and "https://figshare.com/articles/dataset/brain_tumor_dataset/1512427" in err
    assert f"into {download}/" in err and f"--from {download}" in err
    assert not (tmp_path / "data" / "figshare").exists()


def test_from_a_missing_folder_is_one_line(tmp_path, capsys):
    from braintumor.cli import main

    rc = main(["fetch-data", "--dataset", "figshare", "--dest", str(tmp_path), "--from", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "nope: no such file or folder" in err


def test_download_through_the_figshare_api(tmp_path, capsys):
    """The API lists the parts; each is downloaded, its MD5 checked, then converted (a local HTTP server)."""
    expected = write_set(tmp_path / "mats")
    served = tmp_path / "served"
    zip_parts(tmp_path / "mats", served)
    for name in PARTS[2:]:  # the other two parts hold nothing here, but are fetched all the same
        with zipfile.ZipFile(served / name, "w"):
            pass
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    files = []
    for name in PARTS:
        data = (served / name).read_bytes()
        files.append({"name": name, "size": len(data), "computed_md5": hashlib.md5(data).hexdigest(),
                      "download_url": f"{base}/{name}"})
    (served / "api.json").write_text(json.dumps({"id": 1512427, "files": files}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        target, report = fetch_figshare(tmp_path / "data", api_url=f"{base}/api.json")
        _check_converted(target, expected)
        assert sorted(p.name for p in (tmp_path / "data" / "figshare_download").iterdir()) == sorted(PARTS)
        # a second conversion reuses the parts already downloaded
        target, report = fetch_figshare(tmp_path / "data", api_url=f"{base}/api.json", force=True)
        assert "already downloaded" in capsys.readouterr().out
        # a corrupt download is refused in one line
        (tmp_path / "data" / "figshare_download" / PARTS[0]).unlink()
        files[0]["computed_md5"] = "0" * 32
        (served / "api.json").write_text(json.dumps({"id": 1512427, "files": files}))
        with pytest.raises(BrainTumorError, match="incomplete or corrupt download") as e:
            fetch_figshare(tmp_path / "data", api_url=f"{base}/api.json", force=True)
        assert "\n" not in str(e.value)
    finally:
        server.shutdown()
        server.server_close()
