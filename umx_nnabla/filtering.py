"""Multichannel Wiener filter with EM refinement, ``openunmix.filtering`` semantics (``core_spec.reference.filtering``
is the spec), in two implementations with the same algorithm:

- :func:`wiener_planar` / :func:`expectation_maximization_planar` (and :func:`wiener` /
  :func:`expectation_maximization`, the same in upstream's layout): NumPy complex arrays in the input's precision
  (complex64 for the float32 separator). This is what :class:`umx_nnabla.separator.Separator` uses by default.
- :func:`wiener_graph`: an NNabla graph on planar (real, imaginary) Variables in upstream's layout, built from
  ``F.*`` functions (``F.atan``, ``F.where``, sums and products; the 2x2 inverse written out), fully static: even
  the data-dependent ``max_abs`` scaling is a graph node. ``Separator(wiener_backend="nnabla")`` selects it.

The filter is parameter-free post-processing and NNabla has no complex dtype, so NumPy is allowed here if it is
as fast. Measured with ``benchmarks/bench_nnabla.py`` (a per-port script since replaced by ``python -m benchmarks``;
micro-benchmark ``wiener``: one 300-frame chunk at umxhq shapes, 2 channels, 4 targets, niter 1, float32): NumPy 0.5-0.8
s, the NNabla graph 6-8 s (NNabla's CPU element-wise functions cost 25-70 ns per element, NumPy's ~1 ns). NumPy is the
default; both are tested against the spec and upstream on every Wiener case.

Layout ("planar", the spec's): sources and channels first, bins and frames last, ``(..., nb_sources, nb_channels,
nb_bins, nb_frames)``: what the separator holds between the networks and the inverse STFT; every leading index is
an independent call (its own ``max_abs``). The NumPy filter writes the ``1x1`` / ``2x2`` algebra out on whole
``(..., nb_sources, nb_bins, nb_frames)`` planes (the real diagonal and the one complex off-diagonal of each
Hermitian covariance), sums over all the frames of a call at once (upstream adds partial sums of ``batch_size``
frames: the same sums), pairwise (NumPy's summation of a contiguous axis: the filter makes its planes contiguous
first, frames innermost), and applies ``Cxx^-1`` to the mixture once, ``y_j = v_j R_j (Cxx^-1 x)``, instead of
forming every source's gain matrix ``v_j R_j Cxx^-1`` first (upstream): the same product, associated differently
(rounding only, amplified where ``Cxx`` is near-singular).

The upstream ``atan2`` quirk is reproduced by default (``atan2="upstream"``): every exactly-zero mixture bin gets
real part 1.0 for the rest of the filter, and phases of bins with a negative real part use pi rounded to float32.
"""

from __future__ import annotations

import nnabla as nn
import nnabla.functions as F
import numpy as np

from core_spec.reference.filtering import PI_FLOAT32, check_channels

__all__ = [
    "expectation_maximization",
    "expectation_maximization_planar",
    "initial_estimate",
    "upstream_atan2",
    "wiener",
    "wiener_graph",
    "wiener_planar",
]


# --- NumPy ------------------------------------------------------------------------------------------------------


