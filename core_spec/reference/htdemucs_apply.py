"""HTDemucs on whole tracks, float64: ``demucs.apply.apply_model`` of demucs 4.1.0 with bags, and the track
normalisation of its separation API (``demucs.api.Separator.separate_tensor``, which the ``demucs`` command uses).

``apply_model`` nests three cases, in demucs 4's order (demucs 2's :mod:`~core_spec.reference.apply` nests the
first two the other way round):

1. ``shifts > 0``: pad the track by ``max_shift = int(0.5 * samplerate)`` on both sides (real neighbouring samples
   where there are some, zeros beyond the ends), and ``shifts`` times: draw ``offset`` in ``[0, max_shift]``, run
   case 2 on the window ``[offset, offset + L + max_shift - offset)`` of the padded track and keep its last ``L``
   samples; average. The random shift is outside the split, so a shifted window is then split.
2. ``split``: cut into segments of ``segment_length = int(segment * samplerate)`` samples (the model's 7.8-s
   training segment unless ``segment`` is given) every ``stride = int((1 - overlap) * segment_length)``; run case 3
   on each and overlap-add them with the full triangle ``1, 2, ..., n/2, ..., 2, 1`` (over its max, to
   ``transition_power``): ``out = sum_k w * out_k / sum_k w``.
3. otherwise: pad the chunk to the network's length, centred on it, **with real neighbouring samples of the track
   where there are some** (zeros only beyond its ends); the network then zero-pads on the right to its training
   length (:func:`~core_spec.reference.htdemucs.htdemucs_valid_length`); centre-trim the output to the chunk.
   The network's length is ``int(segment * samplerate)`` when ``segment`` is given, else the training length.

A bag (``BagOfModels``, :class:`~core_spec.configs.BagConfig`) runs ``apply_model`` on each model with the same
arguments (each model draws its own shifts, in model order) and takes, per source ``k``, the weighted mean
``sum_m w[m][k] * out_m[k] / sum_m w[m][k]``. A bag's ``segment``, when set, replaces the segment of every model
whose own segment is not shorter (4.1.0's rule), which changes the length those models run at.

Deliberate differences from upstream, documented where they act:

- shifts: upstream draws each offset with Python's unseeded global ``random.randint(0, max_shift)``. Here the
  offsets come from ``rng.integers(0, max_shift + 1)`` (a ``numpy.random.Generator``, seed 0 unless given), so a
  run is reproducible; parity tests pass an ``rng`` that replays upstream's draws.
- precision: upstream accumulates the split's overlap-add (``out``, ``sum_weight``, the transition weight) in
  torch's default dtype (float32 unless set). The spec accumulates in float64: it equals upstream run under
  ``torch.set_default_dtype(torch.float64)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..configs import BagConfig, HTDemucsConfig
from ..shapes import (
    ShiftDraws,
    center_trim,
    check_track,
    check_transition_power,
    chunk_window,
    htdemucs_apply_segment,
    htdemucs_chunk_target,
    max_shift,
    segment_offsets,
    shift_draws,
    transition_weight,
)
from .htdemucs import htdemucs

__all__ = ["SEPARATE_EPS", "apply_model", "bag_models", "separate_track"]

# demucs 4.1.0's separation divides the mixture by ``std + 1e-8`` (4.0.1's separate.py has no epsilon)
SEPARATE_EPS = 1e-8


@dataclass(frozen=True)
class _Chunk:
    """``TensorChunk``: the samples ``[offset, offset + length)`` of ``tensor (B, C, total)``; a chunk of a chunk
    is a chunk of the same tensor at the summed offset (upstream's composition)."""

    tensor: np.ndarray
    offset: int
    length: int

    @classmethod
    def of(cls, tensor: np.ndarray) -> _Chunk:
        return cls(tensor, 0, tensor.shape[-1])

    def sub(self, offset: int, length: int) -> _Chunk:
        """``TensorChunk(self, offset, length)``: ``length`` cut to what the chunk holds."""
        if not 0 <= offset < self.length:
            raise ValueError(f"chunk offset {offset} outside a chunk of {self.length} samples")
        return _Chunk(self.tensor, self.offset + offset, min(self.length - offset, length))

    def padded(self, target_length: int) -> np.ndarray:
        """``(B, C, target_length)`` centred on the chunk, real samples of the tensor where it has some."""
        win = chunk_window(self.tensor.shape[-1], self.offset, self.length, target_length)
        return np.pad(self.tensor[..., win.start : win.stop], [(0, 0), (0, 0), (win.pad_left, win.pad_right)])


@dataclass(frozen=True)
class _Run:
    """What every level of the recursion shares for one model."""

    weights: Mapping[str, np.ndarray]
    config: HTDemucsConfig
    rng: ShiftDraws
    segment: Fraction | None  # apply_model's ``segment`` argument
    overlap: float
    transition_power: float
    window: np.ndarray | None


def _apply_valid(run: _Run, chunk: _Chunk) -> np.ndarray:
    """Case 3: pad to the network's length (real neighbours first), run it, centre-trim to the chunk."""
    config = run.config
    trained = config.segment_fraction if config.use_train_segment else None
    target = htdemucs_chunk_target(chunk.length, config.samplerate, run.segment, trained)
    out = htdemucs(run.weights, config, chunk.padded(target), window=run.window)
    return center_trim(out, chunk.length)


def _apply_split(run: _Run, chunk: _Chunk) -> np.ndarray:
    """Case 2: overlap-add of case 3 on segments of the chunk."""
    config = run.config
    segment = run.segment if run.segment is not None else config.segment_fraction
    segment_length = int(config.samplerate * segment)
    _, offsets = segment_offsets(chunk.length, segment_length, run.overlap)
    weight = transition_weight(segment_length, run.transition_power)  # upstream: torch's default dtype
    batch, channels = chunk.tensor.shape[:2]
    out = np.zeros((batch, len(config.sources), channels, chunk.length))
    sum_weight = np.zeros(chunk.length)
    for offset in offsets:
        chunk_out = _apply_valid(run, chunk.sub(offset, segment_length))
        n = chunk_out.shape[-1]
        out[..., offset : offset + n] += weight[:n] * chunk_out
        sum_weight[offset : offset + n] += weight[:n]
    return out / sum_weight


def _apply_one(run: _Run, mix: np.ndarray, shifts: int, split: bool) -> np.ndarray:
    """One model: case 1 around case 2 (``split``) or 3."""
    inner = _apply_split if split else _apply_valid
    if not shifts:
        return inner(run, _Chunk.of(mix))
    length = mix.shape[-1]
    shift = max_shift(run.config.samplerate)
    padded = _Chunk.of(mix).padded(length + 2 * shift)  # a new tensor: padding beyond it is zeros
    out = np.zeros((mix.shape[0], len(run.config.sources), mix.shape[1], length))
    for _ in range(shifts):
        offset = int(run.rng.integers(0, shift + 1))  # upstream: random.randint(0, max_shift), unseeded
        shifted = _Chunk(padded, offset, length + shift - offset)
        out += inner(run, shifted)[..., shift - offset :]
    return out / shifts


def bag_models(config: HTDemucsConfig | BagConfig) -> tuple[tuple[HTDemucsConfig, ...], tuple[tuple[float, ...], ...]]:
    """The models of a bag as they run, and their per-source weights (all ones when the bag has none).

    A single model is a bag of one with unit weights. A bag's ``segment`` replaces the ``segment`` of each model
    whose own is not shorter (``BagOfModels.__init__`` of 4.1.0).
    """
    if isinstance(config, HTDemucsConfig):
        return (config,), (tuple(1.0 for _ in config.sources),)
    models = config.models
    if config.segment is not None:
        bag_segment = Fraction(*config.segment)
        models = tuple(
            dataclasses.replace(m, segment=config.segment) if bag_segment <= m.segment_fraction else m for m in models
        )
    weights = config.weights or tuple(tuple(1.0 for _ in config.sources) for _ in models)
    return models, weights


def apply_model(
    weights: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
    config: HTDemucsConfig | BagConfig,
    mix: np.ndarray,
    shifts: int = 1,
    split: bool = True,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    segment: float | Fraction | str | tuple[int, int] | None = None,
    rng: ShiftDraws | int | None = None,
    window: np.ndarray | None = None,
) -> np.ndarray:
    """Separate a (normalised) track with ``demucs.apply.apply_model`` semantics (module docstring).

    Args:
        weights: canonical weights of the model, or one mapping per model of a bag (in the bag's order).
        config: an :class:`~core_spec.configs.HTDemucsConfig`, or a :class:`~core_spec.configs.BagConfig`.
        mix: ``(audio_channels, nb_timesteps)`` or ``(nb_samples, audio_channels, nb_timesteps)``.
        shifts: random shifts to average (0: none; upstream's default is 1).
        split: process the track in segments with overlap-add.
        overlap: fraction of a segment shared with the next one.
        transition_power: exponent of the triangular cross-fade (>= 1).
        segment: seconds per segment; ``None`` is the model's (7.8 s). Longer than a model's training segment is
            an error (the network cannot run longer).
        rng: a ``numpy.random.Generator`` or seed for the shifts (seed 0 if None), or anything whose
            ``integers(0, max_shift + 1)`` replays upstream's draws.
        window: the STFT window passed to the network (parity tests pass upstream's).

    Returns:
        float64 shaped like ``mix`` with a sources axis before the channels: ``(nb_sources, audio_channels,
        nb_timesteps)`` or ``(nb_samples, nb_sources, audio_channels, nb_timesteps)``.
    """
    check_transition_power(transition_power)
    mix = np.asarray(mix, dtype=np.float64)
    models, source_weights = bag_models(config)
    unbatched = check_track(mix.shape, models[0].audio_channels)
    if unbatched:
        mix = mix[None]
    per_model = [weights] if isinstance(config, HTDemucsConfig) else list(weights)
    if len(per_model) != len(models):
        raise ValueError(f"a bag of {len(models)} models needs {len(models)} weight mappings, got {len(per_model)}")
    seg = htdemucs_apply_segment(segment, [m.segment_fraction if m.use_train_segment else None for m in models])
    draws = shift_draws(rng)
    estimates = np.zeros((mix.shape[0], len(models[0].sources), *mix.shape[1:]))
    totals = np.zeros(len(models[0].sources))
    for model, model_weights, row in zip(models, per_model, source_weights, strict=True):
        run = _Run(model_weights, model, draws, seg, overlap, transition_power, window)
        row_arr = np.asarray(row, dtype=np.float64)
        estimates += _apply_one(run, mix, shifts, split) * row_arr[None, :, None, None]
        totals += row_arr
    estimates /= totals[None, :, None, None]
    return estimates[0] if unbatched else estimates


def separate_track(
    weights: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
    config: HTDemucsConfig | BagConfig,
    wav: np.ndarray,
    shifts: int = 1,
    split: bool = True,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    segment: float | Fraction | str | tuple[int, int] | None = None,
    rng: ShiftDraws | int | None = None,
    window: np.ndarray | None = None,
) -> np.ndarray:
    """Separate a whole track as demucs 4.1.0's ``Separator.separate_tensor`` (and so its command) does.

    ``ref = wav.mean(0)``; ``wav = (wav - ref.mean()) / (ref.std() + 1e-8)`` (unbiased std); :func:`apply_model`;
    ``sources * (ref.std() + 1e-8) + ref.mean()``. Digital silence gives the mixture's constant in every stem
    (the epsilon keeps it finite). File output (clipping, quantisation) is the tool's.

    Args:
        wav: ``(audio_channels, nb_timesteps)`` at the model's sample rate.
        the others: as :func:`apply_model` (upstream's defaults: one shift, split, overlap 0.25).

    Returns:
        ``(nb_sources, audio_channels, nb_timesteps)``, float64.
    """
    wav = np.asarray(wav, dtype=np.float64)
    ref = wav.mean(axis=0)
    mean = ref.mean()
    std = (ref.std(ddof=1) if ref.size > 1 else np.nan) + SEPARATE_EPS
    out = apply_model(
        weights,
        config,
        (wav - mean) / std,
        shifts=shifts,
        split=split,
        overlap=overlap,
        transition_power=transition_power,
        segment=segment,
        rng=rng,
        window=window,
    )
    return out * std + mean
