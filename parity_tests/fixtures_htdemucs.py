"""HTDemucs fixtures: demucs 4.1.0 outputs, per stage, float64 and float32 (the oracle runs in its own process:
:mod:`parity_tests.oracle4`).

The module is importable without torch (the cases are plain data, shared by the tests of every environment);
:func:`make` runs the oracle. Files written (``parity_tests/fixtures/``):

``htdemucs_forward_<case>.npz`` for every case of :data:`FORWARD_CASES`
    ``mix`` ``(B, C, L)``; ``stats.{mean,std,mean_t,std_t}.<dtype>`` ``(B,)``: the statistics upstream normalised
    the two branches' inputs with (torch's float64 ``std`` is not correctly rounded on long inputs: tests at the
    released length inject them); ``trace.<key>.<dtype>`` for every key of
    :func:`core_spec.reference.htdemucs.htdemucs_trace_keys` the case records (forward hooks on the modules of the
    same names, ``_magnitude`` and ``_ispec`` wrapped; a decoder's hook keeps ``z`` of its ``(z, pre)``, the
    transformer's its two outputs as ``crosstransformer.x`` / ``.xt``); ``output.<dtype>`` ``(B, S, C, L)``.
    Released-shape cases record no trace (their stages are tens of MB): the output only.
``htdemucs_apply_<case>.npz`` for every case of :data:`APPLY_CASES`
    ``mix`` ``(C, L)``; ``demucs.apply.apply_model`` on the model or a ``BagOfModels`` as ``output.<dtype>``
    ``(S, C, L)``; ``draws.<dtype>``: upstream's ``random.randint`` shift draws of that run, in order (replayed by
    the spec's ``rng``).

``<dtype>`` is the precision upstream ran in: ``float64`` under ``torch.set_default_dtype(torch.float64)`` (so
the window, the sinusoidal embeddings and the overlap-add are float64 too, as the spec computes them), ``float32``
as upstream runs by default. Weights come from ``core_spec.seeded.random_weights(config, seed)`` (LayerScales in
[0.5, 1.5], far from their 1e-4 initialisation, which hides transformer errors); the metadata holds the config
(JSON), the seeds, the weights' SHA-256 and the versions.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.configs import BagConfig, HTDemucsConfig, config_to_json, htdemucs_preset
from core_spec.reference.htdemucs import htdemucs_trace_keys
from core_spec.seeded import random_audio, random_weights
from parity_tests.fixtures import save, weights_sha256

DTYPES = ("float64", "float32")

# Small enough to trace every stage (nfft 2048: 1024 bins, 4 frequency layers down to 4 rows; a 0.05-s segment
# of 2205 samples, 5 frames, 9 time tokens at the bottom), with every released structure: DConv in encoder and
# decoder (dconv_mode 3), the 1x1 samplers (bottom_channels), 5 transformer layers (self, cross, self, cross, self).
SMALL = HTDemucsConfig(
    channels=8,
    nfft=2048,
    bottom_channels=32,
    t_layers=5,
    t_heads=4,
    dconv_mode=3,
    dconv_comp=4,
    segment=(1, 20),
)


@dataclasses.dataclass(frozen=True)
class ForwardCase:
    config: HTDemucsConfig
    nb_samples: int
    length: int  # <= the training segment: the network pads on the right and crops
    weights_seed: int
    mix_seed: int
    traced: bool = True


@dataclasses.dataclass(frozen=True)
class ApplyCase:
    configs: tuple[HTDemucsConfig, ...]  # one model, or the models of a bag
    bag_weights: tuple[tuple[float, ...], ...] | None  # None: one model (no bag), or a bag with unit weights
    bag: bool
    length: int
    shifts: int
    overlap: float
    transition_power: float
    segment: tuple[int, int] | None  # apply_model's segment argument (seconds), None: the model's
    weights_seed: int
    mix_seed: int
    draws_seed: int  # Python's random.seed before upstream's apply_model

    @property
    def config(self) -> HTDemucsConfig | BagConfig:
        if not self.bag:
            return self.configs[0]
        return BagConfig(models=self.configs, weights=self.bag_weights)


FORWARD_CASES: dict[str, ForwardCase] = {
    # the whole training segment, two items
    "small": ForwardCase(SMALL, 2, SMALL.segment_samples, weights_seed=20, mix_seed=21),
    # shorter than the segment (zero-padded on the right inside the network), GroupNorms from layer 2, wider
    # rewrites, decoder-only DConv, 6 sources, mono
    "small_variant": ForwardCase(
        dataclasses.replace(
            SMALL,
            sources=("drums", "bass", "other", "vocals", "guitar", "piano"),
            audio_channels=1,
            norm_starts=2,
            context_enc=1,
            context=0,
            dconv_mode=2,
            bottom_channels=0,
            t_layers=2,
        ),
        1,
        1500,
        weights_seed=22,
        mix_seed=23,
    ),
    # the released shapes (41,984,456 and 27,414,996 parameters), a short input: output only
    "htdemucs": ForwardCase(htdemucs_preset("htdemucs"), 1, 4096, weights_seed=24, mix_seed=25, traced=False),
    "htdemucs_6s": ForwardCase(htdemucs_preset("htdemucs_6s"), 1, 2048, weights_seed=26, mix_seed=27, traced=False),
}

_ONE_HOT = tuple(tuple(1.0 if k == m else 0.0 for k in range(4)) for m in range(4))

APPLY_CASES: dict[str, ApplyCase] = {
    # 4 segments of 2205 (stride 1653), no shift
    "split": ApplyCase((SMALL,), None, False, 6000, 0, 0.25, 1.0, None, 30, 31, 0),
    # two random shifts (up to 0.5 s) around the split, half overlap, a sharper cross-fade, a 0.025-s segment
    # argument (each chunk padded with its neighbours to 1102 samples, then with zeros to the 2205 it runs at)
    "shifts_segment": ApplyCase((SMALL,), None, False, 4000, 2, 0.5, 2.0, (1, 40), 32, 33, 1),
    # a bag of 4 with one-hot weights (as htdemucs_ft) and one shift: each member draws its own
    "bag_one_hot": ApplyCase((SMALL,) * 4, _ONE_HOT, True, 3000, 1, 0.25, 1.0, None, 34, 35, 2),
    # a bag of 2 with unit weights, shorter than one segment
    "bag_mean": ApplyCase((SMALL,) * 2, None, True, 1500, 0, 0.25, 1.0, None, 36, 37, 3),
}


def forward_mix(case: ForwardCase) -> np.ndarray:
    """The seeded mixture of a forward case: ``(nb_samples, audio_channels, length)``."""
    return random_audio(case.length, case.config.audio_channels, seed=case.mix_seed, nb_samples=case.nb_samples)


def apply_mix(case: ApplyCase) -> np.ndarray:
    """The seeded track of an apply case: ``(audio_channels, length)``."""
    return random_audio(case.length, case.configs[0].audio_channels, seed=case.mix_seed)


def apply_weights(case: ApplyCase) -> list[dict[str, np.ndarray]]:
    """The seeded weights of every model of an apply case (model ``m`` seeded ``weights_seed + m``)."""
    return [random_weights(c, case.weights_seed + m) for m, c in enumerate(case.configs)]


class ReplayDraws:
    """Replays upstream's ``random.randint(0, max_shift)`` draws as the spec's ``rng.integers(0, max_shift + 1)``."""

    def __init__(self, draws: np.ndarray) -> None:
        self._draws = [int(d) for d in np.asarray(draws).ravel()]
        self._next = 0

    def integers(self, low: int, high: int) -> int:
        if self._next >= len(self._draws):
            raise RuntimeError(f"the spec drew more shifts than upstream's {len(self._draws)}")
        value = self._draws[self._next]
        self._next += 1
        if not low <= value < high:
            raise RuntimeError(f"upstream's draw {value} is outside the spec's [{low}, {high})")
        return value

    @property
    def exhausted(self) -> bool:
        return self._next == len(self._draws)


# --- writing (runs demucs 4.1.0 in its own process) -----------------------------------------------------------

_MODEL_CODE = """
import random
from fractions import Fraction
from demucs.htdemucs import HTDemucs
from demucs.apply import BagOfModels, apply_model
import demucs.apply as _apply

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def build(kwargs, state, dtype):
    kwargs = dict(kwargs)
    kwargs["segment"] = Fraction(*kwargs["segment"])
    torch.set_default_dtype(dtype)
    model = HTDemucs(**kwargs).to(dtype).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return model


