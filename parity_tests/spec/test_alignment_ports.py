"""The alignment contract on the real ports and the spec (:mod:`core_spec.public_api`): every module of every port
mirrors its lesson (targets in the order of the rows, public extras after the last target, no redefined shared
name, the port's own constants), every port package imports only down its layers with no cycle, and the spec
defines every lesson. Source text only (stdlib ``ast``): runs in both environments, for all four ports.

The checker itself (what each rule reports, on synthetic and edited sources) is tested by
``parity_tests/spec/test_alignment.py`` and ``parity_tests/spec/test_imports.py``.
"""

from __future__ import annotations

import pytest

from book.source_index import SPEC, check_module, layering_problems
from core_spec.frameworks import REPO_ROOT
from core_spec.public_api import LESSONS, MODULES, PORTS

SPEC_MODULES = [m for m in MODULES if any(lesson.spec for lesson in LESSONS[m])]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("port", sorted(PORTS))
def test_port_module_mirrors_its_lesson(port: str, module: str) -> None:
    problems = check_module(REPO_ROOT, module, port)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("port", sorted(PORTS))
def test_port_imports_go_down_its_layers_without_a_cycle(port: str) -> None:
    problems = layering_problems(REPO_ROOT / port)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("module", SPEC_MODULES)
def test_spec_defines_every_lesson(module: str) -> None:
    problems = check_module(REPO_ROOT, module, SPEC)
    assert problems == [], "\n".join(problems)
