"""Demucs fixtures: upstream demucs 2.0.3 (and julius) outputs, per stage, float64 and float32.

The module is importable without torch (the cases are plain data, shared by the tests of every environment);
:func:`make` imports the oracle. Files written (``parity_tests/fixtures/``):

``demucs_resample.npz``
    ``audio`` ``(2, 3, 1001)``; ``up.<dtype>`` ``(2, 3, 2002)`` = ``julius.resample_frac(audio, 1, 2)``;
    ``down.<dtype>`` ``(2, 3, 500)`` = ``resample_frac(audio, 2, 1)``; ``kernels.up`` ``(2, 53)`` and
    ``kernels.down`` ``(1, 104)``: julius's filters, exactly as it builds them (float32, see
    ``core_spec.reference.resample``).
``demucs_forward_<case>.npz`` for every case of :data:`FORWARD_CASES`
    ``mix`` ``(B, C, L)`` with ``L = valid_length(...)``; ``trace.<key>.<dtype>`` for every key of
    ``core_spec.reference.demucs.demucs_trace_keys(config)`` (forward hooks on ``encoder.i``, ``lstm.lstm``,
    ``lstm``, ``decoder.j``; the two ``julius.resample_frac`` calls of ``Demucs.forward`` are wrapped);
    ``output.<dtype>`` ``(B, S, C, L_out)``; ``kernels.up`` / ``kernels.down``.
``demucs_apply_<case>.npz`` for every case of :data:`APPLY_CASES`
    ``mix`` ``(C, L)`` longer than one segment; ``demucs.utils.apply_model(model, mix, split=True, ...)``
    ``(S, C, L)`` as ``output.float64`` (model float64, run under ``torch.set_default_dtype(torch.float64)``),
    ``output.float64_default_float32`` (model float64 under torch's default float32: upstream accumulates the
    overlap-add in float32, so this output is float32) and ``output.float32`` (model float32); ``kernels.*``.

``<dtype>`` is the precision upstream ran in. Weights come from ``core_spec.seeded.random_weights(config,
seed)``; the metadata holds the config (JSON), the seeds, the weights' SHA-256 and the versions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.configs import DEMUCS_PRESETS, DemucsConfig, config_to_json
from core_spec.seeded import random_audio, random_weights
from core_spec.shapes import valid_length
from parity_tests.fixtures import save, weights_sha256

DTYPES = ("float64", "float32")
RESAMPLE_SHAPE = (2, 3, 1001)
RESAMPLE_SEED = 11

_UNITTEST = DEMUCS_PRESETS["demucs_unittest"]
_C6D4 = DemucsConfig(channels=6, depth=4)


@dataclasses.dataclass(frozen=True)
class ForwardCase:
    config: DemucsConfig
    nb_samples: int
    length: int  # the mixture is padded to valid_length(length)
    weights_seed: int
    mix_seed: int


@dataclasses.dataclass(frozen=True)
class ApplyCase:
    config: DemucsConfig  # config.segment_length is the (small) segment of the split
    length: int
    overlap: float
    transition_power: float
    weights_seed: int
    mix_seed: int


FORWARD_CASES: dict[str, ForwardCase] = {
    # the smallest valid input of demucs_unittest (8874 samples), preset as released (normalize=False)
    "unittest": ForwardCase(_UNITTEST, 1, 1, weights_seed=0, mix_seed=1),
    "c6d4_normalize": ForwardCase(dataclasses.replace(_C6D4, normalize=True), 2, 1500, weights_seed=2, mix_seed=3),
    "c6d4_noresample": ForwardCase(dataclasses.replace(_C6D4, resample=False), 1, 1500, weights_seed=4, mix_seed=5),
}

APPLY_CASES: dict[str, ApplyCase] = {
    # 4 segments of 3000 (stride 2250); every chunk padded to valid_length(3000) = 8874
    "unittest": ApplyCase(dataclasses.replace(_UNITTEST, segment_length=3000), 7000, 0.25, 1.0, 0, 6),
    # 4 segments of 1000 (stride 750)
    "c6d4": ApplyCase(dataclasses.replace(_C6D4, segment_length=1000), 2600, 0.25, 1.0, 2, 7),
    # 5 segments of 1000 (stride 500), sharper cross-fade
    "c6d4_overlap50_power2": ApplyCase(dataclasses.replace(_C6D4, segment_length=1000), 2400, 0.5, 2.0, 2, 8),
}


def forward_mix(case: ForwardCase) -> np.ndarray:
    """The seeded mixture of a forward case: ``(nb_samples, audio_channels, valid_length(length))``."""
    length = valid_length(case.length, case.config)
    return random_audio(length, case.config.audio_channels, seed=case.mix_seed, nb_samples=case.nb_samples)


def apply_mix(case: ApplyCase) -> np.ndarray:
    """The seeded track of an apply case: ``(audio_channels, length)``."""
    return random_audio(case.length, case.config.audio_channels, seed=case.mix_seed)


def resample_audio() -> np.ndarray:
    return random_audio(RESAMPLE_SHAPE[-1], RESAMPLE_SHAPE[1], seed=RESAMPLE_SEED, nb_samples=RESAMPLE_SHAPE[0])


def kernels_dict(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{"up": ..., "down": ...}`` julius kernels stored in a fixture, for ``resample_kernels=``."""
    return {"up": arrays["kernels.up"], "down": arrays["kernels.down"]}


