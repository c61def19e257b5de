"""The torch-free checkpoint reader against checkpoints written by the upstream code. Runs in BOTH environments.

This file imports no torch: the checkpoints are the committed ones of ``parity_tests/fixtures/checkpoints/``
(written by ``make_checkpoints.py`` with openunmix 1.3.0, demucs 2.0.3 and ``torch.save``, zip and legacy
formats) and ``expected.npz`` holds every tensor as torch saved it. Checked here: bit-exact reading (shared
storages, views, float16/float64/bfloat16/int64/bool), conversion to canonical weights and configs, refusal of
pickles that would run code (without running them), clean errors for bad input, and a hypothesis fuzz of
mutated checkpoints.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core_spec.canonical import load_canonical, save_canonical
from core_spec.configs import DemucsConfig, UMXConfig, UMXSeparatorConfig
from core_spec.params import WeightsMismatchError, check_weights, is_ignored_on_load, parameter_inventory
from parity_tests.convert.flat import bit_equal, flatten
from weights_convert import CheckpointError, ConversionError, UnsafeCheckpointError, read_checkpoint
from weights_convert.sources import infer_demucs_config, infer_umx_config, preset_config, read_upstream
from weights_convert.torch_pickle import MAGIC_NUMBER, PROTOCOL_VERSION, GlobalRef

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = ROOT / "parity_tests" / "fixtures" / "checkpoints"
FILES = [
    "umx_tiny_legacy.pth",
    "umx_tiny_zip.pth",
    "umx_tiny_model/vocals.pth",
    "umx_tiny_model/drums.pth",
    "demucs_small_package.th",
    "demucs_small_fp16_legacy.th",
    "views_zip.pth",
    "views_legacy.pth",
]
CLEAN_ERRORS = (CheckpointError, ConversionError, WeightsMismatchError)


@pytest.fixture(scope="module")
def expected() -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(CHECKPOINTS / "expected.npz") as data:
        for key in data.files:
            if key != "__meta__":
                name, path = key.split("|", 1)
                out.setdefault(name, {})[path] = data[key]
    return out


# --- bit-exact reading --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_reads_bit_exact(name: str, expected: dict) -> None:
    checkpoint = read_checkpoint(CHECKPOINTS / name)
    got = flatten(checkpoint.obj)
    want = expected[name]
    if name == "demucs_small_package.th":
        got = {k: v for k, v in got.items() if k.startswith("state/")}
    assert sorted(got) == sorted(want)
    bad = [k for k in want if not bit_equal(got[k], want[k])]
    assert not bad, f"{name}: differs from what torch saved: {bad}"
    assert checkpoint.format == ("legacy" if "legacy" in name or name.endswith("vocals.pth") else "zip")


def test_views_are_independent_copies() -> None:
    obj = read_checkpoint(CHECKPOINTS / "views_zip.pth").obj
    t, tail = obj["t"], obj["t_tail"]
    assert np.array_equal(tail, t[1:]) and np.array_equal(obj["t_T"], t.T)
    assert np.array_equal(obj["t_strided"], t[1:4, ::3]) and np.array_equal(obj["d_view"], obj["d"][4:16].reshape(3, 4))
    tail[0, 0] += 1  # a copy: writing to one tensor leaves the others alone
    assert not np.array_equal(tail, t[1:])
    assert obj["h"].dtype == np.float16 and obj["d"].dtype == np.float64 and obj["long"].dtype == np.int64
    assert obj["bf16"].dtype == np.float32 and obj["bool"].dtype == np.bool_ and obj["empty"].shape == (0, 3)


def test_demucs_package_records_klass_by_name() -> None:
    package = read_checkpoint(CHECKPOINTS / "demucs_small_package.th").obj
    assert package["klass"] == GlobalRef("demucs.model", "Demucs")
    assert package["kwargs"]["channels"] == 4 and package["kwargs"]["sources"] == ["drums", "bass", "other", "vocals"]
    assert package["training_args"].diffq == 0 and str(package["training_args"].models) == "models"
    with pytest.raises(UnsafeCheckpointError, match=r"demucs\.model\.Demucs"):
        package["klass"]()


# --- conversion -------------------------------------------------------------------------------------------------


def _without_ignored(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in flat.items() if not is_ignored_on_load(k)}


def test_convert_umx_legacy_file(expected: dict) -> None:
    converted = read_upstream(CHECKPOINTS / "umx_tiny_legacy.pth", target="vocals")
    config = converted.config
    assert isinstance(config, UMXSeparatorConfig)
    m = config.model
    assert (m.nb_bins, m.max_bin, m.nb_channels, m.hidden_size, m.nb_layers, m.unidirectional) == (
        65,
        40,
        2,
        16,
        3,
        False,
    )
    assert config.separator.targets == ("vocals",) and config.separator.sample_rate == 44100.0
    assert any("sample_rate, stft.window, transform.0.window" in n for n in converted.notes)
    want = _without_ignored(expected["umx_tiny_legacy.pth"])
    assert sorted(converted.weights) == sorted(f"target_models.vocals.{k}" for k in want)
    assert all(bit_equal(converted.weights[f"target_models.vocals.{k}"], v) for k, v in want.items())


def test_convert_umx_folder_roundtrip(expected: dict, tmp_path: Path) -> None:
    converted = read_upstream(CHECKPOINTS / "umx_tiny_model")
    config = converted.config
    assert isinstance(config, UMXSeparatorConfig)
    assert config.separator.targets == ("vocals", "drums")
    assert (config.separator.stft.n_fft, config.separator.stft.n_hop, config.separator.sample_rate) == (128, 32, 8000)
    roles = {f.role for f in converted.files}
    assert {"target vocals", "target drums", "separator", "training log vocals"} <= roles
    st_path, _ = save_canonical(tmp_path / "m", converted.weights, config, converted.provenance())
    weights, loaded_config, provenance = load_canonical(st_path)
    assert loaded_config == config and provenance["source"] == "umx_tiny_model"
    for target in ("vocals", "drums"):
        want = _without_ignored(expected[f"umx_tiny_model/{target}.pth"])
        assert all(bit_equal(weights[f"target_models.{target}.{k}"], v) for k, v in want.items())


def test_convert_training_checkpoint(expected: dict) -> None:
    converted = read_upstream(CHECKPOINTS / "umx_tiny_model" / "drums.chkpnt", target="drums")
    assert converted.kind == "openunmix training checkpoint (state_dict entry)"
    want = _without_ignored(expected["umx_tiny_model/drums.pth"])
    assert all(bit_equal(converted.weights[f"target_models.drums.{k}"], v) for k, v in want.items())
    optimizer = read_checkpoint(CHECKPOINTS / "umx_tiny_model" / "drums.chkpnt").obj["optimizer"]
    assert optimizer["param_groups"][0]["lr"] == 0.001  # the Adam state is read too (plain data)


def test_convert_demucs_package_and_fp16(expected: dict) -> None:
    package = read_upstream(CHECKPOINTS / "demucs_small_package.th")
    assert package.config == DemucsConfig(channels=4, depth=4) and package.kind == "demucs package"
    want = {k.removeprefix("state/"): v for k, v in expected["demucs_small_package.th"].items()}
    assert all(bit_equal(package.weights[k], v) for k, v in want.items()) and len(package.weights) == len(want)

    half = read_upstream(CHECKPOINTS / "demucs_small_fp16_legacy.th")
    assert half.config == DemucsConfig(channels=4, depth=4) and half.source_dtypes == {"float16": 50}
    for key, value in expected["demucs_small_fp16_legacy.th"].items():
        assert value.dtype == np.float16
        assert bit_equal(half.weights[key], value.astype(np.float32))  # upcast exactly
        assert np.array_equal(half.weights[key].astype(np.float16), value)


class _Shaped:
    """A stand-in with only a ``.shape``: full-size presets are checked without materialising them."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


