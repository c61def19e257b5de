"""Session fixtures of the ``unmix-separate`` tests: the real clip and upstream-written models, converted."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# OpenMP threads that spin while waiting stall single calls on a shared machine (set before torch starts them)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass(frozen=True)
class Inputs:
    clip: Path  # the whole stempeg clip, float WAV, 44.1 kHz stereo
    excerpt: Path  # its first 3 s
    umxhq: Path  # canonical umxhq-shaped separator (from an upstream-written folder, by unmix-convert)
    umxhq_folder: Path  # the upstream folder itself
    demucs: Path  # canonical small Demucs (from an upstream demucs package, by unmix-convert)
    demucs_package: Path  # the package itself


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    from parity_tests.separate import inputs as make

    root = tmp_path_factory.mktemp("separate-inputs")
    folder = make.write_umxhq_folder(root / "umxhq-upstream")
    package = make.write_demucs_package(root / "demucs_small.th")
    return Inputs(
        clip=make.write_clip(root / "clip.wav"),
        excerpt=make.write_clip(root / "excerpt.wav", seconds=3.0),
        umxhq=make.convert(folder, root / "umxhq", "umxhq"),
        umxhq_folder=folder,
        demucs=make.convert(package, root / "demucs_small"),
        demucs_package=package,
    )
