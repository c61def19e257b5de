"""The building blocks of the two models (the spec is ``core_spec.reference.layers``), as Keras 3 layers.

==============================  ==========================================================================
spec (``reference.layers``)     here
==============================  ==========================================================================
``linear``                      ``keras.layers.Dense`` (Keras's own; ``kernel = weight.T``)
``batch_norm``                  :class:`TorchBatchNorm` (``keras.layers.BatchNormalization`` with PyTorch's
                                epsilon; inference is Keras's own)
``batch_norm_train``            :meth:`TorchBatchNorm.call` with ``training=True`` (PyTorch's running statistics)
``lstm``                        :class:`LSTM` (``keras.layers.LSTM`` with a faster loop), one layer each,
                                ``Bidirectional`` for two directions (:func:`lstm_layer`)
``glu``                         :class:`GLU`
``conv1d``                      ``keras.layers.Conv1D`` (Keras's own; kernel ``(k, in, out)``)
``conv_transpose1d``            ``keras.layers.Conv1DTranspose`` (Keras's own; kernel ``(k, out, in)``, no flip)
==============================  ==========================================================================

HTDemucs's shared blocks (after the extras below): :func:`gelu` (exact, erf), :class:`GroupNorm` (also the
cross-transformer's ``norm_out``).

Keras extras after them: PyTorch's default initialisers (:func:`torch_uniform`, :data:`TORCH_KERNEL_INIT`), the
XLA-compiled LSTM recurrence with its own backward loop (:func:`lstm_recurrence`), one ``torch.nn.LSTM`` layer
(:func:`lstm_layer`) and :class:`TracedCall` (``model(x, trace=dict)`` past Keras's argument copying).

Layouts are Keras's: features last, ``(nb_samples, nb_frames, features)``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from core_spec.reference.layers import NORM_EPS

__all__ = [
    "GLU",
    "LSTM",
    "GroupNorm",
    "TORCH_KERNEL_INIT",
    "TorchBatchNorm",
    "TracedCall",
    "gelu",
    "lstm_layer",
    "lstm_recurrence",
    "skip_init",
    "torch_kernel_init",
    "torch_uniform",
]


@keras.saving.register_keras_serializable(package="umx_tf")
class TorchBatchNorm(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` over the last axis that trains as ``torch.nn.BatchNorm1d``.

    Inference (``training=False``) is Keras's own. In training, the batch is normalised with its mean and *biased*
    variance (``(x - mean) / sqrt(var + eps) * gamma + beta``), and the running statistics move as PyTorch's:
    ``running = (1 - m) * running + m * batch_stat`` with ``m = 1 - momentum`` (``momentum=0.9`` here is
    PyTorch's 0.1) and the *unbiased* variance ``var * n / (n - 1)`` (``n``: values per channel). Keras's own
    layer puts the biased variance into its moving average.

    Under a ``tf.distribute`` strategy each replica normalises with its own batch statistics and the running
    statistics of the first replica are kept (``aggregation="only_first_replica"``), as DDP broadcasts rank 0's
    buffers.
    """

    def add_weight(self, *args: Any, **kwargs: Any) -> keras.Variable:
        if kwargs.get("name") in ("moving_mean", "moving_variance"):
            kwargs.setdefault("aggregation", "only_first_replica")
        return super().add_weight(*args, **kwargs)

    def call(self, inputs: tf.Tensor, training: bool | None = None, mask: Any = None) -> tf.Tensor:
        """``inputs`` ``(..., channels)``: normalised over every axis but the last."""
        if not (training and self.trainable) or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        x = tf.convert_to_tensor(inputs)
        axes = list(range(x.shape.rank - 1))
        mean = tf.reduce_mean(x, axis=axes)
        centred = x - mean
        n = tf.cast(tf.size(x) // tf.shape(x)[-1], x.dtype)
        squares = tf.reduce_sum(tf.square(centred), axis=axes)
        var = squares / n  # biased: normalises the batch
        unbiased = squares / (n - 1.0)  # goes into the running variance
        out = centred * tf.math.rsqrt(var + self.epsilon)
        if self.scale:
            out = out * tf.cast(self.gamma, x.dtype)
        if self.center:
            out = out + tf.cast(self.beta, x.dtype)
        rate = round(1.0 - self.momentum, 12)  # PyTorch's momentum (0.1)
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, unbiased)):
            old = tf.cast(moving, batch.dtype)
            moving.assign(tf.cast((1.0 - rate) * old + rate * tf.stop_gradient(batch), moving.dtype))
        return tf.cast(out, self.compute_dtype)


