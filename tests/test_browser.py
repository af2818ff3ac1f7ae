"""``braintumor app`` end to end in headless Chromium, plus fast checks of how the server is started.

The browser test builds a tiny untrained checkpoint (it proves the flow, not
accuracy: the result may be tumors or "Tümör bulunamadı"), serves the app with
Voila on a free localhost port, uploads an image, presses **Tümör Tespiti**,
waits for the result picture and saves a screenshot to
``tests/artifacts/browser_result.png``; then uploads a text file named .jpg and
expects the one-line error while the good file in the same batch still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fakes import write_dicom
from PIL import Image

import braintumor.app as app_mod
from braintumor.errors import BrainTumorError

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "tests" / "artifacts"

TINY_CHECKPOINT = r"""
import sys
from pathlib import Path
from braintumor.config import Config
from braintumor.mrcnn import MaskRCNN

logs = Path(sys.argv[1])
cfg = Config({"NAME": "tiny", "BACKBONE": "resnet50", "IMAGE_MIN_DIM": 128, "IMAGE_MAX_DIM": 128,
              "RPN_ANCHOR_SCALES": [8, 16, 32, 64, 128], "TOP_DOWN_PYRAMID_SIZE": 32,
              "FPN_CLASSIF_FC_LAYERS_SIZE": 64, "PRE_NMS_LIMIT": 200, "POST_NMS_ROIS_INFERENCE": 50,
              "POST_NMS_ROIS_TRAINING": 100, "TRAIN_ROIS_PER_IMAGE": 32, "DETECTION_MAX_INSTANCES": 5,
              "DETECTION_MIN_CONFIDENCE": 0.3})
