"""The caches of ``unmix-separate`` (:mod:`unmix.caches`) never cost a result: a corrupted entry, a read-only
cache folder, a full disk (simulated) and two processes at once each still separate, with at most a warning, and
the stems equal those of ``--no-cache``.

Models: the small Demucs of the session fixtures, as the upstream package (the conversion cache) and in JAX (the
compilation cache, which keeps every entry: ``JAX_MIN_COMPILE_SECONDS`` 0). TensorFlow's cache is checked in its own
processes (its flags are read once per process).
"""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from parity_tests.separate.helpers import read_stems, run
from unmix import caches

REPO_ROOT = Path(__file__).resolve().parents[2]
STEMS = ("drums", "bass", "other", "vocals")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's cache; JAX keeps every graph; no graph is left in memory."""
    monkeypatch.setenv("UNMIX_PORTS_CACHE_DIR", str(tmp_path / "unused-default"))
    monkeypatch.setattr(caches, "JAX_MIN_COMPILE_SECONDS", 0.0)
    _clear_jax()


def _clear_jax() -> None:
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()


def _separate(capsys, model: Path, track: Path, out: Path, framework: str, *extra) -> tuple[np.ndarray, str]:
    _clear_jax()
    code, _, err = run([track, "--model", model, "--framework", framework, "-o", out, "-q", "--force", *extra], capsys)
    assert code == 0, err
    return read_stems(out / model.name.split(".")[0] / track.stem, STEMS), err


