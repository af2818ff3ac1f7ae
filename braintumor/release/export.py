"""``braintumor export`` and ``braintumor model-card``: a training checkpoint becomes the release."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from braintumor.errors import BrainTumorError
from braintumor.release.card import (_fmt, build_card, headline_val, read_metrics, render_card_markdown, run_summary,
                                     update_readme)
from braintumor.release.equivalence import EQUIVALENCE_FLOOR, EQUIVALENCE_IMAGES, compare_records, records_for, val_samples
from braintumor.release.files import (DEFAULT_ENCODING, ENCODINGS, card_path, default_release, find_releases, is_release,
                                      models_dir, release_files, sha256_file)
from braintumor.release.storage import load_release_weights, open_release, write_release

# =============================================================================== export
DICE_TOLERANCE = 0.005  # val Dice differences this small are a tie (61 images)
SPECIFICITY_TOLERANCE = 0.01  # about 2 of the 204 held-out tumor-free slices


def val_figures(val: dict | None) -> tuple[float | None, float | None]:
    """``(Dice, specificity)`` of a card's ``val`` summary: the specificity is the image-level
    rule's when the release has one, else that of the detection operating point."""
    val = val or {}
    rule, op = val.get("image_rule") or {}, val.get("operating_point") or {}
    spec = rule.get("specificity") if rule.get("specificity") is not None else op.get("specificity")
    return val.get("dice_mean"), spec


def figshare_val_dice(summaries) -> float | None:
    """Dice of the first evaluation by tumor type (a Figshare val set: ``by_category`` set) among card
    ``val`` summaries (:func:`braintumor.release.card.metrics_summary`); None when there is none."""
    for s in summaries or ():
        if isinstance(s, dict) and s.get("by_category") and s.get("dice_mean") is not None:
            return s["dice_mean"]
    return None


def better_on_val(new: tuple, old: tuple) -> bool:
    """A release is better when one of its val figures improves beyond its tolerance and none gets
    worse beyond it: ``(Dice, specificity[, Figshare val Dice])`` tuples, None when unknown (left out)."""
    gains, losses = [], []
    for n, o, tol in zip(new, old, (DICE_TOLERANCE, SPECIFICITY_TOLERANCE, DICE_TOLERANCE)):
        if n is None or o is None:
            continue
        gains.append(n > o + tol)
        losses.append(n < o - tol)
    return any(gains) and not any(losses)


def _existing_val(head: Path) -> tuple[float | None, float | None, float | None]:
    """``(Dice, specificity, Figshare val Dice)`` of a release's card (None where it has none)."""
    try:
        card = json.loads(card_path(head).read_text(encoding="utf-8"))
        return (*val_figures(card.get("val")), figshare_val_dice(card.get("evaluations")))
    except (OSError, ValueError, AttributeError):
        return None, None, None


