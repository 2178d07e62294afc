"""The optim-chain command: compare and sweep end to end on tiny configs, show, masks, bench, errors."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from optim_chain import cli

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
    assert scripts["optim-chain"] == "optim_chain.cli:main"


def test_compare_end_to_end(tmp_path, capsys):
    config = _write(tmp_path, TINY_COMPARE)
    status = cli.main(["compare", "--config", str(config), "--out", str(tmp_path / "runs"), "--no-progress"])
    assert status == 0
    out = capsys.readouterr().out
    assert "| optimizer | test accuracy | test loss | weight norm | decayed params |" in out
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
    assert cli.main(["masks", "--set", "model.hidden=[4]"]) == 0
    out = capsys.readouterr().out
    assert "adam:" in out and "0 of 6 leaves decay" in out
    assert "2 of 6 leaves decay (296 of 318 parameters)" in out


def test_bench_dispatches_lazily_or_explains(monkeypatch, capsys):
    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(cli.importlib, "import_module", missing)
    assert cli.main(["bench", "--anything"]) == 2
    assert "optim_chain.bench is not installed" in capsys.readouterr().err


def test_bench_passes_its_arguments(monkeypatch):
    import sys
    import types

    seen = []
    fake = types.ModuleType("optim_chain.bench")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "optim_chain.bench", fake)
    assert cli.main(["bench", "--config", "x.yaml", "--quick"]) == 0
    assert seen == [["--config", "x.yaml", "--quick"]]
