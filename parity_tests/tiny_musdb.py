"""Tiny MUSDB-style WAV roots for the training tests (NumPy and the standard library only: both environments).

:func:`make_tiny_musdb` cuts the stempeg example (6 s of real music, stems drums, bass, other, vocals) into three
2-s tracks: ``train/`` holds two, ``valid/`` one; every track folder has ``drums.wav``, ``bass.wav``, ``other.wav``,
``vocals.wav`` and ``mixture.wav`` (16-bit stereo, 44.1 kHz; the stems scaled by 1/4 so that the mixture, their
exact integer sum, cannot clip). Nothing is committed: the stem file is decoded where it can be:

1. in the main environment (stempeg and ffmpeg importable): directly;
2. elsewhere (``.venv-nnabla`` has neither), by running this module in the main environment's Python
   (``$UNMIX_MAIN_PYTHON``, default ``<repo>/.venv/bin/python``) as a subprocess;
3. without either, a synthetic root of the same layout (seeded tones and noise) is written and ``origin.json``
   says so.

:func:`make_synthetic_root` writes seeded synthetic roots of any shape (rates, channels, lengths, layouts) for
the data tests. Command line: ``python -m parity_tests.tiny_musdb DEST``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unmix.data import write_wav

__all__ = ["SOURCES", "TINY_SECONDS", "TINY_TRACKS", "make_synthetic_root", "make_tiny_musdb", "synthetic_source"]

SOURCES = ("drums", "bass", "other", "vocals")  # the stem file's streams 1..4
TINY_RATE = 44100
TINY_SECONDS = 2.0
TINY_TRACKS = {"train": ("Falcon 69 - part 1", "Falcon 69 - part 2"), "valid": ("Falcon 69 - part 3",)}
STEM_GAIN = 0.25
REPO = Path(__file__).resolve().parent.parent


def _write_track(folder: Path, stems: dict[str, np.ndarray], rate: int, mixture: bool = True) -> None:
    """Stems ``{source: (C, T)}`` quantised to 16 bits; ``mixture.wav`` is their exact integer sum."""
    quantised = {s: np.round(np.clip(a, -1, 1 - 2**-15) * 32768.0) / 32768.0 for s, a in stems.items()}
    for source, audio in quantised.items():
        write_wav(folder / f"{source}.wav", audio, rate)
    if mixture:
        write_wav(folder / "mixture.wav", np.sum(list(quantised.values()), axis=0), rate)


def _origin(dest: Path, origin: str) -> Path:
    (dest / "origin.json").write_text(json.dumps({"origin": origin, "tracks": TINY_TRACKS}, indent=1) + "\n")
    return dest


def _from_stempeg(dest: Path) -> Path:
    import stempeg

    audio, rate = stempeg.read_stems(stempeg.example_stem_path())  # (5, T, C): mixture, drums, bass, other, vocals
    audio = np.asarray(audio, dtype=np.float64).transpose(0, 2, 1) * STEM_GAIN
    n = int(TINY_SECONDS * rate)
    names = [*TINY_TRACKS["train"], *TINY_TRACKS["valid"]]
    subsets = ["train"] * len(TINY_TRACKS["train"]) + ["valid"] * len(TINY_TRACKS["valid"])
    for k, (subset, name) in enumerate(zip(subsets, names)):
        part = audio[1:, :, k * n : (k + 1) * n]
        _write_track(dest / subset / name, {s: part[i] for i, s in enumerate(SOURCES)}, int(rate))
    return _origin(dest, "stempeg")


def synthetic_source(source: str, frames: int, rate: int, channels: int, seed: int) -> np.ndarray:
    """A seeded, music-like test signal for ``source`` ``(channels, frames)``, peak below 0.25."""
    rng = np.random.default_rng([seed, sum(map(ord, source))])
    t = np.arange(frames) / rate
    if source == "drums":
        env = np.exp(-((t * 4) % 1.0) * 12)
        mono = 0.2 * env * rng.standard_normal(frames)
    elif source == "bass":
        mono = 0.2 * np.sin(2 * np.pi * rng.uniform(40, 90) * t)
    elif source == "vocals":
        f0 = rng.uniform(180, 400)
        mono = 0.15 * np.sin(2 * np.pi * f0 * t + 3 * np.sin(2 * np.pi * 5 * t))
    else:
        freqs = rng.uniform(200, 2000, 3)
        mono = 0.06 * np.sum([np.sin(2 * np.pi * f * t) for f in freqs], axis=0)
    pans = rng.uniform(0.6, 1.0, channels)
    return np.clip(mono[None] * pans[:, None], -0.25, 0.25)


def make_synthetic_root(
    dest: str | os.PathLike,
    tracks: dict[str, Sequence[str]] | None = None,
    seconds: float | dict[str, float] = TINY_SECONDS,
    rate: int = TINY_RATE,
    channels: int = 2,
    sources: Sequence[str] = SOURCES,
    mixture: bool = True,
    seed: int = 0,
) -> Path:
    """A seeded WAV root ``dest/<subset>/<track>/<source>.wav`` (16-bit); ``seconds`` per track name or for all."""
    dest = Path(dest)
    tracks = TINY_TRACKS if tracks is None else tracks
    for subset, names in tracks.items():
        for k, name in enumerate(names):
            dur = seconds[name] if isinstance(seconds, dict) else seconds
            frames = int(dur * rate)
            stems = {
                s: synthetic_source(s, frames, rate, channels, seed * 1000 + 10 * k + len(subset)) for s in sources
            }
            _write_track(dest / subset / name, stems, rate, mixture)
    return dest


def make_tiny_musdb(dest: str | os.PathLike) -> Path:
    """The tiny MUSDB-style root under ``dest`` (created; see the module docstring for where it comes from).

    Returns ``dest``; ``dest/origin.json`` says ``"stempeg"`` or ``"synthetic"``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        import stempeg  # noqa: F401
    except ImportError:
        pass
    else:
        return _from_stempeg(dest)
    python = Path(os.environ.get("UNMIX_MAIN_PYTHON", REPO / ".venv" / "bin" / "python"))
    if python.exists() and Path(sys.executable).resolve() != python.resolve():
        done = subprocess.run(
            [str(python), "-m", "parity_tests.tiny_musdb", str(dest)], cwd=REPO, capture_output=True, text=True
        )
        if done.returncode == 0:
            return dest
        print(f"make_tiny_musdb: {python} failed ({done.stderr.strip()[-300:]}); writing a synthetic root")
    make_synthetic_root(dest)
    return _origin(dest, "synthetic")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m parity_tests.tiny_musdb DEST")
    print(make_tiny_musdb(sys.argv[1]))
