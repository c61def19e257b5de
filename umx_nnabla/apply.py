"""Demucs v2 on whole tracks: :func:`apply_model` and :func:`separate_track` (``demucs.utils.apply_model`` and
``demucs/separate.py`` of demucs 2.0.3; ``core_spec.reference.apply`` is the spec).

Split into overlapping segments with a triangular cross-fade, random shifts, padding with real neighbouring
samples, with the chunk geometry of :mod:`core_spec.shapes` and shifts drawn from a seeded generator. The network
runs as a graph per chunk length (:meth:`umx_nnabla.demucs.Demucs.infer`); the overlap-add is NumPy, in the
mixture's dtype (float32).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core_spec import shapes
from core_spec.audio import prepare_audio

from .demucs import Demucs

__all__ = ["apply_model", "separate_track"]


def _padded(track: np.ndarray, offset: int, length: int, target_length: int) -> np.ndarray:
    """``TensorChunk(track, offset, length).padded(target_length)``: real neighbours first, zeros beyond the ends."""
    win = shapes.chunk_window(track.shape[-1], offset, length, target_length)
    pad = [(0, 0)] * (track.ndim - 1) + [(win.pad_left, win.pad_right)]
    return np.pad(track[..., win.start : win.stop], pad)


def _apply_valid(model: Demucs, track: np.ndarray, offset: int, length: int) -> np.ndarray:
    """Pad the chunk to ``valid_length`` (real neighbours first), run the network, centre-trim to the chunk."""
    length = min(track.shape[-1] - offset, length)
    padded = _padded(track, offset, length, model.valid_length(length))
    return shapes.center_trim(model.infer(padded), length)


def _apply_shifted(
    model: Demucs, track: np.ndarray, offset: int, length: int, shifts: int, rng: shapes.ShiftDraws
) -> np.ndarray:
    """Average of ``shifts`` runs on randomly shifted windows (one plain run when ``shifts`` is 0)."""
    if not shifts:
        return _apply_valid(model, track, offset, length)
    length = min(track.shape[-1] - offset, length)
    max_shift = shapes.max_shift(model.samplerate)
    padded = _padded(track, offset, length, length + 2 * max_shift)  # a new array: zeros beyond it
    out = None
    for _ in range(shifts):
        shift = int(rng.integers(0, max_shift + 1))  # upstream: random.randint(0, max_shift), unseeded
        shifted = _apply_valid(model, padded, shift, length + max_shift - shift)[..., max_shift - shift :]
        out = shifted if out is None else out + shifted
    return out / np.asarray(shifts, dtype=out.dtype)


def apply_model(
    model: Demucs,
    mix: np.ndarray,
    shifts: int = 0,
    split: bool = False,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    segment_length: int | None = None,
    rng: shapes.ShiftDraws | int | None = None,
) -> np.ndarray:
    """Apply Demucs to a (normalised) track with ``demucs.utils.apply_model`` semantics (demucs 2.0.3).

    Args:
        model: the network.
        mix: ``(audio_channels, nb_timesteps)`` or a batch ``(nb_samples, audio_channels, nb_timesteps)``; float32.
        shifts: random shifts to average (0: none).
        split: process segments of ``segment_length`` samples with a triangular overlap-add.
        overlap: fraction of a segment shared with the next.
        transition_power: exponent of the cross-fade weight (>= 1).
        segment_length: segment in samples (``model.segment_length``, 40 s for the released models, if None).
        rng: a ``numpy.random.Generator`` or a seed (0 if None) for the shifts; anything with
            ``integers(low, high)`` works.

    Returns:
        ``(nb_sources, audio_channels, nb_timesteps)`` (or with the batch dimension first), float32.
    """
    shapes.check_transition_power(transition_power)
    mix = np.asarray(mix, dtype=np.float32)
    unbatched = shapes.check_track(mix.shape, model.audio_channels)
    track = mix[None] if unbatched else mix
    rng = shapes.shift_draws(rng)
    length = track.shape[-1]
    if not split:
        out = _apply_shifted(model, track, 0, length, shifts, rng)
    else:
        segment = segment_length or model.segment_length
        _, offsets = shapes.segment_offsets(length, segment, overlap)
        weight = shapes.transition_weight(segment, transition_power).astype(track.dtype)
        out = np.zeros(track.shape[:1] + (len(model.sources),) + track.shape[1:], dtype=track.dtype)
        sum_weight = np.zeros(length, dtype=track.dtype)
        for offset in offsets:
            chunk_out = _apply_shifted(model, track, offset, segment, shifts, rng)
            n = chunk_out.shape[-1]
            out[..., offset : offset + n] += weight[:n] * chunk_out
            sum_weight[offset : offset + n] += weight[:n]
        out /= sum_weight
    return out[0] if unbatched else out


def separate_track(
    model: Demucs,
    audio: Any,
    sample_rate: float | None = None,
    shifts: int = 0,
    split: bool = True,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    segment_length: int | None = None,
    rng: shapes.ShiftDraws | int | None = None,
    silence_guard: bool = True,
    resample: bool = False,
) -> np.ndarray:
    """Separate whole tracks as ``demucs/separate.py`` of demucs 2.0.3, before writing files.

    Per track: ``ref = wav.mean(channels)``; ``wav = (wav - ref.mean()) / ref.std()`` (unbiased);
    :func:`apply_model`; ``sources * ref.std() + ref.mean()``.

    Args:
        model: the network.
        audio: any layout :func:`core_spec.audio.prepare_audio` accepts.
        sample_rate: its rate (``None``: the model's).
        silence_guard: a track whose mono downmix is constant comes back as that constant in every stem (digital
            silence gives silence); ``False`` reproduces upstream's 0 / 0 = NaN.
        resample: resample to the model's rate instead of refusing another rate.
        the others: as :func:`apply_model` (``split`` defaults to True, as the CLI).

    Returns:
        ``(nb_samples, nb_sources, audio_channels, nb_timesteps)`` float32.
    """
    rate = model.samplerate
    batch = prepare_audio(
        np.asarray(audio),
        rate if sample_rate is None else sample_rate,
        rate,
        model.audio_channels,
        resample,
        dtype=np.float32,
    )
    rng = shapes.shift_draws(rng)
    outputs = []
    for track in batch:
        mono = track.mean(axis=0)
        mean, std = mono.mean(), mono.std(ddof=1) if mono.size > 1 else np.float32(np.nan)
        if silence_guard and shapes.is_silent(mean, std, np.float32):
            outputs.append(np.full((len(model.sources), *track.shape), mean, dtype=np.float32))
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            normalised = (track - mean) / std
        sources = apply_model(
            model,
            normalised,
            shifts=shifts,
            split=split,
            overlap=overlap,
            transition_power=transition_power,
            segment_length=segment_length,
            rng=rng,
        )
        outputs.append(sources * std + mean)
    return np.stack(outputs).astype(np.float32, copy=False)
