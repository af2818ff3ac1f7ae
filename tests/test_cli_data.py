"""``braintumor data check``, ``data export-coco`` and ``fetch-data`` through braintumor.cli.main."""

from __future__ import annotations

import io
import json
import shutil
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from braintumor import fetch
from braintumor.cli import main
from braintumor.data import load_coco, load_split


def _dataset(root: Path, splits=("train", "val"), missing_image=False) -> Path:
    """A tiny VIA dataset: per split two 40x50 PNGs with one rectangle each."""
    for split in splits:
        d = root / split
        d.mkdir(parents=True)
        doc = {}
        for k in range(2):
            name = f"{split}{k}.png"
            Image.fromarray(np.full((40, 50, 3), 9 * k, np.uint8)).save(d / name)
            doc[name] = {"filename": name, "regions": [{"shape_attributes": {"name": "rect", "x": 5, "y": 5, "width": 10,
                                                                              "height": 10 + k}, "region_attributes": {}}]}
        if missing_image:
            doc["ghost.png"] = {"filename": "ghost.png", "regions": []}
        (d / "annotations.json").write_text(json.dumps(doc, indent=1))
    return root


# ----------------------------------------------------------------------------- data check
def test_check_real_data(real_data_dir, capsys):
    assert main(["data", "check", "--data", str(real_data_dir)]) == 0
    out = capsys.readouterr().out
    assert "images: 202, instances: 219" in out and "images: 61, instances: 62" in out
    assert "512x512 (148)" in out and "512x512 (61)" in out and "tumor 219" in out
    assert out.count("problems: none") == 2


