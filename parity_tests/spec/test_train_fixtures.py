"""The gradient-parity fixtures are consistent with the NumPy reference (both environments, no torch).

- the loss recomputed with the reference network in train mode (BatchNorm on batch statistics) and the reference
  STFT / Demucs forward;
- BatchNorm running statistics from the same batch statistics (momentum 0.1, unbiased variance);
- the stored gradients against Richardson-extrapolated central differences of the reference loss along random
  directions, and the analytically-zero gradient of ``input_mean``;
- ``updated`` = one Adam step (coupled weight decay) from ``weights`` and ``grads``, written out here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from core_spec.configs import UMXConfig
from core_spec.reference.demucs import demucs
from core_spec.reference.layers import batch_norm_train, linear, lstm
from core_spec.reference.train import adam_step, demucs_loss, spectrogram, umx_loss
from core_spec.shapes import center_trim
from core_spec.tolerances import check
from parity_tests.fixtures_train import (
    TRAIN_CASES,
    ZERO_GRADS,
    TrainCase,
    check_grads,
    check_loss,
    check_running,
    check_updated,
    load_train_case,
)


@pytest.fixture(scope="module", params=sorted(TRAIN_CASES))
def case(request: pytest.FixtureRequest) -> TrainCase:
    return load_train_case(request.param)


def _relu(x: np.ndarray, key: str, masks: dict[str, np.ndarray] | None) -> np.ndarray:
    """ReLU; with ``masks``, the mask of the first call under ``key`` is reused (a smooth local linearisation)."""
    if masks is None:
        return np.maximum(x, 0.0)
    return x * masks.setdefault(key, x > 0)


def umx_train_forward(
    w: Mapping[str, np.ndarray],
    config: UMXConfig,
    mag: np.ndarray,
    stats: dict[str, np.ndarray],
    masks: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """``openunmix.model.OpenUnmix.forward`` in train mode (no dropout): ``(B, C, F, T)`` -> ``(B, C, F, T)``."""
    nb_samples, nb_channels, nb_bins, nb_frames = mag.shape
    x = mag.transpose(3, 0, 1, 2)
    mix = x
    x = (x[..., : config.crop_bins] + w["input_mean"]) * w["input_scale"]
    x = linear(x.reshape(nb_frames * nb_samples, -1), w["fc1.weight"])
    x = np.tanh(batch_norm_train(x, w, "bn1", stats)).reshape(nb_frames, nb_samples, config.hidden_size)
    y = lstm(x, w, "lstm.", config.nb_layers, bidirectional=not config.unidirectional)
    x = np.concatenate([x, y], axis=-1).reshape(nb_frames * nb_samples, -1)
    x = _relu(batch_norm_train(linear(x, w["fc2.weight"]), w, "bn2", stats), "fc3.input", masks)
    x = batch_norm_train(linear(x, w["fc3.weight"]), w, "bn3", stats)
    x = x.reshape(nb_frames, nb_samples, nb_channels, nb_bins) * w["output_scale"] + w["output_mean"]
    return (_relu(x, "mask", masks) * mix).transpose(1, 2, 3, 0)


def reference_loss(
    case: TrainCase,
    weights: Mapping[str, np.ndarray],
    stats: dict | None = None,
    l1_signs: np.ndarray | None = None,
    masks: dict[str, np.ndarray] | None = None,
) -> float:
    """The case's training loss computed with the NumPy reference.

    ``l1_signs``: replace ``|r|`` of the L1 loss by ``signs * r``; ``masks``: freeze UMX's ReLU masks at their first
    use. Both keep the value and the derivative at the fixture's weights but make the loss smooth around them, so
    finite differences do not straddle kinks (Demucs's inner ReLUs stay: the reference has no hook for them)."""
    stats = {} if stats is None else stats
    if case.stft is not None:
        mono = case.config.nb_channels == 1
        mixture = spectrogram(case.inputs["x"], case.stft, mono)
        estimate = umx_train_forward(weights, case.config, mixture, stats, masks)
        return umx_loss(estimate, case.inputs["y"], case.stft, mono)
    sources = case.inputs["sources"]
    estimate = demucs(weights, case.config, sources.sum(axis=1), resample_kernels=case.kernels)
    if l1_signs is None or case.recipe.loss != "l1":
        return demucs_loss(estimate, sources, case.recipe.loss)
    return float(np.mean(l1_signs * (estimate - center_trim(sources, estimate.shape[-1]))))


def residual_signs(case: TrainCase) -> np.ndarray | None:
    """Signs of the Demucs residual at the fixture's weights (``None`` for UMX's smooth MSE)."""
    if case.stft is not None or case.recipe.loss != "l1":
        return None
    sources = case.inputs["sources"]
    estimate = demucs(case.weights, case.config, sources.sum(axis=1), resample_kernels=case.kernels)
    return np.sign(estimate - center_trim(sources, estimate.shape[-1]))


def test_case_contents(case: TrainCase) -> None:
    assert set(case.grads) == set(case.updated) == set(case.updated2)
    assert set(case.grads) <= set(case.weights)
    buffers = set(case.weights) - set(case.grads)
    assert all(k.endswith(("running_mean", "running_var")) for k in buffers)
    assert all(v.dtype == np.float64 for v in (*case.weights.values(), *case.grads.values()))
    assert case.recipe.batch_size == next(iter(case.inputs.values())).shape[0]
    if case.stft is not None:
        assert not case.stft.center and case.running is not None and set(case.running) == buffers
    else:
        assert case.running is None and case.kernels is not None
    assert case.meta["versions"]["torch"]


def test_loss_matches_reference(case: TrainCase) -> None:
    stats: dict[str, np.ndarray] = {}
    loss = reference_loss(case, case.weights, stats)
    check_loss(loss, case, "float64", what="reference ")
    if case.running is not None:
        check_running(stats, case, "float64", what="reference ")


def test_zero_gradients(case: TrainCase) -> None:
    """The analytically-zero gradients are noise: a shift of input_mean leaves the train-mode loss unchanged."""
    for name in ZERO_GRADS[case.name]:
        shifted = dict(case.weights)
        shifted[name] = case.weights[name] + 0.3
        check_loss(reference_loss(case, shifted), case, "float64", what=f"{name} shifted: ")


def test_updated_is_one_adam_step(case: TrainCase) -> None:
    updated, _ = adam_step(case.weights, case.grads, case.recipe.lr, case.recipe.weight_decay)
    check_updated(updated, case, "float64", what="numpy adam ")
    check_grads(case.grads, case, "float64", what="self ")
    # the exaggerated decay makes coupled and decoupled (AdamW) decay disagree visibly, also in float32
    wrong, _ = adam_step(case.weights, case.grads, case.recipe.lr, 0.0)
    wrong = {k: v - case.recipe.lr * case.recipe.weight_decay * case.weights[k] for k, v in wrong.items()}
    with pytest.raises(AssertionError):
        check_updated(wrong, case, "float32", what="decoupled decay ")


@pytest.mark.parametrize("direction", range(2))
def test_gradient_finite_differences(case: TrainCase, direction: int) -> None:
    """``d/dt loss(w + t v)`` at 0 by 4-point central differences equals ``<grad, v>``."""
    rng = np.random.default_rng([31, direction])
    v = {k: rng.standard_normal(g.shape) * max(np.max(np.abs(case.weights[k])), 1e-3) for k, g in case.grads.items()}
    h = 1e-5
    signs = residual_signs(case)
    masks: dict[str, np.ndarray] = {}
    reference_loss(case, case.weights, masks=masks)  # record the masks at t = 0

    def loss_at(t: float) -> float:
        weights = {**case.weights, **{k: case.weights[k] + t * v[k] for k in v}}
        return reference_loss(case, weights, l1_signs=signs, masks=masks)

    d1 = (loss_at(h) - loss_at(-h)) / (2 * h)
    d2 = (loss_at(2 * h) - loss_at(-2 * h)) / (4 * h)
    numeric = (4 * d1 - d2) / 3
    analytic = sum(float(np.sum(case.grads[k] * v[k])) for k in v)
    check(numeric, analytic, "train.finite_difference", "float64", what=f"{case.name} direction {direction}")
