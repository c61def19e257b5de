"""Demucs v2 training and validation examples: demucs 2.0.3's ``Wavset`` on :class:`~unmix.data.tracks.Track`
lists, NumPy only.

Training: every track is cut into strided segments of ``valid_length + data_stride`` samples (``Shift`` then crops
``data_stride`` of them at a random offset, see :func:`~unmix.data.demucs_augment`); a track of ``L`` samples
gives ``ceil((L - length) / stride) + 1`` segments (1 when shorter), the last ones zero-padded at the end; segment
``k`` starts at ``k * data_stride``. Validation: the whole tracks. The order of items is fixed: shuffling is the
loader's (:func:`~unmix.data.batches`).

Normalisation (``Wavset(normalize=True)``, upstream's default ``norm_wav``): each item is ``(x - mean) / std`` with
the mean and the (unbiased) standard deviation of the track's mono mixture, computed once per track. Channels are
converted like upstream's ``convert_audio_channels`` (mono duplicated, extra channels dropped, down-mix to mono).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from unmix.data.tracks import DataError, Track

__all__ = ["DemucsDataset", "convert_audio_channels"]


def convert_audio_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """``(C, T)`` -> ``(channels, T)`` as demucs: same, mean (to mono), repeat (from mono) or the first ones."""
    have = audio.shape[0]
    if have == channels:
        return audio
    if channels == 1:
        return audio.mean(axis=0, keepdims=True)
    if have == 1:
        return np.repeat(audio, channels, axis=0)
    if have > channels:
        return audio[:channels]
    raise DataError(f"cannot convert {have} audio channels to {channels}")


class DemucsDataset:
    """``[i] -> sources`` float32 ``(S, C, T)``: ``T = valid_length + data_stride`` (train) or the track (valid).

    Args:
        tracks: from :func:`~unmix.data.open_tracks`, opened with the model's sources (every track must hold
            every source: source folders are not aligned, Demucs cannot use them).
        config: a :class:`~core_spec.training.DemucsTrainConfig` (``data_stride``; ``norm_wav`` if it has one).
        valid_length: the model's ``valid_length(config.samples)`` (:func:`core_spec.shapes.valid_length`).
        train: strided segments (``True``) or whole tracks.
        sources: the order of the sources (default: the first track's).
        audio_channels: channels of every item (the model's ``audio_channels``).
        sample_rate: when given, every track must have it (upstream resamples; here it is an error).
        normalize: ``None`` = the recipe's ``norm_wav`` if it has one, else upstream's default ``True``.
    """

    def __init__(
        self,
        tracks: Sequence[Track],
        config,
        valid_length: int,
        train: bool = True,
        sources: Sequence[str] | None = None,
        audio_channels: int = 2,
        sample_rate: float | None = None,
        normalize: bool | None = None,
    ) -> None:
        tracks = list(tracks)
        if not tracks:
            raise DataError("DemucsDataset: no tracks")
        self.sources = tuple(sources) if sources is not None else tuple(tracks[0].sources)
        for track in tracks:
            missing = [s for s in self.sources if s not in track.sources]
            if missing:
                raise DataError(f"track {track.name!r} lacks source(s) {missing}: Demucs needs aligned multitracks")
            if sample_rate is not None and track.rate != sample_rate:
                raise DataError(
                    f"track {track.name!r} has a sample rate of {track.rate} Hz, the model expects "
                    f"{sample_rate:g} Hz (resample the data)"
                )
        rates = {t.rate for t in tracks}
        if len(rates) > 1:
            raise DataError(f"tracks of different sample rates {sorted(rates)}: resample the data")
        self.tracks = tracks
        self.config = config
        self.train = train
        self.audio_channels = int(audio_channels)
        self.normalize = getattr(config, "norm_wav", True) if normalize is None else bool(normalize)
        self.length = int(valid_length) + int(config.data_stride) if train else None
        self.stride = int(config.data_stride) or int(valid_length)
        self._stats: dict[int, tuple[float, float]] = {}
        self.num_examples = [self._examples(t) for t in tracks]
        self._offsets = np.cumsum([0, *self.num_examples])

    def _examples(self, track: Track) -> int:
        if self.length is None or track.frames < self.length:
            return 1
        return int(math.ceil((track.frames - self.length) / self.stride) + 1)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(track index, first sample)`` of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        track = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return track, (index - int(self._offsets[track])) * self.stride if self.length is not None else 0

    def track_statistics(self, track_index: int) -> tuple[float, float]:
        """``(mean, std)`` of the track's mono mixture (``torch.std``: unbiased), as demucs's ``_track_metadata``."""
        if track_index not in self._stats:
            mono = self.tracks[track_index].load_mixture_frames(0, None).astype(np.float64).mean(axis=0)
            self._stats[track_index] = (float(mono.mean()), float(mono.std(ddof=1)))
        return self._stats[track_index]

    def mixture(self, track_index: int) -> np.ndarray:
        """The whole track's mixture as the file holds it, in the model's channels ``(audio_channels, T)``, not
        normalised (what demucs 2.0.3's ``validate_model`` separates)."""
        return convert_audio_channels(self.tracks[track_index].load_mixture_frames(), self.audio_channels)

    def __getitem__(self, index: int) -> np.ndarray:
        track_index, start = self.locate(index)
        track = self.tracks[track_index]
        stems = track.load_frames(start, self.length, self.sources)
        example = np.stack([convert_audio_channels(stems[s], self.audio_channels) for s in self.sources])
        if self.normalize:
            mean, std = self.track_statistics(track_index)
            example = (example - np.float32(mean)) / np.float32(std)
        if self.length is not None and example.shape[-1] < self.length:
            example = np.pad(example, ((0, 0), (0, 0), (0, self.length - example.shape[-1])))
        return np.ascontiguousarray(example, dtype=np.float32)
