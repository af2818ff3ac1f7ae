"""From images and datasets to network inputs, and from detections back to images.

- :func:`resize_image` / :func:`resize_masks`: sizing per ``IMAGE_RESIZE_MODE``
  (``square``: scale so the long side is at most ``IMAGE_MAX_DIM`` and the short
  side at least ``IMAGE_MIN_DIM``, pad to ``MAX x MAX``; ``pad64``: same scaling,
  pad each side to a multiple of 64; ``crop``: scale up to ``IMAGE_MIN_DIM``, then
  a ``MIN x MIN`` crop (random in training, centred otherwise); ``none``: as is).
- :func:`mold_image`: ``(uint8 RGB - MEAN_PIXEL) / PIXEL_STD`` float32.
- :func:`compose_image_meta` / :func:`parse_image_meta`: the per-image vector
  ``[image_id, orig_h, orig_w, orig_c, mold_h, mold_w, mold_c, window (y1, x1, y2, x2) px, scale, active classes...]``.
- :func:`load_image_gt` / :func:`build_training_sample`: one training example
  (image, meta, RPN targets, padded GT class ids / normalized boxes / masks).
- :func:`make_tf_dataset`: an endless, seeded ``tf.data`` pipeline over a Dataset.
- :func:`unmold_detections`: network output -> result dict at the original size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from braintumor.boxes import masks_to_boxes, norm_boxes, denorm_boxes
from braintumor.errors import BrainTumorError
from braintumor.imageio import as_rgb_uint8
from braintumor.mrcnn.anchors import get_anchors
from braintumor.mrcnn.targets import build_rpn_targets


@dataclass
class ResizeInfo:
    """How an original image maps onto the molded one.

    window: ``(y1, x1, y2, x2)`` pixels of the molded image holding the picture;
    scale: resize factor; padding: ``[(top, bottom), (left, right), (0, 0)]``;
    crop: ``(y, x, h, w)`` of the scaled image kept (``crop`` mode) or None.
    """

    window: tuple
    scale: float
    padding: list
    crop: tuple | None
    original_shape: tuple
    molded_shape: tuple


def _resize_uint8(image, h, w):
    if image.shape[:2] == (h, w):
        return image
    chans = [np.asarray(Image.fromarray(image[:, :, c]).resize((w, h), Image.BILINEAR)) for c in range(image.shape[2])]
    return np.stack(chans, axis=-1)


def _resize_float(m, h, w):
    return np.asarray(Image.fromarray(m.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))


def resize_image(image, config, rng=None, train=False):
    """Resize and pad ``image`` ``[H, W, C]`` uint8 per the config. Returns ``(image, ResizeInfo)``."""
    mode = config.IMAGE_RESIZE_MODE
    min_dim, max_dim, min_scale = config.IMAGE_MIN_DIM, config.IMAGE_MAX_DIM, config.IMAGE_MIN_SCALE
    h, w = image.shape[:2]
    original = image.shape
    scale = 1.0
    if mode != "none":
        scale = max(1.0, min_dim / min(h, w))
        if min_scale and scale < min_scale:
            scale = float(min_scale)
        if mode in ("square", "pad64") and round(max(h, w) * scale) > max_dim:
            scale = max_dim / max(h, w)
    if scale != 1.0:
        image = _resize_uint8(image, int(round(h * scale)), int(round(w * scale)))
    h, w = image.shape[:2]
    crop = None
    if mode == "square":
        top = (max_dim - h) // 2
        left = (max_dim - w) // 2
        padding = [(top, max_dim - h - top), (left, max_dim - w - left), (0, 0)]
    elif mode == "pad64":
        ph = (-h) % 64
        pw = (-w) % 64
        padding = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)]
    elif mode == "crop":
        if train and rng is not None:
            y = int(rng.integers(0, h - min_dim + 1))
            x = int(rng.integers(0, w - min_dim + 1))
        else:
            y, x = (h - min_dim) // 2, (w - min_dim) // 2
        crop = (y, x, min_dim, min_dim)
        image = image[y:y + min_dim, x:x + min_dim]
        padding = [(0, 0), (0, 0), (0, 0)]
    else:
        if h % 64 or w % 64:
            raise BrainTumorError(f"IMAGE_RESIZE_MODE 'none' needs image sides divisible by 64, got {h}x{w}")
        padding = [(0, 0), (0, 0), (0, 0)]
    image = np.pad(image, padding[: image.ndim], mode="constant")
    hh, ww = image.shape[:2]
    window = (padding[0][0], padding[1][0], hh - padding[0][1], ww - padding[1][1])
    return image, ResizeInfo(window, scale, padding, crop, tuple(original), tuple(image.shape))


def resize_masks(masks, info: ResizeInfo):
    """Apply ``info`` (from :func:`resize_image`) to masks ``[H, W, N]`` bool -> molded ``[h, w, N]`` bool."""
    h, w = masks.shape[:2]
    nh, nw = int(round(h * info.scale)), int(round(w * info.scale))
    out = np.zeros((nh, nw, masks.shape[2]), bool)
    for i in range(masks.shape[2]):
        m = masks[:, :, i]
        out[:, :, i] = m if (nh, nw) == (h, w) else _resize_float(m, nh, nw) >= 0.5
    if info.crop is not None:
        y, x, ch, cw = info.crop
        out = out[y:y + ch, x:x + cw]
    return np.pad(out, info.padding[:2] + [(0, 0)], mode="constant")


def mold_image(image, config) -> np.ndarray:
    """``uint8 [..., C]`` -> float32 ``(image - MEAN_PIXEL) / PIXEL_STD``."""
    return ((image.astype(np.float32) - np.asarray(config.MEAN_PIXEL, np.float32))
            / np.asarray(config.PIXEL_STD, np.float32))


def compose_image_meta(image_id, original_shape, molded_shape, window, scale, num_classes) -> np.ndarray:
    """The meta vector ``[IMAGE_META_SIZE]`` float32 (see module docstring)."""
    return np.array([image_id, *original_shape[:3], *molded_shape[:3], *window, scale]
                    + [1.0] * num_classes, dtype=np.float32)


def parse_image_meta(meta) -> dict:
    """``[B, META]`` -> dict of arrays (``image_id``, ``original_image_shape``, ``image_shape``, ``window``, ``scale``, ``active_class_ids``)."""
    meta = np.asarray(meta)
    return {"image_id": meta[:, 0].astype(np.int32), "original_image_shape": meta[:, 1:4].astype(np.int32),
            "image_shape": meta[:, 4:7].astype(np.int32), "window": meta[:, 7:11].astype(np.int32),
            "scale": meta[:, 11], "active_class_ids": meta[:, 12:]}


def minimize_masks(boxes, masks, mini_shape) -> np.ndarray:
    """Crop each mask ``[H, W, N]`` to its pixel box and resize to ``mini_shape``: ``[N, mh, mw]`` float32 0/1."""
    out = np.zeros((masks.shape[2],) + tuple(mini_shape), np.float32)
    for i in range(masks.shape[2]):
        y1, x1, y2, x2 = boxes[i]
        crop = masks[y1:y2, x1:x2, i].astype(np.float32)
        if crop.size:
            out[i] = _resize_float(crop, mini_shape[0], mini_shape[1]) >= 0.5
    return out


def mold_inputs(images, config):
    """List of uint8 ``[H, W, 3]`` -> ``(molded [B, h, w, 3] float32, metas [B, META], infos)``.

    All images must mold to the same shape (always true for ``square`` and ``crop``).
    """
    molded, metas, infos = [], [], []
    for image in images:
        image = as_rgb_uint8(image)
        m, info = resize_image(image, config)
        molded.append(mold_image(m, config))
        metas.append(compose_image_meta(0, image.shape, m.shape, info.window, info.scale, config.NUM_CLASSES))
        infos.append(info)
    shapes = {m.shape for m in molded}
    if len(shapes) > 1:
        raise BrainTumorError(f"images mold to different shapes {sorted(shapes)}; detect them one at a time")
    return np.stack(molded), np.stack(metas), infos


def load_image_gt(dataset, config, image_id, augmenter=None, rng=None, train=True):
    """Load, augment, resize one image and its instances.

    Returns ``(image uint8 [h, w, 3], meta [META], class_ids [N] int32, boxes [N, 4] int32 px,
    masks [h, w, N] bool)`` in the molded frame; instances whose mask vanished are dropped.
    """
    rng = rng if rng is not None else np.random.default_rng()
    image = as_rgb_uint8(dataset.load_image(image_id))
    masks, class_ids = dataset.load_mask(image_id)
    masks = np.asarray(masks, bool).reshape(image.shape[0], image.shape[1], -1)
    class_ids = np.asarray(class_ids, np.int32).reshape(-1)
    if augmenter is not None:
        infos = getattr(dataset, "image_info", None)
        if getattr(augmenter, "takes_image_info", False) and infos is not None:  # e.g. copy_paste.CopyPaste
            image, masks, class_ids = augmenter(image, masks, class_ids, rng=rng, image_info=infos[image_id])
        else:
            image, masks, class_ids = augmenter(image, masks, class_ids, rng=rng)
        masks = np.asarray(masks, bool).reshape(image.shape[0], image.shape[1], -1)
        class_ids = np.asarray(class_ids, np.int32).reshape(-1)
    if class_ids.size and class_ids.max() >= config.NUM_CLASSES:
        name = dataset.image_info[image_id].get("name", image_id) if hasattr(dataset, "image_info") else image_id
        raise BrainTumorError(f"{name}: class id {int(class_ids.max())} but NUM_CLASSES is {config.NUM_CLASSES}")
    original_shape = image.shape
    image, info = resize_image(image, config, rng=rng, train=train)
    masks = resize_masks(masks, info)
    keep = masks.any(axis=(0, 1)) & (class_ids > 0)
    masks, class_ids = masks[:, :, keep], class_ids[keep]
    boxes = masks_to_boxes(masks)
    meta = compose_image_meta(image_id, original_shape, image.shape, info.window, info.scale, config.NUM_CLASSES)
    return image, meta, class_ids, boxes, masks


def build_training_sample(dataset, config, image_id, augmenter=None, rng=None):
    """One training example as a dict of NumPy arrays (the training model's inputs, no batch axis):

    ``input_image [h, w, 3]`` molded float32, ``input_image_meta [META]``,
    ``input_rpn_match [A, 1]`` int32, ``input_rpn_bbox [RPN_TRAIN_ANCHORS_PER_IMAGE, 4]``,
    ``input_gt_class_ids [MAX_GT_INSTANCES]`` int32 (0 = padding),
    ``input_gt_boxes [MAX_GT_INSTANCES, 4]`` **normalized** boxes,
    ``input_gt_masks [MAX_GT_INSTANCES, mh, mw]`` float32 0/1: mini masks
    (``MINI_MASK_SHAPE``) when ``USE_MINI_MASK``, else full molded-size masks.
    """
    rng = rng if rng is not None else np.random.default_rng()
    image, meta, class_ids, boxes, masks = load_image_gt(dataset, config, image_id, augmenter, rng)
    n = len(class_ids)
    if n > config.MAX_GT_INSTANCES:
        ix = np.sort(rng.choice(n, config.MAX_GT_INSTANCES, replace=False))
        class_ids, boxes, masks = class_ids[ix], boxes[ix], masks[:, :, ix]
        n = len(ix)
    anchors_px, _ = get_anchors(config, image.shape)
    rpn_match, rpn_bbox = build_rpn_targets(anchors_px, boxes, image.shape, config, rng)
    g = config.MAX_GT_INSTANCES
    gt_ids = np.zeros(g, np.int32)
    gt_boxes = np.zeros((g, 4), np.float32)
    if config.USE_MINI_MASK:
        gt_masks = np.zeros((g,) + tuple(config.MINI_MASK_SHAPE), np.float32)
        if n:
            gt_masks[:n] = minimize_masks(boxes, masks, config.MINI_MASK_SHAPE)
    else:
        gt_masks = np.zeros((g,) + image.shape[:2], np.float32)
        if n:
            gt_masks[:n] = np.moveaxis(masks, 2, 0)
    if n:
        gt_ids[:n] = class_ids
        gt_boxes[:n] = norm_boxes(boxes, image.shape[:2])
    return {"input_image": mold_image(image, config), "input_image_meta": meta,
            "input_rpn_match": rpn_match[:, None], "input_rpn_bbox": rpn_bbox,
            "input_gt_class_ids": gt_ids, "input_gt_boxes": gt_boxes, "input_gt_masks": gt_masks}


INPUT_ORDER = ("input_image", "input_image_meta", "input_rpn_match", "input_rpn_bbox",
               "input_gt_class_ids", "input_gt_boxes", "input_gt_masks")


def pass_plan(dataset) -> list[tuple[np.ndarray, int | None]]:
    """How a training pass draws from ``dataset``: a list of ``(pool of image indices, count)``;
    count None takes the whole pool every pass.

    - a dataset with ``pass_pools`` (several sources, :func:`braintumor.train.combine_sources`):
      those pools, each with its own count per pass;
    - a dataset with ``free_per_pass = k`` (:func:`braintumor.train.mix_tumor_free`): every image
      not marked ``tumor_free`` plus ``k`` of the tumor-free ones;
    - any other dataset: every image.
    """
    pools = getattr(dataset, "pass_pools", None)
    if pools:
        return [(np.asarray(ids, dtype=int), k) for ids, k in pools]
    k = getattr(dataset, "free_per_pass", None)
    infos = getattr(dataset, "image_info", None)
    if k is None or infos is None:
        return [(np.arange(len(dataset)), None)]
    free = np.array([i for i, info in enumerate(infos) if info.get("tumor_free")], dtype=int)
    fixed = np.array([i for i, info in enumerate(infos) if not info.get("tumor_free")], dtype=int)
    return [(fixed, None), (free, k)]


def pass_orders(dataset, rng: np.random.Generator, shuffle: bool = True):
    """Endless generator of passes over ``dataset``: each an int array of image indices.

    Each pool of :func:`pass_plan` contributes its count per pass, taken from a shuffled
    cycle through that pool: no image of a pool is drawn twice before all of the pool
    has been drawn once (a pool smaller than its count comes back within the pass).
    """
    plan = pass_plan(dataset)
    queues = [np.zeros(0, dtype=int) for _ in plan]
    while True:
        parts = []
        for j, (pool, k) in enumerate(plan):
            if k is None:
                parts.append(pool)
                continue
            take = np.zeros(0, dtype=int)
            while len(pool) and len(take) < k:
                if not len(queues[j]):
                    queues[j] = rng.permutation(pool) if shuffle else pool.copy()
                step = queues[j][: k - len(take)]
                take, queues[j] = np.concatenate([take, step]), queues[j][len(step):]
            parts.append(take)
        order = np.concatenate(parts) if parts else np.zeros(0, dtype=int)
        yield rng.permutation(order) if shuffle else order


def sample_indices(dataset, seed=0, shuffle=True):
    """Endless generator of image indices: the passes of :func:`pass_orders` drawn with
    ``np.random.default_rng(seed)``, one after another."""
    for order in pass_orders(dataset, np.random.default_rng(seed), shuffle):
        yield from (int(i) for i in order)


def training_sample(dataset, config, index, k, augmenter=None, seed=0) -> tuple:
    """Sample number ``k`` of a stream: image ``index`` of ``dataset`` as a tuple in :data:`INPUT_ORDER`.

    Its randomness (augmentation, crops, RPN anchor sampling) comes from its own generator,
    ``np.random.default_rng([seed, k])``, so a sample does not depend on which thread makes
    it, nor on the samples before it."""
    image_id = dataset.image_ids[index]
    rng = np.random.default_rng([int(seed) % 2**63, int(k)])
    try:
        s = build_training_sample(dataset, config, image_id, augmenter, rng)
    except BrainTumorError:
        raise
    except Exception as e:  # one bad file should name itself
        name = dataset.image_info[image_id].get("name", image_id) if hasattr(dataset, "image_info") else image_id
        raise BrainTumorError(f"{name}: cannot build a training sample ({type(e).__name__}: {e})") from e
    return tuple(s[key] for key in INPUT_ORDER)


def sample_generator(dataset, config, augmenter=None, seed=0, shuffle=True, workers=0):
    """Endless generator of training samples (tuples in :data:`INPUT_ORDER`), reshuffled every pass.

    ``workers`` 0: each sample is made when asked for, in this generator's thread.
    ``workers`` n > 0: n threads make samples ahead (up to ``2 n + BATCH_SIZE`` of them),
    each with its own copy of ``augmenter``; they come out in the same order. Either way
    the samples are the same (:func:`training_sample`)."""
    if len(dataset) == 0:
        raise BrainTumorError("dataset has no images")
    stream = enumerate(sample_indices(dataset, seed, shuffle))
    if workers <= 0:
        for k, i in stream:
            yield training_sample(dataset, config, i, k, augmenter, seed)
        return

    import collections
    import copy
    import threading
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()

    def make(k, i):
        aug = augmenter
        if augmenter is not None:  # an augmenter holds its random state: one per thread
            aug = getattr(local, "augmenter", None)
            if aug is None:
                aug = local.augmenter = copy.deepcopy(augmenter)
        return training_sample(dataset, config, i, k, aug, seed)

    ahead = 2 * int(workers) + max(1, int(config.BATCH_SIZE))
    pool = ThreadPoolExecutor(int(workers), thread_name_prefix="braintumor-input")
    pending = collections.deque()
    try:
        for k, i in stream:
            pending.append(pool.submit(make, k, i))
            if len(pending) >= ahead:
                yield pending.popleft().result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def input_signature(config):
    """``tf.TensorSpec`` of one sample per input (no batch axis)."""
    import tensorflow as tf

    fixed = config.IMAGE_RESIZE_MODE in ("square", "crop")
    h, w = (config.IMAGE_SHAPE[0], config.IMAGE_SHAPE[1]) if fixed else (None, None)
    num_anchors = len(get_anchors(config, config.IMAGE_SHAPE)[0]) if fixed else None
    g = config.MAX_GT_INSTANCES
    mh, mw = config.MINI_MASK_SHAPE if config.USE_MINI_MASK else (h, w)
    return (tf.TensorSpec((h, w, config.IMAGE_CHANNEL_COUNT), tf.float32),
            tf.TensorSpec((config.IMAGE_META_SIZE,), tf.float32),
            tf.TensorSpec((num_anchors, 1), tf.int32),
            tf.TensorSpec((config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4), tf.float32),
            tf.TensorSpec((g,), tf.int32),
            tf.TensorSpec((g, 4), tf.float32),
            tf.TensorSpec((g, mh, mw), tf.float32))


def make_tf_dataset(dataset, config, augmenter=None, seed=0, shuffle=True):
    """Endless batched ``tf.data.Dataset`` of ``(inputs_tuple,)`` for ``keras.Model.fit``;
    ``INPUT_WORKERS`` threads prepare the samples (:func:`sample_generator`)."""
    import tensorflow as tf

    workers = int(getattr(config, "INPUT_WORKERS", 0))
    ds = tf.data.Dataset.from_generator(lambda: sample_generator(dataset, config, augmenter, seed, shuffle, workers),
                                        output_signature=input_signature(config))
    ds = ds.batch(config.BATCH_SIZE, drop_remainder=True)
    ds = ds.map(lambda *x: (x,))
    return ds.prefetch(2)


def unmold_mask(mask, box, image_shape, soft: bool = False, threshold: float = 0.5) -> np.ndarray:
    """Paste a ``[mh, mw]`` probability mask into a bool ``[H, W]`` at pixel ``box``: the pixels whose
    resized probability is at least ``threshold`` (``DETECTION_MASK_THRESHOLD``); ``soft``: float32
    probabilities instead, 0 outside the box."""
    y1, x1, y2, x2 = (int(v) for v in box)
    full = np.zeros(image_shape[:2], np.float32 if soft else bool)
    h, w = y2 - y1, x2 - x1
    if h <= 0 or w <= 0:
        return full
    prob = _resize_float(mask, h, w)
    full[y1:y2, x1:x2] = prob if soft else prob >= threshold
    return full


def keep_best_and_strong(result: dict, min_secondary: float) -> dict:
    """``result`` (of :func:`unmold_detections`) with the best detection and those others scoring at
    least ``min_secondary`` (``DETECTION_SECONDARY_MIN_CONFIDENCE``); order kept, the same dict when
    nothing is dropped."""
    scores = np.asarray(result["scores"])
    if min_secondary <= 0 or len(scores) < 2:
        return result
    keep = scores >= min_secondary
    keep[int(np.argmax(scores))] = True
    if keep.all():
        return result
    idx = np.flatnonzero(keep)
    return {**result, "rois": result["rois"][idx], "class_ids": result["class_ids"][idx], "scores": scores[idx],
            "masks": result["masks"][:, :, idx]}


def unmold_detections(detections, mrcnn_mask, info: ResizeInfo, soft: bool = False,
                      mask_threshold: float = 0.5) -> dict:
    """One image's network output -> result dict at the original image size.

    detections: ``[D, (y1, x1, y2, x2, class_id, score)]`` normalized to the molded
    image (zero rows = padding); mrcnn_mask: ``[D, mh, mw, NUM_CLASSES]``.
    Returns ``{"rois": int32 [N, 4] px, "class_ids": int32 [N], "scores": float32 [N], "masks": bool [H, W, N]}``
    (``soft``: ``masks`` float32 probabilities, for :mod:`braintumor.mrcnn.flip`; else the pixels at
    ``mask_threshold`` or above).
    """
    detections = np.asarray(detections)
    n = int(np.count_nonzero(detections[:, 4] > 0))
    detections = detections[:n]
    class_ids = detections[:, 4].astype(np.int32)
    scores = detections[:, 5].astype(np.float32)
    masks = np.asarray(mrcnn_mask)[np.arange(n), :, :, class_ids] if n else np.zeros((0, 1, 1))
    mh, mw = info.molded_shape[:2]
    boxes = denorm_boxes(detections[:, :4], (mh, mw)).astype(np.float64) if n else np.zeros((0, 4))
    # molded frame -> original frame: undo padding, crop and scaling
    wy1, wx1 = info.window[0], info.window[1]
    oy, ox = (info.crop[0], info.crop[1]) if info.crop is not None else (0, 0)
    boxes = (boxes - np.array([wy1, wx1, wy1, wx1]) + np.array([oy, ox, oy, ox])) / info.scale
    oh, ow = info.original_shape[:2]
    boxes = np.round(boxes)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, oh)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, ow)
    boxes = boxes.astype(np.int32)
    keep = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    boxes, class_ids, scores = boxes[keep], class_ids[keep], scores[keep]
    full = np.zeros((oh, ow, len(keep)), np.float32 if soft else bool)
    for j, i in enumerate(keep):
        full[:, :, j] = unmold_mask(masks[i], boxes[j], (oh, ow), soft, mask_threshold)
    return {"rois": boxes, "class_ids": class_ids, "scores": scores, "masks": full}

