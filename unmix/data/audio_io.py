"""Reading (and, for test data, writing) audio files as float32 ``(channels, frames)`` NumPy arrays.

``soundfile`` (libsndfile: WAV, FLAC, OGG, ...) is used when it is importable (the main environment); otherwise
WAV files are read with ``scipy.io.wavfile`` (PCM 8/16/24/32-bit and float; memory-mapped where it can be, so a
short excerpt of a long file does not read the whole file). Integer PCM is scaled like libsndfile:
``x / 2^(bits - 1)`` (8-bit: ``(x - 128) / 128``), so both readers give identical samples.
"""

from __future__ import annotations

import os
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["AUDIO_EXTENSIONS", "AudioInfo", "audio_info", "read_audio", "write_wav"]

AUDIO_EXTENSIONS = (".wav", ".flac")


@dataclass(frozen=True)
class AudioInfo:
    """Header of an audio file: sample rate (Hz), number of frames, number of channels."""

    rate: int
    frames: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.rate


def _soundfile():
    try:
        import soundfile
    except (ImportError, OSError):  # OSError: the module is there but libsndfile is not
        return None
    return soundfile


def _scipy_read(path: Path) -> tuple[int, np.ndarray]:
    from scipy.io import wavfile

    try:
        return wavfile.read(path, mmap=True)
    except ValueError:  # 24-bit files cannot be memory-mapped
        return wavfile.read(path)


def _need_wav(path: Path) -> None:
    if path.suffix.lower() != ".wav":
        raise RuntimeError(f"cannot read {path}: only WAV files can be read without the soundfile package")


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Rate, frames and channels of ``path`` without decoding its samples."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} not found")
    sf = _soundfile()
    if sf is not None:
        info = sf.info(str(path))
        return AudioInfo(int(info.samplerate), int(info.frames), int(info.channels))
    _need_wav(path)
    rate, data = _scipy_read(path)
    return AudioInfo(int(rate), int(data.shape[0]), 1 if data.ndim == 1 else int(data.shape[1]))


def _to_float32(data: np.ndarray) -> np.ndarray:
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(data.dtype, np.integer):
        return data.astype(np.float32) / float(2 ** (8 * data.dtype.itemsize - 1))
    return data.astype(np.float32)


def read_audio(path: str | os.PathLike, start: int = 0, frames: int | None = None) -> tuple[np.ndarray, int]:
    """Frames ``[start, start + frames)`` of ``path`` (fewer where the file ends first; all when ``frames`` is
    ``None``) as float32 ``(channels, n)``, and the sample rate."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file {path} not found")
    if start < 0 or (frames is not None and frames < 0):
        raise ValueError(f"read_audio: negative start {start} or frames {frames}")
    stop = None if frames is None else start + frames
    sf = _soundfile()
    if sf is not None:
        data, rate = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
        return np.ascontiguousarray(data.T), int(rate)
    _need_wav(path)
    rate, data = _scipy_read(path)
    data = data[start:stop]
    data = data[:, None] if data.ndim == 1 else data
    return np.ascontiguousarray(_to_float32(np.asarray(data)).T), int(rate)


def write_wav(path: str | os.PathLike, audio: np.ndarray, rate: int) -> Path:
    """Write ``audio`` ``(channels, frames)`` in ``[-1, 1]`` as 16-bit PCM WAV (stdlib ``wave``; clipped, rounded)."""
    path = Path(path)
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 2:
        raise ValueError(f"write_wav expects (channels, frames), got {audio.shape}")
    pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(audio.shape[0])
        f.setsampwidth(2)
        f.setframerate(int(rate))
        f.writeframes(np.ascontiguousarray(pcm.T).tobytes())
    return path
