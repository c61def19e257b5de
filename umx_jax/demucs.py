"""Demucs v2: the waveform model of demucs 2.0.3 (``demucs/model.py``) as a Flax NNX module.

Layer ``i`` of the encoder (``i = 0`` outermost) and layer ``j`` of the decoder (``j = 0`` deepest)::

    encoder.i = Conv1d(chin, ch, kernel_size, stride) -> ReLU -> [Conv1d(ch, 2ch, 1) -> GLU]        (rewrite)
    decoder.j = [Conv1d(ch, 2ch, context) -> GLU] -> ConvTranspose1d(ch, out, kernel_size, stride) -> ReLU
                                                                   (no ReLU on the outermost, j = depth - 1)
    lstm      = BLSTM: 2-layer bidirectional LSTM (hidden = input = deepest ch) -> Linear(2ch, ch)

The public interface is channel-first like upstream, ``(nb_samples, nb_channels, nb_timesteps)``; inside, the
model runs channels-last, ``(nb_samples, nb_timesteps, nb_channels)`` (Flax's ``nnx.Conv`` layout). The model
never pads: callers pad the mixture to :func:`valid_length` (:func:`umx_jax.apply.apply_model` does) and
:func:`center_trim` the output; every length change goes through :mod:`core_spec.shapes`. The spec is
``core_spec.reference.demucs.demucs``.

The layers are those of :mod:`umx_jax.layers` (the transposed convolution among them: a product and an overlap-add,
its kernel stored and used unflipped).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from core_spec import shapes
from core_spec.configs import DemucsConfig, config_from_arguments, constructor_kwargs
from core_spec.reference.demucs import DEMUCS_NORM_EPS, demucs_trace_keys
from core_spec.shapes import valid_length
from core_spec.trace import Recorder

from ._scope import device_of
from .layers import LSTM, ConvTranspose1d, conv1d, dense, glu
from .resample import resample_time_major

__all__ = ["BLSTM", "Demucs", "DecoderLayer", "EncoderLayer", "center_trim", "demucs_trace_keys", "valid_length"]


def center_trim(x: jax.Array, reference: jax.Array | int, axis: int = -1) -> jax.Array:
    """Keep the centre ``reference`` samples of ``axis`` (the odd extra sample goes on the right)."""
    length = reference.shape[axis] if hasattr(reference, "shape") else int(reference)
    start, stop = shapes.center_trim_bounds(x.shape[axis], length)
    return lax.slice_in_dim(x, start, stop, axis=axis)


def _channels_first(x: jax.Array) -> jax.Array:
    """channels-last ``(B, L, C)`` -> upstream's ``(B, C, L)`` (what a trace holds)."""
    return jnp.transpose(x, (0, 2, 1))


def _as_is(x: jax.Array) -> jax.Array:
    return x


class EncoderLayer(nnx.Module):
    """``encoder.i``: ``Conv1d(chin, ch, k, stride) -> ReLU -> [Conv1d(ch, 2ch, 1) -> GLU]``, channels-last."""

    def __init__(self, chin: int, ch: int, config: DemucsConfig, *, dtype: Any, rngs: nnx.Rngs):
        scale = 2 if config.glu else 1
        self.glu = config.glu
        self.conv = conv1d(chin, ch, config.kernel_size, config.stride, dtype, rngs)
        self.rewrite = conv1d(ch, scale * ch, 1, 1, dtype, rngs) if config.rewrite else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.conv(x))
        if self.rewrite is not None:
            x = self.rewrite(x)
            x = glu(x) if self.glu else jax.nn.relu(x)
        return x


