"""Multitrack datasets on disk, as lists of :class:`Track`: MUSDB18 stems, the MUSDB18-HQ WAV layout, and plain
folders of per-source files.

:func:`open_tracks` recognises, under ``root``:

- a single track folder: ``root/<source>.wav|.flac`` (one track, whatever the subset);
- the WAV layout (MUSDB18-HQ, demucs's ``--wav``): ``root/<subset>/<track>/<source>.wav|.flac`` (and optionally
  ``mixture.wav``), every track holding every source;
- source folders (openunmix's ``SourceFolderDataset``): ``root/<subset>/<source>/<any name>.wav|.flac``, one file
  per recording of one source; unaligned by design (the datasets mix random recordings of each source);
- MUSDB18 stems: ``root/<subset>/*.stem.mp4`` read with ``musdb`` (``musdb.DB``; needs musdb and ffmpeg, main
  environment only).

``subset="valid"`` without a ``root/valid`` folder is MUSDB's validation split of ``root/train`` (the 14 tracks
listed in musdb's ``mus.yaml``; ``subset="train"`` then leaves them out), as upstream's ``split="valid"``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unmix.data.audio_io import AUDIO_EXTENSIONS, AudioInfo, audio_info, read_audio

__all__ = [
    "DEFAULT_SOURCES",
    "MIXTURE",
    "DataError",
    "FileTrack",
    "MusdbTrack",
    "Track",
    "musdb_validation_tracks",
    "open_tracks",
]

DEFAULT_SOURCES = ("drums", "bass", "other", "vocals")
MIXTURE = "mixture"


class DataError(ValueError):
    """A dataset that cannot be used as asked: wrong sample rate, channel count, lengths, layout."""


class Track:
    """One multitrack recording. Subclasses implement :meth:`load_frames`.

    Attributes:
        name: the track's name (folder or file stem).
        rate: sample rate in Hz.
        sources: the sources this track holds (all of the requested ones, or one for source folders).
        frames: length in samples (every source has this length).
        channels: number of audio channels of every source.
    """

    name: str
    rate: int
    sources: tuple[str, ...]
    frames: int
    channels: int
    has_mixture: bool = False

    @property
    def duration(self) -> float:
        return self.frames / self.rate

    def load_frames(
        self, start: int = 0, frames: int | None = None, sources: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Samples ``[start, start + frames)`` of every source (fewer where the track ends; all when ``frames`` is
        ``None``): ``{source: float32 (channels, n)}``."""
        raise NotImplementedError

    def load_mixture_frames(self, start: int = 0, frames: int | None = None) -> np.ndarray:
        """The mixture ``(channels, n)``: the stored mixture where the track has one (MUSDB's stem 0,
        ``mixture.wav``), else the sum of the sources."""
        stems = self.load_frames(start, frames)
        return np.sum(np.stack(list(stems.values())), axis=0, dtype=np.float32)

    @staticmethod
    def _span(rate: int, start_s: float | None, dur_s: float | None) -> tuple[int, int | None]:
        # openunmix's load_audio: frame_offset = int(start * rate), num_frames = int(dur * rate)
        start = 0 if start_s is None else int(start_s * rate)
        return start, (None if dur_s is None else int(dur_s * rate))

    def load(
        self, start_s: float | None = None, dur_s: float | None = None, sources: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Like :meth:`load_frames` with seconds (``int(start_s * rate)``, ``int(dur_s * rate)`` samples, as
        upstream's ``load_audio``); ``None``: from the start / to the end."""
        start, frames = self._span(self.rate, start_s, dur_s)
        return self.load_frames(start, frames, sources)

    def load_mixture(self, start_s: float | None = None, dur_s: float | None = None) -> np.ndarray:
        start, frames = self._span(self.rate, start_s, dur_s)
        return self.load_mixture_frames(start, frames)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, rate={self.rate}, channels={self.channels}, "
            f"frames={self.frames}, sources={self.sources})"
        )


def _audio_file(folder: Path, stem: str) -> Path | None:
    for ext in AUDIO_EXTENSIONS:
        path = folder / f"{stem}{ext}"
        if path.is_file():
            return path
    return None


class FileTrack(Track):
    """A track made of one audio file per source (``{source: path}``), checked on construction: every file exists
    and all share one sample rate, one length and one channel count."""

    def __init__(self, name: str, files: dict[str, Path], mixture: Path | None = None) -> None:
        if not files:
            raise DataError(f"track {name!r}: no source files")
        self.name = name
        self.files = {s: Path(p) for s, p in files.items()}
        self.mixture_file = Path(mixture) if mixture is not None else None
        self.sources = tuple(self.files)
        checked = dict(self.files)
        if self.mixture_file is not None:
            checked[MIXTURE] = self.mixture_file
        infos: dict[str, AudioInfo] = {s: audio_info(p) for s, p in checked.items()}
        first_source, first = next(iter(infos.items()))
        for source, info in infos.items():
            for field, unit in (("rate", "Hz"), ("frames", "samples"), ("channels", "channels")):
                if getattr(info, field) != getattr(first, field):
                    raise DataError(
                        f"track {name!r}: {checked[source].name} has {getattr(info, field)} {unit}, "
                        f"{checked[first_source].name} has {getattr(first, field)}: every source of a track must "
                        "share one sample rate, length and channel count"
                    )
        self.rate, self.frames, self.channels = first.rate, first.frames, first.channels
        self.has_mixture = self.mixture_file is not None

    def load_frames(
        self, start: int = 0, frames: int | None = None, sources: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        out = {}
        for source in self.sources if sources is None else sources:
            if source not in self.files:
                raise KeyError(f"track {self.name!r} has no source {source!r}; it has {self.sources}")
            out[source] = read_audio(self.files[source], start, frames)[0]
        return out

    def load_mixture_frames(self, start: int = 0, frames: int | None = None) -> np.ndarray:
        if self.mixture_file is not None:
            return read_audio(self.mixture_file, start, frames)[0]
        return super().load_mixture_frames(start, frames)


class MusdbTrack(Track):
    """A ``musdb.MultiTrack`` (stem file): sources decoded with ffmpeg (through stempeg) on each load."""

    def __init__(self, track, sources: Sequence[str]) -> None:
        missing = [s for s in sources if s not in track.sources]
        if missing:
            raise DataError(f"track {track.name!r} has no source(s) {missing}; it has {sorted(track.sources)}")
        self.track = track
        self.name = track.name
        self.rate = int(track.rate)
        self.sources = tuple(sources)
        self.has_mixture = True
        self.frames = round(float(track.duration) * self.rate)
        self.channels = 2  # MUSDB18 stems are stereo (decoding a stem to look would cost a second per track)

    def _read(self, get, start: int, frames: int | None) -> np.ndarray:
        self.track.chunk_start = start / self.rate
        self.track.chunk_duration = None if frames is None else frames / self.rate
        try:
            audio = np.asarray(get(), dtype=np.float32).T  # musdb: (frames, channels)
        finally:
            self.track.chunk_start, self.track.chunk_duration = 0, None
        if frames is not None:  # ffmpeg seeks in seconds: make the length exact
            n = min(frames, max(self.frames - start, 0))
            audio = audio[:, :n]
            if audio.shape[1] < n:
                audio = np.pad(audio, ((0, 0), (0, n - audio.shape[1])))
        return np.ascontiguousarray(audio)

    def load_frames(
        self, start: int = 0, frames: int | None = None, sources: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        out = {}
        for source in self.sources if sources is None else sources:
            if source not in self.sources:
                raise KeyError(f"track {self.name!r} has no source {source!r}; it has {self.sources}")
            out[source] = self._read(lambda s=source: self.track.sources[s].audio, start, frames)
        return out

    def load_mixture_frames(self, start: int = 0, frames: int | None = None) -> np.ndarray:
        return self._read(lambda: self.track.audio, start, frames)


def musdb_validation_tracks() -> tuple[str, ...] | None:
    """MUSDB18's validation split (track names from musdb's ``mus.yaml``); ``None`` without musdb/yaml."""
    try:
        import musdb
        import yaml
    except ImportError:
        return None
    with open(Path(musdb.__file__).parent / "configs" / "mus.yaml") as f:
        return tuple(yaml.safe_load(f)["validation_tracks"])


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def _track_folder(folder: Path, sources: Sequence[str]) -> FileTrack:
    files = {s: _audio_file(folder, s) for s in sources}
    missing = [s for s, p in files.items() if p is None]
    if missing:
        present = sorted(p.name for p in _audio_files(folder)) if folder.is_dir() else []
        raise FileNotFoundError(
            f"track {folder}: missing source file(s) {[f'{s}.wav' for s in missing]} (found {present})"
        )
    return FileTrack(folder.name, files, _audio_file(folder, MIXTURE))  # type: ignore[arg-type]


def _is_track_folder(folder: Path, sources: Sequence[str]) -> bool:
    return any(_audio_file(folder, s) is not None for s in (*sources, MIXTURE))


def _source_folder_tracks(subset_dir: Path, sources: Sequence[str]) -> list[Track]:
    tracks: list[Track] = []
    for source in sources:
        folder = subset_dir / source
        files = _audio_files(folder) if folder.is_dir() else []
        if not files:
            raise FileNotFoundError(f"source folder {folder}: no {'/'.join(AUDIO_EXTENSIONS)} files for {source!r}")
        tracks += [FileTrack(f"{source}/{p.stem}", {source: p}) for p in files]
    return tracks


def _musdb_tracks(root: Path, subset: str, sources: Sequence[str]) -> list[Track]:
    try:
        import musdb
    except ImportError:
        raise RuntimeError(
            f"{root} holds MUSDB18 stem files (.stem.mp4): reading them needs the musdb package and ffmpeg "
            "(main environment), or convert them to the WAV layout (musdb's 'musdbconvert')"
        ) from None
    if subset in ("train", "valid"):
        db = musdb.DB(root=str(root), subsets="train", split=subset)
    else:
        db = musdb.DB(root=str(root), subsets=subset)
    return [MusdbTrack(t, sources) for t in db.tracks]


def _check(tracks: list[Track], sample_rate: float | None, nb_channels: int | None) -> None:
    for track in tracks:
        if sample_rate is not None and track.rate != sample_rate:
            raise DataError(
                f"track {track.name!r} has a sample rate of {track.rate} Hz, the model expects {sample_rate:g} Hz "
                "(resample the data)"
            )
        if nb_channels is not None and track.channels != nb_channels:
            raise DataError(f"track {track.name!r} has {track.channels} channel(s), expected {nb_channels}")


def open_tracks(
    root: str | os.PathLike,
    subset: str = "train",
    sources: Sequence[str] = DEFAULT_SOURCES,
    sample_rate: float | None = None,
    nb_channels: int | None = None,
) -> list[Track]:
    """The tracks of ``subset`` (``"train"``, ``"valid"``, ``"test"``) under ``root``, sorted by name.

    Args:
        root: a dataset root in one of the layouts of this module's docstring.
        sources: the sources every track must hold (source folders: the folders to read).
        sample_rate, nb_channels: when given, every track must have them (a :class:`DataError` otherwise).

    Raises:
        FileNotFoundError: ``root`` or a source file is missing; :class:`DataError`: inconsistent files.
    """
    root = Path(root).expanduser()
    sources = tuple(sources)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist (or is not a folder)")
    tracks: list[Track]
    subset_dir = root / subset
    if any(_audio_file(root, s) for s in sources):  # a single track folder
        tracks = [_track_folder(root, sources)]
    elif subset_dir.is_dir():
        if any(subset_dir.glob("*.stem.mp4")):
            tracks = _musdb_tracks(root, subset, sources)
        else:
            folders = sorted(p for p in subset_dir.iterdir() if p.is_dir())
            if folders and all(_is_track_folder(p, sources) for p in folders):
                if subset == "train" and not (root / "valid").is_dir():
                    valid_names = set(musdb_validation_tracks() or ())  # MUSDB18-HQ: leave its validation split out
                    folders = [p for p in folders if p.name not in valid_names]
                tracks = [_track_folder(p, sources) for p in folders]
            elif folders and {p.name for p in folders} <= set(sources) | {MIXTURE}:
                tracks = _source_folder_tracks(subset_dir, sources)
            else:
                bad = [p.name for p in folders if not _is_track_folder(p, sources)] if folders else []
                raise FileNotFoundError(
                    f"{subset_dir}: expected track folders holding {[f'{s}.wav' for s in sources]}, or one folder "
                    f"per source; {'no sub-folders' if not folders else f'these hold no source file: {bad}'}"
                )
    elif subset in ("train", "valid") and (root / "train").is_dir():
        # MUSDB's split of its train subset: stems through musdb, WAV folders by musdb's validation list
        if any((root / "train").glob("*.stem.mp4")):
            tracks = _musdb_tracks(root, subset, sources)
        else:
            valid_names = musdb_validation_tracks()
            if valid_names is None:
                raise FileNotFoundError(
                    f"{root / subset} does not exist; MUSDB's validation split of {root / 'train'} needs musdb "
                    "installed: create a 'valid' folder instead"
                )
            folders = sorted(p for p in (root / "train").iterdir() if p.is_dir())
            keep = [p for p in folders if (p.name in valid_names) == (subset == "valid")]
            tracks = [_track_folder(p, sources) for p in keep]
    else:
        raise FileNotFoundError(f"{root}: no '{subset}' folder and no source file {[f'{s}.wav' for s in sources]}")
    if not tracks:
        raise FileNotFoundError(f"{root}: no tracks in subset {subset!r}")
    _check(tracks, sample_rate, nb_channels)
    return sorted(tracks, key=lambda t: t.name)
