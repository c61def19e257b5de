"""Open-Unmix training and validation examples: upstream's ``MUSDBDataset`` / ``SourceFolderDataset`` sampling on
:class:`~unmix.data.tracks.Track` lists, NumPy only.

Training item ``i`` (``len = tracks holding the target * samples_per_track``), as openunmix 1.3.0
``MUSDBDataset.__getitem__`` with ``split="train"``:

- the track is ``tracks[i // samples_per_track]``; with ``random_track_mix`` *every* source (the target
  included, as upstream) comes from a track drawn at random among those holding it;
- each source gets its own excerpt start ``U[0, duration - seq_dur)`` seconds (upstream sets ``chunk_start`` per
  source, so even without track mixing the sources are not aligned) and ``int(seq_dur * rate)`` samples;
- each source excerpt goes through the recipe's ``source_augmentations`` (``gain``, ``channelswap``, ...);
- ``x`` is the sum of the sources, ``y`` the target (``"accompaniment"``: every source but ``vocals``).

Validation item ``i`` (``train=False``): the whole track ``i``, ``x`` its mixture (the stored one where there is
one, as upstream's ``track.audio``) and ``y`` its target. Source-folder data (one source per recording, no whole
tracks) validates like upstream's ``SourceFolderDataset(split="valid")``: item ``i`` draws each source's recording
with a generator seeded by ``i`` and takes its centre ``seq_dur``.

Randomness: item ``i`` of epoch ``e`` draws from ``numpy.random.default_rng([seed, e, i])``, so an item does not
depend on the order items are read in (shuffling, data-parallel shards, resuming give the same examples);
:meth:`UMXDataset.set_epoch` moves to the next epoch's draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unmix.data.augment import augment_force_stereo, umx_source_augmentation
from unmix.data.tracks import DataError, Track

__all__ = ["ACCOMPANIMENT", "UMXDataset"]

ACCOMPANIMENT = "accompaniment"


class UMXDataset:
    """``[i] -> (x, y)``: mixture and target, float32 ``(channels, frames)``.

    Args:
        tracks: from :func:`~unmix.data.open_tracks`.
        config: a :class:`~core_spec.training.UMXTrainConfig` (``target``, ``seq_dur``, ``samples_per_track``,
            ``source_augmentations``, ``random_track_mix``).
        rng_seed: seed of every draw (the recipe's ``seed`` normally).
        train: training sampling (``True``) or whole validation tracks (``False``).
        sample_rate, nb_channels: when given, every track must have them (``force_stereo`` in the augmentations
            accepts any channel count for 2).
    """

    def __init__(
        self,
        tracks: Sequence[Track],
        config,
        rng_seed: int,
        train: bool = True,
        sample_rate: float | None = None,
        nb_channels: int | None = None,
    ) -> None:
        tracks = list(tracks)
        if not tracks:
            raise DataError("UMXDataset: no tracks")
        self.config = config
        self.seed = int(rng_seed)
        self.train = train
        self.epoch = 0
        self.target = config.target
        self.sources: tuple[str, ...] = tuple(dict.fromkeys(s for t in tracks for s in t.sources))
        if self.target not in self.sources and not (self.target == ACCOMPANIMENT and "vocals" in self.sources):
            raise DataError(f"target {self.target!r} is not a source of the data {self.sources}")
        rates = {t.rate for t in tracks}
        if len(rates) > 1:
            raise DataError(f"tracks of different sample rates {sorted(rates)}: resample the data")
        self.rate = rates.pop()
        if sample_rate is not None and self.rate != sample_rate:
            raise DataError(f"the data is at {self.rate} Hz, the model expects {sample_rate:g} Hz (resample the data)")
        names = tuple(config.source_augmentations) if train else ()
        self._augment = umx_source_augmentation(names)
        forced = "force_stereo" in names
        channels = {t.channels for t in tracks}
        if not forced and len(channels) > 1:
            raise DataError(
                f"tracks of different channel counts {sorted(channels)} (add the 'force_stereo' augmentation)"
            )
        self.channels = 2 if forced else next(iter(channels))
        if nb_channels is not None and self.channels != nb_channels:
            raise DataError(f"the data has {self.channels} channel(s), the model expects {nb_channels}")
        self._force = forced or not train  # validation has no augmentation: keep the channel count consistent
        self.aligned = all(set(self.sources) <= set(t.sources) for t in tracks)
        self.frames = int(config.seq_dur * self.rate)
        if train:
            long_enough = [t for t in tracks if t.duration >= config.seq_dur]
            if not long_enough:
                longest = max(tracks, key=lambda t: t.duration)
                raise DataError(
                    f"no track lasts seq_dur={config.seq_dur} s (the longest, {longest.name!r}, lasts "
                    f"{longest.duration:.3f} s): lower --seq-dur"
                )
            tracks = long_enough
            if not self.aligned and not config.random_track_mix:
                raise DataError("the tracks do not all hold every source (source folders): enable random_track_mix")
        self.tracks = tracks
        self.by_source = {s: [t for t in tracks if s in t.sources] for s in self.sources}
        self.anchors = self.by_source.get(self.target, tracks)

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s draws from now on (training items differ from epoch to epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.train:
            return len(self.anchors) * self.config.samples_per_track
        return len(self.anchors) if not self.aligned else len(self.tracks)

    def _target(self, stems: dict[str, np.ndarray]) -> np.ndarray:
        if self.target in stems:
            return stems[self.target]
        return np.sum([a for s, a in stems.items() if s != "vocals"], axis=0, dtype=np.float32)

    def _channels(self, audio: np.ndarray) -> np.ndarray:
        if self.channels == 2 and audio.shape[0] != 2 and self._force:
            return augment_force_stereo(audio)
        return audio

    def _excerpt(self, track: Track, source: str, start_s: float) -> np.ndarray:
        audio = track.load(start_s, self.config.seq_dur, [source])[source]
        if audio.shape[1] < self.frames:  # int() rounding at the very end of a track
            audio = np.pad(audio, ((0, 0), (0, self.frames - audio.shape[1])))
        return audio[:, : self.frames]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        if not self.train and self.aligned:
            track = self.tracks[index]
            stems = track.load_frames(0, None, self.sources)
            x = self._channels(track.load_mixture_frames(0, None))
            return x, self._channels(self._target(stems))
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            track = self.anchors[index // self.config.samples_per_track]
        else:
            rng = np.random.default_rng([self.seed, index])
            track = self.anchors[index]
        stems = {}
        for source in self.sources:
            if (self.config.random_track_mix and self.train) or source not in track.sources:
                pool = self.by_source[source]
                chosen = pool[int(rng.integers(len(pool)))]
            else:
                chosen = track
            if self.train:
                start = rng.uniform(0.0, chosen.duration - self.config.seq_dur)
            else:  # upstream's centre segment: max(duration // 2 - seq_dur // 2, 0)
                start = max(chosen.duration // 2 - self.config.seq_dur // 2, 0.0)
            stems[source] = self._augment(self._channels(self._excerpt(chosen, source, start)), rng)
        x = np.sum(np.stack(list(stems.values())), axis=0, dtype=np.float32)
        return x, self._target(stems)