run = logs / "tiny20240101T0000"
run.mkdir(parents=True)
cfg.save(run / "config.toml")
MaskRCNN(mode="inference", config=cfg, model_dir=logs).save_weights(run / "mask_rcnn_tiny_0001.h5")
"""


# ----------------------------------------------------------------------------- fast: how the server starts
def test_voila_command_binds_localhost_and_takes_big_uploads(tmp_path):
    cmd = app_mod.voila_command(Path("nb.ipynb"), 9123, "127.0.0.1", tmp_path, open_browser=False)
    assert cmd[:4] == [sys.executable, "-m", "voila", "nb.ipynb"]
    assert "--port=9123" in cmd and "--Voila.ip=127.0.0.1" in cmd and "--no-browser" in cmd
    assert "--Voila.port_retries=0" in cmd, "a busy port must fail, not silently move"
    assert f"--Voila.config_file_paths={tmp_path}" in cmd
    assert "--no-browser" not in app_mod.voila_command(Path("nb.ipynb"), 1, "127.0.0.1", tmp_path, open_browser=True)
    settings = app_mod.voila_config()["Voila"]["tornado_settings"]
    assert settings["websocket_max_message_size"] >= 50 * 2**20  # tornado's default is 10 MiB


def test_voila_reads_the_generated_config(tmp_path):
    """The option names and the config file are the ones Voila 0.5 understands."""
    from voila.app import Voila

    (tmp_path / "voila.json").write_text(json.dumps(app_mod.voila_config()))
    v = Voila()
    cmd = app_mod.voila_command(app_mod.APP_NOTEBOOK, 9124, "127.0.0.1", tmp_path, open_browser=False)
    v.parse_command_line(cmd[3:])
    v.load_config_file("voila", path=v.config_file_paths)
    assert v.ip == "127.0.0.1" and v.port == 9124 and v.port_retries == 0 and v.open_browser is False
    assert v.tornado_settings["websocket_max_message_size"] == app_mod.MAX_UPLOAD_BYTES


def test_environment_passes_logs_and_project_root(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = app_mod.app_environment(tmp_path / "logs")
    assert env["BRAINTUMOR_LOGS"] == str(tmp_path / "logs") and env["BRAINTUMOR_ROOT"] == str(ROOT)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"]


def test_cli_app_runs_voila_with_the_logs_folder(tmp_path, monkeypatch):
    seen = {}

    class FakePopen:
        def __init__(self, cmd, cwd=None, env=None):
            seen.update(cmd=cmd, cwd=cwd, env=env)
            config_dir = next(c for c in cmd if c.startswith("--Voila.config_file_paths=")).split("=", 1)[1]
            seen["config"] = json.loads((Path(config_dir) / "voila.json").read_text())

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(app_mod.subprocess, "Popen", FakePopen)
    args = SimpleNamespace(port=8999, host="127.0.0.1", logs=str(tmp_path / "L"), no_browser=True, ensure_weights=False)
    assert app_mod.cli_app(args) == 0
    assert seen["cmd"][3] == str(ROOT / "notebooks" / "app.ipynb") and "--port=8999" in seen["cmd"]
    assert seen["env"]["BRAINTUMOR_LOGS"] == str((tmp_path / "L").resolve())
    assert seen["config"]["Voila"]["tornado_settings"]["websocket_max_message_size"] == app_mod.MAX_UPLOAD_BYTES
    with pytest.raises(BrainTumorError, match="--port"):
        app_mod.cli_app(SimpleNamespace(**{**vars(args), "port": 70000}))


def test_ensure_weights_never_trains_and_says_what_is_missing(tmp_path, monkeypatch, capsys):
    import braintumor.inference as inference

    monkeypatch.setattr(app_mod.subprocess, "call", lambda *a, **k: pytest.fail("--ensure-weights must not train"))
    monkeypatch.setenv("BRAINTUMOR_MODELS", str(tmp_path / "models"))
    monkeypatch.setattr(inference, "find_checkpoints", lambda logs: [])
    assert app_mod.ensure_weights(tmp_path / "logs") is False
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert "No released model in" in line and str(tmp_path / "models") in line and "no checkpoint" in line
    monkeypatch.setattr(inference, "find_checkpoints", lambda logs: [Path(logs) / "q20240101T0000" / "mask_rcnn_q_0001.h5"])
    assert app_mod.ensure_weights(tmp_path / "logs") is False
    assert "lists the 1 checkpoint(s)" in capsys.readouterr().out
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tumor-resnet101-0123abcd.h5").write_bytes(b"x")
    assert app_mod.ensure_weights(tmp_path / "logs") is True and capsys.readouterr().out == ""


# ----------------------------------------------------------------------------- slow: the real thing
def _require_browser():
    why = None
    if not Path(CHROMIUM).exists():
        why = f"{CHROMIUM} not found (apt-get install chromium chromium-driver)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            why = "playwright is not installed (pip install playwright)"
    if why:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why}, and CI=true requires the browser test")
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


@pytest.fixture(scope="module")
def tiny_logs(tmp_path_factory):
    _require_browser()
    logs = tmp_path_factory.mktemp("browser") / "logs"
    done = subprocess.run([sys.executable, "-c", TINY_CHECKPOINT, str(logs)], cwd=ROOT, env=_child_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"building the tiny checkpoint failed:\n{done.stderr[-3000:]}"
    return logs


@contextlib.contextmanager
def _serving(logs: Path, env: dict, *extra: str):
    """``braintumor app`` on a free localhost port with ``logs``, until the block ends; fails with its log."""
    port = _free_port()
    log_path = logs.parent / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "braintumor", "app", "--port", str(port), "--no-browser",
                                 "--logs", str(logs), *extra], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"braintumor app exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"braintumor app did not answer on {url}:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield SimpleNamespace(url=url, log=log_path)
    finally:
        if proc.poll() is None:
            proc.terminate()  # braintumor app stops Voila, which shuts its kernels down
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def server(tiny_logs):
    # a module-scoped server starts before conftest's per-test empty $BRAINTUMOR_MODELS: give it
    # its own, so the app serves the tiny checkpoint and not the repository's release
    models = tiny_logs.parent / "no_release"
    models.mkdir(exist_ok=True)
    with _serving(tiny_logs, {**_child_env(), "BRAINTUMOR_MODELS": str(models)}) as served:
        yield served


def _scan(path: Path) -> Path:
    """A synthetic 256x256 'axial slice': grey head, darker brain, one bright blob."""
    yy, xx = np.mgrid[:256, :256]
    img = np.zeros((256, 256), np.uint8)
    img[(yy - 128) ** 2 / 110**2 + (xx - 128) ** 2 / 90**2 <= 1] = 170
    img[(yy - 128) ** 2 / 100**2 + (xx - 128) ** 2 / 80**2 <= 1] = 90
    img[(yy - 100) ** 2 + (xx - 150) ** 2 <= 18**2] = 235
    Image.fromarray(img).convert("RGB").save(path)
    return path


def _big_dicom(path: Path, side: int = 3072) -> Path:
    """A 16-bit MR slice of ``side`` x ``side`` pixels (3072: 18.9 MB, above tornado's 10 MiB message limit)."""
    small = np.asarray(Image.open(_scan(path.with_suffix(".png"))).convert("L"), np.uint16) * 8
    px = np.repeat(np.repeat(small, side // 256, axis=0), side // 256, axis=1)
    return write_dicom(path, px, spacing=(0.08, 0.08))


def _open_app(p, url):
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(url, timeout=180_000)
    page.wait_for_selector(".bt-detect", timeout=180_000)
    return browser, page


def _upload(page, files, count):
    # ipywidgets 8 keeps its <input type=file> out of the page: go through the file chooser
    with page.expect_file_chooser() as chooser:
        page.click(".bt-upload")
    chooser.value.set_files([str(f) for f in files])
    page.wait_for_selector(f".bt-upload:has-text('({count})')", timeout=60_000)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_big_dicom_upload_goes_through(server, tmp_path):
    from playwright.sync_api import sync_playwright

    big = _big_dicom(tmp_path / "big.dcm")
    assert big.stat().st_size > 10 * 2**20
    with sync_playwright() as p:
        browser, page = _open_app(p, server.url)
        try:
            _upload(page, [big], 1)
            page.click(".bt-detect")
            page.wait_for_selector(".bt-status:has-text('1 dosya işlendi (0 hatalı)')", timeout=600_000)
            result = page.inner_text(".bt-result")
            assert "big.dcm" in result and "eşik 0.30" in result
            if "tümör bulundu" in result:
                assert "Alan (mm²)" in result, "DICOM PixelSpacing gives areas in mm²"
            else:
                assert "Demo model: karar yok" in result and "Tümör bulunamadı" not in result
        finally:
            browser.close()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_upload_detect_and_bad_file_in_the_browser(server, tmp_path):
    from playwright.sync_api import sync_playwright

    scan = _scan(tmp_path / "scan.png")
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image, just text\n")
    with sync_playwright() as p:
        browser, page = _open_app(p, server.url)
        try:
            assert "BEYİN TÜMÖRÜ KARAR DESTEK SİSTEMİ" in page.inner_text(".bt-app")
            assert "tiny20240101T0000/mask_rcnn_tiny_0001.h5" in page.inner_text(".bt-app select")

            _upload(page, [scan], 1)
            page.click(".bt-detect")
            page.wait_for_function(
                "() => { const i = document.querySelector('img.bt-result-image');"
                " return i && i.complete && i.naturalWidth > 0; }", timeout=600_000)
            width = page.evaluate("document.querySelector('img.bt-result-image').naturalWidth")
            assert width == 2 * 256 + 8, "original and overlay side by side"
            result = page.inner_text(".bt-result")
            assert "scan.png" in result and "eşik 0.30" in result  # the tiny run's DETECTION_MIN_CONFIDENCE
            assert "Demo model" in page.inner_text(".bt-app"), "an untrained checkpoint is labelled a demo model"
            assert "Tümör bulunamadı" not in result
            assert ("tümör bulundu" in result) != ("Demo model: karar yok" in result)
            if "tümör bulundu" in result:
                assert page.locator(".bt-stats").count() == 1 and "Güven" in result
            assert page.locator(".bt-downloads a[download='scan_overlay.png']").count() == 1
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser_result.png"), full_page=True)

            # a text file renamed .jpg next to a good image: one line for it, the image still runs
            _upload(page, [bad, scan], 2)
            page.click(".bt-detect")
            page.wait_for_selector(".bt-error", timeout=300_000)
            page.wait_for_selector(".bt-status:has-text('2 dosya işlendi (1 hatalı)')", timeout=300_000)
            error = page.inner_text(".bt-error")
            assert "notes.jpg" in error and "not an image" in error and "Dosya işlenemedi" in error
            assert page.locator("img.bt-result-image").count() == 1

            page.click("text=EN")
            page.wait_for_selector(".bt-detect:has-text('Detect Tumor')", timeout=30_000)
            page.wait_for_selector(".bt-error:has-text('Could not process the file')", timeout=30_000)
            page.wait_for_selector(".bt-result:has-text('threshold 0.30')", timeout=30_000)
        finally:
            browser.close()
    assert "127.0.0.1" in server.log.read_text()


# ----------------------------------------------------------------------------- slow: the released model on a real scan
VAL_300 = ROOT.parent / "shared" / "data" / "brain_tumor_data" / "val" / "300.jpg"


@pytest.fixture(scope="module")
def release_server(tmp_path_factory):
    """``braintumor app`` as ``make app`` starts it on a fresh clone: the repository's released model, empty logs/."""
    from braintumor.release import find_releases

    _require_browser()
    models = ROOT / "models"
    if not find_releases(models):
        if os.environ.get("CI", "").lower() == "true" and (ROOT / "models").is_dir():
            pytest.fail("models/ holds no released model, and CI=true requires the app to start with one")
        pytest.skip("no released model in models/ yet")
    logs = tmp_path_factory.mktemp("fresh") / "logs"
    logs.mkdir()
    with _serving(logs, {**_child_env(), "BRAINTUMOR_MODELS": str(models)}, "--ensure-weights") as served:
        yield served


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_released_model_outlines_the_tumor_of_val_300(release_server):
    """Issue 13's user story: a fresh clone, no logs, no --weights; val 300.jpg (a ~5 cm enhancing
    tumor) must come back with a tumor outlined, never the green "Tümör bulunamadı"."""
    from playwright.sync_api import sync_playwright

    if not VAL_300.is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{VAL_300} not found, and CI=true requires it")
        pytest.skip(f"{VAL_300} not available")
    with sync_playwright() as p:
        browser, page = _open_app(p, release_server.url)
        try:
            app_text = page.inner_text(".bt-app")
            options = page.inner_text(".bt-app select").replace("\xa0", " ")  # spaces come as no-break spaces
            assert options.startswith("Yayımlanan model: "), options  # first in the list, the release
            assert "Demo model" not in app_text, "the released model is not a demo model"
            _upload(page, [VAL_300], 1)
            page.click(".bt-detect")
            page.wait_for_function(
                "() => { const i = document.querySelector('img.bt-result-image');"
                " return i && i.complete && i.naturalWidth > 0; }", timeout=600_000)
            result = page.inner_text(".bt-result")
            assert "300.jpg" in result and "tümör bulundu" in result, result
            assert "Tümör bulunamadı" not in result
            assert page.locator(".bt-stats").count() == 1 and "Güven" in result
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser_release_300.png"), full_page=True)
        finally:
            browser.close()
