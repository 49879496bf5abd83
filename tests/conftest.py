"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tiny models on one intra-op thread, restored afterwards.

    Heads and toy backbones are far too small to gain from a second thread, and on a shared 2-core
    machine OpenMP spin-waiting made such modules 7-10x slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
