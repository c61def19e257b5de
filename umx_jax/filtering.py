"""Multichannel Wiener filter with EM refinement (``openunmix.filtering`` semantics) as pure, jit-able functions.

Notation (per frame ``t``, bin ``f``): ``v_j`` the power spectral density of source ``j`` (channel mean of
``|y_j|^2``), ``R_j`` its ``C x C`` spatial covariance, ``Cxx = sqrt(eps) I + sum_j v_j R_j`` the mixture
covariance. One EM iteration re-estimates ``v`` and ``R`` from the current estimates, then filters the mixture,
``y_j = v_j R_j Cxx^-1 x``. The spec is ``core_spec.reference.filtering``.

How it is written for JAX:

- complex arrays (complex64 / complex128); the public functions also take upstream's real ``(..., 2)`` layout;
- no loop per frame, per source or per matrix entry: the ``1x1`` / ``2x2`` algebra is written out on whole
  ``(nb_bins, nb_frames)`` planes; ``Cxx^-1 x`` is computed once and shared by the sources (``v_j R_j (Cxx^-1 x)``
  rather than ``(v_j R_j Cxx^-1) x``: the same product, associated differently);
- the EM iterations are a ``lax.fori_loop`` (one compiled body whatever ``iterations`` is);
- every leading index is an independent call, with its own ``max_abs`` scaling and covariances: the separator
  filters all its ``wiener_win_len`` chunks in one call this way;
- the EM sums run over the whole chunk at once (upstream adds partial sums of ``batch_size`` frames: a memory
  device that changes rounding only; the argument is accepted for compatibility).

Kept from upstream because the outputs depend on it: ``eps = 1e-10``, ``sqrt(eps)`` on the diagonal, ``R_j``
divided by ``eps + sum_t v_j``, the analytic inverse without eps (``z / |z|^2``, as upstream's ``_inv``), the
``max_abs`` rescaling per call, and with ``atan2="upstream"`` (the default) upstream's ``atan2``: the real part of
every exactly-zero mixture bin becomes 1.0 for the rest of the call, and ``pi`` is rounded to float32.

Internal ("planar") layout: ``(..., nb_sources, nb_channels, nb_bins, nb_frames)``, or with ``time_axis=-2``
frame-major ``(..., nb_sources, nb_channels, nb_frames, nb_bins)``: the separator's layout, the one the STFT makes
and the inverse STFT takes without a transpose.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from core_spec.reference.filtering import PI_FLOAT32, check_channels

__all__ = [
    "PI_FLOAT32",
    "expectation_maximization",
    "expectation_maximization_planar",
    "initial_estimate",
    "phase_factors",
    "upstream_atan2",
    "wiener",
    "wiener_planar",
]


def upstream_atan2(y: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """openunmix's element-wise ``atan2(y, x)``, without its in-place write.

    Returns:
        ``(angle, x_modified)``: ``x_modified`` is ``x`` with 1.0 where ``x == y == 0`` (upstream writes that into
        its argument, i.e. into the mixture); ``pi`` is rounded to float32, as upstream's ``2 asin(1)``.
    """
    x = jnp.where((x == 0) & (y == 0), jnp.ones_like(x), x)
    pi = jnp.asarray(PI_FLOAT32, x.dtype)
    angle = jnp.arctan(y / x)
    angle = angle + jnp.where(x < 0, jnp.where(y >= 0, pi, -pi), jnp.zeros_like(x))
    on_axis = jnp.where(y > 0, pi / 2, jnp.where(y < 0, -pi / 2, jnp.zeros_like(x)))
    return jnp.where((x == 0) & (y != 0), on_axis, angle), x


def _power(z: jax.Array) -> jax.Array:
    return jnp.real(z) ** 2 + jnp.imag(z) ** 2


def _em_step(y: jax.Array, x: jax.Array, eps: float, time_axis: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One EM iteration in the planar layout: ``(y, v, R)`` from the current estimates ``y``."""
    reg = math.sqrt(eps)
    t = time_axis  # -1: (..., F, T) planes; -2: (..., T, F)

    def over_time(a: jax.Array) -> jax.Array:
        return jnp.sum(a, axis=t, keepdims=True)

    power = _power(y)  # (..., S, C, F, T)
    v = jnp.mean(power, axis=-3)  # (..., S, F, T)
    weight = eps + over_time(v)  # (..., S, F, 1)
    if x.shape[-3] == 1:
        r = over_time(power[..., 0, :, :]) / weight  # (..., S, F, 1), real
        vr = v * r
        cxx = reg + jnp.sum(vr, axis=-3)  # (..., F, T), real
        z = (cxx / (cxx * cxx)) * x[..., 0, :, :]  # Cxx^-1 x
        y = (vr * z[..., None, :, :])[..., None, :, :]  # (..., S, 1, F, T)
        R = jnp.squeeze(r, axis=t)[..., None, None, :].astype(x.dtype)  # (..., S, 1, 1, F)
        return y, v, R
    y0, y1 = y[..., 0, :, :], y[..., 1, :, :]  # (..., S, F, T)
    r00 = over_time(power[..., 0, :, :]) / weight  # (..., S, F, 1), real
    r11 = over_time(power[..., 1, :, :]) / weight
    r01 = over_time(y0 * jnp.conj(y1)) / weight  # complex; r10 = conj(r01)
    # the mixture covariance is Hermitian: real diagonal, c10 = conj(c01)
    c00 = reg + jnp.sum(v * r00, axis=-3)  # (..., F, T)
    c11 = reg + jnp.sum(v * r11, axis=-3)
    c01 = jnp.sum(v * r01, axis=-3)
    det = c00 * c11 - _power(c01)  # real (upstream's complex determinant of a Hermitian matrix)
    inv_det = det / (det * det)  # upstream's _inv(z) = conj(z) / |z|^2
    x0, x1 = x[..., 0, :, :], x[..., 1, :, :]
    # z = Cxx^-1 x with Cxx^-1 = inv_det [[c11, -c01], [-c10, c00]]
    z0 = ((inv_det * c11) * x0 - (inv_det * c01) * x1)[..., None, :, :]  # (..., 1, F, T)
    z1 = ((inv_det * c00) * x1 - (inv_det * jnp.conj(c01)) * x0)[..., None, :, :]
    y = jnp.stack([v * (r00 * z0 + r01 * z1), v * (jnp.conj(r01) * z0 + r11 * z1)], axis=-3)
    r00c, r01c, r11c = (jnp.squeeze(r, axis=t).astype(x.dtype) for r in (r00, r01, r11))  # (..., S, F)
    R = jnp.stack([jnp.stack([r00c, r01c], -2), jnp.stack([jnp.conj(r01c), r11c], -2)], -3)  # (..., S, 2, 2, F)
    return y, v, R


