"""Shape arithmetic shared by every port: Demucs's ``valid_length`` and ``center_trim``, and the chunking rules of
``apply_model`` (demucs 2.0.3 ``demucs/utils.py``). Every length change in Demucs is made visible through these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

import numpy as np

from .configs import DemucsConfig

__all__ = [
    "htdemucs_apply_segment",
    "htdemucs_chunk_target",
    "attention_query_blocks",
    "ChunkWindow",
    "ShiftDraws",
    "WienerChunks",
    "center_trim",
    "center_trim_bounds",
    "check_track",
    "check_transition_power",
    "chunk_window",
    "is_silent",
    "max_shift",
    "output_length",
    "segment_offsets",
    "shift_draws",
    "transition_weight",
    "valid_length",
    "wiener_chunks",
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


def check_transition_power(transition_power: float) -> None:
    """``apply_model``'s cross-fade exponent must be >= 1 (upstream asserts it)."""
    if transition_power < 1:
        raise ValueError("transition_power < 1 leads to weird behavior (upstream asserts >= 1)")


def check_track(shape: tuple[int, ...], audio_channels: int) -> bool:
    """Check ``apply_model``'s input shape: ``(audio_channels, nb_timesteps)`` or ``(nb_samples, audio_channels,
    nb_timesteps)``. Returns whether it is unbatched (2-D); raises a ``ValueError`` naming both shapes otherwise."""
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or shape[-2] != audio_channels:
        raise ValueError(
            f"apply_model expects (audio_channels={audio_channels}, nb_timesteps) or "
            f"(nb_samples, audio_channels, nb_timesteps), got {shape}"
        )
    return len(shape) == 2


def max_shift(samplerate: int) -> int:
    """Largest random shift of ``apply_model(shifts > 0)``: half a second (``int(0.5 * samplerate)``)."""
    return int(0.5 * samplerate)


def is_silent(mean: float, std: float, dtype: Any) -> bool:
    """``separate_track``'s silence guard: the mono mixture is constant (its std zero, NaN, or below the rounding
    noise ``16 eps |mean|`` of ``dtype``), so normalising by the std would divide by zero."""
    return not float(std) > 16 * float(np.finfo(dtype).eps) * abs(float(mean))


class ShiftDraws(Protocol):
    """What ``apply_model`` draws its shifts from: ``numpy.random.Generator`` or a replay of upstream's draws."""

    def integers(self, low: int, high: int) -> Any: ...


def shift_draws(rng: ShiftDraws | int | None) -> ShiftDraws:
    """The generator of ``apply_model``'s random shifts: ``rng`` itself when it draws (anything with
    ``integers(low, high)``, e.g. a replay of upstream's ``random.randint``), else ``numpy.random.default_rng(rng)``
    (seed 0 for ``None``)."""
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(0 if rng is None else int(rng))
    return rng


@dataclass(frozen=True)
class WienerChunks:
    """How a separator filters a track of ``nb_frames`` frames: chunks of ``win`` frames, each an independent
    Wiener call (its own ``max_abs`` and EM statistics), the last one shorter (``pad`` frames short of ``win``).

    A separator either loops over :meth:`slices` (bounded memory) or filters all chunks at once as a leading axis,
    the last one padded with ``pad`` zero frames and masked by :meth:`frame_mask`; the two give the same output.
    """

    nb_frames: int
    win: int

    @property
    def nb_chunks(self) -> int:
        return -(-self.nb_frames // self.win)

    @property
    def pad(self) -> int:
        """Zero frames that make the last chunk a whole one."""
        return self.nb_chunks * self.win - self.nb_frames

    def slices(self) -> list[slice]:
        """The frames of each chunk, in order."""
        return [slice(pos, min(self.nb_frames, pos + self.win)) for pos in range(0, self.nb_frames, self.win)]

    def frame_mask(self) -> np.ndarray | None:
        """``(nb_chunks, win)`` booleans, ``False`` on the padding; ``None`` when there is none."""
        if not self.pad:
            return None
        return (np.arange(self.nb_chunks * self.win) < self.nb_frames).reshape(self.nb_chunks, self.win)


def wiener_chunks(nb_frames: int, wiener_win_len: int | None) -> WienerChunks:
    """The chunks of upstream's separator: ``wiener_win_len`` frames each (``None``: the whole track).

    Without EM (``niter == 0``) the filter is element-wise, so the chunks do not change the output and a port may
    chunk as it likes to bound its memory; with EM they do, and every port follows this plan.
    """
    if wiener_win_len is not None and wiener_win_len < 1:
        raise ValueError(f"wiener_win_len must be >= 1 or None, got {wiener_win_len}")
    return WienerChunks(nb_frames, min(wiener_win_len or nb_frames, nb_frames) or 1)


def htdemucs_apply_segment(segment: Any, training_segments: Sequence[Fraction | None]) -> Fraction | None:
    """demucs 4's ``apply_model(segment=...)`` as an exact :class:`~fractions.Fraction` (``None``: the models' own).

    ``training_segments``: each model's training segment in seconds, ``None`` for a model without the
    training-segment rule. A segment longer than a model's is a ``ValueError`` (a transformer cannot run longer than
    it was trained for).
    """
    from .configs import segment_fraction

    if segment is None:
        return None
    seg = segment_fraction(segment)
    for index, trained in enumerate(training_segments):
        if trained is not None and seg > trained:
            raise ValueError(
                f"segment {float(seg):g} s is longer than model {index}'s training segment {float(trained):g} s "
                "(a transformer cannot run longer than it was trained for)"
            )
    return seg


def htdemucs_chunk_target(
    length: int, samplerate: int, segment: Fraction | None, training_segment: Fraction | None
) -> int:
    """The length demucs 4's ``apply_model`` pads a chunk of ``length`` samples to before the network: ``int(segment
    * samplerate)`` when a segment is given, else the training length (``training_segment``; ``None`` for a model
    without the training-segment rule: the chunk's own length)."""
    if segment is not None:
        return int(segment * samplerate)
    if training_segment is not None:
        return int(training_segment * samplerate)
    return length


SCORES_PER_BLOCK = 1 << 22  # 16 MiB of float32 scores: a block of query rows that stays in the cache


def attention_query_blocks(batch: int, heads: int, queries: int, keys: int) -> tuple[int, int]:
    """``(blocks, rows)``: how the ports that run attention in blocks of query rows (JAX, TensorFlow) split
    ``queries`` so that a block holds at most :data:`SCORES_PER_BLOCK` scores (``batch x heads x rows x keys``), the
    rows spread evenly (the last block padded to ``rows`` with zero queries). ``blocks == 1``: one product, no split.
    At the released HTDemucs shapes (8 heads, 2688 frequency tokens) 14 blocks of 192 rows."""
    blocks = max(1, -(-batch * heads * queries * keys // SCORES_PER_BLOCK))
    return blocks, -(-queries // blocks)
