"""The decision-support app: upload MR images, press **Tümör Tespiti**, see the tumors.

An ipywidgets interface that runs in Jupyter, Colab (ipywidgets 7.x) and Voila
(``braintumor app``)::

    from braintumor.ui import build_app
    build_app(logs_dir="logs").widget

The model is built on the first click (``Model yükleniyor…``) and kept per
checkpoint; uploads are read from their own bytes (never from a path on the
server); each bad file gets one line and the others still run. Turkish by
default, English with the TR/EN switch. The per-image work is
:func:`braintumor.detect.analyse_result`, the same as ``braintumor detect``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import ipywidgets as W
import numpy as np

from braintumor.detect import (Analysis, analyse_result, encode_png, predictor_class_names, read_input,
                               report_json, safe_stem)
from braintumor.errors import BrainTumorError
from braintumor.visualize import side_by_side

ACCEPT = ".jpg,.jpeg,.png,.dcm"
THRESHOLD_FLOOR = 0.05
"""Lowest slider value; the app's predictor keeps detections down to this score so the slider can go below the run's default."""
DEFAULT_THRESHOLD = 0.7
THRESHOLD_STEP = 0.001


def slider_threshold(t: float) -> float:
    """``t`` on the slider's grid (steps of :data:`THRESHOLD_STEP`), rounded **down**: a model's
    operating point (e.g. 0.4962) must never become a higher threshold in the app (0.50), which
    would miss the tumor scans scoring in between; the 1e-9 keeps 0.3 at 0.3."""
    return round(math.floor(float(t) / THRESHOLD_STEP + 1e-9) * THRESHOLD_STEP, 6)
DISPLAY_MAX_SIDE = 1024
"""Longer side, in pixels, of each half of the picture shown in the page (downloads keep full size)."""
_RESULT_CACHE_SIZE = 8

TEXT: dict[str, dict[str, str]] = {
    "tr": {
        "title": "BEYİN TÜMÖRÜ KARAR DESTEK SİSTEMİ",
        "prompt": "Lütfen MR görüntüsünü yükleyiniz (JPEG, PNG veya DICOM; birden fazla dosya seçilebilir) "
                  "ve <b>Tümör Tespiti</b> butonuna basınız.",
        "upload": "Görüntü yükle",
        "colab_note": "Colab'da bu yükleme aracı yaklaşık 1 MB ve daha büyük dosyaları sessizce düşürür "
                      "(ipywidgets#3452); büyük dosyaları (çoğu DICOM kesiti) <b>Colab ile dosya seç</b> "
                      "düğmesiyle ya da Drive'daki yollarını yazarak ekleyiniz.",
        "colab_pick": "Colab ile dosya seç",
        "colab_path": "Dosya yolu",
        "colab_picked": "{n} dosya seçildi: {names}",
        "colab_failed": "Colab dosya seçicisi açılamadı: {msg}",
        "detect": "Tümör Tespiti",
        "threshold": "Güven eşiği",
        "model": "Model",
        "refresh": "Modelleri yenile",
        "loading": "Model yükleniyor… (ilk seferde bir dakika kadar sürebilir)",
        "ready": "Model hazır: {ckpt}",
        "processing": "İşleniyor ({i}/{n}): {name}…",
        "done": "{n} dosya işlendi ({failed} hatalı). Eşik: {t:.3f}",
        "no_files": "Önce bir MR görüntüsü yükleyiniz.",
        "no_ckpt": "Yayımlanmış model (<code>models/</code>) yok ve {logs} klasöründe model ağırlığı (.h5) "
                   "bulunamadı. Projenin kaynak kopyasını yeniden alın (yayımlanmış model onunla gelir) ya da "
                   "<code>braintumor train --config mrcnn_config/resnet101.toml</code> komutuyla eğitin "
                   "(<code>mrcnn_config/quick.toml</code> yalnızca bir demo model verir) veya 2022 projesinin "
                   "yayımlanmış .h5 dosyasını <code>{logs}/&lt;ad&gt;&lt;YYYYMMDDTHHMM&gt;/</code> içine "
                   "<code>config.toml</code> ile birlikte koyup <b>Modelleri yenile</b>'ye basın.",
        "load_failed": "Model yüklenemedi: {msg}",
        "no_tumor": "Tümör bulunamadı",
        "found": "{n} tümör bulundu",
        "suspected": "Tümör şüphesi: bölge işaretlenemedi",
        "uncertain": "Belirsiz: {n} zayıf bulgu, görüntü düzeyi skor düşük; uzman değerlendirmesi gerekir",
        "image_score": "görüntü düzeyi skor {p:.2f} (eşik {t:.2f})",
        "threshold_used": "eşik {t:.3f}",
        "bad_file": "Dosya işlenemedi",
        "original": "Orijinal",  # drawn into the PNG with the built-in font: keep ASCII
        "detection": "Tespit",
        "col_conf": "Güven",
        "col_area": "Alan (piksel)",
        "col_area_mm": "Alan (mm²)",
        "col_extent": "Boyut Y×G (piksel)",
        "col_extent_mm": "Boyut Y×G (mm)",
        "no_spacing": "mm değerleri için piksel aralığı gerekir (DICOM PixelSpacing); bu dosyada yok.",
        "download_png": "Görüntüyü indir (PNG)",
        "download_json": "Raporu indir (JSON)",
        "demo_banner": "Demo model: tarama okumak için eğitilmedi",
        "demo_no_verdict": "Demo model: karar yok",
    },
    "en": {
        "title": "BRAIN TUMOR DECISION SUPPORT SYSTEM",
        "prompt": "Please upload MR images (JPEG, PNG or DICOM; several files can be chosen) "
                  "and press <b>Detect Tumor</b>.",
        "upload": "Upload image",
        "colab_note": "In Colab this upload widget silently drops files of about 1 MB and more (ipywidgets#3452), "
                      "so add large files (most DICOM slices) with <b>Choose files (Colab)</b> or by typing their "
                      "path on Drive.",
        "colab_pick": "Choose files (Colab)",
        "colab_path": "File path",
        "colab_picked": "{n} file(s) chosen: {names}",
        "colab_failed": "Colab's file picker failed: {msg}",
        "detect": "Detect Tumor",
        "threshold": "Confidence threshold",
        "model": "Model",
        "refresh": "Refresh models",
        "loading": "Loading the model… (the first time can take a minute)",
        "ready": "Model ready: {ckpt}",
        "processing": "Processing ({i}/{n}): {name}…",
        "done": "{n} file(s) processed ({failed} failed). Threshold: {t:.3f}",
        "no_files": "Upload an MR image first.",
        "no_ckpt": "No released model (<code>models/</code>) and no model weights (.h5) in {logs}. Get a fresh "
                   "copy of the project (the released model comes with it), or train with "
                   "<code>braintumor train --config mrcnn_config/resnet101.toml</code> "
                   "(<code>mrcnn_config/quick.toml</code> only gives a demo model), or put the 2022 project's "
                   "published .h5 with a <code>config.toml</code> into "
                   "<code>{logs}/&lt;name&gt;&lt;YYYYMMDDTHHMM&gt;/</code> and press <b>Refresh models</b>.",
        "load_failed": "The model could not be loaded: {msg}",
        "no_tumor": "No tumor found",
        "found": "{n} tumor(s) found",
        "suspected": "Tumor suspected: no region outlined",
        "uncertain": "Uncertain: {n} weak finding(s), image-level score low; needs review",
        "image_score": "image-level score {p:.2f} (threshold {t:.2f})",
        "threshold_used": "threshold {t:.3f}",
        "bad_file": "Could not process the file",
        "original": "Original",
        "detection": "Detection",
        "col_conf": "Confidence",
        "col_area": "Area (px)",
        "col_area_mm": "Area (mm²)",
        "col_extent": "Extent H×W (px)",
        "col_extent_mm": "Extent H×W (mm)",
        "no_spacing": "mm values need the pixel spacing (DICOM PixelSpacing); this file has none.",
        "download_png": "Download image (PNG)",
        "download_json": "Download report (JSON)",
        "demo_banner": "Demo model: not trained for reading scans",
        "demo_no_verdict": "Demo model: no verdict",
    },
}
FOOTER = ("Bu yazılım bir araştırma aracıdır, tıbbi cihaz değildir; tanı için kullanılamaz. "
          "Sonuçlar uzman hekim tarafından değerlendirilmelidir.<br>"
          "This software is a research tool, not a medical device; it must not be used for diagnosis. "
          "Results must be reviewed by a qualified physician.")


# ----------------------------------------------------------------------------- uploads
@dataclass
class UploadedFile:
    """One uploaded file: its name (a label only, never opened as a path) and its bytes."""

    name: str
    content: bytes
    type: str = ""
    error: str | None = None
    """Why the file could not be read (a path that does not exist); shown instead of a result."""


def normalise_upload(value: Any) -> list[UploadedFile]:
    """``FileUpload.value`` of ipywidgets 7.x or 8.x -> ``[UploadedFile, ...]`` in upload order.

    7.x: ``{name: {"content": bytes, "metadata": {"name", "type", "size", ...}}}``.
    8.x: ``({"name", "type", "size", "last_modified", "content": memoryview}, ...)``.
    """
    if not value:
        return []
    if isinstance(value, dict):
        items = []
        for key, entry in value.items():
            entry = dict(entry or {})
            meta = dict(entry.get("metadata") or {})
            items.append({"name": meta.get("name") or entry.get("name") or key,
                          "type": meta.get("type") or entry.get("type") or "", "content": entry.get("content")})
    else:
        items = [dict(e) for e in value]
    files = []
    for e in items:
        content = e.get("content")
        if content is None:
            content = b""
        elif not isinstance(content, bytes):
            content = bytes(content)  # memoryview / bytearray
        name = os.path.basename(str(e.get("name") or "upload").replace("\\", "/")) or "upload"
        files.append(UploadedFile(name=name, content=content, type=str(e.get("type") or "")))
    return files


# ----------------------------------------------------------------------------- Colab
def running_in_colab() -> bool:
    """True in a Google Colab runtime (see :func:`braintumor.colab.in_colab`); tests monkeypatch this."""
    from braintumor.colab import in_colab

    return in_colab()


def colab_upload() -> dict[str, bytes]:
    """Colab's own file picker (``google.colab.files.upload``): ``{name: bytes}``, any size."""
    from google.colab import files

    return files.upload()


