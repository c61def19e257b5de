"""When ``unmix-separate`` splits an Open-Unmix track into chunks (``--segment-seconds``), and how.

- a number ``S``: chunks of about ``S`` seconds (a whole number of Wiener windows apart: :func:`aligned_segment`)
  sharing ``--segment-overlap`` seconds (default :data:`DEFAULT_OVERLAP`, at most ``S / 4``);
- ``none``: the whole track at once (upstream's behaviour);
- ``auto`` (the default): the whole track, unless its estimated peak memory (:func:`whole_track_bytes`) exceeds
  half of the memory available now (``MemAvailable``), in which case chunks of :data:`AUTO_SEGMENT` seconds.

Whole-track separation is the default because chunks change the result (each chunk's BLSTM sees only the chunk;
figures in ``docs/separate.md``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AUTO",
    "AUTO_SEGMENT",
    "DEFAULT_OVERLAP",
    "SegmentChoice",
    "aligned_segment",
    "available_memory",
    "parse_segment",
    "segment_plan",
    "whole_track_bytes",
]

AUTO = "auto"
AUTO_SEGMENT = 60.0  # seconds
DEFAULT_OVERLAP = 2.0  # seconds
# Peak resident memory a whole-track separation adds per (frame x bin x channel x source), in bytes (float32),
# by framework: the growth of the peak between 30 s and 3 min (and 10 min where it fitted) of music in
# benchmarks/separate.py (umxhq, niter 1; benchmarks/results/separate_umx.json): 11.3 / 33.2 / 17.5 / 58.2 MiB
# per second of audio for torch / tf / jax / nnabla, 706k elements a second. Upstream's umx: 25 MiB/s.
BYTES_PER_ELEMENT = {"torch": 17.0, "tf": 50.0, "jax": 26.0, "nnabla": 87.0}


@dataclass(frozen=True)
class SegmentChoice:
    """``seconds``: a number, ``"none"`` or ``"auto"``; ``overlap``: seconds, ``None`` for the default."""

    seconds: float | str = AUTO
    overlap: float | None = None


def parse_segment(text: str) -> float | str:
    """``--segment-seconds``: a positive number of seconds, ``none`` or ``auto``."""
    lowered = text.strip().lower()
    if lowered in ("none", AUTO):
        return lowered
    try:
        value = float(lowered)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, 'none' or 'auto', got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--segment-seconds must be positive, got {text!r}")
    return value


def whole_track_bytes(model: Any, nb_timesteps: int) -> float:
    """Estimated peak memory of separating ``nb_timesteps`` samples at once (``model``: a LoadedModel)."""
    sep = model.config.separator
    frames = sep.stft.nb_frames(nb_timesteps)
    itemsize = 2.0 if model.dtype == "float64" else 1.0
    per_element = BYTES_PER_ELEMENT.get(model.framework, max(BYTES_PER_ELEMENT.values()))
    return per_element * itemsize * frames * sep.stft.nb_bins * 2 * len(model.sources)


def available_memory() -> float | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (``None`` where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def aligned_segment(segment: int, overlap: int, n_hop: int, wiener_win_len: int | None, niter: int) -> int:
    """The chunk length, in samples, nearest to ``segment`` whose stride (``segment - overlap``) is a whole number
    of Wiener windows (``wiener_win_len`` frames of ``n_hop`` samples).

    The separator filters ``wiener_win_len`` frames at a time from the first frame of what it is given, each window
    with its own statistics. Chunks that start on that grid are filtered in the same windows as the whole track
    (only the networks' context differs); chunks that do not are filtered in shifted windows, which costs several
    dB (``benchmarks/chunk_snr.py``). Without EM (``niter`` 0) or with one window for the whole track
    (``wiener_win_len`` None) there is no grid, and chunks shorter than one window are filtered whole: ``segment``
    is kept.
    """
    window = (wiener_win_len or 0) * n_hop
    if niter == 0 or not window or segment - overlap < window:
        return segment
    return round((segment - overlap) / window) * window + overlap


def segment_plan(choice: SegmentChoice, model: Any, nb_timesteps: int) -> tuple[int, int] | None:
    """``(segment, overlap)`` in samples for chunked separation (:func:`aligned_segment`), or ``None`` for the whole
    track.

    Raises:
        ValueError: an overlap that is negative or more than half the segment.
    """
    seconds = choice.seconds
    if seconds == "none":
        return None
    if seconds == AUTO:
        budget = available_memory()
        if budget is None or whole_track_bytes(model, nb_timesteps) <= budget / 2:
            return None
        seconds = AUTO_SEGMENT
    overlap_s = min(DEFAULT_OVERLAP, float(seconds) / 4) if choice.overlap is None else choice.overlap
    requested, overlap = round(float(seconds) * model.rate), round(overlap_s * model.rate)
    if overlap < 0 or overlap > requested // 2:
        raise ValueError(f"--segment-overlap {overlap_s:g} s must lie in [0, --segment-seconds / 2]")
    settings = model.config.separator.wiener  # the command's Wiener options applied (load_model)
    segment = aligned_segment(requested, overlap, model.config.separator.stft.n_hop, settings.wiener_win_len,
                              settings.niter)  # fmt: skip
    if segment < model.min_samples:
        raise ValueError(f"--segment-seconds {seconds:g} is shorter than the {model.min_samples} samples a chunk needs")
    return segment, min(overlap, segment // 2)
