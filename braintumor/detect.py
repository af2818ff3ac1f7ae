"""Per-image analysis shared by ``braintumor detect`` and the decision-support app.

One function, :func:`analyse_image`, turns a detector's output for one image into
what a reader sees: the detections above the threshold, an overlay image and a
JSON-ready report. The CLI (:func:`cli_detect`) and :mod:`braintumor.ui` both use
it, so a file gives the same numbers in the terminal and in the browser.

Report (``<stem>.json``)::

    {"file": "scan.dcm", "image_size": {"height": 512, "width": 512},
     "threshold": 0.7, "outline_threshold": 0.7, "weights": "logs/tumor20240101T1200/mask_rcnn_tumor_0015.h5", "precision": "float32",
     "pixel_spacing_mm": [0.5, 0.5] | null, "verdict": "tumor", "tumor_found": true, "num_tumors": 1,
     "image_score": {"probability": 0.97, "threshold": 0.887, "confident_detection": 0.9,
                     "max_detection_score": 0.97, "flagged": true} | null,
     "detections": [{"class": "tumor", "class_id": 1, "confidence": 0.97,
                     "bbox": [y1, x1, y2, x2], "area_px": 1234, "area_mm2": 308.5 | null,
                     "extent_px": {"height": 40, "width": 38}, "extent_mm": {...} | null,
                     "centroid": [y, x]}]}

The verdict. Without an image-level head (:mod:`braintumor.image_score`; a release may carry
one) a tumor is found when a detection reaches the threshold. With one, the image is *flagged*
when a detection reaches its ``confident_detection`` or its probability reaches its threshold,
and the outlines are the detections at the threshold:

=============  =========================  =============================================
verdict        flagged / outlines         shown as
=============  =========================  =============================================
``tumor``      yes / some                 tumor(s) found, outlined (red)
``suspected``  yes / none                 tumor suspected, no region outlined (orange)
``uncertain``  no / some                  weak finding(s), image score low: review (orange)
``no_tumor``   no / none                  no tumor found (green)
=============  =========================  =============================================

So the green "no tumor found" needs both the detector and the head to see nothing. On a flagged
image, regions count down to the release's ``DETECTION_FLAGGED_MIN_CONFIDENCE`` (when that is
below the threshold): the head is sure enough that the scan holds a tumor, so its best region is
outlined even when it scores below the threshold; the report's ``outline_threshold`` says which bar applied.
``tumor_found`` is true for ``tumor`` and ``suspected``.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from braintumor.errors import BrainTumorError
from braintumor.image_score import verdict as image_verdict
from braintumor.visualize import draw_overlay, instance_stats

NO_TUMOR_TR = "Tümör bulunamadı"
NO_TUMOR_EN = "No tumor found"
SUSPECTED_TR = "Tümör şüphesi: bölge işaretlenemedi"
SUSPECTED_EN = "Tumor suspected, no region outlined"
UNCERTAIN_TR = "Belirsiz: zayıf bulgu, görüntü skoru düşük"
UNCERTAIN_EN = "Uncertain: weak finding, image-level score low"
DEMO_NO_VERDICT = "Demo model: no verdict"


@dataclass
class Analysis:
    """The outcome for one image.

    report: JSON-ready dict (see the module docstring). result: the detections
    kept (``score >= threshold``) in the model's result format, masks ``[H, W, N]``.
    image: the input ``uint8 [H, W, 3]``. overlay: ``uint8 [H, W, 3]`` with the
    kept detections drawn.
    """

    report: dict[str, Any]
    result: dict[str, np.ndarray]
    image: np.ndarray
    overlay: np.ndarray

    @property
    def tumor_found(self) -> bool:
        return bool(self.report["tumor_found"])


def read_input(source: str | os.PathLike | bytes, name: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """An image file's pixels and meta: ``(uint8 [H, W, 3], {"pixel_spacing_mm": (row, col) | None, ...})``.

    ``source`` is a path or the file's bytes (an upload); ``name`` labels errors.
    Raises :class:`BrainTumorError` with one line for anything unreadable.
    """
    from braintumor.imageio import read_image_with_meta

    return read_image_with_meta(source, name=name)


def filter_result(result: dict[str, Any], threshold: float) -> dict[str, np.ndarray]:
    """The detections scoring at least ``threshold``, same format, highest score first."""
    scores = np.asarray(result.get("scores", np.zeros(0)), dtype=np.float32).reshape(-1)
    keep = np.flatnonzero(scores >= threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    rois = np.asarray(result.get("rois", np.zeros((0, 4))), dtype=np.int32).reshape(-1, 4)
    class_ids = np.asarray(result.get("class_ids", np.ones(len(scores))), dtype=np.int32).reshape(-1)
    masks = result.get("masks")
    out = {"rois": rois[keep], "class_ids": class_ids[keep], "scores": scores[keep]}
    for k in ("detector_scores", "region_scores"):  # a region scorer's two parts of each score
        if result.get(k) is not None and len(result[k]) == len(scores):
            out[k] = np.asarray(result[k], dtype=np.float32).reshape(-1)[keep]
    if masks is not None:
        out["masks"] = np.asarray(masks)[:, :, keep].astype(bool, copy=False)
    return out


def image_flag(result: dict[str, Any], image_score) -> dict[str, Any] | None:
    """The image-level rule on one detector ``result``: its report (``flagged``, the head's
    ``probability`` and thresholds), or None without a head (an
    :class:`braintumor.image_score.ImageScore`) or without ``image_features`` in ``result``."""
    scores = np.asarray(result.get("scores", np.zeros(0)), dtype=np.float32).reshape(-1)
    features = result.get("image_features")
    if image_score is None or features is None:
        return None
    best = float(scores.max()) if scores.size else 0.0
    p = float(image_score.probability(np.asarray(features, np.float32)[None])[0])
    flagged = best >= image_score.confident_detection or p >= image_score.threshold  # ImageScore.flags, one image
    return {"probability": round(p, 4), "threshold": round(float(image_score.threshold), 4),
            "confident_detection": round(float(image_score.confident_detection), 4),
            "max_detection_score": round(best, 4), "flagged": flagged}


def outline_threshold(threshold: float, score_report: dict[str, Any] | None, flagged_threshold: float | None) -> float:
    """The score a region needs to be outlined: ``threshold``; on an image the rule flagged
    (``score_report["flagged"]``), ``min(threshold, flagged_threshold)`` (``DETECTION_FLAGGED_MIN_CONFIDENCE``)."""
    if score_report and score_report["flagged"] and flagged_threshold:
        return min(float(threshold), float(flagged_threshold))
    return float(threshold)


def analyse_result(image: np.ndarray, result: dict[str, Any], meta: dict[str, Any] | None, threshold: float,
                   class_names: Sequence[str], name: str = "image", weights: str | os.PathLike | None = None,
                   show_boxes: bool = True, demo: str | None = None, image_score=None,
                   precision: str | None = None, flagged_threshold: float | None = None) -> Analysis:
    """An :class:`Analysis` of one image from the detector's raw ``result`` for it.

    ``demo``: why the model is a demo model (:func:`braintumor.release.demo_reason`), recorded in the
    report as ``demo_model``; its "no tumor" is then no verdict. ``image_score``: the model's
    image-level head (:class:`braintumor.image_score.ImageScore`) or None; see the module docstring.
    ``precision``: what the detector computed in (``float32`` or ``mixed_bfloat16``), recorded as ``precision``.
    ``flagged_threshold``: on an image the head flags, regions are outlined down to it
    (:func:`outline_threshold`); the report's ``outline_threshold`` is the bar that applied.
    """
    meta = meta or {}
    score_report = image_flag(result, image_score)
    bar = outline_threshold(threshold, score_report, flagged_threshold)
    kept = filter_result(result, bar)
    spacing = meta.get("pixel_spacing_mm")
    stats = instance_stats(kept, pixel_spacing_mm=spacing, class_names=class_names)
    if score_report is None:
        verdict = "tumor" if stats else "no_tumor"
    else:
        verdict = image_verdict(score_report["flagged"], bool(stats))
    report = {
        "file": name,
        "image_size": {"height": int(image.shape[0]), "width": int(image.shape[1])},
        "threshold": round(float(threshold), 4),
        "outline_threshold": round(bar, 4),
        "weights": str(weights) if weights is not None else None,
        "precision": precision,
        "pixel_spacing_mm": [float(s) for s in spacing] if spacing is not None else None,
        "verdict": verdict,
        "tumor_found": verdict in ("tumor", "suspected"),
        "num_tumors": len(stats),
        "detections": stats,
        "image_score": score_report,
        "demo_model": demo or None,
    }
    overlay = draw_overlay(image, kept, class_names, show_boxes=show_boxes)
    return Analysis(report=report, result=kept, image=image, overlay=overlay)


def predictor_class_names(predictor) -> list[str]:
    names = getattr(predictor, "class_names", None)
    if not names:
        names = getattr(getattr(predictor, "config", None), "CLASS_NAMES", None) or ["BG", "tumor"]
    return list(names)


def analyse_image(predictor, image: np.ndarray, meta: dict[str, Any] | None, threshold: float,
                  class_names: Sequence[str] | None = None, name: str = "image", demo: str | None = None) -> Analysis:
    """Run ``predictor.detect([image])`` and analyse its result (see :func:`analyse_result`).

    predictor: anything with ``detect(list of uint8 [H, W, 3]) -> list of result dicts``
    (:class:`braintumor.inference.Predictor`). threshold: minimum confidence (0..1).
    """
    result = predictor.detect([image])[0]
    return analyse_result(image, result, meta, threshold,
                          class_names if class_names is not None else predictor_class_names(predictor),
                          name=name, weights=getattr(predictor, "weights_path", None), demo=demo,
                          image_score=getattr(predictor, "image_score", None),
                          precision=getattr(predictor, "precision", None),
                          flagged_threshold=getattr(predictor, "flagged_threshold", None))


def summary_line(report: dict[str, Any]) -> str:
    """``"img.jpg: 2 tumors (0.97, 0.88)"`` or ``"img.jpg: Tümör bulunamadı / No tumor found (threshold 0.85)"``,
    with the image-level score when the model has one."""
    name = report["file"]
    verdict = report.get("verdict") or ("tumor" if report["num_tumors"] else "no_tumor")
    score = report.get("image_score")
    tail = (f"; image score {score['probability']:.2f}, threshold {score['threshold']:.2f}" if score else "")
    scores = ", ".join(f"{d['confidence']:.2f}" for d in report["detections"])
    n = report["num_tumors"]
    if verdict == "no_tumor" and report.get("demo_model"):
        return f"{name}: {DEMO_NO_VERDICT} (nothing at threshold {report['threshold']:.2f})"
    if verdict == "no_tumor":
        return f"{name}: {NO_TUMOR_TR} / {NO_TUMOR_EN} (threshold {report['threshold']:.2f}{tail})"
    if verdict == "suspected":
        bar = report.get("outline_threshold", report["threshold"])
        return f"{name}: {SUSPECTED_TR} / {SUSPECTED_EN} (nothing at threshold {bar:.2f}{tail})"
    if verdict == "uncertain":
        return f"{name}: {UNCERTAIN_TR} / {UNCERTAIN_EN}: {n} region{'s' if n != 1 else ''} ({scores}{tail})"
    return f"{name}: {n} tumor{'s' if n != 1 else ''} ({scores}{tail})"


def encode_png(image: np.ndarray) -> bytes:
    """``uint8 [H, W, 3]`` -> PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def safe_stem(name: str) -> str:
    """A file-name stem safe for any file system: ``"a b/c.dcm"`` -> ``"c"``."""
    stem = Path(str(name).replace("\\", "/")).stem
    stem = re.sub(r"[^\w.\-]+", "_", stem, flags=re.UNICODE).strip("._")
    return stem or "image"


