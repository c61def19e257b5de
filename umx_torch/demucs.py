"""Demucs v2: the waveform model of demucs 2.0.3 (``demucs/model.py``), with the same state-dict names.

Layer ``i`` of the encoder (``i = 0`` outermost) and layer ``j`` of the decoder (``j = 0`` deepest)::

    encoder.i = Conv1d(chin, ch, kernel_size, stride) -> ReLU -> [Conv1d(ch, 2ch, 1) -> GLU]        (rewrite)
    decoder.j = [Conv1d(ch, 2ch, context) -> GLU] -> ConvTranspose1d(ch, out, kernel_size, stride) -> ReLU
                                                                   (no ReLU on the outermost, j = depth - 1)
    lstm      = BLSTM: 2-layer bidirectional LSTM (hidden = input = deepest ch) -> Linear(2ch, ch)

The model never pads: callers pad the mixture to :meth:`Demucs.valid_length` (``apply_model`` in
:mod:`umx_torch.apply` does) and :func:`center_trim` the output; every length change goes through
:mod:`core_spec.shapes`. The spec is ``core_spec.reference.demucs.demucs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core_spec import shapes
from core_spec.configs import DemucsConfig, config_from_arguments, constructor_kwargs
from core_spec.reference.demucs import DEMUCS_NORM_EPS, demucs_trace_keys
from core_spec.shapes import valid_length
from core_spec.trace import Recorder

from .resample import ResampleFrac
from .weights import prepare_state_dict

__all__ = [
    "BLSTM",
    "Demucs",
    "center_trim",
    "decoder_layer",
    "demucs_trace_keys",
    "encoder_layer",
    "rescale_module",
    "valid_length",
]


def center_trim(tensor: Tensor, reference: Tensor | int) -> Tensor:
    """Keep the centre ``reference`` samples of the last axis (the odd extra sample goes on the right)."""
    length = reference.shape[-1] if isinstance(reference, Tensor) else int(reference)
    start, stop = shapes.center_trim_bounds(tensor.shape[-1], length)
    return tensor[..., start:stop]


def _activation(config: DemucsConfig) -> nn.Module:
    """After the 1x1 (encoder) and ``context`` (decoder) convolutions: GLU over channels, or ReLU."""
    return nn.GLU(dim=1) if config.glu else nn.ReLU(inplace=True)


def encoder_layer(chin: int, ch: int, config: DemucsConfig) -> nn.Sequential:
    """``encoder.i``: ``Conv1d(chin, ch, kernel_size, stride) -> ReLU [-> Conv1d(ch, 2ch, 1) -> GLU]`` (slots 0-3,
    upstream's state-dict names): ``(B, chin, L)`` -> ``(B, ch, (L - kernel_size) // stride + 1)``."""
    layers: list[nn.Module] = [nn.Conv1d(chin, ch, config.kernel_size, config.stride), nn.ReLU(inplace=True)]
    if config.rewrite:
        layers += [nn.Conv1d(ch, (2 if config.glu else 1) * ch, 1), _activation(config)]
    return nn.Sequential(*layers)


def decoder_layer(ch: int, chout: int, config: DemucsConfig, relu: bool) -> nn.Sequential:
    """``decoder.j``: ``[Conv1d(ch, 2ch, context) -> GLU ->] ConvTranspose1d(ch, chout, kernel_size, stride)
    [-> ReLU]`` (``relu``: every decoder but the outermost): ``(B, ch, L)`` -> ``(B, chout, (L - context) * stride +
    kernel_size)`` (``context`` only with ``rewrite``)."""
    layers: list[nn.Module] = []
    if config.rewrite:
        layers += [nn.Conv1d(ch, (2 if config.glu else 1) * ch, config.context), _activation(config)]
    layers.append(nn.ConvTranspose1d(ch, chout, config.kernel_size, config.stride))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BLSTM(nn.Module):
    """Bidirectional LSTM over time and a linear projection back to ``dim``: ``(B, dim, T)`` -> ``(B, dim, T)``."""

    def __init__(self, dim: int, layers: int = 1):
        super().__init__()
        self.lstm = nn.LSTM(bidirectional=True, num_layers=layers, hidden_size=dim, input_size=dim)
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor, keep: Recorder | None = None) -> Tensor:
        """``(B, dim, T)`` -> ``(B, dim, T)``; ``keep`` records the raw LSTM states ``lstm.lstm`` ``(T, B, 2 dim)``."""
        x = self.lstm(x.permute(2, 0, 1))[0]  # (T, B, 2 dim)
        if keep is not None:
            x = keep("lstm.lstm", x)
        return self.linear(x).permute(1, 2, 0)


