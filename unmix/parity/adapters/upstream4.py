"""Upstream demucs 4.1.0 (HTDemucs) stage by stage, run in its own process (:mod:`unmix.parity.oracle4`): the
``htdemucs`` and ``htdemucs_apply`` stages of the ``upstream`` adapter. NumPy only here (torch runs in the
subprocess).

- ``htdemucs``: ``demucs.htdemucs.HTDemucs`` built from the config's constructor arguments with the canonical
  weights loaded (``load_state_dict``, strict), eval mode; its forward with every key of
  ``core_spec.reference.htdemucs.htdemucs_trace_keys`` recorded by forward hooks on the modules of the same names
  (``_magnitude`` and ``_ispec`` wrapped; a decoder layer's ``(z, pre)`` keeps ``z``; the transformer's two
  outputs are ``crosstransformer.x`` / ``.xt``). The trace also holds ``stats.{mean,std,mean_t,std_t}``
  ``(B,)``: the input statistics exactly as the forward computes them (torch's float64 ``std`` is not correctly
  rounded on long inputs, see ``core_spec/reference/htdemucs.py``).
- ``htdemucs_apply``: ``demucs.apply.apply_model`` on the model or a ``BagOfModels``; the random shifts replay
  the draws the spec's seeded generator makes (``random.randint`` patched), and every network call's input
  statistics are recorded in call order.

``float64`` runs under ``torch.set_default_dtype(torch.float64)`` (the window, the sinusoidal embeddings and the
overlap-add in float64, as the spec computes them); ``float32`` as upstream runs by default. ``gpu``: the first
CUDA device, TF32 off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core_spec.configs import BagConfig, HTDemucsConfig, constructor_kwargs
from core_spec.reference.htdemucs import htdemucs_trace_keys
from core_spec.shapes import max_shift, shift_draws
from unmix.parity.oracle4 import run_oracle4

__all__ = ["STATS", "htdemucs", "htdemucs_apply", "seeded_draws"]

STATS = ("mean", "std", "mean_t", "std_t")

_SETUP = """
import random
from fractions import Fraction
import torch.nn.functional as F
from demucs.htdemucs import HTDemucs
from demucs.apply import BagOfModels, apply_model
import demucs.apply as _apply

DTYPE = {"float64": torch.float64, "float32": torch.float32}[ARGS["dtype"]]
torch.set_default_dtype(DTYPE)
if ARGS["device"] == "gpu":
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
DEVICE = torch.device("cuda" if ARGS["device"] == "gpu" else "cpu")


def build(index):
    kwargs = dict(ARGS["kwargs"][index])
    kwargs["segment"] = Fraction(*kwargs["segment"])
    model = HTDemucs(**kwargs)
    prefix = f"w{index}."
    state = {k[len(prefix):]: torch.from_numpy(v) for k, v in INPUTS.items() if k.startswith(prefix)}
    model.load_state_dict(state, strict=True)
    return model.to(DEVICE, DTYPE).eval()


def input_stats(model, mix):
    # the statistics HTDemucs.forward normalises its two branches' inputs with, by the same torch operations
    padded = F.pad(mix, (0, model.valid_length(mix.shape[-1]) - mix.shape[-1]))
    mag = model._magnitude(model._spec(padded))
    return {"mean": mag.mean(dim=(1, 2, 3)).reshape(-1), "std": mag.std(dim=(1, 2, 3)).reshape(-1),
            "mean_t": padded.mean(dim=(1, 2)).reshape(-1), "std_t": padded.std(dim=(1, 2)).reshape(-1)}
"""

_FORWARD = """
model = build(0)
record = {}


def hook(key):
    def fn(module, inputs, output):
        if key == "crosstransformer":
            record["crosstransformer.x"], record["crosstransformer.xt"] = output
        else:
            record[key] = output[0] if isinstance(output, tuple) else output
    return fn


def wrap(method, key):
    def fn(*a, **k):
        out = method(*a, **k)
        record[key] = out
        return out
    return fn


modules = dict(model.named_modules())
for key in ARGS["keys"]:
    if key in modules:
        modules[key].register_forward_hook(hook(key))
if "crosstransformer.x" in ARGS["keys"]:
    modules["crosstransformer"].register_forward_hook(hook("crosstransformer"))
model._magnitude = wrap(model._magnitude, "magnitude")
model._ispec = wrap(model._ispec, "ispec")
with torch.no_grad():
    mix = torch.from_numpy(INPUTS["mix"]).to(DEVICE, DTYPE)
    record["output"] = model(mix)
    stats = input_stats(model, mix)
for key in ARGS["keys"]:
    ARRAYS[f"trace.{key}"] = record[key]
for key, value in stats.items():
    ARRAYS[f"stats.{key}"] = value
ARRAYS["output"] = record["output"]
"""

_APPLY = """
models = [build(m) for m in range(len(ARGS["kwargs"]))]
bag = ARGS["bag"]
model = models[0]
if bag:
    bag_segment = None if bag["segment"] is None else Fraction(*bag["segment"])
    model = BagOfModels(models, weights=bag["weights"], segment=bag_segment)
