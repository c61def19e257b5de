"""Long tracks in bounded memory for Open-Unmix: overlapping chunks, separated one by one, cross-faded.

Open-Unmix's separator holds the whole track's spectrogram, the networks' outputs and the Wiener filter's buffers
at once (upstream needs more than 64 GB for a long track, openunmix issue #113). ``unmix-separate
--segment-seconds S`` separates chunks of ``S`` seconds instead; consecutive chunks share ``overlap`` samples,
across which the earlier chunk fades out and the later one fades in linearly (the two weights sum to 1 at every
sample, so a signal that every chunk reproduces is reproduced exactly). Memory then grows with the chunk, not the
track, apart from the output itself.

The result is not the whole-track separation: each chunk's BLSTM sees only the chunk (no context beyond its
edges) and each chunk's Wiener filter its own frames. How far it is, measured on real music, is in
``docs/separate.md`` (``benchmarks/bench_separate.py --chunk-snr``).

:func:`chunk_plan` gives the chunk boundaries; :func:`chunk_weight` the cross-fade weight of one chunk;
:func:`separate_in_chunks` runs a separation function over the plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Chunk", "chunk_plan", "chunk_weight", "separate_in_chunks"]


@dataclass(frozen=True)
class Chunk:
    """Samples ``[start, stop)`` of the track; ``fade_in`` / ``fade_out`` samples shared with the previous / next
    chunk (0 at the track's ends)."""

    start: int
    stop: int
    fade_in: int
    fade_out: int

    @property
    def length(self) -> int:
        return self.stop - self.start


def chunk_plan(total: int, segment: int, overlap: int) -> list[Chunk]:
    """Chunks covering ``[0, total)``: one every ``segment - overlap`` samples, ``segment`` long, so consecutive
    chunks share ``overlap`` samples; the last one ends at ``total``. A last chunk shorter than ``segment / 2`` is
    merged into the one before (which then reaches up to 1.5 ``segment``), so no chunk is too short to separate
    and every sample lies in at most two chunks. A track no longer than ``segment`` is one chunk.

    Raises:
        ValueError: ``overlap`` not in ``[0, segment // 2]``, or ``segment < 1``.
    """
    if segment < 1 or not 0 <= overlap <= segment // 2:
        raise ValueError(f"chunks need segment >= 1 and 0 <= overlap <= segment / 2, got {segment} and {overlap}")
    if total <= segment:
        return [Chunk(0, total, 0, 0)]
    starts = list(range(0, total - overlap, segment - overlap))
    if len(starts) > 1 and total - starts[-1] < segment // 2:
        starts.pop()
    stops = [start + segment for start in starts[:-1]] + [total]
    return [
        Chunk(start, stop, 0 if k == 0 else overlap, 0 if k == len(starts) - 1 else overlap)
        for k, (start, stop) in enumerate(zip(starts, stops))
    ]


def _ramp(n: int) -> np.ndarray:
    """``(n,)`` rising from just above 0 to just below 1: ``(i + 0.5) / n``; ``ramp + ramp[::-1] = 1``."""
    return (np.arange(n, dtype=np.float64) + 0.5) / n


def chunk_weight(chunk: Chunk) -> np.ndarray:
    """Cross-fade weight ``(chunk.length,)``: a linear fade-in over ``fade_in``, 1, a fade-out over ``fade_out``.

    Where two chunks overlap, the earlier one's fade-out and the later one's fade-in sum to 1.
    """
    weight = np.ones(chunk.length, dtype=np.float64)
    if chunk.fade_in:
        weight[: chunk.fade_in] = _ramp(chunk.fade_in)
    if chunk.fade_out:
        weight[chunk.length - chunk.fade_out :] *= _ramp(chunk.fade_out)[::-1]
    return weight


def separate_in_chunks(
    separate: Callable[[np.ndarray], np.ndarray],
    audio: np.ndarray,
    segment: int,
    overlap: int,
    progress: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Separate ``audio`` ``(nb_channels, nb_timesteps)`` chunk by chunk and cross-fade the results.

    Args:
        separate: one chunk ``(nb_channels, n)`` -> ``(nb_sources, nb_channels, n)``.
        segment, overlap: see :func:`chunk_plan` (samples).
        progress: called with the number of new samples of the track finished after each chunk.

    Returns:
        ``(nb_sources, nb_channels, nb_timesteps)`` float32.
    """
    total = audio.shape[-1]
    out: np.ndarray | None = None
    done = 0
    for chunk in chunk_plan(total, segment, overlap):
        estimate = np.asarray(separate(audio[..., chunk.start : chunk.stop]))
        if out is None:
            out = np.zeros(estimate.shape[:-1] + (total,), dtype=np.float32)
        out[..., chunk.start : chunk.stop] += (estimate * chunk_weight(chunk)).astype(np.float32)
        if progress is not None:
            finished = chunk.stop - (chunk.fade_out if chunk.stop < total else 0)
            progress(finished - done)
            done = finished
    assert out is not None
    return out
