"""HTDemucs (Hybrid Transformer Demucs, demucs 4.x) as a Keras 3 model, eval mode: ``demucs.htdemucs.HTDemucs`` of
demucs 4.1.0.

Two U-Nets that meet in the middle, one on the spectrogram and one on the waveform, summed at the end::

    mix (B, C, L) -- right zero-pad to the training length L_t (343 980 samples: 7.8 s at 44.1 kHz)
      |-- spec -> complex as channels (B, 2C, F, T) --normalise--> x        (B, F, T, 2C) channels-last
      |       encoder.0 .. encoder.{depth-1}      + 0.2 freq_emb after encoder.0
      |-- normalise --> xt                                                  (B, L_t, C)
      |       tencoder.0 .. tencoder.{depth-1}
      |   channel_upsampler(_t)    1x1 to the transformer's width (bottom_channels, when set)
      |   crosstransformer         freq tokens (t1 fr) and time tokens, self and cross attention layers
      |   channel_downsampler(_t)  1x1 back
      |       decoder.0 .. decoder.{depth-1}    + skip of encoder.{depth-1-j}   -> (B, F, T, S 2C)
      |       tdecoder.0 .. tdecoder.{depth-1}  + skip of tencoder.{depth-1-j}  -> (B, L_t, S C)
      |-- de-normalise; the freq branch read back as complex -> ispec -> (B, S, C, L_t)
    out = ispec(freq branch) + time branch, cropped to L                     (B, S, C, L)

The spec is :func:`core_spec.reference.htdemucs.htdemucs`; the layers are :mod:`umx_tf.htdemucs_layers`, the
transformer :mod:`umx_tf.htdemucs_transformer`, the spectrogram and normalisation :mod:`umx_tf.htdemucs_spec`,
the embeddings and 1x1 samplers :mod:`umx_tf.htdemucs_embed`. Inside, both branches run channels-last (Keras's
layout, NHWC for the frequency branch); the public interface and the trace are channel-first, in the spec's layouts.

The input statistics are computed in two passes (:func:`umx_tf.htdemucs_spec.normalise_input`), the way the spec
does; torch's float64 ``std`` is 1.3e-11 off the exact value at the released length, so parity tests inject
upstream's (``stats``), as they may inject its STFT ``window``. The training-segment rule
(:func:`core_spec.reference.htdemucs.htdemucs_valid_length`): with ``use_train_segment`` the network runs at
exactly ``config.segment_samples`` samples (shorter inputs zero-padded on the right, the output cropped back);
longer inputs are an error. The training-mode forward (``training=True``, upstream's ``model.train()``) runs the
network at the input's own length instead: no padding, ``ispec`` at ``L``, any ``L``; and with the transformer's
dropout (``t_dropout``), which the eval forward never applies.

Lengths are static (known when traced). :func:`forward` is the compiled call (``tf.function``, no AutoGraph: the
Python control flow runs once per trace; XLA on request, :meth:`HTDemucs.compiled_call` has the measured choice).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import keras
import tensorflow as tf

from core_spec.configs import HTDemucsConfig, config_from_arguments, constructor_kwargs
from core_spec.reference.htdemucs import htdemucs_trace_keys, htdemucs_valid_length
from core_spec.reference.htdemucs_layers import decoder_layers, encoder_layers
from core_spec.trace import Recorder

from .htdemucs_embed import ScaledEmbedding, channel_conv1x1
from .htdemucs_layers import HDecLayer, HEncLayer
from .htdemucs_spec import denormalise_output, ispec, magnitude, mask_cac, normalise_input, spec
from .htdemucs_transformer import CrossTransformerEncoder
from .layers import TracedCall

__all__ = ["HTDemucs", "forward", "htdemucs_trace_keys", "htdemucs_valid_length"]

_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(HTDemucsConfig) if f.init)


def _channels_first(x: tf.Tensor) -> tf.Tensor:
    """channels-last ``(B, F, T, C)`` / ``(B, L, C)`` -> upstream's ``(B, C, F, T)`` / ``(B, C, L)``."""
    rank = x.shape.rank
    return tf.transpose(x, [0, rank - 1, *range(1, rank - 1)])