def _failing_writes(monkeypatch: pytest.MonkeyPatch, under: Path, code: int, partial: bool = False) -> None:
    """Every file created or written below ``under`` fails with ``OSError(code)`` (``partial``: after writing
    half of it, as a disk that fills up does); reading is untouched."""

    def inside(path) -> bool:
        return str(Path(path).resolve()).startswith(str(under.resolve()))

    def fail() -> OSError:
        return OSError(code, os.strerror(code))

    real_write_bytes, real_mkstemp, real_named = pathlib.Path.write_bytes, tempfile.mkstemp, tempfile.NamedTemporaryFile

    def write_bytes(self, data):
        if inside(self):
            if partial:
                real_write_bytes(self, bytes(data)[: len(data) // 2])
            raise fail()
        return real_write_bytes(self, data)

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and inside(dir):
            raise fail()
        return real_mkstemp(*args, dir=dir, **kwargs)

    def named(*args, dir=None, **kwargs):
        if dir is not None and inside(dir):
            raise fail()
        return real_named(*args, dir=dir, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)
    if "jax" in sys.modules:  # JAX's file cache writes through etils' epath where it is installed
        from jax._src import path as jax_path

        jax_class = type(jax_path.Path(str(under)))
        if jax_class is not pathlib.Path and not issubclass(jax_class, pathlib.Path):
            real_jax_write = jax_class.write_bytes

            def jax_write_bytes(self, data):
                if inside(self):
                    if partial:
                        real_jax_write(self, bytes(data)[: len(data) // 2])
                    raise fail()
                return real_jax_write(self, data)

            monkeypatch.setattr(jax_class, "write_bytes", jax_write_bytes)
    if partial:  # the folder looks writable: the disk fills up while JAX writes
        return
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", named)


def _entries(root: Path, kind: str) -> list[Path]:
    pattern = {"jax": "compile/jax-*/*-cache", "tf": "compile/tf-*/*.pb", "converted": "converted/*/*.safetensors"}
    return sorted(root.glob(pattern[kind]))


# --- conversions of upstream files ------------------------------------------------------------------------------


def test_upstream_package_is_converted_once(inputs, tmp_path, capsys, monkeypatch) -> None:
    root = tmp_path / "cache"
    plain, _ = _separate(capsys, inputs.demucs_package, inputs.excerpt, tmp_path / "a", "torch", "--no-cache")
    assert not root.exists()
    first, _ = _separate(capsys, inputs.demucs_package, inputs.excerpt, tmp_path / "b", "torch", "--cache-dir", root)
    assert len(_entries(root, "converted")) == 1

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached conversion should have been read")

    monkeypatch.setattr("weights_convert.sources.read_upstream", no_conversion)
    second, err = _separate(capsys, inputs.demucs_package, inputs.excerpt, tmp_path / "c", "torch", "--cache-dir", root)
    assert "warning" not in err
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_array_equal(second, plain)


def test_corrupted_conversion_is_converted_again(inputs, tmp_path, capsys) -> None:
    root = tmp_path / "cache"
    plain, _ = _separate(capsys, inputs.demucs_package, inputs.excerpt, tmp_path / "a", "torch", "--no-cache")
    _separate(capsys, inputs.demucs_package, inputs.excerpt, tmp_path / "b", "torch", "--cache-dir", root)
    (entry,) = _entries(root, "converted")
    entry.write_bytes(entry.read_bytes()[:1000])  # truncated
    again, err = _separate(capsys, inputs.demucs_package, inputs.excerpt, tmp_path / "c", "torch", "--cache-dir", root)
    assert "cannot be read" in err
    np.testing.assert_array_equal(again, plain)
    from core_spec.canonical import load_canonical

    load_canonical(entry)  # replaced by a whole file


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["full-disk", "read-only"])
def test_unwritable_conversion_cache(inputs, tmp_path, capsys, monkeypatch, code) -> None:
    root = tmp_path / "cache"
    plain, _ = _separate(capsys, inputs.demucs_package, inputs.excerpt, tmp_path / "a", "torch", "--no-cache")
    root.mkdir()
    _failing_writes(monkeypatch, root, code)
    stems, err = _separate(capsys, inputs.demucs_package, inputs.excerpt, tmp_path / "b", "torch", "--cache-dir", root)
    assert "was not cached" in err
    assert _entries(root, "converted") == []
    np.testing.assert_array_equal(stems, plain)


# --- JAX's compiled graphs ----------------------------------------------------------------------------------------


def test_jax_cache_is_written_and_read(inputs, tmp_path, capsys) -> None:
    root = tmp_path / "cache"
    plain, _ = _separate(capsys, inputs.demucs, inputs.excerpt, tmp_path / "a", "jax", "--no-cache")
    first, err1 = _separate(capsys, inputs.demucs, inputs.excerpt, tmp_path / "b", "jax", "--cache-dir", root)
    entries = _entries(root, "jax")
    assert entries, "no compiled graph was kept"
    stamps = {p: p.stat().st_mtime_ns for p in entries}
    second, err2 = _separate(capsys, inputs.demucs, inputs.excerpt, tmp_path / "c", "jax", "--cache-dir", root)
    assert {p: p.stat().st_mtime_ns for p in _entries(root, "jax")} == stamps  # read, not written again
    assert "warning" not in err1 + err2
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_array_equal(second, plain)


def test_corrupted_jax_entries(inputs, tmp_path, capsys) -> None:
    root = tmp_path / "cache"
    plain, _ = _separate(capsys, inputs.demucs, inputs.excerpt, tmp_path / "a", "jax", "--no-cache")
    _separate(capsys, inputs.demucs, inputs.excerpt, tmp_path / "b", "jax", "--cache-dir", root)
    for entry in _entries(root, "jax"):
        entry.write_bytes(b"not an executable")
    stems, err = _separate(capsys, inputs.demucs, inputs.excerpt, tmp_path / "c", "jax", "--cache-dir", root)
    assert err.count("warning") == 1 and "unreadable entr" in err
    np.testing.assert_array_equal(stems, plain)
    assert all(p.read_bytes() != b"not an executable" for p in _entries(root, "jax"))
    healed, err = _separate(capsys, inputs.demucs, inputs.excerpt, tmp_path / "d", "jax", "--cache-dir", root)
    assert "warning" not in err and _entries(root, "jax")
    np.testing.assert_array_equal(healed, plain)


def test_jax_cache_on_a_full_disk(inputs, tmp_path, capsys, monkeypatch) -> None:
    """Writes fail halfway (truncated entries left behind): a warning; the next run reads them, fails, removes
    them and compiles again (a warning); the run after that is clean."""
    root = tmp_path / "cache"
    plain, _ = _separate(capsys, inputs.demucs, inputs.excerpt, tmp_path / "a", "jax", "--no-cache")
    (caches.compile_folder(root, "jax")).mkdir(parents=True)
    with monkeypatch.context() as patch:
        _failing_writes(patch, root, errno.ENOSPC, partial=True)
        full, err = _separate(capsys, inputs.demucs, inputs.excerpt, tmp_path / "b", "jax", "--cache-dir", root)
    assert err.count("warning") == 1, err
    np.testing.assert_array_equal(full, plain)
    after, err = _separate(capsys, inputs.demucs, inputs.excerpt, tmp_path / "c", "jax", "--cache-dir", root)
    np.testing.assert_array_equal(after, plain)
    clean, err = _separate(capsys, inputs.demucs, inputs.excerpt, tmp_path / "d", "jax", "--cache-dir", root)
    assert "warning" not in err
    np.testing.assert_array_equal(clean, plain)


def test_read_only_jax_cache(inputs, tmp_path, capsys, monkeypatch) -> None:
    root = tmp_path / "cache"
    plain, _ = _separate(capsys, inputs.demucs, inputs.excerpt, tmp_path / "a", "jax", "--no-cache")
    caches.compile_folder(root, "jax").mkdir(parents=True)
    _failing_writes(monkeypatch, root, errno.EROFS)
    stems, err = _separate(capsys, inputs.demucs, inputs.excerpt, tmp_path / "b", "jax", "--cache-dir", root)
    assert err.count("warning") == 1 and "not writable" in err
    assert _entries(root, "jax") == []
    np.testing.assert_array_equal(stems, plain)


# --- several processes, TensorFlow -------------------------------------------------------------------------------


def _command(model: Path, track: Path, out: Path, framework: str, *extra) -> list[str]:
    return [sys.executable, "-m", "unmix.separate_cli", str(track), "--model", str(model), "--framework", framework,
            "-o", str(out), "-q", "--force", *map(str, extra)]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_WAIT_POLICY": "PASSIVE", "TF_CPP_MIN_LOG_LEVEL": "3"}


def test_two_processes_at_once(inputs, tmp_path, capsys) -> None:
    """Both convert the upstream package and compile into one empty cache at the same time."""
    root = tmp_path / "cache"
    plain, _ = _separate(capsys, inputs.demucs_package, inputs.excerpt, tmp_path / "a", "jax", "--no-cache")
    outs = [tmp_path / "p0", tmp_path / "p1"]
    command = [_command(inputs.demucs_package, inputs.excerpt, out, "jax", "--cache-dir", root) for out in outs]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = [subprocess.Popen(c, env=_env(), cwd=REPO_ROOT, **pipes) for c in command]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "error" not in err
    for out in outs:
        np.testing.assert_array_equal(read_stems(out / inputs.demucs_package.stem / inputs.excerpt.stem, STEMS), plain)
    assert len(_entries(root, "converted")) == 1 and _entries(root, "jax")


def test_tensorflow_cache_and_a_corrupted_entry(inputs, tmp_path) -> None:
    """TF's cache in its own processes: written, then an entry overwritten: removed before TF reads it (TF would
    fail the separation), a warning, the same stems."""
    root = tmp_path / "cache"
    stems = []
    for k, extra in enumerate([("--no-cache",), ("--cache-dir", root), ("--cache-dir", root)]):
        if k == 2:
            entries = _entries(root, "tf")
            assert entries, "no compiled graph was kept"
            for entry in entries:
                entry.write_bytes(entry.read_bytes()[:100])
        out = tmp_path / f"out{k}"
        done = subprocess.run(_command(inputs.demucs, inputs.excerpt, out, "tf", *extra), env=_env(), cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert ("removed the unreadable" in done.stderr) == (k == 2), done.stderr
        stems.append(read_stems(out / inputs.demucs.stem / inputs.excerpt.stem, STEMS))
    np.testing.assert_array_equal(stems[1], stems[0])
    np.testing.assert_array_equal(stems[2], stems[0])


def test_tensorflow_cache_read_only_when_it_cannot_write(tmp_path, monkeypatch) -> None:
    """A folder that is not writable or a nearly full disk: TF's cache is read-only (a failed write would fail the
    separation itself)."""
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.setenv("TF_XLA_FLAGS", "")
    monkeypatch.setattr(caches.shutil, "disk_usage", lambda p: type("U", (), {"free": caches.MIN_FREE_BYTES - 1})())
    warned: list[str] = []
    cache = caches.enable_compile_cache("tf", tmp_path, warned.append)
    assert cache.folder is not None and "--tf_xla_persistent_cache_read_only=true" in os.environ["TF_XLA_FLAGS"]
    assert len(warned) == 1 and "MiB free" in warned[0]


def test_valid_protobuf() -> None:
    message = bytes([0x0A, 3]) + b"abc" + bytes([0x10, 0x96, 0x01]) + bytes([0x1A, 2]) + b"xy"
    assert caches.valid_protobuf(message)
    assert not caches.valid_protobuf(message[:-1])  # truncated
    assert not caches.valid_protobuf(b"")
    assert not caches.valid_protobuf(b"garbage\n")


def test_cache_folders_are_keyed(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("UNMIX_PORTS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if sys.platform.startswith("linux"):
        assert caches.cache_root() == tmp_path / "unmix-ports"
    assert caches.cache_root(no_cache=True) is None
    assert caches.cache_root(tmp_path / "x") == tmp_path / "x"
    folder = caches.compile_folder(tmp_path, "jax").name
    assert caches.host_key() in folder and caches.code_key("core_spec", "umx_jax") in folder
    assert caches.code_key("core_spec", "umx_jax") != caches.code_key("core_spec", "umx_tf")


def test_a_bag_yaml_key_covers_its_member_files(tmp_path: Path) -> None:
    """A yaml names member files beside it: changing one of them must change the conversion key (no stale bag)."""
    from unmix.caches import conversion_key

    (tmp_path / "bag.yaml").write_text("models: ['aaaa1111']\n")
    member = tmp_path / "aaaa1111.th"
    member.write_bytes(b"one")
    known = tmp_path / "cache"
    before = conversion_key(tmp_path / "bag.yaml", known)
    member.write_bytes(b"two")
    assert conversion_key(tmp_path / "bag.yaml", known) != before
