"""Where a PyTorch checkpoint keeps its storages' bytes, and reading them straight into owned, checked buffers.

:mod:`weights_convert.torch_pickle` finds the storages in the pickle; this module reads their bytes. Each storage is
read with one positioned ``readinto`` into a fresh ``numpy.uint8`` buffer of exactly its size (no intermediate
``bytes`` object, no copy through :mod:`zipfile`'s reader): the buffer is then viewed as the tensor when a tensor
covers its storage whole, so a state dict's tensors cost one copy, page cache -> array, as in ``torch.load``.

- **zip** records (:func:`zip_storage_reader`): torch writes them uncompressed (``ZIP_STORED``); the data of a
  record starts after its local header (30 bytes, the name and an extra field that torch uses to align data to 64
  bytes). The local header is checked (signature, name) and the CRC-32 of the central directory is verified on the
  buffer that was read, before any tensor is made from it. A record that is compressed (not torch's layout, e.g.
  an archive zipped again by another tool) is read through :mod:`zipfile`, which checks its CRC itself.
- **legacy** files (:func:`read_exact` at offsets the caller found): after the pickles, each storage follows an
  8-byte element count; they carry no checksum.

The file is not memory-mapped, on purpose: a mapping's touched pages count as the process's resident memory as
well as the arrays copied from them (twice the file at the peak), arrays left as views of a mapping would be
read-only and tied to the file (rewritten in place, its pages would change or fault under them), and ``bytes``
sources have no file to map. Nothing here keeps the file open: the caller owns and closes it.
"""

from __future__ import annotations

import mmap
import zipfile
import zlib
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

from .errors import CheckpointError

__all__ = ["LOCAL_HEADER_SIZE", "new_buffer", "read_exact", "stored_data_offset", "zip_storage_reader"]

LOCAL_HEADER_SIZE = 30
_LOCAL_SIGNATURE = b"PK\x03\x04"
# Linux's read() returns at most 0x7ffff000 bytes per call: larger storages are read in several calls.
_MAX_READ = 1 << 30
# NumPy asks the kernel for transparent huge pages on every allocation from 4 MiB up (``madvise(MADV_HUGEPAGE)``);
# where the kernel then compacts memory to find them (``defrag`` = ``madvise``, the usual default), filling a
# 598 MB file's buffers took from 0.18 s to 1.8 s from one process to the next on the same machine. Large buffers
# are anonymous mappings instead (4 KiB pages, prefaulted in one call where ``MAP_POPULATE`` exists): 0.30 s, steady.
_LARGE = 1 << 22
_ANONYMOUS_FLAGS = (
    getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0) | getattr(mmap, "MAP_POPULATE", 0)
)


def new_buffer(nbytes: int) -> np.ndarray:
    """A new writeable ``(nbytes,)`` ``uint8`` array (contents undefined), its memory this process's own: NumPy's
    below 4 MiB, an anonymous memory mapping (not of any file) from there, freed with the last array using it."""
    if nbytes < _LARGE:
        return np.empty(nbytes, dtype=np.uint8)
    anonymous = mmap.mmap(-1, nbytes, flags=_ANONYMOUS_FLAGS) if _ANONYMOUS_FLAGS else mmap.mmap(-1, nbytes)
    return np.frombuffer(anonymous, dtype=np.uint8)


def _fill(read_into: Callable[[memoryview], int | None], buffer: np.ndarray) -> int:
    """Fill ``buffer`` (1-D ``uint8``) from ``read_into`` until full or end of data; the number of bytes read."""
    view = memoryview(buffer).cast("B")
    done = 0
    while done < len(view):
        got = read_into(view[done : done + _MAX_READ])
        if not got:
            break
        done += got
    return done


