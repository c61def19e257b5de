"""Checkpoints written by the upstream code itself, for the reader and converter tests. Main environment only.

Each writer builds the upstream model (openunmix 1.3.0 ``OpenUnmix``, demucs 2.0.3 ``Demucs``) from a
``core_spec`` config, loads seeded weights (:func:`core_spec.seeded.random_weights`) into it, and saves what
upstream saves, with ``torch.save`` in the zip format (``fmt="zip"``) or the legacy one (``fmt="legacy"``,
``_use_new_zipfile_serialization=False``, the format of torch < 1.6 and of the 2019 Open-Unmix files):

- :func:`umx_state`: ``OpenUnmix.state_dict()`` (with ``num_batches_tracked``), optionally with the 2019 legacy
  keys ``sample_rate`` (int64), ``stft.window`` and ``transform.0.window``;
- :func:`write_umx_folder`: a model folder as openunmix's ``scripts/train.py`` writes it (``separator.json``,
  ``<target>.json`` with ``args``, ``<target>.pth``, ``<target>.chkpnt`` with the Adam and scheduler states);
- :func:`demucs_state`: ``Demucs.state_dict()``; ``half=True`` for an fp16 state;
- :func:`write_demucs_package`: ``demucs.utils.save_model(model, quantizer, training_args, path)`` with the
  ``training_args`` of demucs's own parser, optionally with a ``DiffQuantizer`` (``get_quantizer`` semantics);
- :func:`write_demucs_quantized_state`: ``demucs.utils.get_state(model, DiffQuantizer(model, group_size=8,
  min_size=1))`` saved with ``torch.save``: the layout of ``demucs_quantized-07afea75.th``;
- :func:`views_object`: tensors sharing storages (a tensor, a slice, a transpose, a strided view), float16,
  float64, bfloat16, int64, bool, an empty tensor and a parameter.

:func:`torch_flat` flattens what was saved to ``{path: numpy array}`` (bfloat16 upcast to float32, as the reader
does) so that tests compare the reader's output bit for bit with what torch saved.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from core_spec.configs import DemucsConfig, UMXConfig, UMXSeparatorConfig
from core_spec.seeded import random_weights
from parity_tests import oracle
from parity_tests.convert.flat import flatten

torch = oracle.torch

__all__ = [
    "SOURCES",
    "demucs_model",
    "demucs_state",
    "save",
    "torch_flat",
    "umx_state",
    "views_object",
    "write_demucs_package",
    "write_demucs_quantized_state",
    "write_umx_folder",
]

SOURCES = ["drums", "bass", "other", "vocals"]


def save(obj: Any, path: str | os.PathLike, fmt: str) -> Path:
    """``torch.save`` in the zip (``fmt="zip"``) or legacy (``fmt="legacy"``) format."""
    if fmt not in ("zip", "legacy"):
        raise ValueError(fmt)
    torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
    return Path(path)


def torch_flat(obj: Any) -> dict[str, np.ndarray]:
    """What torch saved, as ``{path: array}`` in the stored dtype (bfloat16 as float32)."""

    def convert(x: Any) -> np.ndarray | None:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu()
            return (x.float() if x.dtype == torch.bfloat16 else x).numpy().copy()
        return None

    return flatten(obj, convert)


# --- Open-Unmix -------------------------------------------------------------------------------------------------


def umx_state(config: UMXConfig, seed: int = 0, legacy_keys: bool = False) -> OrderedDict:
    """``openunmix.model.OpenUnmix(...).state_dict()`` with seeded weights (float32)."""
    model = oracle.umx_model(config, random_weights(config, seed), dtype=torch.float32)
    state = model.state_dict()
    if legacy_keys:  # what the 2019 umx/umxhq files carry beside the weights
        window = torch.hann_window(4096)
        state["sample_rate"] = torch.tensor(44100)
        state["stft.window"] = window
        state["transform.0.window"] = window
    return state


def write_umx_folder(folder: Path, config: UMXSeparatorConfig, seed: int = 0, fmt: str = "zip") -> dict[str, Any]:
    """An Open-Unmix model folder as ``scripts/train.py`` (openunmix 1.3) writes it; returns the saved states."""
    folder.mkdir(parents=True, exist_ok=True)
    m, s = config.model, config.separator
    separator_conf = {
        "nfft": s.stft.n_fft,
        "nhop": s.stft.n_hop,
        "sample_rate": s.sample_rate,
        "nb_channels": m.nb_channels,
    }
    (folder / "separator.json").write_text(json.dumps(separator_conf, indent=4, sort_keys=True))
    states = {}
    for index, target in enumerate(s.targets):
        model = oracle.umx_model(m, random_weights(m, seed + index), dtype=torch.float32).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.001, weight_decay=0.00001)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.3, patience=80, cooldown=10)
        x = torch.rand(3, m.nb_channels, m.nb_bins, 5)  # (nb_samples, nb_channels, nb_bins, nb_frames)
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        scheduler.step(loss.item())
        model.load_state_dict(oracle.to_torch_state(random_weights(m, seed + index)), strict=False)
        state = model.state_dict()
        checkpoint = {
            "epoch": 2,
            "state_dict": state,
            "best_loss": loss.item(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }
        save(checkpoint, folder / f"{target}.chkpnt", fmt)
        save(state, folder / f"{target}.pth", fmt)
        train_args = argparse.Namespace(
            target=target,
            dataset="musdb",
            root=None,
            output=str(folder),
            model=None,
            checkpoint=None,
            audio_backend="soundfile",
            epochs=1,
            batch_size=16,
            lr=0.001,
            patience=140,
            lr_decay_patience=80,
            lr_decay_gamma=0.3,
            weight_decay=0.00001,
            seed=42,
            seq_dur=6.0,
            unidirectional=m.unidirectional,
            nfft=s.stft.n_fft,
            nhop=s.stft.n_hop,
            hidden_size=m.hidden_size,
            bandwidth=16000,
            nb_channels=m.nb_channels,
            nb_workers=0,
            debug=False,
            quiet=False,
            no_cuda=False,
        )
        params = {
            "epochs_trained": 1,
            "args": vars(train_args),
            "best_loss": loss.item(),
            "best_epoch": 1,
            "train_loss_history": [loss.item()],
            "valid_loss_history": [loss.item()],
            "train_time_history": [],
            "num_bad_epochs": 0,
            "commit": "0000000",
        }
        (folder / f"{target}.json").write_text(json.dumps(params, indent=4, sort_keys=True))
        states[target] = state
    return states


# --- Demucs -----------------------------------------------------------------------------------------------------


def demucs_model(config: DemucsConfig, seed: int = 0):
    """Upstream ``demucs.model.Demucs`` built with keyword arguments as ``demucs/__main__.py`` does, seeded."""
    from demucs.model import Demucs

    model = Demucs(
        audio_channels=config.audio_channels,
        channels=config.channels,
        context=config.context,
        depth=config.depth,
        glu=config.glu,
        growth=config.growth,
        kernel_size=config.kernel_size,
        lstm_layers=config.lstm_layers,
        rescale=config.rescale,
        rewrite=config.rewrite,
        stride=config.stride,
        resample=config.resample,
        normalize=config.normalize,
        samplerate=config.samplerate,
        segment_length=config.segment_length,
        sources=list(config.sources),
    )
    model.load_state_dict(oracle.to_torch_state(random_weights(config, seed)))
    return model.eval()


def demucs_state(config: DemucsConfig, seed: int = 0, half: bool = False) -> dict:
    state = demucs_model(config, seed).state_dict()
    return {k: v.half() for k, v in state.items()} if half else dict(state)


def _training_args(config: DemucsConfig, diffq: float = 0.0, q_min_size: float = 1.0) -> argparse.Namespace:
    from demucs.parser import get_parser

    return get_parser().parse_args(
        [
            f"--channels={config.channels}",
            f"--depth={config.depth}",
            f"--diffq={diffq}",
            f"--q-min-size={q_min_size}",
        ]
    )


def write_demucs_package(
    path: Path, config: DemucsConfig, seed: int = 0, diffq: bool = False, q_min_size: float = 0.01
) -> Any:
    """``demucs.utils.save_model`` of a seeded model; returns the upstream ``load_model(path)`` state dict."""
    from demucs.utils import get_quantizer, save_model, set_state

    model = demucs_model(config, seed)
    args = _training_args(config, diffq=1e-4 if diffq else 0.0, q_min_size=q_min_size)
    quantizer = get_quantizer(model, args)
    save_model(model, quantizer, args, path)
    # demucs.utils.load_model, with weights_only=False spelled out (torch >= 2.6 refuses the package otherwise;
    # this file was written just above)
    package = torch.load(path, map_location="cpu", weights_only=False)
    loaded = package["klass"](*package["args"], **package["kwargs"])
    loaded_quantizer = get_quantizer(loaded, package["training_args"])
    set_state(loaded, loaded_quantizer, package["state"])
    if loaded_quantizer is not None:
        loaded_quantizer.detach()
    return loaded.state_dict()


def write_demucs_quantized_state(path: Path, config: DemucsConfig, seed: int = 0) -> Any:
    """The ``demucs_quantized`` layout (``{'compressed': zlib(torch.save(quantized state))}``), saved with
    ``torch.save``; returns the state dict upstream restores from it (``set_state`` on a fresh model)."""
    from demucs.utils import get_state, set_state
    from diffq import DiffQuantizer

    model = demucs_model(config, seed)
    state = get_state(model, DiffQuantizer(model, group_size=8, min_size=1))
    torch.save(state, path)
    fresh = demucs_model(config, seed + 1)
    quantizer = DiffQuantizer(fresh, group_size=8, min_size=1)
    set_state(fresh, quantizer, torch.load(path, map_location="cpu", weights_only=False))
    quantizer.detach()
    return fresh.state_dict()


# --- storages shared between tensors ----------------------------------------------------------------------------


def views_object(seed: int = 0) -> dict[str, Any]:
    """Tensors that share storages, in several dtypes: what the reader must cut with offsets and strides."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(5, 7, generator=g)
    d = torch.randn(24, generator=g, dtype=torch.float64)
    h = torch.randn(6, 4, generator=g).half()
    return {
        "t": t,
        "t_tail": t[1:],  # storage offset 7
        "t_T": t.T,  # strides (1, 7)
        "t_strided": t[1:4, ::3],  # offset 7, strides (7, 3)
        "t_row": t[2],
        "d": d,
        "d_view": d[4:16].view(3, 4),
        "h": h,
        "h_T": h.T,
        "bf16": torch.randn(9, generator=g).bfloat16(),
        "long": torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4),
        "scalar": torch.tensor(44100),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3),
        "param": torch.nn.Parameter(torch.randn(3, generator=g)),
        "nested": OrderedDict(a=t[:, 0], b=[t[0, 1:3], h[1]]),
    }