def read_paths(text: str) -> list[UploadedFile]:
    """The files named in ``text`` (one path per line or comma-separated), read from the runtime's disk."""
    out = []
    for raw in text.replace(",", "\n").splitlines():
        p = raw.strip().strip('"').strip("'")
        if not p:
            continue
        path = Path(p).expanduser()
        try:
            out.append(UploadedFile(name=path.name, content=path.read_bytes()))
        except FileNotFoundError:
            out.append(UploadedFile(name=path.name or p, content=b"", error=f"{p}: no such file"))
        except IsADirectoryError:
            out.append(UploadedFile(name=path.name or p, content=b"", error=f"{p}: is a folder, not an image file"))
        except OSError as e:
            out.append(UploadedFile(name=path.name or p, content=b"", error=f"{p}: cannot read ({e.strerror or e})"))
    return out


# ----------------------------------------------------------------------------- helpers
def _default_finder(logs_dir):
    """The released model (``models/``, see :mod:`braintumor.release`), then the checkpoints under ``logs_dir``."""
    from braintumor.inference import find_checkpoints
    from braintumor.release import find_releases

    return find_releases() + find_checkpoints(logs_dir)


def _demo_reason(ckpt: str | os.PathLike, config: str | os.PathLike | None = None) -> str | None:
    """Why ``ckpt`` is a demo model (:func:`braintumor.release.demo_reason`), or None."""
    from braintumor.release import demo_reason

    try:
        return demo_reason(ckpt, config)
    except Exception as e:  # an unreadable run folder: better a demo banner than a confident verdict
        return f"cannot tell how long it trained ({_one_line(e)})"


