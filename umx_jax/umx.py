"""Open-Unmix, one target (``openunmix.model.OpenUnmix`` of openunmix 1.3.0) as a Flax NNX module.

The network is frame-major inside, ``(nb_frames, nb_samples, ...)``; flatten orders are upstream's: the inputs of
``fc1`` are ``c * max_bin + f``, the outputs of ``fc3`` are ``c * nb_bins + f``. The spec is
``core_spec.reference.umx.open_unmix``; the mapping from upstream's state-dict names is in :mod:`umx_jax.weights`.

State (``nnx.state(model)``)::

    input_mean (max_bin,)  input_scale (max_bin,)  output_scale (nb_bins,)  output_mean (nb_bins,)
    fc1.kernel (C * max_bin, H)           bn1.{scale, bias, mean, var} (H,)
    lstm.layers.<k>.{kernel_ih (D, I, 4H'), kernel_hh (D, H', 4H'), bias (D, 4H')}
    fc2.kernel (2H, H)                    bn2.* (H,)
    fc3.kernel (H, C * nb_bins)           bn3.* (C * nb_bins,)

Dense kernels are ``(in, out)`` (Flax's layout, the transpose of PyTorch's). BatchNorm is :class:`BatchNorm1d`
(eps 1e-5): it runs on its stored statistics (``use_running_average=True``, the default) and, after
``model.train()``, on batch statistics with PyTorch's running update (momentum 0.1, unbiased running variance). The
LSTM is :class:`LSTM`: PyTorch's gate order ``i, f, g, o``, one folded bias ``b_ih + b_hh`` per direction, both
directions of a layer in one ``lax.scan``; dropout between layers (0.4, upstream's) acts only when a
``dropout_key`` is passed (training).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from core_spec.configs import UMXConfig
from core_spec.reference.umx import UMX_TRACE_KEYS

__all__ = ["LSTM", "UMX_TRACE_KEYS", "BatchNorm1d", "LSTMLayer", "OpenUnmix"]


def _uniform(rngs: nnx.Rngs, shape: tuple[int, ...], bound: float, dtype: Any) -> jax.Array:
    return jax.random.uniform(rngs.params(), shape, dtype, -bound, bound)


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


class LSTM(nnx.Module):
    """``torch.nn.LSTM(input_size, hidden_size, num_layers, bidirectional, dropout)``.

    ``x (T, B, input_size)`` -> ``(T, B, nb_directions * hidden_size)``. ``dropout`` is PyTorch's: on the outputs
    of every layer but the last, in training only; here it acts when :meth:`__call__` gets a ``dropout_key``.
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
            if dropout_key is not None and self.dropout > 0.0 and index < self.num_layers - 1:
                keep = jax.random.bernoulli(jax.random.fold_in(dropout_key, index), 1.0 - self.dropout, x.shape)
                x = jnp.where(keep, x / (1.0 - self.dropout), jnp.zeros((), x.dtype))
        return x


class BatchNorm1d(nnx.BatchNorm):
    """``torch.nn.BatchNorm1d`` over ``(N, features)`` (features last), in both modes.

    - ``use_running_average=True`` (eval, the default here): Flax's normalisation with the stored ``mean`` / ``var``.
    - ``use_running_average=False`` (after ``model.train()``): normalise with the batch mean and the *biased* batch
      variance over every axis but the last, and update the running statistics as PyTorch does:
      ``mean <- (1 - m) mean + m batch_mean``, ``var <- (1 - m) var + m * unbiased batch variance`` with ``m = 0.1``
      (Flax's ``momentum`` attribute is the decay ``1 - m = 0.9``). Flax's own train mode differs twice: it keeps
      the biased variance and computes it as ``E[x^2] - E[x]^2``. The statistics are those of the whole (global)
      batch, also when the batch is sharded over devices.
    """

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
        decay = self.momentum
        unbiased = var * (n / max(n - 1, 1))
        self.mean[...] = lax.stop_gradient(decay * self.mean[...] + (1.0 - decay) * mean)
        self.var[...] = lax.stop_gradient(decay * self.var[...] + (1.0 - decay) * unbiased)
        return y


def _batch_norm(features: int, dtype: Any, rngs: nnx.Rngs) -> BatchNorm1d:
    # PyTorch's BatchNorm1d: eps 1e-5, momentum 0.1 (Flax's momentum is the decay: 0.9); eval mode until .train()
    return BatchNorm1d(
        features, use_running_average=True, epsilon=1e-5, momentum=0.9, dtype=dtype, param_dtype=dtype, rngs=rngs
    )


