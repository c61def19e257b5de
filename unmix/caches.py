"""Per-user caches that make a command's second run faster: compiled graphs (JAX, TensorFlow's XLA) and upstream
models converted to canonical files.

Where: ``--cache-dir DIR``, else ``$UNMIX_PORTS_CACHE_DIR``, else the platform's per-user cache folder
(:func:`default_cache_root`: ``$XDG_CACHE_HOME/unmix-ports`` or ``~/.cache/unmix-ports`` on Linux,
``~/Library/Caches/unmix-ports`` on macOS, ``%LOCALAPPDATA%\\unmix-ports\\Cache`` on Windows); ``--no-cache`` uses
none. Layout::

    <root>/compile/<framework>-<framework version>-<compiler version>-<code>-<host>/   JAX / TF XLA entries
    <root>/converted/<converter>/<sha256 of the upstream file(s)>.safetensors (+ .json)  canonical conversions
    <root>/converted/<converter>/known/<stat key>                                       a file's SHA-256, by stat

``<code>`` hashes the sources that shape a compiled graph (``core_spec`` and the port) and the project's version,
``<converter>`` those of the reader (``weights_convert``, ``core_spec``), ``<host>`` the CPU (its instruction-set
flags: an XLA:CPU executable compiled for one CPU may not run on another), so a new version never reads an entry
of an old one: it starts a new folder (old folders are not removed; delete ``<root>`` to reclaim the space).

Safety (each failure costs speed, never a result; ``parity_tests/separate/test_caches.py``):

- JAX (``jax_compilation_cache_dir``): JAX itself warns and recompiles when an entry cannot be read or written; its
  writes are not atomic (a process killed mid-write, or a full disk, leaves a truncated entry that JAX would then
  fail to read, and never replace, on every run). :meth:`CompileCache.watch` collects those warnings into one line
  and removes the entries that do not decompress, so the next run writes them again.
- TensorFlow (``TF_XLA_FLAGS=--tf_xla_persistent_cache_directory``, read at the first XLA compilation): its writes
  are atomic (a temporary file renamed), but any read or write error fails the computation itself. So before TF
  compiles anything: entries not yet checked are checked (a well-formed protocol-buffer message, else removed), and
  a folder that is not writable, or on a disk with less than :data:`MIN_FREE_BYTES` free, is used read-only
  (``--tf_xla_persistent_cache_read_only``); if a bad entry cannot be removed, the TF cache is not used. TF keys an
  entry by the traced function's process-wide id, so an entry is found only by a process that traces the same
  functions in the same order: the same command on the same files (a folder in the same order).
- Conversions (:func:`cached_upstream`): written atomically (:func:`core_spec.files.atomic_write`, so concurrent
  processes each write a whole file and the last rename wins, with equal contents); an entry that cannot be read
  is converted again and replaced; one that cannot be written is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "CompileCache",
    "MIN_FREE_BYTES",
    "cache_root",
    "cached_upstream",
    "code_key",
    "default_cache_root",
    "enable_compile_cache",
    "host_key",
    "valid_protobuf",
]

ROOT = Path(__file__).resolve().parent.parent
MIN_FREE_BYTES = 256 << 20  # below this, TF's cache is read-only (a failed write would fail the separation)
# Every graph is kept: a command also compiles a few dozen small ones (a Demucs track's normalisation, padding,
# overlap-add, run op by op: 5-80 ms each, 0.55 s a Demucs run), and reading each back takes 1.5-7 ms. The entries
# are 2-4 KB each; the separators' own graphs (0.07-0.12 MB) were kept before too.
JAX_MIN_COMPILE_SECONDS = 0.0
JAX_WARNINGS = ("Error reading persistent compilation cache", "Error writing persistent compilation cache")

Warn = Callable[[str], object]


def _stderr_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# --- where ---------------------------------------------------------------------------------------------------------


def default_cache_root() -> Path:
    """The platform's per-user cache folder for unmix-ports (see the module docstring)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "unmix-ports" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "unmix-ports"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "unmix-ports"


def cache_root(cache_dir: str | os.PathLike | None = None, no_cache: bool = False) -> Path | None:
    """The cache folder a command uses: ``None`` with ``no_cache``, else ``cache_dir``, ``$UNMIX_PORTS_CACHE_DIR``
    or :func:`default_cache_root`."""
    if no_cache:
        return None
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    configured = os.environ.get("UNMIX_PORTS_CACHE_DIR")
    return Path(configured).expanduser() if configured else default_cache_root()


def _version(*names: str) -> str:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


