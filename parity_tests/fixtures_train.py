"""Gradient-parity fixtures: one training step of upstream openunmix 1.3.0 / demucs 2.0.3 in float64 with torch
autograd, for the ports' ``train.loss_and_grads`` and optimisers.

The module is importable without torch (both environments load the cases); :func:`make` needs the oracle. Files
written (``parity_tests/fixtures/``), one per case of :data:`TRAIN_CASES`, ``train_<case>.npz``:

``weights.<name>``
    canonical float64 weights the step starts from (``core_spec.seeded.random_weights``, cast), every inventory
    entry (UMX: BatchNorm running statistics included).
``inputs.x`` / ``inputs.y`` (UMX)
    mixture and target waveforms ``(B, C, T)``; the network reads ``|STFT(x)|`` (``case.stft``: ``center=False``,
    the float64 periodic Hann window), the loss compares with ``|STFT(y)|``.
``inputs.sources`` (Demucs)
    ``(B, S, C, T)``, ``T = valid_length(...)``, already "augmented": the mixture is ``sources.sum(1)``.
``loss``
    the scalar loss: UMX ``mean((model(|X|) - |Y|)^2)`` with the model in train mode (BatchNorm on batch statistics,
    LSTM dropout off: ``p = 0``, no port can reproduce torch's masks); Demucs ``mean|model(mix) - center_trim(s)|``.
``grads.<name>``
    d loss / d parameter for every *trainable* parameter (the weights minus BatchNorm's ``running_mean`` /
    ``running_var``, which are buffers).
``updated.<name>``
    the trainable parameters after one ``torch.optim.Adam(lr, weight_decay)`` step (coupled L2 decay, fresh state).
``updated2.<name>``
    after a second Adam step whose gradient is taken at ``updated`` on the same batch (tests the moment estimates
    and the bias correction of step 2; the optimiser state carries over).
``kernels.up`` / ``kernels.down`` (Demucs)
    julius's resampling kernels as upstream builds them (float32 values, see ``core_spec.reference.resample``):
    a float64 port injects them (``resample_kernels=``) to reach the float64 tolerances.
``running.<name>`` (UMX)
    ``bn*.running_mean`` / ``bn*.running_var`` after the first forward in train mode (momentum 0.1, unbiased
    batch variance).

The recipe's weight decay is exaggerated (0.1, upstream 1e-5) so that coupled (``Adam(weight_decay)``) and
decoupled (AdamW) decay give visibly different ``updated`` also in float32. The metadata records the versions,
the weights' SHA-256 and how far upstream's own float32 run lands from the float64 fixture, per stage.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.configs import DemucsConfig, STFTConfig, UMXConfig, config_from_json, config_to_json
from core_spec.seeded import random_audio, random_weights
from core_spec.shapes import valid_length
from core_spec.tolerances import check
from core_spec.training import DemucsTrainConfig, UMXTrainConfig, train_config_from_dict
from parity_tests.fixtures import load, save, weights_sha256

__all__ = [
    "TRAIN_CASES",
    "ZERO_GRADS",
    "TrainCase",
    "TrainCaseSpec",
    "check_grads",
    "check_loss",
    "check_running",
    "check_updated",
    "load_train_case",
    "make",
]

BN_BUFFERS = ("running_mean", "running_var")

# Gradients that are zero analytically (rounding noise in any implementation): a constant added to fc1's input is
# removed by bn1's batch mean in train mode, so d loss / d input_mean = 0. They are compared on the scale of the
# model's largest gradient (stage "train.grad_zero"), not on their own (noise / noise).
ZERO_GRADS = {"umx": ("input_mean",), "demucs": ()}


@dataclasses.dataclass(frozen=True)
class TrainCaseSpec:
    """How a case is made: the model, the recipe, the batch and the seeds."""

    config: UMXConfig | DemucsConfig
    recipe: UMXTrainConfig | DemucsTrainConfig
    batch: int
    length: int  # UMX: waveform samples; Demucs: the model input is valid_length(length)
    weights_seed: int
    data_seed: int
    stft: STFTConfig | None = None  # UMX only


TRAIN_CASES: dict[str, TrainCaseSpec] = {
    # n_fft 512 / hop 128, 33 un-centred frames, hidden 16, 3 bidirectional LSTM layers, max_bin 64, batch 2
    "umx": TrainCaseSpec(
        config=UMXConfig(nb_bins=257, nb_channels=2, hidden_size=16, nb_layers=3, max_bin=64),
        recipe=UMXTrainConfig(target="vocals", batch_size=2, lr=1e-3, weight_decay=0.1),
        batch=2,
        length=4608,
        weights_seed=21,
        data_seed=22,
        stft=STFTConfig(n_fft=512, n_hop=128, center=False),
    ),
    # demucs_unittest's layout at a size the fixture budget allows: channels 2, depth 4 (resample, GLU, rewrite,
    # 2-layer BLSTM as released); 17k parameters
    "demucs": TrainCaseSpec(
        config=DemucsConfig(channels=2, depth=4),
        recipe=DemucsTrainConfig(batch_size=2, lr=3e-4, weight_decay=0.1),
        batch=2,
        length=400,
        weights_seed=23,
        data_seed=24,
    ),
}


@dataclasses.dataclass
class TrainCase:
    """One stored training step (see the module docstring for every field's meaning)."""

    name: str
    config: UMXConfig | DemucsConfig
    recipe: UMXTrainConfig | DemucsTrainConfig
    weights: dict[str, np.ndarray]  # float64, every inventory entry
    inputs: dict[str, np.ndarray]  # UMX: x, y (B, C, T); Demucs: sources (B, S, C, T)
    loss: float
    grads: dict[str, np.ndarray]  # trainable parameters only
    updated: dict[str, np.ndarray]  # trainable parameters after one Adam step
    updated2: dict[str, np.ndarray]  # after a second step (gradient at `updated`, same batch)
    running: dict[str, np.ndarray] | None  # UMX: BatchNorm running statistics after the step; Demucs: None
    stft: STFTConfig | None  # UMX: the training STFT (center=False); Demucs: None
    kernels: dict[str, np.ndarray] | None  # Demucs: julius's float32-built resampling kernels {"up", "down"}
    meta: dict[str, Any]

    @property
    def trainable(self) -> tuple[str, ...]:
        """Names of the trainable parameters (the keys of ``grads``), in inventory order."""
        return tuple(k for k in self.weights if k in self.grads)


def _global_peak(grads: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(g))) for g in grads.values())


