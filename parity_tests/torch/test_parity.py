"""The shared stage tests (``parity_tests.harness``) run on the PyTorch port, float32 and float64, on ``--device``.

The adapter (``unmix.parity.adapters.torch``) runs the port in inference mode (``torch.no_grad``). Its FFT gives
rounding-level imaginary parts of real-axis bins other signs than NumPy's (``fft_signs_differ``), so the shared
``test_port_separator`` compares its float64 separator with ``atan2="exact"`` on both sides (the harness's
docstring); ``test_separator.py`` compares float64 with the upstream atan2 against upstream's own output, on
upstream's STFT window.
"""

from __future__ import annotations

import pytest

from parity_tests.harness import *  # noqa: F403  (the shared stage tests)
from parity_tests.harness import Port
from unmix.parity.adapters import DeviceUnavailable
from unmix.parity.adapters import torch as adapter


@pytest.fixture(scope="module")
def port(device: str) -> Port:
    try:
        return adapter.port(device)  # TF32 off on CUDA
    except DeviceUnavailable as e:
        pytest.skip(str(e))
