"""The layers both networks are made of, as Flax NNX modules and pure JAX functions, with PyTorch's semantics.

The spec is ``core_spec.reference.layers``; this module follows its order (lessons ``umx.layers``, ``lstm``,
``demucs.conv`` of the book):

- :func:`dense`: ``torch.nn.Linear`` as an ``nnx.Linear`` (kernel ``(in, out)``, Flax's layout, the transpose of
  PyTorch's), PyTorch's init;
- :class:`BatchNorm1d`: ``torch.nn.BatchNorm1d`` (eps 1e-5, momentum 0.1) in eval mode (stored statistics) and,
  after ``model.train()``, in train mode with PyTorch's running update;
- :class:`LSTM`: ``torch.nn.LSTM``: PyTorch's gate order ``i, f, g, o``, one folded bias ``b_ih + b_hh`` per
  direction, both directions of a layer in one ``lax.scan`` (:class:`LSTMLayer`), the recurrence differentiated by
  hand (:func:`lstm_recurrence`, a ``jax.custom_vjp``); dropout between layers only when a ``dropout_key`` is
  passed (training);
- :func:`glu`, :func:`conv1d` (``torch.nn.Conv1d`` as an ``nnx.Conv``, channels-last, kernel ``(k, in, out)``) and
  :func:`conv_transpose1d` (``torch.nn.functional.conv_transpose1d``, the layer :class:`ConvTranspose1d`).

Transposed convolution: PyTorch's ``ConvTranspose1d`` scatters ``x[t] W[:, :, k]`` to output ``t * stride + k``.
:func:`conv_transpose1d` spells exactly that out: one matrix product gives every input step's ``kernel_size``
output samples, and an overlap-add of ``stride``-sample blocks places them. The kernel is stored unflipped,
``(kernel_size, in, out)`` with ``kernel[k, i, o] = weight[i, o, k]``, and is never flipped. (The same operation is
a convolution of the input dilated by ``stride`` with the kernel flipped in time; beware that
``lax.conv_transpose`` does not flip by default. XLA's CPU backend differentiates that convolution several times
more slowly than the product, which matters for training.)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from core_spec.reference.layers import BATCH_NORM_EPS, BATCH_NORM_MOMENTUM

__all__ = [
    "BATCH_NORM_EPS",
    "BATCH_NORM_MOMENTUM",
    "LSTM",
    "BatchNorm1d",
    "ConvTranspose1d",
    "LSTMLayer",
    "conv1d",
    "conv_transpose1d",
    "dense",
    "dropout",
    "glu",
    "lstm_recurrence",
    "torch_conv_init",
    "torch_linear_init",
]


def dense(fan_in: int, fan_out: int, dtype: Any, rngs: nnx.Rngs, use_bias: bool = False) -> nnx.Linear:
    """``torch.nn.Linear(fan_in, fan_out, bias=use_bias)``: ``x (..., fan_in) -> x @ kernel (+ bias)``, kernel
    ``(fan_in, fan_out)`` (PyTorch's weight transposed), PyTorch's init (:func:`torch_linear_init`, bias zeros)."""
    return nnx.Linear(
        fan_in, fan_out, use_bias=use_bias, dtype=dtype, param_dtype=dtype, kernel_init=torch_linear_init, rngs=rngs
    )


class BatchNorm1d(nnx.BatchNorm):
    """``torch.nn.BatchNorm1d(num_features)`` over ``(N, features)`` (features last), in both modes.

    State: ``scale``, ``bias`` (``nnx.Param``), ``mean``, ``var`` (``nnx.BatchStat``), each ``(num_features,)``.

    - ``use_running_average=True`` (eval, the default here): Flax's normalisation with the stored ``mean`` / ``var``.
    - ``use_running_average=False`` (after ``model.train()``): normalise with the batch mean and the *biased* batch
      variance over every axis but the last, and update the running statistics as PyTorch does:
      ``mean <- (1 - m) mean + m batch_mean``, ``var <- (1 - m) var + m * unbiased batch variance`` with ``m = 0.1``
      (Flax's ``momentum`` attribute is the decay ``1 - m = 0.9``). Flax's own train mode differs twice: it keeps
      the biased variance and computes it as ``E[x^2] - E[x]^2``. The statistics are those of the whole (global)
      batch, also when the batch is sharded over devices.
    """

    def __init__(self, num_features: int, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        # PyTorch's eps and momentum (Flax's momentum is the decay 1 - m); eval mode until .train()
        super().__init__(
            num_features,
            use_running_average=True,
            epsilon=BATCH_NORM_EPS,
            momentum=1.0 - BATCH_NORM_MOMENTUM,
            dtype=dtype,
            param_dtype=dtype,
            rngs=rngs,
        )

    def __call__(
        self, x: jax.Array, use_running_average: bool | None = None, *, mask: jax.Array | None = None
    ) -> jax.Array:
        running = self.use_running_average if use_running_average is None else use_running_average
        if running or mask is not None:
            return super().__call__(x, use_running_average=running, mask=mask)
        features = x.shape[-1]
        flat = x.reshape(-1, features)
        n = flat.shape[0]
        mean = jnp.mean(flat, axis=0)
        var = jnp.mean(jnp.square(flat - mean), axis=0)  # biased: what the normalisation uses
        y = (x - mean) * lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
        decay = self.momentum  # 1 - decay is 0.09999999999999998, not BATCH_NORM_MOMENTUM: kept as it was
        unbiased = var * (n / max(n - 1, 1))
        self.mean[...] = lax.stop_gradient(decay * self.mean[...] + (1.0 - decay) * mean)
        self.var[...] = lax.stop_gradient(decay * self.var[...] + (1.0 - decay) * unbiased)
        return y


class LSTM(nnx.Module):
    """``torch.nn.LSTM(input_size, hidden_size, num_layers, bidirectional, dropout)``.

    ``x (T, B, input_size)`` -> ``(T, B, nb_directions * hidden_size)``. ``dropout`` is PyTorch's: on the outputs
    of every layer but the last, in training only; here it acts when :meth:`__call__` gets a ``dropout_key``.
    State: ``layers.<k>`` (:class:`LSTMLayer`).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        *,
        dtype: Any = jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        d = 2 if bidirectional else 1
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.dropout = float(dropout)
        self.layers = nnx.List(
            [
                LSTMLayer(input_size if k == 0 else d * hidden_size, hidden_size, d, dtype=dtype, rngs=rngs)
                for k in range(num_layers)
            ]
        )

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        """``x (T, B, I)`` -> ``(T, B, D * H)``; with ``dropout_key`` (and ``dropout > 0``), inverted dropout of
        rate ``dropout`` on the outputs of every layer but the last (PyTorch's training mode)."""
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if dropout_key is not None and index < self.num_layers - 1:
                x = dropout(x, self.dropout, jax.random.fold_in(dropout_key, index))
        return x


def glu(x: jax.Array, axis: int = -1) -> jax.Array:
    """Gated linear unit: first half of ``axis`` (value) times the sigmoid of the second half (gate)."""
    value, gate = jnp.split(x, 2, axis=axis)
    return value * jax.nn.sigmoid(gate)


def conv1d(chin: int, chout: int, kernel_size: int, stride: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Conv:
    """``torch.nn.Conv1d(chin, chout, kernel_size, stride)`` (padding 0) as an ``nnx.Conv``, channels-last:
    ``(B, L, chin) -> (B, (L - kernel_size) // stride + 1, chout)``; kernel ``(kernel_size, chin, chout)``
    (PyTorch's ``(out, in, k)`` transposed), PyTorch's init for the kernel (:func:`torch_conv_init`), bias zeros."""
    return nnx.Conv(
        chin,
        chout,
        kernel_size=(kernel_size,),
        strides=(stride,),
        padding="VALID",
        dtype=dtype,
        param_dtype=dtype,
        kernel_init=torch_conv_init,
        bias_init=nnx.initializers.zeros_init(),
        rngs=rngs,
    )


def conv_transpose1d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """``torch.nn.functional.conv_transpose1d`` with padding 0, channels-last, without bias.

    Args:
        x: ``(nb_samples, length, in_channels)``.
        kernel: ``(kernel_size, in_channels, out_channels)``, unflipped: ``kernel[k, i, o]`` is PyTorch's
            ``weight[i, o, k]``.

    Returns:
        ``(nb_samples, (length - 1) * stride + kernel_size, out_channels)``: ``y[t * stride + k] += x[t] @ kernel[k]``.

    The kernel is zero-padded to ``nb_blocks * stride`` taps (``nb_blocks = ceil(kernel_size / stride)``); input step
    ``t`` then writes its block ``j`` (taps ``j * stride ...``) into output block ``t + j``: a product and
    ``nb_blocks`` shifted additions (two for Demucs' kernel 8, stride 4), whose gradients are products too.
    """
    size, _, out_channels = kernel.shape
    nb_blocks = -(-size // stride)
    if nb_blocks * stride != size:
        kernel = jnp.pad(kernel, ((0, nb_blocks * stride - size), (0, 0), (0, 0)))
    nb_samples, length, _ = x.shape
    taps = jnp.einsum("bti,kio->btko", x, kernel).reshape(nb_samples, length, nb_blocks, stride, out_channels)
    y = jnp.zeros((nb_samples, length + nb_blocks - 1, stride, out_channels), taps.dtype)
    for j in range(nb_blocks):
        y = y.at[:, j : j + length].add(taps[:, :, j])
    y = y.reshape(nb_samples, (length + nb_blocks - 1) * stride, out_channels)
    return y[:, : (length - 1) * stride + size]


# --- the framework's extras: the LSTM layer and its recurrence, PyTorch's inits, the transposed-convolution layer


def _uniform(rngs: nnx.Rngs, shape: tuple[int, ...], bound: float, dtype: Any) -> jax.Array:
    return jax.random.uniform(rngs.params(), shape, dtype, -bound, bound)


class LSTMLayer(nnx.Module):
    """One layer of a (bidirectional) LSTM, PyTorch semantics, directions stacked on the leading axis.

    Parameters (``D`` directions, input ``I``, hidden ``H``; gate blocks ``[i | f | g | o]`` of ``H`` columns):
    ``kernel_ih (D, I, 4H)`` = ``weight_ih.T``, ``kernel_hh (D, H, 4H)`` = ``weight_hh.T``,
    ``bias (D, 4H)`` = ``bias_ih + bias_hh`` (folded).
    """

    def __init__(
        self, input_size: int, hidden_size: int, nb_directions: int, *, dtype: Any = jnp.float32, rngs: nnx.Rngs
    ):
        bound = 1.0 / np.sqrt(hidden_size)  # PyTorch's init
        d, h = nb_directions, hidden_size
        self.hidden_size = hidden_size
        self.nb_directions = nb_directions
        self.kernel_ih = nnx.Param(_uniform(rngs, (d, input_size, 4 * h), bound, dtype))
        self.kernel_hh = nnx.Param(_uniform(rngs, (d, h, 4 * h), bound, dtype))
        self.bias = nnx.Param(_uniform(rngs, (d, 4 * h), bound, dtype) + _uniform(rngs, (d, 4 * h), bound, dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (T, B, I)`` -> ``(T, B, D * H)``: forward and backward states concatenated per step.

        Zero initial state. The backward direction runs over the reversed sequence in the same scan as the
        forward one (a batched matmul per step, :func:`lstm_recurrence`) and its outputs are reversed back.
        """
        xs = jnp.stack([x, jnp.flip(x, axis=0)]) if self.nb_directions == 2 else x[None]  # (D, T, B, I)
        # input projection of every step and direction at once (with the folded bias): (T, D, B, 4H)
        proj = jnp.einsum("dtbi,dig->tdbg", xs, self.kernel_ih[...]) + self.bias[...][None, :, None, :]
        hs = lstm_recurrence(proj, self.kernel_hh[...])  # (T, D, B, H)
        if self.nb_directions == 2:
            return jnp.concatenate([hs[:, 0], jnp.flip(hs[:, 1], axis=0)], axis=-1)
        return hs[:, 0]


def _cell(gates: jax.Array, cell: jax.Array) -> tuple[jax.Array, jax.Array, tuple[jax.Array, ...]]:
    """One LSTM step from its pre-activations ``gates (..., 4H)`` (blocks ``[i | f | g | o]``) and the previous cell:
    ``(hidden, cell, (i, f, g, o))``."""
    h = gates.shape[-1] // 4
    i = jax.nn.sigmoid(gates[..., 0 * h : 1 * h])
    f = jax.nn.sigmoid(gates[..., 1 * h : 2 * h])
    g = jnp.tanh(gates[..., 2 * h : 3 * h])
    o = jax.nn.sigmoid(gates[..., 3 * h : 4 * h])
    cell = f * cell + i * g
    return o * jnp.tanh(cell), cell, (i, f, g, o)


def _recurrence_scan(proj: jax.Array, kernel_hh: jax.Array, keep: bool) -> tuple[jax.Array, Any]:
    def step(carry: tuple[jax.Array, jax.Array], gates_x: jax.Array) -> tuple[tuple[jax.Array, jax.Array], Any]:
        hidden, cell = carry  # (D, B, H)
        hidden, cell, acts = _cell(gates_x + jnp.einsum("dbh,dhg->dbg", hidden, kernel_hh), cell)
        return (hidden, cell), ((hidden, cell, acts) if keep else hidden)

    zeros = jnp.zeros(proj.shape[1:3] + (kernel_hh.shape[1],), proj.dtype)
    return lax.scan(step, (zeros, zeros), proj)[1]


@jax.custom_vjp
def lstm_recurrence(proj: jax.Array, kernel_hh: jax.Array) -> jax.Array:
    """The recurrent part of an LSTM layer, zero initial state.

    Args:
        proj: the input projections with the bias, ``(T, D, B, 4H)`` (gate blocks ``[i | f | g | o]``).
        kernel_hh: ``(D, H, 4H)``.

    Returns:
        the hidden states ``(T, D, B, H)``: ``gates_t = proj_t + h_{t-1} kernel_hh``.

    Differentiated with a hand-written backward pass (``jax.custom_vjp``): a reverse scan yields the gates'
    gradients of every step, and the kernel's gradient is then one product over all steps,
    ``sum_t h_{t-1}^T dgates_t``, instead of an update of the whole kernel inside every step (what autodiff of the
    scan does; measured ~2x slower on CPU). The forward computation is the same scan either way.
    """
    return _recurrence_scan(proj, kernel_hh, keep=False)


def _lstm_recurrence_fwd(proj: jax.Array, kernel_hh: jax.Array) -> tuple[jax.Array, Any]:
    hs, cs, acts = _recurrence_scan(proj, kernel_hh, keep=True)
    return hs, (hs, cs, acts, kernel_hh)


def _lstm_recurrence_bwd(residuals: Any, d_hs: jax.Array) -> tuple[jax.Array, jax.Array]:
    hs, cs, (i, f, g, o), kernel_hh = residuals
    zeros = jnp.zeros_like(hs[:1])
    h_prev = jnp.concatenate([zeros, hs[:-1]])
    c_prev = jnp.concatenate([zeros, cs[:-1]])
    tanh_c = jnp.tanh(cs)

    def step(carry: tuple[jax.Array, jax.Array], xs: tuple[jax.Array, ...]) -> tuple[Any, jax.Array]:
        dh_next, dc_next = carry  # what step t + 1 sends back to h_t and c_t
        d_out, i_t, f_t, g_t, o_t, tc_t, cp_t = xs
        dh = d_out + dh_next
        dc = dc_next + dh * o_t * (1 - tc_t * tc_t)
        d_gates = jnp.concatenate(
            [dc * g_t * i_t * (1 - i_t), dc * cp_t * f_t * (1 - f_t), dc * i_t * (1 - g_t * g_t),
             dh * tc_t * o_t * (1 - o_t)],
            axis=-1,
        )  # fmt: skip
        return (jnp.einsum("dbg,dhg->dbh", d_gates, kernel_hh), dc * f_t), d_gates

    start = (jnp.zeros_like(hs[0]), jnp.zeros_like(hs[0]))
    _, d_gates = lax.scan(step, start, (d_hs, i, f, g, o, tanh_c, c_prev), reverse=True)  # (T, D, B, 4H)
    return d_gates, jnp.einsum("tdbh,tdbg->dhg", h_prev, d_gates)


lstm_recurrence.defvjp(_lstm_recurrence_fwd, _lstm_recurrence_bwd)


def torch_linear_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """PyTorch's ``nn.Linear`` init for a Flax kernel ``(in, out)``: uniform in ``+-1/sqrt(in)``."""
    bound = 1.0 / np.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_conv_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """PyTorch's default init for a ``(k, in, out)`` kernel: uniform in ``+-1/sqrt(k * in)``."""
    bound = 1.0 / np.sqrt(shape[0] * shape[1])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class ConvTranspose1d(nnx.Module):
    """``torch.nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride)`` (padding 0), channels-last.

    State: ``kernel (kernel_size, in, out)`` (unflipped, see :func:`conv_transpose1d`), ``bias (out,)`` (zeros at
    init; PyTorch's init for the kernel).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *, dtype: Any, rngs: nnx.Rngs
    ):
        self.stride = stride
        bound = 1.0 / np.sqrt(out_channels * kernel_size)  # PyTorch: fan_in of (in, out, k) is out * k
        key = rngs.params()
        self.kernel = nnx.Param(jax.random.uniform(key, (kernel_size, in_channels, out_channels), dtype, -bound, bound))
        self.bias = nnx.Param(jnp.zeros((out_channels,), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(B, L, in)`` -> ``(B, (L - 1) * stride + kernel_size, out)``."""
        return conv_transpose1d(x, self.kernel[...], self.stride) + self.bias[...]


def dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Inverted dropout (``torch.nn.functional.dropout`` in training): each element of ``x`` zeroed with probability
    ``rate``, the others scaled by ``1 / (1 - rate)``; ``x`` itself for a rate of 0, zeros for a rate of 1. The LSTM's
    between layers and HTDemucs's cross-transformer use it.

    The mask compares 16-bit draws with ``round(rate * 2**16)``, two draws from each 32-bit word of
    ``jax.random.bits(key)``: half the random numbers of ``jax.random.bernoulli``, whose cost is per number on the
    CPU (XLA's generator, about 5 ns each whatever their width). An HTDemucs training step (7.8 s, batch 1, the
    attention weights' masks 8 x 2688 x 2688 per frequency self-attention layer) goes from 10.3-11.1 to 9.0-9.6 s.
    The rate is then a multiple of ``2**-16`` (0.02 drops with probability 0.0200043), as PyTorch's fused attention
    kernels round theirs to 8 bits.
    """
    if rate == 0:
        return x
    if rate >= 1:
        return jnp.zeros_like(x)
    size = int(np.prod(x.shape))
    words = jax.random.bits(key, ((size + 1) // 2,), jnp.uint32)
    draws = lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:size].reshape(x.shape)
    threshold = min(round(rate * 2**16), 2**16 - 1)
    keep = draws >= np.uint16(threshold)  # P(keep) = 1 - threshold / 2**16
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros((), x.dtype))
