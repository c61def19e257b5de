"""JAX / Flax NNX port of Open-Unmix, Demucs v2 and HTDemucs (demucs 4), from the framework-neutral spec in
``core_spec``.

Modules (the same names in every port, in the order of the lesson): :mod:`~umx_jax.transforms` (pure ``stft``,
``istft``, ``complex_norm``), :mod:`~umx_jax.layers` (dense, ``BatchNorm1d``, ``LSTM`` with its hand-written
gradient, GLU, convolutions), :mod:`~umx_jax.umx` (``OpenUnmix``), :mod:`~umx_jax.demucs` (``Demucs``),
:mod:`~umx_jax.resample` (julius-compatible resampler), :mod:`~umx_jax.filtering` (pure, jit-able Wiener/EM),
:mod:`~umx_jax.separator` (``Separator``: the whole UMX separation as one ``jax.jit``-compiled function),
:mod:`~umx_jax.apply` (Demucs's ``apply_model``, ``separate_track``), the HTDemucs modules
(:mod:`~umx_jax.htdemucs_spec`, :mod:`~umx_jax.htdemucs_embed`, :mod:`~umx_jax.htdemucs_layers`,
:mod:`~umx_jax.htdemucs_transformer`, :mod:`~umx_jax.htdemucs` (``HTDemucs``), :mod:`~umx_jax.htdemucs_apply`
(``BagOfModels`` and demucs 4's ``apply_model``, ``separate_track``)), :mod:`~umx_jax.weights` (canonical weights
<-> Flax state, the msgpack native file), :mod:`~umx_jax.build` (models from weights), :mod:`~umx_jax.train`.

The names below load their module on first use (PEP 562): ``import umx_jax`` imports neither Flax nor the
models, so a command that runs an exported separator (:mod:`~umx_jax.exported`: JAX and NumPy only) never pays
Flax's import (0.2 s). ``from umx_jax import Separator`` and ``umx_jax.weights`` work as for any package.

float64: JAX runs in float32 unless 64-bit types are enabled; the port never enables them globally. The
separators, the loaders and ``apply_model`` enter ``jax.enable_x64`` themselves for float64 modules; to call a
float64 module or function directly, wrap the call in ``with umx_jax.dtype_scope("float64"):``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._scope import dtype_scope
    from .apply import apply_model, separate_track
    from .build import from_canonical, from_canonical_file, load_module
    from .demucs import Demucs, center_trim, valid_length
    from .filtering import expectation_maximization, wiener
    from .htdemucs import HTDemucs
    from .htdemucs_apply import BagOfModels
    from .layers import LSTM
    from .resample import resample_frac
    from .separator import Separator
    from .transforms import complex_norm, istft, stft
    from .umx import OpenUnmix
    from .weights import WeightsMismatchError, load_native, load_weights, native_paths, save_native, to_canonical

_HOMES = {
    "_scope": ("dtype_scope",),
    "apply": ("apply_model", "separate_track"),
    "build": ("from_canonical", "from_canonical_file", "load_module"),
    "demucs": ("Demucs", "center_trim", "valid_length"),
    "filtering": ("expectation_maximization", "wiener"),
    "htdemucs": ("HTDemucs",),
    "htdemucs_apply": ("BagOfModels",),
    "layers": ("LSTM",),
    "resample": ("resample_frac",),
    "separator": ("Separator",),
    "transforms": ("complex_norm", "istft", "stft"),
    "umx": ("OpenUnmix",),
    "weights": ("WeightsMismatchError", "load_native", "load_weights", "native_paths", "save_native", "to_canonical"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}
__all__ = [
    "LSTM",
    "BagOfModels",
    "Demucs",
    "HTDemucs",
    "OpenUnmix",
    "Separator",
    "WeightsMismatchError",
    "apply_model",
    "center_trim",
    "complex_norm",
    "dtype_scope",
    "expectation_maximization",
    "from_canonical",
    "from_canonical_file",
    "istft",
    "load_module",
    "load_native",
    "load_weights",
    "native_paths",
    "resample_frac",
    "save_native",
    "separate_track",
    "stft",
    "to_canonical",
    "valid_length",
    "wiener",
]


def __getattr__(name: str) -> Any:
    """A public name (imported from its module now, then kept) or a submodule (``umx_jax.weights``)."""
    if name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
