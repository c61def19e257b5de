"""The tool floor (``../shared/DESIGN.md``): every command, and everything about files, runs and progress.

It drives the ports (floor 1: ``umx_torch``, ``umx_tf``, ``umx_jax``, ``umx_nnabla``, and the torch-free reader
``weights_convert``) through their public entry points, and reads the spec (floor 0, ``core_spec``); nothing below
imports it. The commands, each a console script and a subcommand of ``unmix``:

- ``unmix-separate`` (:mod:`unmix.separate_cli`): audio files -> stems, with the model resolution of
  :mod:`unmix.separate_models`, audio I/O (:mod:`unmix.audio_files`), stems and file names (:mod:`unmix.stems`),
  long tracks in chunks (:mod:`unmix.chunks`, :mod:`unmix.umx_segments`);
- ``unmix-convert`` (:mod:`unmix.convert_cli`): upstream weights -> canonical (``weights_convert``), and canonical
  -> each port's own format (:mod:`unmix.convert_targets`);
- ``unmix-parity`` (:mod:`unmix.parity`): a checkpoint verified stage by stage in every port against upstream;
- ``unmix-train`` (:mod:`unmix.train_cli`): the epoch loop (:mod:`unmix.train_loop`) over the training data
  pipeline (:mod:`unmix.data`, :mod:`unmix.train_setup`) into a run folder (:mod:`unmix.run_folder`), stepping a
  port's ``Trainer``.

:mod:`unmix.environments`: the NNabla environment (``.venv-nnabla``), where a command asked for ``nnabla`` runs
again when NNabla is not importable here.
"""
