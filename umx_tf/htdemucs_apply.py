"""HTDemucs on whole tracks: ``demucs.apply.apply_model`` of demucs 4.1.0 with bags (``BagOfModels``), and the track
normalisation of its separation API (``demucs.api.Separator.separate_tensor``), in TensorFlow.

The spec is :mod:`core_spec.reference.htdemucs_apply` (its docstring has the three nested cases, in demucs 4's
order: random shifts outside the split, the split with a full-triangle overlap-add, and each chunk padded with
real neighbouring samples to the length the network runs at). The chunk geometry is :mod:`core_spec.shapes`',
the shifts come from a seeded generator (:func:`core_spec.shapes.shift_draws`; parity tests replay upstream's
``random.randint`` draws).

The network runs compiled (:func:`umx_tf.htdemucs.forward`: a ``tf.function`` graph, XLA on request, one trace per
chunk length; chunks are padded to the model's training length, so a track shares one trace per model). The loops
over models, shifts and segments stay in Python, as upstream; the overlap-add of a split is one
``tf.signal.overlap_and_add`` (every segment offset is a multiple of the stride). Accumulation is in the model's
dtype (upstream accumulates in torch's default dtype: float32 unless set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from core_spec import shapes
from core_spec.configs import BagConfig
from core_spec.reference.htdemucs_apply import SEPARATE_EPS, bag_models
from core_spec.shapes import ShiftDraws, check_track, check_transition_power, shift_draws

from .htdemucs import HTDemucs, forward

__all__ = ["SEPARATE_EPS", "BagOfModels", "apply_model", "bag_models", "separate_track"]


@dataclass(frozen=True)
class _Chunk:
    """``TensorChunk``: the samples ``[offset, offset + length)`` of ``tensor (B, C, total)``; a chunk of a chunk
    is a chunk of the same tensor at the summed offset."""

    tensor: tf.Tensor
    offset: int
    length: int

    @classmethod
    def of(cls, tensor: tf.Tensor) -> _Chunk:
        return cls(tensor, 0, tensor.shape[-1])

    def sub(self, offset: int, length: int) -> _Chunk:
        return _Chunk(self.tensor, self.offset + offset, min(self.length - offset, length))

    def padded(self, target_length: int) -> tf.Tensor:
        """``(B, C, target_length)`` centred on the chunk, real samples of the tensor where it has some."""
        win = shapes.chunk_window(self.tensor.shape[-1], self.offset, self.length, target_length)
        return tf.pad(self.tensor[..., win.start : win.stop], [[0, 0], [0, 0], [win.pad_left, win.pad_right]])


@dataclass(frozen=True)
class _Run:
    """What every level of the recursion shares for one model."""

    model: HTDemucs
    rng: ShiftDraws
    segment: Fraction | None  # apply_model's ``segment`` argument
    overlap: float
    transition_power: float
    jit_compile: bool | None


def _apply_valid(run: _Run, chunk: _Chunk) -> tf.Tensor:
    """Pad the chunk to the network's length (real neighbours first), run it, centre-trim to the chunk."""
    config = run.model.config
    trained = config.segment_fraction if config.use_train_segment else None
    target = shapes.htdemucs_chunk_target(chunk.length, config.samplerate, run.segment, trained)
    out, _ = forward(run.model, chunk.padded(target), jit_compile=run.jit_compile)
    start, stop = shapes.center_trim_bounds(out.shape[-1], chunk.length)
    return out[..., start:stop]


def _apply_split(run: _Run, chunk: _Chunk) -> tf.Tensor:
    """Overlap-add of :func:`_apply_valid` on segments of the chunk (full triangle, ``transition_power``)."""
    model = run.model
    segment = run.segment if run.segment is not None else model.config.segment_fraction
    segment_length = int(model.samplerate * segment)
    stride, offsets = shapes.segment_offsets(chunk.length, segment_length, run.overlap)
    weight = tf.constant(shapes.transition_weight(segment_length, run.transition_power), dtype=model.compute_dtype)
    frames, weights = [], []
    for offset in offsets:
        chunk_out = _apply_valid(run, chunk.sub(offset, segment_length))  # (B, S, C, n)
        n = chunk_out.shape[-1]
        frames.append(tf.pad(weight[:n] * chunk_out, [[0, 0]] * 3 + [[0, segment_length - n]]))
        weights.append(tf.pad(weight[:n], [[0, segment_length - n]]))
    out = tf.signal.overlap_and_add(tf.stack(frames, axis=-2), stride)[..., : chunk.length]
    sum_weight = tf.signal.overlap_and_add(tf.stack(weights), stride)[: chunk.length]
    return out / sum_weight


def _apply_one(run: _Run, mix: tf.Tensor, shifts: int, split: bool) -> tf.Tensor:
    """One model: random shifts around the split (or around one padded run)."""
    inner = _apply_split if split else _apply_valid
    length = mix.shape[-1]
    if not shifts:
        return inner(run, _Chunk.of(mix))
    shift = shapes.max_shift(run.model.samplerate)
    padded = _Chunk.of(mix).padded(length + 2 * shift)  # a new tensor: zeros beyond it
    out = None
    for _ in range(shifts):
        offset = int(run.rng.integers(0, shift + 1))  # upstream: random.randint(0, max_shift), unseeded
        shifted = inner(run, _Chunk(padded, offset, length + shift - offset))[..., shift - offset :]
        out = shifted if out is None else out + shifted
    assert out is not None
    return out / shifts


