"""A faster GroupNorm for the CPU: the same layer as ``keras.layers.GroupNormalization``,
with statistics per channel first and a hand-written gradient.

:class:`FusedGroupNorm` has ``keras.layers.GroupNormalization``'s weights (``gamma``,
``beta``, shape ``[C]``, in that order, float32 whatever the compute dtype) and its
output (same ``groups``, ``epsilon``), so a checkpoint written with either layer loads
into the other (``NORM = "gn"`` with ``GN_IMPL = "keras"`` or ``"fused"``).

What differs is how it is computed, on ``x`` viewed as ``[B, S, C]`` (``S`` = every
axis between batch and channels):

- forward: per-channel means (one reduction over ``S``), group means from those
  (``[B, G]``, tiny), ``xc = x - mean``, per-channel means of ``xc²`` -> group
  variances, then one multiply-add ``y = xc * (gamma * inv_std) + beta`` with a
  ``[B, 1, C]`` scale: no five-dimensional broadcasts;
- backward (:func:`tf.custom_gradient`): with ``A = sum_S dy`` and ``D = sum_S dy * xc``
  (per image and channel),
  ``dx = dy * P + xc * Q + R`` where ``P = gamma * inv``, ``R = -inv * mean_g(gamma * A) / S``,
  ``Q = -inv³ * mean_g(gamma * D) / S``; ``dgamma = sum_B inv * D``, ``dbeta = sum_B A``.
  About seven passes over the activation instead of autodiff's chain of reshapes,
  broadcasts and their reductions.

Computation is float32 (inputs in bfloat16 under mixed precision are cast up; the
output is cast to the layer's compute dtype), as Keras's layer does.
"""

from __future__ import annotations

import keras


def _group_norm_fn(groups: int, epsilon: float):
    """``f(x [B, S, C] float32, gamma [C], beta [C]) -> y`` with its gradient."""
    import tensorflow as tf

    def per_group(v_c, b, c):
        """``[B, C]`` -> group mean ``[B, G]`` broadcast back to ``[B, C]``."""
        g = tf.reduce_mean(tf.reshape(v_c, [b, groups, c // groups]), axis=2, keepdims=True)
        return tf.reshape(tf.broadcast_to(g, [b, groups, c // groups]), [b, c])

    @tf.custom_gradient
    def fn(x, gamma, beta):
        shape = tf.shape(x)
        b, c = shape[0], x.shape[-1]
        mean = per_group(tf.reduce_mean(x, axis=1), b, c)                  # [B, C]
        xc = x - mean[:, None, :]
        var = per_group(tf.reduce_mean(tf.square(xc), axis=1), b, c)       # [B, C]
        inv = tf.math.rsqrt(var + epsilon)
        scale = inv * gamma[None, :]
        y = xc * scale[:, None, :] + beta[None, None, :]

        def grad(dy):
            dy = tf.cast(dy, tf.float32)
            s = tf.cast(tf.shape(dy)[1], tf.float32)
            a = tf.reduce_sum(dy, axis=1)                                  # [B, C]
            d = tf.reduce_sum(dy * xc, axis=1)                             # [B, C]
            r = -inv * per_group(gamma[None, :] * a, b, c) / s
            q = -inv * inv * inv * per_group(gamma[None, :] * d, b, c) / s
            dx = dy * scale[:, None, :] + (xc * q[:, None, :] + r[:, None, :])
            return dx, tf.reduce_sum(inv * d, axis=0), tf.reduce_sum(a, axis=0)

        return y, grad

    return fn


class FusedGroupNorm(keras.layers.Layer):
    """GroupNorm over the last axis; drop-in for ``keras.layers.GroupNormalization(groups, axis=-1,
    epsilon)`` with ``center`` and ``scale`` (same weights, names, order and output)."""

    def __init__(self, groups=32, epsilon=1e-3, beta_initializer="zeros", gamma_initializer="ones", **kwargs):
        super().__init__(**kwargs)
        self.groups = int(groups)
        self.epsilon = float(epsilon)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.supports_masking = True
        self._fn = None

    def build(self, input_shape):
        c = input_shape[-1]
        if c is None or c % self.groups:
            raise ValueError(f"{self.name}: channels ({c}) must be a known multiple of groups ({self.groups})")
        self.gamma = self.add_weight(shape=(c,), name="gamma", initializer=self.gamma_initializer, autocast=False)
        self.beta = self.add_weight(shape=(c,), name="beta", initializer=self.beta_initializer, autocast=False)

    def call(self, x):
        import tensorflow as tf

        if self._fn is None:
            self._fn = _group_norm_fn(self.groups, self.epsilon)
        shape = tf.shape(x)
        c = x.shape[-1]
        x3 = tf.reshape(tf.cast(x, tf.float32), [shape[0], -1, c])
        y = self._fn(x3, tf.cast(self.gamma.value, tf.float32), tf.cast(self.beta.value, tf.float32))
        return tf.cast(tf.reshape(y, shape), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon,
                "beta_initializer": keras.initializers.serialize(self.beta_initializer),
                "gamma_initializer": keras.initializers.serialize(self.gamma_initializer)}
