"""Large uploads in Colab: Colab's own picker and a path field beside FileUpload (ipywidgets#3452)."""

from __future__ import annotations

import sys
import types

import pytest

from braintumor import ui
from test_ui import BlobPredictor, _html, ckpt, png_bytes  # noqa: F401  (ckpt is a fixture)


def _app(ckpt):
    return ui.build_app(logs_dir=ckpt.parent.parent, predictor_factory=lambda path: BlobPredictor(),
                        checkpoint_finder=lambda logs: [ckpt])


@pytest.fixture
def fake_colab(monkeypatch):
    """A google.colab module whose files.upload() returns what the test puts in ``chosen``."""
    chosen = {}
    google = types.ModuleType("google")
    colab = types.ModuleType("google.colab")
    files = types.ModuleType("google.colab.files")
    files.upload = lambda: dict(chosen)
    colab.files = files
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.files", files)
    return chosen


def test_outside_colab_only_the_upload_widget_is_shown(ckpt, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    app = _app(ckpt)
    assert not app.in_colab and app.colab_box.children == ()
    assert "3452" not in _html(app.widget)
    app.colab_path.value = "/does/not/matter.png"  # ignored outside Colab
    results = app.run_detection(({"name": "a.png", "type": "image/png", "content": memoryview(png_bytes())},))
    assert len(results) == 1 and results[0] is not None


def test_in_colab_a_large_file_goes_through_colabs_own_picker(ckpt, fake_colab):
    big = png_bytes(blobs=[(10, 10, 40, 50, 220)], shape=(1200, 1200))
    fake_colab["big scan.png"] = big
    app = _app(ckpt)
    assert app.in_colab
    note = app.colab_note.value
    assert "ipywidgets#3452" in note and "1 MB" in note and note.count(". ") == 0  # one sentence
    app.set_language("en")
    assert "silently drops files of about 1 MB" in app.colab_note.value
    app.colab_pick.click()
    assert [f.name for f in app._picked] == ["big scan.png"] and "big scan.png" in app.colab_picked.value
    results = app.run_detection()  # the widget holds nothing: the picked file is analysed
    assert len(results) == 1 and results[0] is not None and results[0].report["tumor_found"]


def test_in_colab_a_path_on_drive_is_read(ckpt, fake_colab, tmp_path):
    (tmp_path / "scan.png").write_bytes(png_bytes(blobs=[(10, 10, 30, 30, 230)]))
    app = _app(ckpt)
    app.colab_path.value = f"{tmp_path / 'scan.png'}, {tmp_path / 'missing.dcm'}"
    results = app.run_detection()
    assert len(results) == 2 and results[0] is not None and results[1] is None
    html = _html(app.results)
    assert f"{tmp_path / 'missing.dcm'}: no such file" in html


def test_a_failing_picker_is_one_line_and_the_app_stays_usable(ckpt, fake_colab):
    app = _app(ckpt)

    def cancelled():
        raise RuntimeError("upload cancelled\nby the user")

    assert app.pick_colab_files(cancelled) == []
    assert "upload cancelled" in app.status.value and "by the user" not in app.status.value
    fake_colab["a.png"] = png_bytes()
    assert [f.name for f in app.pick_colab_files()] == ["a.png"]


def test_colab_detection_is_the_monkeypatchable_function(ckpt, monkeypatch):
    monkeypatch.setattr(ui, "running_in_colab", lambda: True)
    assert _app(ckpt).colab_box.children != ()
    monkeypatch.setattr(ui, "running_in_colab", lambda: False)
    assert _app(ckpt).colab_box.children == ()
