"""``unmix-convert`` on demucs 4.x HTDemucs files written by demucs 4.1.0 itself, read without torch.

One oracle subprocess (:mod:`parity_tests.oracle4`) builds seeded ``demucs.htdemucs.HTDemucs`` models (a small one,
``htdemucs`` and ``htdemucs_6s`` at their released kwargs and sizes) and saves them as demucs 4.1.0 does:
``demucs.states.serialize_model`` (half-precision ``state``, ``training_args`` as plain containers; its
``omegaconf`` import is given a stand-in whose ``to_container`` returns the plain dict it is handed) and
``save_with_checksum`` (``<name>-<sig>.th``). It also writes the hub layout (``<sig>.safetensors``, ``klass``/
``args``/``kwargs`` as JSON metadata, the segment as ``{"_type": "fraction", ...}``) and checks that 4.1.0's own
``demucs.hf.load_safetensors_model`` loads it back, plus the packages the converter must refuse (an HDemucs (v3),
a v3 ``demucs.demucs.Demucs``, an unknown constructor argument, a foreign global). It sends back every state as the
float32 upcast of what torch saved.

Then ``unmix-convert`` runs in a subprocess where torch cannot be imported (``sys.modules['torch'] = None``) and
every canonical tensor must be bit-equal to that upcast, the config equal to the constructor arguments (with
upstream's defaults for the rest), the parameter counts 41,984,456 and 27,414,996.
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core_spec.canonical import load_canonical
from core_spec.configs import HTDemucsConfig, constructor_kwargs, htdemucs_preset
from core_spec.params import nb_parameters
from parity_tests.oracle4 import oracle4_available, run_oracle4
from weights_convert import ConversionError, UnsafeCheckpointError
from weights_convert.sources import read_upstream

pytestmark = [
    pytest.mark.upstream,
    pytest.mark.skipif(not oracle4_available(), reason="the demucs 4.1.0 oracle is not installed (make setup)"),
]

ROOT = Path(__file__).resolve().parents[2]

# tag -> (positional args, keyword args, seed). JSON here; the snippet turns [num, den] segments into Fractions.
_RELEASED = {k: v for k, v in constructor_kwargs(htdemucs_preset("htdemucs")).items()}
_SMALL_KWARGS = {
    "channels": 8,
    "nfft": 2048,
    "bottom_channels": 16,
    "t_layers": 2,
    "t_heads": 2,
    "dconv_mode": 3,
    "segment": Fraction(39, 5),
    "samplerate": 44100,
}
MODELS: dict[str, tuple[list, dict[str, Any], int]] = {
    "small": ([["drums", "bass", "other"]], _SMALL_KWARGS, 1),
    # every argument passed by name, as a training run's config passes them
    "htdemucs": ([], _RELEASED, 2),
    # sources positional, the rest the released 6s kwargs
    "htdemucs_6s": (
        [["drums", "bass", "other", "vocals", "guitar", "piano"]],
        {"dconv_mode": 3, "bottom_channels": 0, "t_dropout": 0.02, "segment": Fraction(39, 5)},
        3,
    ),
}
COUNTS = {"htdemucs": 41_984_456, "htdemucs_6s": 27_414_996}


def _to_json(value: Any) -> Any:
    if isinstance(value, Fraction):
        return {"_fraction": [value.numerator, value.denominator]}
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


_SNIPPET = r"""
import copy, inspect, io, pathlib, types, collections
from fractions import Fraction

# serialize_model imports omegaconf for OmegaConf.to_container; the training args here are a plain dict already.
_oc = types.ModuleType("omegaconf")
class OmegaConf:
    @staticmethod
    def to_container(cfg, resolve=True):
        return copy.deepcopy(cfg)
_oc.OmegaConf = OmegaConf
sys.modules["omegaconf"] = _oc

from demucs.htdemucs import HTDemucs
from demucs.hdemucs import HDemucs
from demucs.demucs import Demucs as DemucsV3
from demucs.states import serialize_model, save_with_checksum
from demucs.hf import load_safetensors_model
from safetensors.torch import save_file