@keras.saving.register_keras_serializable(package="umx_tf")
class LSTM(layers.LSTM):
    """``keras.layers.LSTM`` (same weights, config and semantics) whose loop is faster on CPU.

    The input projection ``x @ kernel + bias`` of all steps is one matrix product, and the recurrence is one
    XLA-compiled loop (:func:`lstm_recurrence`) instead of Keras's generic per-step cell call (which also
    recomputes the input projection every step); its gradient is a second XLA-compiled loop, running backwards
    over the steps (with ``training=True`` the forward keeps what it needs). Used for ``tanh``/``sigmoid``
    without masks or recurrent dropout; anything else falls back to Keras's own loop. Gate order ``i, f, c, o`` =
    PyTorch's ``i, f, g, o``.
    """

    def inner_loop(self, sequences, initial_state, mask, training=False):
        cell = self.cell
        fast = (
            mask is None
            and not self.unroll
            and not (training and (cell.dropout or cell.recurrent_dropout))
            and cell.use_bias
            and cell.activation is keras.activations.tanh
            and cell.recurrent_activation is keras.activations.sigmoid
        )
        if not fast:
            return super().inner_loop(sequences, initial_state, mask, training)
        x = tf.reverse(sequences, [1]) if self.go_backwards else sequences  # Keras returns steps in loop order
        projected = tf.einsum("bti,ig->tbg", x, cell.kernel) + cell.bias  # (T, B, 4H)
        h0, c0 = (tf.cast(s, projected.dtype) for s in initial_state)
        kernel = tf.convert_to_tensor(cell.recurrent_kernel)
        outputs, h, c = lstm_recurrence(projected, kernel, h0, c0, training=bool(training))
        return h, tf.transpose(outputs, [1, 0, 2]), [h, c]


