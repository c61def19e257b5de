"""Long tracks in bounded memory for Open-Unmix: overlapping chunks, separated one by one, cross-faded.

Open-Unmix's separator holds the whole track's spectrogram, the networks' outputs and the Wiener filter's buffers
at once (upstream needs more than 64 GB for a long track, openunmix issue #113). ``unmix-separate
--segment-seconds S`` separates chunks of ``S`` seconds instead, starting every ``segment - overlap`` samples; the
last one, which ends at the track's end, is padded with silence to the same length, so that a port that compiles or
caches a graph per input shape builds one, and every chunk starts on the same grid (the Wiener filter's windows:
:mod:`unmix.umx_segments`). Each chunk's output is weighted by a linear fade-in and fade-out of ``overlap``
samples at its inner edges; consecutive chunks share exactly ``overlap`` samples, where the two ramps sum to 1,
so a signal that every chunk reproduces is reproduced exactly.
Memory grows with the chunk, not the track, apart from the track's input and output arrays.

The result is not the whole-track separation: each chunk's BLSTM sees only the chunk (no context beyond its
edges) and each chunk's Wiener filter its own frames. How far it is, measured on real music, is in
``docs/separate.md`` (``benchmarks/chunk_snr.py``).

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
    """Samples ``[start, stop)`` of the track; ``fade_in`` / ``fade_out``: the length of the linear ramp at its
    start / end (0 at the track's ends)."""

    start: int
    stop: int
    fade_in: int
    fade_out: int

    @property
    def length(self) -> int:
        return self.stop - self.start


def chunk_plan(total: int, segment: int, overlap: int) -> list[Chunk]:
    """Chunks covering ``[0, total)``: starts ``0, d, 2 d, ...`` (``d = segment - overlap``), each ``segment``
    samples long but the last, which ends at ``total`` (longer than ``overlap``; :func:`separate_in_chunks` pads it
    with silence to ``segment``, so every chunk the port sees has one shape and starts on the same grid). A track no
    longer than ``segment`` is one chunk, not padded.

    Raises:
        ValueError: ``overlap`` not in ``[0, segment // 2]``, or ``segment < 1``.
    """
    if segment < 1 or not 0 <= overlap <= segment // 2:
        raise ValueError(f"chunks need segment >= 1 and 0 <= overlap <= segment / 2, got {segment} and {overlap}")
    if total <= segment:
        return [Chunk(0, total, 0, 0)]
    starts = list(range(0, total - overlap, segment - overlap))
    last = len(starts) - 1
    return [
        Chunk(s, min(s + segment, total), 0 if k == 0 else overlap, 0 if k == last else overlap)
        for k, s in enumerate(starts)
    ]


def _ramp(n: int) -> np.ndarray:
    """``(n,)`` rising from just above 0 to just below 1: ``(i + 0.5) / n``; ``ramp + ramp[::-1] = 1``."""
    return (np.arange(n, dtype=np.float64) + 0.5) / n


def chunk_weight(chunk: Chunk) -> np.ndarray:
    """Cross-fade weight ``(chunk.length,)``: a linear fade-in over ``fade_in``, 1, a fade-out over ``fade_out``
    (positive everywhere, so every sample of the track has some weight)."""
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
        progress: called with the number of new samples of the track covered after each chunk.

    Returns:
        ``(nb_sources, nb_channels, nb_timesteps)`` float32.
    """
    total = audio.shape[-1]
    out: np.ndarray | None = None
    covered = 0
    for chunk in chunk_plan(total, segment, overlap):
        piece = audio[..., chunk.start : chunk.stop]
        if chunk.length < segment and chunk.start > 0:  # the last chunk: silence after the track's end
            piece = np.pad(piece, [(0, 0)] * (piece.ndim - 1) + [(0, segment - chunk.length)])
        estimate = np.asarray(separate(piece))[..., : chunk.length]
        if out is None:
            out = np.zeros(estimate.shape[:-1] + (total,), dtype=np.float32)
        out[..., chunk.start : chunk.stop] += (estimate * chunk_weight(chunk)).astype(np.float32)
        if progress is not None:
            progress(chunk.stop - covered)
            covered = chunk.stop
    assert out is not None
    return out
