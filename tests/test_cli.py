"""The optim-chain command: compare and sweep end to end on tiny configs, show, masks, bench, errors."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from optim_chain.lab import cli

ROOT = Path(__file__).resolve().parent.parent

TINY_COMPARE = """
name: tiny_compare
data: {name: digits, test_fraction: 0.5}
model: {name: mlp, hidden: [8]}
training: {steps: 4, batch_size: 8, eval_every: 2, seeds: 2}
optimizers:
  adam_l2: {preset: adam_l2, learning_rate: 1.0e-2, weight_decay: 1.0e-2, mask: default}
  adamw: {preset: adamw, learning_rate: 1.0e-2, weight_decay: 1.0e-2, mask: default}
"""

TINY_SWEEP = """
name: tiny_sweep
data: {name: digits}
model: {name: mlp, hidden: [8]}
training: {steps: 4, batch_size: 8, eval_every: 4, seeds: 2}
optimizers:
  adam_l2:
    preset: adam_l2
    mask: default
    grid: {learning_rate: [1.0e-3, 1.0e-2], weight_decay: {min: 1.0e-4, max: 1.0e-2, num: 3}}
  sgdw:
    preset: sgdw
    momentum: 0.9
    decay_scaling: schedule
    grid: {learning_rate: [1.0e-2, 1.0e-1], weight_decay: [1.0e-4, 1.0e-3]}
pairs: [[adam_l2, sgdw]]
baseline: {runs: 2}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


def test_console_script_points_at_main():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["optim-chain"] == "optim_chain.lab.cli:main"


def test_compare_end_to_end(tmp_path, capsys):
    config = _write(tmp_path, TINY_COMPARE)
    status = cli.main(["compare", "--config", str(config), "--out", str(tmp_path / "runs"), "--no-progress"])
    assert status == 0
    out = capsys.readouterr().out
    assert "| optimizer | test accuracy | test loss | weight norm | decayed params | accuracy 95% CI |" in out
    run = tmp_path / "runs" / "tiny_compare"
    assert {p.name for p in run.iterdir()} == {
        "summary.md",
        "metrics.json",
        "curves.png",
        "effective_decay.png",
    }
    metrics = json.loads((run / "metrics.json").read_text())
    optimizers = metrics["optimizers"]
    assert list(optimizers) == ["adam_l2", "adamw"]
    weights = 64 * 8 + 8 * 10
    assert optimizers["adamw"]["decayed_parameters"] == optimizers["adam_l2"]["decayed_parameters"] == weights
    assert optimizers["adam_l2"]["effective_decay"]["kind"] == "coupled"
    assert optimizers["adamw"]["effective_decay"]["min"] == pytest.approx(1e-4)
    for result in optimizers.values():
        assert len(result["test_accuracy"]) == 2
        assert np.asarray(result["curves"]["test_loss"]).shape == (2, 2)
    summary = (run / "summary.md").read_text()
    assert "| adamw |" in summary and "![training curves](curves.png)" in summary


def test_sweep_end_to_end(tmp_path, capsys):
    config = _write(tmp_path, TINY_SWEEP)
    status = cli.main(["sweep", "--config", str(config), "--out", str(tmp_path / "runs"), "--no-progress"])
    assert status == 0
    out = capsys.readouterr().out
    assert "best-wd slope" in out and "speed-up" in out
    run = tmp_path / "runs" / "tiny_sweep"
    assert {p.name for p in run.iterdir()} == {"summary.md", "metrics.json", "heatmaps.png"}
    metrics = json.loads((run / "metrics.json").read_text())
    adam_l2 = metrics["optimizers"]["adam_l2"]
    assert np.asarray(adam_l2["test_loss"]).shape == (2, 3, 2)  # lr x wd x seeds
    assert adam_l2["weight_decays"] == pytest.approx([1e-4, 1e-3, 1e-2])
    assert len(adam_l2["separability"]["best_weight_decay"]) == 2
    timing = metrics["timing"]
    assert timing["per_optimizer"]["sgdw"]["sequential_runs_timed"] == 2
    assert (
        timing["speedup_vs_sequential"] > 0 and timing["recompiling_seconds"] > timing["sequential_seconds"]
    )


