"""Demucs on a whole track: ``demucs.utils.apply_model`` and ``demucs/separate.py`` of demucs 2.0.3.

Segments with a triangular cross-fade, random shifts, padding with real neighbouring samples, with the chunk
geometry of :mod:`core_spec.shapes` and shifts drawn from a seeded generator (``core_spec.reference.apply`` is the
spec). The network is ``jax.jit``-compiled per chunk length (not per track length: a folder of tracks compiles
each chunk length once): a track is zero-extended once (:class:`_Track`), so every padded chunk is one dynamic
slice; the overlap-add updates its accumulators in place
(donated buffers). The loops over segments and shifts stay in Python, as upstream.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from core_spec import shapes
from core_spec.audio import prepare_audio
from core_spec.shapes import ShiftDraws, check_track, check_transition_power, is_silent, shift_draws

from ._scope import canonical_dtype, dtype_scope

if TYPE_CHECKING:
    from .demucs import Demucs

Forward = Callable[[jax.Array], jax.Array]  # the network on a padded chunk: Demucs.compiled_call()

__all__ = ["apply_model", "separate_track"]


class _Track:
    """A track zero-extended by ``margin`` samples on both sides, so that every padded chunk of it
    (``TensorChunk.padded``: real neighbouring samples where the track has some, zeros beyond its ends) is one
    dynamic slice: a chunk's position is a traced offset, and one compiled network serves every chunk of a length.
    """

    def __init__(self, samples: jax.Array, margin: int = 0):
        self.samples = samples
        self.length = samples.shape[-1]
        self.margin = -1
        self.extend(margin)

    def extend(self, margin: int) -> None:
        if margin > self.margin:
            self.margin = margin
            pad = [(0, 0)] * (self.samples.ndim - 1) + [(margin, margin)]
            self.extended = jnp.pad(self.samples, pad)

    def padded(self, offset: int, length: int, target_length: int) -> jax.Array:
        """``TensorChunk(track, offset, length).padded(target_length)`` (eager; for the shifts)."""
        win = shapes.chunk_window(self.length, offset, length, target_length)
        self.extend(max(win.pad_left, win.pad_right))
        start = win.start - win.pad_left + self.margin
        return lax.dynamic_slice_in_dim(self.extended, start, target_length, axis=-1)


def _margin(model: Demucs, lengths: list[int]) -> int:
    """Zeros a track needs on each side for every chunk of ``lengths`` padded to ``valid_length``: one extension
    (and so one shape of the compiled network's input) for a whole split track."""
    return max(model.valid_length(n) - n for n in set(lengths))


def _window_forward(forward: Forward, extended: jax.Array, start: jax.Array, size: int) -> jax.Array:
    """The network on ``extended[..., start:start + size]``: the slice is cut before the compiled network, so
    that tracks of different lengths share its compilation (and its persistent-cache entry) per chunk length."""
    return forward(lax.dynamic_slice_in_dim(extended, start, size, axis=-1))


def _apply_valid(forward: Forward, model: Demucs, track: _Track, offset: int, length: int) -> jax.Array:
    """Pad the chunk to ``valid_length`` (real neighbours first), run the network, centre-trim to the chunk."""
    length = min(track.length - offset, length)
    target = model.valid_length(length)
    win = shapes.chunk_window(track.length, offset, length, target)
    track.extend(max(win.pad_left, win.pad_right))
    start = jnp.asarray(win.start - win.pad_left + track.margin)
    out = _window_forward(forward, track.extended, start, size=target)
    begin, stop = shapes.center_trim_bounds(out.shape[-1], length)
    return lax.slice_in_dim(out, begin, stop, axis=-1)


def _apply_shifted(
    forward: Forward, model: Demucs, track: _Track, offset: int, length: int, shifts: int, rng: ShiftDraws
) -> jax.Array:
    """Average of ``shifts`` runs on randomly shifted windows (one plain run when ``shifts`` is 0).

    Every shift gives the network another input length: one compilation per distinct ``valid_length``.
    """
    if not shifts:
        return _apply_valid(forward, model, track, offset, length)
    length = min(track.length - offset, length)
    max_shift = shapes.max_shift(model.samplerate)
    padded = _Track(track.padded(offset, length, length + 2 * max_shift))  # a new track: zeros beyond it
    out = None
    for _ in range(shifts):
        shift = int(rng.integers(0, max_shift + 1))  # upstream: random.randint(0, max_shift), unseeded
        shifted = _apply_valid(forward, model, padded, shift, length + max_shift - shift)[..., max_shift - shift :]
        out = shifted if out is None else out + shifted
    assert out is not None
    return out / shifts


@partial(jax.jit, donate_argnums=(0, 1))
def _overlap_add(
    out: jax.Array, sum_weight: jax.Array, chunk: jax.Array, weight: jax.Array, offset: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``out[..., offset:offset+n] += weight[:n] * chunk``; ``sum_weight[offset:offset+n] += weight[:n]``, in place
    (``n`` is the chunk's length)."""
    n = chunk.shape[-1]
    weight = weight[:n]
    segment = lax.dynamic_slice_in_dim(out, offset, n, axis=-1) + weight * chunk
    out = lax.dynamic_update_slice_in_dim(out, segment, offset, axis=-1)
    total = lax.dynamic_slice_in_dim(sum_weight, offset, n, axis=-1) + weight
    return out, lax.dynamic_update_slice_in_dim(sum_weight, total, offset, axis=-1)


def apply_model(
    model: Demucs,
    mix: Any,
    shifts: int = 0,
    split: bool = False,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    segment_length: int | None = None,
    rng: ShiftDraws | int | None = None,
    precision: str | None = "highest",
) -> jax.Array:
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
        precision: ``jax.default_matmul_precision`` of the network (``"highest"``: no TF32 on GPUs).

    Returns:
        ``(nb_sources, audio_channels, nb_timesteps)`` (or with the batch axis first) in the model's dtype, on the
        model's device.
        The overlap-add runs in that dtype (upstream accumulates in torch's default dtype, float32).
    """
    check_transition_power(transition_power)
    unbatched = check_track(np.shape(mix), model.audio_channels)
    dtype = model.dtype
    with dtype_scope(dtype, precision):
        track = jax.device_put(jnp.asarray(mix, dtype), model.device)
        track = track[None] if unbatched else track
        rng = shift_draws(rng)
        length = track.shape[-1]
        forward = model.compiled_call()
        if not split:
            out = _apply_shifted(forward, model, _Track(track, _margin(model, [length])), 0, length, shifts, rng)
        else:
            segment = segment_length or model.segment_length
            _, offsets = shapes.segment_offsets(length, segment, overlap)
            weight = jnp.asarray(shapes.transition_weight(segment, transition_power), dtype)
            out = jnp.zeros(track.shape[:1] + (len(model.sources),) + track.shape[1:], dtype)
            sum_weight = jnp.zeros(length, dtype)
            chunks = _Track(track, _margin(model, [min(length - o, segment) for o in offsets]))
            for offset in offsets:
                chunk_out = _apply_shifted(forward, model, chunks, offset, segment, shifts, rng)
                out, sum_weight = _overlap_add(out, sum_weight, chunk_out, weight, jnp.asarray(offset))
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
    precision: str | None = "highest",
) -> jax.Array:
    """Separate whole tracks as ``demucs/separate.py`` of demucs 2.0.3, before writing files.

    Per track: ``ref = wav.mean(channels)``; ``wav = (wav - ref.mean()) / ref.std()`` (unbiased);
    :func:`apply_model`; ``sources * ref.std() + ref.mean()``.

    Args:
        model: the network, in the dtype and on the device to run.
        audio: NumPy or JAX array in any layout :func:`core_spec.audio.prepare_audio` accepts.
        sample_rate: its rate (``None``: the model's).
        silence_guard: a track whose mono downmix is constant comes back as that constant in every stem (digital
            silence gives silence); ``False`` reproduces upstream's 0 / 0 = NaN.
        resample: resample to the model's rate instead of refusing another rate.
        the others: as :func:`apply_model` (``split`` defaults to True, as the CLI).

    Returns:
        ``(nb_samples, nb_sources, audio_channels, nb_timesteps)``.
    """
    rate = model.samplerate
    dtype = canonical_dtype(model.dtype)
    batch = prepare_audio(
        np.asarray(audio), rate if sample_rate is None else sample_rate, rate, model.audio_channels, resample, dtype
    )
    rng = shift_draws(rng)
    outputs = []
    with dtype_scope(dtype, precision):
        for track in jax.device_put(batch, model.device):
            mono = jnp.mean(track, axis=0)
            mean, std = jnp.mean(mono), jnp.std(mono, ddof=1)
            if silence_guard and is_silent(mean, std, dtype):
                outputs.append(jnp.full((len(model.sources),) + track.shape, mean, dtype))
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
                precision=precision,
            )
            outputs.append(sources * std + mean)
        return jnp.stack(outputs)
