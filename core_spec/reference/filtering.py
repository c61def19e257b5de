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
"""

from __future__ import annotations

import numpy as np

__all__ = ["PI_FLOAT32", "expectation_maximization", "upstream_atan2", "wiener"]

PI_FLOAT32 = float(np.float32(np.pi))  # 2 * asin(1) evaluated in float32, as upstream's atan2 does


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
    if nb_channels == 1:
        return 1.0 / m
    if nb_channels == 2:
        det = m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
        inv_det = 1.0 / det
        out = np.empty_like(m)
        out[..., 0, 0] = inv_det * m[..., 1, 1]
        out[..., 1, 0] = -inv_det * m[..., 1, 0]
        out[..., 0, 1] = -inv_det * m[..., 0, 1]
        out[..., 1, 1] = inv_det * m[..., 0, 0]
        return out
    raise ValueError(f"the Wiener filter supports 1 or 2 channels (as upstream), got {nb_channels}")


def expectation_maximization(
    y: np.ndarray, x: np.ndarray, iterations: int = 2, eps: float = 1e-10, batch_size: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM refinement of source estimates.

    Args:
        y: initial source estimates, complex ``(nb_frames, nb_bins, nb_channels, nb_sources)``.
        x: mixture STFT, complex ``(nb_frames, nb_bins, nb_channels)``.
        iterations: number of EM iterations.
        eps: regularisation (upstream 1e-10).
        batch_size: frames per batch of the sums (upstream 200).

    Returns:
        ``(y, v, R)``: estimates ``(nb_frames, nb_bins, nb_channels, nb_sources)``, PSDs
        ``(nb_frames, nb_bins, nb_sources)`` and spatial covariances ``(nb_sources, nb_bins, C, C)``.
    """
    y = np.array(y, dtype=np.complex128)
    x = np.asarray(x, dtype=np.complex128)
    nb_frames, nb_bins, nb_channels, nb_sources = y.shape
    batch_size = batch_size or nb_frames
    regularization = np.sqrt(eps) * np.eye(nb_channels)
    v = np.zeros((nb_frames, nb_bins, nb_sources))
    R = np.zeros((nb_sources, nb_bins, nb_channels, nb_channels), dtype=np.complex128)
    batches = [slice(pos, min(nb_frames, pos + batch_size)) for pos in range(0, nb_frames, batch_size)]

    for _ in range(iterations):
        v = np.mean(y.real**2 + y.imag**2, axis=-2)  # (T, F, S)
        for j in range(nb_sources):
            acc = np.zeros((nb_bins, nb_channels, nb_channels), dtype=np.complex128)
            weight = np.full(nb_bins, eps)
            for t in batches:
                yj = y[t, ..., j]  # (t, F, C)
                acc = acc + np.sum(yj[..., :, None] * np.conj(yj[..., None, :]), axis=0)
                weight = weight + np.sum(v[t, ..., j], axis=0)
            R[j] = acc / weight[:, None, None]

        for t in batches:
            cxx = regularization + np.einsum("tfs,sfab->tfab", v[t], R)  # (t, F, C, C)
            inv_cxx = _invert(cxx)
            for j in range(nb_sources):
                gain = v[t, :, j, None, None] * (R[j][None] @ inv_cxx)  # (t, F, C, C)
                y[t, ..., j] = np.einsum("tfab,tfb->tfa", gain, x[t])
    return y, v, R


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
    """Wiener-filter source estimates from magnitude estimates and the mixture STFT.

    Args:
        targets_spectrograms: magnitudes ``(nb_frames, nb_bins, nb_channels or 1, nb_sources)``; one channel is
            broadcast over the mixture's channels.
        mix_stft: complex ``(nb_frames, nb_bins, nb_channels)``.
        iterations: EM iterations; 0 returns the initial estimate.
        softmask: initialise with ``mix * v_j / (eps + sum_k v_k)`` instead of ``v_j * exp(i angle(mix))``.
        residual: append ``mix - sum_j y_j`` as an extra source.
        atan2: ``"upstream"`` (default) or ``"exact"``; see the module docstring.

    Returns:
        complex ``(nb_frames, nb_bins, nb_channels, nb_sources [+ 1])``.
    """
    v = np.asarray(targets_spectrograms, dtype=np.float64)
    mix = np.asarray(mix_stft, dtype=np.complex128)
    if softmask:
        y = mix[..., None] * (v / (eps + np.sum(v, axis=-1, keepdims=True)))
    else:
        if atan2 == "upstream":
            angle, re = upstream_atan2(mix.imag, mix.real)
            mix = re + 1j * mix.imag
        elif atan2 == "exact":
            angle = np.arctan2(mix.imag, mix.real)
        else:
            raise ValueError(f"atan2 must be 'upstream' or 'exact', got {atan2!r}")
        angle = angle[..., None]
        y = v * np.cos(angle) + 1j * (v * np.sin(angle))
    y = np.broadcast_to(y, mix.shape + (v.shape[-1],))

    if residual:
        y = np.concatenate([y, mix[..., None] - y.sum(axis=-1, keepdims=True)], axis=-1)
    if iterations == 0:
        return np.array(y)

    max_abs = max(1.0, float(np.abs(mix).max()) / scale_factor)
    y = expectation_maximization(y / max_abs, mix / max_abs, iterations, eps=eps)[0]
    return y * max_abs