calls = []
for sub in models:
    def forward(mix, _sub=sub, _forward=sub.forward):
        calls.append({k: v.double().cpu().numpy() for k, v in input_stats(_sub, mix).items()})
        return _forward(mix)
    sub.forward = forward
draws = list(ARGS["draws"])
_randint = random.randint


def replay(low, high):
    if not draws:
        raise SystemExit("oracle4: upstream drew more shifts than were replayed")
    value = draws.pop(0)
    if not low <= value <= high:
        raise SystemExit(f"oracle4: draw {value} outside upstream's [{low}, {high}]")
    return value


_apply.random.randint = replay
segment = None if ARGS["segment"] is None else Fraction(*ARGS["segment"])
with torch.no_grad():
    out = apply_model(model, torch.from_numpy(INPUTS["mix"]).to(DEVICE, DTYPE)[None], shifts=ARGS["shifts"],
                      split=ARGS["split"], overlap=ARGS["overlap"], transition_power=ARGS["transition_power"],
                      segment=segment)
_apply.random.randint = _randint
if draws:
    raise SystemExit(f"oracle4: {len(draws)} replayed draws left unused")
ARRAYS["output"] = out[0]
RESULT["calls"] = len(calls)
for i, call in enumerate(calls):
    for key, value in call.items():
        ARRAYS[f"stats.{i}.{key}"] = value
"""


def _kwargs(config: HTDemucsConfig) -> dict[str, Any]:
    """Constructor arguments as JSON (the segment as a pair)."""
    kwargs = constructor_kwargs(config)
    kwargs["segment"] = list(config.segment)
    return kwargs


def seeded_draws(config: HTDemucsConfig | BagConfig, shifts: int, seed: int) -> list[int]:
    """The shift offsets the spec's ``apply_model`` draws with ``rng=seed``: ``shifts`` per model, in bag order,
    each ``rng.integers(0, max_shift + 1)``."""
    rng = shift_draws(seed)
    nb_models = len(config.models) if isinstance(config, BagConfig) else 1
    return [int(rng.integers(0, max_shift(config.samplerate) + 1)) for _ in range(shifts * nb_models)]


def htdemucs(
    weights: Mapping[str, np.ndarray], config: HTDemucsConfig, mix: np.ndarray, dtype: str, device: str, stats=None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Upstream's forward on ``mix (B, C, L)``: ``(output (B, S, C, L), trace)``, the trace with ``stats.*``
    (module docstring). ``stats`` cannot be injected into upstream: it must be ``None``."""
    if stats is not None:
        raise ValueError("upstream computes its own input statistics")
    keys = [k for k in htdemucs_trace_keys(config) if k != "output"]
    args = {"kwargs": [_kwargs(config)], "keys": keys, "dtype": dtype, "device": device}
    inputs = {"mix": np.asarray(mix), **{f"w0.{k}": np.asarray(v) for k, v in weights.items()}}
    _, arrays = run_oracle4(_SETUP + _FORWARD, args, inputs)
    trace = {k: arrays[f"trace.{k}"] for k in keys}
    trace.update({f"stats.{k}": arrays[f"stats.{k}"] for k in STATS})
    return arrays["output"], trace


def htdemucs_apply(
    weights: Sequence[Mapping[str, np.ndarray]],
    config: HTDemucsConfig | BagConfig,
    mix: np.ndarray,
    shifts: int,
    split: bool,
    overlap: float,
    transition_power: float,
    segment: tuple[int, int] | None,
    seed: int,
    dtype: str,
    device: str,
    stats=None,
) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """Upstream's ``apply_model`` on ``mix (C, L)``: ``(stems (S, C, L), the input statistics of every network
    call in order)``. ``weights``: one mapping per model (one for a single model)."""
    if stats is not None:
        raise ValueError("upstream computes its own input statistics")
    models = config.models if isinstance(config, BagConfig) else (config,)
    bag = None
    if isinstance(config, BagConfig):
        bag = {
            "weights": None if config.weights is None else [list(r) for r in config.weights],
            "segment": None if config.segment is None else list(config.segment),
        }
    args = {
        "kwargs": [_kwargs(m) for m in models],
        "bag": bag,
        "draws": seeded_draws(config, shifts, seed),
        "shifts": shifts,
        "split": split,
        "overlap": overlap,
        "transition_power": transition_power,
        "segment": None if segment is None else list(segment),
        "dtype": dtype,
        "device": device,
    }
    inputs = {"mix": np.asarray(mix)}
    for m, w in enumerate(weights):
        inputs.update({f"w{m}.{k}": np.asarray(v) for k, v in w.items()})
    result, arrays = run_oracle4(_SETUP + _APPLY, args, inputs)
    calls = [{k: arrays[f"stats.{i}.{k}"] for k in STATS} for i in range(result["calls"])]
    return arrays["output"], calls