@pytest.mark.parametrize("preset", ["demucs", "demucs48_hq", "demucs_unittest", "umx", "umxhq", "umxl", "umxse"])
def test_full_size_presets_are_inferred_from_shapes(preset: str) -> None:
    config = preset_config(preset)
    network = config.model if isinstance(config, UMXSeparatorConfig) else config
    shapes = {name: _Shaped(shape) for name, shape in parameter_inventory(network)}
    inferred = infer_umx_config(shapes) if isinstance(network, UMXConfig) else infer_demucs_config(shapes)
    assert inferred == network
    assert check_weights(shapes, inferred).keys() == dict(parameter_inventory(network)).keys()


def test_wrong_preset_names_every_key_with_shapes() -> None:
    with pytest.raises(WeightsMismatchError) as info:
        read_upstream(CHECKPOINTS / "umx_tiny_zip.pth", model="umxse")
    text = str(info.value)
    assert "mis-shaped  fc1.weight: expected (256, 513), got (16, 80)" in text
    assert "input_mean: expected (513,), got (40,)" in text
    with pytest.raises(WeightsMismatchError, match=r"missing     encoder\.4\.0\.weight"):
        read_upstream(CHECKPOINTS / "demucs_small_fp16_legacy.th", model="demucs_unittest")
    with pytest.raises(ConversionError, match="Open-Unmix preset"):
        read_upstream(CHECKPOINTS / "demucs_small_fp16_legacy.th", model="umxhq")
    with pytest.raises(ConversionError, match="Demucs preset"):
        read_upstream(CHECKPOINTS / "umx_tiny_zip.pth", model="demucs")
    with pytest.raises(ConversionError, match="unknown model preset"):
        read_upstream(CHECKPOINTS / "umx_tiny_zip.pth", model="umxxl")


