"""HTDemucs on whole tracks in the NNabla port: ``demucs.apply.apply_model`` of demucs 4.1.0 with bags
(``BagOfModels``), and the track normalisation of its separation API (``demucs.api.Separator.separate_tensor``).

The spec is :mod:`core_spec.reference.htdemucs_apply` (its docstring has the three nested cases, in demucs 4's
order: random shifts outside the split, the split with a full-triangle overlap-add, and each chunk padded with
real neighbouring samples to the length the network runs at). The chunk geometry is :mod:`core_spec.shapes`', the
shifts come from a seeded generator (:func:`core_spec.shapes.shift_draws`; parity tests replay upstream's
``random.randint`` draws). The recursion and the overlap-add are NumPy (float32, as upstream accumulates in torch's
default dtype); each chunk runs through :func:`umx_nnabla.htdemucs.forward`, whose graph is built once per chunk
length and kept. A bag runs each of its models once per chunk (every source of a model from one forward), also
the members of a fine-tuned bag whose one-hot weights use one source each.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import nnabla as nn
import numpy as np

from core_spec import shapes
from core_spec.configs import BagConfig
from core_spec.reference.htdemucs_apply import SEPARATE_EPS, bag_models
from core_spec.shapes import ShiftDraws, check_track, check_transition_power, shift_draws

from .htdemucs import HTDemucs, forward

__all__ = ["SEPARATE_EPS", "BagOfModels", "apply_model", "bag_models", "separate_track"]


def _has_parameters(model: HTDemucs) -> bool:
    with model.parameter_scope():
        return bool(nn.get_parameters(grad_only=False))


@dataclass(frozen=True)
class _Chunk:
    """``TensorChunk``: the samples ``[offset, offset + length)`` of ``tensor (B, C, total)``; a chunk of a chunk is
    a chunk of the same tensor at the summed offset."""

    tensor: np.ndarray
    offset: int
    length: int

    @classmethod
    def of(cls, tensor: np.ndarray) -> _Chunk:
        return cls(tensor, 0, tensor.shape[-1])

    def sub(self, offset: int, length: int) -> _Chunk:
        return _Chunk(self.tensor, self.offset + offset, min(self.length - offset, length))

    def padded(self, target_length: int) -> np.ndarray:
        """``(B, C, target_length)`` centred on the chunk, real samples of the tensor where it has some."""
        win = shapes.chunk_window(self.tensor.shape[-1], self.offset, self.length, target_length)
        return np.pad(self.tensor[..., win.start : win.stop], [(0, 0), (0, 0), (win.pad_left, win.pad_right)])


@dataclass(frozen=True)
class _Run:
    """What every level of the recursion shares for one model."""

    model: HTDemucs
    rng: ShiftDraws
    segment: Fraction | None  # apply_model's ``segment`` argument
    overlap: float
    transition_power: float


def _apply_valid(run: _Run, chunk: _Chunk) -> np.ndarray:
    """Pad the chunk to the network's length (real neighbours first), run it, centre-trim to the chunk."""
    config = run.model.config
    trained = config.segment_fraction if config.use_train_segment else None
    target = shapes.htdemucs_chunk_target(chunk.length, config.samplerate, run.segment, trained)
    out, _ = forward(run.model, chunk.padded(target))
    return shapes.center_trim(out, chunk.length)


def _apply_split(run: _Run, chunk: _Chunk) -> np.ndarray:
    """Overlap-add of :func:`_apply_valid` on segments of the chunk (full triangle, ``transition_power``)."""
    model = run.model
    segment = run.segment if run.segment is not None else model.config.segment_fraction
    segment_length = int(model.samplerate * segment)
    _, offsets = shapes.segment_offsets(chunk.length, segment_length, run.overlap)
    weight = shapes.transition_weight(segment_length, run.transition_power).astype(np.float32)
    batch, channels = chunk.tensor.shape[:2]
    out = np.zeros((batch, len(model.sources), channels, chunk.length), np.float32)
    sum_weight = np.zeros(chunk.length, np.float32)
    for offset in offsets:
        chunk_out = _apply_valid(run, chunk.sub(offset, segment_length))
        n = chunk_out.shape[-1]
        out[..., offset : offset + n] += weight[:n] * chunk_out
        sum_weight[offset : offset + n] += weight[:n]
    return out / sum_weight


def _apply_one(run: _Run, mix: np.ndarray, shifts: int, split: bool) -> np.ndarray:
    """One model: random shifts around the split (or around one padded run)."""
    inner = _apply_split if split else _apply_valid
    if not shifts:
        return inner(run, _Chunk.of(mix))
    length = mix.shape[-1]
    shift = shapes.max_shift(run.model.samplerate)
    padded = _Chunk.of(mix).padded(length + 2 * shift)  # a new tensor: zeros beyond it
    out = np.zeros((mix.shape[0], len(run.model.sources), mix.shape[1], length), np.float32)
    for _ in range(shifts):
        offset = int(run.rng.integers(0, shift + 1))  # upstream: random.randint(0, max_shift), unseeded
        out += inner(run, _Chunk(padded, offset, length + shift - offset))[..., shift - offset :]
    return out / np.float32(shifts)


