"""Checkpoint files in Matterport's (Keras 2) HDF5 layout, and ImageNet backbone weights.

File layout (what Keras 2 ``model.save_weights("x.h5")`` wrote, and what
Matterport's ``mask_rcnn_coco.h5`` is)::

    /                       attrs: layer_names  [bytes]  every top-level layer, in model order
                                   keras_version, backend, braintumor (JSON: version, epoch)
    /<layer>                attrs: weight_names [bytes]  e.g. b"res2a_branch2a/kernel:0"
    /<layer>/<weight name>  dataset, float32, the weight's shape

A Keras full-model file puts the same tree under a ``model_weights`` group; both
are read. A nested ``keras.Model`` used as a layer (Matterport's ``rpn_model``)
is ONE layer group whose weight names carry the inner layer names
(``rpn_conv_shared/kernel:0``, ``rpn_class_raw/kernel:0``, ...).
Within a layer, weights are in ``layer.weights`` order: Conv2D/Dense
``kernel, bias``; BatchNormalization ``gamma, beta, moving_mean,
moving_variance`` (the non-trainable moving statistics are saved too).

Keras 3 ``.weights.h5`` files (``layers/<name>/vars/0``) are a different layout
and are not read here.

Functions:

- :func:`save_weights_h5` writes a checkpoint atomically (``path + ".tmp"``, then ``os.replace``).
- :func:`load_weights_h5` loads by layer name (Matterport's ``by_name=True``) with
  ``exclude`` patterns, or by position; returns a :class:`LoadReport`.
- :func:`load_imagenet_backbone` copies keras.applications ResNet-50/101 ImageNet
  weights onto the Matterport-named backbone layers (:func:`IMAGENET_NAME_MAP`).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import h5py
import numpy as np

from braintumor.errors import BrainTumorError

# HDF5 object headers hold at most 64 KiB of attributes; Keras 2 split longer
# name lists into chunks ``layer_names0``, ``layer_names1``, ... (read and written the same way).
_ATTR_LIMIT = 64000

# keras.applications ResNet (v1) BatchNormalization epsilon, and the Caffe
# preprocessing its ImageNet weights expect: BGR channel order, minus this BGR mean, no scaling.
KERAS_RESNET_BN_EPSILON = 1.001e-5
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

_RESNET_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
_IMAGENET_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet101": "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
}


# ----------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------
def _shape_str(shape) -> str:
    return str(tuple(int(s) for s in shape))


def _some(names: list[str], n: int = 4) -> str:
    head = ", ".join(names[:n])
    return head + (f", ... (+{len(names) - n})" if len(names) > n else "")


@dataclass
class LoadReport:
    """What a load did, layer by layer.

    Layer names are top-level layer names; for layers inside a nested model they
    are ``"<nested model>/<inner layer>"`` (e.g. ``rpn_model/rpn_conv_shared``).

    - ``loaded``: layers whose weights were all assigned from the file.
    - ``skipped_excluded``: layers matched by ``exclude`` (left untouched).
    - ``missing_in_file``: model layers with weights that the file does not have (untouched).
    - ``unused_in_file``: file layers with weights that no model layer took.
    - ``shape_mismatched``: ``(layer, weight, file_shape, model_shape)``; the whole layer is left untouched.
    - ``count_mismatched``: ``(layer, n_file_weights, n_model_weights)``; the layer is left untouched.
    """

    path: str = ""
    loaded: list[str] = field(default_factory=list)
    skipped_excluded: list[str] = field(default_factory=list)
    missing_in_file: list[str] = field(default_factory=list)
    unused_in_file: list[str] = field(default_factory=list)
    shape_mismatched: list[tuple[str, str, tuple, tuple]] = field(default_factory=list)
    count_mismatched: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every model layer with weights was loaded (nothing missing or mismatched)."""
        return not (self.missing_in_file or self.shape_mismatched or self.count_mismatched)

    def __str__(self) -> str:
        parts = [f"loaded {len(self.loaded)} layers"]
        if self.skipped_excluded:
            parts.append(f"skipped {len(self.skipped_excluded)} excluded")
        if self.shape_mismatched:
            items = [f"{layer}/{w} {_shape_str(fs)} vs {_shape_str(ms)}"
                     for layer, w, fs, ms in self.shape_mismatched]
            parts.append(f"{len(self.shape_mismatched)} shape-mismatched (file vs model): {_some(items, 3)}")
        if self.count_mismatched:
            items = [f"{layer} {nf} vs {nm} weights" for layer, nf, nm in self.count_mismatched]
            parts.append(f"{len(self.count_mismatched)} weight-count-mismatched: {_some(items, 3)}")
        if self.missing_in_file:
            parts.append(f"{len(self.missing_in_file)} missing in file: {_some(self.missing_in_file)}")
        if self.unused_in_file:
            parts.append(f"{len(self.unused_in_file)} unused in file: {_some(self.unused_in_file)}")
        return ", ".join(parts)