@lru_cache(maxsize=64)
def code_key(*packages: str) -> str:
    """16 hex digits of the SHA-256 of the project's version and every ``.py`` file of ``packages`` (their
    relative paths and contents): any edit of the code gives another key."""
    h = hashlib.sha256(_version("unmix-ports").encode())
    for package in packages:
        folder = ROOT / package
        for path in sorted(folder.rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


@lru_cache(maxsize=1)
def host_key() -> str:
    """12 hex digits naming the CPU: machine type and (Linux) the instruction-set flags of ``/proc/cpuinfo``."""
    text = platform.machine() + platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                text += line
                break
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _writable(folder: Path) -> str | None:
    """``None`` if a file can be created in ``folder`` (made if missing) and its disk has room; else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
        free = shutil.disk_usage(folder).free
    except OSError as e:
        return f"not writable ({e.strerror or e})"
    if free < MIN_FREE_BYTES:
        return f"only {free / 2**20:.0f} MiB free"
    return None


# --- compiled graphs ---------------------------------------------------------------------------------------------


@dataclass
class CompileCache:
    """The compilation cache of one framework in one process: ``folder`` (``None``: not used) and what happened."""

    framework: str
    folder: Path | None
    warn: Warn = _stderr_warning
    notes: list[str] = field(default_factory=list)
    restore: Callable[[], object] | None = None  # puts back the process's previous setting (JAX)

    def exported_graphs(self, warn: Warn) -> dict[str, Any]:
        """``load_model``'s arguments for TensorFlow's and JAX's exported graphs (:mod:`unmix.exported_graphs`):
        their folder beside the compiler's entries, written unless the cache is read-only; none without a cache.
        Their warning and the compiler cache's are one per command (a full disk fails both)."""
        if self.framework not in ("tf", "jax") or self.folder is None:
            return {}
        writable = not any(note.startswith("read-only") for note in self.notes)

        def warn_once(message: str) -> None:
            if "warned" not in self.notes:
                self.notes.append("warned")
                warn(message)

        return {"exported": self.folder / "exported", "exported_writable": writable, "warn": warn_once}

    def close(self) -> None:
        """Give the process back its previous JAX cache setting (a command run inside a larger program)."""
        if self.restore is not None:
            self.restore()
            self.restore = None

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Around the port's calls: JAX's cache warnings collected into one line (and its unreadable entries
        removed afterwards, :func:`_drop_bad_jax_entries`); every other warning passes through."""
        if self.framework != "jax" or self.folder is None:
            yield
            return
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield
        finally:
            self._report(caught)

    def _report(self, caught: list[warnings.WarningMessage]) -> None:
        failed: dict[str, list[str]] = {"read": [], "written": []}
        for w in caught:
            text = str(w.message)
            if text.startswith(JAX_WARNINGS):
                failed["read" if text.startswith(JAX_WARNINGS[0]) else "written"].append(text)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if not (failed["read"] or failed["written"]):
            return
        removed = _drop_bad_jax_entries(self.folder) if failed["read"] and self.folder is not None else 0
        if "warned" in self.notes:  # one warning per command
            return
        self.notes.append("warned")
        parts = [f"{len(v)} entr{'y' if len(v) == 1 else 'ies'} could not be {k}" for k, v in failed.items() if v]
        if removed:
            parts.append(f"{removed} unreadable entr{'y' if removed == 1 else 'ies'} removed (written again next time)")
        first = (failed["read"] or failed["written"])[0]
        self.warn(f"the JAX compilation cache {self.folder}: {', '.join(parts)}; compiled here instead (first: "
                  f"{first[:160]})")  # fmt: skip


def _drop_bad_jax_entries(folder: Path) -> int:
    """Remove the entries of JAX's file cache that do not decompress (truncated or overwritten); their count."""
    try:
        from jax._src import compilation_cache as jax_cache  # the format's own reader: private, so guarded
    except ImportError:
        return 0
    removed = 0
    for path in folder.glob("*-cache"):
        try:
            jax_cache.decompress_executable(path.read_bytes())
        except OSError:
            continue
        except Exception:
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


def compile_folder(root: Path, framework: str) -> Path:
    """``<root>/compile/<framework>-<versions>-<code>-<host>`` (see the module docstring)."""
    if framework == "jax":
        versions = f"jax{_version('jax')}-jaxlib{_version('jaxlib')}"
    elif framework == "tf":
        versions = f"tf{_version('tensorflow', 'tensorflow-cpu', 'tf-nightly')}"
    else:
        versions = _version({"torch": "torch", "nnabla": "nnabla"}.get(framework, framework))
    package = {"jax": "umx_jax", "tf": "umx_tf", "torch": "umx_torch", "nnabla": "umx_nnabla"}[framework]
    return root / "compile" / f"{framework}-{versions}-{code_key('core_spec', package)}-{host_key()}"


def enable_compile_cache(framework: str, root: Path | None, warn: Warn = _stderr_warning) -> CompileCache:
    """Point ``framework``'s compiler at its folder under ``root`` (``None``: no cache). PyTorch and NNabla
    compile nothing here. TensorFlow: call this before its first XLA compilation (the flags are read then)."""
    if framework == "jax":
        import jax

        previous = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs

        def restore() -> None:
            _point_jax_at(None if previous[0] is None else Path(previous[0]))
            jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])

        if root is None:
            _point_jax_at(None)
            return CompileCache("jax", None, warn, restore=restore)
        cache = _enable_jax(compile_folder(root, "jax"), warn)
        cache.restore = restore
        return cache
    if root is None or framework != "tf":
        return CompileCache(framework, None, warn)
    if "tensorflow" in sys.modules and getattr(sys.modules["__main__"].__spec__, "name", "") != "umx_tf.__main__":
        # TF was there before this command (a test run, a notebook): its XLA flags may have been read already,
        # and set now they would outlive the command
        return CompileCache("tf", None, warn, ["not used: TensorFlow was imported before the command"])
    return _enable_tf(compile_folder(root, "tf"), warn)


