"""``umx_tf.exported``: a separator's graph exported as StableHLO and run by ``XlaCallModule`` with weights built
from canonical arrays (no Keras model) gives the Keras separator's estimates bit for bit, in float32 and float64,
with and without EM; damaged bytes and mismatched weights are refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from core_spec.params import WeightsMismatchError
from core_spec.seeded import random_audio
from parity_tests.fixtures_umx import small_separator
from parity_tests.tf.helpers import tf
from umx_tf import from_canonical
from umx_tf.exported import EXPORT_FORMAT, ExportedSeparator, export_separator


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("niter", "residual"), [(0, False), (1, True)])
def test_exported_graph_equals_the_keras_separator(dtype, niter, residual) -> None:
    config, weights = small_separator(niter, residual)
    audio = random_audio(20000, 2, seed=5, nb_samples=1).astype(dtype)
    separator = from_canonical(config, weights, dtype=dtype)
    expected = separator.separate(audio).numpy()
    exported = ExportedSeparator.from_bytes(export_separator(separator, audio.shape).to_bytes())
    assert exported.input_shape == audio.shape and exported.output_shape == expected.shape
    assert exported.output_dtype == dtype
    got = exported(audio, exported.weight_tensors(weights, separator.config)).numpy()
    np.testing.assert_array_equal(got, expected)


def test_damaged_bytes_are_refused() -> None:
    config, weights = small_separator(0)
    separator = from_canonical(config, weights)
    data = export_separator(separator, (1, 2, 8192)).to_bytes()
    with pytest.raises(ValueError, match="not an exported separator"):
        ExportedSeparator.from_bytes(b"something else\n" + data)
    with pytest.raises(ValueError, match="module is damaged"):
        ExportedSeparator.from_bytes(data[:-100])
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    with pytest.raises(ValueError, match="module is damaged"):
        ExportedSeparator.from_bytes(bytes(flipped))
    header, _, rest = data.partition(b"\n")
    with pytest.raises(ValueError, match="damaged exported separator description"):
        ExportedSeparator.from_bytes(header + b"\n{not json\n" + rest.partition(b"\n")[2])
    assert data.startswith(EXPORT_FORMAT.encode() + b"\n")


def test_mismatched_weights_and_audio_are_refused() -> None:
    config, weights = small_separator(0)
    separator = from_canonical(config, weights)
    exported = export_separator(separator, (1, 2, 8192))
    missing = {k: v for k, v in weights.items() if not k.endswith("fc1.weight")}
    with pytest.raises(WeightsMismatchError, match=r"fc1\.weight"):
        exported.weight_tensors(missing, separator.config)
    tensors = exported.weight_tensors(weights, separator.config)
    with pytest.raises(ValueError, match=r"takes audio of shape \(1, 2, 8192\), got \(1, 2, 8000\)"):
        exported(np.zeros((1, 2, 8000), np.float32), tensors)


def test_only_a_compiled_separator_is_exported() -> None:
    config, weights = small_separator(0)
    separator = from_canonical(config, weights, jit_compile=False)
    with pytest.raises(ValueError, match="only an XLA-compiled separator"):
        export_separator(separator, (1, 2, 8192))
    assert tf.executing_eagerly()
