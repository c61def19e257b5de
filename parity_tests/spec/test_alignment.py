"""The alignment contract's tables and its checker (:mod:`book.source_index`), on synthetic sources, on a real
port file with its lesson reordered or renamed, and on the spec itself. Source text only (stdlib ``ast``): runs in
both environments.

The per-port contract (every port module mirrors the spec, no import cycle) is
``parity_tests/spec/test_alignment_ports.py``.
"""

from __future__ import annotations

import re
import textwrap

import pytest

from book.source_index import (
    SPEC,
    Definition,
    alignment_problems,
    check_module,
    definitions,
    locate,
    mirror_problems,
    source_of,
    spec_location,
)
from core_spec.frameworks import REPO_ROOT
from core_spec.public_api import (
    BUILTIN,
    LESSONS,
    MODULE_LAYERS,
    MODULES,
    PORT_CONSTANTS,
    PORTS,
    SHARED,
)

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TARGET = re.compile(rf"{_NAME}(\.{_NAME})?|{re.escape(BUILTIN)}{_NAME}(\.{_NAME})+")
SPEC_MODULES = [m for m in MODULES if any(lesson.spec for lesson in LESSONS[m])]


# --- the tables ----------------------------------------------------------------------------------------------------


def test_every_module_has_a_lesson_a_layer_and_a_target_in_every_port() -> None:
    assert list(LESSONS) == list(MODULES)
    assert set(SHARED) <= set(MODULES) and set(PORT_CONSTANTS) <= set(MODULES)
    assert set(MODULES) | {"__init__", "__main__"} <= set(MODULE_LAYERS)
    for module, lessons in LESSONS.items():
        assert lessons, module
        for row, lesson in enumerate(lessons, start=1):
            assert set(lesson.ports) == set(PORTS), f"{module} row {row}: {sorted(lesson.ports)}"
            assert lesson.page, f"{module} row {row} has no book page"
            for port, target in lesson.ports.items():
                assert _TARGET.fullmatch(target), f"{module} row {row} {port}: {target!r}"
            if lesson.spec is not None:
                path, _ = spec_location(lesson.spec)
                assert path.startswith("core_spec/"), lesson.spec


def test_spec_objects_and_shared_names_are_dotted_paths_below_core_spec() -> None:
    assert spec_location("reference.transforms.stft") == ("core_spec/reference/transforms.py", "stft")
    assert spec_location("shapes.center_trim") == ("core_spec/shapes.py", "center_trim")
    with pytest.raises(ValueError, match="not a dotted path"):
        spec_location("stft")
    for module, names in SHARED.items():
        for name in names:
            assert re.fullmatch(rf"{_NAME}(\.{_NAME})+", name), f"SHARED[{module!r}]: {name!r}"


def test_a_shared_name_is_no_lesson_target() -> None:
    for module, names in SHARED.items():
        shared = {spec_location(s)[1] for s in names}
        targets = {t.split(".")[0] for lesson in LESSONS[module] for t in lesson.ports.values()}
        assert not shared & targets, f"{module}: {sorted(shared & targets)} are both shared and port targets"


@pytest.mark.parametrize("module", SPEC_MODULES)
def test_spec_defines_the_lessons_in_order(module: str) -> None:
    """The spec objects that exist come in the order of the rows (the ones still being written are listed by
    ``test_alignment_ports.py::test_spec_defines_every_lesson``)."""
    found = []
    for lesson in LESSONS[module]:
        if lesson.spec is not None:
            path, name = spec_location(lesson.spec)
            if (REPO_ROOT / path).is_file() and locate((REPO_ROOT / path).read_text(), name) is not None:
                found.append(name)
    assert found, f"none of the spec objects of {module} exists"
    assert check_module(REPO_ROOT, module, SPEC, allow_missing=True) == []


# --- the checker on a real port file ---------------------------------------------------------------------------------


