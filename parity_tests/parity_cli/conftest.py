"""Session fixtures of the ``unmix-parity`` tests: models written by the upstream code itself, in a temporary folder.

- ``umxhq_folder``: an Open-Unmix model folder as openunmix 1.3's ``scripts/train.py`` writes it
  (``parity_tests.convert.checkpoints.write_umx_folder``), umxhq shapes (8.9 M parameters a target), seeded;
- ``demucs_package``: ``demucs.utils.save_model`` of a seeded Demucs v2 at the real depth and a small channel
  count, with half-second segments so that the excerpt is split into overlapping chunks (:data:`DEMUCS`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core_spec.configs import DemucsConfig, umx_preset

# OpenMP threads that spin while waiting stall single calls on a shared machine (set before torch starts them)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEMUCS = DemucsConfig(channels=4, segment_length=22050)
SECONDS = "1"  # of the stempeg clip, for every run (CI time)


@pytest.fixture(scope="session")
def umxhq_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from parity_tests.convert.checkpoints import write_umx_folder

    folder = tmp_path_factory.mktemp("parity-models") / "umxhq"
    write_umx_folder(folder, umx_preset("umxhq"), seed=3)
    return folder


@pytest.fixture(scope="session")
def demucs_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from parity_tests.convert.checkpoints import write_demucs_package

    path = tmp_path_factory.mktemp("parity-models") / "demucs_small.th"
    write_demucs_package(path, DEMUCS, seed=5)
    return path