def split_state(prefix):
    return {k[len(prefix):]: v for k, v in INPUTS.items() if k.startswith(prefix)}
"""

_FORWARD_SNIPPET = (
    _MODEL_CODE
    + """
keys = ARGS["trace_keys"]
for name, dtype in DTYPES.items():
    model = build(ARGS["kwargs"], split_state("w."), dtype)
    record = {}

    def hook(key):
        def fn(module, inputs, output):
            if key == "crosstransformer":
                record["crosstransformer.x"], record["crosstransformer.xt"] = output
            elif isinstance(output, tuple):  # HDecLayer: (z, pre)
                record[key] = output[0]
            else:
                record[key] = output
        return fn

    modules = dict(model.named_modules())
    for key in keys:
        if key in modules:
            modules[key].register_forward_hook(hook(key))
    if "crosstransformer.x" in keys:
        modules["crosstransformer"].register_forward_hook(hook("crosstransformer"))

    def wrap(method, key):
        def fn(*a, **k):
            out = method(*a, **k)
            record[key] = out
            return out
        return fn

    model._magnitude = wrap(model._magnitude, "magnitude")
    model._ispec = wrap(model._ispec, "ispec")
    with torch.no_grad():
        mix = torch.from_numpy(INPUTS["mix"]).to(dtype)
        out = model(mix)
        # the input statistics exactly as the forward computes them (torch's float64 std is not correctly rounded)
        padded = torch.nn.functional.pad(mix, (0, model.valid_length(mix.shape[-1]) - mix.shape[-1]))
        mag = model._magnitude(model._spec(padded))
        ARRAYS[f"stats.mean.{name}"] = mag.mean(dim=(1, 2, 3)).reshape(-1)
        ARRAYS[f"stats.std.{name}"] = mag.std(dim=(1, 2, 3)).reshape(-1)
        ARRAYS[f"stats.mean_t.{name}"] = padded.mean(dim=(1, 2)).reshape(-1)
        ARRAYS[f"stats.std_t.{name}"] = padded.std(dim=(1, 2)).reshape(-1)
    for key in keys:
        if key != "output":
            ARRAYS[f"trace.{key}.{name}"] = record[key]
    ARRAYS[f"output.{name}"] = out