# --- pickles that would run code -----------------------------------------------------------------------------------


class _Evil:
    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _zip_checkpoint(data_pkl: bytes, storages: dict[str, bytes] | None = None, byteorder: bytes = b"little") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", byteorder)
        for key, data in (storages or {}).items():
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", b"3\n")
    return buf.getvalue()


def _legacy_checkpoint(obj_pkl: bytes, keys: list[str] | None = None, tail: bytes = b"") -> bytes:
    sys_info = {"protocol_version": PROTOCOL_VERSION, "little_endian": True, "type_sizes": {}}
    head = b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC_NUMBER, PROTOCOL_VERSION, sys_info))
    return head + obj_pkl + pickle.dumps(keys or [], protocol=2) + tail


def _attacks(marker: Path) -> dict[str, bytes]:
    command = f"touch {marker}"
    return {
        "os.system": pickle.dumps(_Evil(os.system, command), protocol=2),
        "eval": pickle.dumps(_Evil(eval, f"open({str(marker)!r}, 'w')"), protocol=2),
        "subprocess": pickle.dumps(_Evil(subprocess.call, ["touch", str(marker)]), protocol=4),
        "nested": pickle.dumps({"state": [1, _Evil(os.system, command)]}, protocol=2),
        "protocol0_inst": f"(S'{command}'\nios\nsystem\n.".encode(),
        "stack_global": pickle.dumps(_Evil(os.system, command), protocol=4),
        "reduce_name_only": b"\x80\x02cdemucs.model\nDemucs\n)R.",
        "builtins_getattr": pickle.dumps(_Evil(getattr, "text", "upper"), protocol=2),
    }


