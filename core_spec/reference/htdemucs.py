"""HTDemucs (Hybrid Transformer Demucs, demucs 4.x), eval mode, float64: the executable spec of
``demucs.htdemucs.HTDemucs.forward`` of demucs 4.1.0.

Two U-Nets that meet in the middle, one on the spectrogram and one on the waveform, summed at the end::

    mix (B, C, L) -- right zero-pad to the training length L_t (343 980 samples: 7.8 s at 44.1 kHz)
      |-- spec -> complex as channels z (B, 2C, F, T) --normalise--> x
      |       encoder.0 .. encoder.{depth-1}    (B, ch, F/4^i, T)   + 0.2 freq_emb after encoder.0
      |-- normalise --> xt
      |       tencoder.0 .. tencoder.{depth-1}  (B, ch, ceil(L_t/4^i))
      |   channel_upsampler(_t)    1x1 to the transformer's width (bottom_channels, when set)
      |   crosstransformer         freq tokens (t1 fr) and time tokens, self and cross attention layers
      |   channel_downsampler(_t)  1x1 back
      |       decoder.0 .. decoder.{depth-1}    + skip of encoder.{depth-1-j}   -> (B, S*2C, F, T)
      |       tdecoder.0 .. tdecoder.{depth-1}  + skip of tencoder.{depth-1-j}  -> (B, S*C, L_t)
      |-- de-normalise; the freq branch read back as complex (mask_cac) -> ispec -> (B, S, C, L_t)
    out = ispec(freq branch) + time branch, cropped to L                          (B, S, C, L)

The layers are :mod:`~core_spec.reference.htdemucs_layers` (encoder/decoder layers and DConv), the transformer
:mod:`~core_spec.reference.htdemucs_transformer`, the spectrogram and normalisation
:mod:`~core_spec.reference.htdemucs_spec`, the embeddings and 1x1 samplers
:mod:`~core_spec.reference.htdemucs_embed`. Weights are looked up under upstream's state-dict names.

Float64 and torch. NumPy's ``mean`` and ``std`` here are correctly rounded (two passes, pairwise sums); torch's
float64 ``std`` is not on long inputs: over the 687 960 samples of a 4096-sample stereo input zero-padded to the
training length it is 1.3e-11 relative off the exact value (measured against ``math.fsum``, torch 2.13 CPU), and
the network carries that to 1e-9 relative in its output. Parity tests against upstream at the released length
inject upstream's statistics (``stats``), as they inject its window; the stages then agree to 1e-12.

The training-segment rule (``use_train_segment``, every released model): the network runs at exactly
``config.segment_samples`` samples; a shorter input is zero-padded on the right and the output cropped back, a
longer one is an error (upstream's ``valid_length`` raises; its forward would fail on a reshape). Without it the
network runs at the input's length.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..configs import HTDemucsConfig
from ..trace import Recorder
from .htdemucs_embed import channel_conv1x1, scaled_embedding
from .htdemucs_layers import decoder_layers, encoder_layers, hdec_layer, henc_layer
from .htdemucs_spec import denormalise_output, ispec, magnitude, mask_cac, normalise_input, spec
from .htdemucs_transformer import cross_transformer, transformer_trace_keys

__all__ = ["htdemucs", "htdemucs_trace_keys", "htdemucs_valid_length"]


def htdemucs_trace_keys(config: HTDemucsConfig) -> tuple[str, ...]:
    """The intermediate outputs :func:`htdemucs` records, in order of computation.

    Named after the upstream module (or method) whose output each is, so that forward hooks on the upstream model
    capture the same arrays (``B`` batch, ``S`` sources, ``C`` audio channels, ``F = nfft / 2``, ``T`` frames,
    ``L_t`` the length the network runs at):

    - ``magnitude``: ``(B, 2C, F, T)`` the complex-as-channels spectrogram, before normalisation (``_magnitude``);
    - ``tencoder.i`` / ``encoder.i``: each encoder layer's output, time ``(B, ch_i, L_i)`` then freq
      ``(B, ch_i, F_i, T)`` (``encoder.0`` before the frequency embedding is added);
    - ``freq_emb``: ``(F_0, channels)`` the scaled frequency embedding (times ``freq_emb`` it is added);
    - ``channel_upsampler`` ``(B, D, F_d * T)`` and ``channel_upsampler_t`` ``(B, D, L_d)`` (with
      ``bottom_channels``), the transformer's inputs;
    - ``crosstransformer.layers.k`` / ``crosstransformer.layers_t.k``: each transformer layer's output tokens
      ``(B, tokens, D)`` (see :func:`~core_spec.reference.htdemucs_transformer.transformer_trace_keys`);
    - ``crosstransformer.x`` ``(B, D, F_d, T)`` and ``crosstransformer.xt`` ``(B, D, L_d)``: its two outputs;
    - ``channel_downsampler`` / ``channel_downsampler_t`` (with ``bottom_channels``);
    - ``decoder.j`` / ``tdecoder.j``: each decoder layer's output ``z`` (freq, then time);
    - ``ispec``: ``(B, S, C, L_t)`` the frequency branch as waveforms (``_ispec``'s output);
    - ``output``: ``(B, S, C, L)`` the sum of both branches, cropped.
    """
    keys = ["magnitude"]
    for i in range(config.depth):
        keys += [f"tencoder.{i}", f"encoder.{i}"]
        if i == 0 and config.freq_emb:
            keys.append("freq_emb")
    if config.t_layers > 0:
        if config.bottom_channels:
            keys += ["channel_upsampler", "channel_upsampler_t"]
        keys += list(transformer_trace_keys(config))
        keys += ["crosstransformer.x", "crosstransformer.xt"]
        if config.bottom_channels:
            keys += ["channel_downsampler", "channel_downsampler_t"]
    for j in range(config.depth):
        keys += [f"decoder.{j}", f"tdecoder.{j}"]
    keys += ["ispec", "output"]
    return tuple(keys)


def htdemucs_valid_length(config: HTDemucsConfig, length: int) -> int:
    """The length the network runs at for an input of ``length`` samples (``HTDemucs.valid_length``).

    With ``use_train_segment``: ``config.segment_samples`` (343 980 for the released models); a longer input is a
    ``ValueError``. Otherwise ``length`` itself.
    """
    if not config.use_train_segment:
        return int(length)
    training_length = config.segment_samples
    if length > training_length:
        raise ValueError(
            f"HTDemucs runs on at most its training segment of {training_length} samples "
            f"({float(config.segment_fraction):g} s at {config.samplerate} Hz), got {length}: split the track "
            "(apply_model) or use a shorter segment"
        )
    return training_length


def _freq_as_sequence(x: np.ndarray) -> np.ndarray:
    """``(B, C, F, T) -> (B, C, F * T)`` (upstream's ``rearrange(b c f t -> b c (f t))``)."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def htdemucs(
    w: Mapping[str, np.ndarray],
    config: HTDemucsConfig,
    mix: np.ndarray,
    trace: dict[str, Any] | None = None,
    window: np.ndarray | None = None,
    pos_2d: np.ndarray | None = None,
    pos_1d: np.ndarray | None = None,
    stats: Mapping[str, np.ndarray] | None = None,
    training: bool = False,
) -> np.ndarray:
    """Separate ``mix``: the forward of HTDemucs in eval mode (``training=False``) or in training mode.

    Args:
        w: canonical weights (upstream state-dict names), any float dtype; computed in float64.
        config: the model's constructor arguments.
        mix: ``(nb_samples, audio_channels, L)``; ``L <= config.segment_samples`` with ``use_train_segment``.
        trace: filled with :func:`htdemucs_trace_keys`'s intermediates when given.
        window: the STFT window ``(nfft,)``; ``None`` is the float64 periodic Hann window (parity tests pass
            upstream's).
        pos_2d, pos_1d: the transformer's position embeddings to add instead of computing them in float64
            (see :func:`~core_spec.reference.htdemucs_transformer.cross_transformer`).
        stats: the input statistics to use instead of computing them (module docstring): ``mean`` and ``std`` of
            the frequency branch's input, ``mean_t`` and ``std_t`` of the time branch's, one value per item.
        training: upstream's ``model.train()`` forward: the network runs at the input's length ``L`` (upstream
            sets its ``segment`` to ``L``: no padding, ``ispec`` at ``L``, any ``L``), not at the training segment.
            Nothing else differs in this spec: the transformer's dropout (``t_dropout``) is not modelled (parity
            steps run with it off) and ``sin_random_shift`` is 0 (the released models).

    Returns:
        ``(nb_samples, nb_sources, audio_channels, L)`` float64.
    """
    mix = np.asarray(mix, dtype=np.float64)
    if mix.ndim != 3 or mix.shape[1] != config.audio_channels:
        raise ValueError(
            f"htdemucs expects (nb_samples, audio_channels={config.audio_channels}, nb_timesteps), got {mix.shape}"
        )
    if not config.cac:
        raise NotImplementedError("HTDemucs with cac=False (magnitude masks and Wiener filtering) is not in the spec")
    keep = Recorder(trace, htdemucs_trace_keys(config))
    length = mix.shape[-1]
    training_length = length if training else htdemucs_valid_length(config, length)
    mix = np.pad(mix, [(0, 0), (0, 0), (0, training_length - length)])

    z = spec(mix, nfft=config.nfft, hop=config.hop_length, window=window)  # (B, C, F, T) complex
    given = (stats["mean"], stats["std"]) if stats is not None else None
    x, mean, std = normalise_input(keep("magnitude", magnitude(z)), given)  # (B, 2C, F, T)
    given_t = (stats["mean_t"], stats["std_t"]) if stats is not None else None
    xt, mean_t, std_t = normalise_input(mix, given_t)  # (B, C, L_t)

    enc_freq, enc_time = encoder_layers(config)
    saved, saved_t, lengths, lengths_t = [], [], [], []
    for i in range(config.depth):
        lengths.append(x.shape[-1])
        lengths_t.append(xt.shape[-1])
        xt = keep(f"tencoder.{i}", henc_layer(w, f"tencoder.{i}.", xt, enc_time[i]))
        saved_t.append(xt)
        x = keep(f"encoder.{i}", henc_layer(w, f"encoder.{i}.", x, enc_freq[i]))
        if i == 0 and config.freq_emb:
            table = np.asarray(w["freq_emb.embedding.weight"], dtype=np.float64)
            emb = keep("freq_emb", scaled_embedding(table, config.emb_scale, x.shape[-2]))
            x = x + config.freq_emb * emb.T[None, :, :, None]
        saved.append(x)

    if config.t_layers > 0:
        nb_freqs = x.shape[2]
        if config.bottom_channels:
            up = channel_conv1x1(_freq_as_sequence(x), w["channel_upsampler.weight"], w["channel_upsampler.bias"])
            x = keep("channel_upsampler", up).reshape(x.shape[0], -1, nb_freqs, x.shape[3])
            up_t = channel_conv1x1(xt, w["channel_upsampler_t.weight"], w["channel_upsampler_t.bias"])
            xt = keep("channel_upsampler_t", up_t)
        x, xt = cross_transformer(w, "crosstransformer.", x, xt, config, pos_2d=pos_2d, pos_1d=pos_1d, keep=keep)
        keep("crosstransformer.x", x)
        keep("crosstransformer.xt", xt)
        if config.bottom_channels:
            down = channel_conv1x1(_freq_as_sequence(x), w["channel_downsampler.weight"], w["channel_downsampler.bias"])
            x = keep("channel_downsampler", down).reshape(x.shape[0], -1, nb_freqs, x.shape[3])
            down_t = channel_conv1x1(xt, w["channel_downsampler_t.weight"], w["channel_downsampler_t.bias"])
            xt = keep("channel_downsampler_t", down_t)

    dec_freq, dec_time = decoder_layers(config)
    for j in range(config.depth):
        x, _ = hdec_layer(w, f"decoder.{j}.", x, saved.pop(), lengths.pop(), dec_freq[j])
        keep(f"decoder.{j}", x)
        xt, _ = hdec_layer(w, f"tdecoder.{j}.", xt, saved_t.pop(), lengths_t.pop(), dec_time[j])
        keep(f"tdecoder.{j}", xt)

    nb_samples, nb_sources = mix.shape[0], len(config.sources)
    x = denormalise_output(x.reshape(nb_samples, nb_sources, -1, *x.shape[-2:]), mean, std)
    wave = keep("ispec", ispec(mask_cac(x), training_length, nfft=config.nfft, hop=config.hop_length, window=window))
    xt = denormalise_output(xt.reshape(nb_samples, nb_sources, -1, training_length), mean_t, std_t)
    return keep("output", (xt + wave)[..., :length])
