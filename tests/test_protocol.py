"""The lab's protocol: cosine learning rates, tuning on the validation split, the test split read
once at the tuned point, error bars and verdicts (tiny MNIST-1D runs)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import optax
import pytest

from optim_chain.lab import build, cli, config, data

pytest.importorskip("mnist1d", reason="mnist1d is not installed: pip install -e '.[lab]'")

GRID = "{learning_rate: [1.0e-3, 1.0e-2], weight_decay: [1.0e-4, 1.0e-2]}"
TINY_SWEEP = f"""
name: tiny
data: {{name: mnist1d, evaluation_split: validation, num_samples: 600}}
model: {{name: cnn, channels: 4}}
training: {{steps: 6, batch_size: 16, eval_every: 6, seeds: 3, schedule: cosine, final_seeds: 3}}
optimizers:
  adam_l2: {{preset: adam_l2, mask: default, grid: {GRID}}}
  adamw: {{preset: adamw, mask: default, decay_scaling: schedule, grid: {GRID}}}
pairs: [[adam_l2, adamw]]
baseline: {{runs: 0}}
"""

TINY_COMPARE = """
name: tiny
data: {name: mnist1d, num_samples: 600}
model: {name: cnn, channels: 4}
training: {steps: 6, batch_size: 16, eval_every: 3, seeds: 3, schedule: cosine}
optimizers:
  adam_l2: {preset: adam_l2, learning_rate: 1.0e-2, weight_decay: 1.0e-3, mask: default}
  adamw: {preset: adamw, learning_rate: 1.0e-2, weight_decay: 1.0e-3, mask: default, decay_scaling: schedule}
