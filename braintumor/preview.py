"""``braintumor data preview``: training samples as a run draws them, augmented, with their outlines.

The samples come from the preset's sources in the order of a run's first pass (its per-source
shares, :func:`braintumor.mrcnn.inputs.sample_indices`), go through the preset's augmentation
(``[AUGMENTATION]`` and ``[COPY_PASTE]``) and the resize to the network's input
(:func:`braintumor.mrcnn.inputs.load_image_gt`), and are drawn as one contact sheet: each tile the
image the network sees, its tumors outlined (yellow; a pasted tumor red), its source and file name.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from braintumor.errors import BrainTumorError

TILE = 256  # pixels per tile side
COLUMNS = 4


def preview_samples(config, data_dir: Path, n: int, seed: int = 0,
                    source_overrides: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """``n`` training samples of ``config``'s data: ``[{image uint8 [S, S, 3], masks bool [S, S, N], source,
    name, pasted}]`` (``S`` the network's input side; ``pasted``: a copy-paste tumor is the last instance)."""
    from braintumor.augment import build_augmentation
    from braintumor.copy_paste import build_copy_paste
    from braintumor.mrcnn.inputs import load_image_gt, sample_indices
    from braintumor.train import load_training_data

    train, _, _ = load_training_data(config, data_dir, source_overrides)
    if not len(train):
        raise BrainTumorError(f"{data_dir}: no training images for preset {config.NAME!r}")
    augmenter = build_augmentation(config.AUGMENTATION, seed=seed) if config.AUGMENTATION else None
    augmenter = build_copy_paste(config.COPY_PASTE, train, augmenter)
    out = []
    for k, i in zip(range(n), sample_indices(train, seed)):
        before = getattr(augmenter, "pasted", 0)
        image, _, _, _, masks = load_image_gt(train, config, i, augmenter, np.random.default_rng([seed, k]))
        info = train.image_info[i]
        out.append({"image": image, "masks": masks, "source": info.get("source") or "train", "name": info["name"],
                    "pasted": getattr(augmenter, "pasted", 0) > before and masks.shape[2] > 0})
    return out


def contact_sheet(samples: list[dict[str, Any]], tile: int = TILE, columns: int = COLUMNS) -> np.ndarray:
    """The samples as one ``uint8 [rows * tile, columns * tile, 3]`` image (see the module docstring)."""
    from PIL import Image, ImageDraw
    from skimage.segmentation import find_boundaries

    rows = max(1, -(-len(samples) // columns))
    sheet = np.zeros((rows * tile, columns * tile, 3), np.uint8)
    for k, s in enumerate(samples):
        img = s["image"].copy()
        m = s["masks"]
        for j in range(m.shape[2]):
            pasted = s["pasted"] and j == m.shape[2] - 1
            edge = find_boundaries(m[:, :, j], mode="thick")
            img[edge] = (255, 40, 40) if pasted else (255, 230, 0)
        t = Image.fromarray(img).resize((tile, tile), Image.BILINEAR)
        ImageDraw.Draw(t).text((4, 3), f"{s['source']}{' + pasted' if s['pasted'] else ''}\n{s['name']}",
                               fill=(255, 255, 255))
        r, c = divmod(k, columns)
        sheet[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = np.asarray(t)
    return sheet


def cli_preview(args) -> int:
    from PIL import Image

    from braintumor.config import Config
    from braintumor.paths import resolve_data_dir, resolve_preset
    from braintumor.train import source_overrides

    if args.n < 1:
        raise BrainTumorError(f"--n must be at least 1, got {args.n}")
    config = Config.from_toml(resolve_preset(args.config))
    data_dir = resolve_data_dir(args.data)
    if not data_dir.is_dir():
        raise BrainTumorError(f"{data_dir}: dataset folder not found (run: braintumor fetch-data, or pass --data)")
    samples = preview_samples(config, data_dir, args.n, args.seed, source_overrides(args.source, config))
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp.png")
        Image.fromarray(contact_sheet(samples)).save(tmp)
        tmp.replace(out)
    except OSError as e:
        raise BrainTumorError(f"{out}: cannot write the preview ({e.strerror or e})") from None
    by_source = Counter(s["source"] for s in samples)
    print(f"wrote {out}: {len(samples)} samples ({', '.join(f'{k} {v}' for k, v in sorted(by_source.items()))}), "
          f"{sum(s['pasted'] for s in samples)} with a pasted tumor")
    return 0
