"""``unmix-separate`` with HTDemucs (demucs v4): the command's stems equal the spec's ``separate_track`` (demucs
4.1.0's ``Separator.separate_tensor`` in float64) and demucs 4.1.0's own ``demucs`` command on the same file and
weights.

Models: the small traced config of :mod:`parity_tests.fixtures_htdemucs` (``SMALL``: 0.05-s segment, every
released structure) with seeded weights, written as canonical files (one model, a bag of two whose second member
has a shorter 0.04-s segment and whose weights differ per source, a six-source model), and the same weights saved by
demucs 4.1.0 itself (``serialize_model`` + ``save_with_checksum``: ``<sig>-<checksum>.th``, and a bag yaml naming
two of them) in one oracle subprocess (:mod:`parity_tests.oracle4`). The track is 0.3 s of the stempeg clip
(8 segments), so every stem is a real overlap-add of several chunks.

Comparisons: float32 stems (written ``--float32 --clip-mode none``) against the float64 spec on the row
``htdemucs.apply`` (float32), with demucs 4.1.0's own float32 output beside them where it runs; ``--dtype float64``
through the command's own model path (``load_model``, ``resolve_options``, ``LoadedModel.separate``) at the
float64 row; the default 16-bit output on ``data.pcm16``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core_spec.canonical import save_canonical
from core_spec.configs import HTDEMUCS_SOURCES_6, BagConfig, HTDemucsConfig, constructor_kwargs
from core_spec.reference.htdemucs_apply import separate_track as spec_separate_track
from core_spec.seeded import random_weights
from core_spec.tolerances import check
from parity_tests.fixtures_htdemucs import SMALL
from parity_tests.oracle4 import ORACLE4_DIR, oracle4_available, run_oracle4
from unmix.audio_files import read_audio_file
from unmix.separate_cli import Options, build_parser, resolve_options
from unmix.separate_models import LoadedModel, load_model
from unmix.stems import prevent_clip

from .helpers import files_under, read_stems, run

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
SOURCES = SMALL.sources
SHORT = dataclasses.replace(SMALL, segment=(1, 25))  # a bag member trained on 0.04 s
SIX = dataclasses.replace(SMALL, sources=HTDEMUCS_SOURCES_6)
BAG = BagConfig(models=(SMALL, SHORT), weights=((1.0, 0.5, 2.0, 1.0), (1.0, 1.5, 0.0, 1.0)))
SEEDS = {"small": 40, "bag0": 41, "bag1": 42, "six": 43}
FLOAT = ["--float32", "--clip-mode", "none"]
TOO_LONG = "Cannot use a Transformer model with a longer segment than it was trained for. Maximum segment is: "

needs_oracle = pytest.mark.skipif(not oracle4_available(), reason="the demucs 4.1.0 oracle is not installed")


@dataclasses.dataclass(frozen=True)
class Models:
    clip: Path  # 0.3 s of the stempeg clip, float WAV
    audio: np.ndarray  # what the command reads from it: (2, 13230) float32
    small: Path  # canonical SMALL
    bag: Path  # canonical bag of two
    six: Path  # canonical six-source SMALL
    weights: dict[str, dict[str, np.ndarray]]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    from parity_tests.separate.inputs import write_clip

    root = tmp_path_factory.mktemp("htdemucs-separate")
    clip = write_clip(root / "clip.wav", seconds=0.3, offset=1.0)
    weights = {
        "small": random_weights(SMALL, SEEDS["small"]),
        "bag0": random_weights(SMALL, SEEDS["bag0"]),
        "bag1": random_weights(SHORT, SEEDS["bag1"]),
        "six": random_weights(SIX, SEEDS["six"]),
    }
    save_canonical(root / "small.safetensors", weights["small"], SMALL)
    save_canonical(root / "six.safetensors", weights["six"], SIX)
    flat = {f"models.{i}.{k}": v for i, tag in enumerate(("bag0", "bag1")) for k, v in weights[tag].items()}
    save_canonical(root / "bag.safetensors", flat, BAG)
    audio, _ = read_audio_file(clip)
    return Models(clip, audio, root / "small.safetensors", root / "bag.safetensors", root / "six.safetensors", weights)


def spec(models: Models, which: str, audio: np.ndarray | None = None, **options: Any) -> np.ndarray:
    """The spec's ``separate_track`` (float64) on the float32 samples the command read."""
    wav = (models.audio if audio is None else audio).astype(np.float64)
    if which == "bag":
        return spec_separate_track([models.weights["bag0"], models.weights["bag1"]], BAG, wav, **options)
    config = SIX if which == "six" else SMALL
    return spec_separate_track(models.weights[which], config, wav, **options)