def _point_jax_at(folder: Path | None) -> None:
    """JAX's persistent cache in ``folder`` (``None``: none); re-initialised if this process used another."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as jax_cache

    wanted = None if folder is None else str(folder)
    if jax.config.jax_compilation_cache_dir != wanted:
        jax.config.update("jax_compilation_cache_dir", wanted)
        jax_cache.reset_cache()


def _enable_jax(folder: Path, warn: Warn) -> CompileCache:
    problem = _writable(folder)
    if problem is not None and not folder.is_dir():
        warn(f"the JAX compilation cache {folder} is not used: {problem}")
        return CompileCache("jax", None, warn)
    import jax

    _point_jax_at(folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", JAX_MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    cache = CompileCache("jax", folder, warn)
    if problem is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))  # read, never write
        cache.notes.append(f"read-only: {problem}")
        warn(f"the JAX compilation cache {folder} is {problem}: its entries are read, new graphs are not kept")
    return cache


def _enable_tf(folder: Path, warn: Warn) -> CompileCache:
    problem = _writable(folder)
    if problem is not None and not folder.is_dir():
        warn(f"the TensorFlow compilation cache {folder} is not used: {problem}")
        return CompileCache("tf", None, warn)
    bad = check_tf_entries(folder, writable=problem is None)
    if bad:
        warn(f"the TensorFlow compilation cache {folder} holds unreadable entries that cannot be removed "
             f"({', '.join(p.name for p in bad[:3])}): it is not used")  # fmt: skip
        return CompileCache("tf", None, warn)
    flags = [f"--tf_xla_persistent_cache_directory={folder}"]
    cache = CompileCache("tf", folder, warn)
    if problem is not None:
        flags.append("--tf_xla_persistent_cache_read_only=true")
        cache.notes.append(f"read-only: {problem}")
        warn(f"the TensorFlow compilation cache {folder} is {problem}: its entries are read, new graphs are not kept")
    os.environ["TF_XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("TF_XLA_FLAGS", ""), *flags]))
    # XLA:CPU logs two harmless errors each time it loads an entry (a text-format parse tried first, tuning
    # flags it compares with the host's): quiet them unless the user chose a level
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return cache


def valid_protobuf(data: bytes) -> bool:
    """Whether ``data`` is a well-formed, non-empty protocol-buffer message at its top level (each field's tag,
    varint and length inside the data, ending exactly at its end): what a truncated or overwritten file is not."""
    pos, end, fields = 0, len(data), 0

    def varint(at: int) -> tuple[int, int]:
        value, shift = 0, 0
        while at < end and shift < 64:
            byte = data[at]
            value |= (byte & 0x7F) << shift
            at += 1
            if not byte & 0x80:
                return value, at
            shift += 7
        raise ValueError("truncated varint")

    try:
        while pos < end:
            key, pos = varint(pos)
            kind, number = key & 7, key >> 3
            if number == 0:
                return False
            if kind == 0:
                _, pos = varint(pos)
            elif kind == 1:
                pos += 8
            elif kind == 5:
                pos += 4
            elif kind == 2:
                size, pos = varint(pos)
                pos += size
            else:
                return False
            if pos > end:
                return False
            fields += 1
    except ValueError:
        return False
    return fields > 0


def check_tf_entries(folder: Path, writable: bool = True) -> list[Path]:
    """Check the entries of TF's cache not checked before (by name, size and modification time, recorded in
    ``checked.json``): remove those that are not well-formed (:func:`valid_protobuf`); the bad ones that could
    not be removed (the TF cache must then not be used)."""
    record_path = folder / "checked.json"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    stuck, changed = [], False
    for path in sorted(folder.glob("*.pb")):
        try:
            stat = path.stat()
            stamp = [stat.st_size, stat.st_mtime_ns]
            if record.get(path.name) == stamp:
                continue
            good = valid_protobuf(path.read_bytes())
        except OSError:
            continue
        if good:
            record[path.name] = stamp
            changed = True
            continue
        try:
            path.unlink()
            _stderr_warning(f"removed the unreadable TensorFlow compilation cache entry {path}")
        except OSError:
            stuck.append(path)
    if changed and writable:
        from core_spec.files import atomic_write

        with contextlib.suppress(OSError):
            atomic_write(record_path, lambda tmp: Path(tmp).write_text(json.dumps(record)))
    return stuck


# --- converted upstream models ----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _is_bag_yaml(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".yaml", ".yml")


def _source_files(path: Path) -> list[Path]:
    """The files an upstream model consists of: the file; every file directly in the folder (sorted); for a demucs
    bag yaml, the yaml and every file beside it (the members it names are among them)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if _is_bag_yaml(path):
        siblings = (p for p in path.parent.iterdir() if p.is_file() and p != path and not p.name.startswith("."))
        return [path, *sorted(siblings)]
    return [path]