def export(weights: str | os.PathLike, out: str | os.PathLike | None = None, metrics: Sequence[str] = (),
           threshold: float | None = None, encoding: str = DEFAULT_ENCODING, replace: bool = False,
           config: str | None = None, data: str | None = None, command: str | None = None,
           name: str | None = None, readme: str | None = None, force: bool = False,
           equivalence_images: int = EQUIVALENCE_IMAGES, image_score: str | os.PathLike | None = None,
           flagged_threshold: float | None = None, mask_threshold: float | None = None,
           region_score: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
           region_weight: float | None = None,
           log=print) -> dict[str, Any]:
    """Write a release from a float32 training checkpoint; returns the card (also written beside it).

    weights: a checkpoint path (or ``last``) with its run's config.toml beside it, or a release: the
    same weights released again with new thresholds and figures (its card's ``training`` section, run
    config and image-level head carry over; the card records the release it came from);
    out: models folder (default :func:`models_dir`); metrics: metrics.json files of
    ``braintumor evaluate`` (val figures for the card); threshold: the operating point
    (default the run's DETECTION_MIN_CONFIDENCE); data: dataset folder whose first
    ``equivalence_images`` val images are run through the float32 checkpoint and the
    release (recorded in the card; skipped when the folder is missing). An existing
    release is replaced only with ``replace``; a release that is not equivalent to
    its checkpoint is removed again unless ``force``. image_score: a JSON file of a fitted
    :class:`braintumor.image_score.ImageScore`, embedded in the release. flagged_threshold:
    ``DETECTION_FLAGGED_MIN_CONFIDENCE`` of the release (default the run's; 0 turns it off).
    mask_threshold: ``DETECTION_MASK_THRESHOLD`` of the release (default the run's). region_score: a
    file of ``braintumor fit-region-score`` (:mod:`braintumor.region_score`), or a list of them (read as one:
    :class:`braintumor.region_score.RegionScoreSet`), embedded in the release (a
    release released again keeps its own unless another is given); the metrics given must then come from
    ``evaluate --region-score`` with it.
    """
    import time

    from braintumor.inference import config_for_checkpoint, resolve_weights
    from braintumor.mrcnn import MaskRCNN
    from braintumor.paths import resolve_data_dir

    t_start = time.perf_counter()
    if encoding not in ENCODINGS:
        raise BrainTumorError(f"--encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    image_score_text = None
    if image_score is not None:
        from braintumor.image_score import load_image_score

        load_image_score(image_score)  # refuses a bad file in one line
        image_score_text = Path(image_score).read_text(encoding="utf-8")
    ckpt = resolve_weights(weights)
    source = open_release(ckpt) if is_release(ckpt) else None  # verified: a release released again
    from braintumor.region_score import chosen

    # a bad file is refused in one line; a release released again keeps its own scorer
    scorer = chosen(region_score, region_weight,
                    source.region_score() if source is not None and region_score is None else None)
    cfg = config_for_checkpoint(ckpt, config)
    # A released model answers the same on every machine: float32 inference, whatever the run
    # trained with (PRECISION = "mixed_bfloat16" only where the CPU has bfloat16).
    training_precision = cfg.PRECISION
    if source is not None:
        training_precision = (source.card.get("architecture") or {}).get("training_precision") or training_precision
        if image_score_text is None:
            image_score_text = source.meta.get("image_score.json") or None
        run_cfg_text = source.meta.get("run_config.toml", "")
    else:
        run_cfg_path = Path(config) if config else ckpt.parent / "config.toml"
        run_cfg_text = run_cfg_path.read_text(encoding="utf-8") if run_cfg_path.is_file() else ""
    cfg = cfg.replace(PRECISION="float32")
    if flagged_threshold is not None:
        if not 0.0 <= flagged_threshold <= 1.0:
            raise BrainTumorError(f"--flagged-threshold must be in [0, 1], got {flagged_threshold}")
        cfg = cfg.replace(DETECTION_FLAGGED_MIN_CONFIDENCE=float(flagged_threshold))
    if mask_threshold is not None:  # the config refuses a value outside [0.05, 0.95] in one line
        cfg = cfg.replace(DETECTION_MASK_THRESHOLD=float(mask_threshold))
    if cfg.DETECTION_FLAGGED_MIN_CONFIDENCE and image_score_text is None:
        raise BrainTumorError("DETECTION_FLAGGED_MIN_CONFIDENCE needs an image-level head (--image-score): "
                              "it applies to the images the head flags")
    summaries = read_metrics(metrics)
    if threshold is None and summaries and summaries[0].get("threshold_from") == "operating point":
        threshold = summaries[0]["threshold"]  # evaluate --at-operating-point chose it on val
        log(f"threshold {threshold:.4f}: the operating point of {summaries[0]['file']}")
    t = float(cfg.DETECTION_MIN_CONFIDENCE if threshold is None else threshold)
    if not 0.0 < t <= 1.0:
        raise BrainTumorError(f"--threshold must be in (0, 1], got {t}")
    for s in summaries:
        if s.get("threshold") is not None and abs(s["threshold"] - t) > 1e-6:
            log(f"warning: {s['file']} was evaluated at threshold {s['threshold']}, the release's is {t}")
    folder = models_dir(out)
    existing = find_releases(folder)
    replaces = None
    if existing:
        old = existing[0]
        old_dice, old_spec, old_fs = _existing_val(old)
        if not replace:
            raise BrainTumorError(f"{folder}: already holds release {old.name} (val Dice {_fmt(old_dice)}); "
                                  f"pass --replace to replace it")
        new_dice, new_spec = val_figures(headline_val(summaries))
        new_fs = figshare_val_dice(summaries)
        better = better_on_val((new_dice, new_spec, new_fs), (old_dice, old_spec, old_fs))
        replaces = {"file": old.name, "sha256": None, "val_dice": old_dice, "new_val_dice": new_dice,
                    "val_specificity": old_spec, "new_val_specificity": new_spec,
                    "figshare_val_dice": old_fs, "new_figshare_val_dice": new_fs, "better_on_val": better}
        try:
            replaces["sha256"] = json.loads(card_path(old).read_text())["files"][0]["sha256"]
        except (OSError, ValueError, KeyError, IndexError):
            pass
        if not better:
            log(f"warning: the new release is not better on val than {old.name} "
                f"(val Dice {_fmt(new_dice)} vs {_fmt(old_dice)}, specificity {_fmt(new_spec)} vs {_fmt(old_spec)}, "
                f"Figshare val Dice {_fmt(new_fs)} vs {_fmt(old_fs)}); "
                f"replacing it as asked")
    rel_name = name or (source.name if source is not None else f"{cfg.NAME}-{cfg.BACKBONE}".lower())
    if not re.fullmatch(r"[a-z0-9_.]+(-[a-z0-9_.]+)*", rel_name):
        raise BrainTumorError(f"--name must be lower-case letters, digits, '.', '_' and '-', got {rel_name!r}")

    log(f"building the {cfg.BACKBONE} inference model and loading {ckpt} ...")
    model = MaskRCNN("inference", cfg.replace(IMAGES_PER_GPU=1, GPU_COUNT=1, DETECTION_MIN_CONFIDENCE=EQUIVALENCE_FLOOR),
                     model_dir=ckpt.parent.parent)
    report = (load_release_weights(model.keras_model, source) if source is not None
              else model.load_weights(str(ckpt), by_name=True))
    if not report.complete:
        raise BrainTumorError(f"{ckpt}: does not fill the model of its config ({report})")
    samples = []
    data_dir = resolve_data_dir(data)
    if equivalence_images > 0 and (Path(data_dir) / "val").is_dir():
        samples = val_samples(data_dir, equivalence_images, cfg.CLASS_NAMES)
        log(f"float32 detections on {len(samples)} val images of {data_dir} ...")
    elif equivalence_images > 0:
        log(f"warning: {data_dir}/val not found: no equivalence images recorded (pass --data DIR)")
    reference = records_for(model, samples, t)

    if source is not None:
        run = {**(source.card.get("training") or {}),
               "released_before_as": {"file": ckpt.name, "sha256": source.sha256,
                                      "threshold": float(source.config().DETECTION_MIN_CONFIDENCE)}}
    else:
        run = run_summary(ckpt, cfg)
    equivalence = {"threshold": t, "floor": EQUIVALENCE_FLOOR, "data": str(data_dir) if samples else None,
                   "reference": reference, "checked": False}
    card = build_card(name=rel_name, config=cfg, run=run, metrics=summaries, threshold=t, encoding=encoding,
                      command=command, equivalence=equivalence, replaces=replaces,
                      training_precision=training_precision,
                      image_score=json.loads(image_score_text) if image_score_text is not None else None,
                      region_score=scorer)
    embedded_cfg = cfg.replace(DETECTION_MIN_CONFIDENCE=t)
    meta = {"card.json": json.dumps(card, indent=1), "config.toml": embedded_cfg.to_toml(),
            "run_config.toml": run_cfg_text,
            "class_names.json": json.dumps(list(cfg.CLASS_NAMES))}
    if image_score_text is not None:
        meta["image_score.json"] = image_score_text
    t0 = time.perf_counter()
    files = write_release(model.keras_model, folder, rel_name, encoding, meta, region_score=scorer)
    write_seconds = time.perf_counter() - t0
    head = files[0]
    try:
        t0 = time.perf_counter()
        rel = open_release(head)
        load_release_weights(model.keras_model, rel)
        load_seconds = time.perf_counter() - t0
        stats = rel.tensor_stats()
        got = records_for(model, samples, t)
        cmp = compare_records(reference, got) if samples else {"n_images": 0, "equivalent": None}
        equivalence.update(cmp, checked=bool(samples), released=got,
                           max_abs_weight_error=max((s["max_abs_error"] for s in stats.values()), default=0.0))
        if samples and not cmp["equivalent"] and not force:
            raise BrainTumorError(f"{head}: not equivalent to {ckpt.name} on {len(samples)} val images "
                                  f"(decisions identical: {cmp['decisions_identical']}, box diff {cmp['max_box_diff_px']} px, "
                                  f"Dice diff {cmp['max_dice_diff']}); try --encoding float16, or --force")
    except BaseException:
        for p in files:
            p.unlink(missing_ok=True)
        raise
    card["equivalence"] = equivalence
    card["files"] = [{"role": "head" if i == 0 else f"part{i + 1}", "path": f"{folder.name}/{p.name}",
                      "bytes": p.stat().st_size, "sha256": rel.sha256 if i == 0 else sha256_file(p)}
                     for i, p in enumerate(files)]
    card["files"].append({"role": "card", "path": f"{folder.name}/{card_path(head).name}"})
    card["timing_seconds"] = {"write": round(write_seconds, 1), "verify_and_load": round(load_seconds, 1),
                              "export_total": round(time.perf_counter() - t_start, 1)}
    cp = card_path(head)
    tmp = cp.with_name(f".{cp.name}.tmp")
    tmp.write_text(json.dumps(card, indent=1, allow_nan=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, cp)
    for old in existing:
        for p in release_files(old):
            if p not in files and p != cp:
                p.unlink(missing_ok=True)
    if readme:
        update_readme(readme, card)
    return card


def cli_export(args) -> int:
    """``braintumor export --weights RUN.h5 [--out DIR] [--metrics M.json ...] [--threshold X] [--replace] ...``."""
    card = export(args.weights, out=args.out, metrics=args.metrics or (), threshold=args.threshold,
                  encoding=args.encoding, replace=args.replace, config=args.config, data=args.data,
                  command=args.train_command, name=args.name, readme=args.readme, force=args.force,
                  equivalence_images=args.equivalence_images, image_score=getattr(args, "image_score", None),
                  flagged_threshold=getattr(args, "flagged_threshold", None),
                  mask_threshold=getattr(args, "mask_threshold", None),
                  region_score=getattr(args, "region_score", None),
                  region_weight=getattr(args, "region_weight", None))
    for f in card["files"]:
        if "bytes" in f:
            print(f"{f['path']}  {f['bytes']:,} bytes  sha256 {f['sha256']}")
    print(f"{card['files'][-1]['path']}  (model card)")
    eq = card.get("equivalence") or {}
    if eq.get("checked"):
        print(f"equivalence on {eq['n_images']} val images: decisions identical {eq['decisions_identical']}, "
              f"max box diff {eq['max_box_diff_px']} px, max Dice diff {eq['max_dice_diff']}")
    v = card.get("val") or {}
    print(f"val Dice {_fmt(v.get('dice_mean'))}, operating point {card['operating_point']['threshold']}"
          + ("; README updated" if args.readme else ""))
    return 0


def cli_model_card(args) -> int:
    """``braintumor model-card [--release PATH] [--readme README.md]``: print the card, or put it into the README."""
    head = Path(args.release) if args.release else default_release(args.models)
    rel = open_release(head)
    if args.readme:
        update_readme(args.readme, rel.card)
        print(f"{args.readme}: model card of {head.name} written between the markers")
    else:
        print(render_card_markdown(rel.card), end="")
    return 0
