"""Shape arithmetic shared by every port: Demucs's ``valid_length`` and ``center_trim``, and the chunking rules of
``apply_model`` (demucs 2.0.3 ``demucs/utils.py``). Every length change in Demucs is made visible through these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .configs import DemucsConfig

__all__ = [
    "ChunkWindow",
    "center_trim",
    "center_trim_bounds",
    "chunk_window",
    "output_length",
    "segment_offsets",
    "transition_weight",
    "valid_length",
]


def valid_length(length: int, config: DemucsConfig) -> int:
    """Smallest input length ``>= length`` for which every convolution of the model sees whole windows.

    The model does not pad: callers pad to this length and centre-trim the output back to ``length``. With
    ``context > 1`` the output is shorter than the input.
    """
    if config.resample:
        length *= 2
    for _ in range(config.depth):
        length = math.ceil((length - config.kernel_size) / config.stride) + 1
        length = max(1, length)
        length += config.context - 1
    for _ in range(config.depth):
        length = (length - 1) * config.stride + config.kernel_size
    if config.resample:
        length = math.ceil(length / 2)
    return int(length)


def output_length(length: int, config: DemucsConfig) -> int:
    """Length of the model's output for an input of ``length`` samples (any length the model accepts).

    Resample x2 (``2 L``), each encoder ``floor((L - kernel_size) / stride) + 1``, each decoder
    ``L - context + 1`` (with ``rewrite``) then ``(L - 1) * stride + kernel_size``, resample /2 (``floor(L / 2)``).
    For ``length = valid_length(L)`` the result is ``>= L``; :func:`center_trim` brings it back to ``L``.
    Raises ``ValueError`` where a convolution would get fewer steps than its kernel.
    """
    if config.resample:
        length *= 2
    for index in range(config.depth):
        if length < config.kernel_size:
            raise ValueError(f"encoder.{index} gets {length} steps, fewer than its kernel ({config.kernel_size})")
        length = (length - config.kernel_size) // config.stride + 1
    for index in range(config.depth):
        if config.rewrite:
            if length < config.context:
                raise ValueError(f"decoder.{index} gets {length} steps, fewer than its context ({config.context})")
            length = length - config.context + 1
        length = (length - 1) * config.stride + config.kernel_size
    if config.resample:
        length //= 2
    return int(length)


def center_trim_bounds(length: int, reference: int) -> tuple[int, int]:
    """``(start, stop)`` that keeps ``reference`` samples from the centre of ``length``; the odd extra sample is
    removed on the right."""
    delta = length - reference
    if delta < 0:
        raise ValueError(f"center_trim: tensor of length {length} is shorter than the reference length {reference}")
    return delta // 2, length - (delta - delta // 2)


def center_trim(x: np.ndarray, reference: int) -> np.ndarray:
    """Keep the centre ``reference`` samples of the last axis of ``x``."""
    start, stop = center_trim_bounds(x.shape[-1], reference)
    return x[..., start:stop]


@dataclass(frozen=True)
class ChunkWindow:
    """Where a padded chunk comes from: real samples ``[start, stop)`` of the track, then ``pad_left`` zeros
    before and ``pad_right`` zeros after (only beyond the ends of the track)."""

    start: int
    stop: int
    pad_left: int
    pad_right: int


def chunk_window(total_length: int, offset: int, length: int, target_length: int) -> ChunkWindow:
    """``TensorChunk(track, offset, length).padded(target_length)`` of demucs 2.0.3.

    The window of ``target_length`` is centred on the chunk ``[offset, offset + length)``; it takes real
    neighbouring samples of the track where there are some and zero-pads only beyond the track's ends.
    """
    length = min(total_length - offset, length)
    delta = target_length - length
    if delta < 0:
        raise ValueError(f"chunk of length {length} cannot be padded to the shorter length {target_length}")
    start = offset - delta // 2
    end = start + target_length
    real_start, real_end = max(0, start), min(total_length, end)
    return ChunkWindow(real_start, real_end, real_start - start, end - real_end)


def segment_offsets(total_length: int, segment: int, overlap: float = 0.25) -> tuple[int, list[int]]:
    """``(stride, offsets)`` of the split in ``apply_model``: ``stride = int((1 - overlap) * segment)``."""
    stride = int((1 - overlap) * segment)
    if stride <= 0:
        raise ValueError(f"overlap {overlap} leaves no stride for segment {segment}")
    return stride, list(range(0, total_length, stride))


def transition_weight(segment: int, transition_power: float = 1.0) -> np.ndarray:
    """Triangular cross-fade weight ``(segment,)``: ``1, 2, ..., segment // 2, ..., 2, 1`` over its max, to a power."""
    weight = np.concatenate([np.arange(1, segment // 2 + 1), np.arange(segment - segment // 2, 0, -1)])
    weight = weight.astype(np.float64) / weight.max()
    return weight**transition_power


def shift_draws(rng: Any) -> Any:
    """The generator of ``apply_model``'s random shifts: ``rng`` itself when it draws (anything with
    ``integers(low, high)``, e.g. a replay of upstream's ``random.randint``), else ``numpy.random.default_rng(rng)``
    (seed 0 for ``None``)."""
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(0 if rng is None else int(rng))
    return rng