def check_loss(actual: float, case: TrainCase, dtype: str, device: str = "cpu", what: str = "") -> None:
    """The loss of one step against the fixture (stage ``train.loss``)."""
    from core_spec.tolerances import check

    check(np.asarray(actual), np.asarray(case.loss), "train.loss", dtype, device, what=f"{what}{case.name} loss")


def check_grads(
    actual: dict[str, np.ndarray], case: TrainCase, dtype: str, device: str = "cpu", what: str = ""
) -> None:
    """Every gradient of ``case.trainable`` against the fixture: per tensor (``train.grad``), except the
    analytically-zero ones of :data:`ZERO_GRADS`, compared relative to the largest gradient (``train.grad_zero``).
    Missing or extra names are an error."""
    from core_spec.tolerances import check

    missing, extra = sorted(set(case.grads) - set(actual)), sorted(set(actual) - set(case.grads))
    if missing or extra:
        raise AssertionError(f"{what}{case.name} gradients: missing {missing}, unexpected {extra}")
    peak = _global_peak(case.grads)
    for name in case.trainable:
        a, e = np.asarray(actual[name]), case.grads[name]
        label = f"{what}{case.name} grad {name}"
        if name in ZERO_GRADS[case.name]:
            check(a / peak, e / peak, "train.grad_zero", dtype, device, what=label)
        else:
            check(a, e, "train.grad", dtype, device, what=label)


def check_updated(
    actual: dict[str, np.ndarray], case: TrainCase, dtype: str, device: str = "cpu", what: str = "", step: int = 1
) -> None:
    """Trainable parameters after ``step`` (1 or 2) Adam steps against ``case.updated`` / ``case.updated2``."""
    from core_spec.tolerances import check

    expected = case.updated if step == 1 else case.updated2
    missing = sorted(set(expected) - set(actual))
    if missing:
        raise AssertionError(f"{what}{case.name} updated parameters: missing {missing}")
    for name in case.trainable:
        check(actual[name], expected[name], "train.update", dtype, device, what=f"{what}{case.name} step{step} {name}")


