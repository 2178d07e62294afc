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


def _python_blocks(text: str) -> list[str]:
    blocks, inside, lines = [], False, []
    for line in text.splitlines():
        if line.strip() == "```python" and not inside:
            inside, lines = True, []
        elif line.strip() == "```" and inside:
            inside = False
            blocks.append("\n".join(lines))
        elif inside:
            lines.append(line)
    return blocks


def test_readme_training_example_runs_and_prints_the_loss_it_states():
    readme = (ROOT / "README.md").read_text()
    blocks = [b for b in _python_blocks(readme) if "import optim_chain" in b]
    assert blocks, "README has no runnable python example"
    run = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)],
        cwd=ROOT,
        env=cpu_devices_env(1),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    comments = [line.split("# ")[-1] for line in readme.splitlines() if "final training loss" in line]
    stated = float(comments[0].split()[0])
    printed = float(run.stdout.strip().splitlines()[-1].split()[-1])
    # the figure README states, up to another CPU's rounding over 500 steps
    assert abs(stated - printed) <= 0.02 * printed, (stated, printed)
