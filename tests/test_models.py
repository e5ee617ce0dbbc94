"""linsolve.models: shipped weights, safe save/load, clear errors for bad files."""
import json
import os
import struct

import numpy as np
import pytest

import linsolve

torch = pytest.importorskip("torch")

from linsolve.learn.networks import DCDMNet, build_network, register_architecture  # noqa: E402

from conftest import TINY_DCDM as TINY  # noqa: E402


def test_save_load_roundtrip_gives_the_same_network(tiny_file):
    net, path = tiny_file
    loaded = linsolve.models.load(path)
    x = torch.randn(2, 1, 10, 10)
    assert torch.allclose(net(x), loaded(x))
    meta = loaded.metadata
    assert meta["architecture"] == "dcdm" and meta["dims"] == 2 and meta["preset"] == "unit-test"
    assert meta["config"] == net.config and meta["loss_curve"] == [1.0, 0.5]
    assert meta["format_version"] == linsolve.models.FORMAT_VERSION and "git_commit" in meta
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


def test_file_is_plain_safetensors_without_pickle(tiny_file):
    _, path = tiny_file
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    assert "linsolve" in header["__metadata__"]
    with open(path, "rb") as handle:
        assert b"\x80\x04\x95" not in handle.read()  # no pickle protocol-4 stream anywhere


def test_truncated_file_is_refused_clearly(tiny_file, tmp_path):
    _, path = tiny_file
    data = open(path, "rb").read()
    for cut in (4, 40, len(data) - 10):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated"):
            linsolve.models.load(str(bad))


