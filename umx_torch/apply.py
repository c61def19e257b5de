"""Demucs's :func:`apply_model` and :func:`separate_track`: ``demucs.utils.apply_model`` and ``demucs/separate.py``
of demucs 2.0.3 (split into overlapping segments with a triangular cross-fade, random shifts, padding with real
neighbouring samples), with the chunk geometry of :mod:`core_spec.shapes` and the shifts drawn from a seeded
generator (``core_spec.reference.apply`` is the spec).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from core_spec import shapes
from core_spec.audio import prepare_audio
from core_spec.shapes import ShiftDraws

from ._device import to_numpy as _to_numpy
from ._device import to_tensor as _to_tensor
from .demucs import Demucs, center_trim

__all__ = ["apply_model", "separate_track"]


def _padded(track: Tensor, offset: int, length: int, target_length: int) -> Tensor:
    """``TensorChunk(track, offset, length).padded(target_length)``: real neighbours first, zeros beyond the ends."""
    win = shapes.chunk_window(track.shape[-1], offset, length, target_length)
    return F.pad(track[..., win.start : win.stop], (win.pad_left, win.pad_right))


def _apply_valid(model: Demucs, track: Tensor, offset: int, length: int) -> Tensor:
    """Pad the chunk to ``valid_length`` (real neighbours first), run the network, centre-trim to the chunk."""
    length = min(track.shape[-1] - offset, length)
    padded = _padded(track, offset, length, model.valid_length(length))
    return center_trim(model(padded), length)


def _apply_shifted(model: Demucs, track: Tensor, offset: int, length: int, shifts: int, rng: ShiftDraws) -> Tensor:
    """Average of ``shifts`` runs on randomly shifted windows (one plain run when ``shifts`` is 0)."""
    if not shifts:
        return _apply_valid(model, track, offset, length)
    length = min(track.shape[-1] - offset, length)
    max_shift = shapes.max_shift(model.samplerate)
    padded = _padded(track, offset, length, length + 2 * max_shift)  # a new tensor: zeros beyond it
    out: Tensor | None = None
    for _ in range(shifts):
        shift = int(rng.integers(0, max_shift + 1))  # upstream: random.randint(0, max_shift), unseeded
        shifted = _apply_valid(model, padded, shift, length + max_shift - shift)[..., max_shift - shift :]
        out = shifted if out is None else out + shifted
    assert out is not None
    return out / shifts


def apply_model(
    model: Demucs,
    mix: Tensor,
    shifts: int = 0,
    split: bool = False,
    overlap: float = 0.25,
    transition_power: float = 1.0,
    segment_length: int | None = None,
    rng: ShiftDraws | int | None = None,
) -> Tensor:
    """Apply Demucs to a (normalised) track with ``demucs.utils.apply_model`` semantics (demucs 2.0.3).

    Args:
        model: the network (eval mode).
        mix: ``(audio_channels, nb_timesteps)``, or a batch ``(nb_samples, audio_channels, nb_timesteps)``.
        shifts: random shifts to average (0: none).
        split: process segments of ``segment_length`` samples with a triangular overlap-add.
        overlap: fraction of a segment shared with the next.
        transition_power: exponent of the cross-fade weight (>= 1).
        segment_length: segment in samples (``model.segment_length``, 40 s for the released models, if None).
        rng: a ``numpy.random.Generator`` or a seed (0 if None) for the shifts, as the spec; anything with
            ``integers(low, high)`` works (e.g. a replay of upstream's ``random.randint`` draws).

    Returns:
        ``(nb_sources, audio_channels, nb_timesteps)`` (or with the batch dimension first), in ``mix``'s dtype.
        Overlap-add runs in that dtype (upstream accumulates in torch's default dtype, float32).
    """
    shapes.check_transition_power(transition_power)
    unbatched = shapes.check_track(tuple(mix.shape), model.audio_channels)
    track = mix[None] if unbatched else mix
    rng = shapes.shift_draws(rng)
    length = track.shape[-1]
    with torch.no_grad():
        if not split:
            out = _apply_shifted(model, track, 0, length, shifts, rng)
        else:
            segment = segment_length or model.segment_length
            _, offsets = shapes.segment_offsets(length, segment, overlap)
            weight = torch.from_numpy(shapes.transition_weight(segment, transition_power)).to(track.device, track.dtype)
            out = torch.zeros(track.shape[:1] + (len(model.sources),) + track.shape[1:], dtype=track.dtype,
                              device=track.device)  # fmt: skip
            sum_weight = torch.zeros(length, dtype=track.dtype, device=track.device)
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
    rng: ShiftDraws | int | None = None,
    silence_guard: bool = True,
    resample: bool = False,
) -> Tensor:
    """Separate whole tracks as ``demucs/separate.py`` of demucs 2.0.3, before writing files.

    Per track: ``ref = wav.mean(channels)``; ``wav = (wav - ref.mean()) / ref.std()`` (unbiased);
    :func:`apply_model`; ``sources * ref.std() + ref.mean()``.

    Args:
        model: the network, in the dtype and on the device to run.
        audio: NumPy array or tensor in any layout :func:`core_spec.audio.prepare_audio` accepts.
        sample_rate: its rate (``None``: the model's).
        silence_guard: a track whose mono downmix is constant comes back as that constant in every stem (digital
            silence gives silence); ``False`` reproduces upstream's 0 / 0 = NaN.
        resample: resample to the model's rate instead of refusing another rate.
        the others: as :func:`apply_model` (``split`` defaults to True, as the CLI).

    Returns:
        ``(nb_samples, nb_sources, audio_channels, nb_timesteps)``.
    """
    ref_param = next(model.parameters())
    rate = model.samplerate
    batch = prepare_audio(
        _to_numpy(audio), rate if sample_rate is None else sample_rate, rate, model.audio_channels, resample
    )
    wav = _to_tensor(batch, ref_param.dtype, ref_param.device)
    rng = shapes.shift_draws(rng)
    outputs = []
    dtype = np.dtype(str(wav.dtype).removeprefix("torch."))
    for track in wav:
        mono = track.mean(dim=0)
        mean, std = mono.mean(), mono.std()
        if silence_guard and shapes.is_silent(mean, std, dtype):
            outputs.append(torch.full((len(model.sources),) + tuple(track.shape), float(mean), dtype=wav.dtype,
                                      device=wav.device))  # fmt: skip
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
        )
        outputs.append(sources * std + mean)
    return torch.stack(outputs)