"""


def _write(tmp_path, text):
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


def test_the_sweep_tunes_on_validation_and_reads_the_test_split_once(tmp_path, monkeypatch):
    calls = []
    original = data.mnist1d

    @functools.wraps(original)  # the config reads the loader's keywords from its signature
    def recording(**kwargs):
        calls.append((kwargs.get("evaluation_split", "test"), kwargs["seed"]))
        return original(**kwargs)

    monkeypatch.setitem(data.LOADERS, "mnist1d", recording)
    out = tmp_path / "runs"
    assert (
        cli.main(["sweep", "--config", str(_write(tmp_path, TINY_SWEEP)), "--out", str(out), "--no-progress"])
        == 0
    )
    # tuning loads its 3 draws (data seeds 42, 43, 44) evaluated on validation; only the runs at the
    # tuned cells, on draws 1000 higher that tuning never saw, read a test split
    assert calls[:3] == [("validation", 42), ("validation", 43), ("validation", 44)]
    assert {seed for split, seed in calls if split == "validation"} == {42, 43, 44}
    assert {seed for split, seed in calls if split == "test"} == {1042, 1043, 1044}
    metrics = json.loads((out / "tiny" / "metrics.json").read_text())
    for label in ("adam_l2", "adamw"):
        result = metrics["optimizers"][label]
        final = result["final"]
        assert final["learning_rate"] == result["best"]["learning_rate"]
        assert final["weight_decay"] == result["best"]["weight_decay"]
        assert final["test_accuracy_ci95"]["seeds"] == 3 and len(final["test_accuracy_ci95"]["ci95"]) == 2
        assert min(final["seeds"]) >= 1000  # seeds that tuning never used
        assert set(result["separability_ci95"]) == {"slope", "interaction"}
    claims = metrics["claims"]
    assert [c["verdict"] in ("reproduced", "not reproduced", "inconclusive") for c in claims] == [True, True]
    summary = (out / "tiny" / "summary.md").read_text()
    assert "test accuracy [95% CI]" in summary and "## Paired differences in test accuracy" in summary
    assert "## Verdicts" in summary


def test_compare_reports_intervals_and_paired_differences(tmp_path):
    out = tmp_path / "runs"
    assert (
        cli.main(
            ["compare", "--config", str(_write(tmp_path, TINY_COMPARE)), "--out", str(out), "--no-progress"]
        )
        == 0
    )
    metrics = json.loads((out / "tiny" / "metrics.json").read_text())
    for label in ("adam_l2", "adamw"):
        accuracy = metrics["summary"][label]["test_accuracy"]
        assert set(accuracy) == {"mean", "ci95", "seeds"} and accuracy["seeds"] == 3
        low, high = accuracy["ci95"]
        assert low <= accuracy["mean"] <= high
    assert set(metrics["paired_differences"]) == {"adamw - adam_l2"}
    # under a cosine the decay is read at the peak (step 0), where the paper's form removes lambda
    assert metrics["optimizers"]["adamw"]["effective_decay"]["min"] == pytest.approx(1e-3)


def test_cosine_schedule_wraps_each_learning_rate(tmp_path):
    experiment = config.load_experiment(_write(tmp_path, TINY_COMPARE), "compare")
    adamw = build.scheduled_optimizer(experiment.optimizers["adamw"], "cosine", 6)
    lr_part = adamw.parts[3]
    assert lr_part.name == "scale_by_learning_rate" and callable(lr_part.hyperparams["learning_rate"])
    schedule = optax.cosine_decay_schedule(1e-2, 6)
    for step in (0, 3, 6):
        assert float(lr_part.hyperparams["learning_rate"](step)) == pytest.approx(float(schedule(step)))
    decay = adamw.parts[-1]
    assert float(decay.hyperparams["multiplier"](0)) == pytest.approx(1.0)  # lr / peak at the peak
    assert float(decay.hyperparams["multiplier"](3)) == pytest.approx(0.5)


def test_cosine_needs_a_number_for_the_learning_rate(tmp_path):
    text = TINY_COMPARE.replace(
        "adam_l2: {preset: adam_l2, learning_rate: 1.0e-2,",
        "adam_l2: {preset: adam_l2, learning_rate: {schedule: constant, value: 1.0e-2},",
    )
    experiment = config.load_experiment(_write(tmp_path, text), "compare")
    with pytest.raises(config.ConfigError, match="must be a number under training.schedule: cosine"):
        build.scheduled_optimizer(experiment.optimizers["adam_l2"], "cosine", 6)
    with pytest.raises(config.ConfigError, match="'optimizers.adam_l2.learning_rate' must be a number under"):
        build.check(experiment)  # what the command runs before training
    bad = _write(tmp_path, TINY_COMPARE.replace("schedule: cosine", "schedule: linear"))
    with pytest.raises(config.ConfigError, match="valid choices: constant, cosine"):
        config.load_experiment(bad, "compare")


def test_mnist1d_configs_load():
    root = Path(__file__).resolve().parent.parent / "configs"
    sweep = config.load_experiment(root / "mnist1d_sweep.yaml", "sweep")
    assert sweep.data["evaluation_split"] == "validation" and sweep.training.final_seeds >= 10
    assert set(sweep.optimizers) == {"adam", "adam_l2", "adamw", "adamw_torch", "sgd_l2", "sgdw"}
    assert np.all(np.asarray(sweep.grids["adam"].weight_decay) == 0.0)
    compare = config.load_experiment(root / "mnist1d_compare.yaml", "compare")
    assert compare.data.get("evaluation_split", "test") == "test" and compare.training.seeds >= 10
    assert set(compare.optimizers) == set(sweep.optimizers)
    for spec in compare.optimizers.values():
        build.scheduled_optimizer(spec, compare.training.schedule, compare.training.steps)


def test_compare_at_the_tuned_cells_repeats_the_sweeps_test_runs(tmp_path):
    """compare passes lr and lambda in as arrays, as the sweep does: same program, same digits."""
    out = tmp_path / "runs"
    sweep_file = _write(tmp_path, TINY_SWEEP)
    assert cli.main(["sweep", "--config", str(sweep_file), "--out", str(out), "--no-progress"]) == 0
    swept = json.loads((out / "tiny" / "metrics.json").read_text())["optimizers"]
    lines = [
        "name: tiny_compare",
        "data: {name: mnist1d, num_samples: 600}",
        "model: {name: cnn, channels: 4}",
        "training: {steps: 6, batch_size: 16, eval_every: 6, seeds: 3, first_seed: 1000, schedule: cosine}",
        "optimizers:",
    ]
    for label, extra in (("adam_l2", ""), ("adamw", ", decay_scaling: schedule")):
        final = swept[label]["final"]
        lines.append(
            f"  {label}: {{preset: {label}, mask: default, learning_rate: {final['learning_rate']!r}, "
            f"weight_decay: {final['weight_decay']!r}{extra}}}"
        )
    compare_file = tmp_path / "compare.yaml"
    compare_file.write_text("\n".join(lines) + "\n")
    assert cli.main(["compare", "--config", str(compare_file), "--out", str(out), "--no-progress"]) == 0
    compared = json.loads((out / "tiny_compare" / "metrics.json").read_text())["optimizers"]
    for label in ("adam_l2", "adamw"):
        assert compared[label]["test_accuracy"] == swept[label]["final"]["test_accuracy"]
        assert compared[label]["test_loss"] == swept[label]["final"]["test_loss"]  # every digit
        assert swept[label]["final"]["seeds"] == [1000, 1001, 1002]


def test_compare_builds_the_sweeps_program(tmp_path):
    """compare's runs at a cell are the sweep's runs at that cell: the learning rate and decay
    enter the compiled program as arrays in both (as constants XLA would round them otherwise)."""
    from optim_chain.lab import experiments
    from optim_chain.lab.training import Trainer

    text = """
data: {name: mnist1d, num_samples: 600}
model: {name: cnn, channels: 25}
training: {steps: 200, batch_size: 32, eval_every: 100, seeds: 3, first_seed: 1000, schedule: cosine}
optimizers:
  adamw_torch: {preset: adamw, learning_rate: 3.0e-2, weight_decay: 1.0e-2, mask: default}
"""
    experiment = config.load_experiment(_write(tmp_path, text), "compare")
    dataset = build.load_data(experiment)
    model, training = build.model(experiment, dataset), experiment.training
    spec = experiment.optimizers["adamw_torch"]
    seeds = training.first_seed + np.arange(training.seeds)
    hyperparams = experiments._as_arrays(spec, len(seeds))
    assert set(hyperparams) == {"learning_rate", "weight_decay"}
    compared = Trainer(model, dataset, build.run_optimizer(spec, training), 32, 100)
    cell = (("learning_rate", 3e-2), ("weight_decay", 1e-2))
    grid = {k: np.full(len(seeds), v, np.float32) for k, v in cell}
    swept = Trainer(model, dataset, build.run_optimizer(spec, training), 32, 100)
    np.testing.assert_array_equal(
        compared.run(hyperparams, seeds, training.steps).test_loss,
        swept.run(grid, seeds, training.steps).test_loss,
    )