class Demucs(nn.Module):
    """Demucs v2 waveform source separation.

    Args: as ``demucs.model.Demucs`` of demucs 2.0.3 (and :class:`core_spec.configs.DemucsConfig`):
        sources: source names (``["drums", "bass", "other", "vocals"]`` for the released models).
        audio_channels: 2 (stereo) or 1.
        channels: channels of the outermost encoder layer (64 for ``demucs``, 48 for ``demucs48_hq``).
        depth: encoder/decoder layers.
        rewrite: 1x1 convolution in each encoder layer and a ``context`` convolution in each decoder layer.
        glu: GLU after those convolutions (else ReLU).
        rescale: weight rescaling at init (irrelevant once weights are loaded).
        resample: upsample the input x2 and downsample the output /2.
        kernel_size, stride, growth: convolution geometry and channel growth per layer.
        lstm_layers: layers of the bidirectional LSTM (0: none).
        context: kernel of the decoder's first convolution.
        normalize: standardise the mixture inside the model (unbiased std of the mono downmix).
        samplerate, segment_length: metadata used by ``apply_model`` (segment in samples).
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
    ):
        super().__init__()
        self._config = config_from_arguments(DemucsConfig, locals())
        self.sources = self._config.sources
        self.audio_channels = audio_channels
        self.depth = depth
        self.resample = resample
        self.normalize = normalize
        self.samplerate = samplerate
        self.segment_length = segment_length

        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        layers = self._config.layer_channels()
        for index, (chin, ch) in enumerate(layers):  # encoder i and decoder depth-1-i, built in upstream's order
            self.encoder.append(encoder_layer(chin, ch, self._config))
            out = len(self.sources) * audio_channels if index == 0 else chin
            self.decoder.insert(0, decoder_layer(ch, out, self._config, relu=index > 0))

        self.lstm = BLSTM(layers[-1][1], lstm_layers) if lstm_layers else None
        # no parameters or buffers: nothing in the state dict
        self.upsample = ResampleFrac(1, 2)
        self.downsample = ResampleFrac(2, 1)
        if rescale:
            rescale_module(self, rescale)

    @classmethod
    def from_config(
        cls, config: DemucsConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Demucs:
        """A model with the constructor arguments of ``config``, in eval mode (weights: demucs's init)."""
        return cls(**constructor_kwargs(config)).to(device=device, dtype=dtype).eval()

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
        spec's float64 ones). The parity suite injects julius's float32-built kernels here."""
        kernels = kernels or {}
        self.upsample.kernels = kernels.get("up")
        self.downsample.kernels = kernels.get("down")

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load an upstream (or canonical) state dict; with ``strict`` every missing, unexpected or mis-shaped
        key is named in a :class:`core_spec.params.WeightsMismatchError`."""
        state = prepare_state_dict(self, state_dict, strict=strict)
        return super().load_state_dict(state, strict=False, assign=assign)

    def forward(self, mix: Tensor, trace: dict[str, Tensor] | None = None) -> Tensor:
        """Estimate the sources.

        Args:
            mix: ``(nb_samples, audio_channels, nb_timesteps)``, normally of length :meth:`valid_length`.
            trace: if given, filled with the intermediate outputs named by
                :func:`core_spec.reference.demucs.demucs_trace_keys`.

        Returns:
            ``(nb_samples, nb_sources, audio_channels, output_length(nb_timesteps))``.
        """
        if mix.dim() != 3 or mix.shape[1] != self.audio_channels:
            raise ValueError(
                f"Demucs expects (nb_samples, {self.audio_channels}, nb_timesteps), got {tuple(mix.shape)}"
            )
        self.output_length(mix.shape[-1])  # a clear error for inputs too short for the convolutions
        keep = Recorder(trace, demucs_trace_keys(self._config))
        inplace = not torch.is_grad_enabled() and not keep.active  # nothing keeps the temporaries

        if self.normalize:
            mono = mix.mean(dim=1, keepdim=True)
            mean = mono.mean(dim=-1, keepdim=True)
            std = mono.std(dim=-1, keepdim=True)  # unbiased, as upstream
            x = (mix - mean) / (DEMUCS_NORM_EPS + std)
        else:
            x = mix / (DEMUCS_NORM_EPS + 1.0)  # upstream divides by 1e-5 + 1 even without normalisation

        if self.resample:
            x = keep("resample.up", self.upsample(x))

        saved = []
        for index, encode in enumerate(self.encoder):
            x = keep(f"encoder.{index}", encode(x))
            saved.append(x)
        if self.lstm is not None:
            x = keep("lstm", self.lstm(x, keep))
        for index, decode in enumerate(self.decoder):
            skip = center_trim(saved.pop(), x)
            x = x.add_(skip) if inplace else x + skip
            del skip
            x = keep(f"decoder.{index}", decode(x))

        if self.resample:
            x = keep("resample.down", self.downsample(x))
        if self.normalize:
            x = x * std + mean
        return x.view(x.size(0), len(self.sources), self.audio_channels, x.size(-1))


def rescale_module(module: nn.Module, reference: float) -> None:
    """demucs's init: divide every (transposed) convolution's weight and bias by ``sqrt(std(weight) / reference)``."""
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, (nn.Conv1d, nn.ConvTranspose1d)) and not sub.weight.is_meta:
                scale = (sub.weight.std() / reference) ** 0.5
                sub.weight.div_(scale)
                if sub.bias is not None:
                    sub.bias.div_(scale)
