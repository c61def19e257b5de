"""The JAX port as the benchmark calls it, through its public API: ``umx_jax.from_canonical``,
``Separator.separate`` (the whole separation one compiled function), ``apply_model``; training:
``umx_jax.train.Trainer.step`` (the timed call: STFT, network, loss, gradients and
the optax update in one ``jax.jit``; the NumPy batch is copied to the device inside the timed call). HTDemucs
(an ``HTDemucsConfig`` or a ``BagConfig``): ``umx_jax.htdemucs_apply.apply_model`` (``shifts=0``, split, overlap
0.25; one compilation per chunk shape), and training through the same ``Trainer`` once the port's trainer has
HTDemucs (its ``Recipe`` includes ``HTDemucsTrainConfig``); until then the point is not available.

XLA's threads come from ``XLA_FLAGS``, set by the driver before the process starts (:mod:`benchmarks.impls`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["apply", "configure", "separator", "train", "versions"]


def configure(threads: int, options: Mapping[str, Any]) -> None:
    return None  # XLA_FLAGS (intra-op threads) is read when jax starts: set in the process's environment


def versions() -> dict[str, str]:
    import flax
    import jax
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__, "numpy": np.__version__}


def separator(cfg: Any, weights: Any, audio: np.ndarray, options: Mapping[str, Any]) -> Callable[[], np.ndarray]:
    from umx_jax import from_canonical

    model = from_canonical(cfg, weights)
    batch = audio[None]
    return lambda: np.asarray(model.separate(batch))


def apply(cfg: Any, weights: Any, mix: np.ndarray, options: Mapping[str, Any]) -> Callable[[], np.ndarray]:
    import jax

    from core_spec.configs import DemucsConfig
    from umx_jax import apply_model, from_canonical
    from umx_jax.htdemucs_apply import apply_model as apply_v4

    model = from_canonical(cfg, weights)
    x = jax.device_put(mix)
    if isinstance(cfg, DemucsConfig):
        return lambda: np.asarray(apply_model(model, x, shifts=0, split=True))
    return lambda: np.asarray(apply_v4(model, x, shifts=0, split=True, overlap=0.25))


def train(
    cfg: Any, recipe: Any, weights: Any, batch: Mapping[str, np.ndarray], options: Mapping[str, Any]
) -> tuple[Callable[[], float], int]:
    import typing

    from core_spec.training import HTDemucsTrainConfig
    from umx_jax import train as port

    if isinstance(recipe, HTDemucsTrainConfig) and HTDemucsTrainConfig not in typing.get_args(port.Recipe):
        from benchmarks.common import NotAvailable

        raise NotAvailable("umx_jax.train has no HTDemucs trainer yet (its Recipe lacks HTDemucsTrainConfig)")
    trainer = port.Trainer(cfg, weights, recipe, dropout=True, seed=0)
    data: Any = (batch["x"], batch["y"]) if "x" in batch else batch["sources"]
    params = sum(int(np.size(v)) for v in trainer.params.values())
    return (lambda: trainer.step(data)), params
