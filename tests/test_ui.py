"""The decision-support app driven from Python with a fake predictor (braintumor.ui)."""

from __future__ import annotations

import base64
import datetime
import io
import json
import re
from pathlib import Path

import ipywidgets as W
import numpy as np
import pytest
from PIL import Image

from braintumor.config import Config
from fakes import blob_results, dicom_bytes as make_dicom
from braintumor.ui import TEXT, build_app, normalise_upload


class BlobPredictor:
    """Every bright blob (grey > 128) is a tumor scoring its mean brightness / 255; counts its work."""

    def __init__(self, status_probe=None):
        self.class_names = ["BG", "tumor"]
        self.weights_path = Path("fake.h5")
        self.loaded = False
        self.load_calls = 0
        self.detect_calls = 0
        self.status_probe = status_probe
        self.status_seen_while_loading = None

    def load(self):
        self.load_calls += 1
        if self.status_probe is not None:
            self.status_seen_while_loading = self.status_probe()
        self.loaded = True

    def detect(self, images):
        assert self.loaded, "the app must load the model before detecting"
        self.detect_calls += 1
        return blob_results(images)


def png_bytes(blobs=(), shape=(80, 100)):
    img = np.full(shape + (3,), 25, np.uint8)
    for y1, x1, y2, x2, v in blobs:
        img[y1:y2, x1:x2] = v
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def dicom_bytes(spacing=(0.5, 0.8), with_pixels=True):
    """A 64x64 16-bit MR slice: background 100, a 10x14 square at 1000; window 500/1000."""
    px = np.full((64, 64), 100, np.uint16)
    px[20:30, 10:24] = 1000
    return make_dicom(px, spacing=spacing, window=(500, 1000), with_pixels=with_pixels)


def v8(*files):
    """FileUpload.value as ipywidgets 8 holds it."""
    when = datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc)
    return tuple({"name": n, "type": "image/png", "size": len(c), "last_modified": when, "content": memoryview(c)}
                 for n, c in files)


def v7(*files):
    """FileUpload.value as ipywidgets 7 holds it."""
    return {n: {"metadata": {"name": n, "type": "image/png", "size": len(c), "lastModified": 0}, "content": c}
            for n, c in files}


@pytest.fixture
def ckpt(tmp_path):
    run = tmp_path / "logs" / "tumor20240102T0304"
    run.mkdir(parents=True)
    # 3 epochs x 500 steps: trained enough to read scans (MIN_STEPS_FOR_READING 1000), so verdicts are given
    Config({"DETECTION_MIN_CONFIDENCE": 0.6, "STEPS_PER_EPOCH": 500}).save(run / "config.toml")
    p = run / "mask_rcnn_tumor_0003.h5"
    p.write_bytes(b"")
    return p


@pytest.fixture
def app_and_factory(ckpt):
    made = []

    def factory(path):
        pred = BlobPredictor(status_probe=lambda: app.status.value)
        made.append((path, pred))
        return pred

    app = build_app(logs_dir=ckpt.parent.parent, predictor_factory=factory, checkpoint_finder=lambda logs: [ckpt])
    return app, made


def _html(widget) -> str:
    """All HTML text under ``widget``."""
    if isinstance(widget, W.HTML):
        return widget.value
    return "\n".join(_html(c) for c in getattr(widget, "children", ()))


def _images(widget) -> list[np.ndarray]:
    if isinstance(widget, W.Image):
        return [np.asarray(Image.open(io.BytesIO(widget.value)))]
    return [im for c in getattr(widget, "children", ()) for im in _images(c)]


def test_normaliser_reads_both_ipywidgets_shapes():
    a, b = png_bytes(), b"\x00\x01"
    for value in (v8(("a.png", a), ("dir/b.dcm", b)), v7(("a.png", a), ("dir/b.dcm", b))):
        files = normalise_upload(value)
        assert [f.name for f in files] == ["a.png", "b.dcm"]
        assert [f.content for f in files] == [a, b] and all(type(f.content) is bytes for f in files)
    assert normalise_upload(()) == [] and normalise_upload({}) == [] and normalise_upload(None) == []