def _swap(source: str, first: str, second: str) -> str:
    lines = source.splitlines(keepends=True)
    a, b = locate(source, first), locate(source, second)
    assert a is not None and b is not None and a.end_lineno < b.lineno, f"{first} must come before {second}"
    return "".join(
        lines[: a.lineno - 1]
        + lines[b.lineno - 1 : b.end_lineno]
        + lines[a.end_lineno : b.lineno - 1]
        + lines[a.lineno - 1 : a.end_lineno]
        + lines[b.end_lineno :]
    )


def _line(source: str, name: str) -> int:
    found = locate(source, name)
    assert found is not None, name
    return found.lineno


def test_checker_catches_reordering_and_renaming() -> None:
    """umx_jax/filtering.py with ``wiener_planar`` and ``wiener`` swapped, and with ``wiener_planar`` renamed: the
    checker reports exactly the new problems (whatever the file's other problems are today)."""
    path = "umx_jax/filtering.py"
    source = (REPO_ROOT / path).read_text()
    before = set(alignment_problems("filtering", "umx_jax", source))

    def new_problems(changed: str) -> set[str]:
        problems = alignment_problems("filtering", "umx_jax", changed)
        print("\n".join(problems))
        return set(problems) - before

    swapped = _swap(source, "wiener_planar", "wiener")
    assert new_problems(swapped) == {
        f"{path}: wiener (line {_line(swapped, 'wiener')}) must come after wiener_planar "
        f"(line {_line(swapped, 'wiener_planar')}), as in core_spec/reference/filtering.py"
    }
    assert source.count("def wiener_planar(") == 1
    renamed = source.replace("def wiener_planar(", "def wiener_plane(")
    assert new_problems(renamed) == {
        f"{path}: wiener_planar is not defined; expected as lesson 4 of 6 of filtering, after initial_estimate "
        "and before wiener, as in core_spec/reference/filtering.py",
        f"{path}: wiener_plane (line {_line(renamed, 'wiener_plane')}) is public and not a lesson of filtering: it "
        f"must come after the last lesson expectation_maximization "
        f"(line {_line(renamed, 'expectation_maximization')}), or be private",
    }


# --- the index on a synthetic source ---------------------------------------------------------------------------------

SOURCE = '''\
import functools


@functools.lru_cache(maxsize=8)
def window(n):
    """Doc."""
    return n  # trailing


class Model:
    """A model."""

    scale = 2

    @property
    def size(self) -> int:
        return 3

    def forward(self, x):
        y = x * self.scale
        return y


if True:
    LIMIT: int = 4
    A, B = 1, 2
else:

    def fallback():
        pass


try:
    FAST = True
except ImportError:
    FAST = False
lower = 1


async def fetch():
    return None
'''


def test_definitions_in_source_order() -> None:
    assert definitions(SOURCE) == [
        Definition("window", "def", 4, 7),
        Definition("Model", "class", 10, 21, ("size", "forward")),
        Definition("LIMIT", "const", 25, 25),
        Definition("A", "const", 26, 26),
        Definition("B", "const", 26, 26),
        Definition("fallback", "def", 29, 30),
        Definition("FAST", "const", 34, 34),
        Definition("FAST", "const", 36, 36),
        Definition("fetch", "def", 40, 41),
    ]
    assert locate(SOURCE, "Model.size") == Definition("Model.size", "def", 15, 17)
    assert locate(SOURCE, "Model.forward") == Definition("Model.forward", "def", 19, 21)
    assert locate(SOURCE, "FAST") == Definition("FAST", "const", 34, 34)
    for missing in ("Model.scale", "Model.backward", "lower", "nothing", "builtin:torch.nn.LSTM"):
        assert locate(SOURCE, missing) is None, missing


def test_source_of_is_the_exact_text_decorators_included() -> None:
    assert source_of(SOURCE, "window") == (
        '@functools.lru_cache(maxsize=8)\ndef window(n):\n    """Doc."""\n    return n  # trailing\n'
    )
    assert source_of(SOURCE, "Model.size") == "@property\ndef size(self) -> int:\n    return 3\n"
    assert source_of(SOURCE, "Model.forward") == "def forward(self, x):\n    y = x * self.scale\n    return y\n"
    assert source_of(SOURCE, "Model").startswith('class Model:\n    """A model."""\n')
    assert source_of(SOURCE, "Model").endswith("        return y\n")
    for missing in ("Model.backward", "builtin:torch.nn.LSTM"):
        with pytest.raises(KeyError, match="is not defined"):
            source_of(SOURCE, missing)