def test_non_model_files_are_refused(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("hello, this is not a model at all" * 10)
    with pytest.raises(ValueError, match="not a linsolve model"):
        linsolve.models.load(str(text))
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(ValueError, match="not a linsolve model"):
        linsolve.models.load(str(foreign))
    with pytest.raises(ValueError, match="neither a shipped model"):
        linsolve.models.load(str(tmp_path / "missing.safetensors"))
    with pytest.raises(TypeError):
        linsolve.models.load(3)


def test_other_architecture_is_refused(tiny_file, tmp_path):
    _, path = tiny_file
    with pytest.raises(ValueError, match="expected architecture 'mg'"):
        linsolve.models.load(path, architecture="mg")
    # weights written for another configuration / architecture do not fit the claimed one
    other = DCDMNet(dims=2, channels=8, n_down=2, n_coarse=1, n_up=1)

    other.config = dict(TINY)  # lie about the config: the tensors will not match
    bad = str(tmp_path / "mismatch.safetensors")
    linsolve.models.save(other, bad)
    with pytest.raises(ValueError, match="do not match architecture|has shape"):
        linsolve.models.load(bad)


def test_unknown_architecture_in_file(tmp_path):
    class Odd(torch.nn.Module):
        architecture = "odd-net-unregistered"
        dims = 2
        config = {}

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

    path = str(tmp_path / "odd.safetensors")
    linsolve.models.save(Odd(), path)
    with pytest.raises(ValueError, match="unknown network architecture"):
        linsolve.models.load(path)
    register_architecture("odd-net-unregistered", lambda: Odd())
    assert linsolve.models.load(path).dims == 2


def test_dims_check_on_load(tiny_file):
    _, path = tiny_file
    with pytest.raises(ValueError, match="2D model but a 3D model"):
        linsolve.models.load(path, dims=3)


def test_checkpoint_is_not_a_model(tmp_path):
    from linsolve.learn.train import TrainConfig, train

    cfg = TrainConfig(grid_shape=(8, 8), n_lanczos=10, n_samples=4, epochs=1, batch_size=4, net_config=TINY,
                      out=str(tmp_path / "m.safetensors"), progress=False, threads=1)
    train(cfg)
    ckpt = os.path.join(cfg.checkpoint_folder(), "checkpoint.safetensors")
    with pytest.raises(ValueError, match="not a model"):
        linsolve.models.load(ckpt)


def test_shipped_models_are_small_and_documented():
    names = linsolve.models.available()
    assert {"poisson2d-64", "poisson3d-32"} <= set(names)
    recipe = os.path.join(linsolve.models.WEIGHTS_DIR, "RECIPE.md")
    text = open(recipe).read()
    for name in ("poisson2d-64", "poisson3d-32"):
        path = linsolve.models.resolve(name)
        assert os.path.getsize(path) <= 5 * 1024 * 1024
        meta = linsolve.models.info(name)
        for key in ("architecture", "config", "dims", "preset", "data_recipe", "git_commit", "loss_curve"):
            assert key in meta, (name, key)
        assert meta["preset"] == name and f"linsolve train {name}" in text
        assert np.all(np.isfinite(meta["loss_curve"]))
    assert "poisson2d-64" in linsolve.models.find(2, architecture="dcdm")
    assert "poisson3d-32" in linsolve.models.find(3, architecture="dcdm")
    with open(os.path.join(linsolve.models.WEIGHTS_DIR, "poisson3d-32.json")) as handle:
        assert json.load(handle)["config"] == linsolve.models.info("poisson3d-32")["config"]


def test_import_linsolve_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, linsolve, linsolve.krylov, linsolve.precond, linsolve.models, linsolve.learn; "
            "linsolve.models.available(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_old_one_level_files_load_unchanged(tmp_path):
    """A file whose config has no ``levels`` key (every model saved before issue 6) loads as before."""
    torch.manual_seed(1)
    net = DCDMNet(dims=3, channels=4, n_down=1, n_coarse=2, n_up=1)
    path = str(tmp_path / "old.safetensors")
    linsolve.models.save(net, path, {"preset": "unit-test"})
    assert "levels" not in linsolve.models.info(path)["config"]
    loaded = linsolve.models.load(path)
    x = torch.randn(1, 1, 7, 6, 5)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert "levels" not in linsolve.models.info("poisson3d-32")["config"]


def test_multilevel_model_roundtrip_and_architecture_mismatch(tmp_path):
    torch.manual_seed(2)
    net = DCDMNet(dims=3, channels=4, n_down=1, n_coarse=1, n_up=1, levels=3, n_mid=1)
    path = str(tmp_path / "ml.safetensors")
    linsolve.models.save(net, path, {"preset": "unit-test"})
    loaded = linsolve.models.load(path)
    assert loaded.config == net.config and loaded.config["levels"] == 3
    x = torch.randn(2, 1, 9, 8, 7)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    # The same weights under a one-level config do not fit: a clear error, not a silent partial load.
    from linsolve.models._format import decode, encode

    tensors, meta = decode(path)
    meta["config"] = {k: v for k, v in meta["config"].items() if k not in ("levels", "n_mid")}
    bad = tmp_path / "ml-as-one-level.safetensors"
    bad.write_bytes(encode(tensors, meta))
    with pytest.raises(ValueError, match="do not match"):
        linsolve.models.load(str(bad))


def test_shipped_multilevel_model():
    name = "poisson3d-32-ml"
    assert name in linsolve.models.available()
    meta = linsolve.models.info(name)
    assert meta["preset"] == name and meta["dims"] == 3 and meta["architecture"] == "dcdm"
    assert meta["config"]["levels"] > 1
    assert os.path.getsize(linsolve.models.resolve(name)) <= 5 * 1024 * 1024
    text = open(os.path.join(linsolve.models.WEIGHTS_DIR, "RECIPE.md")).read()
    assert f"linsolve train {name}" in text
    with open(os.path.join(linsolve.models.WEIGHTS_DIR, name + ".json")) as handle:
        assert json.load(handle)["config"] == meta["config"]
    net = linsolve.models.load(name, dims=3)
    assert net(torch.zeros(1, 1, 5, 6, 7)).shape == (1, 1, 5, 6, 7)
    assert name in linsolve.models.find(3, architecture="dcdm")


def test_resaving_a_loaded_model_keeps_its_training_recipe(tmp_path):
    pytest.importorskip("torch")
    name = next(n for n in linsolve.models.available() if linsolve.models.info(n).get("architecture") != "mg-stencil")
    original = linsolve.models.info(name)
    path = linsolve.models.save(linsolve.models.load(name), tmp_path / "again.safetensors")
    again = linsolve.models.info(path)
    recipe = [k for k in ("data_recipe", "preset", "train_config", "command", "loss_curve") if k in original]
    assert recipe and all(again[k] == original[k] for k in recipe)
    assert set(original) <= set(again)
