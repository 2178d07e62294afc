"""Helpers shared by several test modules (pytest puts tests/ on sys.path).

Subprocess tests import them too: :func:`cpu_devices_env` puts tests/ on the child's path.
"""

import os
from pathlib import Path

import jax

from optim_chain._tree import shaped_like

TESTS_DIR = Path(__file__).resolve().parent


def param_shaped_subtrees(state, params):
    """Every part of ``state`` with exactly the params' tree structure and shapes (moments, buffers)."""
    is_part = shaped_like(params)
    return [node for node in jax.tree.flatten(state, is_leaf=is_part)[0] if is_part(node)]


def cpu_devices_env(devices: int) -> dict[str, str]:
    """Environment for a child Python with ``devices`` virtual CPU devices and no inherited JAX flags.

    tests/ and the repository root go on ``PYTHONPATH`` so the child can import these helpers and
    the examples.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent), env.get("PYTHONPATH", "")])
    return env
