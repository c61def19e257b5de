"""The Open-Unmix separator (waveform in, stems out), ``openunmix.model.Separator.forward`` semantics."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..configs import SeparatorConfig, UMXConfig, UMXSeparatorConfig, WienerConfig
from ..shapes import wiener_chunks
from .filtering import wiener_planar
from .transforms import complex_norm, istft, stft
from .umx import open_unmix

__all__ = ["check_sources", "filter_and_invert", "filter_chunks", "separate", "target_names"]


def target_names(config: UMXSeparatorConfig) -> tuple[str, ...]:
    """Names of the separator's outputs, in order: the targets, then ``"residual"`` if enabled."""
    names = tuple(config.separator.targets)
    return names + ("residual",) if config.separator.wiener.residual else names


def check_sources(nb_sources: int, niter: int) -> None:
    """EM needs at least two sources (upstream divides by the mixture covariance of one source otherwise)."""
    if nb_sources == 1 and niter > 0:
        raise ValueError("the Wiener filter with niter > 0 needs at least two sources: enable residual=True")


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
    spectrograms = np.stack([open_unmix(weights[name], model, X) for name in sep.targets], axis=1)  # (B, S, C|1, F, T)
    targets_stft = filter_chunks(spectrograms, mix_stft, sep.wiener)  # (B, S', C, F, T)
    return istft(targets_stft, fft.n_fft, fft.n_hop, fft.center, fft.normalized, audio.shape[-1], window)


def filter_chunks(spectrograms: np.ndarray, mix_stft: np.ndarray, wiener: WienerConfig) -> np.ndarray:
    """The Wiener step of the separator: every chunk of ``wiener_win_len`` frames filtered on its own
    (:func:`core_spec.shapes.wiener_chunks`; each chunk has its own ``max_abs`` and EM statistics).

    Args:
        spectrograms: target magnitudes ``(nb_samples, nb_targets, nb_channels or 1, nb_bins, nb_frames)``.
        mix_stft: complex ``(nb_samples, nb_channels, nb_bins, nb_frames)``.
        wiener: the filter's settings.

    Returns:
        complex ``(nb_samples, nb_sources, nb_channels, nb_bins, nb_frames)``, sources = targets [+ residual].
    """
    nb_sources = spectrograms.shape[1] + int(wiener.residual)
    check_sources(nb_sources, wiener.niter)
    out = np.zeros(mix_stft.shape[:1] + (nb_sources,) + mix_stft.shape[1:], dtype=np.complex128)
    for t in wiener_chunks(mix_stft.shape[-1], wiener.wiener_win_len).slices():
        out[..., t] = wiener_planar(
            spectrograms[..., t],
            mix_stft[..., t],
            wiener.niter,
            softmask=wiener.softmask,
            residual=wiener.residual,
            scale_factor=wiener.scale_factor,
            eps=wiener.eps,
            atan2=wiener.atan2,
        )
    return out


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
    fft = sep.stft
    spectrograms = np.moveaxis(spectrograms, -1, 1)  # (B, S, C|1, F, T)
    targets_stft = filter_chunks(spectrograms, mix_stft, sep.wiener)
    return istft(targets_stft, fft.n_fft, fft.n_hop, fft.center, fft.normalized, nb_timesteps, window)
