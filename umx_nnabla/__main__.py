"""Command line of the NNabla port::

    python -m umx_nnabla separate INPUT... --model MODEL [options]     # unmix-separate --framework nnabla
    python -m umx_nnabla oracle-npz --input IN.npz --output OUT.npz
    python -m umx_nnabla separate-npz --weights STEM --input IN.npz --output OUT.npz [--segment-length N]

``separate``: audio files in, stems out; the same code as ``unmix-separate --framework nnabla``
(:mod:`unmix.separate_cli`).

The two ``-npz`` commands serve the main environment's scripts and tests (arrays cross as ``.npz`` files):

``separate-npz``: the model of a canonical file (``STEM.safetensors`` + ``STEM.json``: a UMX separator or a Demucs)
separates ``IN.npz``'s ``mixture`` ``(nb_channels, nb_timesteps)`` at the model's rate: :meth:`Separator.separate`,
or :func:`separate_track` (``split=True``, ``shifts=0``; ``--segment-length`` in samples, default the model's).
``OUT.npz`` gets ``estimates`` ``(nb_sources, nb_channels, nb_timesteps)`` and ``seconds``.

``oracle-npz``: the oracle Wiener separation of ``make demo`` done by this port (its STFT, magnitude graph, Wiener
filter and inverse STFT, float32): ``IN.npz`` holds ``mixture`` ``(nb_channels, nb_timesteps)``, ``stems``
``(nb_sources, nb_channels, nb_timesteps)`` (their magnitudes replace the networks' outputs) and ``config``, the
``core_spec.configs`` JSON of a ``SeparatorConfig``; ``OUT.npz`` gets ``estimates``
``(nb_sources, nb_channels, nb_timesteps)`` and ``seconds`` (the time the separation took).
"""

from __future__ import annotations

import argparse
import sys
import time

import nnabla as nn
import numpy as np

from core_spec.configs import SeparatorConfig, config_from_json

from .apply import separate_track
from .build import from_canonical_file
from .separator import Separator, filter_and_invert
from .transforms import complex_norm, stft

__all__ = ["main", "oracle_separation"]


def oracle_separation(mixture: np.ndarray, stems: np.ndarray, sep: SeparatorConfig) -> np.ndarray:
    """Wiener-filter ``mixture`` ``(C, L)`` with the true magnitudes of ``stems`` ``(S, C, L)``: ``(S, C, L)``."""
    fft = sep.stft
    X = stft(mixture[None].astype(np.float32), fft.n_fft, fft.n_hop)  # (1, C, F, T)
    S = stft(stems.astype(np.float32), fft.n_fft, fft.n_hop)  # (S, C, F, T)
    magnitude = complex_norm(nn.Variable.from_numpy_array(S.real), nn.Variable.from_numpy_array(S.imag))
    magnitude.forward()
    v = np.moveaxis(magnitude.d, 0, -1)[None]  # (1, C, F, T, S)
    return filter_and_invert(X, v, sep, mixture.shape[-1])[0]


def _separate(weights: str, mixture: np.ndarray, segment_length: int | None) -> np.ndarray:
    model = from_canonical_file(weights)
    if isinstance(model, Separator):
        return np.asarray(model.separate(mixture))[0]
    return np.asarray(separate_track(model, mixture, segment_length=segment_length))[0]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["separate"]:
        from unmix.separate_cli import port_main

        return port_main("nnabla", argv)
    parser = argparse.ArgumentParser(prog="python -m umx_nnabla", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("separate", help="audio files -> stems (unmix-separate --framework nnabla)")
    oracle = commands.add_parser("oracle-npz", help="oracle Wiener separation (true stem magnitudes), .npz in and out")
    oracle.add_argument("--input", required=True)
    oracle.add_argument("--output", required=True)
    separate = commands.add_parser("separate-npz", help="separate a mixture with a canonical file's model")
    separate.add_argument("--weights", required=True, help="canonical STEM (.safetensors + .json)")
    separate.add_argument("--input", required=True)
    separate.add_argument("--output", required=True)
    separate.add_argument("--segment-length", type=int, help="Demucs split segment in samples")
    args = parser.parse_args(argv)
    with np.load(args.input, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    start = time.perf_counter()
    if args.command == "separate-npz":
        estimates = _separate(args.weights, arrays["mixture"], args.segment_length)
    else:
        config = config_from_json(str(arrays["config"]))
        if not isinstance(config, SeparatorConfig):
            print(f"error: config must be a SeparatorConfig, got {type(config).__name__}", file=sys.stderr)
            return 1
        estimates = oracle_separation(arrays["mixture"], arrays["stems"], config)
    np.savez(args.output, estimates=estimates, seconds=time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    from unmix.quick_exit import run_console

    run_console(main)