def test_source_of_a_real_port_function_is_its_text() -> None:
    source = (REPO_ROOT / "umx_jax/filtering.py").read_text()
    text = source_of(source, "wiener")
    assert text.startswith("def wiener(") and text in source
    assert text.count("\ndef ") == 0


# --- the rules on synthetic port modules -----------------------------------------------------------------------------

APPLY = '''\
import numpy as np


class _Track:
    """A padded view."""


def overlap(x):
    return x


def _apply_shifted(model, track):
    return model(track)


def _apply_valid(model, track):
    return model(track)


def shift_draws(rng):
    return rng


MAX = 3


def apply_model(model, mix):
    return mix


def _private_anywhere():
    return None


def separate_track(model, audio, sample_rate):
    return audio


def extra_after():
    return None
'''


def test_checker_reports_order_extras_and_shared_redefinitions() -> None:
    assert alignment_problems("apply", "umx_jax", APPLY) == [
        "umx_jax/apply.py: _apply_shifted (line 12) must come after _apply_valid (line 16), "
        "as in core_spec/reference/apply.py",
        "umx_jax/apply.py: overlap (line 8) is public and not a lesson of apply: it must come after "
        "the last lesson separate_track (line 35), or be private",
        "umx_jax/apply.py: shift_draws (line 20) redefines core_spec.shapes.shift_draws: import it instead",
    ]
    assert alignment_problems("apply", "umx_jax", APPLY, "x/apply.py")[0].startswith("x/apply.py: _apply_shifted")
    # NNabla's first target is another name: its absence is reported, the rest is the same
    nnabla = alignment_problems("apply", "umx_nnabla", APPLY)
    assert nnabla[0] == (
        "umx_nnabla/apply.py: _padded is not defined; expected as lesson 1 of 5 of apply, first, before "
        "_apply_valid, as in core_spec/reference/apply.py"
    )


def test_checker_on_methods() -> None:
    tf = "class OpenUnmix:\n    def build(self):\n        pass\n"
    assert alignment_problems("umx", "umx_tf", tf) == [
        "umx_tf/umx.py: OpenUnmix.call is not defined (class OpenUnmix at line 1 has no method call); expected as "
        "lesson 1 of 1 of umx, the only one, as in core_spec/reference/umx.py"
    ]
    assert alignment_problems("umx", "umx_tf", "") == [
        "umx_tf/umx.py: OpenUnmix.call is not defined; expected as lesson 1 of 1 of umx, the only one, as in "
        "core_spec/reference/umx.py"
    ]
    demucs = textwrap.dedent(
        """\
        def center_trim(x, reference):
            return x


        class Demucs:
            def __call__(self, mix):
                return mix

            def blstm(self, x):
                return x

            def encoder_layer(self, index, x):
                return x

            def decoder_layer(self, index, x):
                return x
        """
    )
    assert alignment_problems("demucs", "umx_nnabla", demucs) == [
        "umx_nnabla/demucs.py: Demucs.blstm (line 9) must come after Demucs.decoder_layer (line 15), "
        "as in core_spec/reference/demucs.py",
        "umx_nnabla/demucs.py: Demucs.__call__ (line 6) must come after Demucs.blstm (line 9), "
        "as in core_spec/reference/demucs.py",
    ]
    ordered = demucs.replace("    def __call__(self, mix):\n        return mix\n\n", "") + (
        "\n    def __call__(self, mix):\n        return mix\n"
    )
    assert alignment_problems("demucs", "umx_nnabla", ordered) == [
        "umx_nnabla/demucs.py: Demucs.blstm (line 6) must come after Demucs.decoder_layer (line 12), "
        "as in core_spec/reference/demucs.py",
    ]
    trimmed_late = ordered.replace("def center_trim(x, reference):\n    return x\n\n\n", "") + (
        "\n\ndef center_trim(x, reference):\n    return x\n"
    )
    assert alignment_problems("demucs", "umx_nnabla", trimmed_late)[0] == (
        "umx_nnabla/demucs.py: Demucs.encoder_layer (line 5) must come after center_trim (line 15), "
        "as in core_spec.public_api.LESSONS['demucs']"
    )