class BagOfModels:
    """A bag of HTDemucs models (``demucs.apply.BagOfModels``): each source's estimate is the weighted mean of the
    models' estimates.

    Args:
        models: the models (same sources, sample rate and audio channels), in the bag's order. Their parameters
            move into the bag's dictionary under ``models/<i>`` (upstream's ``models.<i>.<name>``); the models keep
            using them there.
        weights: one row per model, one weight per source (``None``: all ones).
        segment: the bag's segment in seconds (a yaml's ``segment``), or ``None``. As 4.1.0, it replaces the segment
            of every model whose own is not shorter, which changes the length those models run at.
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
        self.params: OrderedDict = OrderedDict()
        for i, (model, config) in enumerate(zip(models, running, strict=True)):
            model.set_segment(config.segment)
            own = model.get_parameters(grad_only=False) if _has_parameters(model) else OrderedDict()
            with nn.parameter_scope(f"models/{i}", self.params):
                for name, var in own.items():
                    nn.parameter.set_parameter(name, var)
            model.params, model.scope = self.params, f"models/{i}"
            model.graphs.clear()
        self.models = list(models)
        self.sources = self._config.sources
        self.samplerate = self._config.samplerate
        self.audio_channels = models[0].audio_channels

    @classmethod
    def from_config(cls, config: BagConfig) -> BagOfModels:
        """A bag of randomly initialised models with the configs of ``config``."""
        return cls([HTDemucs.from_config(m) for m in config.models], config.weights, config.segment)

    @property
    def config(self) -> BagConfig:
        """The :class:`core_spec.configs.BagConfig` of this bag (each model's own config, the bag's segment)."""
        return self._config

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def parameter_scope(self) -> AbstractContextManager:
        return nn.parameter_scope("", self.params)

    def get_parameters(self, grad_only: bool = False) -> OrderedDict:
        """``{models/<i>/<name>: Variable}`` of every model (created first where a model has none yet)."""
        for model in self.models:
            model.get_parameters(grad_only=False)
        with self.parameter_scope():
            return nn.get_parameters(grad_only=grad_only)


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
) -> np.ndarray:
    """Separate a (normalised) track with ``demucs.apply.apply_model`` semantics of demucs 4.1.0.

    Args:
        model_or_bag: an :class:`~umx_nnabla.htdemucs.HTDemucs` or a :class:`BagOfModels`.
        mix: ``(audio_channels, nb_timesteps)`` or ``(nb_samples, audio_channels, nb_timesteps)``.
        shifts: random shifts to average (0: none; upstream's default is 1).
        split: process the track in segments with overlap-add.
        overlap: fraction of a segment shared with the next one.
        transition_power: exponent of the triangular cross-fade (>= 1).
        segment: seconds per segment; ``None`` is each model's (7.8 s). Longer than a model's training segment is
            an error.
        rng: a ``numpy.random.Generator`` or a seed (0 if None) for the shifts, or anything with
            ``integers(low, high)`` (a replay of upstream's draws). Each model draws its own, in the bag's order.

    Returns:
        ``(nb_sources, audio_channels, nb_timesteps)`` (or with the batch axis first), float32.
    """
    check_transition_power(transition_power)
    models, source_weights = _models_and_weights(model_or_bag)
    mix = np.asarray(mix, dtype=np.float32)
    unbatched = check_track(mix.shape, models[0].audio_channels)
    trained = [m.config.segment_fraction if m.config.use_train_segment else None for m in models]
    seg = shapes.htdemucs_apply_segment(segment, trained)
    draws = shift_draws(rng)
    track = mix[None] if unbatched else mix
    estimates = np.zeros((track.shape[0], len(models[0].sources), *track.shape[1:]), np.float32)
    totals = np.zeros(len(models[0].sources))
    for model, row in zip(models, source_weights, strict=True):
        run = _Run(model, draws, seg, overlap, transition_power)
        row_arr = np.asarray(row, dtype=np.float64)
        estimates += _apply_one(run, track, shifts, split) * row_arr.astype(np.float32)[:, None, None]
        totals += row_arr
    estimates /= totals.astype(np.float32)[:, None, None]
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
) -> np.ndarray:
    """Separate a whole track as demucs 4.1.0's ``Separator.separate_tensor`` (and so its command) does.

    ``ref = wav.mean(0)``; ``wav = (wav - ref.mean()) / (ref.std() + 1e-8)`` (unbiased std); :func:`apply_model`;
    ``sources * (ref.std() + 1e-8) + ref.mean()``. Digital silence gives the mixture's constant in every stem.

    Args:
        wav: ``(audio_channels, nb_timesteps)`` at the model's sample rate.
        the others: as :func:`apply_model` (upstream's defaults: one shift, split, overlap 0.25).

    Returns:
        ``(nb_sources, audio_channels, nb_timesteps)``, float32.
    """
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 2:
        raise ValueError(f"separate_track expects (audio_channels, nb_timesteps), got {wav.shape}")
    ref = wav.astype(np.float64).mean(axis=0)
    mean = np.float32(ref.mean())
    std = np.float32((ref.std(ddof=1) if ref.size > 1 else np.nan) + SEPARATE_EPS)
    out = apply_model(
        model_or_bag,
        (wav - mean) / std,
        shifts=shifts,
        split=split,
        overlap=overlap,
        transition_power=transition_power,
        segment=segment,
        rng=rng,
    )
    return out * std + mean
