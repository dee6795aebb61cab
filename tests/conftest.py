"""Shared fixtures. The patched llama.cpp must be built (build/bin, or LLAMA_MPQ2_LIB_DIR)."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
