"""HTDemucs's training step: the fixture of demucs 4.1.0's autograd (``parity_tests/fixtures_htdemucs_train.py``)
against the NumPy reference (both environments, no torch).

- the loss recomputed with the reference forward in training mode (``htdemucs(training=True)``: at the input's
  length) and :func:`core_spec.reference.train.htdemucs_loss` (per-source weights);
- the stored gradients against Richardson-extrapolated central differences of the reference loss along random
  directions (the L1's signs frozen at the fixture's weights; every other piece of HTDemucs is smooth);
- ``updated`` = one Adam step from ``weights`` and ``grads`` in demucs 4's two groups (the transformer without the
  recipe's weight decay);
- the loss's own semantics: L1 averaged over the batch, MSE summed over it, the weights normalised.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction

import numpy as np
import pytest

from core_spec.reference.htdemucs import htdemucs
from core_spec.reference.train import adam_step, htdemucs_loss, htdemucs_train_loss
from core_spec.tolerances import check
from parity_tests.fixtures_htdemucs_train import (
    HTDemucsTrainCase,
    check_grads,
    check_loss,
    check_updated,
    load_case,
    optimizer_groups,
)


@pytest.fixture(scope="module")
def case() -> HTDemucsTrainCase:
    return load_case()


def _adam(case: HTDemucsTrainCase, decay_transformer: bool = False) -> dict[str, np.ndarray]:
    updated: dict[str, np.ndarray] = {}
    for group in optimizer_groups(list(case.grads), case.recipe, case.config):
        decay = case.recipe.weight_decay if decay_transformer else group["weight_decay"]
        grads = {k: case.grads[k] for k in group["names"]}
        step, _ = adam_step(case.weights, grads, group["lr"], decay)
        updated.update(step)
    return updated


def test_case_contents(case: HTDemucsTrainCase) -> None:
    assert set(case.grads) == set(case.updated) == set(case.updated2) == set(case.weights)
    assert all(v.dtype == np.float64 for v in (*case.weights.values(), *case.grads.values()))
    assert case.sources.shape[:2] == (case.recipe.batch_size, len(case.config.sources))
    # trained at its own length, not the model's segment (upstream sets segment := the input's length)
    assert case.sources.shape[-1] != case.config.segment_samples
    assert case.meta["upstream_segment_after_step"] == str(Fraction(case.sources.shape[-1], case.config.samplerate))
    assert case.meta["versions"]["demucs"] == "4.1.0"


def test_loss_matches_reference(case: HTDemucsTrainCase) -> None:
    loss = htdemucs_train_loss(case.weights, case.config, case.sources, case.recipe.weights, case.recipe.loss)
    check_loss(loss, case, "float64", what="reference ")
    # the eval-mode forward (padded to the segment) is another function: it must not pass for the training loss
    padded = htdemucs(case.weights, case.config, case.sources.sum(axis=1))
    with pytest.raises(AssertionError):
        check_loss(htdemucs_loss(padded, case.sources, case.recipe.weights), case, "float32", what="eval mode ")
    # nor the unweighted loss
    with pytest.raises(AssertionError):
        check_loss(htdemucs_train_loss(case.weights, case.config, case.sources), case, "float32", what="unweighted ")


def test_loss_semantics() -> None:
    """L1: per source, mean over (C, T) then over the batch; MSE: over (C, T) only, summed over the batch; the
    weighted sum divided by the weights' sum."""
    rng = np.random.default_rng(5)
    est, src = rng.standard_normal((3, 4, 2, 10)), rng.standard_normal((3, 4, 2, 10))
    w = np.array([1.0, 2.0, 0.5, 1.5])
    per_l1 = np.array([np.abs(est[:, s] - src[:, s]).mean() for s in range(4)])
    check(np.asarray(htdemucs_loss(est, src, w)), np.asarray(per_l1 @ w / w.sum()), "htdemucs.train.loss", "float64")
    per_mse = np.array([[((est[b, s] - src[b, s]) ** 2).mean() for s in range(4)] for b in range(3)])
    got = htdemucs_loss(est, src, w, loss="mse")
    check(np.asarray(got), np.asarray((per_mse * w).sum() / w.sum()), "htdemucs.train.loss", "float64")
    with pytest.raises(ValueError, match="source weights"):
        htdemucs_loss(est, src, w[:3])
    with pytest.raises(ValueError, match="unknown loss"):
        htdemucs_loss(est, src, w, loss="sdr")


def test_updated_is_one_adam_step_in_two_groups(case: HTDemucsTrainCase) -> None:
    check_updated(_adam(case), case, "float64", what="numpy adam ")
    check_grads(case.grads, case, "float64", what="self ")
    # one group for every parameter (the transformer decayed too) is visibly another step
    with pytest.raises(AssertionError):
        check_updated(_adam(case, decay_transformer=True), case, "float32", what="one group ")


def _reference_loss(case: HTDemucsTrainCase, weights: Mapping[str, np.ndarray], signs: np.ndarray) -> float:
    """The training loss with the L1's signs frozen (``sum(signs * r)`` keeps the value and the derivative at the
    fixture's weights and is smooth around them)."""
    est = htdemucs(weights, case.config, case.sources.sum(axis=1), training=True)
    per = np.mean(signs * (est - case.sources), axis=(2, 3)).mean(axis=0)
    w = np.asarray(case.recipe.weights or [1.0] * per.size)
    return float(np.sum(per * w) / np.sum(w))


@pytest.mark.parametrize("direction", range(2))
def test_gradient_finite_differences(case: HTDemucsTrainCase, direction: int) -> None:
    """``d/dt loss(w + t v)`` at 0 by 4-point central differences equals ``<grad, v>``."""
    assert case.recipe.loss == "l1"
    rng = np.random.default_rng([41, direction])
    v = {k: rng.standard_normal(g.shape) * max(np.max(np.abs(case.weights[k])), 1e-3) for k, g in case.grads.items()}
    est = htdemucs(case.weights, case.config, case.sources.sum(axis=1), training=True)
    signs = np.sign(est - case.sources)
    h = 1e-5

    def loss_at(t: float) -> float:
        return _reference_loss(case, {k: case.weights[k] + t * v[k] for k in case.weights}, signs)

    d1 = (loss_at(h) - loss_at(-h)) / (2 * h)
    d2 = (loss_at(2 * h) - loss_at(-2 * h)) / (4 * h)
    numeric = (4 * d1 - d2) / 3
    analytic = sum(float(np.sum(case.grads[k] * v[k])) for k in v)
    check(numeric, analytic, "train.finite_difference", "float64", what=f"htdemucs direction {direction}")
