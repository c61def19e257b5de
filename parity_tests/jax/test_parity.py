"""The shared stage tests (``parity_tests.harness``) run on the JAX port, float32 and float64, on ``--device``.

The adapter (``unmix.parity.adapters.jax``) runs the port inside ``umx_jax.dtype_scope`` (x64 only for float64,
never globally) with ``jax.default_matmul_precision("highest")`` and the device as JAX's default; the networks and
the separator run compiled (``nnx.jit`` / the separator's own ``jax.jit``).
"""

from __future__ import annotations

import pytest

from parity_tests.harness import *  # noqa: F403  (the shared stage tests)
from parity_tests.harness import Port
from unmix.parity.adapters import DeviceUnavailable
from unmix.parity.adapters import jax as adapter


@pytest.fixture(scope="module")
def port(device: str) -> Port:
    try:
        return adapter.port(device)
    except DeviceUnavailable as e:
        pytest.skip(str(e))
