"""Ritz-vector data, networks, loss, training with resume, presets and the `linsolve train` CLI."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import linsolve

torch = pytest.importorskip("torch")

from linsolve.learn import lanczos, ritz_dataset  # noqa: E402
from linsolve.learn.data import ritz_vectors  # noqa: E402
from linsolve.learn.losses import dcdm_loss, sparse_to_torch  # noqa: E402
from linsolve.learn.networks import (DCDMNet, available_architectures, build_network,  # noqa: E402
                                     register_architecture)
from linsolve.learn.train import TrainConfig, train  # noqa: E402

TINY = {"dims": 2, "channels": 4, "n_down": 1, "n_coarse": 1, "n_up": 1}


def test_lanczos_is_orthonormal_and_tridiagonalises():
    A = linsolve.problems.poisson((10, 10))
    V, alpha, beta = lanczos(A, 40, seed=3)
    assert np.allclose(V @ V.T, np.eye(len(alpha)), atol=1e-10)
    T = V @ (A @ V.T)
    expected = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    assert np.allclose(T, expected, atol=1e-8)


def test_lanczos_stops_at_invariant_subspace():
    A = sp.diags([1.0, 2.0, 3.0, 3.0, 3.0]).tocsr()
    V, alpha, _ = lanczos(A, 5, seed=0)
    assert len(alpha) == 3  # three distinct eigenvalues
    assert np.allclose(np.sort(np.linalg.eigvalsh(np.diag(alpha) + 0)), np.sort(alpha))


def test_ritz_values_bracket_the_spectrum_and_drop_null_space():
    # pure-Neumann 1D Laplacian: singular with a constant null vector
    n = 30
    main = np.full(n, 2.0)
    main[[0, -1]] = 1.0
    A = sp.diags([main, -np.ones(n - 1), -np.ones(n - 1)], [0, 1, -1]).tocsr()
    theta, Y = ritz_vectors(A, n, seed=1)
    assert theta.min() >= 1e-8
    eig = np.linalg.eigvalsh(A.toarray())
    assert theta.max() <= eig.max() + 1e-8
    assert np.allclose(Y @ Y.T, np.eye(len(theta)), atol=1e-4)
    assert np.abs(Y @ np.ones(n)).max() < 1e-4  # no null-space content


def test_ritz_dataset_samples_are_unit_float32_and_low_mode_rich():
    A = linsolve.problems.poisson((16, 16))
    boosted = ritz_dataset(A, 80, 50, seed=0, low_factor=9.0)
    plain = ritz_dataset(A, 80, 50, seed=0, low_factor=1.0)
    assert boosted.samples.dtype == np.float32 and boosted.samples.shape == (50, 256)
    assert np.allclose(np.linalg.norm(boosted.samples, axis=1), 1.0, atol=1e-5)
    rq = lambda S: np.einsum("ij,ij->i", S, (A @ S.T).T).mean()  # noqa: E731
    assert rq(boosted.samples.astype(float)) < 0.75 * rq(plain.samples.astype(float))
    assert boosted.recipe["n_samples"] == 50 and boosted.recipe["peak_bytes_estimate"] > 0
    again = ritz_dataset(A, 80, 50, seed=0, low_factor=9.0)
    assert np.array_equal(again.samples, boosted.samples)


def test_ritz_dataset_rejects_bad_arguments():
    A = linsolve.problems.poisson((4, 4))
    with pytest.raises(ValueError, match="n_samples"):
        ritz_dataset(A, 10, 0)
    with pytest.raises(ValueError, match="n_lanczos"):
        ritz_dataset(A, -1, 3)


@pytest.mark.parametrize("dims,shape", [(2, (9, 12)), (3, (5, 6, 7))])
def test_dcdm_net_keeps_any_grid_shape(dims, shape):
    net = DCDMNet(dims=dims, channels=4, n_down=1, n_coarse=1, n_up=1)
    out = net(torch.randn((2, 1) + shape))
    assert out.shape == (2, 1) + shape


def test_paper_layout_parameter_count():
    net = DCDMNet(dims=3)  # 16 channels, 1 + 4 / 6 / 4 as the paper's 64^3 model (~97k parameters)
    count = sum(p.numel() for p in net.parameters())
    assert 90_000 < count < 110_000


def test_network_rejects_wrong_input_rank():
    with pytest.raises(ValueError, match="expects input"):
        DCDMNet(dims=3, channels=2, n_down=0, n_coarse=0, n_up=0)(torch.zeros(1, 1, 4, 4))


def test_architecture_registry():
    assert "dcdm" in available_architectures()
    register_architecture("dcdm-test-alias", DCDMNet)
    assert build_network("dcdm-test-alias", TINY).dims == 2
    with pytest.raises(ValueError, match="unknown network architecture"):
        build_network("no-such-net", {})
    with pytest.raises(ValueError, match="invalid configuration"):
        build_network("dcdm", {"dims": 2, "bogus": 1})


def test_loss_is_zero_for_exact_solution_and_positive_otherwise():
    A = linsolve.problems.poisson((6, 6))
    At = sparse_to_torch(A, dtype=torch.float64)
    b = torch.randn(3, 36, dtype=torch.float64)
    x = torch.linalg.solve(torch.tensor(A.toarray()), b.T).T
    assert float(dcdm_loss(x, b, At)) < 1e-20
    assert float(dcdm_loss(b, b, At)) > 1e-3
    # invariant to the scale of q (only its direction matters)
    assert np.isclose(float(dcdm_loss(3.0 * b + x, b, At)), float(dcdm_loss(b + x / 3.0, b, At)))


def _tiny_config(tmp_path, **kw):
    base = dict(grid_shape=(12, 12), n_lanczos=30, n_samples=24, epochs=3, batch_size=8, lr=1e-3, seed=5,
                net_config=dict(TINY), out=str(tmp_path / "model.safetensors"), progress=False, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_the_loss_and_writes_metadata(tmp_path):
    cfg = _tiny_config(tmp_path, epochs=4)
    net, log = train(cfg)
    assert len(log) == 4 and log[-1] < log[0]
    loaded = linsolve.models.load(cfg.out)
    meta = loaded.metadata
    assert meta["loss_curve"] == pytest.approx(log)
    assert meta["data_recipe"]["n_lanczos"] == 30 and meta["dims"] == 2
    with open(os.path.join(cfg.checkpoint_folder(), "log.json")) as handle:
        assert json.load(handle)["loss_per_epoch"] == pytest.approx(log)


class _Stop(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    full_cfg = _tiny_config(tmp_path / "full")
    _, full_log = train(full_cfg)

    cut_cfg = _tiny_config(tmp_path / "cut")

    def stop_after_first(epoch, loss):
        if epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train(cut_cfg, on_epoch_end=stop_after_first)
    assert not os.path.exists(cut_cfg.out)
    cut_cfg.resume = True
    _, resumed_log = train(cut_cfg)
    assert len(resumed_log) == 3
    assert resumed_log == pytest.approx(full_log, rel=1e-5, abs=1e-7)
    a = linsolve.models.load(full_cfg.out)
    b = linsolve.models.load(cut_cfg.out)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    cfg = _tiny_config(tmp_path, epochs=1)
    train(cfg)
    other = _tiny_config(tmp_path, epochs=2, batch_size=4, resume=True)
    with pytest.raises(ValueError, match="batch_size"):
        train(other)
    missing = _tiny_config(tmp_path / "none", resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(missing)
    # It fails before the data step: nothing was computed or cached for a mistyped folder.
    leftovers = [p.name for p in (tmp_path / "none").rglob("*") if p.is_file()]
    assert leftovers == []


def test_train_config_validation(tmp_path):
    with pytest.raises(ValueError, match="grid_shape"):
        train(_tiny_config(tmp_path, grid_shape=(5,)))
    with pytest.raises(ValueError, match="epochs"):
        train(_tiny_config(tmp_path, epochs=0))
    with pytest.raises(ValueError, match="device"):
        train(_tiny_config(tmp_path, device="nonsense"))


def test_presets_and_cli(capsys, tmp_path):
    from linsolve.learn.presets import PRESETS, dcdm_config
    from linsolve.cli.train import main

    assert {"poisson2d-64", "poisson3d-32"} <= set(PRESETS)
    assert main(["--list"]) == 0
    assert "poisson3d-32" in capsys.readouterr().out
    assert main(["list"]) == 0
    assert "poisson2d-64" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown preset"):
        main(["no-such-preset"])
    from linsolve.cli import main as cli_main

    assert cli_main(["train", "no-such-preset"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    cfg = dcdm_config("poisson2d-64", type("O", (), {"epochs": 2, "seed": 9, "resume": False})())
    assert cfg.epochs == 2 and cfg.seed == 9 and cfg.grid_shape == (64, 64)


def test_cli_trains_from_a_json_config(tmp_path, capsys):
    from linsolve.cli.train import main

    config = tmp_path / "run.json"
    config.write_text(json.dumps({"preset": "poisson2d-64", "grid": [8, 8], "epochs": 1, "samples": 4,
                                  "lanczos": 10, "batch_size": 4}))
    out = tmp_path / "m.safetensors"
    assert main([str(config), "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    net = linsolve.models.load(str(out))
    assert net.metadata["preset"] == "poisson2d-64" and net.metadata["train_config"]["grid_shape"] == [8, 8]


@pytest.mark.slow
def test_training_survives_being_killed(tmp_path):
    """A subprocess killed mid-run resumes from its last checkpoint and ends where a clean run does."""
    import signal
    import time

    out_kill = tmp_path / "kill" / "m.safetensors"
    out_full = tmp_path / "full" / "m.safetensors"
    args = ["poisson2d-64", "--grid", "16x16", "--epochs", "4", "--samples", "40", "--lanczos", "30",
            "--batch-size", "4", "--threads", "1", "--no-progress", "--seed", "3"]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "linsolve.cli", "train"] + args
    subprocess.run(cmd + ["--out", str(out_full)], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd + ["--out", str(out_kill)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = out_kill.parent / "m.ckpt" / "checkpoint.safetensors"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not out_kill.exists()  # really interrupted before the end
    subprocess.run(cmd + ["--out", str(out_kill), "--resume"], check=True, env=env, capture_output=True)
    a = linsolve.models.load(str(out_full)).metadata["loss_curve"]
    b = linsolve.models.load(str(out_kill)).metadata["loss_curve"]
    assert b == pytest.approx(a, rel=1e-5)


# ------------------------------------------------------------------------------ multi-level DCDM network
def _one_level_reference(net, x):
    """The one-level forward exactly as the network had it before ``levels`` existed (issue 6)."""
    spatial = x.shape[2:]
    pad = [0, 0] * net.dims
    for axis, size in enumerate(reversed(spatial)):
        pad[2 * axis + 1] = size % 2
    x = torch.nn.functional.pad(x, pad)
    h = net.first(x)
    for layer in net.down:
        h = h + torch.relu(layer(h))
    c = (torch.nn.functional.avg_pool2d if net.dims == 2 else torch.nn.functional.avg_pool3d)(h, 2)
    for layer in net.coarse:
        c = c + torch.relu(layer(c))
    u = torch.nn.functional.interpolate(c, scale_factor=2, mode="nearest") + h
    for layer in net.up:
        u = u + torch.relu(layer(u))
    out = net.last(u)
    return out[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]


@pytest.mark.parametrize("dims,shape", [(2, (9, 12)), (2, (7, 5)), (3, (5, 6, 7)), (3, (8, 8, 8))])
def test_levels_one_is_the_original_network(dims, shape):
    torch.manual_seed(3)
    net = DCDMNet(dims=dims, channels=4, n_down=2, n_coarse=2, n_up=1)
    explicit = DCDMNet(dims=dims, channels=4, n_down=2, n_coarse=2, n_up=1, levels=1, n_mid=3)
    # Same parameter names as before (old files load) and no new config keys (old configs compare equal).
    names = sorted(net.state_dict())
    assert names == sorted(explicit.state_dict())
    assert all(n.split(".")[0] in {"first", "down", "coarse", "up", "last"} for n in names)
    assert "levels" not in net.config and explicit.config == net.config
    x = torch.randn((2, 1) + shape)
    with torch.no_grad():
        assert torch.equal(net(x), _one_level_reference(net, x))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("levels", [2, 3, 4])
def test_multilevel_net_keeps_odd_and_tiny_shapes(dims, levels):
    torch.manual_seed(levels)
    net = DCDMNet(dims=dims, channels=3, n_down=1, n_coarse=1, n_up=1, levels=levels, n_mid=1)
    assert net.config["levels"] == levels and net.config["n_mid"] == 1
    json.dumps(net.config)
    shapes = [(1,) * dims, (2,) * dims, (3, 5, 7)[:dims], (17, 9, 6)[:dims], (13,) * dims]
    for shape in shapes:
        out = net(torch.randn((2, 1) + shape))
        assert out.shape == (2, 1) + shape
        assert torch.isfinite(out).all()
    # Rebuilding from the config gives the same architecture (a saved file reloads).
    again = build_network("dcdm", net.config)
    assert sorted(again.state_dict()) == sorted(net.state_dict())


def test_more_levels_reach_further():
    """A one-level net's output ignores far-away input; a 4-level net's does not (the point of issue 6)."""
    shape = (64, 64)
    for levels, reaches in ((1, False), (4, True)):
        torch.manual_seed(0)
        net = DCDMNet(dims=2, channels=4, n_down=1, n_coarse=1, n_up=1, levels=levels, n_mid=1)
        x = torch.zeros((1, 1) + shape, requires_grad=True)
        net(x)[0, 0, 0, 0].backward()
        far = x.grad[0, 0, 40:, 40:].abs().max().item()
        assert (far > 0) == reaches, (levels, far)


@pytest.mark.parametrize("bad", [0, -1, 9, 1.5, True, "2", None])
def test_bad_levels_are_refused_clearly(bad):
    with pytest.raises(ValueError, match="levels"):
        DCDMNet(dims=3, channels=4, levels=bad)
    with pytest.raises(ValueError, match="levels"):
        build_network("dcdm", {"dims": 2, "channels": 4, "levels": bad})


def test_bad_n_mid_is_refused_clearly():
    with pytest.raises(ValueError, match="n_mid"):
        DCDMNet(dims=2, channels=4, levels=2, n_mid=-1)


def test_multilevel_preset_is_registered_and_valid():
    from linsolve.learn.presets import PRESETS, dcdm_config

    assert "poisson3d-32-ml" in PRESETS
    cfg = dcdm_config("poisson3d-32-ml").validate()
    base = dcdm_config("poisson3d-32").validate()
    # Same data recipe as the faithful preset (so its cached Lanczos data is reused), deeper network.
    for key in ("grid_shape", "matrix", "n_lanczos", "n_samples", "theta", "seed", "batch_size"):
        assert getattr(cfg, key) == getattr(base, key), key
    assert cfg.net_config["levels"] > 1 and cfg.net_config["dims"] == 3
    net = build_network(cfg.architecture, cfg.net_config)
    assert net.config["levels"] == cfg.net_config["levels"]
    assert any(name.startswith("mid_down.") for name in net.state_dict())


def test_training_a_multilevel_net_lowers_the_loss(tmp_path):
    cfg = TrainConfig(grid_shape=(16, 16), n_lanczos=40, n_samples=20, epochs=4, batch_size=5, lr=3e-3,
                      net_config=dict(TINY, levels=3, n_mid=1), out=str(tmp_path / "ml.safetensors"),
                      progress=False)
    net, log = train(cfg)
    assert log[-1] < log[0]
    loaded = linsolve.models.load(cfg.out)
    assert loaded.config["levels"] == 3
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x))


def test_fluid_tank_training_matrix_is_the_smoke_plume_matrix():
    from linsolve.learn.train import build_matrix
    from linsolve.problems import fluid_sequence

    for shape in [(10, 12), (8, 10, 9)]:
        frame = next(iter(fluid_sequence(shape, 1, scene="smoke_plume")))
        tank = build_matrix(TrainConfig(grid_shape=shape, matrix="fluid-tank"))
        assert (abs(tank - frame.A) > 0).nnz == 0, shape


def test_tank_training_never_shows_the_network_wall_cells(tmp_path):
    from linsolve.learn.train import build_matrix

    cfg = _tiny_config(tmp_path, matrix="fluid-tank", epochs=2)
    net, log = train(cfg)
    assert np.all(np.isfinite(log)) and log[-1] < log[0]
    samples = np.load(tmp_path / "model.ckpt" / "data.npy")
    A = build_matrix(cfg)
    walls = np.diff(A.indptr) <= 1
    assert walls.sum() == 12 + 2 * 11            # bottom row and both sides of a 12x12 tank
    assert np.all(samples[:, walls] == 0)
    assert np.allclose(np.linalg.norm(samples, axis=1), 1.0, atol=1e-5)
    assert linsolve.models.load(cfg.out).metadata["data_recipe"]["decoupled_cells_zeroed"] == int(walls.sum())
