"""Data augmentations of both recipes, on NumPy arrays, drawn from a ``numpy.random.Generator``.

Open-Unmix (``openunmix/data.py`` of 1.3.0), applied to each source excerpt ``(channels, frames)`` before mixing:

- ``gain``: times ``g ~ U[0.25, 1.25)``;
- ``channelswap``: stereo channels swapped with probability 1/2;
- ``force_stereo``: a mono source duplicated, channels beyond two dropped.

Demucs v2 (``demucs/augment.py`` of 2.0.3), applied to a batch of sources ``(batch, sources, channels, frames)``
in this order (``demucs/__main__.py``): ``Shift`` (always), then with ``augment``: ``FlipSign``, ``FlipChannels``,
``Scale``, ``Remix``. Each transform is a pure function of the batch and of its random draws (``shift(wav,
offsets)``, ...), and a ``draw_*`` function makes the draws: the semantics can be checked against upstream's modules
with the same draws, and :func:`demucs_augment` composes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "UMX_AUGMENTATIONS",
    "augment_channelswap",
    "augment_force_stereo",
    "augment_gain",
    "demucs_augment",
    "draw_flip_channels",
    "draw_flip_sign",
    "draw_remix",
    "draw_scale",
    "draw_shift",
    "flip_channels",
    "flip_sign",
    "remix",
    "scale",
    "shift",
    "umx_source_augmentation",
]


# --- Open-Unmix: one source excerpt (channels, frames) -----------------------------------------------------------


def augment_gain(audio: np.ndarray, rng: np.random.Generator, low: float = 0.25, high: float = 1.25) -> np.ndarray:
    """``audio * g`` with ``g = low + u (high - low)``, ``u ~ U[0, 1)``."""
    g = low + rng.random() * (high - low)
    return (audio * np.float32(g)).astype(audio.dtype, copy=False)


def augment_channelswap(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stereo channels swapped with probability 1/2 (one draw only for stereo input, as upstream)."""
    if audio.shape[0] == 2 and rng.random() < 0.5:
        return audio[::-1].copy()
    return audio


