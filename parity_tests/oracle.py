"""The upstream oracles (openunmix 1.3.0, demucs 2.0.3) built from canonical weights. Needs torch: main env only.

The code lives in :mod:`unmix.parity.adapters.upstream` (shared with ``unmix-parity``); this module keeps the
suite's import path. Importing it inserts the empty ``torchaudio`` module that openunmix needs first.
"""

from __future__ import annotations

from unmix.parity.adapters.upstream import (
    default_dtype,
    demucs_model,
    demucs_traced,
    recorded_resampling,
    to_torch_state,
    torch,
    umx_model,
    umx_separator,
    umx_traced,
    versions,
)

__all__ = [
    "default_dtype",
    "demucs_model",
    "demucs_traced",
    "recorded_resampling",
    "to_torch_state",
    "torch",
    "umx_model",
    "umx_separator",
    "umx_traced",
    "versions",
]
