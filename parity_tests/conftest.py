"""Shared pytest configuration of the parity suite (both environments).

- ``--device cpu|gpu`` selects where the ports run (``gpu`` = CUDA with TF32 disabled).
- Every tolerance check (``core_spec.tolerances.check``) is recorded; at the end of the session the rows are
  written to ``parity_tests/report/parity-<env>-<worker>.json`` and ``scripts/parity_report.py`` prints them.
- ``UNMIX_REQUIRE_TESTS=1`` makes a session that passed no test fail (the NNabla environment must run tests).
- The commands' per-user cache (:mod:`unmix.caches`) is a fresh temporary folder for the session
  (``UNMIX_PORTS_CACHE_DIR``, unless set), so tests never read nor fill the user's ``~/.cache/unmix-ports``.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import pytest

from core_spec import tolerances

REPORT_DIR = Path(__file__).resolve().parent / "report"

# inherited by the commands the tests run (xdist workers inherit it from the controller)
os.environ.setdefault("UNMIX_PORTS_CACHE_DIR", tempfile.mkdtemp(prefix="unmix-ports-cache-"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", choices=("cpu", "gpu"), help="run the ports on this device")


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--device")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--device") == "gpu":
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="GPU test: run with --device gpu on a CUDA machine"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Tag every figure a test records with the test's id, so the report can say which suite (port) it is from."""
    start = len(tolerances.RECORDED)
    yield
    for row in tolerances.RECORDED[start:]:
        row.setdefault("test", item.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    if tolerances.RECORDED:
        REPORT_DIR.mkdir(exist_ok=True)
        env = f"py{platform.python_version_tuple()[0]}{platform.python_version_tuple()[1]}"
        device = session.config.getoption("--device")
        path = REPORT_DIR / f"parity-{env}-{device}-{worker}-{os.getpid()}.json"  # one file per process
        path.write_text(json.dumps(tolerances.RECORDED, indent=1))
    if os.environ.get("UNMIX_REQUIRE_TESTS") and worker == "main":
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        passed = len(reporter.stats.get("passed", [])) if reporter else 0
        if passed == 0:
            print("\nUNMIX_REQUIRE_TESTS: no test passed in this environment")
            session.exitstatus = 1
