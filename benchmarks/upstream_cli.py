"""Upstream's own separation commands, run offline for ``python -m benchmarks separate`` (:mod:`benchmarks.separate`)::

    python -m benchmarks.upstream_cli umx INPUT --model FOLDER --targets vocals drums bass other --outdir OUT ...
    python -m benchmarks.upstream_cli demucs INPUT -n NAME --models FOLDER -o OUT ...
    PYTHONPATH=.oracle-demucs4:. python -m benchmarks.upstream_cli demucs4 INPUT -n NAME --repo FOLDER -o OUT ...

``umx`` is ``openunmix.cli.separate`` (openunmix 1.3.0's console script) and ``demucs`` is ``demucs.separate.main``
(``python -m demucs.separate`` of demucs 2.0.3), called unchanged with these arguments. Two things are supplied
around them, neither of which touches the separation:

- the models come from local files (an openunmix model folder, a ``demucs.utils.save_model`` package under
  ``--models``), written by :mod:`benchmarks.separate` from the same seeded weights as the ports' canonical files, so
  nothing is downloaded;
- ``torchaudio`` (which no build of torch 2.13 has) is replaced by a module whose ``load``/``info``/``save`` call
  ``soundfile``, as torchaudio's own soundfile backend does: it reads and writes the files, nothing else.
  (demucs reads its input with ffmpeg itself.) Its ``torch.load`` of the package needs ``weights_only=False``:
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set before torch is imported.

``demucs4`` is demucs 4.1.0's ``demucs`` console script (``demucs.separate.main``), called unchanged; it must run
with the oracle folder ``.oracle-demucs4`` first on ``PYTHONPATH`` (demucs 4.1.0 is the module ``demucs`` too: the
command checks the version it imported). Models come from ``--repo FOLDER`` (packages ``<sig>-<checksum>.th`` and bag
yamls, upstream's ``LocalRepo``), so nothing is downloaded. Its audio modules import two packages the oracle folder
does not hold; each is replaced around the command, neither touching the separation:

- ``sphn`` (its reader): ``sphn.read(path)`` -> ``(float32 (channels, samples), rate)`` by ``soundfile``;
- ``lameenc`` (its MP3 encoder, imported at the top of ``demucs.audio``): a module whose ``Encoder`` refuses to
  run, so ``--mp3`` fails clearly instead of writing anything.

WAV output is 4.1.0's own writer (``demucs.audio.encode_wav``).
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

__all__ = ["install_demucs4_stand_ins", "install_torchaudio", "main"]


def install_torchaudio() -> None:
    """Register a ``torchaudio`` module backed by soundfile (``load``, ``info``, ``save``, backend getters)."""
    import numpy as np
    import soundfile as sf
    import torch

    module = types.ModuleType("torchaudio")

    def load(path: Any, frame_offset: int = 0, num_frames: int = -1, **_: Any) -> tuple[torch.Tensor, int]:
        data, rate = sf.read(str(path), start=frame_offset, frames=num_frames, dtype="float32", always_2d=True)
        return torch.from_numpy(np.ascontiguousarray(data.T)), rate

    def info(path: Any) -> Any:
        i = sf.info(str(path))
        return types.SimpleNamespace(sample_rate=i.samplerate, num_frames=i.frames, num_channels=i.channels)

    def save(path: Any, tensor: torch.Tensor, sample_rate: int, **_: Any) -> None:
        data = tensor.detach().cpu().numpy()
        subtype = (
            "PCM_16" if data.dtype == np.int16 else "FLOAT"
        )  # torchaudio: int16 tensors as 16-bit, floats as float
        sf.write(str(path), data.T, int(sample_rate), subtype=subtype)

    module.load, module.info, module.save = load, info, save
    module.get_audio_backend = lambda: "soundfile"
    module.set_audio_backend = lambda backend: None
    sys.modules["torchaudio"] = module


def install_demucs4_stand_ins() -> None:
    """Register ``sphn`` (``read`` by soundfile) and ``lameenc`` (refusing) for demucs 4.1.0's command."""
    import numpy as np
    import soundfile as sf

    sphn = types.ModuleType("sphn")

    def read(path: Any, **_: Any) -> tuple[np.ndarray, int]:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return np.ascontiguousarray(data.T), int(rate)

    sphn.read = read
    lameenc = types.ModuleType("lameenc")

    class Encoder:
        def __init__(self) -> None:
            raise RuntimeError("benchmarks.upstream_cli: no MP3 encoder here (lameenc is not installed)")

    lameenc.Encoder = Encoder
    sys.modules.setdefault("sphn", sphn)
    sys.modules.setdefault("lameenc", lameenc)


def main(argv: list[str]) -> int:
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    install_torchaudio()
    command, rest = argv[0], argv[1:]
    if command == "umx":
        from openunmix.cli import separate

        sys.argv = ["umx", *rest]
        separate()
    elif command == "demucs":
        from demucs.separate import main as demucs_main

        sys.argv = ["demucs.separate", *rest]
        demucs_main()
    elif command == "demucs4":
        install_demucs4_stand_ins()
        import demucs

        if demucs.__version__ != "4.1.0":
            print(f"demucs4: imported demucs {demucs.__version__} from {demucs.__file__}; put .oracle-demucs4 first "
                  "on PYTHONPATH", file=sys.stderr)  # fmt: skip
            return 2
        from demucs.separate import main as demucs4_main

        sys.argv = ["demucs", *rest]
        demucs4_main()
    else:
        print(f"unknown command {command!r}: umx, demucs or demucs4", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
