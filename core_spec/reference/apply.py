"""Demucs v2 on whole tracks, float64: ``demucs.utils.apply_model`` and the track normalisation of
``demucs/separate.py`` (demucs 2.0.3).

``apply_model`` has three nested cases, as upstream:

1. ``split``: cut the track into segments of ``segment_length`` samples every ``stride = int((1 - overlap) *
   segment_length)``, run case 2 or 3 on each, and cross-fade them with a triangular weight
   (:func:`core_spec.shapes.transition_weight`): ``out = sum_k w * out_k / sum_k w``.
2. ``shifts > 0``: pad the chunk by ``max_shift = int(0.5 * samplerate)`` on both sides (with real neighbouring
   samples of the track), run case 3 on ``shifts`` randomly shifted windows and average the re-aligned outputs.
3. otherwise: pad the chunk to ``valid_length`` **with real neighbouring samples of the track where there are
   some** (zeros only beyond its ends: :func:`core_spec.shapes.chunk_window`), run the network, centre-trim.

Deliberate differences from upstream, both documented where they act:

- shifts: upstream draws each offset with Python's unseeded global ``random.randint(0, max_shift)``, so its
  output changes from run to run. Here the offsets come from ``rng.integers(0, max_shift + 1)`` of a
  ``numpy.random.Generator`` (seed 0 unless given), so a run is reproducible. Parity tests use ``shifts=0``, or
  pass an ``rng`` whose ``integers`` replays upstream's draws.
- precision: upstream accumulates the split's overlap-add in tensors of torch's *default* dtype (``out``,
  ``sum_weight`` and the transition weight are float32 even when the model runs in float64), so a float64
  upstream run with ``split=True`` is only float32-accurate. The spec accumulates in float64; it equals upstream
  run under ``torch.set_default_dtype(torch.float64)``.
- silence: ``separate_track`` divides by the mixture's std like upstream, which gives NaN for digital silence.
  With ``silence_guard=True`` (the default) a mixture whose mono downmix is constant is returned as that constant
  in every stem (silence gives silence); ``silence_guard=False`` reproduces upstream exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from core_spec import shapes

from ..configs import DemucsConfig
from ..shapes import (
    ShiftDraws,
    center_trim,
    check_track,
    check_transition_power,
    chunk_window,
    is_silent,
    max_shift,
    segment_offsets,
    transition_weight,
    valid_length,
)
from .demucs import demucs

__all__ = ["TensorChunk", "apply_model", "separate_track"]


@dataclass(frozen=True)
class TensorChunk:
    """``demucs.utils.TensorChunk``: the samples ``[offset, offset + length)`` of ``tensor (..., total)``.

    ``length`` is cut to what the tensor holds (``min(total - offset, length)``).
    """

    tensor: np.ndarray
    offset: int = 0
    length: int | None = None

    def __post_init__(self) -> None:
        total = self.tensor.shape[-1]
        if not 0 <= self.offset < total:
            raise ValueError(f"chunk offset {self.offset} outside a tensor of {total} samples")
        length = total - self.offset if self.length is None else min(total - self.offset, self.length)
        object.__setattr__(self, "length", length)

    def padded(self, target_length: int) -> np.ndarray:
        """``(..., target_length)`` centred on the chunk: real samples of ``tensor`` where it has some, zeros
        beyond its ends."""
        win = chunk_window(self.tensor.shape[-1], self.offset, self.length, target_length)
        pad = [(0, 0)] * (self.tensor.ndim - 1) + [(win.pad_left, win.pad_right)]
        return np.pad(self.tensor[..., win.start : win.stop], pad)


@dataclass(frozen=True)
class _Run:
    """What every level of the recursion shares."""

    weights: Mapping[str, np.ndarray]
    config: DemucsConfig
    rng: ShiftDraws
    resample_kernels: Mapping[str, np.ndarray] | None


def _apply_valid(run: _Run, chunk: TensorChunk) -> np.ndarray:
    """Case 3: pad to ``valid_length`` (real neighbours first), run the network, centre-trim to the chunk."""
    padded = chunk.padded(valid_length(chunk.length, run.config))
    out = demucs(run.weights, run.config, padded[None], resample_kernels=run.resample_kernels)[0]
    return center_trim(out, chunk.length)


def _apply_shifted(run: _Run, chunk: TensorChunk, shifts: int) -> np.ndarray:
    """Case 2: average of ``shifts`` runs on randomly shifted windows (case 3 when ``shifts`` is 0)."""
    if not shifts:
        return _apply_valid(run, chunk)
    length = chunk.length
    shift = max_shift(run.config.samplerate)
    padded = chunk.padded(length + 2 * shift)  # a new tensor: later padding beyond it is zeros
    out = np.zeros((len(run.config.sources), padded.shape[0], length))
    for _ in range(shifts):
        offset = int(run.rng.integers(0, shift + 1))  # upstream: random.randint(0, max_shift), unseeded
        shifted = TensorChunk(padded, offset, length + shift - offset)
        out += _apply_valid(run, shifted)[..., shift - offset :]
    return out / shifts


def apply_model(
    weights: Mapping[str, np.ndarray],
    config: DemucsConfig,
    mix: np.ndarray,
    shifts: int = 0,
    split: bool = False,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    segment_length: int | None = None,
    rng: ShiftDraws | int | None = None,
    resample_kernels: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Separate one (normalised) track with ``demucs.utils.apply_model`` semantics.

    Args:
        weights: canonical weights.
        config: the model config.
        mix: ``(audio_channels, nb_timesteps)``.
        shifts: number of random shifts to average (0: none).
        split: process segments of ``segment_length`` samples with overlap-add.
        overlap: fraction of a segment shared with the next one.
        transition_power: exponent of the triangular cross-fade weight (>= 1).
        segment_length: segment in samples; ``config.segment_length`` (40 s for the released models) if None.
        rng: a ``numpy.random.Generator`` (or a seed) for the shifts; seed 0 if None. Anything with upstream-like
            draws works: only ``rng.integers(0, max_shift + 1)`` is called.
        resample_kernels: passed to :func:`core_spec.reference.demucs.demucs`.

    Returns:
        ``(nb_sources, audio_channels, nb_timesteps)``, float64.
    """
    check_transition_power(transition_power)
    mix = np.asarray(mix, dtype=np.float64)
    if not check_track(mix.shape, config.audio_channels):
        raise ValueError(f"the spec's apply_model separates one track (audio_channels, nb_timesteps), got {mix.shape}")
    rng = shapes.shift_draws(rng)
    run = _Run(weights, config, rng, resample_kernels)
    if not split:
        return _apply_shifted(run, TensorChunk(mix), shifts)

    nb_channels, length = mix.shape
    segment = segment_length or config.segment_length
    _, offsets = segment_offsets(length, segment, overlap)
    weight = transition_weight(segment, transition_power)  # (segment,), float64 (upstream: default dtype)
    out = np.zeros((len(config.sources), nb_channels, length))
    sum_weight = np.zeros(length)
    for offset in offsets:
        chunk_out = _apply_shifted(run, TensorChunk(mix, offset, segment), shifts)
        n = chunk_out.shape[-1]
        out[..., offset : offset + n] += weight[:n] * chunk_out
        sum_weight[offset : offset + n] += weight[:n]
    return out / sum_weight


