"""HTDemucs on whole tracks: ``demucs.apply.apply_model`` of demucs 4.1.0 with bags (:class:`BagOfModels`), and the
track normalisation of its separation API (:func:`separate_track`).

The spec is :mod:`core_spec.reference.htdemucs_apply` (its docstring has the three nested cases, in demucs 4's
order): random shifts around the split (``shifts > 0``, offsets in ``[0, 0.5 s]``), the split into segments of the
model's 7.8-s training segment (or ``segment``) overlap-added with the full triangle, and each chunk padded to the
network's length with real neighbouring samples, then centre-trimmed. A bag runs every model on the same arguments
(each drawing its own shifts, in model order) and takes per source the weighted mean of the models' estimates.

As the spec, the shift offsets come from ``rng.integers(0, max_shift + 1)`` (a seeded ``numpy.random.Generator``
unless given), not from upstream's unseeded ``random.randint``. The overlap-add runs in the track's dtype (upstream:
torch's default dtype, float32 unless set).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core_spec import shapes
from core_spec.configs import BagConfig, segment_fraction
from core_spec.reference.htdemucs_apply import SEPARATE_EPS, bag_models
from core_spec.shapes import ShiftDraws

from ._device import to_tensor
from .htdemucs import HTDemucs
from .weights import prepare_state_dict

__all__ = ["SEPARATE_EPS", "BagOfModels", "apply_model", "bag_models", "separate_track"]


@dataclass(frozen=True)
class _Chunk:
    """``TensorChunk``: the samples ``[offset, offset + length)`` of ``tensor (B, C, total)``."""

    tensor: Tensor
    offset: int
    length: int

    @classmethod
    def of(cls, tensor: Tensor) -> _Chunk:
        return cls(tensor, 0, tensor.shape[-1])

    def sub(self, offset: int, length: int) -> _Chunk:
        """A chunk of this chunk (the same tensor at the summed offset), ``length`` cut to what it holds."""
        if not 0 <= offset < self.length:
            raise ValueError(f"chunk offset {offset} outside a chunk of {self.length} samples")
        return _Chunk(self.tensor, self.offset + offset, min(self.length - offset, length))

    def padded(self, target_length: int) -> Tensor:
        """``(B, C, target_length)`` centred on the chunk, real samples of the tensor where it has some."""
        win = shapes.chunk_window(self.tensor.shape[-1], self.offset, self.length, target_length)
        return F.pad(self.tensor[..., win.start : win.stop], (win.pad_left, win.pad_right))


@dataclass(frozen=True)
class _Run:
    """What every level of the recursion shares for one model."""

    model: HTDemucs
    rng: ShiftDraws
    segment: Fraction | None  # apply_model's ``segment`` argument
    overlap: float
    transition_power: float


def _apply_valid(run: _Run, chunk: _Chunk) -> Tensor:
    """Case 3: pad to the network's length (real neighbours first), run it, centre-trim to the chunk."""
    model = run.model
    trained = segment_fraction(model.segment) if model.use_train_segment else None
    target = shapes.htdemucs_chunk_target(chunk.length, model.samplerate, run.segment, trained)
    out = model(chunk.padded(target))
    start, stop = shapes.center_trim_bounds(out.shape[-1], chunk.length)
    return out[..., start:stop]


def _apply_split(run: _Run, chunk: _Chunk) -> Tensor:
    """Case 2: overlap-add of case 3 on segments of the chunk (full triangle, over ``sum`` of the weights)."""
    model, track = run.model, chunk.tensor
    segment = run.segment if run.segment is not None else model.segment
    segment_length = int(model.samplerate * segment)
    _, offsets = shapes.segment_offsets(chunk.length, segment_length, run.overlap)
    weight = torch.from_numpy(shapes.transition_weight(segment_length, run.transition_power))
    weight = weight.to(device=track.device, dtype=track.dtype)
    out = track.new_zeros((track.shape[0], len(model.sources), track.shape[1], chunk.length))
    sum_weight = track.new_zeros(chunk.length)
    for offset in offsets:
        chunk_out = _apply_valid(run, chunk.sub(offset, segment_length))
        n = chunk_out.shape[-1]
        out[..., offset : offset + n] += weight[:n] * chunk_out
        sum_weight[offset : offset + n] += weight[:n]
    return out.div_(sum_weight)  # in place: a track-sized array less at the peak