def test_check_real_annotations_cut_in_half(real_data_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    (copy / "train").mkdir(parents=True)
    text = (real_data_dir / "train" / "annotations.json").read_text()
    ann = copy / "train" / "annotations.json"
    ann.write_text(text[: len(text) // 2])
    rc = main(["data", "check", "--data", str(copy)])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and err.startswith(f"error: {ann}: not valid JSON")


def test_check_synthetic_dataset_and_splits_option(tmp_path, capsys):
    root = _dataset(tmp_path / "d")
    assert main(["data", "check", "--data", str(root)]) == 0
    out = capsys.readouterr().out
    assert "train (via: annotations.json):" in out and "val (via: annotations.json):" in out
    assert "instances per image: mean 1.00, min 1, max 1" in out and "50x40 (2)" in out
    assert main(["data", "check", "--data", str(root), "--splits", "val"]) == 0
    out = capsys.readouterr().out
    assert "val (" in out and "train (" not in out


def test_check_fails_on_errors_and_lists_them(tmp_path, capsys):
    root = _dataset(tmp_path / "d", splits=("train",), missing_image=True)
    assert main(["data", "check", "--data", str(root)]) == 1
    out = capsys.readouterr().out
    assert "problems: 1 errors, 0 warnings (missing image 1)" in out
    assert f"error: {root / 'train' / 'ghost.png'}: image file not found" in out


def test_check_truncated_annotations_is_one_line(tmp_path, capsys):
    root = _dataset(tmp_path / "d", splits=("train",))
    ann = root / "train" / "annotations.json"
    text = ann.read_text()
    ann.write_text(text[: len(text) // 2])
    assert main(["data", "check", "--data", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {ann}: not valid JSON (") and "line" in err


def test_check_missing_folder_and_no_splits(tmp_path, capsys, monkeypatch):
    assert main(["data", "check", "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "nope") in err and "braintumor fetch-data" in err
    (tmp_path / "empty").mkdir()
    assert main(["data", "check", "--data", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "empty") in err and "no split folders" in err
    # without --data: $BRAIN_TUMOR_DATA
    monkeypatch.setenv("BRAIN_TUMOR_DATA", str(_dataset(tmp_path / "env", splits=("val",))))
    assert main(["data", "check"]) == 0
    assert "val (" in capsys.readouterr().out


# ----------------------------------------------------------------------------- export-coco
def test_export_coco_cli(tmp_path, capsys):
    root = _dataset(tmp_path / "d")
    out = tmp_path / "val.json"
    assert main(["data", "export-coco", "--data", str(root), "--split", "val", "--out", str(out)]) == 0
    assert f"wrote {out}: 2 images, 2 instances" in capsys.readouterr().out
    back, via = load_coco(out, root / "val"), load_split(root, "val")
    assert all(np.array_equal(back.load_mask(i)[0], via.load_mask(i)[0]) for i in via.image_ids)

    bad = _dataset(tmp_path / "bad", splits=("val",), missing_image=True)
    out2 = tmp_path / "bad.json"
    assert main(["data", "export-coco", "--data", str(bad), "--split", "val", "--out", str(out2)]) == 1
    assert not out2.exists() and "not written" in capsys.readouterr().err


# ----------------------------------------------------------------------------- fetch-data
def _fake_archive(path: Path, top="brain-tumor-segmentation-main", extra_members=()) -> Path:
    """A zip shaped like GitHub's repository archive: <top>/brain_tumor_data/{train,val}/..."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{top}/README.md", "readme")
        zf.writestr(f"{top}/notebooks/x.ipynb", "{}")
        for split in ("train", "val"):
            buf = io.BytesIO()
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG")
            zf.writestr(f"{top}/brain_tumor_data/{split}/0.jpg", buf.getvalue())
            doc = {"0.jpg1": {"filename": "0.jpg", "regions": [{"shape_attributes": {
                "name": "rect", "x": 1, "y": 1, "width": 3, "height": 3}, "region_attributes": {}}]}}
            zf.writestr(f"{top}/brain_tumor_data/{split}/annotations.json", json.dumps(doc))
        for name, data in extra_members:
            zf.writestr(name, data)
    return path


def test_fetch_from_file_url(tmp_path, capsys, monkeypatch):
    archive = _fake_archive(tmp_path / "repo.zip", extra_members=[("../evil.txt", "x"),
                                                                  ("t/brain_tumor_data/../../evil2.txt", "x")])
    monkeypatch.setattr(fetch, "ARCHIVE_URLS", (archive.as_uri(),))
    dest = tmp_path / "data"
    assert main(["fetch-data", "--dest", str(dest)]) == 0
    assert "dataset ready" in capsys.readouterr().out
    assert sorted(p.name for p in dest.iterdir()) == ["brain_tumor_data"]  # no temp folder left
    assert not (tmp_path / "evil.txt").exists() and not list(tmp_path.rglob("evil*.txt"))
    ds = load_split(dest / "brain_tumor_data", "val")
    assert len(ds) == 1 and ds.instance_count(0) == 1 and ds.problems == []
    assert main(["fetch-data", "--dest", str(dest)]) == 0  # second time: nothing to do
    assert "already present" in capsys.readouterr().out


def test_fetch_env_url_and_404_fallback(tmp_path, monkeypatch):
    archive = _fake_archive(tmp_path / "repo.zip", top="brain-tumor-segmentation-master")
    missing = (tmp_path / "no-such.zip").as_uri()
    real_urlopen = fetch.urllib.request.urlopen

    def urlopen(url, timeout=None):
        if url == missing:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        return real_urlopen(url, timeout=timeout)

    monkeypatch.setattr(fetch.urllib.request, "urlopen", urlopen)
    target = fetch.fetch_dataset(tmp_path / "d1", urls=(missing, archive.as_uri()))
    assert (target / "train" / "annotations.json").is_file()
    monkeypatch.setenv("BRAIN_TUMOR_DATA_URL", archive.as_uri())
    assert (fetch.fetch_dataset(tmp_path / "d2") / "val" / "0.jpg").is_file()


def test_fetch_without_network_is_one_clear_line(tmp_path, capsys, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(fetch.urllib.request, "urlopen", offline)
    monkeypatch.delenv("BRAIN_TUMOR_DATA_URL", raising=False)
    dest = tmp_path / "data"
    assert main(["fetch-data", "--dest", str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: cannot reach github.com: ") and "by hand" in err and "--data" in err
    assert list(dest.iterdir()) == []  # nothing half-written


def test_fetch_bad_archives(tmp_path, capsys, monkeypatch):
    (tmp_path / "notzip.zip").write_text("<html>rate limited</html>")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("repo/README.md", "no data here")
    for name, needle in [("notzip.zip", "not a zip archive"), ("other.zip", "no brain_tumor_data/ folder")]:
        monkeypatch.setattr(fetch, "ARCHIVE_URLS", ((tmp_path / name).as_uri(),))
        dest = tmp_path / f"d_{name}"
        assert main(["fetch-data", "--dest", str(dest)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err
        assert list(dest.iterdir()) == []


def test_fetch_data_script_wraps_the_cli():
    script = Path(__file__).resolve().parent.parent / "data" / "fetch_data.sh"
    text = script.read_text()
    assert script.stat().st_mode & 0o111 and "-m braintumor fetch-data" in text
    assert shutil.which("bash")
