"""Audio files in and out for ``unmix-separate``: reading any format, resampling, writing stems atomically.

Reading (:func:`read_audio_file`) gives float32 ``(nb_channels, nb_timesteps)`` and the file's rate:

- WAV, FLAC, OGG and AIFF with ``soundfile`` (libsndfile; :func:`unmix.data.audio_io.read_audio`), or with
  ``scipy.io.wavfile`` for WAV where soundfile is not installed (the NNabla environment); integer PCM scaled as
  libsndfile does (``x / 2^(bits - 1)``);
- everything else (MP3, M4A/AAC, MP4 stem files, Opus, ...) and the soundfile formats without soundfile by the
  ``ffmpeg`` executable (decoded to 32-bit float; a stem file's first audio stream is its mixture).

Any error names the file: :class:`AudioFileError`.

Resampling (:func:`resample`): ``scipy.signal.resample_poly`` with the windowed-sinc filter of julius / Demucs
(cut-off at 0.945 of the lower Nyquist frequency, 24 zero crossings each side, Hann window, edge samples repeated),
so a constant stays constant. Measured by ``python -m benchmarks resample`` (16/22.05/48/96 kHz -> 44.1 kHz and
44.1 -> 16 kHz): the same accuracy as the spec's :func:`core_spec.reference.resample.resample_frac` (76.6-76.9 dB SNR
up to 0.8 of the lower Nyquist frequency, 46.8-47.0 dB up to 0.9, stop band 51-64 dB) against 60 dB / 38-41 dB /
15-31 dB for resample_poly's own default filter, at 0.13-0.31 s per 30 s of stereo and 30-65 MB, where the spec's
gathers ``length x taps`` windows (856 MB and 2.7 s for 30 s at 22.05 kHz: too much for long files).

Writing (:func:`write_audio_file`): WAV (16/24-bit PCM or 32-bit float), FLAC (16/24-bit) with soundfile or
ffmpeg, MP3 (ffmpeg's libmp3lame, from 16-bit PCM, as demucs encodes). Samples are converted to integers here, by
one rule whatever the writer: ``round(x * 2^(bits - 1))`` clipped to the integer range (:func:`to_pcm`). Every
file goes to a temporary name beside its destination and is renamed only when complete, with the usual file mode;
:class:`StagedFiles` renames a group of files (a track's stems) together, after all of them were written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.canonical import default_file_mode

__all__ = [
    "AUDIO_SUFFIXES",
    "DEPTHS",
    "FORMATS",
    "AudioFileError",
    "StagedFiles",
    "find_audio_files",
    "read_audio_file",
    "resample",
    "resample_filter",
    "to_pcm",
    "write_audio_file",
]

SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff")
FFMPEG_SUFFIXES = (".mp3", ".m4a", ".mp4", ".aac", ".opus", ".webm", ".mka", ".wma")
AUDIO_SUFFIXES = SOUNDFILE_SUFFIXES + FFMPEG_SUFFIXES
FORMATS = ("wav", "flac", "mp3")
DEPTHS = ("int16", "int24", "float32")


class AudioFileError(ValueError):
    """An audio file cannot be read or written; the message names the file."""


def find_audio_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The files to separate: each file as given, and every audio file inside each folder (recursively, sorted).

    Hidden files (``.*``) inside folders are skipped. A path that does not exist is kept, so that the caller reports
    it in its turn.
    """
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = [
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in AUDIO_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            ]
            out.extend(sorted(found))
        else:
            out.append(path)
    return out


def _soundfile() -> Any:
    try:
        import soundfile
    except (ImportError, OSError):  # OSError: the module is there but libsndfile is not
        return None
    return soundfile


def _ffmpeg(tool: str = "ffmpeg") -> str:
    exe = shutil.which(tool)
    if exe is None:
        raise AudioFileError(f"{tool} is not on PATH: it is needed for MP3/M4A/MP4 files ('make setup' provides it)")
    return exe


def _probe(path: Path) -> tuple[int, int]:
    """``(rate, channels)`` of the first audio stream of ``path`` (ffprobe)."""
    command = [_ffmpeg("ffprobe"), "-v", "error", "-select_streams", "a:0", "-show_entries"]
    command += ["stream=sample_rate,channels", "-of", "json", str(path)]
    done = subprocess.run(command, capture_output=True, text=True)
    streams = json.loads(done.stdout or "{}").get("streams", []) if done.returncode == 0 else []
    if not streams:
        detail = done.stderr.strip().splitlines()[-1:] or ["no audio stream"]
        raise AudioFileError(f"{path}: cannot read audio ({detail[0]})")
    return int(streams[0]["sample_rate"]), int(streams[0]["channels"])


