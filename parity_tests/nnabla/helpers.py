"""Helpers of the NNabla tests (NNabla environment only)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from unmix.parity.adapters import DeviceUnavailable
from unmix.parity.adapters import nnabla as adapter
from unmix.parity.adapters.nnabla import trace_arrays

__all__ = ["run_on", "trace_arrays"]


@contextlib.contextmanager
def run_on(device: str) -> Iterator[None]:
    """Run inside ``device``'s context; a GPU run without ``nnabla-ext-cuda`` is skipped."""
    try:
        adapter.check_device(device)
    except DeviceUnavailable as e:
        pytest.skip(str(e))
    with adapter.run_on(device):
        yield