def separate(args: list, out: Path, capsys: pytest.CaptureFixture) -> Path:
    code, _, err = run([*args, "--framework", "torch", "-o", out, "-q"], capsys)
    assert code == 0, err
    return out


# --- the command against the spec --------------------------------------------------------------------------------


CASES = {
    # demucs 4.1.0's defaults: one shift (ours seeded, 0), split at the training segment, overlap 0.25
    "defaults": ([], {"shifts": 1, "rng": 0}),
    "shifts_0": (["--shifts", "0"], {"shifts": 0}),
    "seed_7_overlap": (["--seed", "7", "--overlap", "0.5"], {"shifts": 1, "rng": 7, "overlap": 0.5}),
    # each chunk padded with its neighbours to 1323 samples, then with zeros to the 2205 the network runs at
    "segment": (["--segment", "0.03", "--shifts", "0"], {"shifts": 0, "segment": 0.03}),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_float32_stems_equal_spec(case: str, models: Models, tmp_path: Path, capsys) -> None:
    argv, options = CASES[case]
    out = separate([models.clip, "--model", models.small, *argv, *FLOAT], tmp_path, capsys)
    assert files_under(out) == [f"small/clip/{s}.wav" for s in sorted(SOURCES)]
    got = read_stems(out / "small" / "clip", SOURCES)
    check(got, spec(models, "small", **options), "htdemucs.apply", "float32", what=f"unmix-separate {case}")


def test_defaults_int16_rescaled(models: Models, tmp_path: Path, capsys) -> None:
    """No option: 16-bit WAV, each stem rescaled by max(1.01 peak, 1), as demucs 4.1.0's command."""
    import soundfile as sf

    out = separate([models.clip, "--model", models.small], tmp_path, capsys)
    folder = out / "small" / "clip"
    assert sf.info(str(folder / "drums.wav")).subtype == "PCM_16"
    expected = np.stack([prevent_clip(s, "rescale") for s in spec(models, "small", shifts=1, rng=0)])
    check(read_stems(folder, SOURCES), expected, "data.pcm16", "float32", what="defaults, int16 rescaled")


def _float64_in_process(path: Path, argv: list[str], framework: str = "torch") -> tuple[LoadedModel, Options]:
    """The command's own model path with ``--dtype float64``: the loaded model and the resolved options."""
    args = build_parser().parse_args(["x.wav", "--model", str(path), "--framework", framework, "--dtype", "float64",
                                      *argv])  # fmt: skip
    model = load_model(args.model, framework, "cpu", "float64", cache=None)
    options = resolve_options(args, model)
    return model, options


@pytest.mark.parametrize(("which", "shifts"), [("small", 2), ("bag", 1)])
def test_float64_equals_spec(which: str, shifts: int, models: Models) -> None:
    """``--dtype float64`` (the stems before they are written) equals the float64 spec to round-off."""
    path = models.small if which == "small" else models.bag
    model, options = _float64_in_process(path, ["--shifts", str(shifts), "--seed", "3"])
    assert model.kind == "htdemucs" and options.demucs == {"shifts": shifts, "split": True, "overlap": 0.25,
                                                           "segment": None, "rng": 3}  # fmt: skip
    got = model.separate(models.audio, options.demucs)
    assert got.dtype == np.float64
    check(got, spec(models, which, shifts=shifts, rng=3), "htdemucs.apply", "float64", what=f"float64 {which}")


def test_no_split(models: Models, tmp_path: Path, capsys) -> None:
    """``--no-split``: a track no longer than the segment runs whole; a longer one fails with a message naming
    the segment and writes nothing (demucs 4.1.0 fails too); ``--segment`` with it is refused as upstream's parser
    does."""
    from parity_tests.separate.inputs import write_clip

    short = write_clip(tmp_path / "short.wav", seconds=0.04, offset=1.0)
    audio, _ = read_audio_file(short)
    out = separate([short, "--model", models.small, "--no-split", "--shifts", "0", *FLOAT], tmp_path / "a", capsys)
    got = read_stems(out / "small" / "short", SOURCES)
    check(got, spec(models, "small", audio, shifts=0, split=False), "htdemucs.apply", "float32", what="--no-split")
    code, _, err = run([models.clip, "--model", models.small, "--framework", "torch", "--no-split", "--shifts", "0",
                        "-o", tmp_path / "b", "-q"], capsys)  # fmt: skip
    assert code == 1 and "--no-split" in err and "training segment (2205 samples, 0.05 s)" in err, err
    assert files_under(tmp_path / "b") == []
    code, _, err = run([models.clip, "--model", models.small, "--framework", "torch", "--no-split", "--segment",
                        "0.04", "-o", tmp_path / "c", "-q"], capsys)  # fmt: skip
    assert code == 1 and "--segment and --no-split exclude each other" in err, err


def test_segment_longer_than_trained_refused(models: Models, tmp_path: Path, capsys) -> None:
    """More than the training segment: upstream's message, nothing written; a bag's limit is its smallest
    member's (0.04 s)."""
    for path, segment, limit in ((models.small, "0.06", "0.05"), (models.bag, "0.045", "0.04")):
        code, _, err = run([models.clip, "--model", path, "--framework", "torch", "--segment", segment,
                            "-o", tmp_path, "-q"], capsys)  # fmt: skip
        assert code == 1 and TOO_LONG + limit in err, err
    assert files_under(tmp_path) == []


def test_canonical_bag(models: Models, tmp_path: Path, capsys) -> None:
    """A canonical bag of two (per-source weights, members of different segments), at its smallest segment."""
    out = separate([models.clip, "--model", models.bag, "--segment", "0.04", *FLOAT], tmp_path, capsys)
    got = read_stems(out / "bag" / "clip", SOURCES)
    check(got, spec(models, "bag", shifts=1, rng=0, segment=0.04), "htdemucs.apply", "float32", what="bag")


@pytest.mark.parametrize("method", ["add", "minus", "none"])
def test_two_stems(method: str, models: Models, tmp_path: Path, capsys) -> None:
    """``--two-stems vocals --other-method``: add (no_vocals, the sum of the others), minus (minus_vocals, the
    mixture minus vocals), none (vocals alone)."""
    argv = [models.clip, "--model", models.small, "--shifts", "0", "--two-stems", "vocals", *FLOAT]
    if method != "add":  # add is the default
        argv += ["--other-method", method]
    out = separate(argv, tmp_path, capsys)
    expected = spec(models, "small", shifts=0)
    others = {"add": {"no_vocals": expected[:3].sum(axis=0)},
              "minus": {"minus_vocals": models.audio.astype(np.float64) - expected[3]}, "none": {}}[method]  # fmt: skip
    assert files_under(out) == sorted(f"small/clip/{s}.wav" for s in ["vocals", *others])
    folder = out / "small" / "clip"
    check(read_stems(folder, ["vocals"])[0], expected[3], "htdemucs.apply", "float32", what=f"{method}: vocals")
    for name, ref in others.items():
        check(read_stems(folder, [name])[0], ref, "htdemucs.apply", "float32", what=f"{method}: {name}")


def test_other_method_needs_two_stems(models: Models, tmp_path: Path, capsys) -> None:
    code, _, err = run([models.clip, "--model", models.small, "--framework", "torch", "--other-method", "minus",
                        "-o", tmp_path], capsys)  # fmt: skip
    assert code == 1 and "--other-method minus: applies to --two-stems only" in err, err


def test_six_stems(models: Models, tmp_path: Path, capsys) -> None:
    out = separate([models.clip, "--model", models.six, "--shifts", "0", *FLOAT], tmp_path, capsys)
    assert files_under(out) == [f"six/clip/{s}.wav" for s in sorted(HTDEMUCS_SOURCES_6)]
    got = read_stems(out / "six" / "clip", HTDEMUCS_SOURCES_6)
    check(got, spec(models, "six", shifts=0), "htdemucs.apply", "float32", what="six stems")


def test_umx_options_refused_and_framework_without_htdemucs(
    models: Models, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Open-Unmix options are refused for HTDemucs; a port without HTDemucs says so (nothing written): here the
    torch port with its ``htdemucs_apply`` module made unimportable."""
    code, _, err = run([models.clip, "--model", models.small, "--framework", "torch", "--niter", "2", "-o", tmp_path],
                       capsys)  # fmt: skip
    assert code == 1 and "--niter: Open-Unmix option(s)" in err and "htdemucs model" in err, err
    import unmix.separate_models as separate_models

    real_import = separate_models.importlib.import_module

    def without_htdemucs(name: str, *args: Any) -> Any:
        if name == "umx_torch.htdemucs_apply":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args)

    monkeypatch.setattr(separate_models.importlib, "import_module", without_htdemucs)
    code, _, err = run([models.clip, "--model", models.small, "--framework", "torch", "-o", tmp_path], capsys)
    assert code == 1 and "HTDemucs is not available in PyTorch yet" in err, err
    assert files_under(tmp_path) == []


# --- files written by demucs 4.1.0, and its own command -----------------------------------------------------------

_WRITE = r"""
import copy, pathlib, types
from fractions import Fraction

# serialize_model imports omegaconf for OmegaConf.to_container; the training args here are a plain dict.
_oc = types.ModuleType("omegaconf")
class OmegaConf:
    @staticmethod
    def to_container(cfg, resolve=True):
        return copy.deepcopy(cfg)
_oc.OmegaConf = OmegaConf
sys.modules["omegaconf"] = _oc

from demucs.htdemucs import HTDemucs
from demucs.states import serialize_model, save_with_checksum
from safetensors.torch import save_file

def hub_json(v):
    if isinstance(v, Fraction):
        return {"_type": "fraction", "numerator": v.numerator, "denominator": v.denominator}
    return list(v) if isinstance(v, tuple) else v

out = pathlib.Path(ARGS["out"])
for name, kwargs in ARGS["models"].items():
    kwargs = dict(kwargs, segment=Fraction(*kwargs["segment"]))
    model = HTDemucs(**kwargs)
    prefix = name + "|"
    model.load_state_dict({k[len(prefix):]: torch.from_numpy(v) for k, v in INPUTS.items() if k.startswith(prefix)})
    before = set(out.iterdir())
    save_with_checksum(serialize_model(model, {"seed": 0}, half=False), out / f"{name}.th")
    (path,) = set(out.iterdir()) - before
    RESULT[name] = path.name
    if name == "small":  # also 4.1.0's hub layout (what demucs.hf.load_safetensors_model reads)
        args, kw = model._init_args_kwargs
        meta = {"klass": "demucs.htdemucs.HTDemucs", "args": json.dumps(list(args)),
                "kwargs": json.dumps({k: hub_json(v) for k, v in kw.items()})}
        save_file(dict(model.state_dict()), str(out / "smallhub.safetensors"), metadata=meta)
"""


def _kwargs(config: HTDemucsConfig) -> dict[str, Any]:
    kwargs = constructor_kwargs(config)
    segment = kwargs["segment"]
    assert isinstance(segment, Fraction)
    return {**kwargs, "segment": [segment.numerator, segment.denominator]}


@pytest.fixture(scope="module")
def repo(models: Models, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A demucs 4.1.0 ``--repo`` folder: ``small``, ``bag0``, ``bag1`` packages and ``bag2.yaml`` (and
    ``smallhub.safetensors``, ``small`` in the hub layout, which the repo does not read)."""
    folder = tmp_path_factory.mktemp("demucs4-repo")
    configs = {"small": SMALL, "bag0": SMALL, "bag1": SHORT}
    inputs = {f"{name}|{k}": v for name in configs for k, v in models.weights[name].items()}
    files, _ = run_oracle4(_WRITE, {"out": str(folder), "models": {n: _kwargs(c) for n, c in configs.items()}}, inputs)
    (folder / "bag2.yaml").write_text(
        json.dumps({"models": ["bag0", "bag1"], "weights": [list(r) for r in BAG.weights]})
    )
    return folder, files


def demucs4(argv: list, cwd: Path) -> None:
    """demucs 4.1.0's ``demucs`` command (``benchmarks.upstream_cli demucs4``: its code unchanged, offline)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ORACLE4_DIR), str(ROOT)]), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.upstream_cli", "demucs4", *map(str, argv)], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@needs_oracle
@pytest.mark.upstream
def test_upstream_package_through_the_cache(models: Models, repo, tmp_path: Path, capsys) -> None:
    """A package written by demucs 4.1.0: converted once into the cache, read from it the second time; a hub
    ``.safetensors`` (not a canonical file: read as upstream's); the stems equal the spec on the same weights."""
    folder, files = repo
    package = folder / files["small"]
    cache = tmp_path / "cache"
    expected = spec(models, "small", shifts=0)
    for attempt in ("converted", "cached"):
        out = tmp_path / attempt
        separate([models.clip, "--model", package, "--shifts", "0", "--cache-dir", cache, *FLOAT], out, capsys)
        entries = sorted(cache.glob("converted/*/*.safetensors"))
        assert len(entries) == 1, entries
        got = read_stems(out / package.name.split(".")[0] / "clip", SOURCES)
        check(got, expected, "htdemucs.apply", "float32", what=f"upstream package ({attempt})")
    hub = folder / "smallhub.safetensors"
    out = separate([models.clip, "--model", hub, "--shifts", "0", "--no-cache", *FLOAT], tmp_path / "hub", capsys)
    got = read_stems(out / "smallhub" / "clip", SOURCES)
    check(got, expected, "htdemucs.apply", "float32", what="upstream hub file")


@needs_oracle
@pytest.mark.upstream
def test_equals_demucs4_command(models: Models, repo, tmp_path: Path, capsys) -> None:
    """demucs 4.1.0's own ``demucs`` on the same file and packages, ``--shifts 0 --float32`` on both sides (its
    shifts are unseeded): one model with its other defaults (split, overlap 0.25, rescale), and the bag yaml with
    ``--two-stems vocals --other-method minus``. Both sides are judged against the float64 spec, ours within the
    row relative to upstream's own float32 error."""
    folder, files = repo
    common = ["--shifts", "0", "--float32"]
    demucs4([models.clip, "-n", "small", "--repo", folder, "-o", tmp_path / "up", "-d", "cpu", *common], tmp_path)
    demucs4([models.clip, "-n", "bag2", "--repo", folder, "-o", tmp_path / "up", "-d", "cpu", *common,
             "--two-stems", "vocals", "--other-method", "minus"], tmp_path)  # fmt: skip
    separate([models.clip, "--model", folder / files["small"], *common], tmp_path / "ours", capsys)
    separate([models.clip, "--model", folder / "bag2.yaml", *common, "--two-stems", "vocals", "--other-method",
              "minus"], tmp_path / "ours", capsys)  # fmt: skip

    def rescaled(stems: np.ndarray) -> np.ndarray:
        return np.stack([prevent_clip(s, "rescale") for s in stems])

    theirs = read_stems(tmp_path / "up" / "small" / "clip", SOURCES)
    ours = read_stems(tmp_path / "ours" / files["small"].split(".")[0] / "clip", SOURCES)
    expected = rescaled(spec(models, "small", shifts=0))
    check(theirs, expected, "htdemucs.apply", "float32", what="demucs 4.1.0 command vs spec")
    check(ours, expected, "htdemucs.apply", "float32", what="unmix-separate vs spec", upstream=theirs)
    bag = spec(models, "bag", shifts=0)
    expected = rescaled(np.stack([bag[3], models.audio.astype(np.float64) - bag[3]]))
    names = ["vocals", "minus_vocals"]
    theirs = read_stems(tmp_path / "up" / "bag2" / "clip", names)
    ours = read_stems(tmp_path / "ours" / "bag2" / "clip", names)
    assert files_under(tmp_path / "ours" / "bag2") == sorted(f"clip/{n}.wav" for n in names)
    check(theirs, expected, "htdemucs.apply", "float32", what="demucs 4.1.0 command, bag yaml, minus, vs spec")
    check(ours, expected, "htdemucs.apply", "float32", what="unmix-separate, bag yaml, minus, vs spec", upstream=theirs)


def test_jax_port(models: Models, tmp_path: Path, capsys) -> None:
    """``--framework jax`` runs the same command through ``umx_jax.htdemucs_apply`` (skipped where JAX or its
    HTDemucs is missing)."""
    pytest.importorskip("jax")
    pytest.importorskip("umx_jax.htdemucs_apply")
    code, _, err = run([models.clip, "--model", models.small, "--framework", "jax", "--shifts", "0", *FLOAT,
                        "-o", tmp_path, "-q", "--no-cache"], capsys)  # fmt: skip
    assert code == 0, err
    got = read_stems(tmp_path / "small" / "clip", SOURCES)
    check(got, spec(models, "small", shifts=0), "htdemucs.apply", "float32", what="unmix-separate --framework jax")


def test_tf_port(models: Models, tmp_path: Path, capsys) -> None:
    """``--framework tf`` runs the same command through ``umx_tf.htdemucs_apply``: demucs 4.1.0's defaults (one
    seeded shift), float32 stems against the spec; and ``--dtype float64`` on the canonical bag (two members of
    different segments, per-source weights, one shift) through the command's own model path, at the float64 row
    (skipped where TensorFlow is missing)."""
    pytest.importorskip("tensorflow")
    code, _, err = run([models.clip, "--model", models.small, "--framework", "tf", *FLOAT, "-o", tmp_path, "-q",
                        "--no-cache"], capsys)  # fmt: skip
    assert code == 0, err
    got = read_stems(tmp_path / "small" / "clip", SOURCES)
    expected = spec(models, "small", shifts=1, rng=0)
    check(got, expected, "htdemucs.apply", "float32", what="unmix-separate --framework tf")
    model, options = _float64_in_process(models.bag, ["--shifts", "1", "--seed", "3", "--segment", "0.04"], "tf")
    assert model.kind == "htdemucs" and model.framework == "tf"
    got = model.separate(models.audio, options.demucs)
    assert got.dtype == np.float64
    expected = spec(models, "bag", shifts=1, rng=3, segment=0.04)
    check(got, expected, "htdemucs.apply", "float64", what="float64 bag, --framework tf")
