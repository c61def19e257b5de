"""Upstream checkpoints -> the canonical weight format, without PyTorch.

- :mod:`weights_convert.torch_pickle`: reads ``torch.save`` files (zip and legacy formats) with an allow-listing
  unpickler: no torch import, no code from the file run;
- :mod:`weights_convert.sources`: understands what upstream files hold (openunmix state dicts and model folders,
  demucs 2.0.x state dicts and packages, diffq-quantized states), infers and checks the model config;
- :mod:`unmix.convert_targets`: canonical -> each port's own format (through the ports' ``weights.py``);
- :mod:`unmix.convert_cli`: the ``unmix-convert`` command (also ``unmix convert``).

See ``docs/weights.md``.
"""

from .errors import (
    CheckpointError,
    ConversionError,
    LegacyKeysWarning,
    NonFiniteWeightsWarning,
    OutputExistsError,
    UnsafeCheckpointError,
)
from .torch_pickle import Checkpoint, load, read_checkpoint

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "ConversionError",
    "LegacyKeysWarning",
    "NonFiniteWeightsWarning",
    "OutputExistsError",
    "UnsafeCheckpointError",
    "load",
    "read_checkpoint",
]
