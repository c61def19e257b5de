"""``unmix <command> [options]`` (also ``python -m unmix``): the four commands under one name.

``unmix separate`` is ``unmix-separate``, ``unmix convert`` is ``unmix-convert``, ``unmix parity`` is
``unmix-parity``, ``unmix train`` is ``unmix-train``: the same options, the same exit codes.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from unmix.quick_exit import run_console

COMMANDS = {
    "separate": ("unmix.separate_cli", "audio files -> stems, in any port (unmix-separate)"),
    "convert": ("unmix.convert_cli", "upstream weights -> canonical and native files, without torch (unmix-convert)"),
    "parity": ("unmix.parity.cli", "verify a checkpoint stage by stage in every port (unmix-parity)"),
    "train": ("unmix.train_cli", "train Open-Unmix or Demucs v2 with upstream's recipe (unmix-train)"),
}


def usage() -> str:
    lines = ["usage: unmix <command> [options]   (unmix <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    if args[0] not in COMMANDS:
        print(f"{usage()}\n\nunmix: unknown command {args[0]!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    return int(module.main(args[1:]) or 0)


def console_main() -> NoReturn:
    """The ``unmix`` console script and ``python -m unmix``: :func:`main`, then the process ends
    without the interpreter's teardown (:mod:`unmix.quick_exit`)."""
    run_console(main)


if __name__ == "__main__":
    console_main()
