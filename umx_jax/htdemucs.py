"""HTDemucs (Hybrid Transformer Demucs, demucs 4.x) as a Flax NNX module, eval mode: ``demucs.htdemucs.HTDemucs``
of demucs 4.1.0.

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

The spec is :func:`core_spec.reference.htdemucs.htdemucs`; the layers are :mod:`umx_jax.htdemucs_layers`, the
transformer :mod:`umx_jax.htdemucs_transformer`, the spectrogram and normalisation :mod:`umx_jax.htdemucs_spec`,
the embeddings and 1x1 samplers :mod:`umx_jax.htdemucs_embed`. Inside, both branches run channels-last (Flax's
layout); the public interface and the trace are channel-first, in the spec's layouts.

The input statistics are computed in two passes (:func:`umx_jax.htdemucs_spec.normalise_input`), the way the
spec does; torch's float64 ``std`` is 1.3e-11 off the exact value at the released length, so parity tests inject
upstream's (``stats``), as they may inject its STFT ``window``. The training-segment rule
(:func:`core_spec.reference.htdemucs.htdemucs_valid_length`): with ``use_train_segment`` the network runs at
exactly ``config.segment_samples`` samples (shorter inputs zero-padded on the right, the output cropped back);
longer inputs are an error. The training-mode forward (``training=True``, upstream's ``model.train()``; what
:mod:`umx_jax.train` differentiates) runs the network at the input's own length instead: no padding, ``ispec`` at
``L``, any ``L`` (:func:`core_spec.reference.htdemucs.htdemucs` with ``training=True``), with the
cross-transformer's dropout when a ``dropout_key`` is given (HTDemucs has no batch statistics); the transformer
computes its attention scores all at once instead of in blocks of query rows, the same values, since the backward
pass keeps them all anyway.

float64 needs ``jax.enable_x64`` (``with umx_jax.dtype_scope("float64"):``); :func:`forward` is the compiled call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from core_spec.configs import HTDemucsConfig
from core_spec.reference.htdemucs import htdemucs_trace_keys, htdemucs_valid_length
from core_spec.reference.htdemucs_layers import decoder_layers, encoder_layers
from core_spec.trace import Recorder

from .htdemucs_embed import ScaledEmbedding, channel_conv1x1
from .htdemucs_layers import HDecLayer, HEncLayer
from .htdemucs_spec import denormalise_output, ispec, magnitude, mask_cac, normalise_input, spec
from .htdemucs_transformer import CrossTransformerEncoder

__all__ = ["HTDemucs", "forward", "htdemucs_trace_keys", "htdemucs_valid_length"]


def _channels_first(x: jax.Array) -> jax.Array:
    """channels-last ``(B, F, T, C)`` / ``(B, L, C)`` -> upstream's ``(B, C, F, T)`` / ``(B, C, L)``."""
    return jnp.moveaxis(x, -1, 1)


def _as_is(x: jax.Array) -> jax.Array:
    return x


def _as_sequence(x: jax.Array) -> jax.Array:
    """channels-last ``(B, F, T, C)`` -> upstream's flattened ``(B, C, F T)`` (the channel samplers' trace)."""
    return _channels_first(x).reshape(x.shape[0], x.shape[-1], -1)


