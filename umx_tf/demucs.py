"""Demucs v2: the waveform model of demucs 2.0.3 (``demucs/model.py``) as a Keras 3 model.

Layer ``i`` of the encoder (``i = 0`` outermost) and layer ``j`` of the decoder (``j = 0`` deepest), each a
``keras.Sequential`` whose indices are upstream's ``nn.Sequential`` slots::

    encoder[i] = Conv1D(ch, kernel_size, stride) -> ReLU -> [Conv1D(2ch, 1) -> GLU]                    (rewrite)
    decoder[j] = [Conv1D(2ch, context) -> GLU] -> Conv1DTranspose(out, kernel_size, stride) -> ReLU
                                                                    (no ReLU on the outermost, j = depth - 1)
    lstm       = BLSTM: 2-layer Bidirectional(LSTM(ch)) -> Dense(ch)

**Layout.** The public interface is upstream's, channels first: ``call`` takes ``(nb_samples, audio_channels,
nb_timesteps)`` and returns ``(nb_samples, nb_sources, audio_channels, nb_timesteps')``. Inside, the network runs
channels-last, ``(nb_samples, nb_timesteps, channels)``, the layout of Keras's ``Conv1D`` (the one TensorFlow's
CPU kernels are fastest in); it transposes once after the upsampling and once before the downsampling.

**Weights** (the mapping lives in :mod:`umx_tf.weights`): ``Conv1D`` kernel ``(k, in, out)`` = torch
``(out, in, k)`` transposed ``(2, 1, 0)``; ``Conv1DTranspose`` kernel ``(k, out, in)`` = torch's transposed-conv
weight ``(in, out, k)`` transposed ``(2, 1, 0)`` (TensorFlow's transposed convolution is the gradient of a
convolution, so no flip); GLU (:class:`~umx_tf.layers.GLU`) splits the last axis into value | gate
(``keras.activations.glu``, as ``torch.nn.GLU``); LSTM biases folded, ``bias = bias_ih + bias_hh``.

The model never pads: callers pad the mixture to :func:`valid_length` (``apply_model`` in
:mod:`umx_tf.apply` does) and :func:`center_trim` the output; every length change goes through
:mod:`core_spec.shapes`. The spec is ``core_spec.reference.demucs.demucs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from core_spec import shapes
from core_spec.configs import DemucsConfig, config_from_arguments, constructor_kwargs
from core_spec.reference.demucs import DEMUCS_NORM_EPS, demucs_trace_keys
from core_spec.shapes import valid_length
from core_spec.trace import Recorder

from .layers import GLU, TracedCall, lstm_layer, torch_kernel_init, torch_uniform
from .resample import resample_frac

__all__ = ["BLSTM", "Demucs", "center_trim", "decoder_layer", "demucs_trace_keys", "encoder_layer", "valid_length"]


def center_trim(tensor: tf.Tensor, reference: tf.Tensor | int, axis: int = -1) -> tf.Tensor:
    """Keep the centre ``reference`` samples of ``axis`` (the odd extra sample goes on the right).

    ``reference`` is a length or a tensor whose ``axis`` gives it; lengths must be static.
    """
    length = int(reference) if isinstance(reference, (int, np.integer)) else reference.shape[axis]
    start, stop = shapes.center_trim_bounds(tensor.shape[axis], length)
    index = [slice(None)] * tensor.shape.rank
    index[axis] = slice(start, stop)
    return tensor[tuple(index)]


def _conv(filters: int, kernel: int, policy: Any, strides: int = 1) -> layers.Conv1D:
    return layers.Conv1D(filters, kernel, strides=strides, kernel_initializer=torch_kernel_init(), dtype=policy)


def _activation(config: DemucsConfig, policy: Any) -> layers.Layer:
    """After the 1x1 (encoder) and ``context`` (decoder) convolutions: GLU or ReLU."""
    return GLU(dtype=policy) if config.glu else layers.ReLU(dtype=policy)


def encoder_layer(config: DemucsConfig, index: int, policy: Any) -> keras.Sequential:
    """``encoder.{index}``: ``(B, L, chin)`` -> ``(B, (L - kernel_size) // stride + 1, ch)``, channels-last; the
    slots are upstream's ``nn.Sequential``'s (``Conv1D``, ``ReLU`` [, ``Conv1D`` 1x1, GLU | ReLU])."""
    _, ch = config.layer_channels()[index]
    encode: list[layers.Layer] = [_conv(ch, config.kernel_size, policy, config.stride), layers.ReLU(dtype=policy)]
    if config.rewrite:
        encode += [_conv((2 if config.glu else 1) * ch, 1, policy), _activation(config, policy)]
    return keras.Sequential(encode, name=f"encoder_{index}")


def decoder_layer(config: DemucsConfig, index: int, policy: Any) -> keras.Sequential:
    """``decoder.{index}`` (0: the deepest): ``(B, L, ch)`` -> ``(B, (L - context) * stride + kernel_size, out)``
    (``context`` only with ``rewrite``), channels-last; slots [``Conv1D`` ``context``, GLU | ReLU,]
    ``Conv1DTranspose`` [, ``ReLU`` except on the outermost]."""
    level = config.depth - 1 - index  # the encoder layer it mirrors
    chin, ch = config.layer_channels()[level]
    out = len(config.sources) * config.audio_channels if level == 0 else chin
    decode: list[layers.Layer] = []
    if config.rewrite:
        decode += [_conv((2 if config.glu else 1) * ch, config.context, policy), _activation(config, policy)]
    decode.append(
        layers.Conv1DTranspose(
            out, config.kernel_size, strides=config.stride, kernel_initializer=torch_kernel_init(), dtype=policy
        )
    )
    if index < config.depth - 1:
        decode.append(layers.ReLU(dtype=policy))
    return keras.Sequential(decode, name=f"decoder_{index}")


def _channels_first(x: tf.Tensor) -> tf.Tensor:
    """``(B, L, C)`` -> ``(B, C, L)`` (the spec's trace layout)."""
    return tf.transpose(x, [0, 2, 1])


def _time_major(x: tf.Tensor) -> tf.Tensor:
    """``(B, T, C)`` -> ``(T, B, C)`` (the spec's layout of the raw LSTM states)."""
    return tf.transpose(x, [1, 0, 2])


class BLSTM(TracedCall, layers.Layer):
    """Bidirectional LSTM over time and a dense projection back to ``dim``: ``(B, T, dim)`` -> ``(B, T, dim)``.

    ``lstm[k]`` is layer ``k`` of upstream's ``nn.LSTM(bidirectional=True)``; ``linear`` its ``nn.Linear``.
    """

    def __init__(self, dim: int, layers: int = 1, **kwargs: Any):
        super().__init__(**kwargs)
        self.dim = dim
        policy = self.dtype_policy
        self.lstm = [lstm_layer(dim, True, policy, f"lstm_{k}") for k in range(layers)]
        self.linear = keras.layers.Dense(
            dim,
            kernel_initializer=torch_kernel_init(),
            bias_initializer=torch_uniform(2 * dim),
            dtype=policy,
            name="linear",
        )

    def build(self, input_shape: Any = None) -> None:
        for k, layer in enumerate(self.lstm):
            layer.build((None, None, self.dim if k == 0 else 2 * self.dim))
        self.linear.build((None, None, 2 * self.dim))
        self.built = True

    def call(self, x: tf.Tensor, training: bool = False, trace: Recorder | None = None) -> tf.Tensor:
        """``trace``: the Demucs's recorder, given when it records (``lstm.lstm``)."""
        for layer in self.lstm:
            x = layer(x, training=training)  # training: the recurrence keeps what its gradient needs
        if trace is not None:
            trace("lstm.lstm", x, _time_major)  # (T, B, 2 dim), as upstream's nn.LSTM output
        return self.linear(x)


@keras.saving.register_keras_serializable(package="umx_tf")
class Demucs(TracedCall, keras.Model):
    """Demucs v2 waveform source separation.

    Args: as ``demucs.model.Demucs`` of demucs 2.0.3 (and :class:`core_spec.configs.DemucsConfig`):
        sources: source names (``["drums", "bass", "other", "vocals"]`` for the released models).
        audio_channels: 2 (stereo) or 1.
        channels: channels of the outermost encoder layer (64 for ``demucs``, 48 for ``demucs48_hq``).
        depth: encoder/decoder layers.
        rewrite: 1x1 convolution in each encoder layer and a ``context`` convolution in each decoder layer.
        glu: GLU after those convolutions (else ReLU).
        rescale: weight rescaling at init in upstream (not applied here: load weights).
        resample: upsample the input x2 and downsample the output /2.
        kernel_size, stride, growth: convolution geometry and channel growth per layer.
        lstm_layers: layers of the bidirectional LSTM (0: none).
        context: kernel of the decoder's first convolution.
        normalize: standardise the mixture inside the model (unbiased std of the mono downmix).
        samplerate, segment_length: metadata used by ``apply_model`` (segment in samples).
        dtype: Keras dtype policy (``"float32"`` or ``"float64"``).
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
        **kwargs: Any,
    ):
        config = config_from_arguments(DemucsConfig, locals())
        super().__init__(**kwargs)
        self._config = config
        if kernel_size < stride:
            raise ValueError(f"kernel_size ({kernel_size}) < stride ({stride}) is not supported")
        self.sources = config.sources
        self.audio_channels = audio_channels
        self.depth = depth
        self.resample = resample
        self.normalize = normalize
        self.samplerate = samplerate
        self.segment_length = segment_length
        self.resample_kernels: dict[str, np.ndarray] = {}
        policy = self.dtype_policy
        encoder, decoder = [], []
        for index in range(depth):  # created in upstream's order: encoder i, then the decoder that mirrors it
            encoder.append(encoder_layer(config, index, policy))
            decoder.insert(0, decoder_layer(config, depth - 1 - index, policy))
        self.encoder = encoder
        self.decoder = decoder
        self.lstm = BLSTM(self._config.layer_channels()[-1][1], lstm_layers, dtype=policy) if lstm_layers else None
        self._compiled: dict[bool, Any] = {}
        self.build()

    def build(self, input_shape: Any = None) -> None:
        """Create every weight (the shapes follow from the constructor arguments; ``input_shape`` is ignored)."""
        for encode, (chin, _) in zip(self.encoder, self._config.layer_channels()):
            encode.build((None, None, chin))
        for index, decode in enumerate(self.decoder):
            decode.build((None, None, self._config.layer_channels()[self.depth - 1 - index][1]))
        if self.lstm is not None:
            self.lstm.build()
        self.built = True

    @classmethod
    def from_config(cls, config: DemucsConfig | dict, custom_objects: Any = None, dtype: Any = None) -> Demucs:
        """A model for a :class:`core_spec.configs.DemucsConfig` (weights: Keras's initialisers), or Keras's
        deserialisation from a :meth:`get_config` dict."""
        if isinstance(config, DemucsConfig):
            return cls(**constructor_kwargs(config), dtype=dtype)
        return super().from_config(config, custom_objects)

    def get_config(self) -> dict[str, Any]:
        base = super().get_config()
        return {**{k: base[k] for k in ("name", "dtype", "trainable") if k in base}, **constructor_kwargs(self._config)}

    @property
    def config(self) -> DemucsConfig:
        """The :class:`core_spec.configs.DemucsConfig` of this model."""
        return self._config

    def valid_length(self, length: int) -> int:
        """Smallest input length ``>= length`` the model takes whole (:func:`core_spec.shapes.valid_length`)."""
        return shapes.valid_length(length, self._config)

    def output_length(self, length: int) -> int:
        """Output length for an input of ``length`` samples (:func:`core_spec.shapes.output_length`)."""
        return shapes.output_length(length, self._config)

    def set_resample_kernels(self, kernels: Mapping[str, np.ndarray] | None) -> None:
        """Use other filters for the x2 resamplings: ``{"up": (2, taps), "down": (1, taps)}`` (``None``: the
        spec's float64 ones). The parity suite can inject julius's float32-built kernels here."""
        self.resample_kernels = {k: np.asarray(v, dtype=np.float64) for k, v in (kernels or {}).items()}
        self._compiled.clear()

    def call(self, mix: tf.Tensor, training: bool = False, trace: dict[str, tf.Tensor] | None = None) -> tf.Tensor:
        """Estimate the sources.

        Args:
            mix: ``(nb_samples, audio_channels, nb_timesteps)``, normally of length :meth:`valid_length`; the
                length must be static (known when traced).
            training: a training step follows (the network has no dropout or normalisation layer; the LSTM then
                keeps its intermediates for the gradient instead of recomputing them).
            trace: if given, filled with the intermediate outputs named by
                :func:`core_spec.reference.demucs.demucs_trace_keys`, in the spec's (channels-first) layouts.

        Returns:
            ``(nb_samples, nb_sources, audio_channels, output_length(nb_timesteps))``.
        """
        if mix.shape.rank != 3 or mix.shape[1] != self.audio_channels:
            raise ValueError(
                f"Demucs expects (nb_samples, {self.audio_channels}, nb_timesteps), got {tuple(mix.shape)}"
            )
        self.output_length(mix.shape[-1])  # a clear error for inputs too short for the convolutions
        keep = Recorder(trace, demucs_trace_keys(self._config))
        mix = tf.cast(mix, self.compute_dtype)

        if self.normalize:
            mono = tf.reduce_mean(mix, axis=1, keepdims=True)
            mean = tf.reduce_mean(mono, axis=-1, keepdims=True)
            n = tf.cast(mix.shape[-1], mix.dtype)
            std = tf.sqrt(tf.reduce_sum(tf.square(mono - mean), axis=-1, keepdims=True) / (n - 1))  # unbiased
            x = (mix - mean) / (DEMUCS_NORM_EPS + std)
        else:
            x = mix / (DEMUCS_NORM_EPS + 1.0)  # upstream divides by 1e-5 + 1 even without normalisation

        if self.resample:
            x = keep("resample.up", resample_frac(x, 1, 2, kernels=self.resample_kernels.get("up")))

        x = tf.transpose(x, [0, 2, 1])  # channels-last from here on: (B, L, C)
        saved = []
        for index, encode in enumerate(self.encoder):
            x = keep(f"encoder.{index}", encode(x), _channels_first)
            saved.append(x)
        if self.lstm is not None:
            x = keep("lstm", self.lstm(x, training=training, trace=keep if keep.active else None), _channels_first)
        for index, decode in enumerate(self.decoder):
            skip = center_trim(saved.pop(), x, axis=1)  # a decoder never outgrows its encoder
            x = keep(f"decoder.{index}", decode(x + skip), _channels_first)
        x = tf.transpose(x, [0, 2, 1])  # (B, S * C, L')

        if self.resample:
            x = keep("resample.down", resample_frac(x, 2, 1, kernels=self.resample_kernels.get("down")))
        if self.normalize:
            x = x * std + mean
        return tf.reshape(x, [-1, len(self.sources), self.audio_channels, x.shape[-1]])

    def compiled_call(self, jit_compile: bool | None = None) -> Any:
        """``call`` as a ``tf.function`` (traced once per input shape), XLA-compiled when ``jit_compile``.

        ``None`` chooses XLA when no GPU is visible (measured faster on CPU by ``benchmarks/bench_tf.py``, a per-port
        script since replaced by ``python -m benchmarks``; on a GPU the plain graph is used, the LSTM recurrences being
        XLA-compiled either way).
        """
        if jit_compile is None:
            jit_compile = not tf.config.list_logical_devices("GPU")
        fn = self._compiled.get(jit_compile)
        if fn is None:
            # no AutoGraph (as umx_tf.separator): plain Python control flow on static shapes only
            fn = self._compiled[jit_compile] = tf.function(
                lambda mix: self(mix), jit_compile=jit_compile, autograph=False
            )
        return fn
