"""Multichannel Wiener filter with EM refinement, ``openunmix.filtering`` semantics, float64 complex NumPy.

Notation (per frame ``t``, bin ``f``): ``v_j`` the power spectral density of source ``j`` (channel mean of
``|y_j|^2``), ``R_j`` its ``C x C`` spatial covariance, ``Cxx = sqrt(eps) I + sum_j v_j R_j`` the mixture
covariance. One EM iteration updates ``v`` and ``R`` from the current estimates, then filters the mixture:
``y_j = v_j R_j Cxx^-1 x``.

Upstream details the spec keeps, because the outputs depend on them:

- ``eps = 1e-10``; regularisation ``sqrt(eps) = 1e-5`` on the diagonal of ``Cxx``; ``R_j`` divided by
  ``eps + sum_t v_j``;
- the ``C x C`` inverse is analytic (1x1: ``1/z``; 2x2: adjugate over determinant), without eps;
- the estimates are scaled by ``max_abs = max(1, max |x| / scale_factor)`` before EM and back after;
- ``R_j`` sums run over frame batches of ``batch_size`` (a memory device: the result is the same sum).

**The upstream atan2** (option ``atan2="upstream"``, the default). For the phase initialisation openunmix uses its
own element-wise ``atan2(y, x)``, which (1) writes ``x += 1`` where ``x == y == 0``, *in place on the mixture it
was given*, so every exactly-zero mixture bin has real part 1.0 for the rest of ``wiener`` (the residual, the
scaling and EM all see it), and (2) adds ``+-pi`` taken as ``2 asin(1)`` of a float32 tensor, i.e. ``pi`` rounded to
float32 (off by 8.7e-8 rad), to the phase of bins with negative real part. Non-residual targets are unaffected by
(1) (their magnitude is zero where the mixture is zero, and so is their gain); a residual source picks up
``1.0 * max_abs`` in such bins. ``atan2="exact"`` uses ``numpy.arctan2`` and leaves the mixture untouched.

**Layout.** The filter works in the "planar" layout ``(..., nb_sources, nb_channels, nb_bins, nb_frames)``: the
layout the separator holds between the networks and the inverse STFT, so nothing is transposed; every leading
index is an independent call (its own ``max_abs``): a batch, or the chunks of a track. :func:`wiener` and
:func:`expectation_maximization` take and return upstream's ``(nb_frames, nb_bins, nb_channels, nb_sources)``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "PI_FLOAT32",
    "check_channels",
    "expectation_maximization",
    "expectation_maximization_planar",
    "initial_estimate",
    "upstream_atan2",
    "wiener",
    "wiener_planar",
]

PI_FLOAT32 = float(np.float32(np.pi))  # 2 * asin(1) evaluated in float32, as upstream's atan2 does


def check_channels(nb_channels: int) -> None:
    """The filter (as upstream's) handles mono and stereo mixtures only."""
    if nb_channels not in (1, 2):
        raise ValueError(f"the Wiener filter supports 1 or 2 channels (as upstream), got {nb_channels}")


def upstream_atan2(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """openunmix's element-wise ``atan2``; returns ``(angle, x_modified)`` where ``x_modified`` has 1.0 where
    ``x == y == 0`` (upstream modifies its argument in place)."""
    x = x + ((x == 0) & (y == 0)) * 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.arctan(y / x)
    out = out + ((y >= 0) & (x < 0)) * PI_FLOAT32
    out = out - ((y < 0) & (x < 0)) * PI_FLOAT32
    out = np.where((y > 0) & (x == 0), PI_FLOAT32 / 2, out)
    out = np.where((y < 0) & (x == 0), -PI_FLOAT32 / 2, out)
    return out, x


def _invert(m: np.ndarray) -> np.ndarray:
    """Analytic inverse of the trailing ``(C, C)`` matrices, ``C`` in {1, 2}; no regularisation."""
    nb_channels = m.shape[-1]
    check_channels(nb_channels)
    if nb_channels == 1:
        return 1.0 / m
    det = m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
    inv_det = 1.0 / det
    out = np.empty_like(m)
    out[..., 0, 0] = inv_det * m[..., 1, 1]
    out[..., 1, 0] = -inv_det * m[..., 1, 0]
    out[..., 0, 1] = -inv_det * m[..., 0, 1]
    out[..., 1, 1] = inv_det * m[..., 0, 0]
    return out


def expectation_maximization_planar(
    y: np.ndarray, x: np.ndarray, iterations: int = 2, eps: float = 1e-10, batch_size: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM refinement of source estimates.

    Args:
        y: initial source estimates, complex ``(..., nb_sources, nb_channels, nb_bins, nb_frames)``.
        x: mixture STFT, complex ``(..., nb_channels, nb_bins, nb_frames)``.
        iterations: number of EM iterations.
        eps: regularisation (upstream 1e-10).
        batch_size: frames per batch of the sums (upstream 200: a memory device, rounding only).

    Returns:
        ``(y, v, R)``: estimates like ``y``, PSDs ``(..., nb_sources, nb_bins, nb_frames)`` and spatial
        covariances ``(..., nb_sources, nb_channels, nb_channels, nb_bins)`` (zeros without iterations).
    """
    y = np.array(y, dtype=np.complex128)
    x = np.asarray(x, dtype=np.complex128)
    nb_channels, nb_bins, nb_frames = y.shape[-3:]
    check_channels(nb_channels)
    regularization = np.sqrt(eps) * np.eye(nb_channels)
    v = np.zeros(y.shape[:-3] + y.shape[-2:])
    R = np.zeros(y.shape[:-3] + (nb_bins, nb_channels, nb_channels), dtype=np.complex128)  # (..., S, F, C, C)
    batch_size = batch_size or nb_frames
    batches = [slice(pos, min(nb_frames, pos + batch_size)) for pos in range(0, nb_frames, batch_size)]

    for _ in range(iterations):
        v = np.mean(y.real**2 + y.imag**2, axis=-3)  # (..., S, F, T)
        # R_j = sum_t y_j y_j^H / (eps + sum_t v_j), the sums taken batch by batch as upstream
        acc = np.zeros_like(R)
        weight = np.full(v.shape[:-1], eps)  # (..., S, F)
        for t in batches:
            yt = y[..., t]  # (..., S, C, F, t)
            acc = acc + np.einsum("...aft,...bft->...fab", yt, np.conj(yt))
            weight = weight + np.sum(v[..., t], axis=-1)
        R = acc / weight[..., None, None]

        for t in batches:
            # Cxx = sqrt(eps) I + sum_j v_j R_j, per frame and bin: (..., F, t, C, C)
            cxx = regularization + np.einsum("...sft,...sfab->...ftab", v[..., t], R)
            inv_cxx = _invert(cxx)
            # y_j = (v_j R_j Cxx^-1) x
            gain = v[..., t, None, None] * np.einsum("...sfac,...ftcb->...sftab", R, inv_cxx)  # (..., S, F, t, C, C)
            y[..., t] = np.einsum("...sftab,...bft->...saft", gain, x[..., t])
    return y, v, np.moveaxis(R, -3, -1)


def initial_estimate(
    targets_spectrograms: np.ndarray,
    mix_stft: np.ndarray,
    softmask: bool = False,
    residual: bool = False,
    eps: float = 1e-10,
    atan2: str = "upstream",
) -> tuple[np.ndarray, np.ndarray]:
    """The filter's starting point: the magnitudes given the mixture's phase (or a ratio mask of the mixture).

    Args:
        targets_spectrograms: magnitudes ``(..., nb_sources, nb_channels or 1, nb_bins, nb_frames)``.
        mix_stft: complex ``(..., nb_channels, nb_bins, nb_frames)``.
        softmask: ``mix * v_j / (eps + sum_k v_k)`` instead of ``v_j * exp(i angle(mix))``.
        residual: append ``mix - sum_j y_j`` as an extra source.
        atan2: ``"upstream"`` or ``"exact"`` (module docstring).

    Returns:
        ``(y, mix)``: complex estimates ``(..., nb_sources [+ 1], nb_channels, nb_bins, nb_frames)``, and the
        mixture the rest of the filter sees (with upstream's atan2: 1.0 in the real part of exactly-zero bins).
    """
    v = np.asarray(targets_spectrograms, dtype=np.float64)
    mix = np.asarray(mix_stft, dtype=np.complex128)
    if softmask:
        y = mix[..., None, :, :, :] * (v / (eps + np.sum(v, axis=-4, keepdims=True)))
    else:
        if atan2 == "upstream":
            angle, re = upstream_atan2(mix.imag, mix.real)
            mix = re + 1j * mix.imag
        elif atan2 == "exact":
            angle = np.arctan2(mix.imag, mix.real)
        else:
            raise ValueError(f"atan2 must be 'upstream' or 'exact', got {atan2!r}")
        angle = angle[..., None, :, :, :]
        y = v * np.cos(angle) + 1j * (v * np.sin(angle))
    y = np.broadcast_to(y, y.shape[:-3] + mix.shape[-3:])
    if residual:
        y = np.concatenate([y, (mix - y.sum(axis=-4))[..., None, :, :, :]], axis=-4)
    return y, mix


def wiener_planar(
    targets_spectrograms: np.ndarray,
    mix_stft: np.ndarray,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    scale_factor: float = 10.0,
    eps: float = 1e-10,
    atan2: str = "upstream",
    frame_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Wiener-filter source estimates from magnitude estimates and the mixture STFT.

    Args:
        targets_spectrograms: magnitudes ``(..., nb_sources, nb_channels or 1, nb_bins, nb_frames)``; one
            channel is broadcast over the mixture's channels.
        mix_stft: complex ``(..., nb_channels, nb_bins, nb_frames)``.
        iterations: EM iterations; 0 returns the initial estimate.
        softmask, residual, atan2: see :func:`initial_estimate`.
        scale_factor: the estimates are scaled by ``max_abs = max(1, max |x| / scale_factor)`` for EM.
        frame_mask: optional ``(..., nb_frames)`` booleans; frames outside the mask are padding (a track's last,
            shorter chunk filtered in a batch of full ones). They are zeroed after the initial estimate, add
            nothing to the EM sums and come out as zeros: the other frames are filtered as if they were absent.

    Returns:
        complex ``(..., nb_sources [+ 1], nb_channels, nb_bins, nb_frames)``.
    """
    mix = np.asarray(mix_stft, dtype=np.complex128)
    check_channels(mix.shape[-3])
    y, mix = initial_estimate(targets_spectrograms, mix, softmask, residual, eps, atan2)
    if frame_mask is not None:
        keep = np.asarray(frame_mask, dtype=bool)[..., None, None, :]  # (..., 1, 1, T)
        mix = np.where(keep, mix, 0)
        y = np.where(keep[..., None, :, :, :], y, 0)
    if iterations == 0:
        return np.array(y)
    max_abs = np.maximum(1.0, np.abs(mix).max(axis=(-3, -2, -1)) / scale_factor)[..., None, None, None]
    y = expectation_maximization_planar(y / max_abs[..., None, :, :, :], mix / max_abs, iterations, eps=eps)[0]
    return y * max_abs[..., None, :, :, :]


def _reverse_last(x: np.ndarray, n: int) -> np.ndarray:
    """Reverse the order of the last ``n`` axes (upstream's layout <-> the planar layout)."""
    lead = list(range(x.ndim - n))
    return x.transpose(*lead, *range(x.ndim - 1, x.ndim - n - 1, -1))


def wiener(
    targets_spectrograms: np.ndarray,
    mix_stft: np.ndarray,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    scale_factor: float = 10.0,
    eps: float = 1e-10,
    atan2: str = "upstream",
) -> np.ndarray:
    """:func:`wiener_planar` in upstream's layout (``openunmix.filtering.wiener``).

    Args:
        targets_spectrograms: magnitudes ``(..., nb_frames, nb_bins, nb_channels or 1, nb_sources)``.
        mix_stft: complex ``(..., nb_frames, nb_bins, nb_channels)``.

    Returns:
        complex ``(..., nb_frames, nb_bins, nb_channels, nb_sources [+ 1])``.
    """
    v = _reverse_last(np.asarray(targets_spectrograms), 4)
    mix = _reverse_last(np.asarray(mix_stft), 3)
    return _reverse_last(wiener_planar(v, mix, iterations, softmask, residual, scale_factor, eps, atan2), 4)


def expectation_maximization(
    y: np.ndarray, x: np.ndarray, iterations: int = 2, eps: float = 1e-10, batch_size: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`expectation_maximization_planar` in upstream's layout.

    Args:
        y: initial estimates, complex ``(..., nb_frames, nb_bins, nb_channels, nb_sources)``.
        x: mixture, complex ``(..., nb_frames, nb_bins, nb_channels)``.

    Returns:
        ``(y, v, R)``: estimates like ``y``, PSDs ``(..., nb_frames, nb_bins, nb_sources)`` and spatial covariances
        ``(..., nb_bins, nb_channels, nb_channels, nb_sources)``.
    """
    yp, v, R = expectation_maximization_planar(_reverse_last(np.asarray(y), 4), _reverse_last(np.asarray(x), 3),
                                               iterations, eps, batch_size)  # fmt: skip
    nd = R.ndim  # (..., S, C, C, F) -> (..., F, C, C, S)
    return _reverse_last(yp, 4), _reverse_last(v, 3), R.transpose(*range(nd - 4), nd - 1, nd - 3, nd - 2, nd - 4)
