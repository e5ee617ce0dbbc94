"""linsolve.models.load refuses tampered or corrupt model files with a ValueError naming file and culprit.

The metadata and the tensors of a model file are untrusted input: a hand-edited config must not make
torch allocate terabytes, and weights that are NaN, complex or integers must not load silently.
"""
import json
import struct
import time

import numpy as np
import pytest

import linsolve

torch = pytest.importorskip("torch")

from linsolve.models._format import decode, encode, read_tensor_specs  # noqa: E402


@pytest.fixture
def tiny(tiny_file):
    """``(path, tensors, metadata)`` of the tiny saved network."""
    _, path = tiny_file
    tensors, meta = decode(path)
    return path, tensors, meta


def _write(tmp_path, name, tensors, meta):
    path = tmp_path / name
    path.write_bytes(encode(tensors, meta))
    return str(path)


def _with_config(meta, **changes):
    out = dict(meta)
    out["config"] = {**meta["config"], **changes}
    return out


def test_absurd_channels_is_refused_from_the_header_before_any_allocation(tiny, tmp_path):
    _, tensors, meta = tiny
    # 10**6 channels: ~36 TB of 3x3 convolutions if the network were built for real
    path = _write(tmp_path, "huge.safetensors", tensors, _with_config(meta, channels=10**6))
    with pytest.raises(ValueError, match="channels=1000000") as err:
        linsolve.models.load(path)
    assert "huge.safetensors" in str(err.value) and "shape" in str(err.value)


def test_absurd_layer_count_is_refused_quickly(tiny, tmp_path):
    _, tensors, meta = tiny
    path = _write(tmp_path, "deep.safetensors", tensors, _with_config(meta, n_down=10**9))
    start = time.perf_counter()
    with pytest.raises(ValueError, match="n_down=1000000000") as err:
        linsolve.models.load(path)
    assert "deep.safetensors" in str(err.value)
    # building 10**9 layers, even without storage, would take hours
    assert time.perf_counter() - start < 10


def test_loading_after_a_refused_config_still_works(tiny, tmp_path):
    path, tensors, meta = tiny
    bad = _write(tmp_path, "huge.safetensors", tensors, _with_config(meta, n_down=10**6))
    with pytest.raises(ValueError):
        linsolve.models.load(bad)
    # the refusal must not leave torch's default device or a registration hook behind
    assert torch.empty(1).device.type == "cpu"
    net = linsolve.models.load(path)
    assert net.first.weight.device.type == "cpu"
    assert torch.equal(net.first.weight, tensors["first.weight"])


def test_invalid_config_value_names_the_file(tiny, tmp_path):
    _, tensors, meta = tiny
    path = _write(tmp_path, "neg.safetensors", tensors, _with_config(meta, channels=-1))
    with pytest.raises(ValueError, match=r"neg\.safetensors.*channels"):
        linsolve.models.load(path)


def test_config_that_is_not_an_object_is_refused(tiny, tmp_path):
    _, tensors, meta = tiny
    path = _write(tmp_path, "list.safetensors", tensors, {**meta, "config": [1, 2]})
    with pytest.raises(ValueError, match="'config' must be a JSON object"):
        linsolve.models.load(path)


def test_metadata_dims_contradicting_the_config_is_refused(tiny, tmp_path):
    _, tensors, meta = tiny
    path = _write(tmp_path, "dims.safetensors", tensors, {**meta, "dims": 3})
    with pytest.raises(ValueError, match="'dims' says 3"):
        linsolve.models.load(path)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tiny, tmp_path, bad_value):
    _, tensors, meta = tiny
    tensors = {k: v.clone() for k, v in tensors.items()}
    tensors["down.0.weight"][0, 0, 1, 1] = bad_value
    path = _write(tmp_path, "nan.safetensors", tensors, meta)
    with pytest.raises(ValueError, match=r"nan\.safetensors: tensor 'down\.0\.weight' contains NaN or Inf"):
        linsolve.models.load(path)


def test_learned_preconditioner_refuses_a_nan_model(tiny, tmp_path):
    _, tensors, meta = tiny
    tensors = {k: v.clone() for k, v in tensors.items()}
    tensors["last.bias"][...] = float("nan")
    path = _write(tmp_path, "nan.safetensors", tensors, meta)
    A = linsolve.problems.poisson((16, 16))
    with pytest.raises(ValueError, match="'last.bias' contains NaN or Inf"):
        linsolve.precond.learned(A, model=path)


