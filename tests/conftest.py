"""Fixtures shared by several test files."""
import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch limited to one thread for the module (tiny grids: a second thread only adds synchronisation,
    and hurts a lot on a shared machine); skips when torch is not installed."""
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(old)


#: The smallest DCDM network: what the model-file tests save, load and tamper with.
TINY_DCDM = {"dims": 2, "channels": 4, "n_down": 1, "n_coarse": 1, "n_up": 1}


@pytest.fixture
def tiny_file(tmp_path):
    """``(net, path)``: :data:`TINY_DCDM` with fixed weights, saved by ``linsolve.models.save``."""
    torch = pytest.importorskip("torch")
    import linsolve
    from linsolve.learn.networks import build_network

    torch.manual_seed(0)
    net = build_network("dcdm", TINY_DCDM)
    path = str(tmp_path / "tiny.safetensors")
    linsolve.models.save(net, path, {"preset": "unit-test", "loss_curve": [1.0, 0.5]})
    return net, path
