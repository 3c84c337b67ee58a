"""Fixtures of the synthetic-engine tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread() -> Iterator[None]:
    """Run these small-array tests on one torch thread.

    On a shared 2-core machine, OpenMP threads of tiny kernels spend their time waiting for
    each other; one thread is several times faster here. The setting is restored afterwards.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