"""
)

_APPLY_SNIPPET = (
    _MODEL_CODE
    + """
case = ARGS["case"]
for name, dtype in DTYPES.items():
    models = [build(kw, split_state(f"w{m}."), dtype) for m, kw in enumerate(ARGS["kwargs"])]
    model = BagOfModels(models, weights=case["bag_weights"]) if case["bag"] else models[0]
    draws = []
    randint = random.randint

    def recording_randint(a, b):
        value = randint(a, b)
        draws.append(value)
        return value

    _apply.random.randint = recording_randint
    random.seed(case["draws_seed"])
    segment = None if case["segment"] is None else Fraction(*case["segment"])
    with torch.no_grad():
        out = apply_model(
            model,
            torch.from_numpy(INPUTS["mix"]).to(dtype)[None],
            shifts=case["shifts"],
            split=True,
            overlap=case["overlap"],
            transition_power=case["transition_power"],
            segment=segment,
        )
    _apply.random.randint = randint
    ARRAYS[f"output.{name}"] = out[0]
    ARRAYS[f"draws.{name}"] = np.asarray(draws, dtype=np.int64)
"""
)


def _kwargs(config: HTDemucsConfig) -> dict[str, Any]:
    """Constructor kwargs as JSON (the segment as a pair, sequences as lists)."""
    out = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _versions() -> dict[str, Any]:
    import torch

    from parity_tests.oracle4 import ORACLE4_VERSION

    return {"demucs": ORACLE4_VERSION, "torch": torch.__version__, "numpy": np.__version__}


def oracle_forward(case: ForwardCase) -> dict[str, np.ndarray]:
    """Run demucs 4.1.0's forward on a case (float64 and float32): ``trace.<key>.<dtype>`` and
    ``output.<dtype>`` arrays (module docstring)."""
    from parity_tests.oracle4 import run_oracle4

    weights = random_weights(case.config, case.weights_seed)
    inputs = {"mix": forward_mix(case), **{f"w.{k}": v for k, v in weights.items()}}
    args = {"kwargs": _kwargs(case.config), "trace_keys": trace_keys(case)}
    _, arrays = run_oracle4(_FORWARD_SNIPPET, args=args, inputs=inputs, timeout=900)
    return arrays


def trace_keys(case: ForwardCase) -> list[str]:
    """The stages a case records: every trace key, or the output alone (released shapes)."""
    return list(htdemucs_trace_keys(case.config)) if case.traced else ["output"]


def _make_forward(name: str, case: ForwardCase) -> Path:
    weights = random_weights(case.config, case.weights_seed)
    arrays = oracle_forward(case)
    meta = {
        "config": config_to_json(case.config),
        "weights_sha256": weights_sha256(weights),
        "weights_seed": case.weights_seed,
        "mix_seed": case.mix_seed,
        "trace_keys": trace_keys(case),
        "versions": _versions(),
    }
    return save(f"htdemucs_forward_{name}", {"mix": forward_mix(case), **arrays}, meta)


def _plain(case: ApplyCase) -> dict[str, Any]:
    return {
        "bag": case.bag,
        "bag_weights": None if case.bag_weights is None else [list(r) for r in case.bag_weights],
        "shifts": case.shifts,
        "overlap": case.overlap,
        "transition_power": case.transition_power,
        "segment": None if case.segment is None else list(case.segment),
        "draws_seed": case.draws_seed,
    }


def oracle_apply(case: ApplyCase) -> dict[str, np.ndarray]:
    """Run demucs 4.1.0's ``apply_model`` on a case (float64 and float32): ``output.<dtype>`` and
    ``draws.<dtype>`` arrays (module docstring)."""
    from parity_tests.oracle4 import run_oracle4

    inputs = {"mix": apply_mix(case)}
    for m, weights in enumerate(apply_weights(case)):
        inputs.update({f"w{m}.{k}": v for k, v in weights.items()})
    args = {"kwargs": [_kwargs(c) for c in case.configs], "case": _plain(case)}
    _, arrays = run_oracle4(_APPLY_SNIPPET, args=args, inputs=inputs, timeout=900)
    return arrays


def _make_apply(name: str, case: ApplyCase) -> Path:
    arrays = oracle_apply(case)
    meta = {
        "config": config_to_json(case.config),
        "weights_sha256": [weights_sha256(w) for w in apply_weights(case)],
        **{k: v for k, v in _plain(case).items() if k != "bag_weights"},
        "segment_seconds": None if case.segment is None else str(Fraction(*case.segment)),
        "weights_seed": case.weights_seed,
        "mix_seed": case.mix_seed,
        "versions": _versions(),
    }
    return save(f"htdemucs_apply_{name}", {"mix": apply_mix(case), **arrays}, meta)


def make() -> list[Path]:
    """Run demucs 4.1.0 on every case and write the fixtures; returns the paths written."""
    written = [_make_forward(name, case) for name, case in FORWARD_CASES.items()]
    written += [_make_apply(name, case) for name, case in APPLY_CASES.items()]
    return written
