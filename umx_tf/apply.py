"""Demucs on whole tracks: ``demucs.utils.apply_model`` and ``demucs/separate.py`` of demucs 2.0.3 in TensorFlow.

:func:`apply_model` splits a track into overlapping segments with a triangular cross-fade, pads each with real
neighbouring samples, averages random shifts, and runs the network compiled per chunk shape
(:meth:`umx_tf.demucs.Demucs.compiled_call`); the chunk geometry comes from :mod:`core_spec.shapes` and the shifts
from a seeded generator. :func:`separate_track` normalises each track as ``demucs/separate.py`` does. The spec is
``core_spec.reference.apply``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from core_spec import shapes
from core_spec.audio import prepare_audio
from core_spec.shapes import ShiftDraws, check_track, check_transition_power, is_silent, max_shift

from .demucs import Demucs

__all__ = ["apply_model", "separate_track"]


def _padded(track: tf.Tensor, offset: int, length: int, target_length: int) -> tf.Tensor:
    """``TensorChunk(track, offset, length).padded(target_length)``: real neighbours first, zeros beyond the ends."""
    win = shapes.chunk_window(track.shape[-1], offset, length, target_length)
    pad = [[0, 0]] * (track.shape.rank - 1) + [[win.pad_left, win.pad_right]]
    return tf.pad(track[..., win.start : win.stop], pad)


def _apply_valid(forward: Any, model: Demucs, track: tf.Tensor, offset: int, length: int) -> tf.Tensor:
    """Pad the chunk to ``valid_length`` (real neighbours first), run the network, centre-trim to the chunk."""
    length = min(track.shape[-1] - offset, length)
    out = forward(_padded(track, offset, length, model.valid_length(length)))
    start, stop = shapes.center_trim_bounds(out.shape[-1], length)
    return out[..., start:stop]


def _apply_shifted(
    forward: Any, model: Demucs, track: tf.Tensor, offset: int, length: int, shifts: int, rng: ShiftDraws
) -> tf.Tensor:
    """Average of ``shifts`` runs on randomly shifted windows (one plain run when ``shifts`` is 0)."""
    if not shifts:
        return _apply_valid(forward, model, track, offset, length)
    length = min(track.shape[-1] - offset, length)
    most = max_shift(model.samplerate)
    padded = _padded(track, offset, length, length + 2 * most)  # a new tensor: zeros beyond it
    out = None
    for _ in range(shifts):
        shift = int(rng.integers(0, most + 1))  # upstream: random.randint(0, max_shift), unseeded
        shifted = _apply_valid(forward, model, padded, shift, length + most - shift)[..., most - shift :]
        out = shifted if out is None else out + shifted
    return out / shifts


def apply_model(
    model: Demucs,
    mix: Any,
    shifts: int = 0,
    split: bool = False,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    segment_length: int | None = None,
    rng: ShiftDraws | int | None = None,
    jit_compile: bool | None = None,
) -> tf.Tensor:
    """Apply Demucs to a (normalised) track with ``demucs.utils.apply_model`` semantics (demucs 2.0.3).

    Args:
        model: the network.
        mix: ``(audio_channels, nb_timesteps)``, or a batch ``(nb_samples, audio_channels, nb_timesteps)``.
        shifts: random shifts to average (0: none).
        split: process segments of ``segment_length`` samples with a triangular overlap-add.
        overlap: fraction of a segment shared with the next.
        transition_power: exponent of the cross-fade weight (>= 1).
        segment_length: segment in samples (``model.segment_length``, 40 s for the released models, if None).
        rng: a ``numpy.random.Generator`` or a seed (0 if None) for the shifts, as the spec; anything with
            ``integers(low, high)`` works (e.g. a replay of upstream's ``random.randint`` draws).
        jit_compile: XLA-compile the network (:meth:`umx_tf.demucs.Demucs.compiled_call`). ``None``: on CPU and
            without shifts (every shift gives the network another input length, so another compilation; with
            shifts the network runs as a plain ``tf.function``, traced once per length).

    Returns:
        ``(nb_sources, audio_channels, nb_timesteps)`` (or with the batch dimension first), in the model's dtype.
        The overlap-add runs in that dtype (upstream accumulates in torch's default dtype, float32).
    """
    check_transition_power(transition_power)
    track = tf.cast(tf.convert_to_tensor(mix), model.compute_dtype)
    unbatched = check_track(tuple(track.shape), model.audio_channels)
    if unbatched:
        track = track[None]
    rng = shapes.shift_draws(rng)
    if jit_compile is None:  # every shift has its own chunk length, hence its own XLA compilation: not worth it
        jit_compile = False if shifts else None
    forward = model.compiled_call(jit_compile)
    length = track.shape[-1]
    if not split:
        out = _apply_shifted(forward, model, track, 0, length, shifts, rng)
        return out[0] if unbatched else out

    segment = segment_length or model.segment_length
    stride, offsets = shapes.segment_offsets(length, segment, overlap)
    weight = tf.constant(shapes.transition_weight(segment, transition_power), dtype=track.dtype)
    # every chunk output, weighted and zero-padded to a whole segment, then one overlap-add at stride
    frames, weights = [], []
    for offset in offsets:
        chunk_out = _apply_shifted(forward, model, track, offset, segment, shifts, rng)  # (B, S, C, n)
        n = chunk_out.shape[-1]
        frames.append(tf.pad(weight[:n] * chunk_out, [[0, 0]] * 3 + [[0, segment - n]]))
        weights.append(tf.pad(weight[:n], [[0, segment - n]]))
    out = tf.signal.overlap_and_add(tf.stack(frames, axis=-2), stride)[..., :length]
    sum_weight = tf.signal.overlap_and_add(tf.stack(weights), stride)[:length]
    out = out / sum_weight
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
    rng: ShiftDraws | int | None = None,
    silence_guard: bool = True,
    resample: bool = False,
    jit_compile: bool | None = None,
) -> tf.Tensor:
    """Separate whole tracks as ``demucs/separate.py`` of demucs 2.0.3, before writing files.

    Per track: ``ref = wav.mean(channels)``; ``wav = (wav - ref.mean()) / ref.std()`` (unbiased);
    :func:`apply_model`; ``sources * ref.std() + ref.mean()``.

    Args:
        model: the network, in the dtype to run.
        audio: NumPy array or tensor in any layout :func:`core_spec.audio.prepare_audio` accepts.
        sample_rate: its rate (``None``: the model's).
        silence_guard: a track whose mono downmix is constant comes back as that constant in every stem (digital
            silence gives silence); ``False`` reproduces upstream's 0 / 0 = NaN.
        resample: resample to the model's rate instead of refusing another rate.
        the others: as :func:`apply_model` (``split`` defaults to True, as the CLI).

    Returns:
        ``(nb_samples, nb_sources, audio_channels, nb_timesteps)``.
    """
    rate = model.samplerate
    batch = prepare_audio(
        np.asarray(audio),
        rate if sample_rate is None else sample_rate,
        rate,
        model.audio_channels,
        resample,
        dtype=np.dtype(model.compute_dtype),
    )
    rng = shapes.shift_draws(rng)
    outputs = []
    for track in batch:
        mono = tf.reduce_mean(track, axis=0)
        mean = tf.reduce_mean(mono)
        n = mono.shape[-1]
        std = tf.sqrt(tf.reduce_sum(tf.square(mono - mean)) / (n - 1)) if n > 1 else tf.constant(np.nan, mono.dtype)
        if silence_guard and is_silent(float(mean), float(std), batch.dtype):
            outputs.append(tf.fill([len(model.sources), *track.shape], tf.cast(mean, track.dtype)))
            continue
        sources = apply_model(
            model,
            (track - mean) / std,
            shifts=shifts,
            split=split,
            overlap=overlap,
            transition_power=transition_power,
            segment_length=segment_length,
            rng=rng,
            jit_compile=jit_compile,
        )
        outputs.append(sources * std + mean)
    return tf.stack(outputs)
