"""``unmix-convert`` on demucs 4.x bags (``remote/*.yaml`` and the files it names) and bare HTDemucs state dicts,
all written by demucs 4.1.0 itself, read without torch.

One oracle subprocess (:mod:`parity_tests.oracle4`) writes:

- ``ft/``: an ``htdemucs_ft``-like bag: four seeded ``HTDemucs`` at the released kwargs and sizes, saved with 4.1.0's
  own ``serialize_model`` + ``save_with_checksum`` under the released signatures (``f7e0c4bc-<sha>.th``...), and
  4.1.0's own ``remote/htdemucs_ft.yaml`` copied as it is (one-hot 4 x 4 weights); ``demucs.pretrained.get_model(
  'htdemucs_ft', repo=ft)`` must load it as a ``BagOfModels`` holding exactly the saved states;
- ``one/``: a yaml of one (small) model, like ``remote/htdemucs.yaml``;
- ``small/``: two small models (one ``<sig>-<sha>.th``, one plain ``<sig>.th``) and a yaml with weights and a
  ``segment``, loaded back by ``get_model``; ``hub/``: the same two as 4.1.0 hub ``<sig>.safetensors`` files,
  loaded back by ``demucs.hf.load_safetensors_model`` into a ``BagOfModels``;
- a small model with other sources (for a bag whose members disagree), and bare state dicts:
  ``torch.save(state_dict)`` of an ft member (float16) and of an ``htdemucs_6s``-size model (float32).

It sends back the small states as arrays and, for the full-size ones, the SHA-256 of every tensor's float32 bytes
(the upcast of torch's float16 state), so that 4 x 168 MB need not cross as ``.npz``.

``unmix-convert`` then runs in a process where torch cannot be imported; every canonical tensor must be bit-equal to
what torch saved, the bag's weights and segment equal to the oracle bag's, each ft member 41,984,456 parameters;
bad inputs (a missing file, a truncated float16 state, a checksum mismatch, members that disagree on sources, a v2
preset or a wrong bag preset, a bare state without a preset that fits) exit 1 and write nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core_spec.canonical import load_canonical, per_model
from core_spec.configs import BagConfig, HTDemucsConfig, constructor_kwargs, htdemucs_preset
from core_spec.params import WeightsMismatchError, nb_parameters
from parity_tests.oracle4 import oracle4_available, run_oracle4
from weights_convert import CheckpointError, ConversionError
from weights_convert.sources import read_upstream

pytestmark = [
    pytest.mark.upstream,
    pytest.mark.skipif(not oracle4_available(), reason="the demucs 4.1.0 oracle is not installed (make setup)"),
]

ROOT = Path(__file__).resolve().parents[2]
FT_COUNT = 41_984_456
SMALL_KWARGS = {
    "channels": 8,
    "nfft": 2048,
    "bottom_channels": 16,
    "t_layers": 2,
    "t_heads": 2,
    "dconv_mode": 3,
    "samplerate": 44100,
}
SMALL_SOURCES = ["drums", "bass", "other"]
SMALL_YAML = "models: ['b0000001', 'b0000002']\nweights: [[1., 0., 0.5], [0., 1., 0.5]]\nsegment: 5\n"


def _released_json() -> dict[str, Any]:
    kwargs = constructor_kwargs(htdemucs_preset("htdemucs"))
    kwargs["segment"] = [kwargs["segment"].numerator, kwargs["segment"].denominator]
    return kwargs


_SNIPPET = r"""
import copy, hashlib, pathlib, shutil, types
from fractions import Fraction

_oc = types.ModuleType("omegaconf")  # serialize_model's OmegaConf.to_container on a plain dict
class OmegaConf:
    @staticmethod
    def to_container(cfg, resolve=True):
        return copy.deepcopy(cfg)
_oc.OmegaConf = OmegaConf
sys.modules["omegaconf"] = _oc

import demucs.pretrained
from demucs.apply import BagOfModels
from demucs.hf import load_safetensors_model
from demucs.htdemucs import HTDemucs
from demucs.states import save_with_checksum, serialize_model
from safetensors.torch import save_file

root = pathlib.Path(ARGS["out"])
RELEASED = dict(ARGS["released"], segment=Fraction(*ARGS["released"]["segment"]))
SMALL = ARGS["small"]

def build(seed, *args, **kwargs):
    torch.manual_seed(seed)
    model = HTDemucs(*args, **kwargs)
    with torch.no_grad():  # away from the init, so that every tensor is a different random draw
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model

def half(model):
    return {k: v.data.to(dtype=torch.half) for k, v in model.state_dict().items()}