out = pathlib.Path(ARGS["out"])

def from_json(v):
    if isinstance(v, dict):
        if set(v) == {"_fraction"}:
            return Fraction(*v["_fraction"])
        return {k: from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_json(x) for x in v]
    return v

def to_json(v):
    if isinstance(v, Fraction):
        return [v.numerator, v.denominator]
    if isinstance(v, (list, tuple)):
        return [to_json(x) for x in v]
    return v

def hub_json(v):
    if isinstance(v, Fraction):
        return {"_type": "fraction", "numerator": v.numerator, "denominator": v.denominator}
    if isinstance(v, dict):
        return {k: hub_json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [hub_json(x) for x in v]
    return v

TRAINING = {"dset": {"segment": 11, "sources": ["drums"]}, "optim": {"lr": 3e-4}, "seed": 42, "misc": [1, 2.5, None]}

def save(model, name, training=TRAINING):
    before = set(out.iterdir())
    save_with_checksum(serialize_model(model, training, half=True), out / f"{name}.th")
    (path,) = set(out.iterdir()) - before
    return path.name

for tag, (args, kwargs, seed) in ARGS["models"].items():
    args, kwargs = from_json(args), from_json(kwargs)
    torch.manual_seed(seed)
    model = HTDemucs(*args, **kwargs)
    with torch.no_grad():  # away from the init, so that every tensor is a different random draw
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    bound = inspect.signature(HTDemucs).bind(*args, **kwargs)
    bound.apply_defaults()
    full = {k: to_json(v) for k, v in bound.arguments.items() if k != "self"}
    file = save(model, tag)
    state = {k: v.data.to(dtype=torch.half) for k, v in model.state_dict().items()}
    for k, v in state.items():
        ARRAYS[f"{tag}|{k}"] = v.float()
    RESULT[tag] = {"file": file, "arguments": full, "count": sum(v.numel() for v in state.values())}
    if tag == "small":
        sig = file.split("-", 1)[1].split(".")[0]
        hub = out / f"{sig}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(hub), metadata={
            "klass": "demucs.htdemucs.HTDemucs",
            "args": json.dumps(hub_json(list(args))),
            "kwargs": json.dumps(hub_json(kwargs)),
        })
        back = load_safetensors_model(hub)
        assert back.segment == Fraction(39, 5), back.segment
        assert all(torch.equal(back.state_dict()[k].half(), v) for k, v in state.items())
        RESULT["hub"] = hub.name
        # refusals: a constructor argument 4.1.0 does not know, a global outside the allow-list
        package = serialize_model(model, TRAINING, half=True)
        torch.save({**package, "kwargs": {**package["kwargs"], "t_new_option": 3}}, out / "unknown_kwarg.th")
        torch.save({**package, "training_args": {"counts": collections.Counter("ab")}}, out / "foreign_global.th")
        torch.save({**package, "state": {**package["state"], "extra.weight": torch.zeros(3).half()}}, out / "extra.th")

torch.manual_seed(0)
RESULT["hdemucs"] = save(HDemucs(["drums", "bass"], channels=4, depth=3), "hdemucs")
RESULT["demucs_v3"] = save(DemucsV3(["drums", "bass"], channels=4, depth=3), "demucs_v3")
RESULT["signature"] = [n for n in inspect.signature(HTDemucs).parameters if n != "self"]
"""


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("htdemucs_packages")
    models = {tag: [_to_json(a), _to_json(k), seed] for tag, (a, k, seed) in MODELS.items()}
    result, arrays = run_oracle4(_SNIPPET, {"out": str(folder), "models": models}, timeout=600)
    return folder, result, arrays


_TORCHFREE = r"""
import sys, json
sys.modules["torch"] = None  # any import of torch now fails
sys.path.insert(0, {root!r})
from unmix.convert_cli import main
codes = {{}}
for name, argv in {jobs!r}.items():
    codes[name] = main(argv)
