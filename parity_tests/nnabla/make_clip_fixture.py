"""Write ``parity_tests/fixtures/nnabla_clip.npz``: the real stempeg clip, separated by upstream, for the NNabla tests.

The NNabla environment cannot read the stem file (no stempeg, no ffmpeg) nor run upstream (no torch), so this
script, run in the main environment, stores what the NNabla end-to-end tests compare with (the tests import
:func:`umxhq_config` from here, so the module imports nothing torch-bound at the top)::

    .venv/bin/python parity_tests/nnabla/make_clip_fixture.py

Arrays (float32 unless said):

- ``mixture`` ``(1, 2, L)``: ``CROP_SECONDS`` of the clip's linear mixture (the sum of its four stems, 44.1 kHz)
  from ``OFFSET_SECONDS``;
- ``umxhq.out`` ``(1, 4, 2, L)``: upstream ``openunmix.model.Separator`` (float32, niter 1, targets vocals, drums,
  bass, other) with umxhq-shaped seeded weights (``parity_tests.fixtures_umx.separator_weights``);
- ``mixture_8k`` ``(1, 2, L8)``: the crop resampled to 8 kHz (``core_spec.audio.prepare_audio(resample=True)``), the
  rate of the upstream-written model folder ``parity_tests/fixtures/checkpoints/umx_tiny_model``;
- ``tiny.out`` ``(1, 2, 2, L8)``: that folder loaded by upstream's own loader
  (``openunmix.utils.load_separator(folder, targets=["vocals", "drums"], niter=1)``, ``torch.load`` of the
  ``.pth`` files) separating ``mixture_8k`` in float32.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core_spec.audio import prepare_audio  # noqa: E402
from parity_tests import fixtures_umx  # noqa: E402
from parity_tests.fixtures import save, weights_sha256  # noqa: E402

NAME = "nnabla_clip"
OFFSET_SECONDS = 2.0
CROP_SECONDS = 1.2
TINY_FOLDER = ROOT / "parity_tests" / "fixtures" / "checkpoints" / "umx_tiny_model"
TINY_TARGETS = ("vocals", "drums")
TINY_RATE = 8000


def umxhq_config():
    """The separator the fixture was made with (umxhq shapes, niter 1, upstream's defaults otherwise)."""
    return fixtures_umx._sep("umxhq", niter=1)


def main() -> Path:
    from parity_tests import oracle  # torch and the upstream code: main environment only
    from parity_tests.oracle import torch
    from parity_tests.real_clip import load_clip

    torch.set_num_threads(2)
    clip = load_clip()
    start = int(OFFSET_SECONDS * clip.rate)
    mixture = clip.mixture[None, :, start : start + int(CROP_SECONDS * clip.rate)].astype(np.float32)

    cfg = umxhq_config()
    weights = fixtures_umx.separator_weights(cfg)
    separator = oracle.umx_separator(cfg, weights, torch.float32)
    with torch.no_grad():
        umxhq_out = separator(torch.from_numpy(mixture)).numpy()

    from openunmix.utils import load_separator

    mixture_8k = prepare_audio(mixture.astype(np.float64), clip.rate, TINY_RATE, resample=True, dtype=np.float32)
    tiny = load_separator(str(TINY_FOLDER), targets=list(TINY_TARGETS), niter=1, pretrained=True).eval()
    with torch.no_grad():
        tiny_out = tiny(torch.from_numpy(mixture_8k)).numpy()

    meta = {
        "versions": oracle.versions(),
        "offset_seconds": OFFSET_SECONDS,
        "crop_seconds": CROP_SECONDS,
        "rate": clip.rate,
        "umxhq_weights_sha256": {t: weights_sha256(w) for t, w in weights.items()},
        "tiny_folder": str(TINY_FOLDER.relative_to(ROOT)),
        "tiny_targets": list(TINY_TARGETS),
        "tiny_rate": TINY_RATE,
    }
    arrays = {"mixture": mixture, "umxhq.out": umxhq_out, "mixture_8k": mixture_8k, "tiny.out": tiny_out}
    path = save(NAME, arrays, meta)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return path


if __name__ == "__main__":
    main()
