"""Every captured key of ``unmix-parity`` is judged by a row that ``core_spec.tolerances`` has for its dtype and
device (``--dtype float64`` once stopped with "no tolerance for ('separator.music', 'float64', 'cpu')": the
real-music row exists for float32 only, where it is relative to upstream's float32 error)."""

from __future__ import annotations

import pytest

from core_spec.tolerances import tolerance
from unmix.parity.stages import row_of

KEYS = ("stft", "magnitude", "wiener", "istft", "separator.vocals", "apply.drums", "umx.fc1", "demucs.output")


@pytest.mark.parametrize("device", ["cpu", "gpu"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("implementation", ["upstream", "torch", "tf", "jax", "nnabla"])
def test_every_key_has_a_row_in_its_dtype(implementation: str, dtype: str, device: str) -> None:
    for key in KEYS:
        tolerance(row_of(key, implementation, dtype), dtype, device)  # raises KeyError naming the missing row


def test_music_row_is_float32_only() -> None:
    assert row_of("separator.vocals", "torch", "float32") == "separator.music"
    assert row_of("separator.vocals", "torch", "float64") == "separator"
