"""PyTorch port of Open-Unmix, Demucs v2 and HTDemucs (v4), from the framework-neutral spec in ``core_spec``.

Modules (the same names in every port, each mirroring its spec module: ``core_spec.public_api.LESSONS``):
:mod:`~umx_torch.transforms` (STFT, ISTFT, magnitude), :mod:`~umx_torch.layers` (PyTorch's own layers),
:mod:`~umx_torch.umx` (``OpenUnmix``), :mod:`~umx_torch.demucs` (``Demucs``), :mod:`~umx_torch.resample`
(julius-compatible resampler), :mod:`~umx_torch.filtering` (Wiener/EM), :mod:`~umx_torch.separator`
(``Separator``), :mod:`~umx_torch.apply` (``apply_model``, ``separate_track``), :mod:`~umx_torch.weights`
(canonical weights <-> state dicts, native files), :mod:`~umx_torch.build` (models from weights),
:mod:`~umx_torch.train`. HTDemucs (demucs 4.x): :mod:`~umx_torch.htdemucs` (``HTDemucs``) with its building blocks
:mod:`~umx_torch.htdemucs_spec`, :mod:`~umx_torch.htdemucs_embed`, :mod:`~umx_torch.htdemucs_layers`,
:mod:`~umx_torch.htdemucs_transformer`, and :mod:`~umx_torch.htdemucs_apply` (``BagOfModels``, its own
``apply_model`` and ``separate_track``).

State-dict names are upstream's, so ``OpenUnmix(...).load_state_dict(torch.load(upstream_file))`` works.
"""

from .apply import apply_model, separate_track
from .build import from_canonical, from_canonical_file, load_module
from .demucs import Demucs, center_trim, valid_length
from .filtering import expectation_maximization, wiener
from .htdemucs import HTDemucs
from .htdemucs_apply import BagOfModels
from .resample import ResampleFrac, resample_frac
from .separator import Separator
from .transforms import complex_norm, istft, stft
from .umx import OpenUnmix
from .weights import (
    LegacyKeysWarning,
    WeightsMismatchError,
    load_canonical_into,
    load_native,
    load_weights,
    native_paths,
    save_canonical_from,
    save_native,
    state_dict_from_canonical,
    to_canonical,
)

__all__ = [
    "BagOfModels",
    "Demucs",
    "HTDemucs",
    "LegacyKeysWarning",
    "OpenUnmix",
    "ResampleFrac",
    "Separator",
    "WeightsMismatchError",
    "apply_model",
    "center_trim",
    "complex_norm",
    "expectation_maximization",
    "from_canonical",
    "from_canonical_file",
    "istft",
    "load_canonical_into",
    "load_module",
    "load_native",
    "load_weights",
    "native_paths",
    "resample_frac",
    "save_canonical_from",
    "save_native",
    "separate_track",
    "state_dict_from_canonical",
    "stft",
    "to_canonical",
    "valid_length",
    "wiener",
]
