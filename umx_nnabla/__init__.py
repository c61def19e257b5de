"""NNabla port of Open-Unmix and Demucs v2, from the framework-neutral spec in ``core_spec``.

It lives in its own environment (``.venv-nnabla``: NNabla 1.39 has wheels for Python <= 3.10 only, with NumPy
~1.26) and never imports torch, TensorFlow or JAX.

Modules (the same names in every port): :mod:`~umx_nnabla.transforms` (``stft``, ``istft`` on NumPy arrays with
an FFT; ``stft_graph``, ``istft_graph`` through ``F.stft`` / ``F.istft``; ``complex_norm`` as a graph),
:mod:`~umx_nnabla.umx` (``OpenUnmix``, the ``lstm`` parametric function), :mod:`~umx_nnabla.demucs` (``Demucs``),
:mod:`~umx_nnabla.resample` (julius-compatible resampler graph), :mod:`~umx_nnabla.filtering` (Wiener/EM:
NumPy ``wiener`` and the ``wiener_graph`` graph), :mod:`~umx_nnabla.separator` (``Separator``, ``apply_model``,
``separate_track``), :mod:`~umx_nnabla.weights` (canonical weights <-> NNabla parameters, ``.h5`` files).

Models build ``nn.Variable`` graphs with parametric functions under their own parameter scope (an ``OrderedDict``
per model, never NNabla's global scope). float32 only: NNabla's CPU extension has no float64 kernels (see
:mod:`umx_nnabla._context`). GPU: install ``nnabla-ext-cuda`` and run inside ``umx_nnabla.on_device("gpu")``.
"""

from ._context import DTYPES, device_context, on_device
from .apply import apply_model, separate_track
from .build import from_canonical, from_canonical_file, load_module
from .demucs import Demucs, center_trim, valid_length
from .filtering import expectation_maximization, wiener, wiener_graph
from .layers import lstm
from .resample import resample_frac
from .separator import Separator
from .transforms import complex_norm, istft, istft_graph, stft, stft_graph
from .umx import OpenUnmix
from .weights import WeightsMismatchError, load_native, load_weights, save_native, to_canonical

__all__ = [
    "DTYPES",
    "Demucs",
    "OpenUnmix",
    "Separator",
    "WeightsMismatchError",
    "apply_model",
    "center_trim",
    "complex_norm",
    "device_context",
    "expectation_maximization",
    "from_canonical",
    "from_canonical_file",
    "istft",
    "istft_graph",
    "load_module",
    "load_native",
    "load_weights",
    "lstm",
    "on_device",
    "resample_frac",
    "save_native",
    "separate_track",
    "stft",
    "stft_graph",
    "to_canonical",
    "valid_length",
    "wiener",
    "wiener_graph",
]