def _read_ffmpeg(path: Path, start: float, duration: float | None) -> tuple[np.ndarray, int]:
    rate, channels = _probe(path)
    command = [_ffmpeg(), "-nostdin", "-v", "error"]
    if start > 0:
        command += ["-ss", repr(start)]
    command += ["-i", str(path)]
    if duration is not None:
        command += ["-t", repr(duration)]
    command += ["-map", "0:a:0", "-f", "f32le", "-acodec", "pcm_f32le", "-"]
    done = subprocess.run(command, capture_output=True)
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise AudioFileError(f"{path}: ffmpeg cannot decode it ({detail[0]})")
    data = np.frombuffer(done.stdout, dtype="<f4")
    frames = data.size // channels
    return np.ascontiguousarray(data[: frames * channels].reshape(frames, channels).T), rate


def _read_libsndfile(path: Path, start: float, duration: float | None) -> tuple[np.ndarray, int]:
    from unmix.data.audio_io import audio_info, read_audio

    with warnings.catch_warnings():  # scipy's reader warns about every chunk it skips (e.g. a float file's fact)
        warnings.simplefilter("ignore")
        info = audio_info(path)
        first = round(start * info.rate)
        frames = None if duration is None else round(duration * info.rate)
        return read_audio(path, start=first, frames=frames)


def read_audio_file(
    path: str | os.PathLike, start: float = 0.0, duration: float | None = None
) -> tuple[np.ndarray, int]:
    """Samples ``[start, start + duration)`` seconds of ``path`` (all when ``duration`` is ``None``).

    Returns:
        float32 ``(nb_channels, nb_timesteps)`` and the file's sample rate in Hz.

    Raises:
        AudioFileError: the file does not exist or cannot be decoded (the message names it and the reason).
    """
    path = Path(path)
    if not path.exists():
        raise AudioFileError(f"{path}: no such file")
    if not path.is_file():
        raise AudioFileError(f"{path}: not a file")
    if start < 0 or (duration is not None and duration <= 0):
        raise AudioFileError(f"{path}: --start must be >= 0 and --duration > 0 (got {start}, {duration})")
    suffix = path.suffix.lower()
    use_libsndfile = suffix in SOUNDFILE_SUFFIXES and (_soundfile() is not None or suffix == ".wav")
    try:
        if use_libsndfile:
            return _read_libsndfile(path, start, duration)
        return _read_ffmpeg(path, start, duration)
    except AudioFileError:
        raise
    except Exception as e:  # whatever a decoder raises on a corrupt file (scipy: even UnboundLocalError)
        raise AudioFileError(f"{path}: cannot read audio ({type(e).__name__}: {e})") from None


# --- resampling -----------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def resample_filter(up: int, down: int, zeros: int = 24, rolloff: float = 0.945) -> np.ndarray:
    """The FIR filter at ``up`` times the input rate for ``resample_poly(x, up, down)``: a sinc cut at ``rolloff``
    of the lower Nyquist frequency, ``zeros`` zero crossings each side, Hann window (julius's design)."""
    from scipy import signal

    rate = max(up, down)
    half = math.ceil(zeros * rate / rolloff)
    taps = signal.firwin(2 * half + 1, rolloff / rate, window="hann")
    taps.setflags(write=False)
    return taps


def resample(audio: np.ndarray, old: int, new: int) -> np.ndarray:
    """Resample the last axis of ``audio`` from ``old`` Hz to ``new`` Hz (see the module docstring).

    Returns:
        float32, ``(..., ceil(length * new / old))`` samples.
    """
    from scipy import signal

    g = math.gcd(int(old), int(new))
    up, down = int(new) // g, int(old) // g
    if up == down:
        return np.asarray(audio, dtype=np.float32)
    taps = np.array(resample_filter(up, down))
    out = signal.resample_poly(np.asarray(audio, dtype=np.float32), up, down, axis=-1, window=taps, padtype="edge")
    return out.astype(np.float32, copy=False)


# --- writing --------------------------------------------------------------------------------------------------


def to_pcm(audio: np.ndarray, depth: str) -> np.ndarray:
    """Float samples -> integer PCM: ``int16`` (``round(x * 2^15)``), ``int24`` (``round(x * 2^23)``, stored as
    int32 ``<< 8``, the layout libsndfile and ffmpeg take); clipped to the integer range. ``float32``: a cast."""
    if depth == "float32":
        return np.asarray(audio, dtype=np.float32)
    bits = {"int16": 16, "int24": 24}[depth]
    scale = float(2 ** (bits - 1))
    pcm = np.clip(np.rint(np.asarray(audio, dtype=np.float64) * scale), -scale, scale - 1)
    return pcm.astype(np.int16) if bits == 16 else (pcm.astype(np.int32) << 8)


