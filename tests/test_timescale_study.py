"""The timescale study (Wang & Aitchison): its estimator, statistics, verdicts, config and command."""

from __future__ import annotations

import json

import numpy as np
import pytest

import optim_chain as oc
from optim_chain.lab import build, cli, config, timescale_study

pytest.importorskip("mnist1d", reason="mnist1d is not installed: pip install -e '.[lab]'")

LOG_TAUS = np.log2([0.5, 1, 2, 4, 8, 16, 32])


@pytest.mark.parametrize("vertex", [-0.2, 0.0, 1.3, 2.5, 3.9])
def test_best_timescale_is_the_vertex_of_a_sampled_parabola(vertex):
    errors = 0.1 + 0.01 * (LOG_TAUS - vertex) ** 2
    assert timescale_study.best_log_timescale(errors, LOG_TAUS) == pytest.approx(vertex)


def test_best_timescale_at_an_edge_or_on_a_flat_stretch_is_the_grid_point():
    assert timescale_study.best_log_timescale(np.linspace(0.5, 0.1, 7), LOG_TAUS) == LOG_TAUS[-1]
    flat = np.array([0.3, 0.2, 0.2, 0.2, 0.25, 0.3, 0.4])  # a tie: half way into the flat stretch
    assert timescale_study.best_log_timescale(flat, LOG_TAUS) == pytest.approx(0.5)
    with_nan = np.array([0.3, np.nan, 0.1, 0.2, 0.25, 0.3, 0.4])
    assert timescale_study.best_log_timescale(with_nan, LOG_TAUS) == LOG_TAUS[2]


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (-0.4, 0.3, "reproduced"),  # holds 0, excludes -1
        (-1.5, 0.3, "inconclusive"),  # holds both
        (-1.4, -0.6, "not reproduced"),  # excludes 0
        (0.2, 0.9, "not reproduced"),
        (float("nan"), 0.1, "inconclusive"),
    ],
)
def test_verdict_from_the_slope_interval(low, high, expected):
    assert timescale_study.verdict(low, high) == expected


def _synthetic(best_log2_tau_per_size: list[float], seeds: int = 10, noise: float = 0.002) -> np.ndarray:
    rng = np.random.default_rng(0)
    centre = np.asarray(best_log2_tau_per_size)[None, :, None]
    clean = 0.1 + 0.01 * (LOG_TAUS[None, None, :] - centre) ** 2
    return clean + noise * rng.standard_normal((seeds, len(best_log2_tau_per_size), len(LOG_TAUS)))


def test_analysis_finds_a_fixed_timescale_and_a_fixed_lambda():
    sizes, taus = np.array([1000, 2000, 4000]), 2.0**LOG_TAUS
    fixed_epochs = timescale_study.analyse(_synthetic([2.0, 2.0, 2.0]), sizes, taus)
    assert fixed_epochs["slope"]["mean"] == pytest.approx(0.0, abs=0.1)
    assert fixed_epochs["verdict"] == "reproduced"
    assert fixed_epochs["best_tau_epoch"] == pytest.approx([4.0, 4.0, 4.0], rel=0.1)
    fixed_lambda = timescale_study.analyse(_synthetic([3.0, 2.0, 1.0]), sizes, taus)  # halves per doubling
    assert fixed_lambda["slope"]["mean"] == pytest.approx(-1.0, abs=0.1)
    assert fixed_lambda["verdict"] == "not reproduced"


def test_weight_decays_use_the_librarys_timescale_helper():
    where, set_by_study = config.Where("x"), ("weight_decay",)
    spec = config.parse_optimizer({"preset": "adamw", "learning_rate": 1e-2}, where, set_by_study)
    decays = timescale_study.weight_decays(spec, np.array([1.0, 4.0]), 40.0)
    assert decays == pytest.approx([1 / (1e-2 * 40), 1 / (1e-2 * 160)])
    for tau, decay in zip([1.0, 4.0], decays):
        assert oc.timescale_of(decay, 1e-2) == pytest.approx(tau * 40)
    paper = config.parse_optimizer(
        {"preset": "adamw", "learning_rate": 1e-2, "decay_scaling": "schedule"}, where, set_by_study
    )
    assert timescale_study.weight_decays(paper, np.array([1.0]), 40.0) == pytest.approx([1 / 40])


def test_the_default_study_loads_and_checks():
    experiment = config.load_experiment(None, "timescale")
    build.check(experiment)
    assert experiment.study.train_sizes == (1000, 2000, 4000)
    assert experiment.data["evaluation_split"] == "validation"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("study: {train_sizes: [100], epochs: 1, timescales: [1, 2, 4]}\n", "must list two or more sizes"),
        ("study: {train_sizes: [100, 200], timescales: [1, 2, 4]}\n", "epochs is missing"),
        ("study: {train_sizes: [100, 200], epochs: 1, timescales: [4, 2, 1]}\n", "three or more increasing"),
        (
            "study: {train_sizes: [100, 200], epochs: 1, timescales: [1, 2, 4], seeds: 3}\n",
            "'study.seeds' is unknown",
        ),
        ("data: {name: mnist1d, train_size: 100, evaluation_split: validation}\n", "by study.train_sizes"),
        (
            "optimizers: {adamw: {preset: adamw, learning_rate: {schedule: constant, value: 0.1}}}"
            "\n",
            "must be a number: each timescale becomes a weight decay",
        ),
        (
            "optimizers: {adamw: {preset: adamw, learning_rate: 0.1, weight_decay: 0.1}}\n",
            "set by the experiment",
        ),
    ],
)
def test_bad_studies_are_one_line_errors(tmp_path, capsys, text, message):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    assert cli.main(["timescale", "--config", str(path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err and str(path) in err


def test_the_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "runs"
    arguments = ["--seeds", "3", "--set", "study.epochs=1", "--set", "study.train_sizes=[100,200]"]
    arguments += ["--set", "study.timescales=[1,4,16]", "--set", "data.num_samples=600"]
    assert cli.main(["timescale", *arguments, "--out", str(out), "--no-progress"]) == 0
    run = out / "mnist1d_timescale"
    assert {p.name for p in run.iterdir()} == {"summary.md", "metrics.json", "timescale.png"}
    metrics = json.loads((run / "metrics.json").read_text())
    result = metrics["optimizers"]["adamw"]
    assert result["steps"] == [1, 2] and set(result["metrics"]) == {"error", "loss"}
    for metric in result["metrics"].values():
        assert np.asarray(metric["values"]).shape == (3, 2, 3)
        assert metric["verdict"] in ("reproduced", "not reproduced", "inconclusive")
        assert len(metric["slope"]["ci95"]) == 2 and len(metric["best_weight_decay"]) == 2
    assert "| adamw | validation error | 100 |" in (run / "summary.md").read_text()


def test_too_large_a_training_set_is_one_line(tmp_path, capsys):
    arguments = ["--set", "data.num_samples=600", "--set", "study.train_sizes=[100,5000]", "--seeds", "2"]
    assert cli.main(["timescale", *arguments, "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "study.train_sizes' asks for 5000 training examples" in err and "\n" not in err
