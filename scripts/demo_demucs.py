"""The Demucs line of ``make demo``: the NumPy reference next to upstream demucs 2.0.3 on real audio.

A ``demucs_unittest``-shaped model (channels 4, depth 6: the real v2 architecture at small width) with seeded
weights separates the clip twice: by ``core_spec.reference.apply.separate_track`` (float64) and by upstream
(``demucs.utils.apply_model`` with ``split=True``, ``shifts=0``, inside the track normalisation of demucs 2.0.3
``separate.py``), in float32 as the CLI runs and in float64. The segment is shortened to 4 s so that the split and
its cross-fades are exercised on a clip of a few seconds. Returns the SNR in dB of upstream against the reference
per source, and the timings.

Run alone: ``python scripts/demo_demucs.py`` (reads the stempeg example clip).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core_spec.configs import DEMUCS_PRESETS  # noqa: E402
from core_spec.reference.apply import separate_track  # noqa: E402
from core_spec.seeded import random_weights  # noqa: E402
from core_spec.tolerances import metrics  # noqa: E402

WEIGHTS_SEED = 0
SEGMENT_SECONDS = 4


def _upstream_separate(model, wav) -> np.ndarray:
    """demucs 2.0.3 ``separate.py`` between loading the track and writing the stems (``--shifts 0``)."""
    import torch
    from demucs.utils import apply_model

    ref = wav.mean(0)
    with torch.no_grad():
        sources = apply_model(model, (wav - ref.mean()) / ref.std(), shifts=0, split=True, overlap=0.25)
    return (sources * ref.std() + ref.mean()).double().numpy()


def demucs_demo(mix: np.ndarray) -> dict[str, Any]:
    """Separate ``mix`` ``(2, nb_timesteps)`` (44.1 kHz) by the reference and by upstream; compare them.

    Returns:
        ``{"model": description, "snr_db upstream float32": {source: dB}, "snr_db upstream float64": {...},
        "time_s": {implementation: seconds}}``.
    """
    from parity_tests.oracle import demucs_model, torch

    config = dataclasses.replace(
        DEMUCS_PRESETS["demucs_unittest"], segment_length=SEGMENT_SECONDS * DEMUCS_PRESETS["demucs"].samplerate
    )
    weights = random_weights(config, WEIGHTS_SEED)
    mix = np.asarray(mix, dtype=np.float64)

    timings: dict[str, float] = {}
    start = time.perf_counter()
    reference = separate_track(weights, config, mix)
    timings["reference (NumPy float64)"] = time.perf_counter() - start

    upstream: dict[str, np.ndarray] = {}
    for dtype in (torch.float32, torch.float64):
        name = str(dtype).removeprefix("torch.")
        model = demucs_model(config, weights, dtype)
        start = time.perf_counter()
        upstream[name] = _upstream_separate(model, torch.from_numpy(mix).to(dtype))
        timings[f"upstream {name}"] = time.perf_counter() - start

    def snr(estimate: np.ndarray) -> dict[str, float]:
        return {s: round(metrics(estimate[i], reference[i]).snr_db, 1) for i, s in enumerate(config.sources)}

    seconds = mix.shape[-1] / config.samplerate
    chunks = math.ceil(mix.shape[-1] / int(0.75 * config.segment_length))
    return {
        "model": f"channels {config.channels}, depth {config.depth}, seed {WEIGHTS_SEED}; {seconds:.2f} s clip, "
        f"split into {chunks} segments of {SEGMENT_SECONDS} s, overlap 0.25, shifts 0",
        "snr_db upstream float32 vs reference": snr(upstream["float32"]),
        # upstream's split accumulates in torch's default float32 even for a float64 model
        "snr_db upstream float64 vs reference": snr(upstream["float64"]),
        "time_s": {k: round(v, 2) for k, v in timings.items()},
    }


if __name__ == "__main__":
    import stempeg

    audio, rate = stempeg.read_stems(stempeg.example_stem_path(), stem_id=0)
    assert rate == 44100
    for key, value in demucs_demo(audio.T).items():
        print(f"{key}: {value}")