def test_float64_weights_overflowing_float32_are_refused(tiny, tmp_path):
    _, tensors, meta = tiny
    tensors = {k: v.to(torch.float64) for k, v in tensors.items()}
    tensors["first.bias"][0] = 1e300  # finite in the file, inf in the float32 network
    path = _write(tmp_path, "big.safetensors", tensors, meta)
    with pytest.raises(ValueError, match="'first.bias' contains NaN or Inf"):
        linsolve.models.load(path)


@pytest.mark.parametrize("dtype, name", [(torch.complex64, "complex64"), (torch.int64, "int64"),
                                         (torch.bool, "bool")])
def test_non_float_weights_are_refused_naming_dtype_and_tensor(tiny, tmp_path, dtype, name):
    _, tensors, meta = tiny
    tensors = dict(tensors)
    tensors["up.0.weight"] = tensors["up.0.weight"].to(dtype)
    path = _write(tmp_path, f"{name}.safetensors", tensors, meta)
    with pytest.raises(ValueError, match=rf"tensor 'up\.0\.weight' has dtype torch\.{name}"):
        linsolve.models.load(path)


def test_float16_weights_still_load(tiny, tmp_path):
    _, tensors, meta = tiny
    half = {k: v.to(torch.float16) for k, v in tensors.items()}
    net = linsolve.models.load(_write(tmp_path, "half.safetensors", half, meta))
    assert net.first.weight.dtype == torch.float32
    assert torch.equal(net.first.weight, half["first.weight"].to(torch.float32))


def test_header_shape_lie_is_refused_before_reading_tensors(tiny, tmp_path):
    path, _, _ = tiny
    raw = open(path, "rb").read()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    header["first.bias"]["shape"] = [10**12]
    blob = json.dumps(header).encode()
    bad = tmp_path / "lie.safetensors"
    bad.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + length:])
    with pytest.raises(ValueError, match=r"'first\.bias' has shape \(1000000000000,\)"):
        linsolve.models.load(str(bad))


def test_header_with_non_integer_shape_is_not_a_valid_file(tiny, tmp_path):
    path, _, _ = tiny
    raw = open(path, "rb").read()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    header["first.bias"]["shape"] = ["4"]
    blob = json.dumps(header).encode()
    bad = tmp_path / "strshape.safetensors"
    bad.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + length:])
    with pytest.raises(ValueError, match="bad shape or dtype for tensor 'first.bias'"):
        read_tensor_specs(str(bad))


def test_read_tensor_specs_matches_the_stored_tensors(tiny):
    path, tensors, _ = tiny
    specs = read_tensor_specs(path)
    assert set(specs) == set(tensors)
    assert all(specs[k] == ("F32", tuple(v.shape)) for k, v in tensors.items())


def test_shipped_models_still_load_and_are_finite():
    names = linsolve.models.available()
    assert names
    for name in names:
        net = linsolve.models.load(name)
        assert all(bool(torch.isfinite(p).all()) for p in net.parameters())
        assert net.dims == linsolve.models.info(name)["dims"]


@pytest.mark.parametrize("bad", ["nan", "complex", "int"])
def test_learned_multigrid_files_refuse_bad_weights_too(tmp_path, bad):
    """mg-stencil files are read without torch (precond.multigrid), by their own reader: same refusals."""
    from linsolve.precond.multigrid import load_mg_parameters

    shipped = linsolve.models.resolve(linsolve.models.find(2, architecture="mg-stencil")[0])
    tensors, meta = decode(shipped)
    tensors = {k: v.numpy().copy() if hasattr(v, "numpy") else np.array(v) for k, v in tensors.items()}
    kinds = {"complex": np.complex64, "int": np.int64}
    bias = tensors["bias"]
    tensors["bias"] = bias.astype(kinds[bad]) if bad in kinds else np.full_like(bias, np.nan)
    from safetensors.numpy import save

    path = tmp_path / "bad-mg.safetensors"
    path.write_bytes(save(tensors, metadata={"linsolve": json.dumps(meta)}))
    with pytest.raises(ValueError, match="complex|int64|NaN"):
        load_mg_parameters(str(path))
