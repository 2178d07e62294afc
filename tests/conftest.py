"""Shared test setup: float64 is enabled so parity with torch can be checked to 1e-9."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)


def _torch_or_skip():
    return pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[parity]'")


@pytest.fixture
def torch():
    """The torch module, or a skip with the reason when it is not installed."""
    return _torch_or_skip()
