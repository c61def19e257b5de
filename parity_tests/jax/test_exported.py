"""``umx_jax.exported``: a separator exported with ``jax.export`` and called with weights built from canonical
arrays (no Flax module) gives the separator's estimates bit for bit, in float32 and float64, with and without EM;
damaged bytes, mismatched weights and a custom window are refused with a clear error."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core_spec.canonical import join_targets
from core_spec.params import WeightsMismatchError
from core_spec.seeded import random_audio, random_weights
from parity_tests.fixtures_umx import small_separator
from umx_jax import from_canonical
from umx_jax.exported import EXPORT_FORMAT, ExportedSeparator, export_separator, exportable


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("niter", "residual"), [(0, False), (1, True)])
def test_exported_graph_equals_the_separator(dtype, niter, residual) -> None:
    config, weights = small_separator(niter, residual)
    audio = random_audio(20000, 2, seed=5, nb_samples=1).astype(dtype)
    separator = from_canonical(config, weights, dtype=dtype)
    expected = np.asarray(separator.separate(audio))
    graph = export_separator(separator, audio.shape)
    assert graph.executable, "the compiled call was not serialised"
    for kept in (graph, dataclasses.replace(graph, executable=b"")):  # the executable read back; the module alone
        exported = ExportedSeparator.from_bytes(kept.to_bytes())
        assert exported.input_shape == audio.shape and exported.output_shape == expected.shape
        assert exported.output_dtype == dtype and exported.executable == kept.executable
        got = np.asarray(exported(audio, exported.weight_tensors(weights, config)))
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


def test_damaged_bytes_are_refused() -> None:
    config, weights = small_separator(0)
    data = export_separator(from_canonical(config, weights), (1, 2, 8192)).to_bytes()
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
    graph = ExportedSeparator.from_bytes(data)
    with pytest.raises(ValueError, match="compiled executable cannot be loaded"):
        dataclasses.replace(graph, executable=b"not an executable")  # what from_bytes builds from a file


def test_mismatched_weights_and_audio_are_refused() -> None:
    config, weights = small_separator(0)
    exported = export_separator(from_canonical(config, weights), (1, 2, 8192))
    missing = {k: v for k, v in weights.items() if not k.endswith("fc1.weight")}
    with pytest.raises(WeightsMismatchError, match=r"fc1\.weight"):
        exported.weight_tensors(missing, config)
    wider = dataclasses.replace(config, model=dataclasses.replace(config.model, hidden_size=32))
    others = join_targets({t: random_weights(wider.model, seed=1) for t in config.separator.targets})
    with pytest.raises(ValueError, match=r"the graph takes \(.*\), the weights give"):
        exported.weight_tensors(others, wider)
    tensors = exported.weight_tensors(weights, config)
    with pytest.raises(ValueError, match=r"takes audio of shape \(1, 2, 8192\), got \(1, 2, 8000\)"):
        exported(np.zeros((1, 2, 8000), np.float32), tensors)


def test_a_custom_window_is_not_exported() -> None:
    config, weights = small_separator(0)
    separator = from_canonical(config, weights, window=np.hanning(4096))
    with pytest.raises(ValueError, match="its own STFT window"):
        export_separator(separator, (1, 2, 8192))
    assert exportable("cpu") and not exportable("gpu")