def read_exact(f: BinaryIO, offset: int, nbytes: int, name: str, what: str) -> np.ndarray:
    """``nbytes`` bytes of ``f`` from ``offset`` as a new writeable ``(nbytes,)`` ``uint8`` array.

    Raises:
        CheckpointError: the file ends first (``name`` is truncated; ``what`` says what was being read).
    """
    buffer = new_buffer(nbytes)
    f.seek(offset)
    got = _fill(f.readinto, buffer)
    if got != nbytes:
        raise CheckpointError(
            f"{name} is truncated: {what} needs bytes [{offset}, {offset + nbytes}), the file ends at {offset + got}"
        )
    return buffer


def stored_data_offset(f: BinaryIO, info: zipfile.ZipInfo, name: str) -> int:
    """The file offset of a stored record's first data byte, from its local header (checked against ``info``).

    Raises:
        CheckpointError: no local header at the central directory's offset, or one naming another record.
    """
    f.seek(info.header_offset)
    header = f.read(LOCAL_HEADER_SIZE)
    if len(header) != LOCAL_HEADER_SIZE or header[:4] != _LOCAL_SIGNATURE:
        raise CheckpointError(f"{name}: corrupt zip archive: no local header for record {info.filename!r}")
    name_length = int.from_bytes(header[26:28], "little")
    extra_length = int.from_bytes(header[28:30], "little")
    stored_name = f.read(name_length)
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    if stored_name.decode(encoding, errors="replace") != info.orig_filename:
        raise CheckpointError(
            f"{name}: corrupt zip archive: the local header of record {info.filename!r} names {stored_name[:80]!r}"
        )
    return info.header_offset + LOCAL_HEADER_SIZE + name_length + extra_length


def zip_storage_reader(zf: zipfile.ZipFile, f: BinaryIO, prefix: str, name: str) -> Callable[[str, int], np.ndarray]:
    """A function ``(storage key, nbytes) -> (nbytes,) uint8 array`` reading ``<prefix>data/<key>`` of ``zf``.

    ``f`` is the file ``zf`` was opened on. Each call reads its record once, into a new buffer, and checks it: the
    record exists and holds exactly ``nbytes`` bytes, lies inside the file (checked before its buffer is made, so
    that a corrupt size costs no memory), and its CRC-32 matches the central directory's (computed on the buffer
    returned, so the bytes checked are the bytes used).

    Raises:
        CheckpointError: a missing, mis-sized, truncated or corrupt record.
    """
    records = {info.filename: info for info in zf.infolist()}
    file_size = f.seek(0, 2)

    def read(key: str, nbytes: int) -> np.ndarray:
        record = f"{prefix}data/{key}"
        info = records.get(record)
        if info is None:
            raise CheckpointError(f"{name}: storage record {record!r} is missing")
        if info.file_size != nbytes:
            raise CheckpointError(f"{name}: record {record!r} holds {info.file_size} bytes, expected {nbytes}")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            data = zf.read(info)  # zipfile inflates (as much as there is) and checks the CRC
            if len(data) != nbytes:
                raise CheckpointError(f"{name}: corrupt zip archive: record {record!r} gives {len(data)} bytes")
            buffer = new_buffer(nbytes)
            buffer[:] = np.frombuffer(data, dtype=np.uint8)
            return buffer
        if info.compress_size != nbytes:
            raise CheckpointError(
                f"{name}: corrupt zip archive: stored record {record!r} of {nbytes} bytes takes {info.compress_size}"
            )
        start = stored_data_offset(f, info, name)
        if start + nbytes > file_size:  # before anything is allocated for it
            raise CheckpointError(
                f"{name} is truncated: record {record!r} needs bytes [{start}, {start + nbytes}), the file has "
                f"{file_size}"
            )
        buffer = read_exact(f, start, nbytes, name, f"record {record!r}")
        crc = zlib.crc32(buffer)
        if crc != info.CRC:
            raise CheckpointError(
                f"{name}: corrupt zip archive: record {record!r} fails its CRC-32 check (the directory says "
                f"{info.CRC:08x}, the data gives {crc:08x})"
            )
        return buffer

    return read
