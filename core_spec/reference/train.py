"""One training step in float64 NumPy: the losses of both recipes and ``torch.optim.Adam`` with *coupled* weight
decay (``core_spec.training``: upstream's recipes). The train-mode forward of Open-Unmix differs from
:func:`core_spec.reference.umx.open_unmix` only in its batch norms (:func:`core_spec.reference.layers.batch_norm_train`;
upstream's LSTM dropout is off in the parity fixtures).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..configs import STFTConfig
from ..shapes import center_trim
from .transforms import complex_norm, stft

__all__ = ["ADAM_BETAS", "ADAM_EPS", "AdamState", "adam_step", "demucs_loss", "spectrogram", "umx_loss"]

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
