"""The reader's direct storage reads (:mod:`weights_convert.torch_records`). Runs in BOTH environments (no torch).

Each storage is read once, straight into its own buffer, and a tensor covering its storage whole is that buffer:
checked here against :mod:`zipfile`'s own reading of the same records, with the safety checks of the slow path
kept (CRC-32 on the bytes used, the local header, truncation, storage bounds), compressed records still read, and
nothing of the file kept open or mapped after the call (the arrays survive the file being rewritten or deleted).

Large checkpoints (storages past the 4 MiB at which buffers become anonymous mappings) are made here without
torch: :func:`_checkpoint` pickles tensors the way ``torch.save`` does (``_rebuild_tensor_v2`` over persistent
storage ids) into a zip of stored records; the committed fixtures are the files torch itself wrote.
"""

from __future__ import annotations

import collections
import io
import mmap
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from parity_tests.convert.flat import bit_equal, flatten
from weights_convert import CheckpointError, read_checkpoint
from weights_convert.torch_records import LOCAL_HEADER_SIZE, read_exact, stored_data_offset, zip_storage_reader

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = ROOT / "parity_tests" / "fixtures" / "checkpoints"
ZIP_FILES = ["umx_tiny_zip.pth", "umx_tiny_model/drums.pth", "demucs_small_package.th", "views_zip.pth"]


# --- checkpoints written without torch ----------------------------------------------------------------------------


class _Global:
    """A global written by name (``torch._utils._rebuild_tensor_v2``) though nothing of that name is importable."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:  # pickle's save_reduce wants a callable; never called
        raise NotImplementedError


class _Storage:
    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key, self.data = key, np.ascontiguousarray(data, dtype="<f4")


class _Tensor:
    """A float32 tensor over ``storage``: ``offset``, ``size`` and ``stride`` in elements, as torch pickles them."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self) -> tuple:
        return _Global("torch._utils", "_rebuild_tensor_v2"), self.args


class _Pickler(pickle._Pickler):  # the Python pickler: its save_global can be given other names
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            return ("storage", _Global("torch", "FloatStorage"), obj.key, "cpu", obj.data.size)
        return None

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    dispatch: ClassVar[dict] = {**pickle._Pickler.dispatch, _Global: save_global}


def _checkpoint(obj: Any, storages: list[_Storage], compression: int = zipfile.ZIP_STORED) -> bytes:
    """``obj`` (with :class:`_Tensor` leaves) as torch's zip format: ``archive/data.pkl``, ``archive/data/<key>``."""
    pkl = io.BytesIO()
    _Pickler(pkl, protocol=2).dump(obj)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        z.writestr("archive/data.pkl", pkl.getvalue())
        z.writestr("archive/byteorder", b"little")
        for s in storages:
            z.writestr(f"archive/data/{s.key}", s.data.tobytes())
        z.writestr("archive/version", b"3\n")
    return buf.getvalue()


