"""The layers both networks are made of, in float64 NumPy, with PyTorch's weight layouts and semantics.

Written for reading: each function is the textbook formula with the layout spelt out.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
    "BATCH_NORM_EPS",
    "BATCH_NORM_MOMENTUM",
    "NORM_EPS",
    "batch_norm",
    "batch_norm_train",
    "conv1d",
    "conv2d",
    "conv_transpose1d",
    "conv_transpose2d",
    "gelu",
    "glu",
    "group_norm",
    "layer_norm",
    "linear",
    "lstm",
    "sigmoid",
]

BATCH_NORM_EPS = 1e-5  # torch.nn.BatchNorm1d default (Keras's default is 1e-3: ports must set it)
# torch.nn.BatchNorm1d default: running = (1 - momentum) running + momentum batch (Keras/Flax "momentum" is 1 - this)
BATCH_NORM_MOMENTUM = 0.1


# torch.nn.GroupNorm / LayerNorm default eps (HTDemucs never changes it)
NORM_EPS = 1e-5


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """``x @ weight.T + bias``; ``weight`` is ``(out_features, in_features)`` as in ``torch.nn.Linear``."""
    y = x @ _f64(weight).T
    return y if bias is None else y + _f64(bias)


def batch_norm(x: np.ndarray, w: Mapping[str, np.ndarray], prefix: str, eps: float = BATCH_NORM_EPS) -> np.ndarray:
    """Eval-mode batch norm over the last axis: ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``."""
    mean, var = _f64(w[f"{prefix}.running_mean"]), _f64(w[f"{prefix}.running_var"])
    return (x - mean) / np.sqrt(var + eps) * _f64(w[f"{prefix}.weight"]) + _f64(w[f"{prefix}.bias"])


def batch_norm_train(
    x: np.ndarray,
    w: Mapping[str, np.ndarray],
    prefix: str,
    stats: dict[str, np.ndarray],
    eps: float = BATCH_NORM_EPS,
    momentum: float = BATCH_NORM_MOMENTUM,
) -> np.ndarray:
    """Train-mode batch norm over the rows of ``x (N, F)``: the batch's mean and biased variance normalise;
    ``stats`` receives the running statistics after the update (``{prefix}.running_mean`` / ``_var``, the
    variance unbiased by ``N / (N - 1)``), as ``torch.nn.BatchNorm1d`` in training."""
    mean = x.mean(axis=0)
    var = x.var(axis=0)
    n = x.shape[0]
    stats[f"{prefix}.running_mean"] = (1 - momentum) * w[f"{prefix}.running_mean"] + momentum * mean
    stats[f"{prefix}.running_var"] = (1 - momentum) * w[f"{prefix}.running_var"] + momentum * var * n / (n - 1)
    return (x - mean) / np.sqrt(var + eps) * _f64(w[f"{prefix}.weight"]) + _f64(w[f"{prefix}.bias"])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _lstm_direction(x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """One direction of one layer: ``x (T, B, I)`` -> hidden states ``(T, B, H)``; zero initial state.

    Gate rows of ``w_ih (4H, I)`` / ``w_hh (4H, H)`` are the blocks ``[i | f | g | o]`` (PyTorch order).
    """
    nb_frames, nb_samples, _ = x.shape
    hidden = w_hh.shape[1]
    h = np.zeros((nb_samples, hidden))
    c = np.zeros((nb_samples, hidden))
    x_proj = x @ w_ih.T + bias  # input projection of every step at once: (T, B, 4H)
    out = np.empty((nb_frames, nb_samples, hidden))
    for t in range(nb_frames):
        gates = x_proj[t] + h @ w_hh.T
        i = sigmoid(gates[:, 0 * hidden : 1 * hidden])
        f = sigmoid(gates[:, 1 * hidden : 2 * hidden])
        g = np.tanh(gates[:, 2 * hidden : 3 * hidden])
        o = sigmoid(gates[:, 3 * hidden : 4 * hidden])
        c = f * c + i * g
        h = o * np.tanh(c)
        out[t] = h
    return out


def lstm(x: np.ndarray, w: Mapping[str, np.ndarray], prefix: str, nb_layers: int, bidirectional: bool) -> np.ndarray:
    """Multi-layer (bi)LSTM with ``torch.nn.LSTM`` names and semantics (eval mode: no dropout).

    Args:
        x: ``(nb_frames, nb_samples, input_size)``.
        w: weights named ``{prefix}weight_ih_l{k}[_reverse]`` etc.

    Returns:
        ``(nb_frames, nb_samples, nb_directions * hidden_size)``: forward and backward states concatenated per
        step. The backward direction runs over the whole sequence from its end.
    """
    for layer in range(nb_layers):
        outputs = []
        for suffix in ("", "_reverse") if bidirectional else ("",):
            key = f"l{layer}{suffix}"
            w_ih = _f64(w[f"{prefix}weight_ih_{key}"])
            w_hh = _f64(w[f"{prefix}weight_hh_{key}"])
            bias = _f64(w[f"{prefix}bias_ih_{key}"]) + _f64(w[f"{prefix}bias_hh_{key}"])
            if suffix:
                outputs.append(_lstm_direction(x[::-1], w_ih, w_hh, bias)[::-1])
            else:
                outputs.append(_lstm_direction(x, w_ih, w_hh, bias))
        x = np.concatenate(outputs, axis=-1)
    return x


def glu(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Gated linear unit: first half of ``axis`` (value) times sigmoid of the second half (gate)."""
    a, b = np.split(x, 2, axis=axis)
    return a * sigmoid(b)