def _unique_stems(paths: Sequence[str]) -> list[str]:
    """One output stem per input; repeated stems (a/x.jpg, b/x.png) get _2, _3, ..."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        s = safe_stem(p)
        k = s.lower()
        seen[k] = seen.get(k, 0) + 1
        out.append(s if seen[k] == 1 else f"{s}_{seen[k]}")
    return out


def cli_detect(args) -> int:
    """``braintumor detect IMAGE... [--weights PATH|last] [--config] [--out DIR] [--min-confidence X] [--logs]``.

    Without ``--weights``: the released model (``models/``).

    Writes ``<stem>_overlay.png`` and ``<stem>.json`` per image into ``--out`` and
    prints one summary line per image. Unreadable inputs get one line on stderr
    and the others continue; the exit status is 1 when any input failed.
    """
    from braintumor import inference

    if args.min_confidence is not None and not 0.0 <= args.min_confidence <= 1.0:
        raise BrainTumorError(f"--min-confidence must be in [0, 1], got {args.min_confidence}")
    predictor = inference.load_predictor(args.weights, config=args.config, logs=args.logs,
                                         min_confidence=args.min_confidence, precision=getattr(args, "precision", None))
    threshold = args.min_confidence if args.min_confidence is not None else float(
        getattr(predictor, "threshold", None) or predictor.config.DETECTION_MIN_CONFIDENCE)
    class_names = predictor_class_names(predictor)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BrainTumorError(f"{out}: cannot create output folder ({e.strerror or e})") from None
    print(f"weights: {predictor.weights_path}  threshold: {threshold:.2f}  precision: "
          f"{getattr(predictor, 'precision', 'float32')}  output: {out}", flush=True)
    demo = getattr(predictor, "demo", None)
    if demo:
        from braintumor.release import DEMO_WARNING

        print(f"warning: {DEMO_WARNING} ({demo}); no 'no tumor' verdicts", file=sys.stderr, flush=True)

    failed = 0
    loaded = False
    for path, stem in zip(args.images, _unique_stems(args.images)):
        name = Path(path).name
        try:
            image, meta = read_input(path, name=str(path))
        except BrainTumorError as e:
            print(str(e), file=sys.stderr, flush=True)
            failed += 1
            continue
        if not loaded and hasattr(predictor, "load"):
            # a broken checkpoint stops the run (error: ..., exit 2) instead of failing every image
            try:
                predictor.load()
            except (OSError, ValueError, KeyError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise BrainTumorError(f"{predictor.weights_path}: cannot load checkpoint ({first})") from None
            loaded = True
        try:
            analysis = analyse_image(predictor, image, meta, threshold, class_names, name=name, demo=demo)
            write_atomic(out / f"{stem}_overlay.png", encode_png(analysis.overlay))
            write_atomic(out / f"{stem}.json", report_json(analysis.report).encode("utf-8"))
        except BrainTumorError as e:
            print(f"{path}: {e}", file=sys.stderr, flush=True)
            failed += 1
            continue
        except OSError as e:
            raise BrainTumorError(f"{out}: cannot write results ({e.strerror or e})") from None
        print(summary_line(analysis.report), flush=True)
    n = len(args.images)
    print(f"{n - failed} of {n} image{'s' if n != 1 else ''} processed; results in {out}"
          + (f"; {failed} failed" if failed else ""), flush=True)
    return 1 if failed else 0