def augment_force_stereo(audio: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Mono duplicated to two channels; channels beyond the second dropped (no randomness)."""
    if audio.shape[0] > 2:
        audio = audio[:2]
    if audio.shape[0] == 1:
        audio = np.repeat(audio, 2, axis=0)
    return audio


UMX_AUGMENTATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "gain": augment_gain,
    "channelswap": augment_channelswap,
    "force_stereo": augment_force_stereo,
}


def umx_source_augmentation(names: Sequence[str]) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    """The composition of the named augmentations, in order (upstream's ``aug_from_str``)."""
    unknown = [n for n in names if n not in UMX_AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown source augmentation(s) {unknown}; known: {sorted(UMX_AUGMENTATIONS)}")
    functions = [UMX_AUGMENTATIONS[n] for n in names]

    def apply(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for f in functions:
            audio = f(audio, rng)
        return audio

    return apply


# --- Demucs: a batch of sources (batch, sources, channels, frames) ----------------------------------------------


def _check4(wav: np.ndarray) -> tuple[int, int, int, int]:
    if wav.ndim != 4:
        raise ValueError(f"expected sources (batch, sources, channels, frames), got shape {wav.shape}")
    return wav.shape  # type: ignore[return-value]


def draw_shift(rng: np.random.Generator, batch: int, sources: int, shift: int) -> np.ndarray:
    """Offsets ``(batch, sources)`` in ``[0, shift)``."""
    return rng.integers(0, shift, size=(batch, sources))


def shift(wav: np.ndarray, amount: int, offsets: np.ndarray | None) -> np.ndarray:
    """``Shift(amount)``: keep ``frames - amount`` samples of each source from its own offset (``None``: eval mode,
    the first ``frames - amount``)."""
    batch, nb_sources, _, frames = _check4(wav)
    length = frames - amount
    if amount <= 0:
        return wav
    if offsets is None:
        return wav[..., :length]
    offsets = np.asarray(offsets)
    if offsets.shape != (batch, nb_sources) or offsets.min() < 0 or offsets.max() >= amount:
        raise ValueError(f"shift offsets must be ({batch}, {nb_sources}) integers in [0, {amount})")
    index = offsets[:, :, None, None] + np.arange(length)
    return np.take_along_axis(wav, np.broadcast_to(index, wav.shape[:3] + (length,)), axis=3)


def draw_flip_channels(rng: np.random.Generator, batch: int, sources: int) -> np.ndarray:
    """``left`` ``(batch, sources)`` in ``{0, 1}``: the channel that becomes the left one."""
    return rng.integers(0, 2, size=(batch, sources))


def flip_channels(wav: np.ndarray, left: np.ndarray) -> np.ndarray:
    """``FlipChannels``: output channels ``[left, 1 - left]`` per (item, source); only for stereo input."""
    _check4(wav)
    if wav.shape[2] != 2:
        return wav
    left = np.asarray(left)[:, :, None, None]
    return np.concatenate(
        [
            np.take_along_axis(wav, np.broadcast_to(ch, wav.shape[:2] + (1, wav.shape[3])), axis=2)
            for ch in (left, 1 - left)
        ],
        axis=2,
    )


def draw_flip_sign(rng: np.random.Generator, batch: int, sources: int) -> np.ndarray:
    """``signs`` ``(batch, sources)`` in ``{0, 1}`` (0 flips)."""
    return rng.integers(0, 2, size=(batch, sources))


def flip_sign(wav: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """``FlipSign``: times ``2 signs - 1`` per (item, source)."""
    _check4(wav)
    factor = (2 * np.asarray(signs) - 1).astype(wav.dtype)
    return wav * factor[:, :, None, None]


def draw_scale(rng: np.random.Generator, batch: int, sources: int, low: float, high: float) -> np.ndarray:
    """``scales`` ``(batch, sources)`` uniform in ``[low, high)``."""
    return rng.uniform(low, high, size=(batch, sources))


def scale(wav: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``Scale`` (probability 1, as the recipe): times ``scales`` per (item, source)."""
    _check4(wav)
    return wav * np.asarray(scales).astype(wav.dtype)[:, :, None, None]


def draw_remix(rng: np.random.Generator, batch: int, sources: int, group_size: int | None) -> np.ndarray:
    """Permutations ``(batch // group, group, sources)``: for each group and source, which item of the group its
    source comes from (``argsort`` of uniform draws, as upstream)."""
    group = group_size or batch
    if batch % group:
        raise ValueError(f"Remix: batch size {batch} must be divisible by the group size {group}")
    return np.argsort(rng.random((batch // group, group, sources)), axis=1, kind="stable")


def remix(wav: np.ndarray, permutations: np.ndarray) -> np.ndarray:
    """``Remix``: within each group of items, every source is taken from the item its permutation names."""
    batch, nb_sources, channels, frames = _check4(wav)
    groups, group, _ = permutations.shape
    if groups * group != batch:
        raise ValueError(f"Remix permutations {permutations.shape} do not cover a batch of {batch}")
    grouped = wav.reshape(groups, group, nb_sources, channels, frames)
    index = np.broadcast_to(permutations[..., None, None], grouped.shape)
    return np.take_along_axis(grouped, index, axis=1).reshape(wav.shape)


def demucs_augment(sources: np.ndarray, config, rng: np.random.Generator, train: bool = True) -> np.ndarray:
    """The Demucs v2 augmentation pipeline on a batch ``(B, S, C, valid_length + data_stride)``.

    Args:
        sources: a batch of :class:`~unmix.data.DemucsDataset` items.
        config: a :class:`~core_spec.training.DemucsTrainConfig` (``data_stride``, ``augment``, ``scale_min``,
            ``scale_max``, ``remix_group_size``).
        rng: the generator every draw comes from.
        train: ``False`` is upstream's eval mode: ``Shift`` keeps the first frames, nothing else happens.

    Returns:
        ``(B, S, C, valid_length)``, same dtype. ``Remix`` needs ``B`` divisible by the group size.
    """
    wav = np.asarray(sources)
    batch, nb_sources, _, _ = _check4(wav)
    stride = int(config.data_stride)
    wav = shift(wav, stride, draw_shift(rng, batch, nb_sources, stride) if train and stride > 0 else None)
    if not (train and config.augment):
        return wav
    wav = flip_sign(wav, draw_flip_sign(rng, batch, nb_sources))
    wav = flip_channels(wav, draw_flip_channels(rng, batch, nb_sources))
    wav = scale(wav, draw_scale(rng, batch, nb_sources, config.scale_min, config.scale_max))
    return remix(wav, draw_remix(rng, batch, nb_sources, config.remix_group_size))