def test_click_with_an_upload_shows_image_numbers_and_threshold(app_and_factory):
    app, made = app_and_factory
    assert made == [], "nothing is loaded before the first click"
    assert app.threshold.value == pytest.approx(0.6), "slider starts at the run's DETECTION_MIN_CONFIDENCE"
    assert app.checkpoint.options[0][0] == "tumor20240102T0304/mask_rcnn_tumor_0003.h5"
    files = ("scan.png", png_bytes([(10, 20, 30, 60, 240)]))
    if int(W.__version__.split(".")[0]) >= 8:
        app.upload.value = v8(files)
    else:  # 7.x: value is read-only from Python (the browser fills it)
        app.upload.set_trait("value", v7(files))
    app.button.click()
    (result,) = app.results.children
    text = _html(result)
    assert "scan.png" in text and "1 tümör bulundu" in text and "eşik 0.60" in text
    assert "0.94" in text and ">800<" in text, "confidence and area (20 x 40 px) are shown"
    (pair,) = _images(result)
    assert pair.shape[1] == 2 * 100 + 8 and pair.shape[0] >= 80
    assert "Eşik: 0.60" in app.status.value and "1 dosya işlendi (0 hatalı)" in app.status.value


def test_v7_upload_value_gives_the_same_result(app_and_factory):
    app, _ = app_and_factory
    content = png_bytes([(10, 20, 30, 60, 240)])
    (a7,) = app.run_detection(upload_value=v7(("scan.png", content)))
    (a8,) = app.run_detection(upload_value=v8(("scan.png", content)))
    assert a7.report["detections"] == a8.report["detections"] and a7.report["num_tumors"] == 1


def test_no_tumor_message_still_shows_the_image(app_and_factory):
    app, _ = app_and_factory
    app.run_detection(upload_value=v8(("clean.png", png_bytes())))
    (result,) = app.results.children
    text = _html(result)
    assert "Tümör bulunamadı" in text and "eşik 0.60" in text
    assert len(_images(result)) == 1


def test_threshold_slider_filters_without_running_the_model_again(app_and_factory):
    app, made = app_and_factory
    value = v8(("scan.png", png_bytes([(10, 20, 30, 60, 240), (50, 60, 70, 90, 180)])))
    (first,) = app.run_detection(upload_value=value)
    app.threshold.value = 0.9
    (second,) = app.run_detection(upload_value=value)
    assert first.report["num_tumors"] == 2 and second.report["num_tumors"] == 1
    assert second.report["threshold"] == pytest.approx(0.9)
    assert made[0][1].detect_calls == 1, "same file, same checkpoint: the raw result is reused"