def test_builtin_targets_need_no_definition_and_constants_do() -> None:
    torch_layers = "def set_lstm_dropout(model, p):\n    pass\n"
    assert [lesson.ports["umx_torch"].startswith(BUILTIN) for lesson in LESSONS["layers"]] == [True] * 7
    assert alignment_problems("layers", "umx_torch", torch_layers) == []
    assert alignment_problems("layers", "umx_torch", "BATCH_NORM_EPS = 1e-5\n") == [
        "umx_torch/layers.py: BATCH_NORM_EPS (line 1) redefines core_spec.reference.layers.BATCH_NORM_EPS: "
        "import it instead"
    ]
    weights = "".join(
        f"def {target}():\n    pass\n\n\n" for target in (lesson.ports["umx_tf"] for lesson in LESSONS["weights"])
    )
    assert alignment_problems("weights", "umx_tf", weights) == [
        "umx_tf/weights.py: FORMAT is not defined; every port defines its own (core_spec.public_api.PORT_CONSTANTS)"
    ]
    assert alignment_problems("weights", "umx_tf", 'FORMAT = "x"\n' + weights) == []


def test_checker_on_the_spec_side() -> None:
    spec = (
        "PI_FLOAT32 = 3.1415927\n\n\ndef wiener(v, x):\n    return v\n\n\ndef upstream_atan2(y, x):\n    return y, x\n"
    )
    order = (
        "core_spec/reference/filtering.py: wiener (line 4) must come after upstream_atan2 (line 8), "
        "as in core_spec.public_api.LESSONS['filtering']"
    )
    assert mirror_problems("filtering", SPEC, spec, allow_missing=True) == [order]
    problems = mirror_problems("filtering", SPEC, spec)
    assert problems[-1] == order
    assert problems[0] == (
        "core_spec/reference/filtering.py: expectation_maximization_planar is not defined; expected as lesson 2 "
        "of 6 of filtering, after upstream_atan2 and before initial_estimate, "
        "as in core_spec.public_api.LESSONS['filtering']"
    )
    assert [p.split(":")[1].split()[0] for p in problems[:-1]] == [
        "expectation_maximization_planar",
        "initial_estimate",
        "wiener_planar",
        "expectation_maximization",
    ]
    # the spec may define shared helpers anywhere: rules 3 and 4 are the ports'
    assert alignment_problems("filtering", SPEC, "def check_channels(n):\n    pass\n", allow_missing=True) == []
    # a lesson in another spec file is not looked for in this one
    assert mirror_problems("demucs", SPEC, "", "core_spec/shapes.py") == [
        "core_spec/shapes.py: center_trim is not defined; expected as lesson 1 of 5 of demucs, the only one, "
        "as in core_spec.public_api.LESSONS['demucs']"
    ]


def test_check_module_reads_the_files(tmp_path) -> None:
    assert check_module(tmp_path, "resample", "umx_jax") == [
        "umx_jax/resample.py: missing; every port has the modules of core_spec.public_api.MODULES"
    ]
    (tmp_path / "umx_jax").mkdir()
    (tmp_path / "umx_jax/resample.py").write_text(
        "def resample_width():\n    pass\n\n\ndef resample_frac():\n    pass\n"
    )
    assert check_module(tmp_path, "resample", "umx_jax") == [
        "umx_jax/resample.py: resample_width (line 1) redefines core_spec.reference.resample.resample_width: "
        "import it instead"
    ]
    assert check_module(tmp_path, "resample", SPEC, allow_missing=True) == []
    assert check_module(tmp_path, "resample", SPEC) == [
        "core_spec/reference/resample.py: resample_frac is not defined; expected as lesson 1 of 1 of resample, "
        "the only one, as in core_spec.public_api.LESSONS['resample']"
    ]