def digests(state):
    return {k: hashlib.sha256(v.float().contiguous().numpy().tobytes()).hexdigest() for k, v in state.items()}

def save(model, folder, sig, checksum=True):
    folder.mkdir(exist_ok=True)
    package = serialize_model(model, {"seed": 42}, half=True)
    if not checksum:
        torch.save(package, folder / f"{sig}.th")
        return f"{sig}.th"
    before = set(folder.iterdir())
    save_with_checksum(package, folder / f"{sig}.th")
    (path,) = set(folder.iterdir()) - before
    return path.name

def same_states(bag, states):
    return all(
        list(m.state_dict()) == list(s) and all(torch.equal(m.state_dict()[k].half(), v) for k, v in s.items())
        for m, s in zip(bag.models, states)
    )

def bag_record(bag):
    return {
        "weights": bag.weights,
        "segments": [[m.segment.numerator, m.segment.denominator] for m in bag.models],
        "sources": list(bag.sources),
    }

# the htdemucs_ft bag at the released sizes, under the released yaml and signatures
ft = root / "ft"
ft.mkdir()
shutil.copy(pathlib.Path(demucs.__file__).parent / "remote" / "htdemucs_ft.yaml", ft / "htdemucs_ft.yaml")
import yaml
sigs = yaml.safe_load((ft / "htdemucs_ft.yaml").read_text())["models"]
ft_states, ft_files = [], []
for i, sig in enumerate(sigs):
    model = build(10 + i, **RELEASED)
    ft_files.append(save(model, ft, sig))
    ft_states.append(half(model))
    if i == 0:  # a bare state dict of this member, as torch.save(model.state_dict()) in half precision
        torch.save(half(model), root / "bare_ft0.th")
    del model
bag = demucs.pretrained.get_model("htdemucs_ft", repo=ft)
assert isinstance(bag, BagOfModels) and len(bag.models) == 4
assert same_states(bag, ft_states)
RESULT["ft"] = {
    **bag_record(bag),
    "files": ft_files,
    "digests": [digests(s) for s in ft_states],
    "counts": [sum(v.numel() for v in s.values()) for s in ft_states],
}
del bag, ft_states

# a bare float32 state dict of an htdemucs_6s-size model
six = ["drums", "bass", "other", "vocals", "guitar", "piano"]
model = build(20, **dict(RELEASED, sources=six, bottom_channels=0))
state = {k: v.data.clone() for k, v in model.state_dict().items()}
torch.save(state, root / "bare_6s.pt")
RESULT["bare_6s"] = {"digests": {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()
                                 for k, v in state.items()}}
del model, state

# small models: one yaml of one model; a bag of two with weights and a segment; the same as hub files
small = [build(30 + i, SMALL["sources"], **SMALL["kwargs"]) for i in range(3)]
for i, m in enumerate(small):
    for k, v in half(m).items():
        ARRAYS[f"small{i}|{k}"] = v.float()
one = root / "one"
RESULT["one_file"] = save(small[2], one, "a0000001")
(one / "one.yaml").write_text("models: ['a0000001']\n")
bag = demucs.pretrained.get_model("one", repo=one)
assert len(bag.models) == 1 and same_states(bag, [half(small[2])])
RESULT["one"] = bag_record(bag)

folder = root / "small"
RESULT["small_files"] = [save(small[0], folder, "b0000001"), save(small[1], folder, "b0000002", checksum=False)]
(folder / "small.yaml").write_text(ARGS["small_yaml"])
bag = demucs.pretrained.get_model("small", repo=folder)
assert same_states(bag, [half(small[0]), half(small[1])])
RESULT["small"] = bag_record(bag)

hub = root / "hub"
hub.mkdir()
for sig, m in zip(["b0000001", "b0000002"], small):
    kwargs = dict(SMALL["kwargs"], segment={"_type": "fraction", "numerator": 10, "denominator": 1})
    save_file({k: v.contiguous() for k, v in half(m).items()}, str(hub / f"{sig}.safetensors"), metadata={
        "klass": "demucs.htdemucs.HTDemucs", "args": json.dumps([SMALL["sources"]]), "kwargs": json.dumps(kwargs)})
(hub / "small.yaml").write_text(ARGS["small_yaml"])
spec = yaml.safe_load((hub / "small.yaml").read_text())  # as demucs.hf.get_hf_model builds the bag
bag = BagOfModels([load_safetensors_model(hub / f"{s}.safetensors") for s in spec["models"]], spec.get("weights"),
                  spec.get("segment"))