# --- writing (needs torch) ------------------------------------------------------------------------------------


def _julius_kernels() -> dict[str, np.ndarray]:
    from julius.resample import ResampleFrac

    return {
        "kernels.up": ResampleFrac(1, 2).kernel.reshape(2, -1).numpy(),
        "kernels.down": ResampleFrac(2, 1).kernel.reshape(1, -1).numpy(),
    }


def _traced_forward(model, mix) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Upstream forward with every stage of ``demucs_trace_keys`` recorded (``unmix.parity.adapters.upstream``)."""
    from parity_tests.oracle import demucs_traced, torch

    return demucs_traced(model, torch.from_numpy(mix))


def _meta(config: DemucsConfig, weights: dict[str, np.ndarray], **extra: Any) -> dict[str, Any]:
    from parity_tests.oracle import versions

    return {
        "config": config_to_json(config),
        "weights_sha256": weights_sha256(weights),
        "versions": versions(),
        **extra,
    }


def _make_resample() -> Path:
    import julius

    from parity_tests.oracle import torch, versions

    audio = resample_audio()
    arrays: dict[str, np.ndarray] = {"audio": audio, **_julius_kernels()}
    for dtype in DTYPES:
        x = torch.from_numpy(audio.astype(dtype))
        arrays[f"up.{dtype}"] = julius.resample_frac(x, 1, 2).numpy()
        arrays[f"down.{dtype}"] = julius.resample_frac(x, 2, 1).numpy()
    meta = {"seed": RESAMPLE_SEED, "zeros": 24, "rolloff": 0.945, "versions": versions()}
    return save("demucs_resample", arrays, meta)


def _make_forward(name: str, case: ForwardCase) -> Path:
    from parity_tests.oracle import demucs_model, torch

    weights = random_weights(case.config, case.weights_seed)
    mix = forward_mix(case)
    arrays: dict[str, np.ndarray] = {"mix": mix, **_julius_kernels()}
    for dtype in DTYPES:
        model = demucs_model(case.config, weights, getattr(torch, dtype))
        record, out = _traced_forward(model, mix.astype(dtype))
        arrays.update({f"trace.{key}.{dtype}": value for key, value in record.items()})
        arrays[f"output.{dtype}"] = out
    meta = _meta(
        case.config, weights, weights_seed=case.weights_seed, mix_seed=case.mix_seed, trace_keys=sorted(record)
    )
    return save(f"demucs_forward_{name}", arrays, meta)


def _make_apply(name: str, case: ApplyCase) -> Path:
    from demucs.utils import apply_model

    from parity_tests.oracle import default_dtype, demucs_model, torch

    weights = random_weights(case.config, case.weights_seed)
    mix = apply_mix(case)
    arrays: dict[str, np.ndarray] = {"mix": mix, **_julius_kernels()}
    kwargs = dict(shifts=0, split=True, overlap=case.overlap, transition_power=case.transition_power)
    runs = {
        "float64": (torch.float64, torch.float64),
        "float64_default_float32": (torch.float64, torch.float32),
        "float32": (torch.float32, torch.float32),
    }
    for key, (dtype, default) in runs.items():
        model = demucs_model(case.config, weights, dtype)
        x = torch.from_numpy(mix).to(dtype)
        with torch.no_grad(), default_dtype(default):
            arrays[f"output.{key}"] = apply_model(model, x, **kwargs).numpy()
    meta = _meta(
        case.config,
        weights,
        weights_seed=case.weights_seed,
        mix_seed=case.mix_seed,
        segment_length=case.config.segment_length,
        **kwargs,
    )
    return save(f"demucs_apply_{name}", arrays, meta)


def make() -> list[Path]:
    """Run upstream demucs 2.0.3 on every case and write the fixtures; returns the paths written."""
    written = [_make_resample()]
    written += [_make_forward(name, case) for name, case in FORWARD_CASES.items()]
    written += [_make_apply(name, case) for name, case in APPLY_CASES.items()]
    return written