assert sys.modules.get("torch") is None
leaked = sorted(m for m in sys.modules if m.startswith("torch."))
assert not leaked, leaked
print(json.dumps(codes))
"""


def _convert_torchfree(jobs: dict[str, list[str]], cwd: Path) -> tuple[dict[str, int], str]:
    code = _TORCHFREE.format(root=str(ROOT), jobs=jobs)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.fixture(scope="module")
def converted(written: tuple[Path, dict, dict], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    folder, result, _ = written
    out = tmp_path_factory.mktemp("htdemucs_canonical")
    jobs = {tag: [str(folder / result[tag]["file"]), "-o", str(out / tag), "-q"] for tag in MODELS}
    jobs["htdemucs_preset"] = [str(folder / result["htdemucs"]["file"]), "-m", "htdemucs", "-o", str(out / "p"), "-q"]
    jobs["htdemucs_6s_preset"] = [
        str(folder / result["htdemucs_6s"]["file"]), "-m", "htdemucs_6s", "-o", str(out / "p6"), "-q"
    ]  # fmt: skip
    jobs["hub"] = [str(folder / result["hub"]), "-o", str(out / "hub"), "-q"]
    jobs["v2_preset_on_v4"] = [str(folder / result["small"]["file"]), "-m", "demucs", "-o", str(out / "no1"), "-q"]
    jobs["hdemucs"] = [str(folder / result["hdemucs"]), "-o", str(out / "no2"), "-q"]
    codes, stderr = _convert_torchfree(jobs, out)
    return out, codes, stderr


def _arguments(config: HTDemucsConfig) -> dict[str, Any]:
    kwargs = constructor_kwargs(config)
    kwargs["segment"] = [config.segment[0], config.segment[1]]
    return kwargs


@pytest.mark.parametrize("tag", [*MODELS, "hub"])
def test_converts_bit_exact_without_torch(tag: str, written: tuple, converted: tuple) -> None:
    """Every canonical tensor equals the float32 upcast of torch's float16 state, bit for bit; the config is the
    constructor's arguments (upstream's defaults for those not passed)."""
    _, result, arrays = written
    out, codes, _ = converted
    assert codes[tag] == 0
    weights, config, provenance = load_canonical(out / tag)
    source = "small" if tag == "hub" else tag
    want = {k.split("|", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{source}|")}
    assert list(weights) == list(want)  # inventory order is upstream's state_dict order
    bad = [k for k in want if weights[k].dtype != np.float32 or weights[k].tobytes() != want[k].tobytes()]
    assert not bad, f"{tag}: differs from what torch saved: {bad[:5]}"
    assert isinstance(config, HTDemucsConfig)
    assert _arguments(config) == result[source]["arguments"]
    assert config.segment_fraction == Fraction(39, 5)
    assert nb_parameters(config) == result[source]["count"] == sum(w.size for w in weights.values())
    if tag in COUNTS:
        assert nb_parameters(config) == COUNTS[tag]
        assert config == htdemucs_preset(tag)
    assert provenance["source_dtypes"] == {"float16": len(want)}
    assert provenance["sha256"]


def test_preset_accepted_and_refused(converted: tuple) -> None:
    """``-m htdemucs`` / ``-m htdemucs_6s`` check the package against the preset; ``-m demucs`` (v2) on a v4
    file and a v3 HDemucs package fail with exit 1 and write nothing."""
    out, codes, stderr = converted
    assert codes["htdemucs_preset"] == 0 and codes["htdemucs_6s_preset"] == 0
    assert codes["v2_preset_on_v4"] == 1 and codes["hdemucs"] == 1
    assert "--model demucs is a Demucs preset (v2, demucs 2.0.x)" in stderr
    assert "demucs.hdemucs.HDemucs" in stderr and "not supported yet" in stderr
    assert not list(out.glob("no*"))


def test_signature_order_matches_config(written: tuple) -> None:
    """Positional constructor arguments map in 4.1.0's order: HTDemucsConfig's fields are that order."""
    _, result, _ = written
    names = [n for n in HTDemucsConfig.__dataclass_fields__ if n != "kind"]
    assert names == result["signature"]


def test_refusals(written: tuple) -> None:
    folder, result, _ = written
    with pytest.raises(ConversionError, match=r"demucs\.hdemucs\.HDemucs.*not supported yet"):
        read_upstream(folder / result["hdemucs"])
    with pytest.raises(ConversionError, match=r"demucs\.demucs\.Demucs.*v3.*not supported yet"):
        read_upstream(folder / result["demucs_v3"])
    with pytest.raises(ConversionError, match=r"t_new_option=3 unknown to demucs 4\.1\.0's demucs\.htdemucs\.HTDemucs"):
        read_upstream(folder / "unknown_kwarg.th")
    with pytest.raises(UnsafeCheckpointError, match=r"collections\.Counter"):
        read_upstream(folder / "foreign_global.th")
    with pytest.raises(ValueError, match=r"unexpected +extra\.weight"):
        read_upstream(folder / "extra.th")
    small = folder / result["small"]["file"]
    with pytest.raises(ConversionError, match=r"--model demucs is a Demucs preset \(v2.* demucs\.htdemucs\.HTDemucs"):
        read_upstream(small, model="demucs")
    with pytest.raises(ConversionError, match=r"--model umxhq is an Open-Unmix preset"):
        read_upstream(small, model="umxhq")
    with pytest.raises(ConversionError, match=r"--model htdemucs_ft is a bag of 4 HTDemucs models"):
        read_upstream(small, model="htdemucs_ft")
    with pytest.raises(ConversionError, match=r"differ from --model htdemucs: .*channels: file 8, preset 48"):
        read_upstream(small, model="htdemucs")


def test_v4_preset_on_v2_file_refused() -> None:
    """The reverse: an HTDemucs preset on a demucs 2.0.x package."""
    package = ROOT / "parity_tests" / "fixtures" / "checkpoints" / "demucs_small_package.th"
    with pytest.raises(ConversionError, match=r"--model htdemucs is an HTDemucs preset \(demucs v4\), but .* 2\.0\.x"):
        read_upstream(package, model="htdemucs")


def test_truncated_half_state_refused(written: tuple, tmp_path: Path) -> None:
    """A package cut short (the float16 state records incomplete): a named error, no output written."""
    from unmix.convert import convert
    from weights_convert import CheckpointError

    folder, result, _ = written
    data = (folder / result["small"]["file"]).read_bytes()
    cut = tmp_path / "cut.th"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError, match=r"cut\.th"):
        convert(cut, out=tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.th"]


def test_hub_layout_refusals(tmp_path: Path) -> None:
    """Hub files of classes not ported yet, nested (diffq) states and malformed fractions are named errors."""
    from safetensors.numpy import save_file

    state = {"x": np.zeros(2, np.float16)}

    def hub(name: str, **metadata: str) -> Path:
        path = tmp_path / f"{name}.safetensors"
        save_file(state, str(path), metadata={"args": "[]", "kwargs": "{}", **metadata})
        return path

    with pytest.raises(ConversionError, match=r"demucs\.hdemucs\.HDemucs.*not supported yet"):
        read_upstream(hub("a", klass="demucs.hdemucs.HDemucs"))
    with pytest.raises(ConversionError, match=r"nested \(diffq-quantized\)"):
        read_upstream(hub("b", klass="demucs.htdemucs.HTDemucs", structure="{}"))
    bad = json.dumps({"sources": ["a"], "segment": {"_type": "fraction", "numerator": 1, "denominator": 0}})
    with pytest.raises(ConversionError, match=r"malformed fraction"):
        read_upstream(hub("c", klass="demucs.htdemucs.HTDemucs", kwargs=bad))
    kwargs = json.dumps({"sources": ["a"], "channels": 8})
    with pytest.raises(ValueError, match=r"missing +encoder\.0\.conv\.weight"):
        read_upstream(hub("d", klass="demucs.htdemucs.HTDemucs", kwargs=kwargs))
