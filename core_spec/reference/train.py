"""One training step in float64 NumPy: the losses of the three recipes and ``torch.optim.Adam`` with *coupled*
weight decay (``core_spec.training``: upstream's recipes). The train-mode forward of Open-Unmix differs from
:func:`core_spec.reference.umx.open_unmix` only in its batch norms (:func:`core_spec.reference.layers.batch_norm_train`;
upstream's LSTM dropout is off in the parity fixtures); HTDemucs's only in its length (``htdemucs(training=True)``:
the network runs at the input's length; the transformer's dropout is off in the parity fixtures).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..configs import HTDemucsConfig, STFTConfig
from ..shapes import center_trim
from .htdemucs import htdemucs
from .transforms import complex_norm, stft

__all__ = [
    "ADAM_BETAS",
    "ADAM_EPS",
    "AdamState",
    "adam_step",
    "demucs_loss",
    "htdemucs_loss",
    "htdemucs_train_loss",
    "spectrogram",
    "umx_loss",
]

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam defaults, as both upstream recipes
ADAM_EPS = 1e-8


def spectrogram(audio: np.ndarray, config: STFTConfig, mono: bool) -> np.ndarray:
    """Magnitude STFT ``(B, C, T)`` -> ``(B, C or 1, F, frames)`` (``mono``: channel mean of the magnitudes)."""
    return complex_norm(stft(audio, config.n_fft, config.n_hop, config.center, config.normalized), mono=mono)


def umx_loss(estimate: np.ndarray, target_audio: np.ndarray, config: STFTConfig, mono: bool) -> float:
    """``mse(estimate, |STFT(target)|)``: the network's magnitude ``(B, C|1, F, frames)`` against the target's."""
    return float(np.mean((estimate - spectrogram(target_audio, config, mono)) ** 2))


def demucs_loss(estimates: np.ndarray, sources: np.ndarray, loss: str = "l1") -> float:
    """Demucs's loss: estimates ``(B, S, C, T')`` against the centre ``T'`` samples of ``sources (B, S, C, T)``."""
    diff = estimates - center_trim(sources, estimates.shape[-1])
    if loss == "l1":
        return float(np.mean(np.abs(diff)))
    if loss == "mse":
        return float(np.mean(diff**2))
    raise ValueError(f"unknown loss {loss!r}: expected 'l1' or 'mse'")


def htdemucs_loss(
    estimates: np.ndarray, sources: np.ndarray, weights: Sequence[float] | None = None, loss: str = "l1"
) -> float:
    """demucs 4's training loss (``solver._run_one_epoch``): estimates and sources ``(B, S, C, T)``, same shape.

    ``l1``: ``|e - s|`` averaged over (channels, time), then over the batch -> one value per source ``(S,)``;
    ``mse``: ``(e - s)^2`` averaged over (channels, time) only -> ``(B, S)``. Then ``sum(loss * w) / sum(w)``
    with the per-source ``weights`` (``None``: all 1). Upstream's MSE is therefore *summed* over the batch (``B``
    times the batch mean), its L1 averaged: both reproduced as they are.
    """
    diff = np.asarray(estimates, np.float64) - np.asarray(sources, np.float64)
    if diff.ndim < 3:
        raise ValueError(f"estimates and sources must be (B, S, C, T), got {diff.shape}")
    dims = tuple(range(2, diff.ndim))
    if loss == "l1":
        per = np.mean(np.abs(diff), axis=dims).mean(axis=0)  # (S,)
    elif loss == "mse":
        per = np.mean(diff**2, axis=dims)  # (B, S)
    else:
        raise ValueError(f"unknown loss {loss!r}: expected 'l1' or 'mse'")
    w = np.ones(diff.shape[1]) if weights is None or len(weights) == 0 else np.asarray(weights, np.float64)
    if w.shape != (diff.shape[1],):
        raise ValueError(f"{len(w)} source weights for {diff.shape[1]} sources")
    return float(np.sum(per * w) / np.sum(w))


def htdemucs_train_loss(
    w: Mapping[str, np.ndarray],
    config: HTDemucsConfig,
    sources: np.ndarray,
    weights: Sequence[float] | None = None,
    loss: str = "l1",
    window: np.ndarray | None = None,
) -> float:
    """One HTDemucs training loss: ``mix = sources.sum(1)`` (``(B, S, C, T)`` -> ``(B, C, T)``), the training-mode
    forward (:func:`~core_spec.reference.htdemucs.htdemucs` with ``training=True``: at the input's length), then
    :func:`htdemucs_loss` against ``sources``."""
    sources = np.asarray(sources, np.float64)
    estimates = htdemucs(w, config, sources.sum(axis=1), window=window, training=True)
    return htdemucs_loss(estimates, sources, weights, loss)


AdamState = dict[str, tuple[np.ndarray, np.ndarray]]


def adam_step(
    params: Mapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
    lr: float,
    weight_decay: float = 0.0,
    step: int = 1,
    state: AdamState | None = None,
    betas: tuple[float, float] = ADAM_BETAS,
    eps: float = ADAM_EPS,
) -> tuple[dict[str, np.ndarray], AdamState]:
    """Step ``step`` (1-based) of ``torch.optim.Adam`` with coupled L2 decay, for the parameters in ``grads``.

    ``g = grad + weight_decay * p`` (the decay enters the moments: *not* AdamW); ``m = b1 m + (1 - b1) g``;
    ``v = b2 v + (1 - b2) g^2``; ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.

    Returns:
        ``(updated parameters, state)``; ``state`` maps a name to its moments ``(m, v)`` (fresh when ``None``).
    """
    b1, b2 = betas
    state = {} if state is None else state
    updated, new_state = {}, {}
    for name, grad in grads.items():
        g = grad + weight_decay * params[name]
        m, v = state.get(name, (np.zeros_like(g), np.zeros_like(g)))
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        updated[name] = params[name] - lr / (1 - b1**step) * m / (np.sqrt(v) / np.sqrt(1 - b2**step) + eps)
        new_state[name] = (m, v)
    return updated, new_state
