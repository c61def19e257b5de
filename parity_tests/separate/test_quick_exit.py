"""How the console scripts end (:mod:`unmix.quick_exit`): the exit code is ``main``'s, what was written to the
standard streams and to logging arrives, every other ``atexit`` handler runs, and a ``main`` that raises leaves the
normal way. Each case runs in its own interpreter, as a console script does."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest

PRELUDE = """
import atexit, logging, logging.handlers, sys
from unmix.quick_exit import run_console
"""


def _run(body: str) -> subprocess.CompletedProcess[str]:
    code = PRELUDE + textwrap.dedent(body)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the streams buffered, as usual
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def test_exit_code_streams_and_other_handlers():
    done = _run(
        """
        def main():
            atexit.register(lambda: print("handler ran", end=""))  # registered after run_console's: runs first
            sys.stdout.write("x" * 100_000)  # buffered: no newline, no flush
            sys.stderr.write("to stderr")
            return 3
        run_console(main)
        """
    )
    assert done.returncode == 3
    assert done.stdout == "x" * 100_000 + "handler ran"
    assert done.stderr == "to stderr"


def test_none_is_success_and_logging_is_flushed():
    done = _run(
        """
        def main():
            target = logging.StreamHandler(sys.stdout)
            log = logging.getLogger("unmix-test")
            log.addHandler(logging.handlers.MemoryHandler(capacity=100, target=target))  # holds records until closed
            log.warning("kept until shutdown")
        run_console(main)
        """
    )
    assert done.returncode == 0
    assert done.stdout == "kept until shutdown\n"


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ("raise RuntimeError('broken')", 1, "RuntimeError: broken"),  # a traceback, Python's exit status
        ("sys.exit(4)", 4, ""),  # argparse's errors and --help leave through SystemExit
    ],
)
def test_main_that_raises_leaves_the_normal_way(body, code, message):
    done = _run(
        f"""
        def main():
            atexit.register(lambda: print("handler ran"))
            {body}
        run_console(main)
        """
    )
    assert done.returncode == code
    assert done.stdout == "handler ran\n"
    assert message in done.stderr


def test_console_scripts_end_through_it():
    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.name.startswith("unmix")}
    assert set(scripts) == {"unmix", "unmix-separate", "unmix-convert", "unmix-parity", "unmix-train"}
    for name, target in scripts.items():
        assert target.endswith(":console_main"), (name, target)
