"""Write the small committed checkpoints of ``parity_tests/fixtures/checkpoints/`` with the upstream code.

    .venv/bin/python parity_tests/convert/make_checkpoints.py

The torch-free reader tests (``test_reader_torchfree.py``, ``test_cli.py``) run in both environments, and the
NNabla environment has no torch, so they read these files, written here by openunmix 1.3.0, demucs 2.0.3 and
``torch.save`` (see :mod:`parity_tests.convert.checkpoints`), and compare with ``expected.npz``: every tensor as
torch saved it (``<file>|<path>``, stored dtype; bfloat16 as float32). Sizes are kept tiny (under 1 MB in all):

- ``umx_tiny_legacy.pth``: an ``OpenUnmix`` state dict (nb_bins 65, max_bin 40, hidden 16) with the 2019 legacy
  keys, legacy format; ``umx_tiny_zip.pth``: another seed, zip format;
- ``umx_tiny_model/``: a model folder as ``scripts/train.py`` writes it (targets vocals, drums; STFT 128/32 at
  8 kHz), legacy format for vocals and zip for drums;
- ``demucs_small_package.th``: ``demucs.utils.save_model`` of ``Demucs(channels=4, depth=4)`` (zip);
- ``demucs_small_fp16_legacy.th``: the same network's state dict in float16, legacy format;
- ``views_zip.pth`` / ``views_legacy.pth``: tensors sharing storages (slices, transposes, strides) in float32,
  float16, float64, bfloat16, int64 and bool.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core_spec.configs import DemucsConfig, SeparatorConfig, STFTConfig, UMXConfig, UMXSeparatorConfig  # noqa: E402
from parity_tests.convert import checkpoints as ck  # noqa: E402

OUT = ROOT / "parity_tests" / "fixtures" / "checkpoints"

TINY_UMX = UMXConfig(nb_bins=65, nb_channels=2, hidden_size=16, nb_layers=3, unidirectional=False, max_bin=40)
TINY_SEPARATOR = UMXSeparatorConfig(
    model=TINY_UMX,
    separator=SeparatorConfig(targets=("vocals", "drums"), sample_rate=8000.0, stft=STFTConfig(n_fft=128, n_hop=32)),
)
SMALL_DEMUCS = DemucsConfig(channels=4, depth=4)


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    expected: dict[str, np.ndarray] = {}

    def record(name: str, obj: object) -> None:
        for key, value in ck.torch_flat(obj).items():
            expected[f"{name}|{key}"] = value

    state = ck.umx_state(TINY_UMX, seed=11, legacy_keys=True)
    ck.save(state, OUT / "umx_tiny_legacy.pth", "legacy")
    record("umx_tiny_legacy.pth", state)

    state = ck.umx_state(TINY_UMX, seed=12)
    ck.save(state, OUT / "umx_tiny_zip.pth", "zip")
    record("umx_tiny_zip.pth", state)

    folder = OUT / "umx_tiny_model"
    states = ck.write_umx_folder(folder, TINY_SEPARATOR, seed=13, fmt="zip")
    ck.save(states["vocals"], folder / "vocals.pth", "legacy")  # one target in each format
    (folder / "vocals.chkpnt").unlink()  # keep the committed folder small; drums.chkpnt stays
    for target in TINY_SEPARATOR.separator.targets:
        log = json.loads((folder / f"{target}.json").read_text())
        log["args"]["bandwidth"] = 2450  # the bandwidth that gives max_bin 40 at 8 kHz / n_fft 128
        (folder / f"{target}.json").write_text(json.dumps(log, indent=4, sort_keys=True))
        record(f"umx_tiny_model/{target}.pth", states[target])

    reference = ck.write_demucs_package(OUT / "demucs_small_package.th", SMALL_DEMUCS, seed=14)
    record("demucs_small_package.th", {"state": reference})

    state = ck.demucs_state(SMALL_DEMUCS, seed=15, half=True)
    ck.save(state, OUT / "demucs_small_fp16_legacy.th", "legacy")
    record("demucs_small_fp16_legacy.th", state)

    views = ck.views_object(seed=16)
    ck.save(views, OUT / "views_zip.pth", "zip")
    ck.save(views, OUT / "views_legacy.pth", "legacy")
    record("views_zip.pth", views)
    record("views_legacy.pth", views)

    meta = {
        "versions": ck.oracle.versions(),
        "tiny_umx": dataclasses.asdict(TINY_UMX),
        "small_demucs": dataclasses.asdict(SMALL_DEMUCS),
        "seeds": {"umx_tiny_legacy": 11, "umx_tiny_zip": 12, "umx_tiny_model": 13, "package": 14, "fp16": 15},
    }
    np.savez_compressed(OUT / "expected.npz", __meta__=np.array(json.dumps(meta, sort_keys=True)), **expected)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{p.relative_to(OUT)}  {p.stat().st_size:,} B")
    print(f"total {total:,} B")


if __name__ == "__main__":
    main()
