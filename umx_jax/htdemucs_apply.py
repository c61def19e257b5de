"""HTDemucs on whole tracks: ``demucs.apply.apply_model`` of demucs 4.1.0 with bags (``BagOfModels``), and the track
normalisation of its separation API (``demucs.api.Separator.separate_tensor``).

The spec is :mod:`core_spec.reference.htdemucs_apply` (its docstring has the three nested cases, in demucs 4's
order: random shifts outside the split, the split with a full-triangle overlap-add, and each chunk padded with
real neighbouring samples to the length the network runs at). The chunk geometry is :mod:`core_spec.shapes`',
the shifts come from a seeded generator (:func:`core_spec.shapes.shift_draws`; parity tests replay upstream's
``random.randint`` draws).

Compilation: the network (:func:`umx_jax.htdemucs.forward`) is compiled once per chunk shape. Every chunk is cut
from a zero-extended copy of the track (:class:`_Track`) by one slice outside the compiled network, so tracks of
any length share the compilation of a segment length; the overlap-add updates its accumulators in place (donated
buffers). The loops over models, shifts and segments stay in Python, as upstream. Accumulation is in the model's
dtype (upstream accumulates in torch's default dtype: float32 unless set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from core_spec import shapes
from core_spec.configs import BagConfig
from core_spec.reference.htdemucs_apply import SEPARATE_EPS, bag_models
from core_spec.shapes import ShiftDraws, check_track, check_transition_power, shift_draws

from ._scope import device_of, dtype_scope
from .htdemucs import HTDemucs, forward

__all__ = ["SEPARATE_EPS", "BagOfModels", "apply_model", "bag_models", "separate_track"]


class _Track:
    """A ``(B, C, L)`` track zero-extended by ``margin`` samples on both sides, so that every padded chunk of it
    (real neighbouring samples where the track has some, zeros beyond its ends) is one dynamic slice."""

    def __init__(self, samples: jax.Array, margin: int = 0):
        self.samples = samples
        self.length = samples.shape[-1]
        self.margin = -1
        self.extend(margin)

    def extend(self, margin: int) -> None:
        if margin > self.margin:
            self.margin = margin
            self.extended = jnp.pad(self.samples, ((0, 0), (0, 0), (margin, margin)))


@dataclass(frozen=True)
class _Chunk:
    """``TensorChunk``: the samples ``[offset, offset + length)`` of a track; a chunk of a chunk is a chunk of the
    same track at the summed offset."""

    track: _Track
    offset: int
    length: int

    def sub(self, offset: int, length: int) -> _Chunk:
        return _Chunk(self.track, self.offset + offset, min(self.length - offset, length))

    def padded(self, target_length: int) -> jax.Array:
        """``(B, C, target_length)`` centred on the chunk, real samples of the track where it has some."""
        win = shapes.chunk_window(self.track.length, self.offset, self.length, target_length)
        self.track.extend(max(win.pad_left, win.pad_right))
        start = win.start - win.pad_left + self.track.margin
        return _slice(self.track.extended, jnp.asarray(start), target_length)


@partial(jax.jit, static_argnums=(2,))
def _slice(extended: jax.Array, start: jax.Array, size: int) -> jax.Array:
    return lax.dynamic_slice_in_dim(extended, start, size, axis=-1)


@dataclass(frozen=True)
class _Run:
    """What every level of the recursion shares for one model."""

    model: HTDemucs
    rng: ShiftDraws
    segment: Fraction | None  # apply_model's ``segment`` argument
    overlap: float
    transition_power: float


def _apply_valid(run: _Run, chunk: _Chunk) -> jax.Array:
    """Pad the chunk to the network's length (real neighbours first), run it, centre-trim to the chunk."""
    config = run.model.config
    trained = config.segment_fraction if config.use_train_segment else None
    target = shapes.htdemucs_chunk_target(chunk.length, config.samplerate, run.segment, trained)
    out, _ = forward(run.model, chunk.padded(target))
    start, stop = shapes.center_trim_bounds(out.shape[-1], chunk.length)
    return out[..., start:stop]


