"""Shared pytest configuration: the ``slow`` marker is deselected by default (see pyproject)."""
import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fresh, seeded generator for each test (never global seeding)."""
    return np.random.default_rng(12345)


@pytest.fixture(scope="module")
def isolated_home(tmp_path_factory):
    """A module's own empty ``PREDDIFF_HOME`` (model cache) and the Agg plotting backend, so
    that CLI tests neither read nor write the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PREDDIFF_HOME", str(tmp_path_factory.mktemp("home")))
    mp.setenv("MPLBACKEND", "Agg")
    yield
    mp.undo()