def expectation_maximization_planar(
    y: jax.Array, x: jax.Array, iterations: int = 2, eps: float = 1e-10, time_axis: int = -1
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """EM refinement in the planar layout.

    Args:
        y: initial estimates, complex ``(..., nb_sources, nb_channels, nb_bins, nb_frames)``.
        x: mixture, complex ``(..., nb_channels, nb_bins, nb_frames)``.
        iterations: EM iterations (static).
        eps: regularisation (upstream 1e-10).
        time_axis: ``-1`` for ``(..., nb_bins, nb_frames)`` planes (above); ``-2`` for ``(..., nb_frames,
            nb_bins)`` planes (the separator's frame-major layout; the outputs follow it).

    Returns:
        ``(y, v, R)``: estimates like ``y``; PSDs ``(..., nb_sources, nb_bins, nb_frames)``; spatial covariances
        complex ``(..., nb_sources, nb_channels, nb_channels, nb_bins)`` of the last iteration (zeros if none).
    """
    if time_axis not in (-1, -2):
        raise ValueError(f"time_axis must be -1 or -2, got {time_axis}")
    nb_channels = x.shape[-3]
    check_channels(nb_channels)
    shape = y.shape
    real = jnp.finfo(x.dtype).dtype
    v = jnp.zeros(shape[:-3] + shape[-2:], real)
    R = jnp.zeros(shape[:-3] + (nb_channels, nb_channels, shape[-2] if time_axis == -1 else shape[-1]), x.dtype)
    if iterations <= 0:
        return y, v, R

    def body(_: int, carry: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
        return _em_step(carry[0], x, eps, time_axis)

    return lax.fori_loop(0, iterations, body, (y, v, R))


def initial_estimate(
    targets_spectrograms: jax.Array,
    mix_stft: jax.Array,
    softmask: bool = False,
    residual: bool = False,
    eps: float = 1e-10,
    atan2: str = "upstream",
) -> tuple[jax.Array, jax.Array]:
    """The filter's starting point: the magnitudes given the mixture's phase (or a ratio mask of the mixture).

    Args:
        targets_spectrograms: magnitudes ``(..., nb_sources, nb_channels or 1, nb_bins, nb_frames)`` (or frame-major
            planes: the function is element-wise but for sums over the sources).
        mix_stft: complex ``(..., nb_channels, nb_bins, nb_frames)``.
        softmask: ``mix * v_j / (eps + sum_k v_k)`` instead of ``v_j * exp(i angle(mix))``.
        residual: append ``mix - sum_j y_j`` as an extra source.
        atan2: ``"upstream"`` or ``"exact"`` (:func:`phase_factors`).

    Returns:
        ``(y, mix)``: complex estimates ``(..., nb_sources [+ 1], nb_channels, nb_bins, nb_frames)``, and the mixture
        the rest of the filter sees (with upstream's atan2: 1.0 in the real part of exactly-zero bins).
    """
    mix = jnp.asarray(mix_stft)
    v = jnp.asarray(targets_spectrograms).astype(jnp.finfo(mix.dtype).dtype)
    if softmask:
        y = mix[..., None, :, :, :] * (v / (eps + jnp.sum(v, axis=-4, keepdims=True)))
    else:
        cos, sin, mix = phase_factors(mix, atan2)
        y = lax.complex(v * cos[..., None, :, :, :], v * sin[..., None, :, :, :])  # (..., S, C, F, T)
    y = jnp.broadcast_to(y, y.shape[:-3] + mix.shape[-3:])
    if residual:
        y = jnp.concatenate([y, (mix - jnp.sum(y, axis=-4))[..., None, :, :, :]], axis=-4)
    return y, mix


def wiener_planar(
    targets_spectrograms: jax.Array,
    mix_stft: jax.Array,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    scale_factor: float = 10.0,
    eps: float = 1e-10,
    atan2: str = "upstream",
    frame_mask: jax.Array | None = None,
    time_axis: int = -1,
) -> jax.Array:
    """:func:`wiener` in the planar layout; every leading index is an independent call (its own ``max_abs``).

    Args:
        targets_spectrograms: magnitudes ``(..., nb_sources, nb_channels or 1, nb_bins, nb_frames)``.
        mix_stft: complex ``(..., nb_channels, nb_bins, nb_frames)``.
        frame_mask: optional ``(..., nb_frames)`` booleans: frames outside the mask are padding (the separator's
            last, shorter chunk). They are zeroed after the initial estimate, so they add nothing to the EM sums
            and come out as zeros: the other frames are filtered exactly as if they were absent.
        time_axis: ``-1`` (the layout above) or ``-2``: frame-major planes ``(..., nb_frames, nb_bins)``.

    Returns:
        complex ``(..., nb_sources [+ 1], nb_channels, nb_bins, nb_frames)``.
    """
    mix_stft = jnp.asarray(mix_stft)
    if not jnp.iscomplexobj(mix_stft):
        raise TypeError("wiener_planar: mix_stft must be complex")
    check_channels(mix_stft.shape[-3])
    y, mix = initial_estimate(targets_spectrograms, mix_stft, softmask, residual, eps, atan2)
    if frame_mask is not None:
        keep = (
            frame_mask[..., None, None, :] if time_axis == -1 else frame_mask[..., None, :, None]
        )  # (..., 1, F|1, T|1)
        mix = jnp.where(keep, mix, 0)
        y = jnp.where(keep[..., None, :, :, :], y, 0)
    if iterations == 0:
        return y
    magnitude = jnp.sqrt(_power(mix))
    max_abs = jnp.maximum(jnp.max(magnitude, axis=(-3, -2, -1)) / scale_factor, 1.0)[..., None, None, None]
    y = expectation_maximization_planar(y / max_abs[..., None, :, :, :], mix / max_abs, iterations, eps, time_axis)[0]
    return y * max_abs[..., None, :, :, :]


def _reverse_last(x: jax.Array, n: int) -> jax.Array:
    """Reverse the order of the last ``n`` axes (upstream layout <-> planar layout)."""
    lead = list(range(x.ndim - n))
    return jnp.transpose(x, lead + list(range(x.ndim - 1, x.ndim - n - 1, -1)))


def _from_upstream_layout(x: jax.Array) -> tuple[jax.Array, bool]:
    x = jnp.asarray(x)
    if jnp.iscomplexobj(x):
        return x, False
    if x.shape[-1] != 2:
        raise ValueError(f"mix_stft must be complex, or real with a trailing (re, im) axis; got {x.shape}")
    return lax.complex(x[..., 0], x[..., 1]), True


def _to_real_layout(y: jax.Array) -> jax.Array:
    """complex ``(..., C, S)`` -> upstream's real ``(..., C, 2, S)``."""
    return jnp.stack([jnp.real(y), jnp.imag(y)], axis=-2)


def wiener(
    targets_spectrograms: jax.Array,
    mix_stft: jax.Array,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    scale_factor: float = 10.0,
    eps: float = 1e-10,
    atan2: str = "upstream",
) -> jax.Array:
    """Wiener-filter source estimates from magnitude estimates and the mixture STFT (upstream's layout).

    Args:
        targets_spectrograms: magnitudes ``(..., nb_frames, nb_bins, nb_channels or 1, nb_sources)``; one channel
            is broadcast over the mixture's channels.
        mix_stft: complex ``(..., nb_frames, nb_bins, nb_channels)``, or upstream's real
            ``(..., nb_frames, nb_bins, nb_channels, 2)``.
        iterations: EM iterations (static); 0 returns the initial estimate.
        softmask: initialise with ``mix * v_j / (eps + sum_k v_k)`` instead of ``v_j exp(i angle(mix))``.
        residual: append ``mix - sum_j y_j`` as an extra source.
        scale_factor, eps: as upstream.
        atan2: ``"upstream"`` (default) or ``"exact"`` (``jnp.arctan2``, the mixture left untouched).

    Returns:
        complex ``(..., nb_frames, nb_bins, nb_channels, nb_sources [+ 1])``, or upstream's real
        ``(..., nb_frames, nb_bins, nb_channels, 2, nb_sources [+ 1])`` when ``mix_stft`` was given that way.
        Leading axes are independent calls.
    """
    mix, real_layout = _from_upstream_layout(mix_stft)
    v = _reverse_last(jnp.asarray(targets_spectrograms), 4)  # (..., S, C, F, T)
    y = wiener_planar(v, _reverse_last(mix, 3), iterations, softmask, residual, scale_factor, eps, atan2)
    y = _reverse_last(y, 4)  # (..., T, F, C, S)
    return _to_real_layout(y) if real_layout else y


def expectation_maximization(
    y: jax.Array, x: jax.Array, iterations: int = 2, eps: float = 1e-10, batch_size: int | None = 200
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """EM refinement of source estimates (upstream's layout).

    Args:
        y: initial estimates, complex ``(..., nb_frames, nb_bins, nb_channels, nb_sources)`` (or upstream's real
            ``(..., nb_frames, nb_bins, nb_channels, 2, nb_sources)``).
        x: mixture, complex ``(..., nb_frames, nb_bins, nb_channels)`` (or real with a trailing ``(re, im)``).
        iterations: EM iterations (static).
        eps: regularisation (upstream 1e-10).
        batch_size: accepted for compatibility; the sums run over all frames at once.

    Returns:
        ``(y, v, R)``: estimates in the layout of ``y``; PSDs ``(..., nb_frames, nb_bins, nb_sources)``; spatial
        covariances complex ``(..., nb_bins, nb_channels, nb_channels, nb_sources)``.
    """
    del batch_size
    x, real_layout = _from_upstream_layout(x)
    if real_layout:
        y = jnp.asarray(y)
        y = lax.complex(y[..., 0, :], y[..., 1, :])
    yp, v, R = expectation_maximization_planar(_reverse_last(jnp.asarray(y), 4), _reverse_last(x, 3), iterations, eps)
    y = _reverse_last(yp, 4)
    if real_layout:
        y = _to_real_layout(y)
    nd = R.ndim
    R = jnp.transpose(R, (*range(nd - 4), nd - 1, nd - 3, nd - 2, nd - 4))  # (..., S, C, C, F) -> (..., F, C, C, S)
    return y, _reverse_last(v, 3), R


_PI_ERROR = PI_FLOAT32 - math.pi  # what upstream's float32 pi adds to the phase (8.7e-8 rad)


def phase_factors(mix: jax.Array, atan2: str = "upstream") -> tuple[jax.Array, jax.Array, jax.Array]:
    """``cos`` and ``sin`` of the mixture's phase, and the mixture the rest of ``wiener`` sees.

    ``"exact"``: the phase is ``atan2(im, re)`` (IEEE: 0 for a zero bin, pi for ``-0.0 + 0j``).
    ``"upstream"``: the phase of :func:`upstream_atan2`: the true phase plus ``delta = pi_float32 - pi`` where
    upstream adds ``+-pi`` (negative real part: ``+-delta``; zero real part: ``+-delta / 2``), and 0 for a zero
    bin, whose real part becomes 1.0 in the returned mixture.

    Both without transcendental functions (XLA's are slow on CPU): ``cos(theta + delta) = (re cos(delta) -
    im sin(delta)) / |z|`` and ``sin(theta + delta) = (im cos(delta) + re sin(delta)) / |z|``, ``cos(delta)`` and
    ``sin(delta)`` being constants: upstream's ``cos(atan(im / re) +- pi_float32)`` up to rounding.

    Args:
        mix: complex ``(...)``.

    Returns:
        ``(cos, sin, mix)``: real, real and complex arrays shaped like ``mix``.
    """
    if atan2 not in ("upstream", "exact"):
        raise ValueError(f"atan2 must be 'upstream' or 'exact', got {atan2!r}")
    re, im = jnp.real(mix), jnp.imag(mix)
    radius = jnp.abs(mix)
    zero = radius == 0
    safe = jnp.where(zero, jnp.ones_like(radius), radius)
    if atan2 == "exact":  # IEEE atan2 of a zero bin: 0, or pi for a negative zero real part
        cos = jnp.where(zero, jnp.where(jnp.signbit(re), -1.0, 1.0), re / safe)
        return cos, jnp.where(zero, 0.0, im / safe), mix
    cos, sin = jnp.where(zero, 1.0, re / safe), jnp.where(zero, 0.0, im / safe)
    # the phase offset of upstream's atan2 in each half-plane / on the imaginary axis (0 elsewhere)
    delta = jnp.where(re < 0, jnp.where(im >= 0, _PI_ERROR, -_PI_ERROR), 0.0)
    delta = jnp.where((re == 0) & (im != 0), jnp.where(im > 0, _PI_ERROR / 2, -_PI_ERROR / 2), delta)
    delta = delta.astype(re.dtype)
    cos_d, sin_d = jnp.cos(delta), jnp.sin(delta)  # of a few constants: folded by XLA
    cos, sin = cos * cos_d - sin * sin_d, sin * cos_d + cos * sin_d
    mix = lax.complex(jnp.where(zero, jnp.ones_like(re), re), im)  # upstream's in-place write, made explicit
    return cos, sin, mix
