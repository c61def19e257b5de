"""The training data pipeline, framework-neutral (NumPy only): every port's ``train.py`` reads its batches here.

- :func:`open_tracks`: MUSDB18 roots (stems via musdb, or the WAV layout) and plain per-source folders, as
  :class:`Track` lists;
- :class:`UMXDataset`: openunmix 1.3.0's training sampling and augmentations (``(x, y)`` items);
- :class:`DemucsDataset` and :func:`demucs_augment`: demucs 2.0.3's strided segments and augmentation pipeline;
- :func:`batches`: seeded shuffling and stacking, with data-parallel sharding;
- :func:`umx_statistics`: Open-Unmix's input scaler statistics.

See ``docs/training.md``.
"""

from unmix.data.audio_io import AudioInfo, audio_info, read_audio, write_wav
from unmix.data.augment import demucs_augment, umx_source_augmentation
from unmix.data.demucs_dataset import DemucsDataset, convert_audio_channels
from unmix.data.loader import batch_indices, batches, shard, stack
from unmix.data.stats import umx_statistics
from unmix.data.tracks import DEFAULT_SOURCES, MIXTURE, DataError, FileTrack, MusdbTrack, Track, open_tracks
from unmix.data.umx_dataset import ACCOMPANIMENT, UMXDataset

__all__ = [
    "ACCOMPANIMENT",
    "DEFAULT_SOURCES",
    "MIXTURE",
    "AudioInfo",
    "DataError",
    "DemucsDataset",
    "FileTrack",
    "MusdbTrack",
    "Track",
    "UMXDataset",
    "audio_info",
    "batch_indices",
    "batches",
    "convert_audio_channels",
    "demucs_augment",
    "open_tracks",
    "read_audio",
    "shard",
    "stack",
    "umx_source_augmentation",
    "umx_statistics",
    "write_wav",
]
