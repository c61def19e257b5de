"""A reader for PyTorch checkpoint files that imports no torch and runs no code from the file.

``torch.save`` writes one of two formats (``torch/serialization.py`` documents both):

- **zip** (default since torch 1.6): a zip archive whose records share one top-level folder (the file's stem, or
  ``archive``): ``<prefix>/data.pkl`` (the pickled object), ``<prefix>/data/<key>`` (the raw bytes of each
  storage, stored uncompressed with a CRC-32), ``<prefix>/byteorder`` (``little``/``big``; absent in files of
  torch < 2.1, which are little-endian), ``.format_version``, ``.storage_alignment``, ``version``.
  A storage is referenced from the pickle by the persistent id ``('storage', <storage type>, key, location,
  numel)``.
- **legacy** (torch < 1.6, or ``_use_new_zipfile_serialization=False``): five pickles in a row, then raw data:
  the magic number ``0x1950A86A20F9469CFC6C``, the protocol version ``1001``, a ``sys_info`` dict, the object
  (persistent ids ``('storage', <storage type>, key, location, numel, view_metadata)``), the sorted list of
  storage keys; then for every key, in that order, an 8-byte little-endian element count and the storage's
  bytes (little-endian whatever the machine: torch converts on write).

Tensors are pickled as ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
requires_grad, backward_hooks[, metadata])`` (``_rebuild_tensor`` in old files, ``_rebuild_tensor_v3`` with an
explicit dtype for new dtypes), parameters as ``_rebuild_parameter(tensor, requires_grad, backward_hooks)``.
Several tensors may share one storage (views, slices, transposes): each becomes an independent NumPy array,
cut from its storage with ``numpy.lib.stride_tricks.as_strided`` after a bounds check, then copied.

Speed and memory: each storage's bytes are read once, straight into a buffer of their size
(:mod:`weights_convert.torch_records`: one positioned read, the zip record's CRC-32 checked on that buffer); a
tensor that is its storage's only tensor and covers it whole, contiguous (every tensor of a state dict) becomes that
buffer, reshaped, with no further copy. A buffer is dropped as soon as its last tensor is made, so the peak is the
arrays returned plus one storage. No mapping of the file and no open file outlive the call.

Safety: the unpickler's ``find_class`` answers from an allow-list (:data:`ALLOWED_GLOBALS`, the storage types,
the dtypes) with functions of this module, never with the real torch objects; a few classes that a Demucs
package names (``demucs.model.Demucs``, ...) come back as :class:`GlobalRef` records that refuse to be called.
Any other global raises :class:`~weights_convert.errors.UnsafeCheckpointError` naming it, before anything of it
is imported, so a pickle that would call ``os.system`` stops at the reference. Every other failure (truncation,
corruption) raises :class:`~weights_convert.errors.CheckpointError`.

Tensors come back as NumPy arrays in their stored dtype (bfloat16 as float32, exactly; bool as ``bool``).
"""

from __future__ import annotations

import collections
import fractions
import io
import math
import os
import pickle
import pickletools
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, BinaryIO

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .errors import CheckpointError, UnsafeCheckpointError
from .torch_records import read_exact, zip_storage_reader

