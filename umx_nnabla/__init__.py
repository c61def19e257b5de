"""NNabla port of Open-Unmix, Demucs v2 and HTDemucs (demucs 4), from the framework-neutral spec in ``core_spec``.

It lives in its own environment (``.venv-nnabla``: NNabla 1.39 has wheels for Python <= 3.10 only, with NumPy
~1.26) and never imports torch, TensorFlow or JAX.

Modules (the spec's module map, the same names in every port; each imports only the ones above it):
:mod:`~umx_nnabla.transforms` (``hann_window``, ``stft``, ``istft`` on NumPy arrays with an FFT; ``complex_norm``
as a graph; ``stft_graph``, ``istft_graph`` through ``F.stft`` / ``F.istft``), :mod:`~umx_nnabla.layers` (BatchNorm,
the ``lstm`` parametric function and its unrolled graph, ``glu``; the rest is NNabla's own ``PF.affine``,
``PF.convolution``, ``PF.deconvolution``), :mod:`~umx_nnabla.resample` (julius-compatible resampler graph),
:mod:`~umx_nnabla.filtering` (Wiener/EM: NumPy ``wiener_planar`` and its upstream-layout ``wiener``; the
``wiener_graph`` graph), :mod:`~umx_nnabla.weights` (canonical weights <-> NNabla parameters, ``.h5`` files),
:mod:`~umx_nnabla.umx` (``OpenUnmix``), :mod:`~umx_nnabla.demucs` (``Demucs``), :mod:`~umx_nnabla.separator`
(``Separator``, ``filter_chunks``, ``filter_and_invert``), :mod:`~umx_nnabla.apply` (``apply_model``,
``separate_track``), the HTDemucs modules (:mod:`~umx_nnabla.htdemucs_spec`, :mod:`~umx_nnabla.htdemucs_embed`,
:mod:`~umx_nnabla.htdemucs_layers`, :mod:`~umx_nnabla.htdemucs_transformer`, :mod:`~umx_nnabla.htdemucs`
(``HTDemucs``), :mod:`~umx_nnabla.htdemucs_apply` (``BagOfModels`` and demucs 4's ``apply_model``,
``separate_track``)), :mod:`~umx_nnabla.build` (``from_canonical``, ``from_canonical_file``, ``load_module``),
:mod:`~umx_nnabla.train` (the ``Trainer`` that ``unmix-train --framework nnabla`` steps).

Models build ``nn.Variable`` graphs with parametric functions under their own parameter scope (an ``OrderedDict``
per model, never NNabla's global scope). float32 only: NNabla's CPU extension has no float64 kernels (see
:mod:`umx_nnabla._context`). GPU: install ``nnabla-ext-cuda`` and run inside ``umx_nnabla.on_device("gpu")``.
"""

from ._context import DTYPES, device_context, on_device
from .apply import apply_model, separate_track
from .build import from_canonical, from_canonical_file, load_module
from .demucs import Demucs, center_trim, valid_length
from .filtering import (
    expectation_maximization,
    expectation_maximization_planar,
    initial_estimate,
    upstream_atan2,
    wiener,
    wiener_graph,
    wiener_planar,
)
from .htdemucs import HTDemucs
from .htdemucs_apply import BagOfModels
from .layers import lstm
from .resample import resample_frac
from .separator import Separator, filter_and_invert, filter_chunks
from .transforms import complex_norm, hann_window, istft, istft_graph, stft, stft_graph
from .umx import OpenUnmix
from .weights import FORMAT, WeightsMismatchError, load_native, load_weights, native_paths, save_native, to_canonical

__all__ = [
    "DTYPES",
    "BagOfModels",
    "FORMAT",
    "Demucs",
    "HTDemucs",
    "OpenUnmix",
    "Separator",
    "WeightsMismatchError",
    "apply_model",
    "center_trim",
    "complex_norm",
    "device_context",
    "expectation_maximization",
    "expectation_maximization_planar",
    "filter_and_invert",
    "filter_chunks",
    "from_canonical",
    "from_canonical_file",
    "hann_window",
    "initial_estimate",
    "istft",
    "istft_graph",
    "load_module",
    "load_native",
    "load_weights",
    "lstm",
    "native_paths",
    "on_device",
    "resample_frac",
    "save_native",
    "separate_track",
    "stft",
    "stft_graph",
    "to_canonical",
    "upstream_atan2",
    "valid_length",
    "wiener",
    "wiener_graph",
    "wiener_planar",
]
