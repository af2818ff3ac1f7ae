"""``PRECISION = "mixed_bfloat16"``: bfloat16 arithmetic for the convolutions and dense layers.

Keras mixed precision (policy ``mixed_bfloat16``: float32 variables, bfloat16 compute) is
applied to the layers built inside :func:`compute_scope` only: the ResNet + FPN, the
RPN's convolutions and the head convolutions and dense layers. Everything else is built
under float32 and so computes in float32, its inputs cast up at the boundary: the
RPN's class and box outputs after their last convolution (reshape, softmax,
concatenation), the proposal layer (top-k, box decoding, NMS), the detection-target
layer, ROIAlign (``tf.image.crop_and_resize``), the class softmax and box reshape, the
mask head's last 1x1 convolution and sigmoid, the detection layer, and the losses. The
model's outputs, and so ``detect()``'s, are float32. Weights are float32 either way:
checkpoints do not change.

bfloat16 is only used where the CPU has it (``avx512_bf16`` or ``amx_bf16`` in
``/proc/cpuinfo``); elsewhere the model is built in float32 and one line says why.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_said: set[str] = set()


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The bfloat16 flags (:data:`BF16_FLAGS`) of this CPU (``cpuinfo``: the text of ``/proc/cpuinfo``)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags") or line.startswith("Features"):
            flags.update(line.split(":", 1)[-1].split())
    return [f for f in BF16_FLAGS if f in flags]


def compute_policy(config, cpuinfo: str | None = None) -> str:
    """The Keras dtype policy of the compute layers: ``"mixed_bfloat16"`` when ``PRECISION``
    asks for it and the CPU has bfloat16 (else ``"float32"``, said once), otherwise ``"float32"``."""
    want = getattr(config, "PRECISION", "float32")
    if want != "mixed_bfloat16":
        return "float32"
    if cpu_bf16_flags(cpuinfo):
        return "mixed_bfloat16"
    msg = (f"PRECISION = \"mixed_bfloat16\" ignored: this CPU has none of {', '.join(BF16_FLAGS)} "
           f"(no fast bfloat16), training in float32")
    if msg not in _said:
        _said.add(msg)
        print(msg, flush=True)
    return "float32"


@contextlib.contextmanager
def policy_scope(policy: str):
    """Layers constructed inside get the Keras dtype policy ``policy``."""
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def compute_scope(config):
    """Build the compute-heavy layers of ``config``'s model inside this (see module docstring)."""
    return policy_scope(compute_policy(config))


def float32_scope():
    """Build boundary layers (box arithmetic, ROIAlign, softmax, losses' inputs) inside this."""
    return policy_scope("float32")
