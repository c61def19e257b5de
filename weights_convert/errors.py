"""The errors and warnings of the weight converters. All errors are ``ValueError`` subclasses (bad input), so a
caller can catch them together; none of them means the file was trusted or any of its code run."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConversionError",
    "LegacyKeysWarning",
    "NonFiniteWeightsWarning",
    "OutputExistsError",
    "UnsafeCheckpointError",
]


class CheckpointError(ValueError):
    """The file cannot be read as a PyTorch checkpoint: empty, truncated, corrupt, or not a checkpoint at all."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint's pickle references a global outside the allow-list (or calls one only recorded by name).

    ``global_name`` is ``"module.name"``; nothing of it was imported or called.
    """

    def __init__(self, message: str, global_name: str = "") -> None:
        super().__init__(message)
        self.global_name = global_name


class ConversionError(ValueError):
    """The file was read but cannot be converted: unknown layout, wrong preset, missing files, missing tools."""


class OutputExistsError(FileExistsError):
    """An output file exists and ``--force`` was not given."""


class NonFiniteWeightsWarning(UserWarning):
    """The weights hold NaN or Inf values (converted as they are)."""


class LegacyKeysWarning(UserWarning):
    """Keys that hold no weights (2019 Open-Unmix buffers) were dropped."""