@partial(jax.jit, donate_argnums=(0, 1))
def _overlap_add(
    out: jax.Array, sum_weight: jax.Array, chunk: jax.Array, weight: jax.Array, offset: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``out[..., offset:offset+n] += weight[:n] * chunk``; ``sum_weight[offset:offset+n] += weight[:n]``, in place."""
    n = chunk.shape[-1]
    weight = weight[:n]
    segment = lax.dynamic_slice_in_dim(out, offset, n, axis=-1) + weight * chunk
    out = lax.dynamic_update_slice_in_dim(out, segment, offset, axis=-1)
    total = lax.dynamic_slice_in_dim(sum_weight, offset, n, axis=-1) + weight
    return out, lax.dynamic_update_slice_in_dim(sum_weight, total, offset, axis=-1)


@partial(jax.jit, donate_argnums=(0,))
def _divide(out: jax.Array, sum_weight: jax.Array) -> jax.Array:
    """``out / sum_weight``, in place (``out`` donated: the track-long accumulators are not copied)."""
    return out / sum_weight


@partial(jax.jit, donate_argnums=(0,))
def _accumulate(estimates: jax.Array, estimate: jax.Array, row: jax.Array) -> jax.Array:
    """``estimates + estimate * row[:, None, None]`` (per-source weights ``row (S,)``), in place."""
    return estimates + estimate * row[:, None, None]


def _apply_split(run: _Run, chunk: _Chunk) -> jax.Array:
    """Overlap-add of :func:`_apply_valid` on segments of the chunk (full triangle, ``transition_power``)."""
    model = run.model
    segment = run.segment if run.segment is not None else model.config.segment_fraction
    segment_length = int(model.samplerate * segment)
    _, offsets = shapes.segment_offsets(chunk.length, segment_length, run.overlap)
    dtype = model.dtype
    weight = jnp.asarray(shapes.transition_weight(segment_length, run.transition_power), dtype)
    batch, channels = chunk.track.samples.shape[:2]
    out = jnp.zeros((batch, len(model.sources), channels, chunk.length), dtype)
    sum_weight = jnp.zeros(chunk.length, dtype)
    for offset in offsets:
        chunk_out = _apply_valid(run, chunk.sub(offset, segment_length))
        out, sum_weight = _overlap_add(out, sum_weight, chunk_out, weight, jnp.asarray(offset))
    return _divide(out, sum_weight)


def _apply_one(run: _Run, mix: jax.Array, shifts: int, split: bool) -> jax.Array:
    """One model: random shifts around the split (or around one padded run)."""
    inner = _apply_split if split else _apply_valid
    length = mix.shape[-1]
    if not shifts:
        return inner(run, _Chunk(_Track(mix), 0, length))
    shift = shapes.max_shift(run.model.samplerate)
    padded = _Chunk(_Track(mix), 0, length).padded(length + 2 * shift)  # a new track: zeros beyond it
    track = _Track(padded)
    out = None
    for _ in range(shifts):
        offset = int(run.rng.integers(0, shift + 1))  # upstream: random.randint(0, max_shift), unseeded
        shifted = inner(run, _Chunk(track, offset, length + shift - offset))[..., shift - offset :]
        out = shifted if out is None else out + shifted
    assert out is not None
    return out / shifts


class BagOfModels(nnx.Module):
    """A bag of HTDemucs models (``demucs.apply.BagOfModels``): each source's estimate is the weighted mean of the
    models' estimates.

    Args:
        models: the models (same sources, sample rate and audio channels), in the bag's order.
        weights: one row per model, one weight per source (``None``: all ones).
        segment: the bag's segment in seconds (a yaml's ``segment``), or ``None``. As 4.1.0, it replaces the segment
            of every model whose own is not shorter, which changes the length those models run at.

    State: ``models.<i>`` (upstream's ``BagOfModels.state_dict()`` names ``models.<i>.<name>``).
    """

    def __init__(
        self,
        models: Sequence[HTDemucs],
        weights: Sequence[Sequence[float]] | None = None,
        segment: tuple[int, int] | Fraction | float | None = None,
    ):
        # BagConfig checks the models (one set of sources, rate and channels) and the weights' shape, and reads
        # the segment (seconds, a Fraction or a pair)
        self._config = BagConfig(models=tuple(m.config for m in models), weights=weights, segment=segment)
        running, self.source_weights = bag_models(self._config)
        for model, config in zip(models, running, strict=True):
            model.set_segment(config.segment)
        self.models = nnx.List(list(models))
        self.sources = self._config.sources
        self.samplerate = self._config.samplerate
        self.audio_channels = models[0].audio_channels

    @classmethod
    def from_config(cls, config: BagConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs | None = None) -> BagOfModels:
        """A bag of randomly initialised models with the configs of ``config``."""
        rngs = nnx.Rngs(0) if rngs is None else rngs
        models = [HTDemucs.from_config(m, dtype=dtype, rngs=rngs) for m in config.models]
        return cls(models, config.weights, config.segment)

    @property
    def config(self) -> BagConfig:
        """The :class:`core_spec.configs.BagConfig` of this bag (each model's own config, the bag's segment)."""
        return self._config

    @property
    def dtype(self) -> np.dtype:
        return self.models[0].dtype


def _models_and_weights(model_or_bag: HTDemucs | BagOfModels) -> tuple[list[HTDemucs], list[tuple[float, ...]]]:
    if isinstance(model_or_bag, BagOfModels):
        return list(model_or_bag.models), list(model_or_bag.source_weights)
    return [model_or_bag], [tuple(1.0 for _ in model_or_bag.sources)]


def apply_model(
    model_or_bag: HTDemucs | BagOfModels,
    mix: Any,
    shifts: int = 1,
    split: bool = True,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    segment: float | Fraction | str | tuple[int, int] | None = None,
    rng: ShiftDraws | int | None = None,
    precision: str | None = "highest",
) -> jax.Array:
    """Separate a (normalised) track with ``demucs.apply.apply_model`` semantics of demucs 4.1.0.

    Args:
        model_or_bag: an :class:`~umx_jax.htdemucs.HTDemucs` or a :class:`BagOfModels`.
        mix: ``(audio_channels, nb_timesteps)`` or ``(nb_samples, audio_channels, nb_timesteps)``.
        shifts: random shifts to average (0: none; upstream's default is 1).
        split: process the track in segments with overlap-add.
        overlap: fraction of a segment shared with the next one.
        transition_power: exponent of the triangular cross-fade (>= 1).
        segment: seconds per segment; ``None`` is each model's (7.8 s). Longer than a model's training segment is
            an error.
        rng: a ``numpy.random.Generator`` or a seed (0 if None) for the shifts, or anything with
            ``integers(low, high)`` (a replay of upstream's draws). Each model draws its own, in the bag's order.
        precision: ``jax.default_matmul_precision`` of the networks (``"highest"``: no TF32 on GPUs).

    Returns:
        ``(nb_sources, audio_channels, nb_timesteps)`` (or with the batch axis first) in the model's dtype, on the
        model's device.
    """
    check_transition_power(transition_power)
    models, source_weights = _models_and_weights(model_or_bag)
    unbatched = check_track(np.shape(mix), models[0].audio_channels)
    trained = [m.config.segment_fraction if m.config.use_train_segment else None for m in models]
    seg = shapes.htdemucs_apply_segment(segment, trained)
    dtype = models[0].dtype
    draws = shift_draws(rng)
    with dtype_scope(dtype, precision):
        track = jax.device_put(jnp.asarray(mix, dtype), device_of(models[0]))
        track = track[None] if unbatched else track
        estimates = jnp.zeros((track.shape[0], len(models[0].sources), *track.shape[1:]), dtype)
        totals = np.zeros(len(models[0].sources))
        for model, row in zip(models, source_weights, strict=True):
            run = _Run(model, draws, seg, overlap, transition_power)
            row_arr = np.asarray(row, dtype=np.float64)
            estimates = _accumulate(estimates, _apply_one(run, track, shifts, split), jnp.asarray(row_arr, dtype))
            totals += row_arr
        estimates = _divide(estimates, jnp.asarray(totals, dtype)[:, None, None])
        return estimates[0] if unbatched else estimates


def separate_track(
    model_or_bag: HTDemucs | BagOfModels,
    wav: Any,
    shifts: int = 1,
    split: bool = True,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    segment: float | Fraction | str | tuple[int, int] | None = None,
    rng: ShiftDraws | int | None = None,
    precision: str | None = "highest",
) -> jax.Array:
    """Separate a whole track as demucs 4.1.0's ``Separator.separate_tensor`` (and so its command) does.

    ``ref = wav.mean(0)``; ``wav = (wav - ref.mean()) / (ref.std() + 1e-8)`` (unbiased std); :func:`apply_model`;
    ``sources * (ref.std() + 1e-8) + ref.mean()``. Digital silence gives the mixture's constant in every stem.

    Args:
        wav: ``(audio_channels, nb_timesteps)`` at the model's sample rate.
        the others: as :func:`apply_model` (upstream's defaults: one shift, split, overlap 0.25).

    Returns:
        ``(nb_sources, audio_channels, nb_timesteps)`` in the model's dtype.
    """
    models, _ = _models_and_weights(model_or_bag)
    dtype = models[0].dtype
    with dtype_scope(dtype, precision):
        wav = jax.device_put(jnp.asarray(wav, dtype), device_of(models[0]))
        if wav.ndim != 2:
            raise ValueError(f"separate_track expects (audio_channels, nb_timesteps), got {wav.shape}")
        ref = jnp.mean(wav, axis=0)
        mean = jnp.mean(ref)
        std = jnp.sqrt(jnp.sum(jnp.square(ref - mean)) / (ref.shape[0] - 1)) + SEPARATE_EPS
        out = apply_model(
            model_or_bag,
            (wav - mean) / std,
            shifts=shifts,
            split=split,
            overlap=overlap,
            transition_power=transition_power,
            segment=segment,
            rng=rng,
            precision=precision,
        )
        return out * std + mean