assert same_states(bag, [half(small[0]), half(small[1])])
RESULT["hub"] = bag_record(bag)

# members that disagree on sources; a bare state of a model that is no preset
torch.save(half(small[0]), root / "bare_small.th")
RESULT["other_sources"] = save(build(40, ["drums", "bass", "other", "vocals"], **SMALL["kwargs"]), root / "other",
                               "d0000001")
"""


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("htdemucs_bags")
    args = {
        "out": str(folder),
        "released": _released_json(),
        "small": {"sources": SMALL_SOURCES, "kwargs": SMALL_KWARGS},
        "small_yaml": SMALL_YAML,
    }
    result, arrays = run_oracle4(_SNIPPET, args, timeout=600)
    return folder, result, arrays


def _bad_inputs(folder: Path, result: dict) -> dict[str, Path]:
    """Folders of bad bags, made from the oracle's files: a missing model, a truncated float16 state, a checksum
    that is not the file's, models that disagree on sources."""
    small = folder / "small"
    first, second = (small / name for name in result["small_files"])
    made = {}
    for name, yaml_text in {
        "missing": "models: ['b0000001', 'dead0001']\n",
        "truncated": "models: ['b0000002']\n",
        "badsum": "models: ['b0000002']\n",
        "disagree": "models: ['b0000001', 'd0000001']\n",
    }.items():
        bad = folder / f"bad_{name}"
        bad.mkdir()
        (bad / "bag.yaml").write_text(yaml_text)
        made[name] = bad / "bag.yaml"
    shutil.copy(first, folder / "bad_missing" / first.name)
    data = second.read_bytes()
    (folder / "bad_truncated" / "b0000002.th").write_bytes(data[: len(data) * 2 // 3])
    (folder / "bad_badsum" / "b0000002-0badc0de.th").write_bytes(data)
    shutil.copy(first, folder / "bad_disagree" / first.name)
    shutil.copy(folder / "other" / result["other_sources"], folder / "bad_disagree")
    return made


_TORCHFREE = r"""
import contextlib, io, json, sys
sys.modules["torch"] = None  # any import of torch now fails
sys.path.insert(0, {root!r})
from unmix.convert_cli import main
out = {{}}
for name, argv in {jobs!r}.items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    out[name] = {{"code": code, "stderr": err.getvalue()}}
assert sys.modules.get("torch") is None
leaked = sorted(m for m in sys.modules if m.startswith("torch."))
assert not leaked, leaked
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def converted(written: tuple, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    folder, result, _ = written
    bad = _bad_inputs(folder, result)
    out = tmp_path_factory.mktemp("htdemucs_bags_canonical")
    jobs = {
        "ft": [str(folder / "ft" / "htdemucs_ft.yaml"), "-o", str(out / "ft"), "-q"],
        "one": [str(folder / "one" / "one.yaml"), "-o", str(out / "one"), "-q"],
        "small": [str(folder / "small"), "-o", str(out / "small"), "-q"],  # the folder, not the yaml
        "hub": [str(folder / "hub" / "small.yaml"), "-o", str(out / "hub"), "-q"],
        "relative": [os.path.relpath(folder / "small", out), "-o", "relative", "-q"],  # run in out/
        "bare_ft0": [str(folder / "bare_ft0.th"), "-o", str(out / "bare_ft0"), "-q"],
        "bare_6s": [str(folder / "bare_6s.pt"), "-m", "htdemucs_6s", "-o", str(out / "bare_6s"), "-q"],
    }
    refused = {
        **{name: [str(path)] for name, path in bad.items()},
        "v2_preset": [str(folder / "small"), "-m", "demucs"],
        "bag_preset": [str(folder / "small"), "-m", "htdemucs_ft"],
        "bare_small": [str(folder / "bare_small.th")],
        "bare_wrong_preset": [str(folder / "bare_ft0.th"), "-m", "htdemucs_6s"],
        "bare_v2_preset": [str(folder / "bare_ft0.th"), "-m", "demucs"],
    }
    jobs.update({f"no_{name}": [*argv, "-o", str(out / f"no_{name}"), "-q"] for name, argv in refused.items()})
    code = _TORCHFREE.format(root=str(ROOT), jobs=jobs)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=out, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1])


def _digests(weights: dict[str, np.ndarray]) -> dict[str, str]:
    assert all(w.dtype == np.float32 for w in weights.values())
    return {k: hashlib.sha256(np.ascontiguousarray(w).tobytes()).hexdigest() for k, w in weights.items()}


def _small(arrays: dict[str, np.ndarray], index: int) -> dict[str, np.ndarray]:
    prefix = f"small{index}|"
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def _bit_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    bad = [k for k in want if got[k].dtype != np.float32 or got[k].tobytes() != want[k].tobytes()]
    assert not bad, f"differs from what torch saved: {bad[:5]}"


def _bag_matches_oracle(config: BagConfig, record: dict) -> None:
    """The canonical bag's weights and segment are the oracle ``BagOfModels``'s: its weights rows, and the segment
    each of its models runs at (the yaml's where it is not longer than the model's own, as upstream sets it)."""
    assert [list(r) for r in config.source_weights()] == record["weights"]
    assert list(config.sources) == record["sources"]
    for model, segment in zip(config.models, record["segments"], strict=True):
        bag_segment = Fraction(*config.segment) if config.segment is not None else None
        runs_at = bag_segment if bag_segment is not None and bag_segment <= model.segment_fraction else None
        assert (runs_at or model.segment_fraction) == Fraction(*segment)


def test_ft_bag_bit_exact_without_torch(written: tuple, converted: tuple) -> None:
    """The htdemucs_ft-like bag -> one canonical file: ``models.<i>.<name>`` bit-equal to each member's float16
    state upcast, the config a BagConfig equal to the preset, 4 x 41,984,456 parameters."""
    _, result, _ = written
    out, codes = converted
    assert codes["ft"]["code"] == 0, codes["ft"]["stderr"]
    weights, config, provenance = load_canonical(out / "ft")
    assert isinstance(config, BagConfig) and config == htdemucs_preset("htdemucs_ft")
    record = result["ft"]
    _bag_matches_oracle(config, record)
    assert config.weights == tuple(tuple(float(i == j) for j in range(4)) for i in range(4))
    assert config.segment is None
    members = per_model(weights, config)
    for index, member in enumerate(members):
        assert _digests(member) == record["digests"][index], f"model {index} differs from what torch saved"
    assert [nb_parameters(m) for m in config.models] == record["counts"] == [FT_COUNT] * 4
    assert sum(w.size for w in weights.values()) == 4 * FT_COUNT
    assert [f["path"] for f in provenance["files"]] == ["htdemucs_ft.yaml", *record["files"]]
    assert provenance["source_dtypes"] == {"float16": 4 * len(record["digests"][0])}
    assert provenance["matched_presets"] == ["htdemucs_ft"]


def test_ft_bag_checked_against_its_preset(written: tuple) -> None:
    """``-m htdemucs_ft`` accepts the bag (its models, weights and segment are the preset's); ``-m htdemucs`` (one
    model) refuses it."""
    folder, _, _ = written
    converted = read_upstream(folder / "ft", model="htdemucs_ft")
    assert converted.config == htdemucs_preset("htdemucs_ft") and converted.preset == "htdemucs_ft"
    with pytest.raises(ConversionError, match=r"--model htdemucs is an HTDemucs preset .* is a bag of 4 HTDemucs"):
        read_upstream(folder / "ft" / "htdemucs_ft.yaml", model="htdemucs")


def test_single_model_yaml_is_a_model(written: tuple, converted: tuple) -> None:
    """A yaml of one model without weights or segment (like htdemucs.yaml) writes that model, not a bag of one."""
    _, result, arrays = written
    out, codes = converted
    assert codes["one"]["code"] == 0, codes["one"]["stderr"]
    weights, config, _ = load_canonical(out / "one")
    assert isinstance(config, HTDemucsConfig)
    assert list(config.sources) == result["one"]["sources"] == SMALL_SOURCES
    assert result["one"]["weights"] == [[1.0] * 3]
    _bit_equal(weights, _small(arrays, 2))


@pytest.mark.parametrize("tag", ["small", "hub"])
def test_bag_with_weights_and_segment(tag: str, written: tuple, converted: tuple) -> None:
    """A folder holding a yaml with weights and a segment, its models as ``<sig>-<sha>.th`` and ``<sig>.th``
    (``small``), or as hub ``<sig>.safetensors`` (``hub``): weights and segment as the oracle's bag."""
    _, result, arrays = written
    out, codes = converted
    assert codes[tag]["code"] == 0, codes[tag]["stderr"]
    weights, config, _ = load_canonical(out / tag)
    assert isinstance(config, BagConfig)
    assert config.segment == (5, 1)
    _bag_matches_oracle(config, result[tag])
    for index, member in enumerate(per_model(weights, config)):
        _bit_equal(member, _small(arrays, index))


def test_folder_given_by_relative_path(written: tuple, converted: tuple) -> None:
    """The bag folder named relative to the working directory: its files are recorded relative to it."""
    _, result, _ = written
    out, codes = converted
    assert codes["relative"]["code"] == 0, codes["relative"]["stderr"]
    _, config, provenance = load_canonical(out / "relative")
    assert isinstance(config, BagConfig)
    assert [f["path"] for f in provenance["files"]] == ["small.yaml", *result["small_files"]]


def test_bare_state_dicts(written: tuple, converted: tuple) -> None:
    """A bare float16 state of an ft member, without a preset: its shapes fit htdemucs only; a bare float32
    htdemucs_6s-size state with ``-m htdemucs_6s``: bit-equal (float32 kept as it is)."""
    _, result, _ = written
    out, codes = converted
    assert codes["bare_ft0"]["code"] == 0, codes["bare_ft0"]["stderr"]
    weights, config, provenance = load_canonical(out / "bare_ft0")
    assert config == htdemucs_preset("htdemucs")
    assert _digests(weights) == result["ft"]["digests"][0]
    assert any("fit preset htdemucs only" in n for n in provenance["notes"])
    assert codes["bare_6s"]["code"] == 0, codes["bare_6s"]["stderr"]
    weights, config, provenance = load_canonical(out / "bare_6s")
    assert config == htdemucs_preset("htdemucs_6s")
    assert _digests(weights) == result["bare_6s"]["digests"]
    assert provenance["source_dtypes"] == {"float32": len(weights)}


REFUSALS = {
    "missing": r"names model 'dead0001', but .* holds no dead0001-<checksum>\.th .*dead0001\.th or dead0001\.safet",
    "truncated": r"b0000002\.th",
    "badsum": r"b0000002-0badc0de\.th: the file name's checksum 0badc0de is not the start of its SHA-256",
    "disagree": r"the bag's models disagree on sources.*'drums', 'bass', 'other'\).*'vocals'",
    "v2_preset": r"--model demucs is a Demucs preset \(v2, demucs 2\.0\.x\), but small\.yaml is a demucs 4\.x bag",
    "bag_preset": r"small\.yaml: a bag of 2 models, --model htdemucs_ft has 4",
    "bare_small": r"bare_small\.th is a bare state dict .* fit no HTDemucs preset .*pass --model",
    "bare_wrong_preset": r"bare_ft0\.th \(checked against preset htdemucs_6s\) do not match.*\n.*(missing|mis-shaped)",
    "bare_v2_preset": r"--model demucs is a Demucs preset \(v2.*bare state dict of a hybrid demucs",
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_bad_input_refused_without_torch(name: str, converted: tuple) -> None:
    """Each bad input: exit 1, a message naming the problem, nothing written."""
    out, codes = converted
    job = codes[f"no_{name}"]
    assert job["code"] == 1
    assert re.search(REFUSALS[name], job["stderr"], re.S), job["stderr"]
    assert not list(out.glob(f"no_{name}*"))


def test_error_types(written: tuple) -> None:
    """The readers' exception classes (all ``ValueError``s): a truncated float16 state is a CheckpointError, a
    missing file or disagreeing members a ConversionError, a bare state against the wrong preset a
    WeightsMismatchError naming the keys."""
    folder, _, _ = written
    with pytest.raises(CheckpointError, match=r"b0000002\.th"):
        read_upstream(folder / "bad_truncated" / "bag.yaml")
    with pytest.raises(ConversionError, match=r"dead0001"):
        read_upstream(folder / "bad_missing")
    with pytest.raises(ConversionError, match=r"disagree on sources"):
        read_upstream(folder / "bad_disagree")
    with pytest.raises(WeightsMismatchError, match=r"mis-shaped +crosstransformer"):
        read_upstream(folder / "bare_ft0.th", model="htdemucs_6s")


def test_yaml_refusals(tmp_path: Path) -> None:
    """Malformed yamls and folders are named errors before any model file is read."""
    cases = {
        "a.yaml": ("- just a list\n", r"not a demucs bag"),
        "b.yaml": ("models: [12345678]\n", r"quote a signature"),
        "c.yaml": ("models: ['../x']\n", r"not names of letters"),
        "d.yaml": ("models: ['a', 'b']\nweights: [[1, 0]]\n", r"'weights' must be 2 rows"),
        "e.yaml": ("models: ['a']\nsegment: -1\n", r"'segment' must be a positive number"),
        "f.yaml": ("models: [a\n", r"not a readable yaml"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConversionError, match=message):
            read_upstream(tmp_path / name)
    with pytest.raises(ConversionError, match=r"holds 6 bag yamls .*pass the one to convert"):
        read_upstream(tmp_path)