def test_bad_uploads_get_one_line_and_the_rest_still_runs(app_and_factory):
    app, _ = app_and_factory
    good = png_bytes([(10, 20, 30, 60, 240)])
    value = v8(("notes.jpg", b"hello, I am text\n"), ("scan.png", good), ("empty.png", b""),
               ("cut.png", good[: len(good) // 2]), ("nopixels.dcm", dicom_bytes(with_pixels=False)))
    out = app.run_detection(upload_value=value)
    assert [a is not None for a in out] == [False, True, False, False, False]
    errors = [c for c in app.results.children if isinstance(c, W.HTML) and "bt-error" in c._dom_classes]
    assert len(errors) == 4
    texts = [e.value for e in errors]
    for name, why in (("notes.jpg", "not an image"), ("empty.png", "empty"), ("cut.png", "truncated"),
                      ("nopixels.dcm", "no pixel data")):
        (line,) = [t for t in texts if name in t]
        assert why in line and "Dosya işlenemedi" in line and "\n" not in line
    assert "4 hatalı" in app.status.value
    # the app stays usable: the next click with a good file works
    (again,) = app.run_detection(upload_value=v8(("next.png", good)))
    assert again.report["tumor_found"] and not app.button.disabled


def test_too_many_megapixels_is_refused(app_and_factory):
    app, _ = app_and_factory
    buf = io.BytesIO()
    Image.new("L", (8000, 6500)).save(buf, format="PNG")  # 52 megapixels, a small file
    (res,) = app.run_detection(upload_value=v8(("huge.png", buf.getvalue())))
    assert res is None
    assert "megapixels" in _html(app.results) and "huge.png" in _html(app.results)


def test_dicom_with_pixel_spacing_gives_mm(app_and_factory):
    app, _ = app_and_factory
    (a,) = app.run_detection(upload_value=v8(("slice.dcm", dicom_bytes(spacing=(0.5, 0.8)))))
    (d,) = a.report["detections"]
    assert d["area_px"] == 140 and d["area_mm2"] == pytest.approx(140 * 0.4)
    assert d["extent_mm"] == {"height": pytest.approx(5.0), "width": pytest.approx(11.2)}
    text = _html(app.results)
    assert "Alan (mm²)" in text and "56.0" in text and "5.0 × 11.2" in text


def test_model_loads_once_lazily_with_a_visible_state(app_and_factory):
    app, made = app_and_factory
    value = v8(("scan.png", png_bytes([(10, 20, 30, 60, 240)])))
    app.run_detection(upload_value=value)
    app.run_detection(upload_value=v8(("other.png", png_bytes([(5, 5, 25, 25, 250)]))))
    assert len(made) == 1 and made[0][1].load_calls == 1 and made[0][1].detect_calls == 2
    assert "Model yükleniyor" in made[0][1].status_seen_while_loading
    assert made[0][0] == app.checkpoint.value


def test_language_switch_relabels_everything(app_and_factory):
    app, _ = app_and_factory
    assert app.button.description == "Tümör Tespiti" and "BEYİN TÜMÖRÜ KARAR DESTEK SİSTEMİ" in app.title.value
    app.run_detection(upload_value=v8(("clean.png", png_bytes()), ("bad.jpg", b"xx")))
    app.lang_toggle.value = "en"
    assert app.button.description == TEXT["en"]["detect"] == "Detect Tumor"
    assert "BRAIN TUMOR DECISION SUPPORT SYSTEM" in app.title.value
    assert app.threshold.description == "Confidence threshold" and app.upload.description == "Upload image"
    text = _html(app.results)
    assert "No tumor found" in text and "threshold 0.60" in text and "Could not process the file" in text
    assert "Tümör bulunamadı" not in text
    assert "files processed" in app.status.value or "file(s) processed" in app.status.value
    assert "research tool, not a medical device" in app.footer.value and "tıbbi cihaz değildir" in app.footer.value
    app.set_language("tr")
    assert app.lang_toggle.value == "tr" and "Tümör bulunamadı" in _html(app.results)


def test_downloads_are_the_overlay_png_and_the_json_report(app_and_factory):
    app, _ = app_and_factory
    (a,) = app.run_detection(upload_value=v8(("my scan.png", png_bytes([(10, 20, 30, 60, 240)]))))
    text = _html(app.results)
    png = re.search(r'download="my_scan_overlay.png" href="data:image/png;base64,([^"]+)"', text)
    js = re.search(r'download="my_scan.json" href="data:application/json;base64,([^"]+)"', text)
    assert png and js
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(png.group(1))))), a.overlay)
    assert json.loads(base64.b64decode(js.group(1))) == json.loads(json.dumps(a.report))


def test_file_names_are_escaped(app_and_factory):
    app, _ = app_and_factory
    app.run_detection(upload_value=v8(("<img src=x onerror=alert(1)>.jpg", b"not an image")))
    text = _html(app.results)
    assert "<img src=x" not in text and "&lt;img src=x" in text


