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

The layers are those of :mod:`umx_jax.layers`: dense kernels ``(in, out)`` (Flax's layout, the transpose of
PyTorch's); :class:`~umx_jax.layers.BatchNorm1d` on its stored statistics (``use_running_average=True``, the
default) and, after ``model.train()``, on batch statistics with PyTorch's running update; the
:class:`~umx_jax.layers.LSTM` with PyTorch's gate order and one folded bias per direction, whose dropout between
layers (upstream's 0.4) acts only when a ``dropout_key`` is passed (training).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from core_spec.configs import UMXConfig, config_from_arguments, constructor_kwargs
from core_spec.reference.umx import UMX_TRACE_KEYS
from core_spec.trace import Recorder

from .layers import LSTM, BatchNorm1d, dense

__all__ = ["UMX_TRACE_KEYS", "OpenUnmix"]


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
        self._config = config_from_arguments(UMXConfig, locals())
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.nb_output_bins = nb_bins
        self.nb_bins = max_bin or nb_bins
        self.nb_channels = nb_channels
        self.hidden_size = hidden_size
        self.nb_layers = nb_layers
        self.unidirectional = unidirectional
        self.max_bin = max_bin

        self.fc1 = dense(self.nb_bins * nb_channels, hidden_size, dtype, rngs)
        self.bn1 = BatchNorm1d(hidden_size, dtype=dtype, rngs=rngs)
        self.lstm = LSTM(
            hidden_size,
            hidden_size if unidirectional else hidden_size // 2,
            nb_layers,
            bidirectional=not unidirectional,
            dropout=self._config.lstm_dropout,  # upstream's; acts in training only (see LSTM)
            dtype=dtype,
            rngs=rngs,
        )
        self.fc2 = dense(2 * hidden_size, hidden_size, dtype, rngs)
        self.bn2 = BatchNorm1d(hidden_size, dtype=dtype, rngs=rngs)
        self.fc3 = dense(hidden_size, self.nb_output_bins * nb_channels, dtype, rngs)
        self.bn3 = BatchNorm1d(self.nb_output_bins * nb_channels, dtype=dtype, rngs=rngs)

        mean = np.zeros(self.nb_bins) if input_mean is None else -np.asarray(input_mean)[: self.nb_bins]
        scale = np.ones(self.nb_bins) if input_scale is None else 1.0 / np.asarray(input_scale)[: self.nb_bins]
        self.input_mean = nnx.Param(jnp.asarray(mean, dtype))
        self.input_scale = nnx.Param(jnp.asarray(scale, dtype))
        self.output_scale = nnx.Param(jnp.ones(self.nb_output_bins, dtype))
        self.output_mean = nnx.Param(jnp.ones(self.nb_output_bins, dtype))

    @classmethod
    def from_config(cls, config: UMXConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs | None = None) -> OpenUnmix:
        """A model with the constructor arguments of ``config`` (weights: PyTorch-like random init of the kernels
        and LSTM biases; BatchNorm 1 / 0, statistics 0 / 1, scalings 1)."""
        return cls(**constructor_kwargs(config), dtype=dtype, rngs=rngs)

    @property
    def config(self) -> UMXConfig:
        """The :class:`core_spec.configs.UMXConfig` of this model."""
        return self._config

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
        h, mix = self.encode(x, trace)
        y = Recorder(trace, UMX_TRACE_KEYS)("lstm", self.lstm(h, dropout_key))
        return self.decode(h, y, mix, trace)

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
        keep = Recorder(trace, UMX_TRACE_KEYS)
        x = jnp.transpose(x, (3, 0, 1, 2))  # (T, B, C, F)
        mix = lax.stop_gradient(x)  # the uncropped magnitude, masked at the end (detached, as upstream)

        h = (x[..., : self.nb_bins] + self.input_mean[...]) * self.input_scale[...]
        h = keep("fc1.input", h.reshape(nb_frames * nb_samples, nb_channels * self.nb_bins))
        h = keep("fc1", self.fc1(h))
        h = keep("bn1", self.bn1(h))
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
        keep = Recorder(trace, UMX_TRACE_KEYS)
        nb_frames, nb_samples, nb_channels, _ = mix.shape
        h = keep("fc2.input", jnp.concatenate([h, y], axis=-1).reshape(-1, 2 * self.hidden_size))
        h = keep("fc2", self.fc2(h))
        h = keep("bn2", self.bn2(h))
        h = keep("fc3.input", jax.nn.relu(h))
        h = keep("fc3", self.fc3(h))
        h = keep("bn3", self.bn3(h))

        h = h.reshape(nb_frames, nb_samples, nb_channels, self.nb_output_bins)
        mask = jax.nn.relu(h * self.output_scale[...] + self.output_mean[...])
        return jnp.transpose(mask * mix, (1, 2, 3, 0))
