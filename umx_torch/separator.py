"""Waveform in, stems out: the Open-Unmix :class:`Separator` (Demucs's is :mod:`umx_torch.apply`).

``openunmix.model.Separator`` semantics (STFT, one network per target, Wiener filter chunk by chunk, inverse
STFT). Its Wiener step is vectorised over the batch, the frames and the sources (see :mod:`umx_torch.filtering`);
chunks of ``wiener_win_len`` frames stay independent calls, as upstream, because the filter's ``max_abs`` scaling
and covariances are per chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core_spec.configs import SeparatorConfig, STFTConfig, UMXSeparatorConfig, WienerConfig
from core_spec.reference.separator import check_sources
from core_spec.separator_settings import SeparatorSettings, separator_kwargs
from core_spec.shapes import wiener_chunks

from ._device import to_numpy as _to_numpy
from ._device import to_tensor as _to_tensor
from .filtering import wiener_planar
from .transforms import complex_norm, istft, stft
from .umx import OpenUnmix
from .weights import load_weights, prepare_state_dict

__all__ = ["ELEMENTWISE_CHUNK", "Separator", "filter_and_invert", "filter_chunks"]

# frames per chunk of the filter without EM (element-wise: chunks only bound the memory of its temporaries)
ELEMENTWISE_CHUNK = 300


class Separator(SeparatorSettings, nn.Module):
    """Open-Unmix separation of waveforms.

    Args:
        target_models: ``{target name: OpenUnmix}``, in output order.
        niter: EM iterations of the Wiener filter (0: the networks' magnitudes with the mixture phase).
        softmask: initialise the filter with ratio masks.
        residual: add ``mixture - sum(targets)`` as an extra output (``"residual"``).
        sample_rate: the models' rate in Hz.
        n_fft, n_hop: STFT geometry.
        nb_channels: channels the networks see (1: a mono magnitude, as ``umxse``).
        wiener_win_len: frames per independently filtered chunk (``None``: the whole track at once).
        atan2: ``"upstream"`` (openunmix's phase initialisation, default) or ``"exact"``.
        eps, scale_factor: the filter's constants (upstream's defaults).
        window: STFT/ISTFT window ``(n_fft,)``; ``None`` is the periodic Hann window in the signal's dtype
            (upstream builds it in float32 and casts it: pass that to reproduce a float64 upstream run exactly).

    The state dict holds ``target_models.<target>.<name>`` (upstream's names); the window is not stored.
    """

    def __init__(
        self,
        target_models: Mapping[str, OpenUnmix],
        niter: int = 0,
        softmask: bool = False,
        residual: bool = False,
        sample_rate: float = 44100.0,
        n_fft: int = 4096,
        n_hop: int = 1024,
        nb_channels: int = 2,
        wiener_win_len: int | None = 300,
        atan2: str = "upstream",
        eps: float = 1e-10,
        scale_factor: float = 10.0,
        window: Tensor | np.ndarray | None = None,
    ):
        super().__init__()
        self._set_settings(
            niter, softmask, residual, sample_rate, n_fft, n_hop, nb_channels, wiener_win_len, atan2, eps,
            scale_factor,
        )  # fmt: skip
        self.target_models = nn.ModuleDict(target_models)
        self.window = None if window is None else torch.as_tensor(window)

    @classmethod
    def from_config(
        cls,
        config: UMXSeparatorConfig,
        weights: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        **overrides: Any,
    ) -> Separator:
        """A separator for a preset (:func:`core_spec.configs.umx_preset`), in eval mode.

        Args:
            config: the preset.
            weights: canonical weights, ``{target: {name: array}}`` or ``{"target_models.<t>.<name>": array}``;
                ``None`` keeps PyTorch's initialisation.
            device, dtype: where and in what precision to run.
            overrides: constructor arguments replacing the config's Wiener settings (``niter=0``, ...).
        """
        kwargs = separator_kwargs(config, ("window",), **overrides)
        sep = config.separator
        models = {t: OpenUnmix.from_config(config.model) for t in sep.targets}
        separator = cls(models, **kwargs).to(device=device, dtype=dtype).eval()
        if weights is not None:
            load_weights(separator, weights)
        return separator

    def freeze(self) -> Separator:
        for p in self.parameters():
            p.requires_grad = False
        return self.eval()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load ``target_models.<target>.<name>`` weights (upstream's separator buffers are dropped); with
        ``strict``, anything missing, unexpected or mis-shaped is a :class:`core_spec.params.WeightsMismatchError`."""
        state = prepare_state_dict(self, state_dict, strict=strict)
        return super().load_state_dict(state, strict=False, assign=assign)

    def forward(self, audio: Tensor) -> Tensor:
        """Separate a batch of mixtures (no input checks: see :meth:`separate`).

        Args:
            audio: ``(nb_samples, nb_channels, nb_timesteps)`` at :attr:`sample_rate`.

        Returns:
            ``(nb_samples, nb_sources, nb_channels, nb_timesteps)``, sources in :attr:`target_names` order.
        """
        fft = self.stft_config
        check_sources(self.nb_sources, self.niter)  # before the networks run
        window = self.window
        mix_stft = stft(audio, fft.n_fft, fft.n_hop, fft.center, fft.normalized, window)  # (B, C, F, T)
        X = complex_norm(mix_stft, mono=self.nb_channels == 1)
        spectrograms = X.new_empty((X.shape[0], self.nb_targets) + X.shape[1:])  # (B, S, C|1, F, T)
        for j, model in enumerate(self.target_models.values()):
            spectrograms[:, j] = model(X)
        targets_stft = self.filter(spectrograms, mix_stft)  # (B, S', C, F, T)
        del X, spectrograms, mix_stft
        return _invert(targets_stft, fft, audio.shape[-1], window)

    def filter(self, spectrograms: Tensor, mix_stft: Tensor) -> Tensor:
        """The Wiener step with this separator's settings (:func:`filter_chunks`)."""
        return filter_chunks(spectrograms, mix_stft, self.wiener_config)

    def separate(self, audio: Any, sample_rate: float | None = None, resample: bool = False) -> Tensor:
        """Check and shape ``audio`` (:func:`core_spec.audio.prepare_audio`), then separate it without autograd.

        Args:
            audio: NumPy array or tensor: ``(nb_timesteps,)``, ``(nb_channels, nb_timesteps)``,
                ``(nb_timesteps, nb_channels)`` or ``(nb_samples, nb_channels, nb_timesteps)``.
            sample_rate: its rate (``None``: the model's).
            resample: resample to the model's rate instead of refusing another rate.

        Returns:
            ``(nb_samples, nb_sources, 2, nb_timesteps)`` in the separator's dtype and on its device.
        """
        ref = next(self.parameters())
        batch = self.prepare(_to_numpy(audio), sample_rate, resample)
        with torch.no_grad():
            return self(_to_tensor(batch, ref.dtype, ref.device))


def filter_chunks(spectrograms: Tensor, mix_stft: Tensor, wiener: WienerConfig) -> Tensor:
    """The Wiener step of the separator: every chunk of ``wiener_win_len`` frames filtered on its own
    (:func:`core_spec.shapes.wiener_chunks`; each chunk has its own ``max_abs`` and EM statistics), one chunk at
    a time (the last one shorter: no padding).

    Without EM the filter is element-wise, so chunks change nothing but the memory of its temporaries: then a
    track is filtered in chunks of :data:`ELEMENTWISE_CHUNK` frames even when ``wiener_win_len`` is ``None``.

    Args:
        spectrograms: target magnitudes ``(nb_samples, nb_targets, nb_channels or 1, nb_bins, nb_frames)``.
        mix_stft: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        wiener: the filter's settings.

    Returns:
        complex ``(nb_samples, nb_sources, nb_channels, nb_bins, nb_frames)``, sources = targets [+ residual].
    """
    nb_sources = spectrograms.shape[1] + int(wiener.residual)
    check_sources(nb_sources, wiener.niter)
    win = wiener.wiener_win_len or (ELEMENTWISE_CHUNK if wiener.niter == 0 else None)
    plan = wiener_chunks(mix_stft.shape[-1], win)
    args = (wiener.niter, wiener.softmask, wiener.residual, wiener.scale_factor, wiener.eps, wiener.atan2)
    if plan.nb_chunks == 1:
        return wiener_planar(spectrograms, mix_stft, *args)
    out = mix_stft.new_empty(mix_stft.shape[:1] + (nb_sources,) + mix_stft.shape[1:])
    for t in plan.slices():
        out[..., t] = wiener_planar(spectrograms[..., t], mix_stft[..., t], *args)
    return out


def filter_and_invert(
    mix_stft: Tensor,
    spectrograms: Tensor,
    sep: SeparatorConfig,
    nb_timesteps: int,
    window: Tensor | None = None,
) -> Tensor:
    """The separator after the networks: Wiener filtering chunk by chunk, then the inverse STFT.

    Args:
        mix_stft: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        spectrograms: target magnitudes ``(nb_samples, nb_channels or 1, nb_bins, nb_frames, nb_targets)``.
        sep: the separator config (STFT and Wiener settings).
        nb_timesteps: length of the output signals.
        window: ISTFT window ``(n_fft,)`` (``None``: the periodic Hann window in the signal's dtype).

    Returns:
        ``(nb_samples, nb_sources, nb_channels, nb_timesteps)``.
    """
    targets_stft = filter_chunks(spectrograms.movedim(-1, 1), mix_stft, sep.wiener)  # (B, S', C, F, T)
    return _invert(targets_stft, sep.stft, nb_timesteps, window)


def _invert(targets_stft: Tensor, fft: STFTConfig, nb_timesteps: int, window: Tensor | None) -> Tensor:
    """The inverse STFT of ``(B, S, C, F, T)``, one source at a time (its temporaries are several times its input)."""
    estimates = targets_stft.real.new_empty(targets_stft.shape[:3] + (nb_timesteps,))
    for j in range(targets_stft.shape[1]):
        estimates[:, j] = istft(targets_stft[:, j], fft.n_fft, fft.n_hop, fft.center, fft.normalized, nb_timesteps,
                                window)  # fmt: skip
    return estimates