# ----------------------------------------------------------------------------
# model side
# ----------------------------------------------------------------------------
def _is_nested_model(layer) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _leaf_layers(model, prefix: str = "") -> Iterator[tuple[str, object]]:
    """``(name, layer)`` of the non-model layers inside ``model``, recursing into nested models."""
    for sub in model.layers:
        if _is_nested_model(sub):
            yield from _leaf_layers(sub)
        else:
            yield sub.name, sub


def _all_layers(model) -> Iterator[object]:
    """Every layer of ``model``, nested models' inner layers included (depth first)."""
    for sub in model.layers:
        yield sub
        if _is_nested_model(sub):
            yield from _all_layers(sub)


def _entries(layer) -> list[tuple[str, str, object]]:
    """``(owner, base name, variable)`` for every weight of a top-level layer, in ``layer.weights`` order.

    The owner is the layer itself, or for a nested model the inner layer that holds the weight.
    """
    weights = list(layer.weights)
    if not _is_nested_model(layer):
        return [(layer.name, v.name, v) for v in weights]
    owner_of: dict[int, str] = {}
    for name, sub in _leaf_layers(layer):
        for v in sub.weights:
            owner_of.setdefault(id(v), name)
    return [(owner_of.get(id(v), layer.name), v.name, v) for v in weights]


def _to_numpy(v) -> np.ndarray:
    return np.asarray(v.numpy() if hasattr(v, "numpy") else v)


# ----------------------------------------------------------------------------
# HDF5 helpers
# ----------------------------------------------------------------------------
def _write_str_list(attrs, name: str, values: list[str]) -> None:
    data = np.array([s.encode("utf8") for s in values], dtype=bytes) if values else np.zeros((0,), dtype="S1")
    if data.nbytes <= _ATTR_LIMIT:
        attrs[name] = data
        return
    chunks = int(np.ceil(data.nbytes / _ATTR_LIMIT))
    while any(c.nbytes > _ATTR_LIMIT for c in np.array_split(data, chunks)):
        chunks += 1
    for i, chunk in enumerate(np.array_split(data, chunks)):
        attrs[f"{name}{i}"] = chunk


def _read_str_list(attrs, name: str) -> list[str] | None:
    if name in attrs:
        raw = attrs[name]
    elif f"{name}0" in attrs:
        parts, i = [], 0
        while f"{name}{i}" in attrs:
            parts.extend(np.atleast_1d(attrs[f"{name}{i}"]).tolist())
            i += 1
        raw = parts
    else:
        return None
    out = []
    for v in np.atleast_1d(np.asarray(raw, dtype=object)).tolist():
        out.append(v.decode("utf8") if isinstance(v, (bytes, np.bytes_)) else str(v))
    return out


_SUFFIX = re.compile(r":\d+$")


def _split_weight_name(wname: str, group: str) -> tuple[str, str]:
    """``"rpn_conv_shared/kernel:0"`` -> ``("rpn_conv_shared", "kernel")``; no prefix -> ``(group, base)``."""
    parts = [p for p in _SUFFIX.sub("", wname).split("/") if p]
    if not parts:
        return group, wname
    owner = parts[-2] if len(parts) >= 2 else group
    return owner, parts[-1]


@dataclass
class _FileWeight:
    group: str
    name: str  # as stored, e.g. "conv1/kernel:0"
    owner: str  # layer that holds it (inner layer for nested groups)
    base: str  # "kernel"
    value: np.ndarray
    used: bool = False