@keras.saving.register_keras_serializable(package="umx_tf")
class BagOfModels(keras.Model):
    """A bag of HTDemucs models (``demucs.apply.BagOfModels``): each source's estimate is the weighted mean of the
    models' estimates.

    Args:
        models: the models (same sources, sample rate and audio channels), in the bag's order.
        weights: one row per model, one weight per source (``None``: all ones).
        segment: the bag's segment in seconds (a yaml's ``segment``), or ``None``. As 4.1.0, it replaces the segment
            of every model whose own is not shorter, which changes the length those models run at.

    Weights: ``models[i]`` (upstream's ``BagOfModels.state_dict()`` names ``models.<i>.<name>``).
    """

    def __init__(
        self,
        models: Sequence[HTDemucs],
        weights: Sequence[Sequence[float]] | None = None,
        segment: tuple[int, int] | Fraction | float | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        # BagConfig checks the models (one set of sources, rate and channels) and the weights' shape, and reads
        # the segment (seconds, a Fraction or a pair)
        self._config = BagConfig(models=tuple(m.config for m in models), weights=weights, segment=segment)
        running, self.source_weights = bag_models(self._config)
        for model, config in zip(models, running, strict=True):
            model.set_segment(config.segment)
        self.models = list(models)
        self.sources = self._config.sources
        self.samplerate = self._config.samplerate
        self.audio_channels = models[0].audio_channels
        self.built = True

    @classmethod
    def from_config(cls, config: BagConfig | dict, custom_objects: Any = None, dtype: Any = None) -> BagOfModels:
        """A bag of randomly initialised models with the configs of ``config``."""
        if not isinstance(config, BagConfig):
            raise TypeError("a BagOfModels is built from a core_spec.configs.BagConfig")
        models = [HTDemucs.from_config(m, dtype=dtype) for m in config.models]
        return cls(models, config.weights, config.segment, dtype=dtype)

    @property
    def config(self) -> BagConfig:
        """The :class:`core_spec.configs.BagConfig` of this bag (each model's own config, the bag's segment)."""
        return self._config


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
    jit_compile: bool | None = None,
) -> tf.Tensor:
    """Separate a (normalised) track with ``demucs.apply.apply_model`` semantics of demucs 4.1.0.

    Args:
        model_or_bag: an :class:`~umx_tf.htdemucs.HTDemucs` or a :class:`BagOfModels`.
        mix: ``(audio_channels, nb_timesteps)`` or ``(nb_samples, audio_channels, nb_timesteps)``.
        shifts: random shifts to average (0: none; upstream's default is 1).
        split: process the track in segments with overlap-add.
        overlap: fraction of a segment shared with the next one.
        transition_power: exponent of the triangular cross-fade (>= 1).
        segment: seconds per segment; ``None`` is each model's (7.8 s). Longer than a model's training segment is
            an error.
        rng: a ``numpy.random.Generator`` or a seed (0 if None) for the shifts, or anything with
            ``integers(low, high)`` (a replay of upstream's draws). Each model draws its own, in the bag's order.
        jit_compile: XLA-compile the network (``None``: the plain graph, faster on CPU:
            :meth:`umx_tf.htdemucs.HTDemucs.compiled_call`).

    Returns:
        ``(nb_sources, audio_channels, nb_timesteps)`` (or with the batch axis first) in the model's dtype.
    """
    check_transition_power(transition_power)
    models, source_weights = _models_and_weights(model_or_bag)
    unbatched = check_track(tuple(np.shape(mix)), models[0].audio_channels)
    trained = [m.config.segment_fraction if m.config.use_train_segment else None for m in models]
    seg = shapes.htdemucs_apply_segment(segment, trained)
    dtype = models[0].compute_dtype
    draws = shift_draws(rng)
    track = tf.cast(tf.convert_to_tensor(mix), dtype)
    track = track[None] if unbatched else track
    estimates = None
    totals = np.zeros(len(models[0].sources))
    for model, row in zip(models, source_weights, strict=True):
        run = _Run(model, draws, seg, overlap, transition_power, jit_compile)
        row_arr = np.asarray(row, dtype=np.float64)
        weighted = _apply_one(run, track, shifts, split) * tf.constant(row_arr[:, None, None], dtype)
        estimates = weighted if estimates is None else estimates + weighted
        totals += row_arr
    estimates = estimates / tf.constant(totals[:, None, None], dtype)
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
    jit_compile: bool | None = None,
) -> tf.Tensor:
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
    wav = tf.cast(tf.convert_to_tensor(wav), models[0].compute_dtype)
    if wav.shape.rank != 2:
        raise ValueError(f"separate_track expects (audio_channels, nb_timesteps), got {tuple(wav.shape)}")
    ref = tf.reduce_mean(wav, axis=0)
    mean = tf.reduce_mean(ref)
    n = ref.shape[0]
    std = tf.sqrt(tf.reduce_sum(tf.square(ref - mean)) / (n - 1)) + SEPARATE_EPS
    out = apply_model(
        model_or_bag,
        (wav - mean) / std,
        shifts=shifts,
        split=split,
        overlap=overlap,
        transition_power=transition_power,
        segment=segment,
        rng=rng,
        jit_compile=jit_compile,
    )
    return out * std + mean
