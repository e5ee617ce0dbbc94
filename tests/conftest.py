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