__all__ = [
    "ALLOWED_GLOBALS",
    "MAGIC_NUMBER",
    "NAME_ONLY_GLOBALS",
    "PROTOCOL_VERSION",
    "Checkpoint",
    "GlobalRef",
    "Namespace",
    "load",
    "read_checkpoint",
]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch dtype name -> (NumPy dtype as stored, little-endian; item size). bfloat16 and bool are converted after.
_DTYPES: dict[str, tuple[str, int]] = {
    "float32": ("<f4", 4),
    "float16": ("<f2", 2),
    "float64": ("<f8", 8),
    "bfloat16": ("<u2", 2),
    "int64": ("<i8", 8),
    "int32": ("<i4", 4),
    "int16": ("<i2", 2),
    "int8": ("|i1", 1),
    "uint8": ("|u1", 1),
    "bool": ("|u1", 1),
    "complex64": ("<c8", 8),
    "complex128": ("<c16", 16),
}
_DTYPE_ALIASES = {
    "float": "float32",
    "half": "float16",
    "double": "float64",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
}
# Legacy typed storage classes (``torch.FloatStorage``, also ``torch.cuda.FloatStorage`` in files saved from a
# GPU by torch < 1.13) -> torch dtype name.
_STORAGE_TYPES = {
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "DoubleStorage": "float64",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
# The largest tensor this reader builds from a storage smaller than itself (stride-0 expansions).
_MAX_EXPANDED_ELEMENTS = 1 << 24


# --- what find_class hands out ---------------------------------------------------------------------------------


class _Sealed:
    """Records the pickle may not modify: a ``BUILD`` on them (which would write their ``__dict__``, e.g. to
    change a tensor's size after its bounds check) is refused."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError(f"the pickle tries to set the state of a {type(self).__name__.lstrip('_')} record")


@dataclass(frozen=True)
class StorageType(_Sealed):
    """Stands for ``torch.<X>Storage`` / ``torch.UntypedStorage`` in a persistent id."""

    name: str
    dtype: str


@dataclass(frozen=True)
class TorchDtype(_Sealed):
    """Stands for ``torch.float32`` and friends (the dtype argument of ``_rebuild_tensor_v3``)."""

    name: str


@dataclass(frozen=True)
class GlobalRef(_Sealed):
    """A class the checkpoint names (e.g. ``demucs.model.Demucs`` as a package's ``klass``), recorded by name only.

    It is never imported; calling it (a pickle ``REDUCE`` on it) raises :class:`UnsafeCheckpointError`.
    """

    module: str
    name: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafeCheckpointError(
            f"the checkpoint asks to call {self.qualname}: refused (it is only recorded by name, never run)",
            self.qualname,
        )

    def __str__(self) -> str:
        return self.qualname


class Namespace:
    """``argparse.Namespace`` (a Demucs package's ``training_args``): its attributes, as data.

    ``attrs`` holds what the pickle set; ``getattr(ns, name)`` reads them.
    """

    qualname = "argparse.Namespace"

    def __new__(cls, *args: Any, **kwargs: Any) -> Namespace:
        obj = super().__new__(cls)
        obj.__dict__["attrs"] = dict(kwargs)
        return obj

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise CheckpointError(f"argparse.Namespace state must be a dict, got {type(state).__name__}")
        self.__dict__["attrs"].update({str(k): v for k, v in state.items()})

    def __getattr__(self, name: str) -> Any:
        attrs = self.__dict__.get("attrs", {})
        if name in attrs:
            return attrs[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a recorded Namespace is read-only")

    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in self.__dict__['attrs'].items())})"


# --- storages and tensors (lazy until materialised) -------------------------------------------------------------


class _Storage:
    """One storage of the file: ``numel`` elements of ``dtype``, read on demand."""

    def __init__(self, key: str, dtype: str, numel: int) -> None:
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.nbytes = numel * _DTYPES[dtype][1]
        self.refs = 0  # tensors still to be materialised from it


@dataclass
class _StorageView(_Sealed):
    """What a persistent id resolves to: a root storage, or (legacy views) a slice of one, in elements."""

    root: _Storage
    offset: int
    numel: int

    @property
    def dtype(self) -> str:
        return self.root.dtype


class _TensorRef(_Sealed):
    def __init__(self, view: _StorageView, dtype: str, offset: int, size: tuple, stride: tuple) -> None:
        self.view, self.dtype, self.offset, self.size, self.stride = view, dtype, offset, size, stride
        self.is_parameter = False


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{what} must be an int, got {type(value).__name__}")
    return value


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)):
        raise CheckpointError(f"{what} must be a tuple of ints, got {type(value).__name__}")
    return tuple(_int(v, what) for v in value)


def _empty_or_none(value: Any, what: str) -> None:
    if value is None or (isinstance(value, dict) and not value):
        return
    raise CheckpointError(f"tensor {what} {value!r} are not supported (expected none)")


def _make_tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None) -> _TensorRef:
    if not isinstance(storage, _StorageView):
        raise CheckpointError(f"a tensor's storage must come from a persistent id, got {type(storage).__name__}")
    offset = _int(offset, "storage_offset")
    size = _int_tuple(size, "size")
    stride = _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} differ in length")
    if offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise CheckpointError(f"negative storage offset, size or stride: {offset}, {size}, {stride}")
    ref = _TensorRef(storage, storage.dtype if dtype is None else dtype, offset, size, stride)
    _check_bounds(ref)
    storage.root.refs += 1
    return ref


def _check_bounds(ref: _TensorRef) -> None:
    """The tensor lies inside its storage view, and the view inside its storage."""
    view = ref.view
    if view.offset < 0 or view.numel < 0 or view.offset + view.numel > view.root.numel:
        raise CheckpointError(f"storage view [{view.offset}, +{view.numel}) outside a storage of {view.root.numel}")
    view_elements = view.numel * _DTYPES[view.dtype][1] // _DTYPES[ref.dtype][1]
    size, stride, offset = ref.size, ref.stride, ref.offset
    count = math.prod(size)
    if count:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= view_elements:
            raise CheckpointError(
                f"tensor of size {size}, stride {stride}, offset {offset} reaches element {last} of a storage of "
                f"{view_elements} elements"
            )
        if count > max(view_elements, _MAX_EXPANDED_ELEMENTS):
            raise CheckpointError(f"tensor of size {size} expands a storage of {view_elements} elements too far")


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _TensorRef:
    return _make_tensor(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _TensorRef:
    _empty_or_none(backward_hooks, "backward hooks")
    _empty_or_none(metadata, "metadata (conjugate/negative bits)")
    return _make_tensor(storage, storage_offset, size, stride, None)


def _rebuild_tensor_v3(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> _TensorRef:
    if not isinstance(dtype, TorchDtype):
        raise CheckpointError(f"_rebuild_tensor_v3 needs a torch dtype, got {type(dtype).__name__}")
    _empty_or_none(backward_hooks, "backward hooks")
    _empty_or_none(metadata, "metadata (conjugate/negative bits)")
    return _make_tensor(storage, storage_offset, size, stride, dtype.name)


def _rebuild_parameter(data: Any, requires_grad: Any = True, backward_hooks: Any = None) -> _TensorRef:
    if not isinstance(data, _TensorRef):
        raise CheckpointError(f"_rebuild_parameter expects a tensor, got {type(data).__name__}")
    _empty_or_none(backward_hooks, "backward hooks")
    data.is_parameter = True
    return data


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any, state: Any) -> _TensorRef:
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _torch_size(dims: Any = ()) -> tuple[int, ...]:
    return _int_tuple(dims, "torch.Size")


def _torch_device(kind: Any, index: Any = None) -> str:
    if not isinstance(kind, str) or (index is not None and not isinstance(index, int)):
        raise CheckpointError("torch.device arguments must be a string and an optional int")
    return kind if index is None else f"{kind}:{index}"


def _fraction(*args: Any) -> fractions.Fraction:
    if not 1 <= len(args) <= 2 or not all(isinstance(a, (int, str)) and not isinstance(a, bool) for a in args):
        raise CheckpointError(f"fractions.Fraction arguments must be ints or a string, got {args!r}")
    if any(isinstance(a, str) and len(a) > 100 for a in args):
        raise CheckpointError("fractions.Fraction string argument is too long")
    return fractions.Fraction(*args)


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # How protocol-2 pickles store ``bytes`` (``_codecs.encode(str, 'latin1')``); nothing else is accepted.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError(f"_codecs.encode is only accepted for latin1 bytes, got encoding {encoding!r}")
    return text.encode("latin1")


def _bytes(*args: Any) -> bytes:
    if args and not (len(args) == 1 and isinstance(args[0], (bytes, list))):
        raise CheckpointError("builtins.bytes accepts only no argument or a list of ints")
    return bytes(*args)


def _set(items: Any = ()) -> set:
    if not isinstance(items, (list, tuple)):
        raise CheckpointError("builtins.set expects a list")
    return set(items)


def _frozenset(items: Any = ()) -> frozenset:
    return frozenset(_set(items))


def _path_maker(windows: bool) -> Callable[..., Any]:
    def make(*parts: Any) -> Any:
        if not all(isinstance(p, str) for p in parts):
            raise CheckpointError("pathlib path parts must be strings")
        return PureWindowsPath(*parts) if windows else PurePosixPath(*parts)

    return make


# (module, name) -> what find_class returns. Nothing here imports or runs anything outside this module.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("fractions", "Fraction"): _fraction,
    ("argparse", "Namespace"): Namespace,
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "bytes"): _bytes,
    ("__builtin__", "bytes"): _bytes,
    ("builtins", "set"): _set,
    ("__builtin__", "set"): _set,
    ("builtins", "frozenset"): _frozenset,
    ("__builtin__", "frozenset"): _frozenset,
    **{("pathlib", n): _path_maker(False) for n in ("Path", "PosixPath", "PurePath", "PurePosixPath")},
    **{("pathlib", n): _path_maker(True) for n in ("WindowsPath", "PureWindowsPath")},
}

# Classes a Demucs package (``{'klass', 'args', 'kwargs', 'state', 'training_args'}``) names as ``klass``.
NAME_ONLY_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("demucs.model", "Demucs"),
        ("demucs.tasnet", "ConvTasNet"),
        ("demucs.demucs", "Demucs"),
        ("demucs.hdemucs", "HDemucs"),
        ("demucs.htdemucs", "HTDemucs"),
    }
)


def _refusal(module: str, name: str) -> UnsafeCheckpointError:
    qualname = f"{module}.{name}"
    hint = ""
    if module.startswith("torch.nn") or module.startswith(("openunmix", "demucs")):
        hint = (
            " The file seems to hold a pickled module object (torch.save(model)) rather than a state dict: load it "
            "once in PyTorch and save model.state_dict()."
        )
    return UnsafeCheckpointError(
        f"refusing to load global {qualname!r}: it is not on the allow-list of this reader (tensor rebuild "
        f"functions, storage types, OrderedDict, Fraction, argparse.Namespace and the Demucs classes by name). "
        f"Nothing of it was imported or run.{hint}",
        qualname,
    )


_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _check_memo(f: BinaryIO) -> None:
    """Read the pickle at ``f``'s position opcode by opcode (``pickletools``, nothing built) and go back: a memo
    index can only be one of the objects memoised before it (pickle numbers them 0, 1, 2, ...).

    CPython's unpickler grows its memo to the index it is given and zeroes the new slots, so one corrupt 4-byte
    ``LONG_BINPUT`` argument costs up to 2^32 x 16 bytes before anything else is checked (an index of 2^28 took
    4.1 GB here; the fuzz test met larger ones).

    Raises:
        pickle.UnpicklingError: a memo index out of that range, or opcodes that do not parse (the reader reports it
            as a corrupt file, naming it).
    """
    start = f.tell()
    memoised = 0
    try:
        for opcode, arg, _ in pickletools.genops(f):
            if opcode.name in _MEMO_PUTS:
                if not isinstance(arg, int) or not 0 <= arg <= memoised:
                    raise pickle.UnpicklingError(f"memo index {arg} after {memoised} memoised objects")
                memoised += 1
            elif opcode.name == "MEMOIZE":
                memoised += 1
    except (ValueError, EOFError, OverflowError, MemoryError) as e:  # pickletools on truncated or unknown opcodes
        raise pickle.UnpicklingError(f"{type(e).__name__}: {e}") from None
    f.seek(start)


class _Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals come from the allow-list and whose persistent ids name storages."""

    def __init__(self, file: BinaryIO, loader: _Loader | None) -> None:
        super().__init__(file)
        self._file = file
        self._loader = loader

    def load(self) -> Any:
        _check_memo(self._file)
        return super().load()

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise CheckpointError("a pickle global must be named by strings")
        found = ALLOWED_GLOBALS.get((module, name))
        if found is not None:
            return found
        if module in ("torch", "torch.cuda") and name in _STORAGE_TYPES:
            return StorageType(name, _STORAGE_TYPES[name])
        if module in ("torch", "torch.storage") and name in ("UntypedStorage", "_UntypedStorage"):
            return StorageType(name, "uint8")
        if module == "torch" and (name in _DTYPES or name in _DTYPE_ALIASES):
            return TorchDtype(_DTYPE_ALIASES.get(name, name))
        if (module, name) in NAME_ONLY_GLOBALS:
            return GlobalRef(module, name)
        raise _refusal(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if self._loader is None:
            raise CheckpointError("unexpected persistent id in a header pickle")
        return self._loader.persistent_load(pid)


# --- the two formats --------------------------------------------------------------------------------------------


def _ascii(value: Any, what: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise CheckpointError(f"{what} is not ASCII") from None
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        raise CheckpointError(f"{what} must be a short string, got {value!r:.80}")
    return value


class _Loader:
    """Resolves persistent ids to storages, reads storages on demand, materialises tensors."""

    def __init__(self, name: str, legacy: bool) -> None:
        self.name = name
        self.legacy = legacy
        self.roots: dict[str, _Storage] = {}
        self.views: dict[str, _StorageView] = {}
        self.read_bytes: Callable[[_Storage], np.ndarray] = lambda s: np.empty(0, np.uint8)
        self.byteorder = "<"
        self._cache: dict[str, np.ndarray] = {}
        self._progress: Any = None

    def persistent_load(self, pid: Any) -> _StorageView:
        if not isinstance(pid, tuple) or not pid:
            raise CheckpointError(f"persistent id must be a non-empty tuple, got {type(pid).__name__}")
        typename = _ascii(pid[0], "persistent id type")
        if typename == "module":
            raise CheckpointError(
                "the checkpoint holds a pickled torch.nn.Module class (torch.save(model)); save a state dict instead"
            )
        if typename != "storage":
            raise CheckpointError(f"unknown persistent id type {typename!r}")
        if len(pid) != (6 if self.legacy else 5):
            raise CheckpointError(f"storage persistent id of length {len(pid)} in a {self.format} checkpoint")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType):
            raise CheckpointError(f"storage type must be a torch storage class, got {type(storage_type).__name__}")
        key = _ascii(key, "storage key")
        _ascii(_location, "storage location")
        numel = _int(numel, "storage numel")
        if numel < 0:
            raise CheckpointError(f"negative storage size {numel}")
        root = self.roots.get(key)
        if root is None:
            root = self.roots[key] = _Storage(key, storage_type.dtype, numel)
        elif root.dtype != storage_type.dtype or root.numel != numel:
            raise CheckpointError(
                f"storage {key} is referenced as {root.numel} x {root.dtype} and as {numel} x {storage_type.dtype}"
            )
        view_metadata = pid[5] if self.legacy else None
        if view_metadata is None:
            return _StorageView(root, 0, root.numel)
        if not isinstance(view_metadata, tuple) or len(view_metadata) != 3:
            raise CheckpointError("storage view metadata must be (view_key, offset, size)")
        view_key = _ascii(view_metadata[0], "view key")
        offset, size = _int(view_metadata[1], "view offset"), _int(view_metadata[2], "view size")
        if offset < 0 or size < 0 or offset + size > root.numel:
            raise CheckpointError(f"storage view [{offset}, {offset + size}) outside storage {key} of {root.numel}")
        view = self.views.setdefault(view_key, _StorageView(root, offset, size))
        if view.root is not root:
            raise CheckpointError(f"storage view {view_key} refers to two storages")
        return view

    @property
    def format(self) -> str:
        return "legacy" if self.legacy else "zip"

    # -- materialisation --

    def _root_array(self, root: _Storage) -> np.ndarray:
        cached = self._cache.get(root.key)
        if cached is None:
            data = self.read_bytes(root)
            if data.dtype != np.uint8 or data.shape != (root.nbytes,):
                raise CheckpointError(f"storage {root.key}: {data.nbytes} bytes, expected {root.nbytes}")
            cached = self._cache[root.key] = data
            if self._progress is not None:
                self._progress.update(root.nbytes)
        return cached

    def tensor(self, ref: _TensorRef) -> np.ndarray:
        _check_bounds(ref)  # again: nothing may have changed since the rebuild, but as_strided trusts it
        root = ref.view.root
        raw = self._root_array(root)
        itemsize = _DTYPES[root.dtype][1]
        start = ref.view.offset * itemsize
        stop = start + ref.view.numel * itemsize
        stored_t, item_t = _DTYPES[ref.dtype]
        dtype = np.dtype(stored_t).newbyteorder(self.byteorder) if item_t > 1 else np.dtype(stored_t)
        usable = (stop - start) // item_t * item_t
        elements = raw[start : start + usable].view(dtype)
        count = math.prod(ref.size)
        if count == 0:
            out = np.zeros(ref.size, dtype=dtype.newbyteorder("="))
        elif root.refs == 1 and dtype.isnative and _covers_whole(ref, count, item_t, start, raw.nbytes):
            out = elements.reshape(ref.size)  # the storage's only tensor, all of it: the buffer itself, no copy
        else:
            strided = as_strided(
                elements[ref.offset :],
                shape=ref.size,
                strides=tuple(s * item_t for s in ref.stride),
                writeable=False,
            )
            out = np.array(strided, dtype=dtype.newbyteorder("="), copy=True)
        if ref.dtype == "bfloat16":
            out = (out.astype(np.uint32) << np.uint32(16)).view(np.float32)
        elif ref.dtype == "bool":
            out = out != 0
        root.refs -= 1
        if root.refs <= 0:
            self._cache.pop(root.key, None)
        return out

    def materialise(self, obj: Any, progress: Any = None) -> Any:
        """``obj`` with every tensor record replaced by its NumPy array (shared sub-objects stay shared)."""
        self._progress = progress
        memo: dict[int, Any] = {}

        def walk(x: Any) -> Any:
            if isinstance(x, (str, bytes, int, float, complex, bool, type(None))):
                return x
            key = id(x)
            if key in memo:
                return memo[key]
            if isinstance(x, _TensorRef):
                out: Any = self.tensor(x)
            elif isinstance(x, dict):
                out = {}
                memo[key] = out
                for k, v in dict.items(x):  # not x.items: an instance attribute could shadow it
                    out[walk(k)] = walk(v)
                return out
            elif isinstance(x, list):
                out = []
                memo[key] = out
                out.extend(walk(v) for v in list.__iter__(x))
                return out
            elif isinstance(x, tuple):
                out = tuple(walk(v) for v in x)
            elif isinstance(x, (set, frozenset)):
                out = type(x)(walk(v) for v in x)
            elif isinstance(x, Namespace):
                out = Namespace(**{k: walk(v) for k, v in x.attrs.items()})
            elif isinstance(x, _StorageView):
                raise CheckpointError("the checkpoint holds a bare storage, not a tensor: not supported")
            else:
                out = x  # GlobalRef, Fraction, paths, dtypes: plain records
            memo[key] = out
            return out

        return walk(obj)


def _covers_whole(ref: _TensorRef, count: int, itemsize: int, view_start: int, storage_nbytes: int) -> bool:
    """The tensor starts at its storage's first byte, ends at its last, and is C-contiguous (size-1 dims free)."""
    if view_start + ref.offset * itemsize != 0 or count * itemsize != storage_nbytes:
        return False
    expected = 1
    for n, s in zip(reversed(ref.size), reversed(ref.stride)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _read_zip(f: BinaryIO, name: str) -> tuple[_Loader, Any]:
    zf = zipfile.ZipFile(f)
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        if any(n.endswith("/constants.pkl") for n in names):
            raise CheckpointError(f"{name} is a TorchScript archive (torch.jit.save), not a torch.save checkpoint")
        raise CheckpointError(
            f"{name} is a zip archive but not a torch.save checkpoint: expected one '<prefix>/data.pkl' record, "
            f"found {len(pkl)}"
        )
    prefix = pkl[0][: -len("data.pkl")]
    loader = _Loader(name, legacy=False)
    if f"{prefix}byteorder" in names:
        order = zf.read(f"{prefix}byteorder")
        if order not in (b"little", b"big"):
            raise CheckpointError(f"{name}: unknown byte order record {order[:20]!r}")
        loader.byteorder = "<" if order == b"little" else ">"
    obj = _Unpickler(io.BytesIO(zf.read(pkl[0])), loader).load()
    read_record = zip_storage_reader(zf, f, prefix, name)
    loader.read_bytes = lambda root: read_record(root.key, root.nbytes)
    return loader, obj


def _read_legacy(f: BinaryIO, name: str, size: int) -> tuple[_Loader, Any]:
    magic = _Unpickler(f, None).load()
    if magic != MAGIC_NUMBER:
        raise CheckpointError(f"{name} starts with a pickle but not with torch's magic number: not a checkpoint")
    protocol = _Unpickler(f, None).load()
    if protocol != PROTOCOL_VERSION:
        raise CheckpointError(f"{name}: unsupported legacy protocol version {protocol!r}")
    sys_info = _Unpickler(f, None).load()
    if not isinstance(sys_info, dict):
        raise CheckpointError(f"{name}: malformed sys_info record")
    loader = _Loader(name, legacy=True)
    obj = _Unpickler(f, loader).load()
    keys = _Unpickler(f, None).load()
    if not isinstance(keys, list) or not all(isinstance(k, (str, bytes)) for k in keys):
        raise CheckpointError(f"{name}: malformed storage key list")
    keys = [_ascii(k, "storage key") for k in keys]
    offsets: dict[str, int] = {}
    pos = f.tell()
    for key in keys:
        root = loader.roots.get(key)
        if root is None:
            raise CheckpointError(f"{name}: storage {key} is listed but no tensor uses it")
        f.seek(pos)
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{name} is truncated: storage {key} is missing (file ends at {pos} bytes)")
        count = int.from_bytes(head, "little", signed=True)
        if count != root.numel:
            raise CheckpointError(f"{name}: storage {key} holds {count} elements, the pickle expects {root.numel}")
        offsets[key] = pos + 8
        pos += 8 + root.nbytes
        if pos > size:
            raise CheckpointError(f"{name} is truncated: storage {key} ends at byte {pos}, the file has {size}")
    missing = sorted(set(loader.roots) - set(offsets))
    if missing:
        raise CheckpointError(f"{name}: storages {missing[:5]} are used but not stored")

    loader.read_bytes = lambda root: read_exact(f, offsets[root.key], root.nbytes, name, f"storage {root.key}")
    return loader, obj


# --- entry points -----------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A checkpoint read back: ``obj`` is what ``torch.load`` would return, with NumPy arrays for tensors."""

    obj: Any
    format: str  # "zip" | "legacy"
    name: str
    nbytes: int  # file size
    storage_bytes: int  # bytes of tensor data read
    nb_tensors: int


def _sniff(head: bytes, name: str) -> str:
    if not head:
        raise CheckpointError(f"{name} is empty (0 bytes): not a PyTorch checkpoint")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:1] == b"\x80":
        return "legacy"
    if head[257:262] == b"ustar":
        raise CheckpointError(
            f"{name} is a tar archive (the format of torch < 0.4): not supported; load it with an old torch and "
            "save it again"
        )
    if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        raise CheckpointError(
            f"{name} is a safetensors file, not a PyTorch checkpoint (a canonical file needs no conversion)"
        )
    raise CheckpointError(
        f"{name} is not a PyTorch checkpoint: it starts with {head[:12]!r}, neither a zip archive (torch.save since "
        "1.6) nor a pickle (the legacy format)"
    )


def read_checkpoint(
    source: str | os.PathLike | bytes | bytearray | memoryview,
    *,
    progress: Callable[[int], Any] | None = None,
    name: str | None = None,
) -> Checkpoint:
    """Read a ``torch.save`` file (zip or legacy format) without torch.

    Args:
        source: a path, or the file's bytes.
        progress: called once with the total number of storage bytes; must return an object with
            ``update(nbytes)`` and ``close()`` (a ``tqdm`` bar, for instance).
        name: how errors name the source (default: the path).

    Raises:
        UnsafeCheckpointError: the pickle references a global outside the allow-list (named in the message).
        CheckpointError: empty, truncated, corrupt, or not a checkpoint.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        f: BinaryIO = io.BytesIO(data)
        size = len(data)
        name = name or "<bytes>"
        owned = False
    else:
        path = Path(source)
        name = name or str(path)
        if path.is_dir():
            raise CheckpointError(f"{name} is a directory, not a checkpoint file")
        try:
            f = open(path, "rb")
        except OSError as e:
            raise CheckpointError(f"cannot open {name}: {e.strerror or e}") from e
        size = os.fstat(f.fileno()).st_size
        owned = True
    bar = None
    try:
        fmt = _sniff(f.read(512), name)
        f.seek(0)
        try:
            loader, obj = _read_zip(f, name) if fmt == "zip" else _read_legacy(f, name, size)
            total = sum(r.nbytes for r in loader.roots.values() if r.refs > 0)
            nb_tensors = sum(r.refs for r in loader.roots.values())
            bar = progress(total) if progress is not None else None
            result = loader.materialise(obj, bar)
        except CheckpointError:
            raise
        except RecursionError:
            raise CheckpointError(f"{name}: the pickle nests too deeply") from None
        except MemoryError as e:
            raise CheckpointError(f"{name}: out of memory while reading the {fmt} checkpoint ({e})") from None
        except Exception as e:
            kind = "zip archive" if fmt == "zip" else "legacy-format file"
            raise CheckpointError(f"{name}: corrupt or truncated {kind} ({type(e).__name__}: {e})") from e
        return Checkpoint(result, fmt, name, size, total, nb_tensors)
    finally:
        if bar is not None:
            bar.close()
        if owned:
            f.close()


def load(source: str | os.PathLike | bytes, *, progress: Callable[[int], Any] | None = None) -> Any:
    """``torch.load(source, map_location='cpu')`` without torch: tensors become NumPy arrays (see module doc)."""
    return read_checkpoint(source, progress=progress).obj