def _large_state() -> tuple[bytes, dict[str, np.ndarray]]:
    """A state dict with storages of 4.2 MB, 8.4 MB and 0.8 KB (its own tensor each) and one 6.4-MB storage shared
    by a tensor, its transpose and a slice; the bytes of a zip checkpoint and the arrays they must give."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, 1025)).astype(np.float32)
    b = rng.standard_normal((2, 1024, 1025)).astype(np.float32)
    c = rng.standard_normal(200).astype(np.float32)
    d = rng.standard_normal((1280, 1250)).astype(np.float32)
    sa, sb, sc, sd = _Storage("0", a.ravel()), _Storage("1", b.ravel()), _Storage("2", c), _Storage("3", d.ravel())
    obj = collections.OrderedDict(
        a=_Tensor(sa, 0, a.shape, (1025, 1)),
        b=_Tensor(sb, 0, b.shape, (1024 * 1025, 1025, 1)),
        c=_Tensor(sc, 0, c.shape, (1,)),
        d=_Tensor(sd, 0, d.shape, (1250, 1)),
        d_T=_Tensor(sd, 0, (1250, 1280), (1, 1250)),
        d_rows=_Tensor(sd, 2500, (3, 1250), (1250, 1)),
    )
    want = {"a": a, "b": b, "c": c, "d": d, "d_T": d.T, "d_rows": d[2:5]}
    return _checkpoint(obj, [sa, sb, sc, sd]), want


def _data_offset(raw: bytes, record: str) -> int:
    zf = zipfile.ZipFile(io.BytesIO(raw))
    return stored_data_offset(io.BytesIO(raw), zf.getinfo(record), "test")


def _flip(raw: bytes, position: int) -> bytes:
    return raw[:position] + bytes([raw[position] ^ 0x5A]) + raw[position + 1 :]


# --- the fast path equals the reference reading -------------------------------------------------------------------


@pytest.mark.parametrize("name", ZIP_FILES)
def test_records_read_directly_equal_zipfile_reads(name: str) -> None:
    """Every storage record of the files torch wrote (data aligned by torch's extra field), read at its offset,
    equals :mod:`zipfile`'s own read of it, byte for byte."""
    path = CHECKPOINTS / name
    with open(path, "rb") as f:
        zf = zipfile.ZipFile(f)
        records = [i for i in zf.infolist() if "/data/" in i.filename]
        prefix = records[0].filename.split("data/")[0]
        read = zip_storage_reader(zf, f, prefix, name)
        starts = [stored_data_offset(f, i, name) for i in records]
        # torch pads the local headers' extra field so that data starts on 64 bytes: not right after the name
        assert records and all(s % 64 == 0 for s in starts)
        assert any(s > i.header_offset + LOCAL_HEADER_SIZE + len(i.filename) for s, i in zip(starts, records))
        for info in records:
            got = read(info.filename.rsplit("/", 1)[1], info.file_size)
            assert got.dtype == np.uint8 and got.flags.writeable
            assert got.tobytes() == zf.read(info), info.filename


def test_large_state_dict_tensors_are_their_buffers() -> None:
    """Storages of 4 MiB and more (anonymous mappings) and small ones (NumPy arrays): a tensor alone on its storage
    is the buffer read (writeable, contiguous, no copy); tensors sharing one storage are independent
    copies; every array equals what was pickled, bit for bit."""
    raw, want = _large_state()
    obj = read_checkpoint(raw).obj
    assert list(obj) == list(want)
    for key, value in want.items():
        assert bit_equal(obj[key], value), key
        assert obj[key].flags.writeable, key
    for key, large in (("a", True), ("b", True), ("c", False)):  # the buffer read itself, no copy of it
        assert obj[key].flags.c_contiguous, key
        root: Any = obj[key]
        while isinstance(root, np.ndarray) and root.base is not None:
            root = root.base
        if large:
            assert isinstance(root, memoryview) and isinstance(root.obj, mmap.mmap) and root.nbytes == want[key].nbytes
        else:
            assert isinstance(root, np.ndarray) and root.flags.owndata and root.nbytes == want[key].nbytes
    arrays = list(obj.values())
    assert not any(np.shares_memory(x, y) for i, x in enumerate(arrays) for y in arrays[i + 1 :])
    obj["d"][0, 0] += 1
    assert obj["d_T"][0, 0] == want["d"][0, 0] and obj["d_rows"][0, 0] == want["d"][2, 0]


def test_compressed_records_are_read_through_zipfile() -> None:
    """An archive zipped again with compression (not torch's layout) reads the same; a corrupt compressed record
    is refused (zipfile's own CRC)."""
    raw, want = _large_state()
    src = zipfile.ZipFile(io.BytesIO(raw))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    deflated = buf.getvalue()
    obj = read_checkpoint(deflated).obj
    assert all(bit_equal(obj[k], v) for k, v in want.items())
    info = zipfile.ZipFile(io.BytesIO(deflated)).getinfo("archive/data/2")
    start = _data_offset(deflated, "archive/data/2")
    with pytest.raises(CheckpointError):
        read_checkpoint(_flip(deflated, start + info.compress_size // 2))


# --- the safety checks are kept ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["large", *ZIP_FILES])
def test_a_corrupt_byte_in_a_record_fails_its_crc(name: str, tmp_path: Path) -> None:
    raw = _large_state()[0] if name == "large" else (CHECKPOINTS / name).read_bytes()
    zf = zipfile.ZipFile(io.BytesIO(raw))
    info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    corrupt = _flip(raw, _data_offset(raw, info.filename) + info.file_size // 2)
    message = rf"corrupt zip archive: record '{re.escape(info.filename)}' fails its CRC-32 check"
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(corrupt)
    path = tmp_path / "corrupt.pth"
    path.write_bytes(corrupt)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)


def test_local_headers_are_checked() -> None:
    raw, _ = _large_state()
    header = zipfile.ZipFile(io.BytesIO(raw)).getinfo("archive/data/1").header_offset
    with pytest.raises(CheckpointError, match="no local header for record 'archive/data/1'"):
        read_checkpoint(_flip(raw, header))
    with pytest.raises(CheckpointError, match="the local header of record 'archive/data/1' names"):
        read_checkpoint(_flip(raw, header + LOCAL_HEADER_SIZE + len("archive/data/")))


def test_a_record_past_the_end_of_the_file_is_refused_before_it_is_allocated() -> None:
    """A stored record whose data the file does not hold (1 MB of its 4.2 MB cut, the directory moved up so that
    the archive still opens): refused as truncated from the sizes alone."""
    data = np.arange(1 << 20, dtype=np.float32)
    storage = _Storage("0", data)
    pkl = io.BytesIO()
    _Pickler(pkl, protocol=2).dump({"w": _Tensor(storage, 0, data.shape, (1,))})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for record, payload in [("data.pkl", pkl.getvalue()), ("byteorder", b"little"), ("data/0", data.tobytes())]:
            z.writestr(f"archive/{record}", payload)
    raw = buf.getvalue()
    cut = 1 << 20
    directory = int.from_bytes(raw[-6:-2], "little")  # the end record's offset of the central directory
    cut_raw = raw[: directory - cut] + raw[directory:-6] + (directory - cut).to_bytes(4, "little") + raw[-2:]
    assert bit_equal(read_checkpoint(raw).obj["w"], data)
    message = r"is truncated: record 'archive/data/0' needs bytes \[\d+, \d+\), the file has \d+$"
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(cut_raw)


def test_truncated_storage_data_is_refused() -> None:
    with pytest.raises(CheckpointError, match=r"x\.pth is truncated: storage 7 needs bytes \[4, 20\), .* ends at 10"):
        read_exact(io.BytesIO(b"0123456789"), 4, 16, "x.pth", "storage 7")
    assert read_exact(io.BytesIO(b"0123456789"), 4, 6, "x.pth", "storage 7").tobytes() == b"456789"


def test_a_tensor_past_its_storage_is_refused() -> None:
    """The shape of a whole-storage tensor (the no-copy path) moved one element on: refused, not read past."""
    data = np.arange(6, dtype=np.float32)
    storage = _Storage("0", data)
    for tensor in (_Tensor(storage, 1, (6,), (1,)), _Tensor(storage, 0, (2, 3), (4, 1))):
        with pytest.raises(CheckpointError, match="reaches element"):
            read_checkpoint(_checkpoint({"w": tensor}, [storage]))
    assert bit_equal(read_checkpoint(_checkpoint({"w": _Tensor(storage, 0, (2, 3), (3, 1))}, [storage])).obj["w"],
                     data.reshape(2, 3))  # fmt: skip


# --- nothing of the file outlives the call ---------------------------------------------------------------------


def _open_or_mapped(path: Path) -> list[str]:
    target = os.path.realpath(path)
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                found.append(f"fd {fd}")
        except OSError:
            pass
    with open("/proc/self/maps") as maps:
        found += [line.strip() for line in maps if line.rstrip().endswith(target)]
    return found


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc to list open files and maps")
@pytest.mark.parametrize("source", ["large", "demucs_small_package.th", "views_legacy.pth"])
def test_the_file_is_closed_and_unmapped_after_reading(source: str, tmp_path: Path) -> None:
    """After the call the process holds no descriptor and no mapping of the file; rewriting the file in place
    (truncated, then other bytes) and deleting it leaves the arrays as they were."""
    path = tmp_path / "model.pth"
    path.write_bytes(_large_state()[0] if source == "large" else (CHECKPOINTS / source).read_bytes())
    arrays = flatten(read_checkpoint(path).obj)
    before = {k: v.copy() for k, v in arrays.items()}
    assert arrays and _open_or_mapped(path) == []
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(b"\xff" * size)
    path.unlink()
    assert all(bit_equal(arrays[k], before[k]) for k in before)