def test_no_checkpoint_explains_how_to_get_one(tmp_path):
    calls = []
    app = build_app(logs_dir=tmp_path / "empty", predictor_factory=lambda p: calls.append(p),
                    checkpoint_finder=lambda logs: [])
    assert "braintumor train --config mrcnn_config/resnet101.toml" in app.status.value and "models/" in app.status.value
    assert app.run_detection(upload_value=v8(("a.png", png_bytes()))) == []
    assert calls == [] and "quick.toml" in app.status.value


def test_a_broken_checkpoint_is_reported_and_the_app_recovers(ckpt):
    attempts = []

    def factory(path):
        attempts.append(path)
        if len(attempts) == 1:
            raise OSError("unable to open file (truncated file)\nsecond line")
        return BlobPredictor()

    app = build_app(logs_dir=ckpt.parent.parent, predictor_factory=factory, checkpoint_finder=lambda logs: [ckpt])
    value = v8(("scan.png", png_bytes([(10, 20, 30, 60, 240)])))
    assert app.run_detection(upload_value=value) == []
    assert "Model yüklenemedi: unable to open file (truncated file)" in app.status.value
    assert "second line" not in app.status.value and not app.button.disabled
    (a,) = app.run_detection(upload_value=value)
    assert a.report["tumor_found"] and len(attempts) == 2


def test_default_checkpoints_come_from_the_logs_folder(tmp_path):
    old = tmp_path / "tumor20240101T0000"
    new = tmp_path / "tumor20240301T0000"
    for run, epochs in ((old, (1,)), (new, (1, 2))):
        run.mkdir()
        Config({"DETECTION_MIN_CONFIDENCE": 0.75}).save(run / "config.toml")
        for e in epochs:
            (run / f"mask_rcnn_tumor_{e:04d}.h5").write_bytes(b"")
    app = build_app(logs_dir=tmp_path, predictor_factory=lambda p: BlobPredictor())
    assert [v for _, v in app.checkpoint.options] == [str(new / "mask_rcnn_tumor_0002.h5"),
                                                     str(new / "mask_rcnn_tumor_0001.h5"),
                                                     str(old / "mask_rcnn_tumor_0001.h5")]
    assert app.checkpoint.value == str(new / "mask_rcnn_tumor_0002.h5")
    assert app.threshold.value == pytest.approx(0.75)


def test_default_factory_uses_load_predictor_with_a_low_floor(tmp_path, monkeypatch):
    """Without a factory the app calls inference.load_predictor once, with the slider's floor as the model's floor."""
    import braintumor.inference as inference
    from braintumor.paths import resolve_preset
    from braintumor.ui import THRESHOLD_FLOOR

    outside = tmp_path / "drive" / "mask_rcnn_tumor_0015.h5"  # e.g. the 2022 .h5, no config.toml beside it
    outside.parent.mkdir()
    outside.write_bytes(b"")
    calls = []

    def load_predictor(weights, config=None, logs="logs", min_confidence=None, precision=None):
        calls.append((weights, config, Path(logs), min_confidence))
        return BlobPredictor()

    monkeypatch.setattr(inference, "load_predictor", load_predictor)
    preset = resolve_preset("quick")
    app = build_app(logs_dir=tmp_path / "logs", weights=outside, config=preset)
    assert app.checkpoint.value == str(outside)
    assert app.threshold.value == pytest.approx(Config.from_toml(preset).DETECTION_MIN_CONFIDENCE)
    for _ in range(2):
        (a,) = app.run_detection(upload_value=v8(("scan.png", png_bytes([(10, 20, 30, 60, 240)]))))
        assert a.report["tumor_found"]
    assert calls == [(str(outside), preset, tmp_path / "logs", THRESHOLD_FLOOR)]