@dataclass
class _FileContents:
    path: str
    layer_names: list[str]  # as in the file, weightless layers included
    groups: dict[str, list[_FileWeight]]  # only layers with weights, file order
    attrs: dict

    def by_owner(self) -> dict[str, list[_FileWeight]]:
        """Weights grouped by the layer that holds them (inner layers of nested groups included)."""
        out: dict[str, list[_FileWeight]] = {}
        for g, fws in self.groups.items():
            owners: dict[str, list[_FileWeight]] = {}
            for fw in fws:
                owners.setdefault(fw.owner, []).append(fw)
            for owner, lst in owners.items():
                if owner != g:
                    out.setdefault(owner, lst)
        return out


def _read_file(path) -> _FileContents:
    """Read every weight of a Keras 2 / Matterport HDF5 file into memory.

    Raises :class:`BrainTumorError` (one line naming the file) when the file is
    missing, is not HDF5, is truncated, or has no ``layer_names`` attribute.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise BrainTumorError(f"{path}: weights file not found")
    if os.path.isdir(path):
        raise BrainTumorError(f"{path}: is a folder, not a weights file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BrainTumorError(f"{path}: not a readable HDF5 weights file ({reason})") from None
    try:
        with f:
            root = f
            if "layer_names" not in f.attrs and "layer_names0" not in f.attrs and "model_weights" in f:
                root = f["model_weights"]
            layer_names = _read_str_list(root.attrs, "layer_names")
            if layer_names is None:
                raise BrainTumorError(
                    f"{path}: no 'layer_names' attribute, not a Keras 2 / Matterport weights file "
                    "(Keras 3 .weights.h5 files are not supported)")
            groups: dict[str, list[_FileWeight]] = {}
            for lname in layer_names:
                if lname not in root or not isinstance(root[lname], h5py.Group):
                    continue
                g = root[lname]
                wnames = _read_str_list(g.attrs, "weight_names") or []
                fws = []
                for wname in wnames:
                    if wname not in g:
                        raise BrainTumorError(f"{path}: layer {lname!r} lists weight {wname!r} but has no such dataset")
                    owner, base = _split_weight_name(wname, lname)
                    fws.append(_FileWeight(lname, wname, owner, base, np.asarray(g[wname][()])))
                if fws:
                    groups[lname] = fws
            attrs = {}
            for k in ("keras_version", "backend", "braintumor"):
                if k in f.attrs:
                    v = f.attrs[k]
                    attrs[k] = v.decode("utf8") if isinstance(v, (bytes, np.bytes_)) else v
    except BrainTumorError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BrainTumorError(f"{path}: damaged or truncated HDF5 weights file ({reason})") from None
    return _FileContents(path, layer_names, groups, attrs)


def read_weights_info(path) -> dict:
    """The file's ``keras_version``, ``backend`` and ``braintumor`` (dict) attributes, and its layer count.

    ``{"keras_version": "3.15.1", "backend": "tensorflow", "braintumor": {"version": "0.1.0", "epoch": 3},
    "layers_with_weights": 235}``; attributes the file lacks are absent.
    """
    fc = _read_file(path)
    info = dict(fc.attrs)
    if isinstance(info.get("braintumor"), str):
        try:
            info["braintumor"] = json.loads(info["braintumor"])
        except json.JSONDecodeError:
            pass
    info["layers_with_weights"] = len(fc.groups)
    return info


# ----------------------------------------------------------------------------
# save
# ----------------------------------------------------------------------------
def save_weights_h5(keras_model, path, *, epoch: int | None = None) -> None:
    """Write every weight of ``keras_model`` to ``path`` in Matterport's HDF5 layout, atomically.

    All top-level layers are listed in ``layer_names`` (weightless ones get an
    empty group, as Keras 2 did). Weight names are ``"<layer>/<weight>:0"``;
    for a nested model they are ``"<inner layer>/<weight>:0"`` inside the nested
    model's one group. Values are stored in the variables' dtype (float32).

    The file is written to ``path + ".tmp"`` in the same folder, flushed, fsynced
    and moved over ``path`` with ``os.replace``: a crash leaves either the old
    file or the new one, never a partial file (the ``.tmp`` is removed on error).
    ``epoch`` (optional) is recorded in the ``braintumor`` attribute (JSON).
    """
    import keras

    from braintumor import __version__

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = path + ".tmp"
    meta = {"version": __version__}
    if epoch is not None:
        meta["epoch"] = int(epoch)
    try:
        with h5py.File(tmp, "w") as f:
            layers = list(keras_model.layers)
            _write_str_list(f.attrs, "layer_names", [layer.name for layer in layers])
            # fixed-length byte strings, as Keras 2 wrote them (its readers call .decode())
            f.attrs["backend"] = np.bytes_(keras.backend.backend().encode("utf8"))
            f.attrs["keras_version"] = np.bytes_(str(keras.__version__).encode("utf8"))
            f.attrs["braintumor"] = np.bytes_(json.dumps(meta).encode("utf8"))
            for layer in layers:
                g = f.create_group(layer.name)
                names, seen = [], set()
                for owner, base, v in _entries(layer):
                    name = f"{owner}/{base}:0"
                    k = 1
                    while name in seen:  # two variables with one name: keep both, in order
                        name = f"{owner}/{base}_{k}:0"
                        k += 1
                    seen.add(name)
                    names.append(name)
                    g.create_dataset(name, data=_to_numpy(v))
                _write_str_list(g.attrs, "weight_names", names)
            f.flush()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


# ----------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------
def _excluded(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def _pair(model_bases: list[str], fws: list[_FileWeight]) -> list[_FileWeight]:
    """Align file weights to model weights (same count): by base name when both lists
    hold the same distinct names in another order, else by position."""
    file_bases = [fw.base for fw in fws]
    if (file_bases != model_bases and len(set(model_bases)) == len(model_bases)
            and sorted(file_bases) == sorted(model_bases)):
        where = {b: i for i, b in enumerate(file_bases)}
        return [fws[where[b]] for b in model_bases]
    return list(fws)


def _try_assign(report: LoadReport, name: str, entries: list[tuple[str, object]],
                fws: list[_FileWeight]) -> None:
    """Assign ``fws`` to the variables of ``entries`` (``(base, var)``) if counts and shapes all
    agree; otherwise record the problem and leave every variable of the layer untouched."""
    for fw in fws:
        fw.used = True
    if len(fws) != len(entries):
        report.count_mismatched.append((name, len(fws), len(entries)))
        return
    paired = _pair([b for b, _ in entries], fws)
    bad = [(name, b, tuple(fw.value.shape), tuple(v.shape))
           for (b, v), fw in zip(entries, paired) if tuple(fw.value.shape) != tuple(v.shape)]
    if bad:
        report.shape_mismatched.extend(bad)
        return
    for (_, v), fw in zip(entries, paired):
        v.assign(fw.value.astype(v.dtype, copy=False))
    report.loaded.append(name)


def load_weights_h5(keras_model, path, by_name: bool = True, exclude: Iterable[str] = ()) -> LoadReport:
    """Load a Matterport / Keras 2 HDF5 weights file into ``keras_model``; never crash on a mismatch.

    ``by_name=True`` (the usual): each top-level layer takes the file group of the
    same name. A nested model (``rpn_model``) is matched as a whole group, by the
    inner layer names in its weight names (``rpn_conv_shared/kernel:0``), or by
    position when the weight names carry no inner layer names; when the file has
    no such group, each inner layer is looked up by its own name. Within a layer,
    weights are matched by position, or by base name (``kernel``, ``gamma``...,
    ``:0`` suffix and scope prefixes ignored) when the same names come in
    another order.

    ``exclude``: layer names or fnmatch patterns (``"mrcnn_*"``; one string is one name) to leave untouched,
    e.g. Matterport's ``["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]``
    to start a 2-class model from the 81-class ``mask_rcnn_coco.h5``.

    A layer whose weight shapes or count differ from the file is reported in the
    returned :class:`LoadReport` and left untouched. ``by_name=False`` loads the
    file's layers with weights in ``layer_names`` order onto the model's layers
    with weights in order and requires an exact match.

    Raises :class:`BrainTumorError` (one line naming the file) for a missing,
    non-HDF5, truncated or layer_names-less file, when ``by_name=False`` and the
    model and file differ, and when not a single layer could be loaded.
    """
    fc = _read_file(path)
    patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude or ())
    if not by_name:
        if patterns:
            raise ValueError("exclude= needs by_name=True")
        return _load_in_order(keras_model, fc)

    report = LoadReport(path=fc.path)
    owners = fc.by_owner()

    def lookup(name: str) -> list[_FileWeight] | None:
        return fc.groups.get(name) or owners.get(name)

    for layer in keras_model.layers:
        entries = _entries(layer)
        if not entries:
            continue
        if _excluded(layer.name, patterns):
            report.skipped_excluded.append(layer.name)
            for fw in lookup(layer.name) or []:
                fw.used = True
            continue
        if not _is_nested_model(layer):
            fws = lookup(layer.name)
            if fws is None:
                report.missing_in_file.append(layer.name)
            else:
                _try_assign(report, layer.name, [(b, v) for _, b, v in entries], fws)
            continue
        # nested model: one unit per inner layer, or the whole model when the file group
        # has no inner layer names
        group = fc.groups.get(layer.name)
        if group is not None and all(fw.owner == layer.name for fw in group):
            _try_assign(report, layer.name, [(b, v) for _, b, v in entries], group)
            continue
        units: dict[str, list[tuple[str, object]]] = {}
        for owner, base, v in entries:
            units.setdefault(owner, []).append((base, v))
        for owner, unit in units.items():
            uname = f"{layer.name}/{owner}"
            fws = None
            if group is not None:
                fws = [fw for fw in group if fw.owner == owner] or None
            if fws is None:
                fws = lookup(owner)
            if _excluded(owner, patterns):
                report.skipped_excluded.append(uname)
                for fw in fws or []:
                    fw.used = True
            elif fws is None:
                report.missing_in_file.append(uname)
            else:
                _try_assign(report, uname, unit, fws)

    for g, fws in fc.groups.items():
        if not any(fw.used for fw in fws):
            report.unused_in_file.append(g)
        else:
            left = sorted({fw.owner for fw in fws if not fw.used})
            report.unused_in_file.extend(f"{g}/{o}" for o in left)
    if not report.loaded and not report.skipped_excluded:
        raise BrainTumorError(
            f"{fc.path}: no layer of the file matches the model "
            f"(file layers: {_some(list(fc.groups), 5)}; {report})")
    return report


def _load_in_order(keras_model, fc: _FileContents) -> LoadReport:
    """``by_name=False``: file layers with weights, in order, onto model layers with weights, in order."""
    layers = [layer for layer in keras_model.layers if layer.weights]
    file_layers = list(fc.groups)
    if len(layers) != len(file_layers):
        raise BrainTumorError(
            f"{fc.path}: by_name=False needs the same layers: the model has {len(layers)} layers "
            f"with weights, the file {len(file_layers)}")
    plan = []
    for layer, g in zip(layers, file_layers):
        vs = list(layer.weights)
        fws = fc.groups[g]
        if len(vs) != len(fws):
            raise BrainTumorError(
                f"{fc.path}: by_name=False: model layer {layer.name!r} has {len(vs)} weights, "
                f"file layer {g!r} has {len(fws)}")
        for v, fw in zip(vs, fws):
            if tuple(v.shape) != tuple(fw.value.shape):
                raise BrainTumorError(
                    f"{fc.path}: by_name=False: {layer.name}/{v.name} is {_shape_str(v.shape)} in the model "
                    f"but file weight {g}/{fw.name} is {_shape_str(fw.value.shape)}")
            plan.append((v, fw.value))
    for v, value in plan:
        v.assign(value.astype(v.dtype, copy=False))
    return LoadReport(path=fc.path, loaded=[layer.name for layer in layers])


# ----------------------------------------------------------------------------
# ImageNet backbone
# ----------------------------------------------------------------------------
def IMAGENET_NAME_MAP(backbone: str) -> dict[str, str]:  # noqa: N802 (a table, named like one)
    """keras.applications ResNet layer name -> Matterport ResNet layer name.

    ``conv1_conv -> conv1``, ``conv1_bn -> bn_conv1``,
    ``conv{s}_block{b}_0_conv -> res{s}{letter}_branch1`` (projection shortcut, first block only),
    ``conv{s}_block{b}_{1,2,3}_conv -> res{s}{letter}_branch2{a,b,c}``, and
    ``..._bn -> bn{s}{letter}_branch...``, where ``letter`` is ``a`` for block 1,
    ``b`` for block 2, ... (ResNet-101's stage 4 runs ``res4a`` .. ``res4w``).
    """
    if backbone not in _RESNET_BLOCKS:
        raise BrainTumorError(f"backbone must be one of {', '.join(_RESNET_BLOCKS)}, got {backbone!r}")
    out = {"conv1_conv": "conv1", "conv1_bn": "bn_conv1"}
    for stage, n_blocks in zip((2, 3, 4, 5), _RESNET_BLOCKS[backbone]):
        for b in range(1, n_blocks + 1):
            letter = chr(ord("a") + b - 1)
            for i, branch in ((0, "1"), (1, "2a"), (2, "2b"), (3, "2c")):
                if i == 0 and b > 1:
                    continue  # identity blocks have no shortcut conv
                out[f"conv{stage}_block{b}_{i}_conv"] = f"res{stage}{letter}_branch{branch}"
                out[f"conv{stage}_block{b}_{i}_bn"] = f"bn{stage}{letter}_branch{branch}"
    return out


def _imagenet_source(backbone: str, weights_path) -> tuple[dict[str, list[tuple[str, np.ndarray]]], dict[str, float], str]:
    """``({keras.applications layer: [(base, value)]}, {bn layer: epsilon}, description)``."""
    if weights_path is not None:
        fc = _read_file(weights_path)
        src = {g: [(fw.base, fw.value) for fw in fws] for g, fws in fc.groups.items()}
        return src, {}, fc.path
    import keras

    build = keras.applications.ResNet50 if backbone == "resnet50" else keras.applications.ResNet101
    try:
        net = build(include_top=False, weights="imagenet")
    except Exception as e:  # keras.utils.get_file raises a bare Exception on a failed download
        reason = " ".join(str(e).split()) or type(e).__name__
        cache = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")
        raise BrainTumorError(
            f"{_IMAGENET_FILES[backbone]}: ImageNet {backbone} weights download failed ({reason}); "
            f"run once where storage.googleapis.com is reachable (e.g. Colab) and copy the file into {cache}/, "
            f"or pass a local weights file, or use --init random") from None
    src, eps = {}, {}
    for layer in net.layers:
        if layer.weights:
            src[layer.name] = [(v.name, _to_numpy(v)) for v in layer.weights]
        if hasattr(layer, "epsilon"):
            eps[layer.name] = float(layer.epsilon)
    del net
    return src, eps, f"keras.applications {backbone} (imagenet)"


def _fold_conv1(values: list[np.ndarray], mean_pixel, pixel_std) -> list[np.ndarray]:
    """Turn the Caffe-style conv1 (BGR, minus :data:`CAFFE_MEAN_BGR`) into one that reads our
    molded input ``(rgb - mean_pixel) / pixel_std``: flip the input channels to RGB, scale
    them by ``pixel_std`` and absorb the mean difference into the bias (exact away from the
    zero-padded border)."""
    kernel = values[0][:, :, ::-1, :].astype(np.float64)  # [kh, kw, 3 (RGB), filters]
    std = np.asarray(pixel_std, dtype=np.float64)
    mean_diff = np.asarray(mean_pixel, dtype=np.float64) - np.asarray(CAFFE_MEAN_BGR[::-1])
    new_kernel = kernel * std[None, None, :, None]
    out = [new_kernel.astype(values[0].dtype)]
    if len(values) > 1:
        bias = values[1].astype(np.float64) + np.einsum("hwcf,c->f", kernel, mean_diff)
        out.append(bias.astype(values[1].dtype))
    return out


def load_imagenet_backbone(keras_model, backbone: str, weights_path=None, *,
                           mean_pixel=None, pixel_std=None) -> LoadReport:
    """Copy keras.applications ImageNet ResNet-50/101 weights onto the Matterport-named backbone.

    ``backbone``: ``"resnet50"`` or ``"resnet101"``. ``weights_path``: a local
    keras.applications weights file (``resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5``,
    Keras 2 HDF5 layout); when None, ``keras.applications.ResNet50/101(include_top=False,
    weights="imagenet")`` is built, which downloads (or reuses ``~/.keras/models/``). Layers
    are found anywhere in ``keras_model`` (nested models included) by their Matterport names
    (:func:`IMAGENET_NAME_MAP`); the FPN and heads are not touched.

    keras.applications ResNet (v1) against Matterport's ResNet:

    - same topology and weight shapes: 7x7/2 ``conv1`` with bias, bottleneck blocks whose
      stride 2 sits on the first 1x1 conv (``branch2a``) and the 1x1 shortcut (``branch1``),
      as in the Caffe ResNet both come from; all convs have biases.
    - BatchNorm epsilon: 1.001e-5 there, Keras's default 1e-3 in Matterport. Each BN's
      ``gamma`` is rescaled by ``sqrt((var + eps_model) / (var + eps_source))`` so a frozen
      BN (``TRAIN_BN = False``) computes exactly what the ImageNet network computed.
    - input: the ImageNet weights expect Caffe preprocessing (BGR, minus
      :data:`CAFFE_MEAN_BGR`, no scaling) while our model reads ``(rgb - MEAN_PIXEL) /
      PIXEL_STD``. ``conv1`` is folded to match (see :func:`_fold_conv1`); pass the config's
      ``mean_pixel=config.MEAN_PIXEL, pixel_std=config.PIXEL_STD`` (defaults: the
      :data:`braintumor.config.DEFAULTS` values).
    - pooling: keras.applications pads 1 pixel on every side before its 3x3/2 max-pool;
      Matterport uses ``padding="same"`` (pads only bottom/right): feature maps are shifted
      by at most one pixel at stride 4. Weightless, so nothing to convert.

    Returns a :class:`LoadReport` (names are Matterport names; ``unused_in_file`` lists
    source layers with no target). Raises :class:`BrainTumorError` when the download
    fails (one line: what to do) or when the model has no Matterport-named backbone layer.
    """
    from braintumor.config import DEFAULTS

    name_map = IMAGENET_NAME_MAP(backbone)
    mean_pixel = DEFAULTS["MEAN_PIXEL"] if mean_pixel is None else mean_pixel
    pixel_std = DEFAULTS["PIXEL_STD"] if pixel_std is None else pixel_std
    src, src_eps, where = _imagenet_source(backbone, weights_path)

    targets: dict[str, object] = {}
    for layer in _all_layers(keras_model):
        targets.setdefault(layer.name, layer)
    report = LoadReport(path=where)
    for src_name, dst_name in name_map.items():
        layer = targets.get(dst_name)
        if layer is None or not layer.weights:
            if src_name in src:
                report.unused_in_file.append(src_name)
            continue
        if src_name not in src:
            report.missing_in_file.append(dst_name)
            continue
        values = [val for _, val in src[src_name]]
        variables = list(layer.weights)
        if len(values) != len(variables):
            report.count_mismatched.append((dst_name, len(values), len(variables)))
            continue
        if dst_name == "conv1" and values[0].ndim == 4 and values[0].shape[2] == 3:
            values = _fold_conv1(values, mean_pixel, pixel_std)
        bad = [(dst_name, v.name, tuple(val.shape), tuple(v.shape))
               for v, val in zip(variables, values) if tuple(val.shape) != tuple(v.shape)]
        if bad:
            report.shape_mismatched.extend(bad)
            continue
        if src_name.endswith("_bn") and hasattr(layer, "epsilon") and len(values) == 4:
            eps_src = src_eps.get(src_name, KERAS_RESNET_BN_EPSILON)
            gamma, beta, mean, var = values
            scale = np.sqrt((var.astype(np.float64) + float(layer.epsilon)) / (var.astype(np.float64) + eps_src))
            values = [(gamma * scale).astype(gamma.dtype), beta, mean, var]
        for v, val in zip(variables, values):
            v.assign(np.asarray(val).astype(v.dtype, copy=False))
        report.loaded.append(dst_name)
    mapped = set(name_map)
    report.unused_in_file.extend(n for n in src if n not in mapped)
    if not report.loaded:
        raise BrainTumorError(
            f"{where}: no layer of the model has a Matterport ResNet name (conv1, bn_conv1, "
            f"res2a_branch2a, ...), nothing loaded ({report})")
    return report
