"""Shared pytest configuration: the ``slow`` marker is deselected by default (see pyproject)."""
import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fresh, seeded generator for each test (never global seeding)."""
    return np.random.default_rng(12345)
