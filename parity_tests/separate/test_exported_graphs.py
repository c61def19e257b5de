"""TensorFlow's and JAX's exported graphs (:mod:`unmix.exported_graphs`): the second load of an Open-Unmix
separator reads the graph the first one exported and builds no model (Keras layers, Flax modules), and its
estimates equal the port's separator's bit for bit; a damaged entry, a failed write, a read-only cache and two
processes at once cost speed, never a result (at most one warning); other Wiener options or another length are
other entries. Loads in this process (the graphs need no compiler flags), then the whole command in its own
processes with the framework's cache on."""

from __future__ import annotations

import errno
import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity_tests.separate.helpers import read_stems
from unmix import exported_graphs
from unmix.audio_files import read_audio_file
from unmix.separate_models import load_model

REPO_ROOT = Path(__file__).resolve().parents[2]
STEMS = ("drums", "bass", "other", "vocals")


@pytest.fixture(scope="module", params=exported_graphs.EXPORTING_PORTS)
def framework(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def audio(inputs) -> np.ndarray:
    return read_audio_file(inputs.excerpt)[0][:, :44100]


@pytest.fixture(scope="module")
def plain(inputs, audio, framework) -> np.ndarray:
    """The port's separator's estimates (no cache)."""
    return load_model(inputs.umxhq, framework).separate(audio)


def _load(inputs, framework: str, folder: Path, warned: list[str], writable: bool = True, **options):
    return load_model(inputs.umxhq, framework, umx_options=options, exported=folder, exported_writable=writable,
                      warn=warned.append)  # fmt: skip


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{exported_graphs.SUFFIX}"))


def test_second_load_reads_the_graph_and_builds_no_model(inputs, framework, audio, plain, tmp_path) -> None:
    warned: list[str] = []
    first = _load(inputs, framework, tmp_path, warned)
    assert first.model is None, "the separator was built before a shape needed it"
    np.testing.assert_array_equal(first.separate(audio), plain)
    assert first.model is not None and len(_entries(tmp_path)) == 1
    second = _load(inputs, framework, tmp_path, warned)
    np.testing.assert_array_equal(second.separate(audio), plain)
    np.testing.assert_array_equal(second.separate(audio), plain)
    assert second.model is None, "the second load built the separator"
    assert warned == []


def test_other_options_and_lengths_are_other_entries(inputs, framework, audio, tmp_path) -> None:
    warned: list[str] = []
    expected = load_model(inputs.umxhq, framework, umx_options={"niter": 0}).separate(audio[:, :30000])
    loaded = _load(inputs, framework, tmp_path, warned, niter=0)
    np.testing.assert_array_equal(loaded.separate(audio[:, :30000]), expected)
    loaded.separate(audio)
    _load(inputs, framework, tmp_path, warned).separate(audio)
    assert len(_entries(tmp_path)) == 3 and warned == []


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_damaged_entry_is_exported_again(inputs, framework, audio, plain, tmp_path, damage) -> None:
    warned: list[str] = []
    _load(inputs, framework, tmp_path, warned).separate(audio)
    (entry,) = _entries(tmp_path)
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:-8] + b"\x00" * 8)
    np.testing.assert_array_equal(_load(inputs, framework, tmp_path, warned).separate(audio), plain)
    assert len(warned) == 1 and "is damaged" in warned[0] and "exported again" in warned[0], warned
    port = importlib.import_module(f"umx_{framework}.exported")
    port.ExportedSeparator.from_bytes(entry.read_bytes())  # replaced by a whole one (raises if still damaged)


def test_failed_write_and_read_only_cache(inputs, framework, audio, plain, tmp_path, monkeypatch) -> None:
    def full_disk(path, write, suffix=".tmp"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    warned: list[str] = []
    with monkeypatch.context() as m:
        m.setattr(exported_graphs, "atomic_write", full_disk)
        loaded = _load(inputs, framework, tmp_path, warned)
        np.testing.assert_array_equal(loaded.separate(audio), plain)
        np.testing.assert_array_equal(loaded.separate(audio), plain)
    assert len(warned) == 1 and "cannot be written" in warned[0] and "No space left" in warned[0], warned
    assert _entries(tmp_path) == []
    read_only: list[str] = []
    np.testing.assert_array_equal(_load(inputs, framework, tmp_path, read_only, writable=False).separate(audio), plain)
    assert _entries(tmp_path) == [] and read_only == []


def _command(framework: str, model: Path, track: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "unmix.separate_cli", str(track), "--model", str(model), "--framework", framework,
            "-o", str(out), "-q", "--force", *map(str, extra)]  # fmt: skip


def test_command_exports_then_reads_and_two_processes_share_it(inputs, framework, tmp_path) -> None:
    """The whole command with the framework's cache on: two processes at once export into one empty cache, a third
    reads the graph; every run's stems equal ``--no-cache``'s."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_WAIT_POLICY": "PASSIVE", "TF_CPP_MIN_LOG_LEVEL": "3"}
    root = tmp_path / "cache"
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": env, "cwd": REPO_ROOT}
    runs = [("--no-cache",), ("--cache-dir", root), ("--cache-dir", root), ("--cache-dir", root)]
    procs = [subprocess.Popen(_command(framework, inputs.umxhq, inputs.excerpt, tmp_path / f"o{k}", *extra), **pipes)
             for k, extra in enumerate(runs[:3])]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and "warning" not in err, err
    third = _command(framework, inputs.umxhq, inputs.excerpt, tmp_path / "o3", *runs[3])
    done = subprocess.run(third, timeout=600, **pipes)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    assert len(list(root.glob(f"compile/{framework}-*/exported/*{exported_graphs.SUFFIX}"))) == 1
    stems = [read_stems(tmp_path / f"o{k}" / inputs.umxhq.stem / inputs.excerpt.stem, STEMS) for k in range(4)]
    for k in (1, 2, 3):
        np.testing.assert_array_equal(stems[k], stems[0])


DEMUCS = {"shifts": 0, "split": True, "overlap": 0.25}


def test_demucs_network_is_exported(inputs, framework, audio, tmp_path) -> None:
    """Demucs v2: the network's graph per chunk shape is exported once; a second load builds no model and its
    stems equal the port's model's bit for bit; shifts (a length per shift) build the model."""
    warned: list[str] = []
    plain = load_model(inputs.demucs, framework).separate(audio, DEMUCS)
    for _ in range(2):
        loaded = load_model(inputs.demucs, framework, exported=tmp_path, warn=warned.append)
        np.testing.assert_array_equal(loaded.separate(audio, DEMUCS), plain)
    assert loaded.model is None, "the second load built the model"
    assert len(_entries(tmp_path)) == 1 and warned == []
    shifted = {**DEMUCS, "shifts": 1}
    expected = load_model(inputs.demucs, framework).separate(audio, shifted)
    np.testing.assert_array_equal(loaded.separate(audio, shifted), expected)
    assert loaded.model is not None, "shifts ran without the model"
    assert not exported_graphs.exportable("nnabla", "cpu", "demucs")
