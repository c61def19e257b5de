"""Writing files so that nothing is lost, and the paired files every weight format is made of.

- :func:`atomic_write`: a file is written under a temporary name beside it and renamed over its path only when
  complete, with the usual mode (:func:`default_file_mode`): an interrupted run never leaves a partial file.
- :func:`paired_paths`: every weight format is two files, ``<stem><suffix>`` (the arrays) and ``<stem>.json``
  (the config): the canonical ``.safetensors``, torch's ``.pth``, Keras's ``.weights.h5``, Flax's ``.msgpack``,
  NNabla's ``.h5``. A user may name either file or the stem.
- :func:`write_pair` / :func:`read_native_header`: the JSON side of a port's native file (``{"format", "config"}``
  plus what the port adds), never overwriting without ``force``.
- :func:`pack_exported` / :func:`unpack_exported`: a compiled graph kept between processes (TensorFlow's and
  JAX's ``exported`` modules): a header line, a JSON description and the serialised module, whose length and
  SHA-256 the description records, so a truncated or overwritten file is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .configs import config_from_json, config_to_json

__all__ = [
    "atomic_write",
    "default_file_mode",
    "native_header",
    "pack_exported",
    "paired_paths",
    "read_native_header",
    "refuse_overwrite",
    "unpack_exported",
    "write_pair",
]


def default_file_mode() -> int:
    """The mode a newly created file gets: ``0o666`` under the process's umask (``0o644`` for umask 022)."""
    mask = os.umask(0o022)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any], suffix: str = ".tmp") -> Path:
    """Write ``path`` through a temporary file beside it, renamed over ``path`` only once ``write`` returned.

    ``write(tmp)`` writes the whole file under the name it is given (``.<name>.<random><suffix>`` in the same
    folder, so the rename is atomic; ``suffix`` lets a writer that goes by the extension see the right one). The
    file gets the usual mode (:func:`default_file_mode`), not the ``0600`` of a temporary file. If ``write`` raises
    (or the process is interrupted by an exception such as ``KeyboardInterrupt``), the temporary file is removed and
    ``path`` is left as it was: a reader never sees a partial file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def paired_paths(path: str | os.PathLike, suffix: str) -> tuple[Path, Path]:
    """``(<stem><suffix>, <stem>.json)`` for a path given as the stem, the arrays file or the JSON file.

    Only a name that ends with ``suffix`` (or ``.json``) loses it, so other dots stay: ``umx.v1`` gives
    ``umx.v1<suffix>``. An empty name is an error naming the path.
    """
    p = Path(path)
    name = p.name
    for ending in (suffix, ".json"):
        if name.endswith(ending):
            name = name[: -len(ending)]
            break
    if not name:
        raise ValueError(f"{os.fspath(path)!r} names no file: give a stem such as 'models/umxhq'")
    return p.with_name(name + suffix), p.with_name(name + ".json")


def refuse_overwrite(*paths: Path, force: bool = False) -> None:
    """Raise ``FileExistsError`` for the first of ``paths`` that exists, unless ``force``."""
    if force:
        return
    for p in paths:
        if p.exists():
            raise FileExistsError(f"{p} exists; pass force=True (--force) to overwrite it")


def native_header(fmt: str, config: Any, **extra: Any) -> dict[str, Any]:
    """The JSON beside a native weights file: ``{"format": fmt, "config": <config JSON>, **extra}``."""
    return {"format": fmt, "config": json.loads(config_to_json(config)), **extra}


def write_pair(
    weights_path: Path,
    json_path: Path,
    write_weights: Callable[[str], Any],
    header: Mapping[str, Any],
    force: bool = False,
    suffix: str = ".tmp",
) -> list[Path]:
    """Write a native file pair atomically (:func:`atomic_write`), refusing to overwrite without ``force``.

    ``write_weights(tmp)`` writes the arrays file (``suffix``: the extension its writer expects); the JSON is
    ``header`` (sorted, indented). Returns ``[weights_path, json_path]``.
    """
    refuse_overwrite(weights_path, json_path, force=force)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(weights_path, write_weights, suffix=suffix)
    text = json.dumps(dict(header), indent=2, sort_keys=True) + "\n"
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(text))
    return [weights_path, json_path]


def read_native_header(json_path: Path, fmt: str, what: str = "native weights") -> tuple[dict[str, Any], Any]:
    """Read the JSON of a native file pair: ``(header, config)``; clear errors for a missing file or another
    format."""
    if not json_path.exists():
        raise FileNotFoundError(f"{what}: {json_path} not found (a native file is <stem>.<ext> + <stem>.json)")
    header = json.loads(json_path.read_text())
    if header.get("format") != fmt:
        raise ValueError(f"{json_path}: format {header.get('format')!r}, expected {fmt!r}")
    return header, config_from_json(json.dumps(header["config"]))


def pack_exported(header: str, meta: Mapping[str, Any], *blobs: bytes) -> bytes:
    """``header``, the JSON ``meta`` with each blob's length and SHA-256 added (``"blobs"``), then the blobs (the
    serialised module, and what a port keeps beside it): one line each for the first two, the blobs last,
    back to back (they may hold any byte)."""
    meta = {**meta, "blobs": [[len(b), hashlib.sha256(b).hexdigest()] for b in blobs]}
    return b"\n".join([header.encode(), json.dumps(meta).encode(), b"".join(blobs)])


def unpack_exported(header: str, data: bytes, what: str = "exported separator") -> tuple[dict[str, Any], list[bytes]]:
    """``(meta, blobs)`` of :func:`pack_exported`'s bytes.

    Raises:
        ValueError: another header, a description that is not JSON, or blobs whose lengths or SHA-256 are not the
            recorded ones (a truncated or overwritten file).
    """
    first, sep, rest = data.partition(b"\n")
    if first != header.encode() or not sep:
        raise ValueError(f"not an {what} (expected the header {header!r})")
    text, _, payload = rest.partition(b"\n")
    try:
        meta = json.loads(text)
        recorded = [(int(size), str(digest)) for size, digest in meta["blobs"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"a damaged {what} description: {e}") from None
    if len(payload) != sum(size for size, _ in recorded):
        raise ValueError(f"the exported module is damaged: {len(payload)} bytes, not the recorded length")
    blobs, at = [], 0
    for size, digest in recorded:
        blob = payload[at : at + size]
        if hashlib.sha256(blob).hexdigest() != digest:
            raise ValueError("the exported module is damaged: not the recorded SHA-256")
        blobs.append(blob)
        at += size
    return meta, blobs
