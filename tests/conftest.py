import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def rng_state_guard():
    """Asserts the process-wide torch RNG state is unchanged by the test body."""
    before = torch.get_rng_state().clone()
    yield
    assert torch.equal(before, torch.get_rng_state()), "the process-wide RNG state changed"
