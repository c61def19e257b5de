"""The real multitrack clip shipped by ``stempeg`` (``stempeg.example_stem_path()``, 44.1 kHz stereo, about 6 s):
its four stems, decoded by stempeg (which runs ffmpeg), or read from a copy decoded earlier.

A machine without ffmpeg or stempeg (a GPU machine with none of this project's environments) reads the copy named
by ``$UNMIX_STEMPEG_CLIP``: an ``.npz`` written by :func:`save_example_stems` where the clip can be decoded
(``scripts/gpu_check.sh bundle`` does). NumPy only.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

__all__ = ["CLIP_ENV", "STEM_NAMES", "read_example_stems", "save_example_stems"]

CLIP_ENV = "UNMIX_STEMPEG_CLIP"
STEM_NAMES = ("drums", "bass", "other", "vocals")  # stream order of the stem file after the mixture


def read_example_stems() -> tuple[dict[str, np.ndarray], int]:
    """``({stem: float64 (nb_channels, nb_timesteps)}, rate)`` of the stempeg example.

    Raises:
        RuntimeError: it cannot be decoded (no ffmpeg on PATH, no stempeg) and ``$UNMIX_STEMPEG_CLIP`` is not set.
    """
    copy = os.environ.get(CLIP_ENV)
    if copy:
        with np.load(copy) as f:
            return {name: f[name].astype(np.float64) for name in STEM_NAMES}, int(f["rate"])
    try:
        import stempeg

        path = stempeg.example_stem_path()
        audio, rate = stempeg.read_stems(path)  # (5, nb_timesteps, nb_channels)
    except Exception as error:
        found = {tool: shutil.which(tool) for tool in ("ffmpeg", "ffprobe")}
        raise RuntimeError(
            f"cannot decode the stempeg example ({type(error).__name__}: {error}); ffmpeg/ffprobe on PATH: {found}. "
            f"'make setup' installs ffmpeg (or: apt-get install ffmpeg); elsewhere set ${CLIP_ENV} to a copy decoded "
            "by scripts/gpu_check.sh bundle"
        ) from error
    audio = np.asarray(audio, dtype=np.float64).transpose(0, 2, 1)
    return {name: audio[i + 1] for i, name in enumerate(STEM_NAMES)}, int(rate)


def save_example_stems(path: str | os.PathLike) -> Path:
    """Decode the example here and write its stems (float64) and rate to ``path`` (``.npz``)."""
    stems, rate = read_example_stems()
    path = Path(path)
    np.savez(path, rate=rate, **stems)
    return path


if __name__ == "__main__":
    import sys

    print(save_example_stems(sys.argv[1]))
