"""Open-Unmix, one target: ``openunmix.model.OpenUnmix`` of openunmix 1.3.0, with the same state-dict names.

The network is frame-major inside, ``(nb_frames, nb_samples, ...)``; flatten orders are upstream's: the inputs of
``fc1`` are ``c * max_bin + f``, the outputs of ``fc3`` are ``c * nb_bins + f``. The spec is
``core_spec.reference.umx.open_unmix``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core_spec.configs import UMXConfig, config_from_arguments, constructor_kwargs
from core_spec.reference.umx import UMX_TRACE_KEYS
from core_spec.trace import Recorder

from .weights import prepare_state_dict

__all__ = ["UMX_TRACE_KEYS", "OpenUnmix"]


class OpenUnmix(nn.Module):
    """Spectrogram model of one target: a mask on the mixture magnitude.

    Args:
        nb_bins: STFT bins of the input (``n_fft // 2 + 1``).
        nb_channels: channels the network sees (2, or 1 for ``umxse``).
        hidden_size: width of the bottleneck (512 for ``umxhq``).
        nb_layers: LSTM layers.
        unidirectional: causal LSTM (``hidden_size`` units) instead of a bidirectional one (``hidden_size // 2``
            per direction).
        input_mean, input_scale: optional training statistics ``(nb_bins,)``; stored as ``-mean`` and ``1 /
            scale`` (upstream's convention), cropped to ``max_bin``.
        max_bin: bins the network reads (the bandwidth crop); ``None`` reads all.
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
    ):
        super().__init__()
        self._config = config_from_arguments(UMXConfig, locals())
        self.nb_output_bins = nb_bins
        self.nb_bins = max_bin or nb_bins
        self.nb_channels = nb_channels
        self.hidden_size = hidden_size
        self.nb_layers = nb_layers
        self.unidirectional = unidirectional
        self.max_bin = max_bin

        self.fc1 = nn.Linear(self.nb_bins * nb_channels, hidden_size, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden_size)
        self.lstm = nn.LSTM(
            input_size=hidden_size,
            hidden_size=hidden_size if unidirectional else hidden_size // 2,
            num_layers=nb_layers,
            bidirectional=not unidirectional,
            batch_first=False,
            dropout=self._config.lstm_dropout,  # upstream's 0.4 between layers (training only)
        )
        self.fc2 = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.bn2 = nn.BatchNorm1d(hidden_size)
        self.fc3 = nn.Linear(hidden_size, self.nb_output_bins * nb_channels, bias=False)
        self.bn3 = nn.BatchNorm1d(self.nb_output_bins * nb_channels)

        mean = torch.zeros(self.nb_bins)
        scale = torch.ones(self.nb_bins)
        if input_mean is not None:
            mean = torch.from_numpy(-np.asarray(input_mean)[: self.nb_bins]).float()
        if input_scale is not None:
            scale = torch.from_numpy(1.0 / np.asarray(input_scale)[: self.nb_bins]).float()
        self.input_mean = nn.Parameter(mean)
        self.input_scale = nn.Parameter(scale)
        self.output_scale = nn.Parameter(torch.ones(self.nb_output_bins))
        self.output_mean = nn.Parameter(torch.ones(self.nb_output_bins))

    @classmethod
    def from_config(
        cls, config: UMXConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> OpenUnmix:
        """A model with the constructor arguments of ``config``, in eval mode (weights: PyTorch's init)."""
        return cls(**constructor_kwargs(config)).to(device=device, dtype=dtype).eval()

    @property
    def config(self) -> UMXConfig:
        """The :class:`core_spec.configs.UMXConfig` of this model."""
        return self._config

    def freeze(self) -> OpenUnmix:
        """No gradients, eval mode (upstream's ``freeze``)."""
        for p in self.parameters():
            p.requires_grad = False
        return self.eval()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load an upstream (or canonical) state dict.

        The legacy keys of the 2019 ``umx``/``umxhq`` files (``sample_rate``, ``stft.window``,
        ``transform.0.window``) are dropped with a warning. With ``strict`` (the default) anything else missing,
        unexpected or mis-shaped raises :class:`core_spec.params.WeightsMismatchError` naming every key;
        ``num_batches_tracked`` counters are optional.
        """
        state = prepare_state_dict(self, state_dict, strict=strict)
        return super().load_state_dict(state, strict=False, assign=assign)

    def forward(self, x: Tensor, trace: dict[str, Tensor] | None = None) -> Tensor:
        """Estimate the target magnitude.

        Args:
            x: mixture magnitude ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
            trace: if given, filled with the intermediate outputs named in :data:`UMX_TRACE_KEYS` (frame-major,
                ``(nb_frames * nb_samples, features)``; ``lstm``: ``(nb_frames, nb_samples, hidden_size)``).

        Returns:
            ``(nb_samples, nb_channels, nb_bins, nb_frames)``: a non-negative mask times the uncropped input.
        """
        nb_samples, nb_channels, nb_bins, nb_frames = x.shape
        if nb_channels != self.nb_channels or nb_bins != self.nb_output_bins:
            raise ValueError(
                f"OpenUnmix expects (nb_samples, {self.nb_channels}, {self.nb_output_bins}, nb_frames), "
                f"got {tuple(x.shape)}"
            )
        keep = Recorder(trace, UMX_TRACE_KEYS)
        inplace = not torch.is_grad_enabled() and not keep.active  # nothing keeps the temporaries
        x = x.permute(3, 0, 1, 2)  # (T, B, C, F)
        mix = x.detach()  # the uncropped magnitude, masked at the end (detached, as upstream)

        h = (x[..., : self.nb_bins] + self.input_mean) * self.input_scale
        h = keep("fc1.input", h.reshape(nb_frames * nb_samples, nb_channels * self.nb_bins))
        h = keep("fc1", self.fc1(h))
        h = keep("bn1", self.bn1(h))
        h = torch.tanh(h).reshape(nb_frames, nb_samples, self.hidden_size)

        y = keep("lstm", self.lstm(h)[0])
        h = keep("fc2.input", torch.cat([h, y], dim=-1).reshape(-1, 2 * self.hidden_size))
        h = keep("fc2", self.fc2(h))
        h = keep("bn2", self.bn2(h))
        h = keep("fc3.input", F.relu(h, inplace=inplace))
        h = keep("fc3", self.fc3(h))
        h = keep("bn3", self.bn3(h))

        h = h.reshape(nb_frames, nb_samples, nb_channels, self.nb_output_bins)
        if inplace:
            h = h.mul_(self.output_scale).add_(self.output_mean).relu_().mul_(mix)
        else:
            h = F.relu(h * self.output_scale + self.output_mean) * mix
        return h.permute(1, 2, 3, 0)
