"""``unmix-parity``: verify any checkpoint on any audio, stage by stage, across the four ports and upstream.

- :mod:`unmix_parity.adapters`: each implementation (the NumPy reference, the four ports, upstream openunmix /
  demucs) as plain functions on NumPy arrays, one per stage; the parity suite (``parity_tests/harness.py``)
  uses the same adapters;
- :mod:`unmix_parity.stages`: every stage of a UMX separator or a Demucs model captured and judged by
  ``core_spec.tolerances``;
- :mod:`unmix_parity.runner`: runs an implementation here or, for NNabla, in ``.venv-nnabla``
  (``python -m unmix_parity.run``);
- :mod:`unmix_parity.report` / :mod:`unmix_parity.plots`: the table, ``parity.json``, ``parity.md`` and two PNGs;
- :mod:`unmix_parity.cli`: the command.

Everything but the adapters imports NumPy only (matplotlib only inside :mod:`unmix_parity.plots`).
"""
