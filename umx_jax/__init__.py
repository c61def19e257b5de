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

float64: JAX runs in float32 unless 64-bit types are enabled; the port never enables them globally. The
separators, the loaders and ``apply_model`` enter ``jax.enable_x64`` themselves for float64 modules; to call a
float64 module or function directly, wrap the call in ``with umx_jax.dtype_scope("float64"):``.
"""

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