def conv1d(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int = 1, padding: int = 0, dilation: int = 1
) -> np.ndarray:
    """1-D convolution (cross-correlation), ``torch.nn.Conv1d`` with zero ``padding`` on both sides and
    ``dilation``.

    ``y[b, o, t] = bias[o] + sum_{i, k} weight[o, i, k] * xp[b, i, t * stride + k * dilation]``, ``xp`` the input
    zero-padded by ``padding`` steps at each end.

    Args:
        x: ``(nb_samples, in_channels, length)``.
        weight: ``(out_channels, in_channels, kernel_size)``.

    Returns:
        ``(nb_samples, out_channels, (length + 2 padding - dilation (kernel_size - 1) - 1) // stride + 1)``.
    """
    weight = _f64(weight)
    kernel = weight.shape[-1]
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    span = dilation * (kernel - 1) + 1  # input steps one output sees
    nb_out = (x.shape[-1] - span) // stride + 1
    idx = np.arange(nb_out)[:, None] * stride + np.arange(kernel) * dilation  # (nb_out, kernel)
    patches = x[:, :, idx]  # (B, in, nb_out, kernel)
    return np.einsum("bitk,oik->bot", patches, weight) + _f64(bias)[:, None]


def conv_transpose1d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int = 1) -> np.ndarray:
    """Transposed 1-D convolution, ``torch.nn.ConvTranspose1d`` with padding 0.

    Every input step ``t`` adds ``x[:, i, t] * weight[i, o, :]`` at output positions ``t * stride + k``.

    Args:
        x: ``(nb_samples, in_channels, length)``.
        weight: ``(in_channels, out_channels, kernel_size)`` (PyTorch's transposed-convolution layout).

    Returns:
        ``(nb_samples, out_channels, (length - 1) * stride + kernel_size)``.
    """
    weight = _f64(weight)
    nb_samples, _, length = x.shape
    kernel = weight.shape[-1]
    contrib = np.einsum("bit,iok->botk", x, weight)  # (B, out, length, kernel)
    y = np.zeros((nb_samples, weight.shape[1], (length - 1) * stride + kernel))
    for k in range(kernel):
        y[:, :, k : k + (length - 1) * stride + 1 : stride] += contrib[..., k]
    return y + _f64(bias)[:, None]


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """An ``int`` or a pair, as PyTorch's 2-D layers take ``stride`` / ``padding`` (height, width)."""
    pair = (value, value) if isinstance(value, int | np.integer) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair (height, width), got {value!r}")
    return int(pair[0]), int(pair[1])


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> np.ndarray:
    """2-D convolution (cross-correlation), ``torch.nn.Conv2d`` with zero ``padding`` (height, width) on both
    sides of each axis.

    ``y[b, o, h, v] = bias[o] + sum_{i, k, l} weight[o, i, k, l] * xp[b, i, h * sh + k, v * sw + l]``.

    Args:
        x: ``(nb_samples, in_channels, height, width)``.
        weight: ``(out_channels, in_channels, kernel_h, kernel_w)``.
        stride, padding: an int or a pair ``(height, width)``.

    Returns:
        ``(nb_samples, out_channels, (height + 2 ph - kernel_h) // sh + 1, (width + 2 pw - kernel_w) // sw + 1)``.
    """
    weight = _f64(weight)
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    kh, kw = weight.shape[-2:]
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    nb_h = (x.shape[-2] - kh) // sh + 1
    nb_w = (x.shape[-1] - kw) // sw + 1
    rows = np.arange(nb_h)[:, None] * sh + np.arange(kh)  # (nb_h, kernel_h)
    cols = np.arange(nb_w)[:, None] * sw + np.arange(kw)  # (nb_w, kernel_w)
    patches = x[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # (B, in, nb_h, nb_w, kernel_h, kernel_w)
    return np.einsum("bihwkl,oikl->bohw", patches, weight, optimize=True) + _f64(bias)[:, None, None]


def conv_transpose2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> np.ndarray:
    """Transposed 2-D convolution, ``torch.nn.ConvTranspose2d`` (no output padding, no dilation).

    Every input position ``(h, v)`` adds ``x[:, i, h, v] * weight[i, o, :, :]`` at output positions
    ``(h * sh + k, v * sw + l)``; ``padding`` then removes ``ph`` rows / ``pw`` columns at each end.

    Args:
        x: ``(nb_samples, in_channels, height, width)``.
        weight: ``(in_channels, out_channels, kernel_h, kernel_w)`` (PyTorch's transposed-convolution layout).
        stride, padding: an int or a pair ``(height, width)``.

    Returns:
        ``(nb_samples, out_channels, (height - 1) sh + kernel_h - 2 ph, (width - 1) sw + kernel_w - 2 pw)``.
    """
    weight = _f64(weight)
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    nb_samples, _, height, width = x.shape
    kh, kw = weight.shape[-2:]
    contrib = np.einsum("bihv,iokl->bohvkl", x, weight, optimize=True)  # (B, out, height, width, kh, kw)
    full_h, full_w = (height - 1) * sh + kh, (width - 1) * sw + kw
    y = np.zeros((nb_samples, weight.shape[1], full_h, full_w))
    for k in range(kh):
        for j in range(kw):
            y[:, :, k : k + (height - 1) * sh + 1 : sh, j : j + (width - 1) * sw + 1 : sw] += contrib[..., k, j]
    y = y[:, :, ph : full_h - ph, pw : full_w - pw]
    return y + _f64(bias)[:, None, None]


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, ``x * Phi(x) = x / 2 * (1 + erf(x / sqrt 2))`` (``torch.nn.functional.gelu``'s default; not the
    tanh approximation, which ``jax.nn.gelu`` uses by default)."""
    from scipy.special import erf  # here, not at the top: importing scipy.special costs every command 0.3 s

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = NORM_EPS) -> np.ndarray:
    """``torch.nn.LayerNorm(dim)`` over the last axis: biased variance, ``eps`` inside the square root.

    Args:
        x: ``(..., dim)``; weight, bias: ``(dim,)``.
    """
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * _f64(weight) + _f64(bias)


def group_norm(
    x: np.ndarray, num_groups: int, weight: np.ndarray, bias: np.ndarray, eps: float = NORM_EPS
) -> np.ndarray:
    """``torch.nn.GroupNorm(num_groups, C)`` on channel-first ``x (B, C, *rest)``.

    The statistics (mean, biased variance) are over each group's ``C / num_groups`` channels and every position of
    ``rest``, per batch item; the affine ``weight`` / ``bias`` ``(C,)`` are per channel. ``num_groups=1`` normalises
    each item over all its channels and positions (HTDemucs's DConv norms and the transformer's ``norm_out``).
    """
    b, c = x.shape[:2]
    if c % num_groups:
        raise ValueError(f"group_norm: {c} channels do not split into {num_groups} groups")
    g = x.reshape(b, num_groups, -1)
    mean = g.mean(axis=-1, keepdims=True)
    var = ((g - mean) ** 2).mean(axis=-1, keepdims=True)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
    affine = (c,) + (1,) * (x.ndim - 2)
    return y * _f64(weight).reshape(affine) + _f64(bias).reshape(affine)
