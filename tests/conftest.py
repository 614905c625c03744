"""Skip accelerator-only tests cleanly where there is no accelerator, and run Triton kernels in
its CPU interpreter there (set, and the interpreter patched for NumPy 2, before any test module
imports triton); restore torch's thread count after every test."""

from __future__ import annotations

import os

import pytest
import torch

from tests.triton_interpreter import patch_for_numpy2

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
patch_for_numpy2()  # a no-op unless Triton runs in its interpreter


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Give every test the thread count it started with: the bench CLI, called in-process by
    some tests, sets torch's intra-op threads for the whole process (``--threads``)."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