def test_bad_config_is_one_line_on_stderr(tmp_path, capsys):
    config = _write(tmp_path, "optimizers: {adam: {preset: adan, learning_rate: 1.0}}\n")
    assert cli.main(["compare", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("optim-chain compare: ") and "key 'optimizers.adam.preset' is 'adan'" in err


def test_show_prints_chains(capsys):
    assert cli.main(["show", "--config", str(ROOT / "configs" / "compare_custom_chain.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.index("add_l2_regularization") < out.index("adamw =") < out.index("decoupled_weight_decay")
    assert cli.main(["show", "--config", str(ROOT / "configs" / "presets" / "sgdw.yaml")]) == 0
    assert "add_momentum(momentum=0.9" in capsys.readouterr().out


def test_masks_lists_decayed_parameters(capsys):
    assert cli.main(["masks"]) == 0  # the default experiment: the MNIST-1D CNN with LayerNorm
    out = capsys.readouterr().out
    assert "adam:" in out and "0 of 14 leaves decay" in out
    assert "4 of 14 leaves decay (5,125 of 5,360 parameters)" in out  # kernels only


def test_bench_dispatches_lazily_or_explains(monkeypatch, capsys):
    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(cli.importlib, "import_module", missing)
    assert cli.main(["bench", "--anything"]) == 2
    assert "optim_chain.lab.bench is not installed" in capsys.readouterr().err


def test_bench_passes_its_arguments(monkeypatch):
    import sys
    import types

    seen = []
    fake = types.ModuleType("optim_chain.lab.bench")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "optim_chain.lab.bench", fake)
    assert cli.main(["bench", "--config", "x.yaml", "--quick"]) == 0
    assert seen == [["--config", "x.yaml", "--quick"]]


# ------------------------------------------------------------------- what a new user ran into


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"optim-chain {command}: "), err
    return err


def test_masks_of_an_optimizer_file_is_one_line(capsys):
    path = str(ROOT / "configs" / "presets" / "adamw.yaml")
    assert cli.main(["masks", "--config", path]) == 2
    err = _one_line_error(capsys, "masks")
    assert "holds one optimizer, not an experiment" in err and f"optim-chain show --config {path}" in err


def test_unwritable_out_is_one_line_before_training(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    config = _write(tmp_path, TINY_COMPARE)
    assert (
        cli.main(["compare", "--config", str(config), "--out", str(blocker / "runs"), "--no-progress"]) == 2
    )
    err = _one_line_error(capsys, "compare")
    assert "cannot write results to --out" in err and str(blocker / "runs") in err
    assert capsys.readouterr().out == ""  # nothing was trained


def test_empty_config_file_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n# nothing here\n")
    assert cli.main(["compare", "--config", str(empty)]) == 2
    assert "is empty" in _one_line_error(capsys, "compare")


def test_a_second_run_never_overwrites_the_first(tmp_path, capsys):
    config = _write(tmp_path, TINY_COMPARE)
    out = tmp_path / "runs"
    for _ in range(2):
        assert cli.main(["compare", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    first, second = out / "tiny_compare", out / "tiny_compare-2"
    assert (first / "metrics.json").exists() and (second / "metrics.json").exists()
    assert "holds an earlier run; writing to" in capsys.readouterr().err
    summary = (second / "summary.md").read_text()
    assert summary.startswith("# optim-chain compare: tiny_compare\n")


def test_show_into_a_closed_pipe_ends_quietly(monkeypatch, tmp_path, capsys):
    """``optim-chain show ... | head``: the reader goes away; status 0, no traceback."""
    import sys

    class ClosedPipe:
        def __init__(self):
            self.handle = open(tmp_path / "stdout", "w")  # noqa: SIM115 (a real descriptor for dup2)

        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return self.handle.fileno()

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert cli.main(["show", "--config", str(ROOT / "configs" / "digits_compare.yaml")]) == 0
    assert "Traceback" not in capsys.readouterr().err
