"""The HTDemucs spec at the released shapes (``htdemucs``, ``htdemucs_6s``) against demucs 4.1.0's committed
fixtures: the whole forward on a short input, float64 (with upstream's input statistics injected: torch's float64
``std`` is not correctly rounded at the released length) and upstream's float32 error under the float32 row.

NumPy only, but a minute of NumPy per model: main environment only (``parity_tests/spec/test_htdemucs_fixtures.py``
runs the traced small models in both environments with the same functions).
"""

from __future__ import annotations

import pytest

from parity_tests.spec.test_htdemucs_fixtures import (
    RELEASED,
    _forward_keys,
    check_forward_stage_float64,
    check_upstream_float32_stage,
)


@pytest.mark.parametrize(("name", "key"), _forward_keys(RELEASED))
def test_released_forward_float64(name: str, key: str) -> None:
    check_forward_stage_float64(name, key)


@pytest.mark.parametrize(("name", "key"), _forward_keys(RELEASED))
def test_released_upstream_float32_within_the_float32_row(name: str, key: str) -> None:
    check_upstream_float32_stage(name, key)
