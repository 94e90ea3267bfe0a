"""Fixtures shared by several test folders."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """One CPU thread for the test: small models run faster without thread hand-offs, and runs compared bit for
    bit (resume, ranks) must use the same thread count. The previous count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