def upstream_atan2(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """openunmix's element-wise ``atan2(y, x)`` in the inputs' precision; returns ``(angle, x_modified)`` with 1.0
    where ``x == y == 0`` (upstream writes that into its argument)."""
    x = np.where((x == 0) & (y == 0), x.dtype.type(1.0), x)
    pi = x.dtype.type(PI_FLOAT32)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.arctan(y / x)
    out = out + np.where((y >= 0) & (x < 0), pi, x.dtype.type(0))
    out = out - np.where((y < 0) & (x < 0), pi, x.dtype.type(0))
    out = np.where((y > 0) & (x == 0), pi / 2, out)
    out = np.where((y < 0) & (x == 0), -pi / 2, out)
    return out, x


def _real_dtype(z: np.ndarray) -> np.dtype:
    return np.dtype(np.float32) if z.dtype == np.complex64 else np.dtype(np.float64)


def expectation_maximization_planar(
    y: np.ndarray, x: np.ndarray, iterations: int = 2, eps: float = 1e-10, batch_size: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM refinement of source estimates.

    Args:
        y: initial estimates, complex ``(..., nb_sources, nb_channels, nb_bins, nb_frames)``.
        x: mixture STFT, complex ``(..., nb_channels, nb_bins, nb_frames)``.
        iterations: EM iterations.
        eps: regularisation (upstream 1e-10).
        batch_size: accepted for upstream's signature; the sums run over all frames at once (the same sums).

    Returns:
        ``(y, v, R)``: estimates like ``y``, PSDs ``(..., nb_sources, nb_bins, nb_frames)`` and spatial covariances
        ``(..., nb_sources, nb_channels, nb_channels, nb_bins)`` (of the last iteration; zeros without any).
    """
    del batch_size
    # frames innermost in memory: NumPy sums a contiguous last axis pairwise, but an axis with a larger stride (the
    # frames of upstream's layout seen through :func:`wiener`'s transposes) one plane after another, an error that
    # grows with the number of frames (float32, 173 frames of real music: 108.8 dB against upstream's 117.1)
    y = np.ascontiguousarray(y)
    x = np.ascontiguousarray(x, dtype=y.dtype)
    real = _real_dtype(y)
    nb_channels, nb_bins, nb_frames = y.shape[-3:]
    check_channels(nb_channels)
    reg, eps_ = real.type(np.sqrt(eps)), real.type(eps)
    v = np.zeros(y.shape[:-3] + (nb_bins, nb_frames), dtype=real)
    R = np.zeros(y.shape[:-3] + (nb_channels, nb_channels, nb_bins), dtype=y.dtype)
    for _ in range(iterations):
        power = [y[..., c, :, :].real ** 2 + y[..., c, :, :].imag ** 2 for c in range(nb_channels)]  # (..., S, F, T)
        v = power[0] if nb_channels == 1 else (power[0] + power[1]) / 2  # channel mean
        weight = (eps_ + v.sum(axis=-1))[..., None]  # (..., S, F, 1)
        if nb_channels == 1:
            r = power[0].sum(axis=-1, keepdims=True) / weight  # (..., S, F, 1), real
            vr = v * r
            cxx = reg + vr.sum(axis=-3)  # (..., F, T)
            z = (cxx / (cxx * cxx)) * x[..., 0, :, :]  # Cxx^-1 x
            y = (vr * z[..., None, :, :])[..., None, :, :]  # (..., S, 1, F, T)
            R = r[..., 0][..., None, None, :].astype(y.dtype)
            continue
        y0, y1 = y[..., 0, :, :], y[..., 1, :, :]  # (..., S, F, T)
        r00 = power[0].sum(axis=-1, keepdims=True) / weight  # (..., S, F, 1), real
        r11 = power[1].sum(axis=-1, keepdims=True) / weight
        r01 = (y0 * np.conj(y1)).sum(axis=-1, keepdims=True) / weight  # complex; r10 = conj(r01)
        # the mixture covariance, Hermitian: real diagonal, c10 = conj(c01)
        a00 = (v * r00).sum(axis=-3)  # (..., F, T)
        a11 = (v * r11).sum(axis=-3)
        c01 = (v * r01).sum(axis=-3)
        c00, c11 = reg + a00, reg + a11
        # det = c00 c11 - |c01|^2 (real) is at least reg (reg + a00 + a11), as a00 a11 >= |c01|^2; where it cancels
        # below that bound (equal channels, a mono file as stereo: 0 wherever a00 is ~2^24 times reg, and then
        # 0 / 0 below), the bound is the better value; elsewhere it is the determinant as computed
        det = np.maximum(c00 * c11 - (c01.real**2 + c01.imag**2), reg * (reg + a00 + a11))
        inv_det = det / (det * det)  # upstream's _inv(z) = conj(z) / |z|^2
        x0, x1 = x[..., 0, :, :], x[..., 1, :, :]
        # z = Cxx^-1 x with Cxx^-1 = inv_det [[c11, -c01], [-c10, c00]]
        z0 = ((inv_det * c11) * x0 - (inv_det * c01) * x1)[..., None, :, :]  # (..., 1, F, T)
        z1 = ((inv_det * c00) * x1 - (inv_det * np.conj(c01)) * x0)[..., None, :, :]
        # y_j = v_j R_j z: y_j0 = v_j (r00 z0 + r01 z1), y_j1 = v_j (r10 z0 + r11 z1)
        rows = ((r00, r01), (np.conj(r01), r11))
        y = np.stack([(ra * z0 + rb * z1) * v for ra, rb in rows], axis=-3).astype(y.dtype, copy=False)
        r00c, r01c, r11c = r00[..., 0].astype(y.dtype), r01[..., 0], r11[..., 0].astype(y.dtype)  # (..., S, F)
        R = np.stack([np.stack([r00c, r01c], -2), np.stack([np.conj(r01c), r11c], -2)], -3)  # (..., S, C, C, F)
    return y, v, R


def initial_estimate(
    targets_spectrograms: np.ndarray,
    mix_stft: np.ndarray,
    softmask: bool = False,
    residual: bool = False,
    eps: float = 1e-10,
    atan2: str = "upstream",
) -> tuple[np.ndarray, np.ndarray]:
    """The filter's starting point: the magnitudes with the mixture's phase (or a ratio mask of the mixture).

    Args:
        targets_spectrograms: magnitudes ``(..., nb_sources, nb_channels or 1, nb_bins, nb_frames)``.
        mix_stft: complex ``(..., nb_channels, nb_bins, nb_frames)``; its precision is the filter's.
        softmask: ``mix * v_j / (eps + sum_k v_k)`` instead of ``v_j exp(i angle(mix))``.
        residual: append ``mix - sum_j y_j`` as an extra source.
        atan2: ``"upstream"`` (default) or ``"exact"`` (``numpy.arctan2``, mixture untouched).

    Returns:
        ``(y, mix)``: complex estimates ``(..., nb_sources [+ 1], nb_channels, nb_bins, nb_frames)`` and the mixture
        the rest of the filter sees (upstream's atan2: 1.0 in the real part of exactly-zero bins).
    """
    mix = np.asarray(mix_stft)
    real = _real_dtype(mix)
    v = np.asarray(targets_spectrograms, dtype=real)
    if softmask:
        y = mix[..., None, :, :, :] * (v / (real.type(eps) + np.sum(v, axis=-4, keepdims=True)))
    else:
        if atan2 == "upstream":
            angle, re = upstream_atan2(mix.imag, mix.real)
            mix = (re + 1j * mix.imag).astype(mix.dtype)
        elif atan2 == "exact":
            angle = np.arctan2(mix.imag, mix.real)
        else:
            raise ValueError(f"atan2 must be 'upstream' or 'exact', got {atan2!r}")
        angle = angle[..., None, :, :, :]  # (..., 1, C, F, T)
        y = (v * np.cos(angle)) + 1j * (v * np.sin(angle))
    y = np.broadcast_to(y, y.shape[:-3] + mix.shape[-3:]).astype(mix.dtype)
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
        targets_spectrograms: magnitudes ``(..., nb_sources, nb_channels or 1, nb_bins, nb_frames)``; one channel
            is broadcast over the mixture's.
        mix_stft: complex ``(..., nb_channels, nb_bins, nb_frames)``; its precision is the filter's.
        iterations: EM iterations; 0 returns the initial estimate.
        softmask, residual, atan2: see :func:`initial_estimate`.
        scale_factor: the estimates are scaled by ``max_abs = max(1, max |x| / scale_factor)`` for EM.
        frame_mask: optional ``(..., nb_frames)`` booleans; frames outside it are padding, zeroed after the initial
            estimate: they add nothing to the EM sums and come out as zeros (the separator loops over its chunks
            and never pads; the argument is the spec's).

    Returns:
        complex ``(..., nb_sources [+ 1], nb_channels, nb_bins, nb_frames)``.
    """
    mix = np.asarray(mix_stft)
    if not np.iscomplexobj(mix):
        raise TypeError(f"mix_stft must be complex, got {mix.dtype}")
    check_channels(mix.shape[-3])
    y, mix = initial_estimate(targets_spectrograms, mix, softmask, residual, eps, atan2)
    if frame_mask is not None:
        keep = np.asarray(frame_mask, dtype=bool)[..., None, None, :]  # (..., 1, 1, T)
        mix = np.where(keep, mix, mix.dtype.type(0))
        y = np.where(keep[..., None, :, :, :], y, y.dtype.type(0))
    if iterations == 0:
        return y
    real = _real_dtype(mix)
    peak = np.abs(mix).max(axis=(-3, -2, -1)).astype(np.float64)  # (...,), one max_abs per leading index
    max_abs = np.maximum(1.0, peak / scale_factor).astype(real)[..., None, None, None]
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
        ``(..., nb_bins, nb_channels, nb_channels, nb_sources)`` (upstream's layout).
    """
    yp, v, R = expectation_maximization_planar(_reverse_last(np.asarray(y), 4), _reverse_last(np.asarray(x), 3),
                                               iterations, eps, batch_size)  # fmt: skip
    nd = R.ndim  # (..., S, C, C, F) -> (..., F, C, C, S)
    return _reverse_last(yp, 4), _reverse_last(v, 3), R.transpose(*range(nd - 4), nd - 1, nd - 3, nd - 2, nd - 4)


# --- NNabla graph -----------------------------------------------------------------------------------------------


def _graph_atan2(y: nn.Variable, x: nn.Variable) -> tuple[nn.Variable, nn.Variable]:
    """:func:`upstream_atan2` as a graph: ``(angle, x_modified)``."""
    zero = F.logical_and(F.equal_scalar(x, 0.0), F.equal_scalar(y, 0.0))
    x = x + zero
    angle = F.atan(y / x)
    negative_x = F.less_scalar(x, 0.0)
    upper = F.greater_equal_scalar(y, 0.0)
    angle = (
        angle
        + F.logical_and(upper, negative_x) * PI_FLOAT32
        - F.logical_and(F.logical_not(upper), negative_x) * PI_FLOAT32
    )
    on_axis = F.equal_scalar(x, 0.0)
    half_pi = F.constant(PI_FLOAT32 / 2, x.shape)
    angle = F.where(F.logical_and(F.greater_scalar(y, 0.0), on_axis), half_pi, angle)
    angle = F.where(F.logical_and(F.less_scalar(y, 0.0), on_axis), -half_pi, angle)
    return angle, x


def _em_graph(
    yr: nn.Variable, yi: nn.Variable, xr: nn.Variable, xi: nn.Variable, iterations: int, eps: float
) -> tuple[nn.Variable, nn.Variable]:
    """:func:`expectation_maximization` on planar Variables ``y (T, F, C, S)``, ``x (T, F, C)``."""
    nb_frames, nb_bins, nb_channels, nb_sources = yr.shape
    reg = float(np.sqrt(eps))
    eye = nn.Variable.from_numpy_array(reg * np.eye(nb_channels, dtype=np.float32)[None, None], need_grad=False)
    for _ in range(iterations):
        v = F.mean(yr * yr + yi * yi, axis=2)  # (T, F, S)
        weight = F.reshape(F.sum(v, axis=0) + eps, (nb_bins, 1, 1, nb_sources))
        ar, ai = (F.reshape(a, (nb_frames, nb_bins, nb_channels, 1, nb_sources)) for a in (yr, yi))
        br, bi = (F.reshape(a, (nb_frames, nb_bins, 1, nb_channels, nb_sources)) for a in (yr, yi))
        rr = F.sum(ar * br + ai * bi, axis=0) / weight  # R = sum_t y_a conj(y_b) / weight: (F, C, C, S)
        ri = F.sum(ai * br - ar * bi, axis=0) / weight
        vv = F.reshape(v, (nb_frames, nb_bins, 1, 1, nb_sources))
        cr = F.sum(vv * F.reshape(rr, (1, *rr.shape)), axis=4) + eye  # (T, F, C, C)
        ci = F.sum(vv * F.reshape(ri, (1, *ri.shape)), axis=4)
        if nb_channels == 1:  # z = x / Cxx = x conj(Cxx) / |Cxx|^2
            cr, ci = F.reshape(cr, xr.shape), F.reshape(ci, xr.shape)
            den = cr * cr + ci * ci
            zr, zi = (xr * cr + xi * ci) / den, (xi * cr - xr * ci) / den
        else:
            (c00r, c01r), (c10r, c11r) = (F.split(row, axis=2) for row in F.split(cr, axis=2))
            (c00i, c01i), (c10i, c11i) = (F.split(row, axis=2) for row in F.split(ci, axis=2))
            det_r = c00r * c11r - c00i * c11i - (c01r * c10r - c01i * c10i)
            det_i = c00r * c11i + c00i * c11r - (c01r * c10i + c01i * c10r)
            den = det_r * det_r + det_i * det_i
            inv_r, inv_i = det_r / den, -det_i / den
            x0r, x1r = F.split(xr, axis=2)
            x0i, x1i = F.split(xi, axis=2)
            # a = c11 x0 - c01 x1, b = c00 x1 - c10 x0, then z = inv_det * (a, b)
            a_r = c11r * x0r - c11i * x0i - (c01r * x1r - c01i * x1i)
            a_i = c11r * x0i + c11i * x0r - (c01r * x1i + c01i * x1r)
            b_r = c00r * x1r - c00i * x1i - (c10r * x0r - c10i * x0i)
            b_i = c00r * x1i + c00i * x1r - (c10r * x0i + c10i * x0r)
            zr = F.stack(inv_r * a_r - inv_i * a_i, inv_r * b_r - inv_i * b_i, axis=2)
            zi = F.stack(inv_r * a_i + inv_i * a_r, inv_r * b_i + inv_i * b_r, axis=2)
        zr = F.reshape(zr, (nb_frames, nb_bins, 1, nb_channels, 1))
        zi = F.reshape(zi, (nb_frames, nb_bins, 1, nb_channels, 1))
        rr5, ri5 = F.reshape(rr, (1, *rr.shape)), F.reshape(ri, (1, *ri.shape))
        v4 = F.reshape(v, (nb_frames, nb_bins, 1, nb_sources))
        yr = F.sum(rr5 * zr - ri5 * zi, axis=3) * v4  # y_j[a] = v_j sum_b R_j[a, b] z[b]
        yi = F.sum(rr5 * zi + ri5 * zr, axis=3) * v4
    return yr, yi


def wiener_graph(
    v: nn.Variable,
    mix_re: nn.Variable,
    mix_im: nn.Variable,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    scale_factor: float = 10.0,
    eps: float = 1e-10,
    atan2: str = "upstream",
) -> tuple[nn.Variable, nn.Variable]:
    """:func:`wiener` as an NNabla graph.

    Args:
        v: magnitudes ``(nb_frames, nb_bins, nb_channels or 1, nb_sources)``.
        mix_re, mix_im: the mixture STFT ``(nb_frames, nb_bins, nb_channels)``.

    Returns:
        ``(re, im)``, each ``(nb_frames, nb_bins, nb_channels, nb_sources [+ 1])``.
    """
    nb_frames, nb_bins, nb_channels = mix_re.shape
    shape = (nb_frames, nb_bins, nb_channels, v.shape[-1])
    if softmask:
        ratio = v / (F.sum(v, axis=3, keepdims=True) + eps)
        yr = F.broadcast(F.reshape(mix_re, (*mix_re.shape, 1)) * ratio, shape)
        yi = F.broadcast(F.reshape(mix_im, (*mix_im.shape, 1)) * ratio, shape)
    else:
        if atan2 == "upstream":
            angle, mix_re = _graph_atan2(mix_im, mix_re)
        elif atan2 == "exact":
            angle = F.atan2(mix_im, mix_re)
        else:
            raise ValueError(f"atan2 must be 'upstream' or 'exact', got {atan2!r}")
        angle = F.reshape(angle, (*angle.shape, 1))
        yr = F.broadcast(v * F.cos(angle), shape)
        yi = F.broadcast(v * F.sin(angle), shape)
    if residual:
        yr = F.concatenate(yr, F.reshape(mix_re, (*mix_re.shape, 1)) - F.sum(yr, axis=3, keepdims=True), axis=3)
        yi = F.concatenate(yi, F.reshape(mix_im, (*mix_im.shape, 1)) - F.sum(yi, axis=3, keepdims=True), axis=3)
    if iterations == 0:
        return yr, yi
    peak = F.pow_scalar(F.max(mix_re * mix_re + mix_im * mix_im), 0.5)
    max_abs = F.reshape(F.maximum_scalar(peak / scale_factor, 1.0), (1, 1, 1))
    yr, yi = _em_graph(
        yr / F.reshape(max_abs, (1, 1, 1, 1)),
        yi / F.reshape(max_abs, (1, 1, 1, 1)),
        mix_re / max_abs,
        mix_im / max_abs,
        iterations,
        eps,
    )
    scale = F.reshape(max_abs, (1, 1, 1, 1))
    return yr * scale, yi * scale
