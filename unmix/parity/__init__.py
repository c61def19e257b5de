"""``unmix-parity``: verify any checkpoint on any audio, stage by stage, across the four ports and upstream.

- :mod:`unmix.parity.adapters`: each implementation (the NumPy reference, the four ports, upstream openunmix /
  demucs) as plain functions on NumPy arrays, one per stage; the parity suite (``parity_tests/harness.py``)
  uses the same adapters;
- :mod:`unmix.parity.stages`: every stage of a UMX separator or a Demucs model captured and judged by
  ``core_spec.tolerances``;
- :mod:`unmix.parity.runner`: runs an implementation here or, for NNabla, in ``.venv-nnabla``
  (``python -m unmix.parity.run``);
- :mod:`unmix.parity.report` / :mod:`unmix.parity.plots`: the table, ``parity.json``, ``parity.md`` and two PNGs;
- :mod:`unmix.parity.cli`: the command.

Everything but the adapters imports NumPy only (matplotlib only inside :mod:`unmix.parity.plots`).
"""
