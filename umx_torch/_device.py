"""Devices, dtypes and array conversions of the PyTorch port (private: the modules above it import these)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from core_spec.devices import device_name, dtype_name

__all__ = ["to_numpy", "to_tensor", "torch_device", "torch_dtype"]


def torch_device(device: torch.device | str | None) -> torch.device | None:
    """``None`` (PyTorch's default), a ``torch.device``, ``"cpu"``, ``"gpu"`` (the first CUDA device) or ``"cuda:N"``.

    Raises:
        RuntimeError: a CUDA device where PyTorch sees none.
    """
    if device is None or isinstance(device, torch.device):
        return device
    text = str(device)
    name = text if text.startswith("cuda:") else device_name(text)
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r}: PyTorch sees no CUDA device (torch.cuda.is_available() is False)")
    return torch.device("cuda" if name == "gpu" else name)


def torch_dtype(dtype: torch.dtype | str | Any) -> torch.dtype:
    """``torch.float32``/``torch.float64`` from itself, ``"float32"``/``"float64"`` or a NumPy dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    return torch.float64 if dtype_name(dtype) == "float64" else torch.float32


def to_tensor(audio: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A NumPy array (or anything ``numpy.ascontiguousarray`` takes) as a tensor in ``dtype`` on ``device``."""
    return torch.as_tensor(np.ascontiguousarray(audio)).to(device=device, dtype=dtype)


def to_numpy(audio: Any) -> np.ndarray:
    """A tensor (any device, detached) or an array-like as a NumPy array."""
    if isinstance(audio, Tensor):
        return audio.detach().to("cpu").numpy()
    return np.asarray(audio)