def _known_sha256(path: Path, known: Path) -> str:
    """``path``'s SHA-256, remembered under ``known/`` by its absolute path, size, modification time and inode
    (a file changed in place gets a new modification time, so it is hashed again)."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}".encode()).hexdigest()
    memo = known / key
    with contextlib.suppress(OSError, ValueError):
        text = memo.read_text().strip()
        if len(text) == 64 and int(text, 16) >= 0:
            return text
    digest = _sha256(path)
    with contextlib.suppress(OSError):
        from core_spec.files import atomic_write

        known.mkdir(parents=True, exist_ok=True)
        atomic_write(memo, lambda tmp: Path(tmp).write_text(digest))
    return digest


def conversion_key(path: Path, folder: Path) -> str:
    """SHA-256 over the upstream file(s) at ``path``: each file's name (a folder's, a bag yaml's) and SHA-256."""
    h = hashlib.sha256()
    named = path.is_dir() or _is_bag_yaml(path)
    for file in _source_files(path):
        name = file.name if named else ""
        h.update(f"{name}\0{_known_sha256(file, folder / 'known')}\n".encode())
    return h.hexdigest()


def converted_folder(root: Path) -> Path:
    """``<root>/converted/<converter key>`` (see the module docstring)."""
    return root / "converted" / f"wc-{code_key('core_spec', 'weights_convert')}"


def cached_upstream(
    path: Path, root: Path | None, convert: Callable[[Path], Any], warn: Warn = _stderr_warning
) -> tuple[dict[str, Any], Any, bool]:
    """``(canonical weights, config, from the cache)`` of the upstream model at ``path``.

    ``convert(path)`` is :func:`weights_convert.sources.read_upstream` (or anything returning its
    :class:`~weights_convert.sources.Converted`); it runs when ``root`` is ``None``, when no entry exists for the
    file's SHA-256 and this converter, or when the entry cannot be read (then it is replaced). The conversion is
    written to the cache atomically; a failure to write it is a warning.
    """
    from core_spec.canonical import load_canonical, save_canonical

    if root is None:
        converted = convert(path)
        return converted.weights, converted.config, False
    folder = converted_folder(root)
    try:
        entry = folder / f"{conversion_key(path, folder)}.safetensors"
    except OSError as e:
        warn(f"the conversion cache is not used for {path}: {e}")
        converted = convert(path)
        return converted.weights, converted.config, False
    if entry.exists():
        try:
            weights, config, _ = load_canonical(entry)
            return weights, config, True
        except Exception as e:  # truncated, overwritten, from an incompatible writer: convert again
            warn(f"the cached conversion {entry} cannot be read ({type(e).__name__}: {e}); converting {path} again")
    converted = convert(path)
    try:
        save_canonical(entry, converted.weights, converted.config, converted.provenance(), force=True)
    except OSError as e:
        reason = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        warn(f"the conversion of {path} was not cached in {folder}: {reason}")
    return converted.weights, converted.config, False