def check_running(
    actual: dict[str, np.ndarray], case: TrainCase, dtype: str, device: str = "cpu", what: str = ""
) -> None:
    """BatchNorm running statistics after the step against ``case.running`` (stage ``train.bn_running``)."""
    from core_spec.tolerances import check

    if case.running is None:
        raise ValueError(f"case {case.name!r} has no BatchNorm")
    for name, expected in case.running.items():
        check(actual[name], expected, "train.bn_running", dtype, device, what=f"{what}{case.name} {name}")


def _group(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in arrays.items() if k.startswith(prefix + ".")}


def load_train_case(name: str) -> TrainCase:
    """The stored case ``name`` (one of :data:`TRAIN_CASES`); a clear error names the command that makes it."""
    if name not in TRAIN_CASES:
        raise KeyError(f"unknown training case {name!r}; known: {sorted(TRAIN_CASES)}")
    arrays, meta = load(f"train_{name}")
    config = config_from_json(meta["config"])
    recipe = train_config_from_dict(meta["recipe_model"], meta["recipe"])
    weights = _group(arrays, "weights")
    order = list(weights)
    grads = _group(arrays, "grads")
    return TrainCase(
        name=name,
        config=config,
        recipe=recipe,
        weights=weights,
        inputs=_group(arrays, "inputs"),
        loss=float(arrays["loss"]),
        grads={k: grads[k] for k in order if k in grads},
        updated=_group(arrays, "updated"),
        updated2=_group(arrays, "updated2"),
        running=_group(arrays, "running") or None,
        stft=config_from_json(meta["stft"]) if meta.get("stft") else None,
        kernels=_group(arrays, "kernels") or None,
        meta=meta,
    )


def case_inputs(spec: TrainCaseSpec) -> dict[str, np.ndarray]:
    """The seeded batch of a case (float64): UMX ``x`` = sum of four sources, ``y`` = the first one; Demucs
    ``sources`` of length ``valid_length(spec.length)``."""
    if isinstance(spec.config, UMXConfig):
        c = spec.config.nb_channels
        sources = np.stack(
            [random_audio(spec.length, c, seed=1000 * spec.data_seed + i, nb_samples=spec.batch) for i in range(4)]
        )
        gains = np.array([1.5, 1.0, 0.7, 0.5])[:, None, None, None]
        sources = sources * gains
        return {"x": sources.sum(0), "y": sources[0]}
    cfg = spec.config
    length = valid_length(spec.length, cfg)
    per_source = [
        random_audio(length, cfg.audio_channels, seed=1000 * spec.data_seed + i, nb_samples=spec.batch)
        for i in range(len(cfg.sources))
    ]
    return {"sources": np.stack(per_source, axis=1)}


# --- writing (needs torch) ------------------------------------------------------------------------------------


def _umx_step(spec: TrainCaseSpec, weights: dict[str, np.ndarray], inputs: dict[str, np.ndarray], torch, dtype):
    """Upstream train step(s) in ``dtype``: returns loss, grads, updated, updated2, running (NumPy)."""
    from openunmix.transforms import ComplexNorm, TorchSTFT

    from parity_tests import oracle

    cfg, stft_cfg, recipe = spec.config, spec.stft, spec.recipe
    model = oracle.umx_model(cfg, {k: v.astype(np.float64) for k, v in weights.items()}, torch.float64).to(dtype)
    model.lstm.dropout = 0.0  # parity cannot reproduce torch's dropout masks
    model.train()
    window = torch.nn.Parameter(torch.hann_window(stft_cfg.n_fft, dtype=torch.float64).to(dtype), requires_grad=False)
    encoder = torch.nn.Sequential(
        TorchSTFT(n_fft=stft_cfg.n_fft, n_hop=stft_cfg.n_hop, window=window, center=stft_cfg.center),
        ComplexNorm(mono=cfg.nb_channels == 1),
    )
    x = torch.from_numpy(inputs["x"]).to(dtype)
    y = torch.from_numpy(inputs["y"]).to(dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    named = dict(model.named_parameters())

    def step() -> tuple[float, dict[str, np.ndarray]]:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(encoder(x)), encoder(y))
        loss.backward()
        grads = {k: p.grad.detach().numpy().copy() for k, p in named.items()}
        optimizer.step()
        return float(loss.item()), grads

    loss, grads = step()
    updated = {k: p.detach().numpy().copy() for k, p in named.items()}
    running = {
        k: v.detach().numpy().copy() for k, v in model.state_dict().items() if k.rsplit(".", 1)[-1] in BN_BUFFERS
    }
    step()
    updated2 = {k: p.detach().numpy().copy() for k, p in named.items()}
    return loss, grads, updated, updated2, running


