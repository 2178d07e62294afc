"""Every example in the library's docstrings runs as written (doctests), in a fresh process.

The doctests run in a child Python so that this suite's float64 setting (tests/conftest.py) and
its imports do not leak into them: an example shows what a user gets in a new interpreter.
"""

import subprocess
import sys
from pathlib import Path

from helpers import cpu_devices_env

ROOT = Path(__file__).resolve().parent.parent


def test_docstring_examples_run_as_written():
    env = cpu_devices_env(1)
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "--doctest-modules",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            str(ROOT / "optim_chain"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "no tests ran" not in run.stdout
