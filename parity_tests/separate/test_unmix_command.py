"""``unmix <command>`` (``python -m unmix``): the four console scripts under one name, and the benchmarks'
subcommands (``python -m benchmarks COMMAND``), each answering ``--help`` in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core_spec.frameworks import REPO_ROOT

COMMANDS = {"separate": "unmix-separate", "convert": "unmix-convert", "parity": "unmix-parity", "train": "unmix-train"}


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                          timeout=300)  # fmt: skip


def test_unmix_lists_its_commands() -> None:
    out = run("unmix", "--help")
    assert out.returncode == 0, out.stderr
    for name in COMMANDS:
        assert f"  {name} " in out.stdout, out.stdout
    bare = run("unmix")
    assert bare.returncode == 2 and "usage: unmix <command>" in bare.stdout


def test_unmix_refuses_an_unknown_command() -> None:
    out = run("unmix", "unmixx")
    assert out.returncode == 2
    assert "unknown command 'unmixx'" in out.stderr and "separate" in out.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_unmix_command_is_the_console_script(command: str) -> None:
    """``unmix COMMAND --help`` is the console script's own help (same parser, same options)."""
    out = run("unmix", command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: {COMMANDS[command]}"), out.stdout[:200]


@pytest.mark.parametrize("command", ["separate", "resample", "chunk_snr", "floors", "versus_commit"])
def test_benchmark_subcommands_answer_help(command: str) -> None:
    out = run("benchmarks", command, "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage:"), out.stdout[:200]
