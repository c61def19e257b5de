"""Gradient-parity fixture of HTDemucs: one (two) training step(s) of demucs 4.1.0 in float64 with torch autograd,
for the ports' HTDemucs ``loss_and_grads`` and optimisers (the oracle runs in its own process:
:mod:`parity_tests.oracle4`).

The module is importable without torch (both environments load the case); :func:`make` runs the oracle. File
written (``parity_tests/fixtures/``): ``train_htdemucs.npz`` with

``weights.<name>``
    canonical float64 weights the step starts from (``core_spec.seeded.random_weights``, cast: LayerScales in
    [0.5, 1.5], far from their 1e-4 / 1e-3 initialisation, which would hide the transformer's and DConv's
    gradients), every inventory entry (all trainable: HTDemucs has no buffers).
``inputs.sources``
    ``(B, S, C, L)`` float64, already "augmented": the mixture is ``sources.sum(1)``.
``loss``
    demucs 4's training loss (``solver._run_one_epoch``): the model in train mode (``segment`` := the input's
    length, no padding), L1 averaged over (channels, time) then over the batch, per source, weighted by the recipe's
    ``weights``: :func:`core_spec.reference.train.htdemucs_loss`.
``grads.<name>``
    d loss / d parameter, every parameter.
``updated.<name>`` / ``updated2.<name>``
    the parameters after one and two ``torch.optim.Adam`` steps built as demucs 4's ``get_optimizer`` builds it:
    a group of the cross-transformer's parameters (its ``make_optim_group``: ``weight_decay = t_weight_decay``,
    ``lr = t_lr`` when set) and one of all the others (the recipe's ``lr`` and ``weight_decay``); the second step's
    gradient is taken at ``updated`` on the same batch.

The recipe's weight decay is exaggerated (0.1, upstream 0) while the transformer's stays 0, so that both the
coupled decay and the two groups show in ``updated``; the per-source weights are unequal (1, 2, 0.5, 1.5). The
transformer's dropout is 0 (no port draws torch's masks; upstream trains the released models with 0.02). The
metadata records the config, recipe, seeds, the weights' SHA-256, the versions and how far upstream's own float32
step lands from the float64 one, per stage.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.configs import HTDemucsConfig, config_from_json, config_to_json
from core_spec.seeded import random_audio, random_weights
from core_spec.training import HTDemucsTrainConfig, train_config_from_dict
from parity_tests.fixtures import load, save, weights_sha256
from parity_tests.fixtures_htdemucs import SMALL, _kwargs

__all__ = [
    "CASE",
    "HTDemucsTrainCase",
    "check_grads",
    "check_loss",
    "check_updated",
    "case_sources",
    "load_case",
    "make",
    "optimizer_groups",
]

NAME = "train_htdemucs"


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    config: HTDemucsConfig
    recipe: HTDemucsTrainConfig
    batch: int
    length: int  # the network runs at this length in train mode (not the config's segment)
    weights_seed: int
    data_seed: int


# fixtures_htdemucs.SMALL at a size the fixture budget allows (31,512 parameters; 4 x float64 = 1.0 MB): depth 3
# (nfft 2048: 16 frequency rows at the bottom), channels 4, the 1x1 samplers (bottom_channels 8), 3 transformer
# layers (self, cross, self) with 2 heads, DConv in encoder and decoder; 1500 samples, not a multiple of the hop
# (512) nor of the time strides, a batch of 2
CASE = CaseSpec(
    config=dataclasses.replace(SMALL, channels=4, depth=3, bottom_channels=8, t_layers=3, t_heads=2, dconv_comp=2),
    recipe=HTDemucsTrainConfig(batch_size=2, lr=3e-4, weight_decay=0.1, weights=(1.0, 2.0, 0.5, 1.5)),
    batch=2,
    length=1500,
    weights_seed=40,
    data_seed=41,
)


@dataclasses.dataclass
class HTDemucsTrainCase:
    """The stored step (module docstring)."""

    name: str
    config: HTDemucsConfig
    recipe: HTDemucsTrainConfig
    weights: dict[str, np.ndarray]
    sources: np.ndarray  # (B, S, C, L)
    loss: float
    grads: dict[str, np.ndarray]
    updated: dict[str, np.ndarray]
    updated2: dict[str, np.ndarray]
    meta: dict[str, Any]


def case_sources(spec: CaseSpec = CASE) -> np.ndarray:
    """The seeded batch ``(B, S, C, L)`` float64 (source ``i`` seeded ``1000 * data_seed + i``)."""
    cfg = spec.config
    per_source = [
        random_audio(spec.length, cfg.audio_channels, seed=1000 * spec.data_seed + i, nb_samples=spec.batch)
        for i in range(len(cfg.sources))
    ]
    return np.stack(per_source, axis=1).astype(np.float64)


def optimizer_groups(names: list[str], recipe: HTDemucsTrainConfig, config: HTDemucsConfig) -> list[dict[str, Any]]:
    """demucs 4's ``get_optimizer`` groups by parameter name: ``[{"names": others, "lr", "weight_decay"},
    {"names": crosstransformer.*, "lr": t_lr or lr, "weight_decay": t_weight_decay}]`` (the second only when the
    model has a transformer)."""
    t_names = [n for n in names if n.startswith("crosstransformer.")]
    others = [n for n in names if not n.startswith("crosstransformer.")]
    groups = [{"names": others, "lr": recipe.lr, "weight_decay": recipe.weight_decay}]
    if t_names:
        lr = recipe.lr if config.t_lr is None else config.t_lr
        groups.append({"names": t_names, "lr": lr, "weight_decay": config.t_weight_decay})
    return groups


def check_loss(actual: float, case: HTDemucsTrainCase, dtype: str, device: str = "cpu", what: str = "") -> None:
    """The loss against the fixture (stage ``train.loss``)."""
    from core_spec.tolerances import check

    check(
        np.asarray(actual), np.asarray(case.loss), "htdemucs.train.loss", dtype, device, what=f"{what}{case.name} loss"
    )


def check_grads(
    actual: dict[str, np.ndarray], case: HTDemucsTrainCase, dtype: str, device: str = "cpu", what: str = ""
) -> float:
    """Every gradient against the fixture, per tensor (stage ``htdemucs.train.grad``); missing or extra names are an
    error. Returns the worst relative error (``max|a - e| / max|e|``)."""
    from core_spec.tolerances import check, metrics

    missing, extra = sorted(set(case.grads) - set(actual)), sorted(set(actual) - set(case.grads))
    if missing or extra:
        raise AssertionError(f"{what}{case.name} gradients: missing {missing}, unexpected {extra}")
    worst = 0.0
    for name, expected in case.grads.items():
        a = np.asarray(actual[name])
        check(a, expected, "htdemucs.train.grad", dtype, device, what=f"{what}{case.name} grad {name}")
        worst = max(worst, metrics(a, expected).rel)
    return worst


def check_updated(
    actual: dict[str, np.ndarray],
    case: HTDemucsTrainCase,
    dtype: str,
    device: str = "cpu",
    what: str = "",
    step: int = 1,
) -> float:
    """Parameters after ``step`` (1 or 2) Adam steps (stage ``train.update``); returns the worst relative error."""
    from core_spec.tolerances import check, metrics

    expected = case.updated if step == 1 else case.updated2
    missing = sorted(set(expected) - set(actual))
    if missing:
        raise AssertionError(f"{what}{case.name} updated parameters: missing {missing}")
    worst = 0.0
    for name, e in expected.items():
        a = np.asarray(actual[name])
        check(a, e, "train.update", dtype, device, what=f"{what}{case.name} step{step} {name}")
        worst = max(worst, metrics(a, e).rel)
    return worst


def _group(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in arrays.items() if k.startswith(prefix + ".")}


def load_case() -> HTDemucsTrainCase:
    """The stored step (``make fixtures --only train`` writes it)."""
    arrays, meta = load(NAME)
    weights = _group(arrays, "weights")
    grads = _group(arrays, "grads")
    return HTDemucsTrainCase(
        name="htdemucs",
        config=config_from_json(meta["config"]),
        recipe=train_config_from_dict("htdemucs", meta["recipe"]),
        weights=weights,
        sources=arrays["inputs.sources"],
        loss=float(arrays["loss"]),
        grads={k: grads[k] for k in weights if k in grads},
        updated=_group(arrays, "updated"),
        updated2=_group(arrays, "updated2"),
        meta=meta,
    )


# --- writing (runs demucs 4.1.0 in its own process) -----------------------------------------------------------

_STEP_SNIPPET = """
from fractions import Fraction
import torch.nn.functional as F
from demucs.htdemucs import HTDemucs