class GLU(layers.Layer):
    """Gated linear unit over the last (channel) axis: first half (value) times sigmoid of the second half
    (gate), as ``torch.nn.GLU(dim=1)`` in channels-first layout. A layer rather than ``Activation("glu")`` so
    that Keras knows it halves the channels when it builds the next layer."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return keras.activations.glu(x, axis=-1)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], input_shape[-1] // 2)


def torch_uniform(fan_in: int) -> keras.initializers.Initializer:
    """PyTorch's default init of linear and recurrent weights: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (zeros
    inside :func:`skip_init`)."""
    if _SKIP_INIT.get():
        return keras.initializers.Zeros()
    bound = 1.0 / np.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


# kaiming_uniform(a=sqrt(5)) of torch.nn.Linear / Conv1d: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in from the kernel
TORCH_KERNEL_INIT = {"scale": 1.0 / 3.0, "mode": "fan_in", "distribution": "uniform"}
"""PyTorch's default kernel initialisation as ``keras.initializers.VarianceScaling`` arguments: uniform in
``+-1/sqrt(fan_in)``."""

_SKIP_INIT: contextvars.ContextVar[bool] = contextvars.ContextVar("skip_init", default=False)


def torch_kernel_init() -> keras.initializers.Initializer:
    """A new :data:`TORCH_KERNEL_INIT` initialiser for a layer built now (zeros inside :func:`skip_init`).

    One instance per layer: an unseeded Keras initialiser takes its seed from Python's ``random`` when it is made and
    draws the same values for every kernel of a shape. A single module-level instance, made at import, gave kernels of
    equal shape equal initial values (5 pairs in ``demucs_unittest``) and a different model in every process for the
    same ``keras.utils.set_random_seed``; made here, after the seed is set, each layer has its own draws and a seeded
    build is the same in every process.
    """
    if _SKIP_INIT.get():
        return keras.initializers.Zeros()
    return keras.initializers.VarianceScaling(**TORCH_KERNEL_INIT)


@contextlib.contextmanager
def skip_init(enabled: bool = True) -> Iterator[None]:
    """Layers constructed inside get zero initialisers instead of random ones (``torch.nn.utils.skip_init``'s
    idea): for a model whose weights are assigned right after (``enabled=False``: a no-op). Drawing Demucs's
    265 M random numbers that are overwritten at once left ~200 MiB resident in the process."""
    token = _SKIP_INIT.set(enabled)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


def _lstm_step(recurrent_kernel: tf.Tensor, h: tf.Tensor, c: tf.Tensor, z: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """One LSTM step: ``(h, c, activated gates i|f|g|o)`` from the previous ``h, c`` and the projected input."""
    i, f, g, o = tf.split(z + tf.matmul(h, recurrent_kernel), 4, axis=-1)
    i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
    c = f * c + i * g
    return o * tf.tanh(c), c, tf.concat([i, f, g, o], axis=-1)


@tf.function(jit_compile=True, autograph=False)  # tf.scan: no Python control flow to convert
def _recurrence(projected: tf.Tensor, recurrent_kernel: tf.Tensor, h: tf.Tensor, c: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """Forward for inference: ``(hidden states (T, B, H), last h, last c)``."""

    def step(carry: tuple[tf.Tensor, tf.Tensor], z: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        h, c, _ = _lstm_step(recurrent_kernel, *carry, z)
        return h, c

    hs, cs = tf.scan(step, projected, initializer=(h, c))
    return hs, hs[-1], cs[-1]


@tf.function(jit_compile=True, autograph=False)  # tf.scan: no Python control flow to convert
def _recurrence_saved(
    projected: tf.Tensor, recurrent_kernel: tf.Tensor, h: tf.Tensor, c: tf.Tensor
) -> tuple[tf.Tensor, ...]:
    """Forward for training: every step's ``h (T, B, H)``, ``c (T, B, H)`` and activated gates ``(T, B, 4 H)``."""

    def step(carry: tuple[tf.Tensor, ...], z: tf.Tensor) -> tuple[tf.Tensor, ...]:
        return _lstm_step(recurrent_kernel, carry[0], carry[1], z)

    gates = tf.zeros_like(projected[0])
    return tf.scan(step, projected, initializer=(h, c, gates))


@tf.function(jit_compile=True, autograph=False)  # tf.scan: no Python control flow to convert
def _recurrence_backward(
    dhs: tf.Tensor,
    dh_last: tf.Tensor,
    dc_last: tf.Tensor,
    hs: tf.Tensor,
    cs: tf.Tensor,
    gates: tf.Tensor,
    recurrent_kernel: tf.Tensor,
    h0: tf.Tensor,
    c0: tf.Tensor,
) -> tuple[tf.Tensor, ...]:
    """Backpropagation through time, one XLA-compiled reverse loop.

    With ``dh`` the gradient reaching ``h_t`` (from the output and from step ``t + 1``) and ``dc`` that reaching
    ``c_t``: ``dc += dh o (1 - tanh(c_t)^2)``; the pre-activation gradients are ``dz = [dc g i (1 - i), dc c_{t-1}
    f (1 - f), dc i (1 - g^2), dh tanh(c_t) o (1 - o)]``; ``h_{t-1}`` receives ``dz W^T``, ``c_{t-1}`` receives
    ``dc f``. ``dz`` of every step is the projected input's gradient, and ``dW = sum_t h_{t-1}^T dz_t``.

    Returns:
        ``(d projected (T, B, 4 H), d recurrent_kernel (H, 4 H), d h0, d c0)``.
    """
    c_prev = tf.concat([c0[None], cs[:-1]], axis=0)

    def step(carry: tuple[tf.Tensor, ...], inputs: tuple[tf.Tensor, ...]) -> tuple[tf.Tensor, ...]:
        dh_next, dc_next, _ = carry
        dh_out, c, c_before, activated = inputs
        i, f, g, o = tf.split(activated, 4, axis=-1)
        dh = dh_out + dh_next
        tc = tf.tanh(c)
        dc = dc_next + dh * o * (1.0 - tc * tc)
        dz = tf.concat(
            [dc * g * i * (1.0 - i), dc * c_before * f * (1.0 - f), dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o)],
            axis=-1,
        )
        return tf.matmul(dz, recurrent_kernel, transpose_b=True), dc * f, dz

    initial = (dh_last, dc_last, tf.zeros_like(gates[0]))
    dh_prev, dc_prev, dz = tf.scan(step, (dhs, cs, c_prev, gates), initializer=initial, reverse=True)
    h_prev = tf.concat([h0[None], hs[:-1]], axis=0)
    d_kernel = tf.einsum("tbh,tbg->hg", h_prev, dz)
    return dz, d_kernel, dh_prev[0], dc_prev[0]