_SUBTYPES = {"int16": "PCM_16", "int24": "PCM_24", "float32": "FLOAT"}
_RAW = {"int16": ("s16le", "pcm_s16le"), "int24": ("s32le", "pcm_s24le"), "float32": ("f32le", "pcm_f32le")}


def _ffmpeg_encode(tmp: str, pcm: np.ndarray, rate: int, fmt: str, depth: str, bitrate: int) -> None:
    raw, codec = _RAW[depth]
    command = [_ffmpeg(), "-nostdin", "-v", "error", "-y", "-f", raw, "-ar", str(rate), "-ac", str(pcm.shape[0])]
    command += ["-i", "-"]
    if fmt == "mp3":
        command += ["-c:a", "libmp3lame", "-b:a", f"{bitrate}k"]
    elif fmt == "flac":
        command += ["-c:a", "flac"] + (["-sample_fmt", "s32", "-bits_per_raw_sample", "24"] if depth == "int24" else [])
    else:
        command += ["-c:a", codec]
    command += ["-f", fmt, tmp]
    done = subprocess.run(command, input=np.ascontiguousarray(pcm.T).tobytes(), capture_output=True)
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise OSError(f"ffmpeg could not encode {fmt}: {detail[0]}")


def write_audio_file(
    tmp: str | os.PathLike, audio: np.ndarray, rate: int, fmt: str, depth: str, bitrate: int = 320
) -> None:
    """Write ``audio`` ``(nb_channels, nb_timesteps)`` to the file ``tmp`` (whole; see :class:`StagedFiles` for the
    atomic rename).

    Args:
        fmt: ``"wav"``, ``"flac"`` or ``"mp3"``.
        depth: ``"int16"``, ``"int24"`` or ``"float32"`` (FLAC: integers only; MP3: ``"int16"``, lame's input).
        bitrate: MP3 bit rate in kbit/s.
    """
    if fmt not in FORMATS or depth not in DEPTHS:
        raise ValueError(f"format {fmt!r} / depth {depth!r}: expected one of {FORMATS} / {DEPTHS}")
    if fmt == "flac" and depth == "float32":
        raise ValueError("FLAC holds integer samples only: write --int16 or --int24")
    pcm = to_pcm(audio, "int16" if fmt == "mp3" else depth)
    sf = _soundfile()
    if fmt != "mp3" and sf is not None:
        sf.write(str(tmp), pcm.T, int(rate), subtype=_SUBTYPES[depth], format=fmt.upper())
    else:
        _ffmpeg_encode(str(tmp), pcm, int(rate), fmt, "int16" if fmt == "mp3" else depth, bitrate)


class StagedFiles:
    """Files written under temporary names beside their destinations, renamed together by :meth:`commit`.

    Use as a context manager: leaving the block by an exception (an error, ``KeyboardInterrupt``, the
    ``SystemExit`` of a SIGTERM handler) removes every temporary file and leaves the destinations as they were, so
    an interrupted run never leaves a partial file under a destination's name. Folders created for the files are
    removed again when they stay empty. Only a hard kill (SIGKILL, power loss) can leave a temporary file
    (``.<name>.<random>.tmp``) behind; the destinations are still never partial.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []
        self._created: list[Path] = []

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.discard()

    def folder(self, path: Path) -> None:
        """Create ``path`` (and missing parents), remembering what was created."""
        missing = [p for p in [path, *path.parents] if not p.exists()]
        path.mkdir(parents=True, exist_ok=True)
        self._created.extend(missing)  # innermost first

    def write(self, path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
        """Stage ``path``: ``write(tmp)`` writes the whole file under a temporary name in ``path``'s folder."""
        path = Path(path)
        self.folder(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        self._staged.append((Path(tmp), path))
        write(tmp)
        os.chmod(tmp, default_file_mode())
        return path

    def commit(self) -> list[Path]:
        """Rename every staged file to its destination; returns the destinations."""
        done = []
        while self._staged:
            tmp, path = self._staged[0]
            os.replace(tmp, path)
            self._staged.pop(0)
            done.append(path)
        self._created.clear()
        return done

    def discard(self) -> None:
        """Remove the staged temporary files (and the folders made for them, where empty)."""
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:
                break
        self._created.clear()
