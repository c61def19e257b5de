"""HTDemucs (Hybrid Transformer Demucs, demucs 4.x) in PyTorch, with upstream's state-dict names: an upstream
``state`` loads with :meth:`HTDemucs.load_state_dict`.

The spec is :func:`core_spec.reference.htdemucs.htdemucs` (its docstring draws the network)::

    mix (B, C, L) -- right zero-pad to the training length L_t (343 980 samples: 7.8 s at 44.1 kHz)
      |-- spec -> complex as channels (B, 2C, F, T) -- normalise --> encoder.0 .. encoder.{depth-1}
      |-- normalise --> tencoder.0 .. tencoder.{depth-1}
      |   channel_upsampler(_t) -> crosstransformer -> channel_downsampler(_t)
      |       decoder.j + skip (B, S*2C, F, T)          tdecoder.j + skip (B, S*C, L_t)
      |-- de-normalise; mask_cac -> ispec (B, S, C, L_t)     de-normalise
    out = ispec(freq branch) + time branch, cropped to L    (B, S, C, L)

The layers are :mod:`~umx_torch.htdemucs_layers`, the transformer :mod:`~umx_torch.htdemucs_transformer`, the
spectrogram and normalisation :mod:`~umx_torch.htdemucs_spec`, the frequency embedding
:mod:`~umx_torch.htdemucs_embed`. Float32 and float64 (the window and the sinusoidal embeddings are computed in the
model's dtype; the input statistics in two passes).

The training-segment rule (``use_train_segment``, every released model): in eval mode the network runs at exactly
``int(segment * samplerate)`` samples, a shorter input zero-padded on the right and the output cropped back, a
longer one refused; in training mode it runs at the input's length (upstream then sets its ``segment`` to it).
:attr:`HTDemucs.segment` may be changed after construction (a bag's segment does: ``BagOfModels``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core_spec.configs import HTDemucsConfig, constructor_kwargs, segment_fraction
from core_spec.reference.htdemucs import htdemucs_trace_keys, htdemucs_valid_length
from core_spec.reference.htdemucs_layers import decoder_layers, encoder_layers
from core_spec.trace import Recorder

from .htdemucs_embed import ScaledEmbedding
from .htdemucs_layers import HDecLayer, HEncLayer
from .htdemucs_spec import denormalise_output, ispec, magnitude, mask_cac, normalise_input, spec
from .htdemucs_transformer import CrossTransformerEncoder
from .weights import prepare_state_dict

__all__ = ["HTDemucs", "forward", "htdemucs_trace_keys", "htdemucs_valid_length", "rescale_module"]

STATS_KEYS = ("mean", "std", "mean_t", "std_t")


def _check_supported(config: HTDemucsConfig) -> None:
    """Refuse what the spec does not implement (by ``option=value``)."""
    if not config.cac:
        raise NotImplementedError("HTDemucs with cac=False (magnitude masks and Wiener filtering) is not implemented")
    enc, tenc = encoder_layers(config)  # refuses multi_freqs
    if len(tenc) != len(enc) or any(layer.empty for layer in tenc):
        raise NotImplementedError(
            f"depth={config.depth} with nfft={config.nfft}: the time and frequency branches merge inside the U-Net "
            "(an 'empty' time layer), which the spec does not implement"
        )


class HTDemucs(nn.Module):
    """Hybrid Transformer Demucs (``demucs.htdemucs.HTDemucs`` of demucs 4.1.0), eval-mode numerics of the spec.

    Args: upstream's constructor arguments (every field of :class:`core_spec.configs.HTDemucsConfig`, under its
    name, with upstream's defaults; ``segment`` a ``Fraction`` or seconds), e.g.
    ``HTDemucs(**constructor_kwargs(config))``; :meth:`from_config` is the usual way.
    """

    def __init__(self, sources: Sequence[str] = ("drums", "bass", "other", "vocals"), **kwargs: Any) -> None:
        super().__init__()
        names = {f.name for f in dataclasses.fields(HTDemucsConfig) if f.init}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"HTDemucs: unexpected arguments {unknown}")
        config = HTDemucsConfig(sources=tuple(sources), **kwargs)
        _check_supported(config)
        self._config = config
        self.sources = config.sources
        self.audio_channels = config.audio_channels
        self.samplerate = config.samplerate
        self.segment: Fraction = config.segment_fraction
        self.use_train_segment = config.use_train_segment
        self.nfft, self.hop_length, self.depth = config.nfft, config.hop_length, config.depth
        self.bottom_channels = config.bottom_channels

        # upstream's registration order, so that state_dict() lists its names in its order
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.tencoder = nn.ModuleList()
        self.tdecoder = nn.ModuleList()
        enc, tenc = encoder_layers(config)
        dec, tdec = decoder_layers(config)
        self.encoder.extend(HEncLayer(layer) for layer in enc)
        self.decoder.extend(HDecLayer(layer) for layer in dec)
        self.tencoder.extend(HEncLayer(layer) for layer in tenc)
        self.tdecoder.extend(HDecLayer(layer) for layer in tdec)
        self.freq_emb: ScaledEmbedding | None = None
        if config.freq_emb:
            bins = config.nfft // 2
            nb_freqs = 1 if bins <= config.kernel_size else bins // config.stride  # the first encoder's output rows
            self.freq_emb = ScaledEmbedding(nb_freqs, enc[0].chout, scale=config.emb_scale, smooth=config.emb_smooth)
            self.freq_emb_scale = config.freq_emb
        if config.rescale:
            rescale_module(self, config.rescale)

        self.crosstransformer: CrossTransformerEncoder | None = None
        if config.t_layers > 0:
            inner = int(config.channels * config.growth ** (config.depth - 1))
            if config.bottom_channels:
                self.channel_upsampler = nn.Conv1d(inner, config.bottom_channels, 1)
                self.channel_downsampler = nn.Conv1d(config.bottom_channels, inner, 1)
                self.channel_upsampler_t = nn.Conv1d(inner, config.bottom_channels, 1)
                self.channel_downsampler_t = nn.Conv1d(config.bottom_channels, inner, 1)
            self.crosstransformer = CrossTransformerEncoder(config)

    @classmethod
    def from_config(
        cls, config: HTDemucsConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> HTDemucs:
        """A model with the constructor arguments of ``config``, in eval mode (weights: upstream's init)."""
        return cls(**constructor_kwargs(config)).to(device=device, dtype=dtype).eval()

    @property
    def config(self) -> HTDemucsConfig:
        """The :class:`core_spec.configs.HTDemucsConfig` the model was built with (its constructor arguments)."""
        return self._config

    def valid_length(self, length: int) -> int:
        """The length the network runs at for ``length`` samples (``HTDemucs.valid_length``): the training length
        ``int(segment * samplerate)`` with ``use_train_segment`` (a longer input is a ``ValueError``), else
        ``length``."""
        running = dataclasses.replace(self._config, segment=segment_fraction(self.segment))
        return htdemucs_valid_length(running, length)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load an upstream (or canonical) state dict; with ``strict`` every missing, unexpected or mis-shaped key
        is named in a :class:`core_spec.params.WeightsMismatchError`."""
        state = prepare_state_dict(self, state_dict, strict=strict)
        return super().load_state_dict(state, strict=False, assign=assign)

    def forward(
        self,
        mix: Tensor,
        trace: dict[str, Tensor] | None = None,
        *,
        stats: Mapping[str, Any] | None = None,
        window: Tensor | None = None,
    ) -> Tensor:
        """Separate ``mix``.

        Args:
            mix: ``(nb_samples, audio_channels, L)``; in eval mode with ``use_train_segment``,
                ``L <= valid_length(L)``.
            trace: filled with the intermediates named by :func:`core_spec.reference.htdemucs.htdemucs_trace_keys`.
            stats: the input statistics to use instead of computing them, ``(nb_samples,)`` each: ``mean``, ``std``
                of the frequency branch's input, ``mean_t``, ``std_t`` of the time branch's (parity tests inject
                upstream's at the released length, where torch's float64 ``std`` is 1e-11 off).
            window: the STFT window ``(nfft,)``; ``None`` is the periodic Hann window in the model's dtype.

        Returns:
            ``(nb_samples, nb_sources, audio_channels, L)``.
        """
        if mix.dim() != 3 or mix.shape[1] != self.audio_channels:
            raise ValueError(
                f"HTDemucs expects (nb_samples, audio_channels={self.audio_channels}, nb_timesteps), "
                f"got {tuple(mix.shape)}"
            )
        keep = Recorder(trace, htdemucs_trace_keys(self._config))
        length = mix.shape[-1]
        run_length = length if self.training else self.valid_length(length)
        mix = F.pad(mix, (0, run_length - length))

        z = spec(mix, self.nfft, self.hop_length, window)  # (B, C, F, T) complex
        given = (stats["mean"], stats["std"]) if stats is not None else None
        x, mean, std = normalise_input(keep("magnitude", magnitude(z)), given)  # (B, 2C, F, T)
        given_t = (stats["mean_t"], stats["std_t"]) if stats is not None else None
        xt, mean_t, std_t = normalise_input(mix, given_t)  # (B, C, L_t)

        saved, saved_t, lengths, lengths_t = [], [], [], []
        for index, (encode, tencode) in enumerate(zip(self.encoder, self.tencoder, strict=True)):
            lengths.append(x.shape[-1])
            lengths_t.append(xt.shape[-1])
            xt = keep(f"tencoder.{index}", tencode(xt))
            saved_t.append(xt)
            x = keep(f"encoder.{index}", encode(x))
            if index == 0 and self.freq_emb is not None:
                rows = torch.arange(x.shape[-2], device=x.device)
                emb = keep("freq_emb", self.freq_emb(rows))  # (F_0, channels)
                x = x + self.freq_emb_scale * emb.t()[None, :, :, None]
            saved.append(x)

        if self.crosstransformer is not None:
            nb_freqs = x.shape[2]
            if self.bottom_channels:
                up = keep("channel_upsampler", self.channel_upsampler(x.flatten(2)))  # (B, D, F * T)
                x = up.unflatten(2, (nb_freqs, -1))
                xt = keep("channel_upsampler_t", self.channel_upsampler_t(xt))
            x, xt = self.crosstransformer(x, xt, keep)
            keep("crosstransformer.x", x)
            keep("crosstransformer.xt", xt)
            if self.bottom_channels:
                down = keep("channel_downsampler", self.channel_downsampler(x.flatten(2)))
                x = down.unflatten(2, (nb_freqs, -1))
                xt = keep("channel_downsampler_t", self.channel_downsampler_t(xt))

        for index, (decode, tdecode) in enumerate(zip(self.decoder, self.tdecoder, strict=True)):
            x, _ = decode(x, saved.pop(), lengths.pop())
            keep(f"decoder.{index}", x)
            xt, _ = tdecode(xt, saved_t.pop(), lengths_t.pop())
            keep(f"tdecoder.{index}", xt)

        B, S = mix.shape[0], len(self.sources)
        x = denormalise_output(x.view(B, S, -1, *x.shape[-2:]), mean, std)
        wave = keep("ispec", ispec(mask_cac(x), run_length, self.nfft, self.hop_length, window))
        xt = denormalise_output(xt.view(B, S, -1, run_length), mean_t, std_t)
        return keep("output", (xt + wave)[..., :length])


def forward(
    model: HTDemucs,
    mix: Tensor,
    window: Tensor | None = None,
    stats: Mapping[str, Any] | None = None,
    traced: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The forward as every port's ``forward`` calls it: ``(output, trace)``, the trace empty unless ``traced``
    (arguments as :meth:`HTDemucs.forward`; the model's mode and autograd as the caller set them)."""
    trace: dict[str, Tensor] | None = {} if traced else None
    out = model(mix, trace, stats=stats, window=window)
    return out, trace or {}


def rescale_module(module: nn.Module, reference: float) -> None:
    """demucs's init: divide every (transposed) convolution's weight and bias by ``sqrt(std(weight) / reference)``
    (upstream applies it to the encoders and decoders, before the samplers and the transformer exist)."""
    kinds = (nn.Conv1d, nn.ConvTranspose1d, nn.Conv2d, nn.ConvTranspose2d)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, kinds) and not sub.weight.is_meta:
                scale = (sub.weight.std() / reference) ** 0.5
                sub.weight.div_(scale)
                if sub.bias is not None:
                    sub.bias.div_(scale)
