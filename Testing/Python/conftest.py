"""Fixtures shared by several test files (opt-in: each file names the ones it uses).

The MRML scenarios live in the module's test package, ``MoDiff/MoDiffTesting`` (installed beside
MoDiff.py, where Slicer's self-test imports them); its folder is put on the path here so the
tests import the same file: ``from MoDiffTesting import mrml_scenarios``.
"""

import sys
from pathlib import Path

import pytest
import torch

# Appended, not prepended: only MoDiffTesting is wanted from there (MoDiff.py itself needs Slicer's Qt).
MODULE_DIR = str(Path(__file__).resolve().parents[2] / "MoDiff")
if MODULE_DIR not in sys.path:
    sys.path.append(MODULE_DIR)


@pytest.fixture
def seeded_single_thread():
    """Seeded, and single-threaded: tiny tensors gain nothing from threads, and on a busy
    2-core machine OpenMP threads slow such tests down more than tenfold."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
