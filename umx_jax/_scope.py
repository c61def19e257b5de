"""Precision and device scopes shared by the JAX port (private): the lowest layer of the package.

JAX runs in float32 unless 64-bit types are enabled. The port never enables them globally: everything that runs
a float64 model (``Separator``, ``apply_model``, ``separate_track``, the weight loaders) enters
``jax.enable_x64(True)`` for the duration of the call, and the jit caches are keyed on that flag. Bare module
calls on float64 modules need the same scope: ``with umx_jax.dtype_scope("float64"): model(x)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

if TYPE_CHECKING:
    from flax import nnx

__all__ = ["as_device", "canonical_dtype", "default_device", "device_of", "dtype_scope"]


def canonical_dtype(dtype: Any) -> np.dtype:
    """``float32`` or ``float64`` as a NumPy dtype; anything else is an error."""
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"the JAX port runs in float32 or float64, got {dt}")
    return dt


@contextlib.contextmanager
def dtype_scope(dtype: Any, precision: str | None = None) -> Iterator[None]:
    """Enable 64-bit types while inside when ``dtype`` is float64, and set the default matmul precision.

    Args:
        dtype: the precision of the computation (``float32`` leaves the x64 flag as it is).
        precision: ``jax.default_matmul_precision`` inside (``"highest"`` for parity runs: no TF32 on GPUs);
            ``None`` leaves it as it is.
    """
    with contextlib.ExitStack() as stack:
        if canonical_dtype(dtype) == np.float64:
            stack.enter_context(jax.enable_x64(True))
        if precision is not None:
            stack.enter_context(jax.default_matmul_precision(precision))
        yield


def as_device(device: Any) -> jax.Device | None:
    """A ``jax.Device`` from ``None`` (JAX's default), a device, or a platform name (``"cpu"``, ``"gpu"``)."""
    if device is None or isinstance(device, jax.Device):
        return device
    name = str(device).lower()
    if name in ("gpu", "cuda"):
        name = "gpu"
    return jax.devices(name)[0]


def default_device(device: Any) -> contextlib.AbstractContextManager[Any]:
    """``jax.default_device`` of :func:`as_device` ``(device)`` while inside; ``None`` leaves JAX's default."""
    dev = as_device(device)
    return jax.default_device(dev) if dev is not None else contextlib.nullcontext()


def device_of(module: nnx.Module) -> jax.Device:
    """The device holding a module's first parameter."""
    from flax import nnx  # here, not above: the modules without a Flax module (umx_jax.exported) never import it

    leaf = jax.tree.leaves(nnx.state(module, nnx.Param))[0]
    array = leaf[...] if isinstance(leaf, nnx.Variable) else leaf
    return next(iter(array.devices()))
