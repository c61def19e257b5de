"""Helpers of the NNabla tests (NNabla environment only)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import nnabla as nn
import numpy as np
import pytest

from umx_nnabla import device_context


@contextlib.contextmanager
def run_on(device: str) -> Iterator[None]:
    """Run inside ``device``'s context; a GPU run without ``nnabla-ext-cuda`` is skipped."""
    try:
        ctx = device_context(device)
    except RuntimeError as e:
        pytest.skip(str(e))
    with nn.context_scope(ctx):
        yield


def trace_arrays(trace: dict[str, nn.Variable]) -> dict[str, np.ndarray]:
    """The UMX trace in the reference's layouts: every key ``(nb_frames * nb_samples, features)`` but ``lstm``
    ``(nb_frames, nb_samples, features)``; the port's Variables are frame-major ``(nb_frames, nb_samples, ...)``."""
    out = {}
    for key, var in trace.items():
        value = var.d.copy()
        out[key] = value if key == "lstm" else value.reshape(value.shape[0] * value.shape[1], -1)
    return out