def separate_track(
    weights: Mapping[str, np.ndarray],
    config: DemucsConfig,
    wav: np.ndarray,
    shifts: int = 0,
    split: bool = True,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    segment_length: int | None = None,
    rng: np.random.Generator | int | None = None,
    silence_guard: bool = True,
    resample_kernels: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Separate a whole track as ``demucs/separate.py`` of demucs 2.0.3 does, before writing files.

    ``ref = wav.mean(0)``; ``wav = (wav - ref.mean()) / ref.std()`` (unbiased std, no epsilon);
    ``apply_model``; ``sources * ref.std() + ref.mean()``. (The CLI then divides each stem by
    ``max(1.01 * max|stem|, 1)`` and quantises to int16: that is file output, not separation, and is left out.)

    Args:
        wav: ``(audio_channels, nb_timesteps)`` at ``config.samplerate``.
        silence_guard: if the mono mixture is constant (std zero, or below the rounding noise of its mean)
            every stem is that constant: digital silence gives silence. Upstream has no guard and returns NaN
            (0 / 0); ``False`` reproduces that exactly.
        the other arguments: as :func:`apply_model` (``split`` defaults to True, as the CLI's ``--split``).

    Returns:
        ``(nb_sources, audio_channels, nb_timesteps)``, float64.
    """
    wav = np.asarray(wav, dtype=np.float64)
    ref = wav.mean(axis=0)  # mono mixture (L,)
    mean = ref.mean()
    std = ref.std(ddof=1) if ref.size > 1 else np.nan  # torch.std of one sample is NaN too
    if silence_guard and is_silent(mean, std, np.float64):
        return np.full((len(config.sources), *wav.shape), mean)
    with np.errstate(divide="ignore", invalid="ignore"):  # silence without the guard: NaN, as upstream
        normalised = (wav - mean) / std
    sources = apply_model(
        weights,
        config,
        normalised,
        shifts=shifts,
        split=split,
        overlap=overlap,
        transition_power=transition_power,
        segment_length=segment_length,
        rng=rng,
        resample_kernels=resample_kernels,
    )
    return sources * std + mean
