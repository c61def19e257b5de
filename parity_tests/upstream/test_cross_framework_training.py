"""A model trained here in any framework loads in every other port and in upstream openunmix / demucs 2.0.3 (issue 9).

For each model (Open-Unmix, Demucs v2) and each training framework (torch, tf, jax, nnabla), ``unmix-train``
(:func:`unmix.train_cli.main`; ``--framework nnabla`` re-runs itself in ``.venv-nnabla``) trains two optimiser
steps on the tiny MUSDB-style root (``parity_tests/tiny_musdb.py``), starting from a small model as upstream
initialises it (``--init``: openunmix's ``OpenUnmix`` with hidden size 16, 2 LSTM layers, n_fft 512; demucs's
``Demucs`` with channels 2, depth 4), and writes the canonical best model ``<name>.safetensors`` + ``.json``.

That one file is then loaded by

- ``umx_torch``, ``umx_tf``, ``umx_jax``: ``from_canonical_file`` in this process;
- ``umx_nnabla``: ``from_canonical_file`` in ``.venv-nnabla`` (a subprocess; arrays cross as ``.npz``);
- upstream: the canonical weights written as PyTorch's state dict (``umx_torch.save_native``, the ``.pth`` that
  ``load_state_dict`` reads), read back with ``torch.load(weights_only=True)`` into ``openunmix.model.OpenUnmix`` /
  ``demucs.model.Demucs`` (:mod:`parity_tests.oracle`, every name and shape checked);

and each runs the network forward in float32 on one fixed input (UMX: the magnitude spectrogram of the validation
mixture; Demucs: its waveform), compared with upstream's float64 forward of the same weights (stages
``umx.output`` / ``demucs.output``). Demucs trains without dropout and every port draws its batches and
augmentations from the same seeded :mod:`unmix.data` pipeline, so its weights after the two steps also agree
across frameworks (stage ``train.update``); UMX's LSTM dropout masks are each framework's own.
"""

from __future__ import annotations

import os
import subprocess
import traceback
from pathlib import Path

import numpy as np
import pytest

from core_spec.canonical import load_canonical, save_canonical
from core_spec.configs import DemucsConfig, UMXConfig
from core_spec.tolerances import check

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("torch", "tf", "jax", "nnabla")
LOADERS = ("torch", "tf", "jax", "nnabla", "upstream")
MODELS = ("umx", "demucs")
NAMES = {"umx": "vocals", "demucs": "demucs"}  # the run folder's canonical stem
STAGES = {"umx": "umx.output", "demucs": "demucs.output"}
UMX_CONFIG = UMXConfig(nb_bins=257, nb_channels=2, hidden_size=16, nb_layers=2, max_bin=64)  # n_fft 512
DEMUCS_CONFIG = DemucsConfig(channels=2, depth=4)  # the Demucs gradient-parity case's layout, 17k parameters
STEPS = 2
# two 0.5-s excerpts a batch (UMX: 2 a track; Demucs: 8820-sample segments, Remix within pairs), one valid track
TRAIN_OPTIONS = {
    "umx": ("--batch-size", "2", "--seq-dur", "0.5", "--samples-per-track", "2"),
    "demucs": ("--batch-size", "2", "--remix-group-size", "2", "--samples", "8820", "--data-stride", "11025"),
}
UMX_INPUT_SAMPLES = 11025  # 83 un-centred frames of n_fft 512 / hop 128
DEMUCS_INPUT_SAMPLES = 4410  # before valid_length
NNABLA_FORWARD = """
import sys
import numpy as np
from umx_nnabla import from_canonical_file
stem, inp, out = sys.argv[1:]
model = from_canonical_file(stem)
with np.load(inp) as data:
    x = data["x"]
np.savez(out, y=model.infer(x))
"""


def _nnabla_python() -> Path:
    return Path(os.environ.get("UNMIX_NNABLA_PYTHON", ROOT / ".venv-nnabla" / "bin" / "python"))