class DecoderLayer(nnx.Module):
    """``decoder.j``: ``[Conv1d(ch, 2ch, context) -> GLU] -> ConvTranspose1d(ch, out, k, stride) -> [ReLU]``."""

    def __init__(self, ch: int, chout: int, config: DemucsConfig, relu: bool, *, dtype: Any, rngs: nnx.Rngs):
        scale = 2 if config.glu else 1
        self.glu = config.glu
        self.relu = relu
        self.rewrite = conv1d(ch, scale * ch, config.context, 1, dtype, rngs) if config.rewrite else None
        self.conv_tr = ConvTranspose1d(ch, chout, config.kernel_size, config.stride, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.rewrite is not None:
            x = self.rewrite(x)
            x = glu(x) if self.glu else jax.nn.relu(x)
        x = self.conv_tr(x)
        return jax.nn.relu(x) if self.relu else x


class BLSTM(nnx.Module):
    """demucs's ``BLSTM``: bidirectional LSTM over time, then ``Linear(2 dim, dim)``; channels-last."""

    def __init__(self, dim: int, layers: int, *, dtype: Any, rngs: nnx.Rngs):
        self.lstm = LSTM(dim, dim, layers, bidirectional=True, dtype=dtype, rngs=rngs)
        self.linear = dense(2 * dim, dim, dtype, rngs, use_bias=True)

    def __call__(self, x: jax.Array, keep: Recorder | None = None) -> jax.Array:
        """``(B, T, dim)`` -> ``(B, T, dim)``; ``keep("lstm.lstm")``: the raw states ``(T, B, 2 dim)``, upstream's
        layout already."""
        y = self.lstm(jnp.transpose(x, (1, 0, 2)))  # (T, B, 2 dim)
        if keep is not None:
            keep("lstm.lstm", y, convert=_as_is)
        return jnp.transpose(self.linear(y), (1, 0, 2))


class Demucs(nnx.Module):
    """Demucs v2 waveform source separation.

    Args: as ``demucs.model.Demucs`` of demucs 2.0.3 (and :class:`core_spec.configs.DemucsConfig`), plus
        ``dtype`` (float32 or float64; float64 needs ``jax.enable_x64``) and ``rngs`` (random init, seed 0 if
        ``None``).
    """

    def __init__(
        self,
        sources: Sequence[str],
        audio_channels: int = 2,
        channels: int = 64,
        depth: int = 6,
        rewrite: bool = True,
        glu: bool = True,
        rescale: float = 0.1,
        resample: bool = True,
        kernel_size: int = 8,
        stride: int = 4,
        growth: float = 2.0,
        lstm_layers: int = 2,
        context: int = 3,
        normalize: bool = False,
        samplerate: int = 44100,
        segment_length: int = 4 * 10 * 44100,
        *,
        dtype: Any = jnp.float32,
        rngs: nnx.Rngs | None = None,
    ):
        config = config_from_arguments(DemucsConfig, locals())
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self._config = config
        self.sources = config.sources
        self.audio_channels = audio_channels
        self.samplerate = samplerate
        self.segment_length = segment_length
        # other filters for the resamplings (hashable, static): see set_resample_kernels
        self._resample_kernels: tuple[tuple[str, tuple[tuple[float, ...], ...]], ...] = ()

        layers = config.layer_channels()
        self.encoder = nnx.List([EncoderLayer(chin, ch, config, dtype=dtype, rngs=rngs) for chin, ch in layers])
        decoder = []
        for index, (chin, ch) in reversed(list(enumerate(layers))):
            out = len(self.sources) * audio_channels if index == 0 else chin
            decoder.append(DecoderLayer(ch, out, config, relu=index > 0, dtype=dtype, rngs=rngs))
        self.decoder = nnx.List(decoder)
        self.lstm = BLSTM(layers[-1][1], lstm_layers, dtype=dtype, rngs=rngs) if lstm_layers else None

    @classmethod
    def from_config(cls, config: DemucsConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs | None = None) -> Demucs:
        """A model with the constructor arguments of ``config`` (weights: PyTorch-like random init of the kernels,
        biases zero, no ``rescale_module``)."""
        return cls(**constructor_kwargs(config), dtype=dtype, rngs=rngs)

    @property
    def config(self) -> DemucsConfig:
        """The :class:`core_spec.configs.DemucsConfig` of this model."""
        return self._config

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.encoder[0].conv.kernel[...].dtype)

    @property
    def device(self) -> jax.Device:
        """The device holding the parameters (where ``apply_model`` puts a track)."""
        return device_of(self)

    def valid_length(self, length: int) -> int:
        """Smallest input length ``>= length`` the model takes whole (:func:`core_spec.shapes.valid_length`)."""
        return shapes.valid_length(length, self._config)

    def compiled_call(self) -> Callable[[jax.Array], jax.Array]:
        """The network ``jax.jit``-compiled, once per input shape: what :func:`umx_jax.apply.apply_model` runs on
        each padded chunk ``(nb_samples, audio_channels, valid_length)``."""
        return partial(_compiled, self)

    def output_length(self, length: int) -> int:
        """Output length for an input of ``length`` samples (:func:`core_spec.shapes.output_length`)."""
        return shapes.output_length(length, self._config)

    def set_resample_kernels(self, kernels: dict[str, np.ndarray] | None) -> None:
        """Use other filters for the x2 resamplings: ``{"up": (2, taps), "down": (1, taps)}`` (``None``: the
        spec's float64 ones). The parity suite injects julius's float32-built kernels here."""
        self._resample_kernels = tuple(
            (name, tuple(tuple(float(c) for c in row) for row in np.asarray(value, dtype=np.float64)))
            for name, value in sorted((kernels or {}).items())
        )

    @property
    def resample_kernels(self) -> dict[str, np.ndarray]:
        """The filters set by :meth:`set_resample_kernels` (float64), by ``"up"`` / ``"down"``."""
        return {name: np.array(rows, dtype=np.float64) for name, rows in self._resample_kernels}

    def __call__(self, mix: jax.Array, trace: dict[str, jax.Array] | None = None) -> jax.Array:
        """Estimate the sources.

        Args:
            mix: ``(nb_samples, audio_channels, nb_timesteps)``, normally of length :meth:`valid_length`.
            trace: if given, filled with the intermediate outputs named by
                :func:`core_spec.reference.demucs.demucs_trace_keys`, in upstream's channel-first layouts.

        Returns:
            ``(nb_samples, nb_sources, audio_channels, output_length(nb_timesteps))``.
        """
        config = self._config
        if mix.ndim != 3 or mix.shape[1] != self.audio_channels:
            raise ValueError(f"Demucs expects (nb_samples, {self.audio_channels}, nb_timesteps), got {mix.shape}")
        self.output_length(mix.shape[-1])  # a clear error for inputs too short for the convolutions
        keep = Recorder(trace, demucs_trace_keys(config), convert=_channels_first)

        if config.normalize:
            mono = jnp.mean(mix, axis=1, keepdims=True)  # (B, 1, L)
            mean = jnp.mean(mono, axis=-1, keepdims=True)
            std = jnp.std(mono, axis=-1, keepdims=True, ddof=1)  # unbiased, as torch.std
            x = (mix - mean) / (DEMUCS_NORM_EPS + std)
        else:
            x = mix / (DEMUCS_NORM_EPS + 1.0)  # upstream divides by 1e-5 + 1 even without normalisation

        x = jnp.transpose(x, (0, 2, 1))  # (B, L, C)
        kernels = self.resample_kernels
        if config.resample:
            x = keep("resample.up", resample_time_major(x, 1, 2, kernels=kernels.get("up")))

        saved = []
        for index, encode in enumerate(self.encoder):
            x = keep(f"encoder.{index}", encode(x))
            saved.append(x)
        if self.lstm is not None:
            x = keep("lstm", self.lstm(x, keep))
        for index, decode in enumerate(self.decoder):
            x = x + center_trim(saved.pop(), x.shape[1], axis=1)  # a decoder never outgrows its encoder
            x = keep(f"decoder.{index}", decode(x))

        if config.resample:
            x = keep("resample.down", resample_time_major(x, 2, 1, kernels=kernels.get("down")))
        x = jnp.transpose(x, (0, 2, 1))  # (B, S * C, L)
        if config.normalize:
            x = x * std + mean
        return x.reshape(x.shape[0], len(self.sources), self.audio_channels, x.shape[-1])


# graph_updates=False: the network only reads its state (nnx.jit's default would return every parameter as an output)
@partial(nnx.jit, graph_updates=False)
def _compiled(model: Demucs, window: jax.Array) -> jax.Array:
    return model(window)
