"""Running ``unmix-separate`` in the tests and reading what it wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unmix.separate_cli import main

__all__ = ["files_under", "read_stems", "run"]


def run(argv: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``unmix-separate ARGV`` in this process: ``(exit status, stdout, stderr)``."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_stems(folder: Path, names: list[str] | tuple[str, ...], ext: str = "wav") -> np.ndarray:
    """``(nb_stems, nb_channels, nb_timesteps)`` float32 read back (soundfile; ffmpeg for mp3)."""
    from unmix.audio_files import read_audio_file

    stems = []
    for name in names:
        audio, _ = read_audio_file(folder / f"{name}.{ext}")
        stems.append(audio)
    return np.stack(stems)


def files_under(folder: Path) -> list[str]:
    """Every file below ``folder`` (hidden ones included), relative, sorted."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