class Lab:
    """The module's shared state: the tiny root, the initial models, and every training run and reference, made
    once on first use. A failed run is remembered so that each test that needs it fails with its message."""

    def __init__(self, root: Path, work: Path) -> None:
        self.root, self.work = root, work
        self.init = {model: self._initial(model) for model in MODELS}
        self.inputs = {model: self._input(model) for model in MODELS}
        self._runs: dict[tuple[str, str], tuple[Path, str | None]] = {}
        self._references: dict[tuple[str, str], np.ndarray] = {}
        self._jax_forward = None

    # --- what the runs start from and what the models are fed -----------------------------------------------------

    def _initial(self, model: str) -> Path:
        """The small model as upstream initialises it (torch seeded), saved as a canonical file for ``--init``."""
        from parity_tests import oracle

        oracle.torch.manual_seed(0)
        if model == "umx":
            from openunmix.model import OpenUnmix

            c = UMX_CONFIG
            net = OpenUnmix(
                nb_bins=c.nb_bins,
                nb_channels=c.nb_channels,
                hidden_size=c.hidden_size,
                nb_layers=c.nb_layers,
                unidirectional=c.unidirectional,
                max_bin=c.max_bin,
            )
            config: UMXConfig | DemucsConfig = c
        else:
            net, config = oracle.demucs_model(DEMUCS_CONFIG, None, oracle.torch.float32), DEMUCS_CONFIG
        state = {k: v.numpy() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
        stem = self.work / "init" / model
        save_canonical(stem, state, config, provenance={"origin": "upstream initialisation, torch seed 0"})
        return stem

    def _input(self, model: str) -> np.ndarray:
        """float32 network input from the validation mixture: UMX ``(1, 2, 257, 83)`` magnitude (un-centred STFT,
        as in training), Demucs ``(1, 2, valid_length)`` waveform."""
        from core_spec.reference.transforms import complex_norm, stft
        from core_spec.shapes import valid_length
        from parity_tests.tiny_musdb import TINY_TRACKS
        from unmix.data import read_audio

        mixture = self.root / "valid" / TINY_TRACKS["valid"][0] / "mixture.wav"
        if model == "umx":
            audio, _ = read_audio(mixture, 0, UMX_INPUT_SAMPLES)
            n_fft = 2 * (UMX_CONFIG.nb_bins - 1)
            spec = stft(audio[None].astype(np.float64), n_fft, n_fft // 4, center=False)
            return complex_norm(spec).astype(np.float32)
        audio, _ = read_audio(mixture, 0, valid_length(DEMUCS_INPUT_SAMPLES, DEMUCS_CONFIG))
        return audio[None].astype(np.float32)

    # --- training and the reference -------------------------------------------------------------------------------

    def trained(self, model: str, framework: str) -> Path:
        """The canonical stem of the best model of ``unmix-train --framework <framework> --model <model>``."""
        from unmix.train_cli import main

        key = (model, framework)
        if key not in self._runs:
            out = self.work / f"{model}-{framework}"
            argv = ["--framework", framework, "--model", model, "--root", str(self.root), "--out", str(out)]
            argv += ["--init", str(self.init[model]), "--max-steps", str(STEPS), "--valid-tracks", "1", "--quiet"]
            argv += TRAIN_OPTIONS[model]
            try:
                rc = main(argv)
                error = None if rc == 0 else f"unmix-train {' '.join(argv)} exited with status {rc}"
            except Exception:  # remembered and reported by every test of this run
                error = f"unmix-train {' '.join(argv)} raised:\n{traceback.format_exc()}"
            self._runs[key] = (out / NAMES[model], error)
        stem, error = self._runs[key]
        if error is not None:
            pytest.fail(f"training {model} in {framework} failed: {error}")
        return stem

    def reference(self, model: str, framework: str) -> np.ndarray:
        """Upstream's float64 forward of the trained weights on :attr:`inputs` (the expected output)."""
        from parity_tests import oracle

        key = (model, framework)
        if key not in self._references:
            weights, config, _ = load_canonical(self.trained(model, framework))
            weights = {k: v.astype(np.float64) for k, v in weights.items()}
            torch = oracle.torch
            build = oracle.umx_model if model == "umx" else oracle.demucs_model
            net = build(config, weights, torch.float64)
            with torch.no_grad():
                self._references[key] = net(torch.from_numpy(self.inputs[model].astype(np.float64))).numpy()
        return self._references[key]

    # --- the loaders ----------------------------------------------------------------------------------------------

    def forward(self, loader: str, stem: Path, model: str) -> np.ndarray:
        """The float32 network output of the model that ``loader`` builds from the canonical file ``stem``."""
        x = self.inputs[model]
        if loader == "torch":
            import torch

            import umx_torch

            net = umx_torch.from_canonical_file(stem)
            with torch.no_grad():
                return net(torch.from_numpy(x)).numpy()
        if loader == "tf":
            import tensorflow as tf

            import umx_tf

            with tf.device("/CPU:0"):
                return umx_tf.from_canonical_file(stem)(tf.constant(x)).numpy()
        if loader == "jax":
            import jax.numpy as jnp

            import umx_jax

            if self._jax_forward is None:  # one compiled forward per model shape, shared by the trained models
                from flax import nnx

                self._jax_forward = nnx.jit(lambda net, x: net(x))
            return np.asarray(self._jax_forward(umx_jax.from_canonical_file(stem, device="cpu"), jnp.asarray(x)))
        if loader == "nnabla":
            return self._nnabla_forward(stem, x)
        return self._upstream_forward(stem, model)

    def _nnabla_forward(self, stem: Path, x: np.ndarray) -> np.ndarray:
        python = _nnabla_python()
        if not python.exists():
            pytest.fail(f"the NNabla port runs in {python}, which does not exist (make setup)")
        tag = f"{stem.parent.name}-{stem.name}"
        inp, out = self.work / f"nnabla-in-{tag}.npz", self.work / f"nnabla-out-{tag}.npz"
        np.savez(inp, x=x)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [str(python), "-c", NNABLA_FORWARD, str(stem), str(inp), str(out)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"umx_nnabla.from_canonical_file({stem}) failed:\n{done.stderr[-3000:]}"
        with np.load(out) as data:
            return data["y"]

    def _upstream_forward(self, stem: Path, model: str) -> np.ndarray:
        """Canonical -> upstream's ``.pth`` state dict -> ``torch.load`` -> openunmix / demucs 2.0.3, float32."""
        from parity_tests import oracle
        from umx_torch import save_native
        from umx_torch.weights import native_paths

        torch = oracle.torch
        weights, config, _ = load_canonical(stem)
        path = self.work / "upstream" / f"{stem.parent.name}-{stem.name}"
        save_native(path, weights, config, force=True)
        state = torch.load(native_paths(path)[0], map_location="cpu", weights_only=True)
        assert set(state) == set(weights), sorted(set(state) ^ set(weights))
        build = oracle.umx_model if model == "umx" else oracle.demucs_model
        net = build(config, {k: v.numpy() for k, v in state.items()}, torch.float32)
        with torch.no_grad():
            return net(torch.from_numpy(self.inputs[model])).numpy()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    from parity_tests.tiny_musdb import make_tiny_musdb

    root = make_tiny_musdb(tmp_path_factory.mktemp("tiny_musdb"))
    return Lab(root, tmp_path_factory.mktemp("cross_framework"))


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("model", MODELS)
def test_training_writes_a_canonical_model(lab: Lab, model: str, framework: str) -> None:
    """``unmix-train`` runs two steps and writes the canonical best model (its provenance names the framework),
    the native copy and the checkpoint; the architecture is the ``--init`` one and training moved the weights."""
    stem = lab.trained(model, framework)
    out, name = stem.parent, stem.name
    weights, config, provenance = load_canonical(stem)
    init, init_config, _ = load_canonical(lab.init[model])
    assert config == init_config
    assert provenance["framework"] == framework and provenance["step"] == STEPS, provenance
    assert list(out.glob(f"{name}-{framework}.*")), sorted(p.name for p in out.iterdir())
    assert (out / f"checkpoint-{name}-{framework}" / "state.json").exists()
    assert weights.keys() == init.keys()
    assert all(np.all(np.isfinite(w)) for w in weights.values())
    moved = [k for k in weights if not np.array_equal(weights[k], init[k])]
    assert len(moved) > len(weights) // 2, f"training in {framework} left {sorted(set(weights) - set(moved))}"


@pytest.mark.parametrize("loader", LOADERS, ids=[f"loaded_by_{x}" for x in LOADERS])
@pytest.mark.parametrize("framework", FRAMEWORKS, ids=[f"trained_in_{x}" for x in FRAMEWORKS])
@pytest.mark.parametrize("model", MODELS)
def test_trained_model_loads_everywhere(lab: Lab, model: str, framework: str, loader: str) -> None:
    """The canonical model trained in ``framework``, loaded by ``loader``: float32 forward = upstream's float64."""
    stem = lab.trained(model, framework)
    expected = lab.reference(model, framework)
    actual = lab.forward(loader, stem, model)
    what = f"{model} trained in {framework}, loaded by {loader} vs upstream float64"
    metrics = check(actual, expected, STAGES[model], "float32", "cpu", what=what)
    print(f"{what}: {metrics}")


@pytest.mark.parametrize("framework", [f for f in FRAMEWORKS if f != "torch"])
def test_demucs_trains_alike_in_every_framework(lab: Lab, framework: str) -> None:
    """Demucs has no dropout and every port draws its batches and augmentations from the same seeded pipeline:
    after two steps from the same initial weights, each framework's trained weights are torch's."""
    torch_weights, _, _ = load_canonical(lab.trained("demucs", "torch"))
    weights, _, _ = load_canonical(lab.trained("demucs", framework))
    found = {
        k: check(weights[k], v, "train.update", "float32", "cpu", what=f"demucs trained in {framework} vs torch: {k}")
        for k, v in torch_weights.items()
    }
    worst = max(found, key=lambda k: found[k].rel)
    print(f"demucs trained in {framework} vs torch, worst tensor {worst}: {found[worst]}")