def _default_threshold(ckpt: str | os.PathLike, config: str | os.PathLike | None = None) -> float:
    """The run's operating point: DETECTION_MIN_CONFIDENCE of ``config`` or of the config.toml beside the checkpoint
    (a release's calibrated one when it computes in bfloat16 here, :func:`braintumor.inference.operating_point`)."""
    try:
        from braintumor.inference import operating_point

        return operating_point(Path(ckpt), config)
    except Exception:
        return DEFAULT_THRESHOLD


def _fit(image: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """``image`` shrunk (area-averaged) so that its longer side is at most ``max_side`` pixels."""
    from braintumor.imageio import shrink_to

    return shrink_to(image, max_side)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _one_line(msg: str) -> str:
    first = str(msg).strip().splitlines()
    return first[0] if first else ""


@dataclass
class _Record:
    """What was shown for one uploaded file (kept to redraw after a language switch)."""

    name: str
    analysis: Analysis | None = None
    error: str | None = None


class TumorApp:
    """The widget app. ``widget`` is the top-level ``VBox``; ``run_detection()`` is the button's action.

    weights: an extra checkpoint shown first in the list (e.g. an .h5 outside ``logs_dir``);
    config: a preset used for every checkpoint instead of the ``config.toml`` beside it
    (needed for a checkpoint without one). predictor_factory: ``factory(checkpoint_path: str) -> predictor`` with
    ``detect(list of uint8 [H, W, 3]) -> list of result dicts`` (and optionally
    ``load()``, ``loaded``, ``class_names``, ``weights_path``); default
    :func:`braintumor.inference.load_predictor` with the detection floor at
    :data:`THRESHOLD_FLOOR`. checkpoint_finder: ``finder(logs_dir) -> [Path]``
    newest first; default :func:`braintumor.inference.find_checkpoints`.
    """

    def __init__(self, logs_dir: str | os.PathLike = "logs", predictor_factory: Callable[[str], Any] | None = None,
                 lang: str = "tr", checkpoint_finder: Callable[[Any], Sequence[Path]] | None = None,
                 weights: str | os.PathLike | None = None, config: str | os.PathLike | None = None):
        self.logs_dir = Path(logs_dir)
        self.config = config
        if predictor_factory is None:
            def predictor_factory(path, _logs=self.logs_dir, _config=config):
                from braintumor.inference import load_predictor

                return load_predictor(path, config=_config, logs=_logs, min_confidence=THRESHOLD_FLOOR)
        self.predictor_factory = predictor_factory
        self.checkpoint_finder = checkpoint_finder or _default_finder
        self.extra_checkpoints = [Path(weights)] if weights not in (None, "", "last") else []
        self.lang = lang if lang in TEXT else "tr"
        self._predictors: dict[str, Any] = {}
        self._results: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self._records: list[_Record] = []
        self._status: tuple[str, dict, str] | None = None
        self._busy = False
        self._refreshing = False
        self._demo: dict[str, str | None] = {}

        self.title = W.HTML()
        self.lang_toggle = W.ToggleButtons(options=[("TR", "tr"), ("EN", "en")], value=self.lang,
                                           style={"button_width": "48px"})
        self.prompt = W.HTML()
        self.banner = W.HTML()
        self.banner.add_class("bt-banner")
        self.upload = W.FileUpload(accept=ACCEPT, multiple=True, layout=W.Layout(width="auto"))
        # Colab: FileUpload drops files of about 1 MB and more (ipywidgets#3452): its own picker and a path field
        self.in_colab = running_in_colab()
        self._picked: list[UploadedFile] = []
        self.colab_note = W.HTML()
        self.colab_pick = W.Button(icon="upload", layout=W.Layout(width="auto"))
        self.colab_path = W.Text(placeholder="/content/drive/MyDrive/scan.dcm", layout=W.Layout(width="420px"),
                                 style={"description_width": "initial"})
        self.colab_picked = W.HTML()
        self.colab_pick.on_click(lambda _b: self.pick_colab_files())
        self.colab_box = W.VBox([self.colab_note, W.HBox([self.colab_pick, self.colab_path],
                                                         layout=W.Layout(align_items="center", flex_flow="row wrap")),
                                 self.colab_picked] if self.in_colab else [])
        self.colab_box.add_class("bt-colab-upload")
        self.checkpoint = W.Dropdown(options=[], layout=W.Layout(width="auto", min_width="360px"))
        self.refresh_button = W.Button(icon="refresh", layout=W.Layout(width="auto"))
        self.threshold = W.FloatSlider(value=DEFAULT_THRESHOLD, min=THRESHOLD_FLOOR, max=0.99, step=THRESHOLD_STEP,
                                       readout_format=".3f", continuous_update=False,
                                       style={"description_width": "initial"}, layout=W.Layout(width="420px"))
        self.button = W.Button(button_style="primary", icon="search",
                                layout=W.Layout(width="200px", height="40px", margin="2px 0 2px 12px"))
        self.status = W.HTML()
        self.results = W.VBox()
        self.footer = W.HTML()
        for w, cls in ((self.button, "bt-detect"), (self.status, "bt-status"), (self.results, "bt-results"),
                       (self.upload, "bt-upload"), (self.footer, "bt-footer")):
            w.add_class(cls)

        self.button.on_click(lambda _b: self.run_detection())
        self.refresh_button.on_click(lambda _b: self.refresh_checkpoints())
        self.lang_toggle.observe(lambda ch: self.set_language(ch["new"]), names="value")
        self.checkpoint.observe(self._on_checkpoint, names="value")

        self.widget = W.VBox([
            W.HBox([self.title, self.lang_toggle], layout=W.Layout(justify_content="space-between", align_items="center")),
            self.prompt,
            self.banner,
            W.HBox([self.upload, self.button], layout=W.Layout(align_items="center", flex_flow="row wrap")),
            self.colab_box,
            W.HBox([self.checkpoint, self.refresh_button], layout=W.Layout(align_items="center", flex_flow="row wrap")),
            self.threshold,
            self.status,
            self.results,
            self.footer,
        ], layout=W.Layout(max_width="1200px", padding="8px"))
        self.widget.add_class("bt-app")
        self._relabel()
        self.refresh_checkpoints()

    # ------------------------------------------------------------------ text
    def t(self, key: str, **kw) -> str:
        return TEXT[self.lang][key].format(**kw)

    def _set_status(self, key: str | None, level: str = "info", **kw) -> None:
        self._status = (key, kw, level) if key else None
        self._render_status()

    def _render_status(self) -> None:
        if not self._status:
            self.status.value = ""
            return
        key, kw, level = self._status
        color = {"info": "#1f4e79", "ok": "#1b5e20", "warn": "#8a5300", "error": "#b00020"}[level]
        self.status.value = f'<div style="color:{color};padding:4px 0">{self.t(key, **kw)}</div>'

    def _relabel(self) -> None:
        self.title.value = f'<h2 style="margin:4px 0">{html.escape(self.t("title"))}</h2>'
        self.prompt.value = f"<p>{self.t('prompt')}</p>"
        self.upload.description = self.t("upload")
        self.colab_note.value = f'<div style="color:#8a5300;font-size:13px">{self.t("colab_note")}</div>'
        self.colab_pick.description = self.t("colab_pick")
        self.colab_path.description = self.t("colab_path")
        self._show_picked()
        self.button.description = self.t("detect")
        self.button.tooltip = self.t("detect")
        self.threshold.description = self.t("threshold")
        self.checkpoint.description = self.t("model")
        self.refresh_button.description = self.t("refresh")
        self.footer.value = f'<hr><div style="color:#666;font-size:12px">{FOOTER}</div>'

    def set_language(self, lang: str) -> None:
        """Relabel everything (including results already shown) in ``"tr"`` or ``"en"``."""
        if lang not in TEXT:
            raise ValueError(f"language must be one of {sorted(TEXT)}, got {lang!r}")
        self.lang = lang
        if self.lang_toggle.value != lang:
            self.lang_toggle.value = lang  # observer calls back here; harmless
        self._relabel()
        self._render_status()
        self.refresh_checkpoints()  # relabels the released model's entry
        self._render_banner()
        self.results.children = tuple(self._render_record(r) for r in self._records)

    # ------------------------------------------------------------------ checkpoints
    def refresh_checkpoints(self) -> list[Path]:
        """Re-scan ``logs_dir``; the current choice stays selected if still there, else the newest."""
        try:
            found = [Path(p) for p in self.checkpoint_finder(self.logs_dir)]
        except Exception:
            found = []
        from braintumor.release import named_like_release, release_label

        releases = [p for p in found if named_like_release(p)]
        found = releases + self.extra_checkpoints + [p for p in found if p not in self.extra_checkpoints + releases]
        options = []
        for p in found:
            if p in releases:
                label = release_label(p, self.lang)
            else:
                label = f"{p.parent.name}/{p.name}" if p.parent.name else p.name
            options.append((label, str(p)))
        current = previous = self.checkpoint.value
        if current is None and self.extra_checkpoints:  # first fill: the weights asked for are preselected
            current = str(self.extra_checkpoints[0]) if str(self.extra_checkpoints[0]) in (v for _, v in options) else None
        self._refreshing = True  # setting options moves the value on the way: no slider reset for that
        try:
            self.checkpoint.options = options
            keep = current if current in (v for _, v in options) else (options[0][1] if options else None)
            if options:
                self.checkpoint.value = keep
        finally:
            self._refreshing = False
        if options:
            if keep != previous:
                self._on_checkpoint({"new": keep})
            if self._status and self._status[0] == "no_ckpt":
                self._set_status(None)
        else:
            self._set_status("no_ckpt", "warn", logs=html.escape(str(self.logs_dir)))
        self._render_banner()
        return found

    def demo_reason(self, ckpt: str | None = None) -> str | None:
        """Why the checkpoint ``ckpt`` (default: the selected one) is a demo model, or None (cached)."""
        ckpt = ckpt or self.checkpoint.value
        if not ckpt:
            return None
        if ckpt not in self._demo:
            pred = self._predictors.get(ckpt)
            self._demo[ckpt] = pred.demo if hasattr(pred, "demo") else _demo_reason(ckpt, self.config)
        return self._demo[ckpt]

    def _render_banner(self) -> None:
        reason = self.demo_reason()
        if not reason:
            self.banner.value = ""
            return
        self.banner.value = (f'<div class="bt-demo-banner" style="background:#b00020;color:#fff;padding:6px 10px;'
                             f'margin:4px 0;font-weight:bold">⚠ {html.escape(self.t("demo_banner"))}'
                             f'<span style="font-weight:normal;font-size:12px"> ({html.escape(reason)})</span></div>')

    def _on_checkpoint(self, change) -> None:
        if change.get("new") and not self._refreshing:
            t = slider_threshold(_default_threshold(change["new"], self.config))
            self.threshold.value = min(max(t, self.threshold.min), self.threshold.max)
            self._render_banner()

    def _predictor_for(self, ckpt: str):
        """The predictor of ``ckpt``, built and loaded on first use (status shows it), then cached."""
        pred = self._predictors.get(ckpt)
        if pred is not None and getattr(pred, "loaded", True):
            return pred
        self._set_status("loading")
        if pred is None:
            pred = self.predictor_factory(ckpt)
        if callable(getattr(pred, "load", None)) and not getattr(pred, "loaded", False):
            pred.load()
        self._predictors[ckpt] = pred
        bf16 = " · bfloat16" if getattr(pred, "precision", "float32") == "mixed_bfloat16" else ""
        self._set_status("ready", "ok", ckpt=html.escape(Path(ckpt).name) + bf16)
        return pred

    # ------------------------------------------------------------------ Colab uploads
    def pick_colab_files(self, picker: Callable[[], dict] | None = None) -> list[UploadedFile]:
        """Colab: choose files with Colab's own picker (``picker``: default :func:`colab_upload`); they
        replace the files chosen this way before and are analysed with the widget's on the next click."""
        try:
            chosen = (picker or colab_upload)() or {}
        except Exception as e:  # no Colab, or the picker was cancelled
            self._set_status("colab_failed", "error", msg=html.escape(_one_line(e) or type(e).__name__))
            return []
        self._picked = [UploadedFile(name=os.path.basename(str(n)) or "upload", content=bytes(c))
                        for n, c in chosen.items()]
        self._show_picked()
        return self._picked

    def _show_picked(self) -> None:
        names = ", ".join(html.escape(f.name) for f in self._picked)
        self.colab_picked.value = (f'<div style="font-size:13px">{self.t("colab_picked", n=len(self._picked), names=names)}</div>'
                                   if self._picked else "")

    # ------------------------------------------------------------------ detection
    def run_detection(self, upload_value: Any = None) -> list[Analysis | None]:
        """Analyse every uploaded file (``upload_value``: default the FileUpload's value, 7.x or 8.x shape).

        Returns one :class:`Analysis` per file (None for a file that failed);
        the results area shows each as soon as it is done.
        """
        if self._busy:
            return []
        files = normalise_upload(self.upload.value if upload_value is None else upload_value)
        if upload_value is None and self.in_colab:
            files += self._picked + read_paths(self.colab_path.value)
        if not files:
            self._set_status("no_files", "warn")
            return []
        ckpt = self.checkpoint.value
        if not ckpt:
            self.refresh_checkpoints()
            ckpt = self.checkpoint.value
            if not ckpt:
                return []
        threshold = float(self.threshold.value)
        self._busy = True
        self.button.disabled = True
        try:
            try:
                predictor = self._predictor_for(ckpt)
            except Exception as e:  # broken checkpoint, missing config: one line, the app stays usable
                self._set_status("load_failed", "error", msg=html.escape(_one_line(e) or type(e).__name__))
                return []
            class_names = predictor_class_names(predictor)
            self._records = []
            self.results.children = ()
            out: list[Analysis | None] = []
            for i, f in enumerate(files, 1):
                self._set_status("processing", i=i, n=len(files), name=html.escape(f.name))
                record = self._process(predictor, ckpt, f, threshold, class_names)
                self._records.append(record)
                out.append(record.analysis)
                self.results.children = (*self.results.children, self._render_record(record))
            failed = sum(r.error is not None for r in self._records)
            self._set_status("done", "error" if failed == len(files) else "ok", n=len(files), failed=failed, t=threshold)
            return out
        finally:
            self._busy = False
            self.button.disabled = False

    def _process(self, predictor, ckpt: str, f: UploadedFile, threshold: float, class_names) -> _Record:
        if f.error:
            return _Record(name=f.name, error=f.error)
        try:
            key = (ckpt, hashlib.sha1(f.content).hexdigest())
            cached = self._results.get(key)
            if cached is None:
                image, meta = read_input(f.content, name=f.name)
                raw = predictor.detect([image])[0]
                cached = {"image": image, "meta": meta, "raw": raw}
                self._results[key] = cached
                while len(self._results) > _RESULT_CACHE_SIZE:
                    self._results.popitem(last=False)
            else:
                self._results.move_to_end(key)
            analysis = analyse_result(cached["image"], cached["raw"], cached["meta"], threshold, class_names,
                                      name=f.name, weights=getattr(predictor, "weights_path", ckpt),
                                      demo=self.demo_reason(ckpt),
                                      image_score=getattr(predictor, "image_score", None),
                                      precision=getattr(predictor, "precision", None),
                                      flagged_threshold=getattr(predictor, "flagged_threshold", None))
            return _Record(name=f.name, analysis=analysis)
        except BrainTumorError as e:
            return _Record(name=f.name, error=_one_line(e))
        except MemoryError:
            return _Record(name=f.name, error=f"{f.name}: image too large for the available memory")
        except Exception as e:  # an unexpected failure on one file must not stop the others
            return _Record(name=f.name, error=f"{f.name}: {type(e).__name__}: {_one_line(e)}")

    # ------------------------------------------------------------------ rendering
    def _render_record(self, r: _Record) -> W.Widget:
        name = html.escape(r.name)
        if r.error is not None:
            msg = html.escape(r.error)
            box = W.HTML(f'<div style="color:#b00020;padding:4px 0">⚠ <b>{self.t("bad_file")}</b>: {msg}</div>')
            box.add_class("bt-error")
            return box
        a = r.analysis
        rep = a.report
        t_used = self.t("threshold_used", t=rep.get("outline_threshold", rep["threshold"]))  # the bar that applied
        score = rep.get("image_score")
        if score:
            t_used += ", " + self.t("image_score", p=score["probability"], t=score["threshold"])
        kind = rep.get("verdict") or ("tumor" if rep["num_tumors"] else "no_tumor")
        orange = 'style="color:#e65100;font-weight:bold"'
        if kind == "tumor":
            verdict = (f'<span class="bt-found" style="color:#b00020;font-weight:bold">'
                       f'{self.t("found", n=rep["num_tumors"])}</span>')
        elif kind == "suspected":
            verdict = f'<span class="bt-suspected" {orange}>⚠ {self.t("suspected")}</span>'
        elif kind == "uncertain":
            verdict = f'<span class="bt-uncertain" {orange}>⚠ {self.t("uncertain", n=rep["num_tumors"])}</span>'
        elif rep.get("demo_model"):  # a demo model never says "no tumor"
            verdict = (f'<span class="bt-demo-no-verdict" style="color:#b00020;font-weight:bold">'
                       f'{self.t("demo_no_verdict")}</span>')
        else:
            verdict = f'<span class="bt-no-tumor" style="color:#1b5e20;font-weight:bold">{self.t("no_tumor")}</span>'
        header = W.HTML(f'<h3 style="margin:12px 0 4px 0">{name}</h3><div>{verdict} ({t_used})</div>')
        pair = side_by_side(_fit(a.image), _fit(a.overlay), titles=(self.t("original"), self.t("detection")))
        image = W.Image(value=encode_png(pair), format="png",
                        layout=W.Layout(width=f"{pair.shape[1]}px", max_width="100%", height="auto"))
        image.add_class("bt-result-image")
        parts: list[W.Widget] = [header, image]
        if rep["num_tumors"]:
            parts.append(W.HTML(self._stats_table(rep)))
        stem = safe_stem(r.name)
        png_link = (f'<a download="{html.escape(stem)}_overlay.png" '
                    f'href="{_data_uri(encode_png(a.overlay), "image/png")}">{self.t("download_png")}</a>')
        json_link = (f'<a download="{html.escape(stem)}.json" '
                     f'href="{_data_uri(report_json(rep).encode("utf-8"), "application/json")}">'
                     f'{self.t("download_json")}</a>')
        parts.append(W.HTML(f'<div class="bt-downloads">⬇ {png_link} &nbsp;·&nbsp; {json_link}</div>'))
        box = W.VBox(parts, layout=W.Layout(border="1px solid #ddd", padding="6px", margin="6px 0"))
        box.add_class("bt-result")
        return box

    def _stats_table(self, rep: dict) -> str:
        has_mm = rep["pixel_spacing_mm"] is not None
        cols = ["#", self.t("col_conf"), self.t("col_area")]
        if has_mm:
            cols.append(self.t("col_area_mm"))
        cols.append(self.t("col_extent"))
        if has_mm:
            cols.append(self.t("col_extent_mm"))
        td = 'style="border:1px solid #ccc;padding:2px 8px;text-align:right"'
        rows = ["<tr>" + "".join(f'<th {td}>{html.escape(c)}</th>' for c in cols) + "</tr>"]
        for i, d in enumerate(rep["detections"], 1):
            cells = [str(i), f'{d["confidence"]:.2f}', f'{d["area_px"]}']
            if has_mm:
                cells.append(f'{d["area_mm2"]:.1f}')
            cells.append(f'{d["extent_px"]["height"]} × {d["extent_px"]["width"]}')
            if has_mm:
                cells.append(f'{d["extent_mm"]["height"]:.1f} × {d["extent_mm"]["width"]:.1f}')
            rows.append("<tr>" + "".join(f"<td {td}>{c}</td>" for c in cells) + "</tr>")
        note = "" if has_mm else f'<div style="color:#666;font-size:12px">{self.t("no_spacing")}</div>'
        return f'<table class="bt-stats" style="border-collapse:collapse;margin:4px 0">{"".join(rows)}</table>{note}'


def build_app(logs_dir: str | os.PathLike = "logs", predictor_factory: Callable[[str], Any] | None = None,
              lang: str = "tr", checkpoint_finder: Callable[[Any], Sequence[Path]] | None = None,
              weights: str | os.PathLike | None = None, config: str | os.PathLike | None = None) -> TumorApp:
    """The app over the checkpoints in ``logs_dir`` (plus ``weights``); show it with ``build_app().widget``.

    See :class:`TumorApp` for the arguments.
    """
    return TumorApp(logs_dir=logs_dir, predictor_factory=predictor_factory, lang=lang,
                    checkpoint_finder=checkpoint_finder, weights=weights, config=config)
