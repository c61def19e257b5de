"""core_spec.training's schedule and early stopping make upstream's decisions (main environment, torch):
``ReduceLROnPlateau`` against ``torch.optim.lr_scheduler.ReduceLROnPlateau`` and ``EarlyStopping`` against
openunmix 1.3.0's ``utils.EarlyStopping``, on random validation-loss sequences with improvements, plateaus,
exact repeats and occasional jumps, for the recipe's settings and small patiences that exercise every branch.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from core_spec.training import EarlyStopping, ReduceLROnPlateau, UMXTrainConfig
from parity_tests.oracle import torch

pytestmark = pytest.mark.upstream


def loss_sequence(seed: int, n: int) -> list[float]:
    """A validation-loss curve: a noisy decrease with plateaus (values repeated, or within the 1e-4 threshold)."""
    rng = np.random.default_rng(seed)
    loss, out = 1.0, []
    for _ in range(n):
        kind = rng.integers(4)
        if kind == 0:
            loss *= 1 - rng.uniform(0, 0.05)  # improvement
        elif kind == 1:
            loss *= 1 - rng.uniform(0, 5e-5)  # below the relative threshold
        elif kind == 2:
            loss *= 1 + rng.uniform(0, 0.05)  # worse
        out.append(float(loss))  # kind 3: exact repeat
    return out


SETTINGS = [
    # (lr, factor, patience, cooldown, min_lr)
    (1e-3, 0.3, 80, 10, 0.0),  # the recipe
    (1e-3, 0.3, 3, 2, 0.0),
    (1e-3, 0.5, 0, 0, 0.0),
    (1e-2, 0.1, 2, 5, 1e-4),  # floored by min_lr
    (1e-7, 0.5, 1, 0, 0.0),  # reductions smaller than eps are skipped
]


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("seed", range(4))
def test_reduce_lr_on_plateau(setting: tuple, seed: int) -> None:
    lr, factor, patience, cooldown, min_lr = setting
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=lr)
    upstream = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=factor, patience=patience, cooldown=cooldown, min_lr=min_lr
    )
    ours = ReduceLROnPlateau(lr=lr, factor=factor, patience=patience, cooldown=cooldown, min_lr=min_lr)
    n = 400 if patience > 10 else 120
    reductions = 0
    for epoch, loss in enumerate(loss_sequence(seed, n)):
        upstream.step(loss)
        expected = optimizer.param_groups[0]["lr"]
        got = ours.step(loss)
        assert got == expected, f"epoch {epoch}: lr {got} != torch's {expected}"
        reductions += got < lr
    if patience < 80:
        assert reductions, "the sequence never triggered a reduction: the test exercises nothing"


def test_reduce_lr_on_plateau_state_round_trip() -> None:
    losses = loss_sequence(9, 60)
    a = ReduceLROnPlateau(lr=1e-3, patience=2, cooldown=1)
    for loss in losses[:30]:
        a.step(loss)
    b = ReduceLROnPlateau(lr=0.0)
    b.load_state_dict(a.state_dict())
    assert [a.step(x) for x in losses[30:]] == [b.step(x) for x in losses[30:]]


@pytest.mark.parametrize("patience", [0, 1, 3, 10, UMXTrainConfig().patience])
@pytest.mark.parametrize("seed", range(8))
def test_early_stopping(patience: int, seed: int) -> None:
    """Stop decisions and upstream train.py's ``is_best = valid_loss == es.best``, edge cases included: a NaN
    in the middle (seed 5) and as the very first loss (seed 6: upstream keeps NaN as its best and goes on),
    exact ties with the best (every sequence repeats values), ``patience=0`` (upstream stops at the second epoch)."""
    from openunmix.utils import EarlyStopping as UpstreamEarlyStopping

    losses = loss_sequence(100 + seed, 400)
    if seed == 5:
        losses[150] = math.nan  # upstream stops on a NaN loss
    if seed == 6:
        losses[0] = math.nan
    upstream = UpstreamEarlyStopping(patience=patience)
    ours = EarlyStopping(patience=patience)
    for epoch, loss in enumerate(losses):
        expected = upstream.step(loss)
        assert ours.step(loss) == expected, f"epoch {epoch}: stop decision differs from openunmix's"
        assert ours.is_best == (loss == upstream.best), f"epoch {epoch}: is_best differs"
        assert ours.best == upstream.best or (math.isnan(ours.best) and math.isnan(upstream.best))
        if expected:
            break