def _zeros_if_none(grad: tf.Tensor | None, like: tf.Tensor) -> tf.Tensor:
    return tf.zeros_like(like) if grad is None else grad


def _detached(*tensors: tf.Tensor) -> list[tf.Tensor]:
    """The inputs, cut from any recording tape: the compiled loops inside a custom gradient must not be recorded
    (TensorFlow would try to differentiate them itself)."""
    return [tf.stop_gradient(t) for t in tensors]


@tf.custom_gradient
def _lstm_inference(projected: tf.Tensor, recurrent_kernel: tf.Tensor, h: tf.Tensor, c: tf.Tensor):
    projected, recurrent_kernel, h, c = _detached(projected, recurrent_kernel, h, c)
    hs, h_last, c_last = _recurrence(projected, recurrent_kernel, h, c)

    def grad(dhs: tf.Tensor, dh_last: tf.Tensor, dc_last: tf.Tensor) -> tuple[tf.Tensor, ...]:
        hs2, cs, gates = _recurrence_saved(projected, recurrent_kernel, h, c)  # recomputed: nothing was kept
        return _recurrence_backward(
            _zeros_if_none(dhs, hs), _zeros_if_none(dh_last, h), _zeros_if_none(dc_last, c),
            hs2, cs, gates, recurrent_kernel, h, c,
        )  # fmt: skip

    return (hs, h_last, c_last), grad


@tf.custom_gradient
def _lstm_training(projected: tf.Tensor, recurrent_kernel: tf.Tensor, h: tf.Tensor, c: tf.Tensor):
    projected, recurrent_kernel, h, c = _detached(projected, recurrent_kernel, h, c)
    hs, cs, gates = _recurrence_saved(projected, recurrent_kernel, h, c)

    def grad(dhs: tf.Tensor, dh_last: tf.Tensor, dc_last: tf.Tensor) -> tuple[tf.Tensor, ...]:
        return _recurrence_backward(
            _zeros_if_none(dhs, hs), _zeros_if_none(dh_last, h), _zeros_if_none(dc_last, c),
            hs, cs, gates, recurrent_kernel, h, c,
        )  # fmt: skip

    return (hs, hs[-1], cs[-1]), grad


