"""``python -m unmix.parity.run REQUEST.npz RESULT.npz``: one implementation's stage capture in this environment.

What ``unmix-parity`` runs in ``.venv-nnabla`` for the NNabla port (:mod:`unmix.parity.runner`). ``REQUEST.npz``
holds ``meta`` (JSON: ``implementation``, ``dtypes``, ``device``, ``weights``: a canonical safetensors file),
``audio`` ``(1, 2, L)`` and the reference's stage outputs as ``in|<key>``; ``RESULT.npz`` gets the captures
(:func:`unmix.parity.runner.write_results`). Exit status 0 when the result was written (an implementation that
failed says so inside it), 2 on a bad request.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from core_spec.canonical import load_canonical
from unmix.parity.runner import run_here, write_results


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m unmix.parity.run REQUEST.npz RESULT.npz", file=sys.stderr)
        return 2
    request, result = Path(args[0]), Path(args[1])
    with np.load(request) as f:
        meta = json.loads(str(f["meta"]))
        audio = f["audio"]
        inputs = {k[3:]: f[k] for k in f.files if k.startswith("in|")}
    weights, config, _ = load_canonical(meta["weights"])
    args = (meta["implementation"], config, weights, audio, meta["dtypes"], meta["device"], inputs or None)
    results = run_here(*args, meta.get("shifts", 0))
    write_results(result, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
