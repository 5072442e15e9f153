"""Fixtures shared by several test files (opt-in: each file names the ones it uses)."""

import pytest
import torch


@pytest.fixture
def seeded_single_thread():
    """Seeded, and single-threaded: tiny tensors gain nothing from threads, and on a busy
    2-core machine OpenMP threads slow such tests down more than tenfold."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