def lstm_recurrence(
    projected: tf.Tensor, recurrent_kernel: tf.Tensor, h: tf.Tensor, c: tf.Tensor, training: bool = False
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The LSTM recurrence over time, one XLA-compiled loop (traced once per shape and dtype, shared by every
    layer of that shape), differentiable through its own XLA-compiled backward loop.

    XLA cannot hand the loop's saved intermediates to TensorFlow's automatic gradient of ``tf.scan``, so the
    gradient is written out (:func:`_recurrence_backward`). With ``training`` the forward keeps every step's
    cell state and gates for it; without, it keeps nothing and the backward (if any) recomputes them.

    Args:
        projected: ``x_t @ kernel + bias`` of every step, ``(nb_frames, nb_samples, 4 H)``, gates ``i, f, c, o``.
        recurrent_kernel: ``(H, 4 H)``.
        h, c: initial states ``(nb_samples, H)``.
        training: keep the intermediates for a backward pass.

    Returns:
        ``(hidden states (nb_frames, nb_samples, H), last h, last c)``.
    """
    return (_lstm_training if training else _lstm_inference)(projected, recurrent_kernel, h, c)


def lstm_layer(units: int, bidirectional: bool, policy: Any, name: str) -> layers.Layer:
    """One layer of ``torch.nn.LSTM``: :class:`LSTM` (or ``Bidirectional(LSTM)``, outputs concatenated forward |
    backward), returning every step, sigmoid gates, PyTorch's uniform init."""
    init = torch_uniform(units)
    rnn = LSTM(
        units,
        return_sequences=True,
        recurrent_activation="sigmoid",
        kernel_initializer=init,
        recurrent_initializer=init,
        bias_initializer=init,
        unit_forget_bias=False,
        dtype=policy,
        name=name,
    )
    if not bidirectional:
        return rnn
    return layers.Bidirectional(rnn, merge_mode="concat", dtype=policy, name=f"bidirectional_{name}")


class TracedCall:
    """Mixin: ``layer(x, trace=dict)`` fills ``dict``.

    Keras's ``__call__`` maps every nested argument (dicts included) to a copy before ``call`` sees it, so a
    trace dict would stay empty. With ``trace`` given, the call goes straight to ``call`` (eagerly, for
    inspection); without it, through Keras as usual.
    """

    def __call__(self, *args: Any, trace: dict[str, tf.Tensor] | None = None, **kwargs: Any) -> Any:
        if trace is not None:
            return self.call(*args, trace=trace, **kwargs)
        return super().__call__(*args, **kwargs)


# --- HTDemucs's shared blocks (umx_tf.htdemucs_layers, umx_tf.htdemucs_transformer) ---------------------------


def gelu(x: tf.Tensor) -> tf.Tensor:
    """Exact GELU, ``x Phi(x) = x (1 + erf(x / sqrt 2)) / 2``, as ``torch.nn.functional.gelu``.

    Written out: ``tf.nn.gelu(approximate=False)`` is 5e-9 off in float64 (measured on [-5, 5] against SciPy's
    erf; ``tf.math.erf`` itself is exact to 4e-16), far outside the float64 rows."""
    return 0.5 * x * (1.0 + tf.math.erf(x * (1.0 / math.sqrt(2.0))))


class GroupNorm(layers.Layer):
    """``torch.nn.GroupNorm(groups, channels)`` on channels-last ``(B, ..., C)``: statistics per item over every
    axis but the batch, per group of ``C / groups`` contiguous channels; biased variance in two passes; eps 1e-5.
    With ``groups=1`` on tokens ``(B, T, C)`` it is the transformer's ``norm_out`` (over tokens x channels).

    Weights: ``gamma``, ``beta`` ``(C,)`` (upstream's ``weight``, ``bias``).
    """

    def __init__(self, channels: int, groups: int = 1, **kwargs: Any):
        super().__init__(**kwargs)
        if channels % groups:
            raise ValueError(f"GroupNorm: {groups} groups do not divide {channels} channels")
        self.groups = groups
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")
        self.built = True

    def call(self, x: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(x)
        c = x.shape[-1]
        grouped = tf.reshape(x, [shape[0], -1, self.groups, c // self.groups])
        mean = tf.reduce_mean(grouped, axis=[1, 3], keepdims=True)
        centred = grouped - mean
        var = tf.reduce_mean(tf.square(centred), axis=[1, 3], keepdims=True)
        y = tf.reshape(centred / tf.sqrt(var + NORM_EPS), shape)
        return y * self.gamma + self.beta