DTYPES = {"float64": torch.float64, "float32": torch.float32}
torch.set_num_threads(2)
state = {k[2:]: v for k, v in INPUTS.items() if k.startswith("w.")}
recipe = ARGS["recipe"]
for name, dtype in DTYPES.items():
    torch.set_default_dtype(dtype)
    torch.manual_seed(0)
    kwargs = dict(ARGS["kwargs"])
    kwargs["segment"] = Fraction(*kwargs["segment"])
    model = HTDemucs(**kwargs).to(dtype)
    model.load_state_dict({k: torch.from_numpy(v).to(dtype) for k, v in state.items()})
    model.train()
    # demucs/train.py get_optimizer: the modules with make_optim_group first get their own group, then the rest
    seen, groups = set(), []
    for _, module in model.named_modules():
        if hasattr(module, "make_optim_group"):
            group = module.make_optim_group()
            seen |= set(group["params"])
            groups.append(group)
    groups.insert(0, {"params": [p for p in model.parameters() if p not in seen]})
    optimizer = torch.optim.Adam(groups, lr=recipe["lr"], betas=(0.9, 0.999), weight_decay=recipe["weight_decay"])
    sources = torch.from_numpy(INPUTS["sources"]).to(dtype)
    weights = torch.tensor(recipe["weights"] or [1.0] * sources.shape[1]).to(sources)
    named = dict(model.named_parameters())

    def step():
        optimizer.zero_grad()
        mix = sources.sum(dim=1)
        estimate = model(mix)
        assert estimate.shape == sources.shape, (estimate.shape, sources.shape)
        dims = tuple(range(2, sources.dim()))
        if recipe["loss"] == "l1":
            loss = F.l1_loss(estimate, sources, reduction="none").mean(dims).mean(0)
        else:
            loss = F.mse_loss(estimate, sources, reduction="none").mean(dims)
        loss = (loss * weights).sum() / weights.sum()
        loss.backward()
        grads = {k: p.grad.detach().clone() for k, p in named.items()}
        optimizer.step()
        return loss.detach(), grads

    loss, grads = step()
    ARRAYS[f"loss.{name}"] = loss
    ARRAYS.update({f"grads.{k}.{name}": v for k, v in grads.items()})
    ARRAYS.update({f"updated.{k}.{name}": p.detach().clone() for k, p in named.items()})
    step()
    ARRAYS.update({f"updated2.{k}.{name}": p.detach().clone() for k, p in named.items()})