@pytest.mark.parametrize("layout", ["zip", "legacy", "quantized"])
def test_code_in_pickles_is_refused_without_running(layout: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name, payload in _attacks(marker).items():
        if layout == "zip":
            data = _zip_checkpoint(payload)
        elif layout == "legacy":
            data = _legacy_checkpoint(payload)
        else:  # hidden in the compressed state of a demucs_quantized-like file
            inner = zlib.compress(_zip_checkpoint(payload))
            data = _zip_checkpoint(pickle.dumps({"compressed": inner}, protocol=2))
        path = tmp_path / f"{name}.pth"
        path.write_bytes(data)
        with pytest.raises(UnsafeCheckpointError) as info:
            if layout == "quantized":
                read_upstream(path, model="demucs_unittest")
            else:
                read_checkpoint(path)
        assert info.value.global_name, name
        assert info.value.global_name in str(info.value)
        assert not marker.exists(), f"{name}: the payload ran"
    assert "posix.system" in str(_refusal_of(_attacks(marker)["os.system"]))


def _refusal_of(payload: bytes) -> UnsafeCheckpointError:
    try:
        read_checkpoint(_zip_checkpoint(payload))
    except UnsafeCheckpointError as e:
        return e
    raise AssertionError("not refused")


# --- bad input ----------------------------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    zip_bytes = (CHECKPOINTS / "umx_tiny_zip.pth").read_bytes()
    legacy_bytes = (CHECKPOINTS / "umx_tiny_legacy.pth").read_bytes()
    cases = {
        "empty.pth": (b"", "empty"),
        "text.pth": (b"this is not a checkpoint\n", "not a PyTorch checkpoint"),
        "numpy.pth": (b"\x93NUMPY\x01\x00" + b"x" * 100, "not a PyTorch checkpoint"),
        "pickle.pth": (pickle.dumps([1, 2, 3], protocol=2), "magic number"),
        "truncated_zip.pth": (zip_bytes[: len(zip_bytes) // 2], "corrupt or truncated zip"),
        "truncated_zip_tail.pth": (zip_bytes[:-30], "corrupt or truncated zip"),
        "truncated_legacy.pth": (legacy_bytes[: len(legacy_bytes) - 100], "truncated"),
        "truncated_legacy_pickle.pth": (legacy_bytes[:200], "corrupt or truncated legacy"),
        "safetensors.pth": (b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b" " * 14, "safetensors"),
        "torchscript.pth": (_torchscript_like(), "TorchScript"),
        "bad_byteorder.pth": (_zip_checkpoint(pickle.dumps({}, protocol=2), byteorder=b"middle"), "byte order"),
        "tar.pth": (b"\0" * 257 + b"ustar" + b"\0" * 300, "tar archive"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=message):
            read_checkpoint(path)
        with pytest.raises(CheckpointError):
            read_upstream(path)
    with pytest.raises(CheckpointError, match="directory"):
        read_checkpoint(tmp_path)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ConversionError, match="without an Open-Unmix model"):
        read_upstream(tmp_path / "empty_dir")
    with pytest.raises(ConversionError, match="does not exist"):
        read_upstream(tmp_path / "missing.pth")
    not_state = tmp_path / "list.pth"
    not_state.write_bytes(_zip_checkpoint(pickle.dumps([1, 2], protocol=2)))
    with pytest.raises(ConversionError, match="not a state dict"):
        read_upstream(not_state)


def _torchscript_like() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("model/constants.pkl", b"\x80\x02).")
        z.writestr("model/code/__torch__.py", b"")
    return buf.getvalue()


def test_storage_bounds_are_checked() -> None:
    def tensor_pickle(size: tuple, stride: tuple, offset: int, numel: int = 4) -> bytes:
        return (
            b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00"
            b"\x00\x000X\x03\x00\x00\x00cpu"
            + pickle.dumps(numel, 2)[2:-1]
            + b"tQ"
            + pickle.dumps(offset, 2)[2:-1]
            + pickle.dumps(size, 2)[2:-1]
            + pickle.dumps(stride, 2)[2:-1]
            + b"\x89ccollections\nOrderedDict\n)RtR."
        )

    data = np.arange(4, dtype="<f4").tobytes()
    ok = read_checkpoint(_zip_checkpoint(tensor_pickle((2, 2), (1, 2), 0), {"0": data})).obj
    assert np.array_equal(ok, np.arange(4, dtype=np.float32).reshape(2, 2).T)
    for size, stride, offset, message in [
        ((2, 3), (3, 1), 0, "reaches element"),
        ((4,), (1,), 1, "reaches element"),
        ((2,), (-1,), 0, "negative"),
        ((1 << 30,), (0,), 0, "expands"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            read_checkpoint(_zip_checkpoint(tensor_pickle(size, stride, offset), {"0": data}))
    # a BUILD that would change a tensor or its storage view after the bounds check
    grow = b"}X\x04\x00\x00\x00size" + pickle.dumps((1 << 20,), 2)[2:-1] + b"sb."
    with pytest.raises(CheckpointError, match="set the state of a TensorRef"):
        read_checkpoint(_zip_checkpoint(tensor_pickle((2,), (1,), 0)[:-1] + grow, {"0": data}))
    widen = b"tQ}X\x05\x00\x00\x00numelK\x64sb"
    with pytest.raises(CheckpointError, match="set the state of a StorageView"):
        read_checkpoint(_zip_checkpoint(tensor_pickle((2,), (1,), 0).replace(b"tQ", widen, 1), {"0": data}))
    with pytest.raises(CheckpointError, match="holds 16 bytes, expected 40"):
        read_checkpoint(_zip_checkpoint(tensor_pickle((2,), (1,), 0, numel=10), {"0": data}))


# --- fuzz ---------------------------------------------------------------------------------------------------------

FUZZ_FILES = ["umx_tiny_zip.pth", "umx_tiny_legacy.pth", "demucs_small_package.th", "views_legacy.pth"]
_RAW = {name: (CHECKPOINTS / name).read_bytes() for name in FUZZ_FILES}


def _legacy_pickles_end(raw: bytes) -> int:
    f = io.BytesIO(raw)
    for _ in range(5):
        for _op in pickletools.genops(f):
            pass
    return f.tell()


def _rezip(raw: bytes, mutate_entry: str, mutate: object) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(raw))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, mutate(data) if info.filename == mutate_entry else data)  # type: ignore[operator]
    return buf.getvalue()


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_mutated_checkpoints_give_only_clean_errors(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(FUZZ_FILES), label="file")
    raw = _RAW[name]
    is_zip = raw[:2] == b"PK"
    kinds = ["truncate", "flip", "pickle_bytes", "splice"] + (["zip_entry"] if is_zip else [])
    kind = data.draw(st.sampled_from(kinds), label="mutation")

    def flip(buf: bytes, lo: int, hi: int) -> bytes:
        pos = data.draw(st.integers(lo, max(lo, hi - 1)), label="position")
        value = data.draw(st.integers(1, 255), label="xor")
        return buf[:pos] + bytes([buf[pos] ^ value]) + buf[pos + 1 :]

    if kind == "truncate":
        mutated = raw[: data.draw(st.integers(0, len(raw) - 1), label="length")]
    elif kind == "flip":
        mutated = raw
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            mutated = flip(mutated, 0, len(mutated))
    elif kind == "splice":  # delete or duplicate a slice
        a = data.draw(st.integers(0, len(raw) - 1), label="start")
        b = data.draw(st.integers(a, min(len(raw), a + 64)), label="stop")
        mutated = raw[:a] + raw[b:] if data.draw(st.booleans(), label="delete") else raw[:b] + raw[a:]
    elif kind == "pickle_bytes":  # corrupt opcodes or arguments of the object pickle
        if is_zip:
            entry = next(n for n in zipfile.ZipFile(io.BytesIO(raw)).namelist() if n.endswith("/data.pkl"))
            mutated = _rezip(raw, entry, lambda b: flip(b, 0, len(b)))
        else:
            mutated = flip(raw, 0, _legacy_pickles_end(raw))
    else:  # corrupt one zip record, with a valid CRC
        names = zipfile.ZipFile(io.BytesIO(raw)).namelist()
        entry = data.draw(st.sampled_from(names), label="entry")
        cut = data.draw(st.booleans(), label="cut")
        mutated = _rezip(
            raw, entry, (lambda b: b[: len(b) // 2]) if cut else (lambda b: flip(b, 0, len(b)) if b else b"x")
        )

    try:
        read_checkpoint(mutated)
    except CheckpointError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutated.pth"
        path.write_bytes(mutated)
        try:
            read_upstream(path)
        except CLEAN_ERRORS:
            pass


# --- no torch -----------------------------------------------------------------------------------------------------


def test_reader_and_converter_never_import_torch(tmp_path: Path) -> None:
    code = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from weights_convert import read_checkpoint
from unmix.convert_cli import main
from weights_convert.sources import infer_demucs_config, infer_umx_config, preset_config, read_upstream
for name in {FILES!r}:
    read_checkpoint({str(CHECKPOINTS)!r} + "/" + name)
read_upstream({str(CHECKPOINTS / "umx_tiny_model")!r})
assert main([{str(CHECKPOINTS / "demucs_small_package.th")!r}, "--out", {str(tmp_path / "d")!r}, "-q"]) == 0
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
print("no torch")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no torch" in result.stdout
    assert json.loads((tmp_path / "d.json").read_text())["provenance"]["source"] == "demucs_small_package.th"


def test_canonical_arrays_read_one_by_one_equal_load_file(tmp_path: Path) -> None:
    """``core_spec.canonical.read_arrays`` (one ``safe_open`` per array, for the peak memory of loading) reads what
    ``safetensors.numpy.load_file`` reads, name for name and bit for bit; ``load_canonical`` gives the saved weights
    in inventory order."""
    from safetensors.numpy import load_file

    from core_spec.canonical import read_arrays
    from core_spec.configs import demucs_preset
    from core_spec.seeded import random_weights

    cfg = demucs_preset("demucs_unittest")
    weights = random_weights(cfg, seed=4)
    st_path, _ = save_canonical(tmp_path / "m", weights, cfg)
    got, want = read_arrays(st_path), load_file(str(st_path))
    assert sorted(got) == sorted(want) == sorted(weights)
    assert all(bit_equal(got[k], want[k]) and got[k].dtype == np.float32 for k in want)
    loaded, config, _ = load_canonical(st_path)
    assert config == cfg and list(loaded) == list(weights)
    assert all(bit_equal(loaded[k], np.asarray(weights[k], np.float32)) for k in weights)


def test_a_corrupt_memo_index_is_refused_before_it_costs_memory() -> None:
    """A corrupt ``LONG_BINPUT`` index: CPython's unpickler would grow and zero its memo to it (2^28: 4.1 GB, what
    made the fuzz test above take 17 GB in some orders); the reader refuses it from the opcodes first."""
    import struct

    pickled = b"\x80\x02N" + b"r" + struct.pack("<I", 1 << 30) + b"."  # NONE, LONG_BINPUT 2^30, STOP
    with pytest.raises(CheckpointError, match=r"corrupt .* memo index 1073741824 after 0 memoised objects"):
        read_checkpoint(_zip_checkpoint(pickled, {}))