def _apply_one(run: _Run, mix: Tensor, shifts: int, split: bool) -> Tensor:
    """One model: case 1 (shifts) around case 2 (``split``) or 3."""
    inner = _apply_split if split else _apply_valid
    if not shifts:
        return inner(run, _Chunk.of(mix))
    length = mix.shape[-1]
    shift = shapes.max_shift(run.model.samplerate)
    padded = _Chunk.of(mix).padded(length + 2 * shift)  # a new tensor: padding beyond it is zeros
    out = mix.new_zeros((mix.shape[0], len(run.model.sources), mix.shape[1], length))
    for _ in range(shifts):
        offset = int(run.rng.integers(0, shift + 1))  # upstream: random.randint(0, max_shift), unseeded
        out += inner(run, _Chunk(padded, offset, length + shift - offset))[..., shift - offset :]
    return out.div_(shifts)


class BagOfModels(nn.Module):
    """A bag of HTDemucs models (``demucs.apply.BagOfModels``): ``models`` is an ``nn.ModuleList``, so the state
    dict is ``models.<i>.<name>`` as the canonical bag file; ``weights`` one row per model, one weight per source
    (all ones when ``None``); ``segment`` (seconds) replaces the segment of every model whose own is not shorter
    (4.1.0's rule: those models then run at the bag's length).

    Raises:
        ValueError: models with different sources, sample rates or audio channels, or weights of the wrong shape
            (:class:`core_spec.configs.BagConfig`).
    """

    def __init__(
        self,
        models: Sequence[HTDemucs],
        weights: Sequence[Sequence[float]] | None = None,
        segment: float | Fraction | str | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        seg = None if segment is None else segment_fraction(segment)
        pair = None if seg is None else (seg.numerator, seg.denominator)
        self._config = BagConfig(models=tuple(m.config for m in models), weights=weights, segment=pair)
        running, rows = bag_models(self._config)
        self.models = nn.ModuleList(models)
        for sub, run in zip(models, running, strict=True):
            sub.segment = run.segment_fraction
        self.weights: tuple[tuple[float, ...], ...] = tuple(tuple(r) for r in rows)
        self.sources = self._config.sources
        self.samplerate = self._config.samplerate
        self.audio_channels = models[0].audio_channels

    @classmethod
    def from_config(
        cls, config: BagConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> BagOfModels:
        """A bag of freshly initialised models (eval mode) described by ``config``."""
        models = [HTDemucs.from_config(m, device, dtype) for m in config.models]
        return cls(models, config.weights, config.segment).eval()

    @property
    def config(self) -> BagConfig:
        """The :class:`core_spec.configs.BagConfig` (each model's constructor arguments, the weights, the
        segment)."""
        return self._config

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a bag's state dict (``models.<i>.<name>``), checked against every model's inventory."""
        state = prepare_state_dict(self, state_dict, strict=strict)
        return super().load_state_dict(state, strict=False, assign=assign)

    def forward(self, mix: Tensor) -> Tensor:
        """Not a network: use :func:`apply_model` (upstream's ``BagOfModels.forward`` raises too)."""
        raise NotImplementedError("call umx_torch.htdemucs_apply.apply_model on a bag")


def apply_model(
    model: HTDemucs | BagOfModels,
    mix: Tensor | np.ndarray,
    shifts: int = 1,
    split: bool = True,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    segment: float | Fraction | str | tuple[int, int] | None = None,
    rng: ShiftDraws | int | None = None,
) -> Tensor:
    """Separate a (normalised) track with ``demucs.apply.apply_model`` semantics of demucs 4.1.0 (module docstring).

    Args:
        model: an :class:`~umx_torch.htdemucs.HTDemucs` or a :class:`BagOfModels` (eval mode).
        mix: ``(audio_channels, nb_timesteps)`` or ``(nb_samples, audio_channels, nb_timesteps)``; a NumPy array is
            moved to the model's dtype and device.
        shifts: random shifts to average (0: none; upstream's default is 1).
        split: process the track in segments with overlap-add.
        overlap: fraction of a segment shared with the next one.
        transition_power: exponent of the triangular cross-fade (>= 1).
        segment: seconds per segment; ``None``: each model's own (7.8 s). Longer than a model's training segment
            is an error.
        rng: a ``numpy.random.Generator`` or seed (0 if None) for the shifts, or anything whose
            ``integers(0, max_shift + 1)`` replays upstream's draws.

    Returns:
        ``(nb_sources, audio_channels, nb_timesteps)`` or ``(nb_samples, nb_sources, audio_channels,
        nb_timesteps)``, in the track's dtype.
    """
    shapes.check_transition_power(transition_power)
    models, weights = (model.models, model.weights) if isinstance(model, BagOfModels) else ([model], None)
    first = next(models[0].parameters())
    if not isinstance(mix, Tensor):
        mix = to_tensor(mix, first.dtype, first.device)
    unbatched = shapes.check_track(tuple(mix.shape), models[0].audio_channels)
    track = mix[None] if unbatched else mix
    seg = shapes.htdemucs_apply_segment(
        segment, [segment_fraction(m.segment) if m.use_train_segment else None for m in models]
    )
    draws = shapes.shift_draws(rng)
    nb_sources = len(models[0].sources)
    rows = torch.ones(len(models), nb_sources) if weights is None else torch.tensor(weights, dtype=torch.float64)
    rows = rows.to(device=track.device, dtype=track.dtype)
    with torch.no_grad():
        if weights is None:  # one model: its estimate as it is (x * 1 / 1 is x), no track-sized accumulator
            estimates = _apply_one(_Run(models[0], draws, seg, overlap, transition_power), track, shifts, split)
        else:
            estimates = track.new_zeros((track.shape[0], nb_sources, *track.shape[1:]))
            for sub, row in zip(models, rows, strict=True):
                run = _Run(sub, draws, seg, overlap, transition_power)
                estimates.addcmul_(_apply_one(run, track, shifts, split), row[None, :, None, None])
            estimates /= rows.sum(dim=0)[None, :, None, None]
    return estimates[0] if unbatched else estimates


def separate_track(
    model: HTDemucs | BagOfModels,
    wav: Tensor | np.ndarray,
    shifts: int = 1,
    split: bool = True,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    segment: float | Fraction | str | tuple[int, int] | None = None,
    rng: ShiftDraws | int | None = None,
) -> Tensor:
    """Separate a whole track as demucs 4.1.0's ``Separator.separate_tensor`` (and so its command) does:

    ``ref = wav.mean(0)``; ``wav = (wav - ref.mean()) / (ref.std() + 1e-8)`` (unbiased std, two passes);
    :func:`apply_model`; ``sources * (ref.std() + 1e-8) + ref.mean()``.

    Args:
        wav: ``(audio_channels, nb_timesteps)`` at the model's sample rate (a NumPy array is moved to the model's
            dtype and device).
        the others: as :func:`apply_model`.

    Returns:
        ``(nb_sources, audio_channels, nb_timesteps)``.
    """
    first = next(model.parameters())
    if not isinstance(wav, Tensor):
        wav = to_tensor(wav, first.dtype, first.device)
    ref = wav.mean(dim=0)
    mean = ref.mean()
    var = (ref - mean).square().sum() / (ref.numel() - 1) if ref.numel() > 1 else ref.new_tensor(float("nan"))
    std = var.sqrt() + SEPARATE_EPS
    out = apply_model(model, (wav - mean) / std, shifts, split, overlap, transition_power, segment, rng)
    return out * std + mean