def _as_is(x: tf.Tensor) -> tf.Tensor:
    return x


def _as_sequence(x: tf.Tensor) -> tf.Tensor:
    """channels-last ``(B, F, T, C)`` -> upstream's flattened ``(B, C, F T)`` (the channel samplers' trace)."""
    return tf.reshape(_channels_first(x), [tf.shape(x)[0], x.shape[-1], -1])


@keras.saving.register_keras_serializable(package="umx_tf")
class HTDemucs(TracedCall, keras.Model):
    """Hybrid Transformer Demucs, eval mode.

    Args: every keyword of ``demucs.htdemucs.HTDemucs`` of demucs 4.1.0 (:class:`core_spec.configs.HTDemucsConfig`,
        under the same names, with upstream's defaults), plus Keras's ``dtype`` (``"float32"`` or ``"float64"``)
        and ``name``.

    Weights (the mapping to upstream's names is :mod:`umx_tf.weights`): ``encoder[i]``, ``decoder[j]``,
    ``tencoder[i]``, ``tdecoder[j]``, ``freq_emb``, ``channel_upsampler`` / ``channel_downsampler`` (and ``_t``),
    ``crosstransformer``.
    """

    def __init__(self, **kwargs: Any):
        config = config_from_arguments(HTDemucsConfig, kwargs)
        super().__init__(**{k: v for k, v in kwargs.items() if k not in _CONFIG_FIELDS})
        if not config.cac:
            raise NotImplementedError("HTDemucs with cac=False (magnitude masks and Wiener filtering) is not ported")
        self._config = config
        self.sources = config.sources
        self.audio_channels = config.audio_channels
        self.samplerate = config.samplerate
        policy = self.dtype_policy

        enc, tenc = encoder_layers(config)
        dec, tdec = decoder_layers(config)
        if len(tenc) != config.depth:
            raise NotImplementedError(f"depth={config.depth}: layers below the merge of the branches are not ported")
        self.encoder = [HEncLayer(layer, dtype=policy, name=f"encoder_{i}") for i, layer in enumerate(enc)]
        self.decoder = [HDecLayer(layer, dtype=policy, name=f"decoder_{i}") for i, layer in enumerate(dec)]
        self.tencoder = [HEncLayer(layer, dtype=policy, name=f"tencoder_{i}") for i, layer in enumerate(tenc)]
        self.tdecoder = [HDecLayer(layer, dtype=policy, name=f"tdecoder_{i}") for i, layer in enumerate(tdec)]

        nb_freqs = config.nfft // 2 // config.stride  # the first encoder's output height
        self.freq_emb = (
            ScaledEmbedding(nb_freqs, config.channels, config.emb_scale, dtype=policy, name="freq_emb")
            if config.freq_emb
            else None
        )
        bottom, b = enc[-1].chout, config.bottom_channels

        def sampler(chin: int, chout: int, name: str) -> Any:
            return channel_conv1x1(chin, chout, dtype=policy, name=name) if b else None

        self.channel_upsampler = sampler(bottom, b, "channel_upsampler")
        self.channel_downsampler = sampler(b, bottom, "channel_downsampler")
        self.channel_upsampler_t = sampler(bottom, b, "channel_upsampler_t")
        self.channel_downsampler_t = sampler(b, bottom, "channel_downsampler_t")
        self.crosstransformer = (
            CrossTransformerEncoder(config, dtype=policy, name="crosstransformer") if config.t_layers else None
        )
        self._compiled: dict[tuple, Any] = {}
        self.built = True

    @classmethod
    def from_config(cls, config: HTDemucsConfig | dict, custom_objects: Any = None, dtype: Any = None) -> HTDemucs:
        """A model for an :class:`core_spec.configs.HTDemucsConfig` (weights: PyTorch-like random init), or Keras's
        deserialisation from a :meth:`get_config` dict."""
        if isinstance(config, HTDemucsConfig):
            return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}, dtype=dtype)
        config = dict(config)
        config["segment"] = tuple(config["segment"])
        return cls(**config)

    def get_config(self) -> dict[str, Any]:
        base = super().get_config()
        kwargs = constructor_kwargs(self._config)
        kwargs["segment"] = list(self._config.segment)
        return {**{k: base[k] for k in ("name", "dtype", "trainable") if k in base}, **kwargs}

    @property
    def config(self) -> HTDemucsConfig:
        """The :class:`core_spec.configs.HTDemucsConfig` of this model."""
        return self._config

    def set_segment(self, segment: tuple[int, int]) -> None:
        """Run at another training segment (seconds, an exact pair): what a bag's ``segment`` does to its models
        (upstream sets ``model.segment``)."""
        self._config = dataclasses.replace(self._config, segment=segment)
        self._compiled.clear()

    def valid_length(self, length: int) -> int:
        """The length the network runs at for an input of ``length`` samples (the training-segment rule)."""
        return htdemucs_valid_length(self._config, length)

    def call(
        self,
        mix: tf.Tensor,
        trace: dict[str, tf.Tensor] | None = None,
        *,
        window: Any = None,
        stats: Mapping[str, Any] | None = None,
        training: bool = False,
    ) -> tf.Tensor:
        """Separate ``mix``.

        Args:
            mix: ``(nb_samples, audio_channels, L)``, ``L`` static; ``L <= config.segment_samples`` with
                ``use_train_segment``.
            trace: filled with :func:`~core_spec.reference.htdemucs.htdemucs_trace_keys`'s intermediates, in the
                spec's channel-first layouts, when given.
            window: the STFT window ``(nfft,)``; ``None`` is the periodic Hann window in the model's dtype.
            stats: the input statistics to use instead of computing them: ``mean`` / ``std`` of the frequency
                branch's input and ``mean_t`` / ``std_t`` of the time branch's, ``(nb_samples,)`` each.
            training: the training-mode forward: the network at ``L`` itself, whatever the training segment, and the
                cross-transformer's dropout at ``t_dropout`` (:mod:`umx_tf.htdemucs_transformer`).

        Returns:
            ``(nb_samples, nb_sources, audio_channels, L)``.
        """
        config = self._config
        mix = tf.cast(mix, self.compute_dtype)
        if mix.shape.rank != 3 or mix.shape[1] != self.audio_channels:
            raise ValueError(
                f"HTDemucs expects (nb_samples, {self.audio_channels}, nb_timesteps), got {tuple(mix.shape)}"
            )
        keep = Recorder(trace, htdemucs_trace_keys(config), convert=_channels_first)
        length = mix.shape[-1]
        training_length = length if training else self.valid_length(length)
        mix = tf.pad(mix, [[0, 0], [0, 0], [0, training_length - length]])

        z = spec(mix, nfft=config.nfft, hop=config.hop_length, window=window)  # (B, C, F, T) complex
        mag = keep("magnitude", magnitude(z), convert=_as_is)
        x, mean, std = normalise_input(mag, None if stats is None else (stats["mean"], stats["std"]))
        xt, mean_t, std_t = normalise_input(mix, None if stats is None else (stats["mean_t"], stats["std_t"]))
        x = tf.transpose(x, [0, 2, 3, 1])  # (B, F, T, 2C)
        xt = tf.transpose(xt, [0, 2, 1])  # (B, L_t, C)

        saved, saved_t, lengths_t = [], [], []
        for i, (encode, tencode) in enumerate(zip(self.encoder, self.tencoder, strict=True)):
            lengths_t.append(xt.shape[1])
            xt = keep(f"tencoder.{i}", tencode(xt))
            saved_t.append(xt)
            x = keep(f"encoder.{i}", encode(x))
            if i == 0 and self.freq_emb is not None:
                emb = keep("freq_emb", self.freq_emb.call(x.shape[1]), convert=_as_is)  # (F_0, channels)
                x = x + config.freq_emb * emb[None, :, None, :]
            saved.append(x)

        if self.crosstransformer is not None:
            if self.channel_upsampler is not None:
                x = keep("channel_upsampler", self.channel_upsampler(x), convert=_as_sequence)
                xt = keep("channel_upsampler_t", self.channel_upsampler_t(xt))
            x, xt = self.crosstransformer.call(x, xt, keep, training=training)
            keep("crosstransformer.x", x)
            keep("crosstransformer.xt", xt)
            if self.channel_downsampler is not None:
                x = keep("channel_downsampler", self.channel_downsampler(x), convert=_as_sequence)
                xt = keep("channel_downsampler_t", self.channel_downsampler_t(xt))

        for j, (decode, tdecode) in enumerate(zip(self.decoder, self.tdecoder, strict=True)):
            x, _ = decode(x, saved.pop(), length=0)
            keep(f"decoder.{j}", x)
            xt, _ = tdecode(xt, saved_t.pop(), length=lengths_t.pop())
            keep(f"tdecoder.{j}", xt)

        nb_sources = len(self.sources)
        x = _channels_first(x)  # (B, S 2C, F, T)
        x = tf.reshape(x, [-1, nb_sources, x.shape[1] // nb_sources, *x.shape[-2:]])
        x = denormalise_output(x, mean, std)
        wave = ispec(mask_cac(x), training_length, nfft=config.nfft, hop=config.hop_length, window=window)
        keep("ispec", wave, convert=_as_is)
        xt = tf.reshape(_channels_first(xt), [-1, nb_sources, self.audio_channels, training_length])
        xt = denormalise_output(xt, mean_t, std_t)
        return keep("output", (xt + wave)[..., :length], convert=_as_is)

    def compiled_call(self, traced: bool = False, jit_compile: bool | None = None) -> Any:
        """:meth:`call` as a ``tf.function`` ``(mix, window, stats) -> (output, trace)`` (traced once per input
        shape), XLA-compiled when ``jit_compile``; no AutoGraph.

        ``None`` is the plain graph (no XLA): measured on 2 CPU cores at the released ``htdemucs`` shapes (one
        7.8-s chunk, second call), the graph takes 3.1 s in float32 and 11.4 s in float64, XLA 4.0 s and 67 s
        (XLA's CPU float64 kernels are slow), eager 4.6 s and 14.7 s; XLA's compilation also costs 10 s for a small
        model (3.6 s to trace the graph).
        """
        if jit_compile is None:
            jit_compile = False
        key = (traced, jit_compile)
        fn = self._compiled.get(key)
        if fn is None:

            def run(mix: tf.Tensor, window: Any, stats: Any) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
                trace: dict[str, tf.Tensor] | None = {} if traced else None
                out = self.call(mix, trace, window=window, stats=stats)
                return out, trace or {}

            fn = self._compiled[key] = tf.function(run, jit_compile=jit_compile, autograph=False)
        return fn


def forward(
    model: HTDemucs,
    mix: Any,
    window: Any = None,
    stats: Mapping[str, Any] | None = None,
    traced: bool = False,
    jit_compile: bool | None = None,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """The compiled forward (:meth:`HTDemucs.compiled_call`, one compilation per input shape): ``(output, trace)``,
    the trace empty unless ``traced`` (arguments as :meth:`HTDemucs.call`)."""
    mix = tf.cast(tf.convert_to_tensor(mix), model.compute_dtype)
    if window is not None:
        window = tf.cast(tf.convert_to_tensor(window), model.compute_dtype)
    if stats is not None:
        stats = {k: tf.cast(tf.convert_to_tensor(v), model.compute_dtype) for k, v in stats.items()}
    return model.compiled_call(traced, jit_compile)(mix, window, stats)
