"""Open-Unmix's input statistics: ``get_statistics`` of openunmix 1.3.0 ``scripts/train.py``, without sklearn.

Upstream runs ``sklearn.preprocessing.StandardScaler.partial_fit`` over every training track, whole (no excerpt,
no augmentation, no track mixing), on the frames of ``|STFT(mixture)|`` averaged over the channels (the training
STFT: ``center=False``), and returns ``mean_`` and ``std = max(scale_, 1e-4 * max(scale_))``: per bin the mean
and the population standard deviation over all frames of all tracks (a bin that is constant gets 1, sklearn's rule).
The model then holds ``input_mean = -mean[:max_bin]`` and ``input_scale = 1 / std[:max_bin]``
(:func:`core_spec.training.input_scaler_weights`).

Here the frames come from :func:`core_spec.reference.transforms.stft` in float64, in blocks of frames (a whole
MUSDB track at once would need gigabytes), accumulated with Chan's pairwise update (what ``partial_fit`` does).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from core_spec.configs import STFTConfig, UMXConfig, UMXSeparatorConfig
from core_spec.reference.transforms import stft as reference_stft
from unmix.data.tracks import Track

__all__ = ["RunningMeanVar", "mono_magnitude_frames", "umx_statistics"]

FRAMES_PER_BLOCK = 256


class RunningMeanVar:
    """Per-feature count, mean and sum of squared deviations, merged batch by batch (Chan et al.)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        """Add the rows of ``x`` ``(n, features)``."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[0] == 0:
            return
        n_b = x.shape[0]
        mean_b = x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
        self.n = n

    @property
    def var(self) -> np.ndarray:
        """Population variance (``ddof=0``, as ``StandardScaler.var_``)."""
        if self.mean is None:
            raise ValueError("no frames were added")
        return self.m2 / self.n


def _stft_of(config: UMXConfig | UMXSeparatorConfig, stft: STFTConfig | None) -> STFTConfig:
    if stft is not None:
        return stft
    if isinstance(config, UMXSeparatorConfig):
        return config.separator.stft
    n_fft = 2 * (config.nb_bins - 1)
    return STFTConfig(n_fft=n_fft, n_hop=n_fft // 4)


def mono_magnitude_frames(audio: np.ndarray, n_fft: int, n_hop: int, center: bool = False) -> Iterable[np.ndarray]:
    """Blocks of frames ``(frames, nb_bins)`` of the channel-averaged magnitude of ``audio`` ``(C, T)``: upstream's
    ``encoder(x[None]).mean(1)`` transposed, computed ``FRAMES_PER_BLOCK`` frames at a time."""
    audio = np.asarray(audio, dtype=np.float64)
    if center:
        pad = n_fft // 2
        audio = np.pad(audio, ((0, 0), (pad, pad)), mode="reflect")
    total = 1 + (audio.shape[-1] - n_fft) // n_hop if audio.shape[-1] >= n_fft else 0
    for first in range(0, total, FRAMES_PER_BLOCK):
        count = min(FRAMES_PER_BLOCK, total - first)
        chunk = audio[:, first * n_hop : (first + count - 1) * n_hop + n_fft]
        mag = np.abs(reference_stft(chunk, n_fft, n_hop, center=False))  # (C, F, count)
        yield mag.mean(axis=0).T


def umx_statistics(
    tracks: Iterable[Track],
    model_config: UMXConfig | UMXSeparatorConfig,
    stft: STFTConfig | None = None,
    center: bool = False,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` per STFT bin, float64 ``(n_fft // 2 + 1,)``, as upstream's ``get_statistics``.

    Args:
        tracks: the training tracks (their whole mixtures are read, one track at a time).
        model_config: gives the STFT when ``stft`` is ``None`` (a separator config's, else ``n_fft = 2 (nb_bins -
            1)``, hop ``n_fft / 4``).
        stft: ``n_fft`` / ``n_hop`` of the training STFT; its ``center`` is ignored, see ``center``.
        center: upstream trains (and computes these statistics) on un-centred frames (the recipe's
            ``stft_center``).
        progress: a tqdm bar over the tracks.
    """
    cfg = _stft_of(model_config, stft)
    running = RunningMeanVar()
    tracks = list(tracks)
    if progress:
        from tqdm import tqdm

        tracks = tqdm(tracks, desc="input statistics", unit="track")
    for track in tracks:
        for block in mono_magnitude_frames(track.load_mixture_frames(0, None), cfg.n_fft, cfg.n_hop, center):
            running.update(block)
    if running.mean is None:
        raise ValueError(f"umx_statistics: no track is long enough for one STFT frame (n_fft={cfg.n_fft})")
    var = running.var
    scale = np.sqrt(var)
    # sklearn's _is_constant_feature: such features get scale 1 (no scaling)
    eps = np.finfo(np.float64).eps
    constant = var <= running.n * eps * var + (running.n * running.mean * eps) ** 2
    scale[constant] = 1.0
    return running.mean.copy(), np.maximum(scale, 1e-4 * np.max(scale))
