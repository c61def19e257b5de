"""The Open-Unmix separator (waveform in, stems out), ``openunmix.model.Separator.forward`` semantics."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..configs import SeparatorConfig, UMXConfig, UMXSeparatorConfig
from .filtering import wiener
from .transforms import complex_norm, istft, stft
from .umx import open_unmix

__all__ = ["separate", "filter_and_invert", "target_names"]


def target_names(config: UMXSeparatorConfig) -> tuple[str, ...]:
    """Names of the separator's outputs, in order: the targets, then ``"residual"`` if enabled."""
    names = tuple(config.separator.targets)
    return names + ("residual",) if config.separator.wiener.residual else names


def separate(
    audio: np.ndarray,
    weights: Mapping[str, Mapping[str, np.ndarray]],
    config: UMXSeparatorConfig,
    window: np.ndarray | None = None,
) -> np.ndarray:
    """Separate a batch of mixtures.

    Args:
        audio: ``(nb_samples, nb_channels, nb_timesteps)`` at the model's sample rate, already checked by
            :func:`core_spec.audio.prepare_audio` (stereo).
        weights: ``{target: canonical weights}`` for every target of ``config.separator.targets``.
        config: the separator preset.
        window: STFT window (``None``: the float64 periodic Hann window).

    Returns:
        ``(nb_samples, nb_sources, nb_channels, nb_timesteps)``, sources in :func:`target_names` order.
    """
    sep = config.separator
    model: UMXConfig = config.model
    fft = sep.stft
    audio = np.asarray(audio, dtype=np.float64)
    mix_stft = stft(audio, fft.n_fft, fft.n_hop, fft.center, fft.normalized, window)  # (B, C, F, T)
    X = complex_norm(mix_stft, mono=model.nb_channels == 1)
    spectrograms = np.stack([open_unmix(weights[name], model, X) for name in sep.targets], axis=-1)
    return filter_and_invert(mix_stft, spectrograms, sep, audio.shape[-1], window)


def filter_and_invert(
    mix_stft: np.ndarray,
    spectrograms: np.ndarray,
    sep: SeparatorConfig,
    nb_timesteps: int,
    window: np.ndarray | None = None,
) -> np.ndarray:
    """The separator after the networks: Wiener filtering chunk by chunk, then the inverse STFT.

    Args:
        mix_stft: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        spectrograms: target magnitudes ``(nb_samples, nb_channels or 1, nb_bins, nb_frames, nb_targets)``.
        sep: the separator config (STFT and Wiener settings).
        nb_timesteps: length of the output signals.
        window: ISTFT window (``None``: the float64 periodic Hann window).

    Returns:
        ``(nb_samples, nb_sources, nb_channels, nb_timesteps)``.
    """
    fft, wcfg = sep.stft, sep.wiener
    nb_samples = mix_stft.shape[0]
    spectrograms = spectrograms.transpose(0, 3, 2, 1, 4)  # (B, T, F, C|1, S)
    mix_stft = mix_stft.transpose(0, 3, 2, 1)  # (B, T, F, C)

    nb_sources = spectrograms.shape[-1] + int(wcfg.residual)
    if nb_sources == 1 and wcfg.niter > 0:
        raise ValueError("the Wiener filter with niter > 0 needs at least two sources: enable residual=True")

    nb_frames = spectrograms.shape[1]
    win = wcfg.wiener_win_len or nb_frames
    targets_stft = np.zeros(mix_stft.shape + (nb_sources,), dtype=np.complex128)
    for b in range(nb_samples):
        for pos in range(0, nb_frames, win):  # chunks are filtered independently (max_abs scaling included)
            t = slice(pos, min(nb_frames, pos + win))
            targets_stft[b, t] = wiener(
                spectrograms[b, t],
                mix_stft[b, t],
                wcfg.niter,
                softmask=wcfg.softmask,
                residual=wcfg.residual,
                scale_factor=wcfg.scale_factor,
                eps=wcfg.eps,
                atan2=wcfg.atan2,
            )
    targets_stft = targets_stft.transpose(0, 4, 3, 2, 1)  # (B, S, C, F, T)
    return istft(targets_stft, fft.n_fft, fft.n_hop, fft.center, fft.normalized, nb_timesteps, window)
