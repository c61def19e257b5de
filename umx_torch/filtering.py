"""Multichannel Wiener filter with EM refinement: ``openunmix.filtering`` semantics, vectorised.

Notation (per frame ``t``, bin ``f``): ``v_j`` the power spectral density of source ``j`` (channel mean of
``|y_j|^2``), ``R_j`` its ``C x C`` spatial covariance, ``Cxx = sqrt(eps) I + sum_j v_j R_j`` the mixture
covariance. One EM iteration re-estimates ``v`` and ``R`` from the current estimates, then filters the mixture,
``y_j = v_j R_j Cxx^-1 x``. The spec is ``core_spec.reference.filtering``.

What differs from upstream's code, not from its results:

- complex tensors instead of a trailing ``(re, im)`` axis (the public functions also accept upstream's real
  layout and answer in it);
- all frames and sources at once: the ``1x1``/``2x2`` algebra is written out on whole ``(nb_sources, nb_bins,
  nb_frames)`` blocks (no Python loop over frames or sources); ``Cxx^-1 x`` is computed once and shared by the
  sources (``v_j R_j (Cxx^-1 x)`` instead of ``(v_j R_j Cxx^-1) x``: the same product, associated differently;
  the difference is rounding, amplified only where ``Cxx`` is near-singular);
- the inputs are never modified and, when a gradient is wanted, every operation is out of place, so the filter
  is differentiable (upstream documents that it is not); without gradients the filter's own temporaries are
  updated in place to save memory;
- the EM sums run over the whole chunk at once (upstream adds partial sums of ``batch_size`` frames: a memory
  device that changes nothing but rounding; the argument is accepted for compatibility).

Kept from upstream because the outputs depend on it: ``eps = 1e-10``, ``sqrt(eps)`` on the diagonal, ``R_j``
divided by ``eps + sum_t v_j``, the analytic inverse without eps (computed like upstream's ``_inv``: ``z / |z|^2``),
the ``max_abs`` rescaling per call, and, with ``atan2="upstream"`` (the default), upstream's ``atan2``: the real
part of every exactly-zero mixture bin becomes 1.0 for the rest of the call, and ``pi`` is float32-rounded.

Internal layout ("planar"): sources and channels first, bins and frames last, ``(..., nb_sources, nb_channels,
nb_bins, nb_frames)``: the layout the separator already has, so it never transposes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from core_spec.reference.filtering import PI_FLOAT32, check_channels

__all__ = [
    "PI_FLOAT32",
    "expectation_maximization",
    "expectation_maximization_planar",
    "initial_estimate",
    "upstream_atan2",
    "wiener",
    "wiener_planar",
]


def upstream_atan2(y: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """openunmix's element-wise ``atan2(y, x)``, without its in-place write.

    Returns:
        ``(angle, x_modified)``: ``x_modified`` is ``x`` with 1.0 where ``x == y == 0`` (upstream writes that
        into its argument, i.e. into the mixture); ``pi`` is rounded to float32 as upstream's ``2 asin(1)``.
    """
    x = x.masked_fill((x == 0) & (y == 0), 1.0)
    angle = torch.atan(y / x)
    offset = torch.where(y >= 0, PI_FLOAT32, -PI_FLOAT32).to(angle.dtype)  # +pi for y >= 0, -pi for y < 0 ...
    angle = angle + offset.masked_fill_(~(x < 0), 0.0)  # ... where x < 0
    # on the imaginary axis (x == 0, including -0.0, and y != 0): +-pi / 2, with the float32 pi
    half_pi = torch.full_like(angle, PI_FLOAT32 / 2)
    angle = torch.where(x == 0, torch.copysign(half_pi, y), angle)
    return angle, x


def expectation_maximization_planar(
    y: Tensor, x: Tensor, iterations: int = 2, eps: float = 1e-10, overwrite: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """EM refinement in the planar layout.

    Args:
        y: initial estimates, complex ``(..., nb_sources, nb_channels, nb_bins, nb_frames)``.
        x: mixture, complex ``(..., nb_channels, nb_bins, nb_frames)``.
        iterations: EM iterations.
        eps: regularisation (upstream 1e-10).
        overwrite: write the estimates into ``y``'s memory (when nothing needs the input afterwards and no
            gradient flows: saves one copy of the estimates).

    Returns:
        ``(y, v, R)``: estimates like ``y``; PSDs ``(..., nb_sources, nb_bins, nb_frames)``; spatial covariances
        complex ``(..., nb_sources, nb_channels, nb_channels, nb_bins)`` (of the last iteration; zeros if none).
    """
    nb_channels = x.shape[-3]
    check_channels(nb_channels)
    reg = math.sqrt(eps)
    shape = y.shape
    v = torch.zeros(shape[:-3] + shape[-2:], dtype=x.real.dtype, device=x.device)
    R = torch.zeros(shape[:-3] + (nb_channels, nb_channels, shape[-2]), dtype=x.dtype, device=x.device)
    inplace = not (torch.is_grad_enabled() and (y.requires_grad or x.requires_grad))  # fewer temporaries

    def power_of(channel: Tensor) -> Tensor:  # |y|^2 as upstream: re^2 + im^2
        p = channel.real.square()
        return p.add_(channel.imag.square()) if inplace else p + channel.imag.square()

    for _ in range(iterations):
        power = [power_of(y.select(-3, c)) for c in range(nb_channels)]  # C x (..., S, F, T)
        v = power[0] if nb_channels == 1 else (power[0] + power[1]) / 2  # channel mean, (..., S, F, T)
        weight = (eps + v.sum(dim=-1)).unsqueeze(-1)  # (..., S, F, 1)
        if nb_channels == 1:
            r = power[0].sum(dim=-1, keepdim=True) / weight  # (..., S, F, 1), real
            vr = v * r  # (..., S, F, T)
            cxx = reg + vr.sum(dim=-3)  # (..., F, T)
            z = (cxx / (cxx * cxx)) * x[..., 0, :, :]  # Cxx^-1 x, (..., F, T)
            y = (vr * z.unsqueeze(-3)).unsqueeze(-3)  # (..., S, 1, F, T)
            R = r.squeeze(-1)[..., None, None, :].to(x.dtype)
            continue
        y0, y1 = y[..., 0, :, :], y[..., 1, :, :]  # (..., S, F, T)
        r00 = power[0].sum(dim=-1, keepdim=True) / weight  # (..., S, F, 1), real
        r11 = power[1].sum(dim=-1, keepdim=True) / weight
        r01 = (y0 * y1.conj()).sum(dim=-1, keepdim=True) / weight  # complex; r10 = conj(r01)
        del power, y0, y1
        # mixture covariance, Hermitian: real diagonal, c10 = conj(c01)
        a00 = (v * r00).sum(dim=-3)  # (..., F, T)
        a11 = (v * r11).sum(dim=-3)
        c01 = (v * r01).sum(dim=-3)
        c00, c11 = reg + a00, reg + a11
        # det = c00 c11 - |c01|^2 (real, as upstream's complex det) is at least reg (reg + a00 + a11), as
        # a00 a11 >= |c01|^2; where it cancels below that bound (equal channels, a mono file as stereo: 0 wherever
        # a00 is ~2^24 times reg, and then 0 / 0 below), the bound is the better value; elsewhere it is the
        # determinant as computed (umx_nnabla's filter does the same)
        det = torch.maximum(c00 * c11 - (c01.real.square() + c01.imag.square()), reg * (reg + a00 + a11))
        inv_det = det / (det * det)  # upstream's _inv(z) = conj(z) / |z|^2
        x0, x1 = x[..., 0, :, :], x[..., 1, :, :]
        # z = Cxx^-1 x with Cxx^-1 = inv_det [[c11, -c01], [-c10, c00]]
        z0 = (inv_det * c11) * x0 - (inv_det * c01) * x1
        z1 = (inv_det * c00) * x1 - (inv_det * c01.conj()) * x0
        z0, z1 = z0.unsqueeze(-3), z1.unsqueeze(-3)  # (..., 1, F, T)
        # y_j = v_j R_j z, channel by channel: y_j0 = v_j (r00 z0 + r01 z1), y_j1 = v_j (r10 z0 + r11 z1)
        rows = ((r00, r01), (r01.conj(), r11))
        if inplace:
            new = y if overwrite else torch.empty_like(y)  # y is no longer read from here on
            for a, (ra, rb) in enumerate(rows):
                out = torch.mul(ra, z0, out=new.select(-3, a))
                out.add_(rb * z1).mul_(v)
            y = new
        else:
            y = torch.stack([v * (ra * z0 + rb * z1) for ra, rb in rows], dim=-3)
        r00c, r01c, r11c = r00[..., 0].to(x.dtype), r01[..., 0], r11[..., 0].to(x.dtype)  # (..., S, F)
        R = torch.stack([torch.stack([r00c, r01c], -2), torch.stack([r01c.conj(), r11c], -2)], -3)
    return y, v, R


def initial_estimate(
    targets_spectrograms: Tensor,
    mix_stft: Tensor,
    softmask: bool = False,
    residual: bool = False,
    eps: float = 1e-10,
    atan2: str = "upstream",
    modified_mix: bool = True,
) -> tuple[Tensor, Tensor]:
    """The filter's starting point: the magnitudes given the mixture's phase (or a ratio mask of the mixture).

    Args:
        targets_spectrograms: magnitudes ``(..., nb_sources, nb_channels or 1, nb_bins, nb_frames)``.
        mix_stft: complex ``(..., nb_channels, nb_bins, nb_frames)``.
        softmask: ``mix * v_j / (eps + sum_k v_k)`` instead of ``v_j * exp(i angle(mix))``.
        residual: append ``mix - sum_j y_j`` as an extra source.
        atan2: ``"upstream"`` or ``"exact"`` (module docstring).
        modified_mix: return the mixture as upstream's atan2 leaves it (what the residual, the scaling and EM
            see); ``False`` when the caller does not read it (no EM): the mixture comes back as given.

    Returns:
        ``(y, mix)``: complex estimates ``(..., nb_sources [+ 1], nb_channels, nb_bins, nb_frames)`` (without
        gradients a new tensor, which :func:`wiener_planar` scales in place), and the mixture the rest of the
        filter sees.
    """
    if atan2 not in ("upstream", "exact"):
        raise ValueError(f"atan2 must be 'upstream' or 'exact', got {atan2!r}")
    mix = mix_stft
    v = targets_spectrograms.to(mix.real.dtype)
    nb_targets = v.shape[-4]
    angle: Tensor | None = None
    if not softmask:
        if atan2 == "upstream":
            angle, re = upstream_atan2(mix.imag, mix.real)
            if residual or modified_mix:  # only the residual and EM see the modified mixture
                mix = torch.complex(re, mix.imag)
        else:
            angle = torch.atan2(mix.imag, mix.real)
        angle = angle.unsqueeze(-4)  # (..., 1, C, F, T)
    if torch.is_grad_enabled() and (v.requires_grad or mix.requires_grad):  # differentiable: out of place
        if angle is None:
            y = mix.unsqueeze(-4) * (v / (eps + v.sum(dim=-4, keepdim=True)))
        else:
            y = torch.complex(v * torch.cos(angle), v * torch.sin(angle))
        y = y.expand(y.shape[:-3] + mix.shape[-3:])
        if residual:
            y = torch.cat([y, (mix - y.sum(dim=-4)).unsqueeze(-4)], dim=-4)
        return y, mix
    # inference: write every estimate once into its place
    # NumPy's broadcast_shapes, not torch's: the first call of torch's imports sympy and torch.fx (0.5 s or more)
    lead = np.broadcast_shapes(tuple(v.shape[:-4]), tuple(mix.shape[:-3]))
    y = torch.empty(lead + (nb_targets + int(residual),) + mix.shape[-3:], dtype=mix.dtype, device=mix.device)
    targets = y.narrow(-4, 0, nb_targets)
    if angle is None:
        torch.mul(mix.unsqueeze(-4), v / (eps + v.sum(dim=-4, keepdim=True)), out=targets)
    else:
        parts = torch.view_as_real(targets)
        torch.mul(v, torch.cos(angle), out=parts[..., 0])
        torch.mul(v, torch.sin(angle), out=parts[..., 1])
    if residual:
        torch.sub(mix, targets.sum(dim=-4), out=y.select(-4, nb_targets))
    return y, mix


def wiener_planar(
    targets_spectrograms: Tensor,
    mix_stft: Tensor,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    scale_factor: float = 10.0,
    eps: float = 1e-10,
    atan2: str = "upstream",
    frame_mask: Tensor | np.ndarray | None = None,
) -> Tensor:
    """:func:`wiener` in the planar layout; every leading index is an independent call (its own ``max_abs``).

    Args:
        targets_spectrograms: magnitudes ``(..., nb_sources, nb_channels or 1, nb_bins, nb_frames)``.
        mix_stft: complex ``(..., nb_channels, nb_bins, nb_frames)``.
        frame_mask: optional ``(..., nb_frames)`` booleans; frames outside it are padding (the last, shorter
            chunk of a track filtered in a batch of whole ones): zeroed after the initial estimate, they add
            nothing to the EM sums and come out as zeros (:func:`core_spec.reference.filtering.wiener_planar`).

    Returns:
        complex ``(..., nb_sources [+ 1], nb_channels, nb_bins, nb_frames)``.
    """
    if not mix_stft.is_complex():
        raise TypeError("wiener_planar: mix_stft must be a complex tensor")
    check_channels(mix_stft.shape[-3])
    y, mix = initial_estimate(targets_spectrograms, mix_stft, softmask, residual, eps, atan2, iterations > 0)
    if frame_mask is not None:
        keep = torch.as_tensor(frame_mask, dtype=torch.bool, device=mix.device)
        padding = ~keep[..., None, None, :]  # (..., 1, 1, T)
        mix = mix.masked_fill(padding, 0)
        y = y.masked_fill(padding.unsqueeze(-4), 0)
    if iterations == 0:
        return y
    magnitude = torch.sqrt(mix.real.square() + mix.imag.square())
    max_abs = torch.clamp(magnitude.flatten(-3).amax(dim=-1) / scale_factor, min=1.0)[..., None, None, None]
    inplace = not (torch.is_grad_enabled() and (y.requires_grad or mix.requires_grad))
    y = y.div_(max_abs.unsqueeze(-1)) if inplace else y / max_abs.unsqueeze(-1)  # y is ours: no caller sees it
    y = expectation_maximization_planar(y, mix / max_abs, iterations, eps, overwrite=inplace)[0]
    return y.mul_(max_abs.unsqueeze(-1)) if inplace else y * max_abs.unsqueeze(-1)


def _reverse_last(x: Tensor, n: int) -> Tensor:
    """Reverse the order of the last ``n`` dimensions (upstream layout <-> planar layout)."""
    lead = list(range(x.dim() - n))
    return x.permute(*lead, *range(x.dim() - 1, x.dim() - n - 1, -1))


def _from_upstream_layout(x: Tensor) -> tuple[Tensor, bool]:
    if x.is_complex():
        return x, False
    if x.shape[-1] != 2:
        raise ValueError(f"mix_stft must be complex, or real with a trailing (re, im) axis; got {tuple(x.shape)}")
    return torch.view_as_complex(x.contiguous()), True


def wiener(
    targets_spectrograms: Tensor,
    mix_stft: Tensor,
    iterations: int = 1,
    softmask: bool = False,
    residual: bool = False,
    scale_factor: float = 10.0,
    eps: float = 1e-10,
    atan2: str = "upstream",
) -> Tensor:
    """Wiener-filter source estimates from magnitude estimates and the mixture STFT (upstream's layout).

    Args:
        targets_spectrograms: magnitudes ``(..., nb_frames, nb_bins, nb_channels or 1, nb_sources)``; one channel
            is broadcast over the mixture's channels.
        mix_stft: complex ``(..., nb_frames, nb_bins, nb_channels)``, or upstream's real
            ``(..., nb_frames, nb_bins, nb_channels, 2)``.
        iterations: EM iterations; 0 returns the initial estimate.
        softmask: initialise with ``mix * v_j / (eps + sum_k v_k)`` instead of ``v_j exp(i angle(mix))``.
        residual: append ``mix - sum_j y_j`` as an extra source.
        scale_factor, eps: as upstream.
        atan2: ``"upstream"`` (default) or ``"exact"`` (``torch.atan2``, the mixture left untouched).

    Returns:
        complex ``(..., nb_frames, nb_bins, nb_channels, nb_sources [+ 1])``, or upstream's real
        ``(..., nb_frames, nb_bins, nb_channels, 2, nb_sources [+ 1])`` when ``mix_stft`` was given that way.
        Leading dimensions are independent calls.
    """
    mix, real_layout = _from_upstream_layout(mix_stft)
    v = _reverse_last(targets_spectrograms, 4)  # (..., S, C, F, T)
    y = wiener_planar(v, _reverse_last(mix, 3), iterations, softmask, residual, scale_factor, eps, atan2)
    y = _reverse_last(y, 4)  # (..., T, F, C, S)
    return torch.view_as_real(y).movedim(-1, -2) if real_layout else y


def expectation_maximization(
    y: Tensor, x: Tensor, iterations: int = 2, eps: float = 1e-10, batch_size: int | None = 200
) -> tuple[Tensor, Tensor, Tensor]:
    """EM refinement of source estimates (upstream's layout).

    Args:
        y: initial estimates, complex ``(..., nb_frames, nb_bins, nb_channels, nb_sources)`` (or upstream's real
            ``(..., nb_frames, nb_bins, nb_channels, 2, nb_sources)``).
        x: mixture, complex ``(..., nb_frames, nb_bins, nb_channels)`` (or real with a trailing ``(re, im)``).
        iterations: EM iterations.
        eps: regularisation (upstream 1e-10).
        batch_size: accepted for compatibility; the sums run over all frames at once.

    Returns:
        ``(y, v, R)``: estimates in the layout of ``y``; PSDs ``(..., nb_frames, nb_bins, nb_sources)``; spatial
        covariances complex ``(..., nb_bins, nb_channels, nb_channels, nb_sources)``.
    """
    del batch_size
    x, real_layout = _from_upstream_layout(x)
    if real_layout:
        y = torch.view_as_complex(y.movedim(-2, -1).contiguous())
    yp, v, R = expectation_maximization_planar(_reverse_last(y, 4), _reverse_last(x, 3), iterations, eps)
    y = _reverse_last(yp, 4)
    if real_layout:
        y = torch.view_as_real(y).movedim(-1, -2)
    nd = R.dim()
    R = R.permute(*range(nd - 4), nd - 1, nd - 3, nd - 2, nd - 4)  # (..., S, C, C, F) -> (..., F, C, C, S)
    return y, _reverse_last(v, 3), R