def _demucs_step(spec: TrainCaseSpec, weights: dict[str, np.ndarray], inputs: dict[str, np.ndarray], torch, dtype):
    from demucs.utils import center_trim

    from parity_tests import oracle

    recipe = spec.recipe
    model = oracle.demucs_model(spec.config, weights, torch.float64).to(dtype)
    model.train()
    sources = torch.from_numpy(inputs["sources"]).to(dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    criterion = torch.nn.L1Loss() if recipe.loss == "l1" else torch.nn.MSELoss()
    named = dict(model.named_parameters())

    def step() -> tuple[float, dict[str, np.ndarray]]:
        optimizer.zero_grad()
        estimates = model(sources.sum(dim=1))
        loss = criterion(estimates, center_trim(sources, estimates))
        loss.backward()
        grads = {k: p.grad.detach().numpy().copy() for k, p in named.items()}
        optimizer.step()
        return float(loss.item()), grads

    loss, grads = step()
    updated = {k: p.detach().numpy().copy() for k, p in named.items()}
    step()
    updated2 = {k: p.detach().numpy().copy() for k, p in named.items()}
    return loss, grads, updated, updated2, {}


def _rel(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], skip: tuple[str, ...] = ()) -> float:
    """Worst per-tensor ``max|a - e| / max|e|`` (the table's ``rel``), over a dict of tensors."""
    from core_spec.tolerances import metrics

    return max(metrics(actual[k], expected[k]).rel for k in expected if k not in skip)


def _make_case(name: str, spec: TrainCaseSpec) -> Path:
    from parity_tests.oracle import torch, versions

    weights32 = random_weights(spec.config, spec.weights_seed)
    weights = {k: v.astype(np.float64) for k, v in weights32.items()}
    inputs = case_inputs(spec)
    run = _umx_step if isinstance(spec.config, UMXConfig) else _demucs_step
    loss, grads, updated, updated2, running = run(spec, weights, inputs, torch, torch.float64)
    # upstream's own float32 run against the float64 one: what a float32 port can be expected to reach
    loss32, grads32, updated32, _, running32 = run(spec, weights32, inputs, torch, torch.float32)
    zero = ZERO_GRADS[name]
    peak = _global_peak(grads)
    for k in zero:  # the reason for train.grad_zero: analytically zero, rounding noise only
        check(grads[k] / peak, np.zeros_like(grads[k]), "train.grad_zero", "float64", what=f"{name}: gradient of {k}")
    float32 = {
        "loss": abs(loss32 - loss) / abs(loss),
        "grad": _rel(grads32, grads, skip=zero),
        "grad_zero": max((float(np.max(np.abs(grads32[k]))) / peak for k in zero), default=None),
        "update": _rel(updated32, updated),
        "bn_running": _rel(running32, running) if running else None,
    }
    arrays: dict[str, np.ndarray] = {"loss": np.array(loss)}
    if isinstance(spec.config, DemucsConfig):
        from parity_tests.fixtures_demucs import _julius_kernels

        arrays.update(_julius_kernels())
    for group, values in (
        ("weights", weights),
        ("inputs", inputs),
        ("grads", grads),
        ("updated", updated),
        ("updated2", updated2),
        ("running", running),
    ):
        arrays.update({f"{group}.{k}": np.asarray(v) for k, v in values.items()})
    meta = {
        "case": name,
        "config": config_to_json(spec.config),
        "recipe_model": spec.recipe.model,
        "recipe": dataclasses.asdict(spec.recipe),
        "stft": config_to_json(spec.stft) if spec.stft is not None else None,
        "batch": spec.batch,
        "length": spec.length,
        "weights_seed": spec.weights_seed,
        "data_seed": spec.data_seed,
        "weights_sha256": weights_sha256(weights32),
        "upstream_float32_rel": float32,
        "versions": versions(),
    }
    return save(f"train_{name}", arrays, meta)


def make() -> list[Path]:
    """Run one (two) upstream training step(s) per case and write ``train_<case>.npz``; returns the paths."""
    from parity_tests.oracle import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    return [_make_case(name, spec) for name, spec in TRAIN_CASES.items()]