def test_refresh_finds_new_checkpoints_and_keeps_the_choice(ckpt):
    found = []
    app = build_app(logs_dir=ckpt.parent.parent, predictor_factory=lambda p: BlobPredictor(),
                    checkpoint_finder=lambda logs: list(found))
    assert app.checkpoint.options == () and "quick.toml" in app.status.value
    found.append(ckpt)
    app.refresh_button.click()
    assert app.checkpoint.value == str(ckpt) and app.threshold.value == pytest.approx(0.6)
    assert "quick.toml" not in app.status.value
    app.threshold.value = 0.8
    newer = ckpt.parent / "mask_rcnn_tumor_0004.h5"
    found.insert(0, newer)
    app.refresh_checkpoints()
    assert [v for _, v in app.checkpoint.options] == [str(newer), str(ckpt)]
    assert app.checkpoint.value == str(ckpt) and app.threshold.value == pytest.approx(0.8), "the user's choice stays"


def test_big_images_are_shown_smaller_but_downloaded_full_size(app_and_factory):
    app, _ = app_and_factory
    from braintumor.ui import DISPLAY_MAX_SIDE

    content = png_bytes([(100, 200, 400, 600, 240)], shape=(1500, 3000))
    (a,) = app.run_detection(upload_value=v8(("big.png", content)))
    (pair,) = _images(app.results)
    assert pair.shape[1] == 2 * DISPLAY_MAX_SIDE + 8 and pair.shape[0] < 1500
    assert a.overlay.shape == (1500, 3000, 3) and a.report["detections"][0]["area_px"] == 300 * 400
    png = re.search(r'href="data:image/png;base64,([^"]+)"', _html(app.results)).group(1)
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(png)))).shape == (1500, 3000, 3)


def test_the_slider_never_raises_a_models_operating_point():
    from braintumor.ui import slider_threshold

    assert slider_threshold(0.49622516334056854) == 0.496  # the release's: down, never up to 0.497 or 0.50
    assert slider_threshold(0.3) == 0.3 and slider_threshold(0.7) == 0.7  # values on the grid stay
    assert slider_threshold(0.4999) == 0.499


def test_the_image_level_head_turns_verdicts_orange_never_green(ckpt):
    """A predictor with an image-level head: its "features" are the image's mean grey, and the
    head says "tumor" above grey 60. A bright scan with nothing outlined is "suspected", a weak
    blob on a dark scan is "uncertain"; neither shows the green "no tumor"."""
    from braintumor.image_score import ImageScore

    class HeadPredictor(BlobPredictor):
        image_score = ImageScore(mean=np.array([60.0]), scale=np.array([1.0]), weights=np.array([1.0]), bias=0.0,
                                 threshold=0.5, confident_detection=0.95)

        def detect(self, images):
            return [{**r, "image_features": np.array([im.mean()], np.float32)}
                    for r, im in zip(super().detect(images), images)]

    app = build_app(logs_dir=ckpt.parent.parent, predictor_factory=lambda p: HeadPredictor(),
                    checkpoint_finder=lambda logs: [ckpt], lang="en")
    bright_nothing = np.full((80, 100, 3), 100, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(bright_nothing).save(buf, format="PNG")
    cases = {"suspected.png": (buf.getvalue(), "bt-suspected", "Tumor suspected: no region outlined"),
             "weak.png": (png_bytes([(10, 20, 20, 30, 180)]), "bt-uncertain", "Uncertain: 1 weak finding"),
             "clean.png": (png_bytes(), "bt-no-tumor", "No tumor found")}
    analyses = app.run_detection(upload_value=v8(*((n, c) for n, (c, _, _) in cases.items())))
    assert [a.report["verdict"] for a in analyses] == ["suspected", "uncertain", "no_tumor"]
    for result, (name, (_, css, words)) in zip(app.results.children, cases.items()):
        text = _html(result)
        assert name in text and css in text and words in text and "image-level score" in text, text
        assert ("bt-no-tumor" in text) == (name == "clean.png"), "green only when both see nothing"
