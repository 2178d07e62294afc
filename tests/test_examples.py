"""Every script in examples/ runs for a few steps."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"flax_linen_trainstate.py", "flax_nnx_optimizer.py"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_a_few_steps(path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(path), "--steps", "2"])
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert "step" in out or "test accuracy" in out
    assert "nan" not in out.lower()