class HTDemucs(nnx.Module):
    """Hybrid Transformer Demucs, eval mode.

    Args: every keyword of ``demucs.htdemucs.HTDemucs`` of demucs 4.1.0 (:class:`core_spec.configs.HTDemucsConfig`,
        under the same names, with upstream's defaults), plus ``dtype`` (float32 or float64; float64 needs
        ``jax.enable_x64``) and ``rngs`` (random init, seed 0 if ``None``).

    State (the mapping to upstream's names is :mod:`umx_jax.weights`): ``encoder.<i>``, ``decoder.<j>``,
    ``tencoder.<i>``, ``tdecoder.<j>``, ``freq_emb``, ``channel_upsampler`` / ``channel_downsampler`` (and ``_t``),
    ``crosstransformer``.
    """

    def __init__(self, *, dtype: Any = jnp.float32, rngs: nnx.Rngs | None = None, **kwargs: Any):
        config = HTDemucsConfig(**kwargs)
        if not config.cac:
            raise NotImplementedError("HTDemucs with cac=False (magnitude masks and Wiener filtering) is not ported")
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self._config = config
        self.sources = config.sources
        self.audio_channels = config.audio_channels
        self.samplerate = config.samplerate

        enc, tenc = encoder_layers(config)
        dec, tdec = decoder_layers(config)
        if len(tenc) != config.depth:
            raise NotImplementedError(f"depth={config.depth}: layers below the merge of the branches are not ported")
        self.encoder = nnx.List([HEncLayer(layer, dtype=dtype, rngs=rngs) for layer in enc])
        self.decoder = nnx.List([HDecLayer(layer, dtype=dtype, rngs=rngs) for layer in dec])
        self.tencoder = nnx.List([HEncLayer(layer, dtype=dtype, rngs=rngs) for layer in tenc])
        self.tdecoder = nnx.List([HDecLayer(layer, dtype=dtype, rngs=rngs) for layer in tdec])

        nb_freqs = config.nfft // 2 // config.stride  # the first encoder's output height
        emb = partial(ScaledEmbedding, nb_freqs, config.channels, config.emb_scale, dtype=dtype, rngs=rngs)
        self.freq_emb = emb() if config.freq_emb else None

        bottom, b = enc[-1].chout, config.bottom_channels
        sampler = partial(channel_conv1x1, dtype=dtype, rngs=rngs)
        self.channel_upsampler = sampler(bottom, b) if b else None
        self.channel_downsampler = sampler(b, bottom) if b else None
        self.channel_upsampler_t = sampler(bottom, b) if b else None
        self.channel_downsampler_t = sampler(b, bottom) if b else None
        self.crosstransformer = CrossTransformerEncoder(config, dtype=dtype, rngs=rngs) if config.t_layers else None

    @classmethod
    def from_config(cls, config: HTDemucsConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs | None = None) -> HTDemucs:
        """A model with the constructor arguments of ``config`` (weights: PyTorch-like random init)."""
        kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
        return cls(**kwargs, dtype=dtype, rngs=rngs)

    @property
    def config(self) -> HTDemucsConfig:
        """The :class:`core_spec.configs.HTDemucsConfig` of this model."""
        return self._config

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.encoder[0].conv.kernel[...].dtype)

    def set_segment(self, segment: tuple[int, int]) -> None:
        """Run at another training segment (seconds, an exact pair): what a bag's ``segment`` does to its models
        (upstream sets ``model.segment``)."""
        self._config = dataclasses.replace(self._config, segment=segment)

    def valid_length(self, length: int) -> int:
        """The length the network runs at for an input of ``length`` samples (the training-segment rule)."""
        return htdemucs_valid_length(self._config, length)

    def __call__(
        self,
        mix: jax.Array,
        trace: dict[str, jax.Array] | None = None,
        *,
        window: jax.Array | np.ndarray | None = None,
        stats: Mapping[str, Any] | None = None,
        training: bool = False,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Separate ``mix``.

        Args:
            mix: ``(nb_samples, audio_channels, L)``; ``L <= config.segment_samples`` with ``use_train_segment``.
            trace: filled with :func:`~core_spec.reference.htdemucs.htdemucs_trace_keys`'s intermediates, in the
                spec's channel-first layouts, when given.
            window: the STFT window ``(nfft,)``; ``None`` is the periodic Hann window in the model's dtype.
            stats: the input statistics to use instead of computing them: ``mean`` / ``std`` of the frequency
                branch's input and ``mean_t`` / ``std_t`` of the time branch's, ``(nb_samples,)`` each.
            training: the training-mode forward: the network at ``L`` itself, whatever the training segment
                (and the attention unblocked: :class:`~umx_jax.htdemucs_transformer.CrossTransformerEncoder`).
            dropout_key: with ``training``, the key of the cross-transformer's dropouts at ``config.t_dropout``
                (:mod:`umx_jax.htdemucs_transformer`); ``None``: none (the gradient-parity steps).

        Returns:
            ``(nb_samples, nb_sources, audio_channels, L)``.
        """
        config = self._config
        if mix.ndim != 3 or mix.shape[1] != self.audio_channels:
            raise ValueError(f"HTDemucs expects (nb_samples, {self.audio_channels}, nb_timesteps), got {mix.shape}")
        keep = Recorder(trace, htdemucs_trace_keys(config), convert=_channels_first)
        length = mix.shape[-1]
        training_length = length if training else self.valid_length(length)
        mix = jnp.pad(mix, ((0, 0), (0, 0), (0, training_length - length)))

        z = spec(mix, nfft=config.nfft, hop=config.hop_length, window=window)  # (B, C, F, T) complex
        mag = keep("magnitude", magnitude(z), convert=_as_is)
        x, mean, std = normalise_input(mag, None if stats is None else (stats["mean"], stats["std"]))
        xt, mean_t, std_t = normalise_input(mix, None if stats is None else (stats["mean_t"], stats["std_t"]))
        x = jnp.transpose(x, (0, 2, 3, 1))  # (B, F, T, 2C)
        xt = jnp.transpose(xt, (0, 2, 1))  # (B, L_t, C)

        saved, saved_t, lengths_t = [], [], []
        for i, (encode, tencode) in enumerate(zip(self.encoder, self.tencoder, strict=True)):
            lengths_t.append(xt.shape[1])
            xt = keep(f"tencoder.{i}", tencode(xt))
            saved_t.append(xt)
            x = keep(f"encoder.{i}", encode(x))
            if i == 0 and self.freq_emb is not None:
                emb = keep("freq_emb", self.freq_emb(x.shape[1]), convert=_as_is)  # (F_0, channels)
                x = x + config.freq_emb * emb[None, :, None, :]
            saved.append(x)

        if self.crosstransformer is not None:
            if self.channel_upsampler is not None:
                x = keep("channel_upsampler", self.channel_upsampler(x), convert=_as_sequence)
                xt = keep("channel_upsampler_t", self.channel_upsampler_t(xt))
            x, xt = self.crosstransformer(x, xt, keep, training=training, dropout_key=dropout_key)
            keep("crosstransformer.x", x)
            keep("crosstransformer.xt", xt)
            if self.channel_downsampler is not None:
                x = keep("channel_downsampler", self.channel_downsampler(x), convert=_as_sequence)
                xt = keep("channel_downsampler_t", self.channel_downsampler_t(xt))

        for j, (decode, tdecode) in enumerate(zip(self.decoder, self.tdecoder, strict=True)):
            x, _ = decode(x, saved.pop(), 0)
            keep(f"decoder.{j}", x)
            xt, _ = tdecode(xt, saved_t.pop(), lengths_t.pop())
            keep(f"tdecoder.{j}", xt)

        nb_samples, nb_sources = mix.shape[0], len(self.sources)
        x = _channels_first(x)  # (B, S 2C, F, T)
        x = denormalise_output(x.reshape(nb_samples, nb_sources, -1, *x.shape[-2:]), mean, std)
        wave = ispec(mask_cac(x), training_length, nfft=config.nfft, hop=config.hop_length, window=window)
        keep("ispec", wave, convert=_as_is)
        xt = _channels_first(xt).reshape(nb_samples, nb_sources, -1, training_length)
        xt = denormalise_output(xt, mean_t, std_t)
        return keep("output", (xt + wave)[..., :length], convert=_as_is)


@partial(nnx.jit, static_argnames=("traced",), graph_updates=False)
def forward(
    model: HTDemucs,
    mix: jax.Array,
    window: jax.Array | None = None,
    stats: Mapping[str, jax.Array] | None = None,
    traced: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The compiled forward (one compilation per input shape): ``(output, trace)``, the trace empty unless
    ``traced`` (arguments as :meth:`HTDemucs.__call__`)."""
    trace: dict[str, jax.Array] | None = {} if traced else None
    out = model(mix, trace, window=window, stats=stats)
    return out, trace or {}
