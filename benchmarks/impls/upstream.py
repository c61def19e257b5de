"""Upstream (openunmix 1.3.0, demucs 2.0.3 on torch) as the benchmark calls it: the reference of every ratio.

Separator: ``openunmix.model.Separator`` on a ``(1, 2, nb_timesteps)`` tensor under ``torch.no_grad``; Demucs:
``demucs.utils.apply_model(model, mix, shifts=0, split=True)``; training steps as upstream's scripts write them
(openunmix ``scripts/train.py``: ``TorchSTFT(center=False)`` + ``ComplexNorm``, MSE, ``torch.optim.Adam`` with the
recipe's lr and coupled weight decay; demucs ``train.py``: L1 on the centre-trimmed sources).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["apply", "configure", "separator", "train", "versions"]


def configure(threads: int, options: Mapping[str, Any]) -> None:
    import torch

    torch.set_num_threads(threads)


def versions() -> dict[str, str]:
    from parity_tests import oracle

    v = oracle.versions()
    return {k: v[k] for k in ("torch", "openunmix", "demucs", "numpy")}


def separator(cfg: Any, weights: Any, audio: np.ndarray, options: Mapping[str, Any]) -> Callable[[], np.ndarray]:
    from parity_tests import oracle
    from parity_tests.oracle import torch

    model = oracle.umx_separator(cfg, weights, torch.float32)
    x = torch.from_numpy(audio[None])

    def call() -> np.ndarray:
        with torch.no_grad():
            return model(x).numpy()

    return call


def apply(cfg: Any, weights: Any, mix: np.ndarray, options: Mapping[str, Any]) -> Callable[[], np.ndarray]:
    from demucs.utils import apply_model

    from parity_tests import oracle
    from parity_tests.oracle import torch

    model = oracle.demucs_model(cfg, weights, torch.float32)
    x = torch.from_numpy(mix)

    def call() -> np.ndarray:
        with torch.no_grad():
            return apply_model(model, x, shifts=0, split=True).numpy()

    return call


def train(
    cfg: Any, recipe: Any, weights: Any, batch: Mapping[str, np.ndarray], options: Mapping[str, Any]
) -> tuple[Callable[[], float], int]:
    from parity_tests import oracle
    from parity_tests.oracle import torch

    torch.manual_seed(0)
    if "x" in batch:
        from openunmix.transforms import ComplexNorm, make_filterbanks

        from core_spec.training import train_stft

        model = oracle.umx_model(cfg, weights, torch.float32).train()
        fft = train_stft(cfg, center=False)
        stft, _ = make_filterbanks(n_fft=fft.n_fft, n_hop=fft.n_hop, center=False, sample_rate=44100.0)
        encoder = torch.nn.Sequential(stft, ComplexNorm(mono=cfg.nb_channels == 1))
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        x, y = torch.from_numpy(batch["x"]), torch.from_numpy(batch["y"])

        def step() -> float:  # openunmix scripts/train.py
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(encoder(x)), encoder(y))
            loss.backward()
            optimizer.step()
            return loss.item()

    else:
        from demucs.utils import center_trim

        model = oracle.demucs_model(cfg, weights, torch.float32).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        criterion = torch.nn.L1Loss()
        sources = torch.from_numpy(batch["sources"])

        def step() -> float:  # demucs train.py
            estimates = model(sources.sum(dim=1))
            loss = criterion(estimates, center_trim(sources, estimates))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            return loss.item()

    return step, sum(p.numel() for p in model.parameters())
