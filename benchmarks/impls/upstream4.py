"""Upstream of the HTDemucs points: demucs 4.1.0 on torch, as the benchmark calls it, in its own worker process.

demucs 4.1.0 is the module ``demucs``, as demucs 2.0.3 (the v2 upstream), so this worker runs with the oracle folder
(``.oracle-demucs4``, :func:`unmix.parity.oracle4.oracle4_dir`) first on ``PYTHONPATH`` (the driver sets it:
:data:`benchmarks.impls.UPSTREAM4`); :func:`versions` refuses any other demucs.

- ``apply``: ``demucs.htdemucs.HTDemucs(**kwargs)`` holding the canonical weights (upstream's state-dict names,
  ``load_state_dict``), or ``demucs.apply.BagOfModels`` of such models with the bag's weights; the timed call is
  ``demucs.apply.apply_model(model, mix[None], shifts=0, split=True, overlap=0.25)`` under ``torch.no_grad``;
- ``train``: one step as demucs 4's solver (``solver._run_one_epoch``, augmentation left out: the batch is fixed):
  the model in train mode (it runs at the input's length), ``estimate = model(sources.sum(1))``, L1 averaged over
  (channels, time) then over the batch per source, weighted by the recipe's per-source weights, ``backward``,
  ``torch.optim.Adam`` with the groups ``demucs/train.py`` ``get_optimizer`` builds (every module's
  ``make_optim_group`` first, i.e. the cross-transformer's, then the rest), betas (0.9, 0.999). ``demucs.train``
  itself cannot be imported without dora and hydra, so the grouping is written here as it reads there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["apply", "configure", "separator", "train", "versions"]

VERSION = "4.1.0"


def configure(threads: int, options: Mapping[str, Any]) -> None:
    import torch

    torch.set_num_threads(threads)


def versions() -> dict[str, str]:
    import demucs
    import torch

    if demucs.__version__ != VERSION:
        raise RuntimeError(
            f"imported demucs {demucs.__version__} from {demucs.__file__}, not {VERSION} (oracle folder)"
        )
    return {"torch": torch.__version__, "demucs": demucs.__version__, "numpy": np.__version__}


def separator(cfg: Any, weights: Any, audio: np.ndarray, options: Mapping[str, Any]) -> Callable[[], np.ndarray]:
    raise TypeError("demucs 4.1.0 runs the HTDemucs points only")


def _htdemucs(cfg: Any, weights: Mapping[str, np.ndarray]) -> Any:
    """demucs 4.1.0's ``HTDemucs`` of ``cfg`` (an ``HTDemucsConfig``) holding ``weights`` (float32)."""
    import torch
    from demucs.htdemucs import HTDemucs

    from core_spec.configs import constructor_kwargs

    model = HTDemucs(**constructor_kwargs(cfg))
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in weights.items()})
    return model


def _model(cfg: Any, weights: Mapping[str, np.ndarray]) -> Any:
    """A model or, for a ``BagConfig``, ``demucs.apply.BagOfModels`` (the bag's weights and segment)."""
    from core_spec.canonical import per_model
    from core_spec.configs import BagConfig

    if not isinstance(cfg, BagConfig):
        return _htdemucs(cfg, weights)
    from fractions import Fraction

    from demucs.apply import BagOfModels

    models = [_htdemucs(m, w) for m, w in zip(cfg.models, per_model(weights, cfg), strict=True)]
    rows = None if cfg.weights is None else [list(row) for row in cfg.weights]
    return BagOfModels(models, rows, None if cfg.segment is None else Fraction(*cfg.segment))


def apply(cfg: Any, weights: Any, mix: np.ndarray, options: Mapping[str, Any]) -> Callable[[], np.ndarray]:
    import torch
    from demucs.apply import apply_model

    model = _model(cfg, weights).eval()
    x = torch.from_numpy(mix)[None]  # (1, C, T): demucs 4's apply_model takes a batch

    def call() -> np.ndarray:
        with torch.no_grad():
            return apply_model(model, x, shifts=0, split=True, overlap=0.25, progress=False)[0].numpy()

    return call


def _optimizer(model: Any, recipe: Any) -> Any:
    """``demucs/train.py`` ``get_optimizer`` with ``optim.optim == "adam"``."""
    import torch

    seen: set[Any] = set()
    groups = []
    for _, module in model.named_modules():
        if hasattr(module, "make_optim_group"):
            group = module.make_optim_group()
            seen |= set(group["params"])
            groups.append(group)
    groups.insert(0, {"params": [p for p in model.parameters() if p not in seen]})
    return torch.optim.Adam(groups, lr=recipe.lr, betas=(0.9, 0.999), weight_decay=recipe.weight_decay)


def train(
    cfg: Any, recipe: Any, weights: Any, batch: Mapping[str, np.ndarray], options: Mapping[str, Any]
) -> tuple[Callable[[], float], int]:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = _htdemucs(cfg, weights).train()
    optimizer = _optimizer(model, recipe)
    sources = torch.from_numpy(batch["sources"])
    per_source = torch.tensor(list(recipe.weights) or [1.0] * sources.shape[1], dtype=sources.dtype)
    dims = tuple(range(2, sources.dim()))

    def step() -> float:  # demucs 4's solver._run_one_epoch, one batch
        estimate = model(sources.sum(dim=1))
        if recipe.loss == "l1":
            loss = F.l1_loss(estimate, sources, reduction="none").mean(dims).mean(0)
        else:
            loss = F.mse_loss(estimate, sources, reduction="none").mean(dims)
        loss = (loss * per_source).sum() / per_source.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    return step, sum(p.numel() for p in model.parameters())
