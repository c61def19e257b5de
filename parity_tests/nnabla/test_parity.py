"""The shared stage tests (``parity_tests.harness``) run on the NNabla port, float32, on ``--device``.

NNabla's CPU extension has no float64 kernels (``umx_nnabla._context``), so the port is tested in float32 only,
against the float64 reference and against upstream's float32 outputs. The adapter (``unmix.parity.adapters.nnabla``)
runs the port's own code: the NumPy-FFT transforms, ``complex_norm`` / the networks / the resampler as NNabla
graphs, the NumPy Wiener filter, the whole separator and ``apply_model``. The other implementations (``F.stft`` /
``F.istft`` graphs, ``F.lstm``, the Wiener graph) are compared in ``test_graph_impls.py``.
"""

from __future__ import annotations

import pytest

from parity_tests.harness import *  # noqa: F403  (the shared stage tests)
from parity_tests.harness import Port
from unmix.parity.adapters import DeviceUnavailable
from unmix.parity.adapters import nnabla as adapter


@pytest.fixture(scope="module")
def port(device: str) -> Port:
    try:
        return adapter.port(device)
    except DeviceUnavailable as e:  # --device gpu without nnabla-ext-cuda
        pytest.skip(str(e))
