"""Tests of dreamer_core.nets (distributions, layers, encoders, RSSM).

The tensors here are tiny and gain nothing from intra-op threads; with 2 threads on a CPU that
another process keeps busy, every op waits for a descheduled OpenMP worker (the suite went from
5 s to 40 s). So each module runs single-threaded through the autouse ``single_thread``
fixture, which the test files import.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Run the module with one intra-op thread; restore the previous count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
