"""The PyTorch port as the benchmark calls it, through its public API: ``umx_torch.from_canonical``,
``Separator.separate``, ``apply_model``; training: ``umx_torch.train.make_optimizer`` and ``train_step`` (the
timed functions). HTDemucs (an ``HTDemucsConfig`` or a ``BagConfig``): ``umx_torch.htdemucs_apply.apply_model``
(``shifts=0``, split, overlap 0.25) and the same training functions (demucs 4's loss and two-group Adam)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["apply", "configure", "separator", "train", "versions"]


def configure(threads: int, options: Mapping[str, Any]) -> None:
    import torch

    torch.set_num_threads(threads)


def versions() -> dict[str, str]:
    import torch

    return {"torch": torch.__version__, "numpy": np.__version__}


def separator(cfg: Any, weights: Any, audio: np.ndarray, options: Mapping[str, Any]) -> Callable[[], np.ndarray]:
    from umx_torch import from_canonical

    model = from_canonical(cfg, weights)
    batch = audio[None]
    return lambda: model.separate(batch).numpy()


def apply(cfg: Any, weights: Any, mix: np.ndarray, options: Mapping[str, Any]) -> Callable[[], np.ndarray]:
    import torch

    from core_spec.configs import DemucsConfig
    from umx_torch import apply_model, from_canonical
    from umx_torch.htdemucs_apply import apply_model as apply_v4

    model = from_canonical(cfg, weights)
    x = torch.from_numpy(mix)
    if isinstance(cfg, DemucsConfig):
        return lambda: apply_model(model, x, shifts=0, split=True).numpy()
    return lambda: apply_v4(model, x, shifts=0, split=True, overlap=0.25).numpy()


def train(
    cfg: Any, recipe: Any, weights: Any, batch: Mapping[str, np.ndarray], options: Mapping[str, Any]
) -> tuple[Callable[[], float], int]:
    import torch

    from core_spec.training import train_stft
    from umx_torch import from_canonical
    from umx_torch.train import make_optimizer, train_step

    torch.manual_seed(0)
    model = from_canonical(cfg, weights)
    optimizer = make_optimizer(model, recipe)
    if "x" in batch:
        data: Any = (torch.from_numpy(batch["x"]), torch.from_numpy(batch["y"]))
        fft = train_stft(cfg, recipe.stft_center)
    else:
        data, fft = torch.from_numpy(batch["sources"]), None
    return (lambda: train_step(model, optimizer, data, recipe, fft)), sum(p.numel() for p in model.parameters())