RESULT["group_sizes"] = [len(g["params"]) for g in groups]
RESULT["segment_after"] = str(model.segment)
"""


def _rel(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    from core_spec.tolerances import metrics

    return max(metrics(actual[k], expected[k]).rel for k in expected)


def _snr(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    """The lowest per-tensor SNR (dB) over a dict of tensors."""
    from core_spec.tolerances import metrics

    return min(metrics(actual[k], expected[k]).snr_db for k in expected)


def make() -> list[Path]:
    """Run demucs 4.1.0's two steps (float64 and float32) and write ``train_htdemucs.npz``; returns its path."""
    from parity_tests.fixtures_htdemucs import _versions
    from parity_tests.oracle4 import run_oracle4

    spec = CASE
    weights32 = random_weights(spec.config, spec.weights_seed)
    weights = {k: v.astype(np.float64) for k, v in weights32.items()}
    sources = case_sources(spec)
    inputs = {"sources": sources, **{f"w.{k}": v for k, v in weights.items()}}
    args = {"kwargs": _kwargs(spec.config), "recipe": dataclasses.asdict(spec.recipe)}
    result, arrays = run_oracle4(_STEP_SNIPPET, args=args, inputs=inputs, timeout=900)

    def stage(group: str, dtype: str) -> dict[str, np.ndarray]:
        suffix = "." + dtype
        return {k[len(group) + 1 : -len(suffix)]: v for k, v in arrays.items() if k.startswith(group + ".")
                and k.endswith(suffix)}  # fmt: skip

    loss, loss32 = float(arrays["loss.float64"]), float(arrays["loss.float32"])
    grads, updated, updated2 = (stage(g, "float64") for g in ("grads", "updated", "updated2"))
    float32 = {
        "loss": abs(loss32 - loss) / abs(loss),
        "grad": _rel(stage("grads", "float32"), grads),
        "grad_snr_db": _snr(stage("grads", "float32"), grads),
        "update": _rel(stage("updated", "float32"), updated),
        "update2": _rel(stage("updated2", "float32"), updated2),
    }
    out: dict[str, np.ndarray] = {"loss": np.array(loss), "inputs.sources": sources}
    for group, values in (("weights", weights), ("grads", grads), ("updated", updated), ("updated2", updated2)):
        out.update({f"{group}.{k}": np.asarray(v, np.float64) for k, v in values.items()})
    meta = {
        "case": "htdemucs",
        "config": config_to_json(spec.config),
        "recipe": dataclasses.asdict(spec.recipe),
        "batch": spec.batch,
        "length": spec.length,
        "weights_seed": spec.weights_seed,
        "data_seed": spec.data_seed,
        "weights_sha256": weights_sha256(weights32),
        "optimizer_group_sizes": result["group_sizes"],
        "upstream_segment_after_step": result["segment_after"],
        "upstream_float32_rel": float32,
        "versions": _versions(),
    }
    return [save(NAME, out, meta)]