def _torch_linear_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """PyTorch's ``nn.Linear`` init for a Flax kernel ``(in, out)``: uniform in ``+-1/sqrt(in)``."""
    bound = 1.0 / np.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _dense(fan_in: int, fan_out: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        fan_in, fan_out, use_bias=False, dtype=dtype, param_dtype=dtype, kernel_init=_torch_linear_init, rngs=rngs
    )


class OpenUnmix(nnx.Module):
    """Spectrogram model of one target: a mask on the mixture magnitude.

    Args (upstream's constructor arguments):
        nb_bins: STFT bins of the input (``n_fft // 2 + 1``).
        nb_channels: channels the network sees (2, or 1 for ``umxse``).
        hidden_size: width of the bottleneck (512 for ``umxhq``).
        nb_layers: LSTM layers.
        unidirectional: causal LSTM (``hidden_size`` units) instead of a bidirectional one (``hidden_size // 2``
            per direction).
        input_mean, input_scale: optional training statistics ``(nb_bins,)``; stored as ``-mean`` and
            ``1 / scale`` (upstream's convention), cropped to ``max_bin``.
        max_bin: bins the network reads (the bandwidth crop); ``None`` reads all.
        dtype: float32 or float64 (float64 needs ``jax.enable_x64``: see :func:`umx_jax.dtype_scope`).
        rngs: random initialisation (PyTorch's init scales); seed 0 if ``None``.
    """

    def __init__(
        self,
        nb_bins: int = 4096,
        nb_channels: int = 2,
        hidden_size: int = 512,
        nb_layers: int = 3,
        unidirectional: bool = False,
        input_mean: np.ndarray | None = None,
        input_scale: np.ndarray | None = None,
        max_bin: int | None = None,
        *,
        dtype: Any = jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.nb_output_bins = nb_bins
        self.nb_bins = max_bin or nb_bins
        self.nb_channels = nb_channels
        self.hidden_size = hidden_size
        self.nb_layers = nb_layers
        self.unidirectional = unidirectional
        self.max_bin = max_bin

        self.fc1 = _dense(self.nb_bins * nb_channels, hidden_size, dtype, rngs)
        self.bn1 = _batch_norm(hidden_size, dtype, rngs)
        self.lstm = LSTM(
            hidden_size,
            hidden_size if unidirectional else hidden_size // 2,
            nb_layers,
            bidirectional=not unidirectional,
            dropout=0.4 if nb_layers > 1 else 0.0,  # upstream's; acts in training only (see LSTM)
            dtype=dtype,
            rngs=rngs,
        )
        self.fc2 = _dense(2 * hidden_size, hidden_size, dtype, rngs)
        self.bn2 = _batch_norm(hidden_size, dtype, rngs)
        self.fc3 = _dense(hidden_size, self.nb_output_bins * nb_channels, dtype, rngs)
        self.bn3 = _batch_norm(self.nb_output_bins * nb_channels, dtype, rngs)

        mean = np.zeros(self.nb_bins) if input_mean is None else -np.asarray(input_mean)[: self.nb_bins]
        scale = np.ones(self.nb_bins) if input_scale is None else 1.0 / np.asarray(input_scale)[: self.nb_bins]
        self.input_mean = nnx.Param(jnp.asarray(mean, dtype))
        self.input_scale = nnx.Param(jnp.asarray(scale, dtype))
        self.output_scale = nnx.Param(jnp.ones(self.nb_output_bins, dtype))
        self.output_mean = nnx.Param(jnp.ones(self.nb_output_bins, dtype))

    @classmethod
    def from_config(cls, config: UMXConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs | None = None) -> OpenUnmix:
        """A model with the constructor arguments of ``config`` (weights: PyTorch-like random init)."""
        return cls(
            nb_bins=config.nb_bins,
            nb_channels=config.nb_channels,
            hidden_size=config.hidden_size,
            nb_layers=config.nb_layers,
            unidirectional=config.unidirectional,
            max_bin=config.max_bin,
            dtype=dtype,
            rngs=rngs,
        )

    @property
    def config(self) -> UMXConfig:
        """The :class:`core_spec.configs.UMXConfig` of this model."""
        return UMXConfig(
            nb_bins=self.nb_output_bins,
            nb_channels=self.nb_channels,
            hidden_size=self.hidden_size,
            nb_layers=self.nb_layers,
            unidirectional=self.unidirectional,
            max_bin=self.max_bin,
        )

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.fc1.kernel[...].dtype)

    def __call__(
        self, x: jax.Array, trace: dict[str, jax.Array] | None = None, *, dropout_key: jax.Array | None = None
    ) -> jax.Array:
        """Estimate the target magnitude.

        Args:
            x: mixture magnitude ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
            trace: if given, filled with the intermediate outputs named in :data:`UMX_TRACE_KEYS` (frame-major,
                ``(nb_frames * nb_samples, features)``; ``lstm``: ``(nb_frames, nb_samples, hidden_size)``).
                Inside ``jax.jit`` return the dict from the traced function to get arrays out.
            dropout_key: a ``jax.random`` key: apply the LSTM's dropout (training); ``None``: no dropout.

        Returns:
            ``(nb_samples, nb_channels, nb_bins, nb_frames)``: a non-negative mask times the uncropped input.
        """
        record: dict[str, jax.Array] = trace if trace is not None else {}
        h, mix = self.encode(x, record)
        y = record["lstm"] = self.lstm(h, dropout_key)
        return self.decode(h, y, mix, record)

    def encode(self, x: jax.Array, trace: dict[str, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
        """The layers before the LSTM: crop, standardise, ``fc1``, ``bn1``, ``tanh``.

        Args:
            x: mixture magnitude ``(nb_samples, nb_channels, nb_bins, nb_frames)``.

        Returns:
            ``(h, mix)``: the LSTM input ``(nb_frames, nb_samples, hidden_size)`` and the uncropped frame-major
            magnitude ``(nb_frames, nb_samples, nb_channels, nb_bins)`` that :meth:`decode` masks.
        """
        nb_samples, nb_channels, nb_bins, nb_frames = x.shape
        if nb_channels != self.nb_channels or nb_bins != self.nb_output_bins:
            raise ValueError(
                f"OpenUnmix expects (nb_samples, {self.nb_channels}, {self.nb_output_bins}, nb_frames), got {x.shape}"
            )
        record: dict[str, jax.Array] = trace if trace is not None else {}
        x = jnp.transpose(x, (3, 0, 1, 2))  # (T, B, C, F)
        mix = lax.stop_gradient(x)  # the uncropped magnitude, masked at the end (detached, as upstream)

        h = (x[..., : self.nb_bins] + self.input_mean[...]) * self.input_scale[...]
        h = record["fc1.input"] = h.reshape(nb_frames * nb_samples, nb_channels * self.nb_bins)
        h = record["fc1"] = self.fc1(h)
        h = record["bn1"] = self.bn1(h)
        return jnp.tanh(h).reshape(nb_frames, nb_samples, self.hidden_size), mix

    def decode(
        self, h: jax.Array, y: jax.Array, mix: jax.Array, trace: dict[str, jax.Array] | None = None
    ) -> jax.Array:
        """The layers after the LSTM: skip connection, ``fc2``, ``bn2``, ReLU, ``fc3``, ``bn3``, output scaling, mask.

        Args:
            h: the LSTM input ``(nb_frames, nb_samples, hidden_size)`` (the skip connection).
            y: the LSTM output ``(nb_frames, nb_samples, hidden_size)``.
            mix: the uncropped magnitude ``(nb_frames, nb_samples, nb_channels, nb_bins)``.

        Returns:
            ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        """
        record: dict[str, jax.Array] = trace if trace is not None else {}
        nb_frames, nb_samples, nb_channels, _ = mix.shape
        h = record["fc2.input"] = jnp.concatenate([h, y], axis=-1).reshape(-1, 2 * self.hidden_size)
        h = record["fc2"] = self.fc2(h)
        h = record["bn2"] = self.bn2(h)
        h = record["fc3.input"] = jax.nn.relu(h)
        h = record["fc3"] = self.fc3(h)
        h = record["bn3"] = self.bn3(h)

        h = h.reshape(nb_frames, nb_samples, nb_channels, self.nb_output_bins)
        mask = jax.nn.relu(h * self.output_scale[...] + self.output_mean[...])
        return jnp.transpose(mask * mix, (1, 2, 3, 0))
