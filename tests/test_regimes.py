"""The map of regimes: data draws per run, the tuning rule, the sharded run axis, the metrics keys
and the tuned cells that compare reads (tiny MNIST-1D runs; none trains long)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import cpu_devices_env

from optim_chain.lab import build, cli, config, diagnostics, tuning

pytest.importorskip("mnist1d", reason="mnist1d is not installed: pip install -e '.[lab]'")

SWEEP = """
name: tiny
data: {name: mnist1d, seed: 5, evaluation_split: validation, num_samples: 600, train_size: 200}
model: {name: cnn, channels: 8}
training: {steps: 60, batch_size: 16, eval_every: 20, seeds: 2, schedule: cosine, final_seeds: 3}
refine: true
optimizers:
  adam: {preset: adam_l2, grid: {learning_rate: [1.0e-2, 3.0e-2], weight_decay: [0.0]}}
  adam_l2:
    preset: adam_l2
    mask: default
    grid: {learning_rate: [1.0e-2, 3.0e-2, 1.0e+3], weight_decay: [1.0e-4, 1.0e-2]}
  adamw:
    preset: adamw
    mask: default
    decay_scaling: schedule
    grid: {learning_rate: [1.0e-2, 3.0e-2], weight_decay: [1.0e-4, 1.0e-2]}
pairs: [[adam_l2, adamw]]
baseline: {runs: 0}
"""

MAP = """
name: tiny_map
sweep: sweep.yaml
regimes:
  cnn_200: {description: a tiny CNN on 200 examples}
  mlp_200: {description: a tiny MLP, model: {name: mlp, hidden: [8], layer_norm: true}}
"""


def _compare(tuned_file: str, changes: dict[str, str] | None = None) -> str:
    text = f"""
name: tiny_compare
data: {{name: mnist1d, seed: 5, num_samples: 600, train_size: 200}}
model: {{name: cnn, channels: 8}}
training: {{steps: 60, batch_size: 16, eval_every: 20, seeds: 3, first_seed: 1000, schedule: cosine}}
tuned: {{regime: cnn_200, file: {tuned_file}}}
optimizers:
  adam: {{preset: adam}}
  adam_l2: {{preset: adam_l2, mask: default}}
  adamw: {{preset: adamw, mask: default, decay_scaling: schedule}}
"""
    for old, new in (changes or {}).items():
        assert old in text
        text = text.replace(old, new)
    return text


# ------------------------------------------------------------------------------------- draws


def test_each_run_draws_its_own_data_and_the_same_seed_the_same_data(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("MNIST-1D must be generated locally, not downloaded")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    experiment = config.load_experiment(tmp_path / "sweep.yaml", "sweep")
    first, second = build.load_draws(experiment, [0, 1])
    again = build.load_draws(experiment, [0])[0]
    np.testing.assert_array_equal(first.x_train, again.x_train)
    assert not np.array_equal(first.x_train, second.x_train)
    assert build.data_seed(experiment, 1) == 6  # data.seed + run seed
    moved = config.load_experiment(tmp_path / "sweep.yaml", "sweep", ["data.seed=6"])
    np.testing.assert_array_equal(build.load_draws(moved, [0])[0].x_train, second.x_train)
    test = build.load_draws(experiment, [0], "test")[0]
    assert not np.array_equal(test.x_test, first.x_test)  # tuning evaluates on validation


def test_a_run_trains_on_its_own_draw(tmp_path):
    """Runs vmapped with per-run data equal the same runs trained one at a time."""
    import optim_chain as oc
    from optim_chain.lab import models
    from optim_chain.lab.training import Trainer

    (tmp_path / "sweep.yaml").write_text(SWEEP)
    experiment = config.load_experiment(tmp_path / "sweep.yaml", "sweep")
    draws = build.load_draws(experiment, [0, 1])
    trainer = Trainer(models.CNN(channels=4), draws[0], lambda hp: oc.adam(hp["learning_rate"]), 16, 10)
    lr = np.full(2, 1e-2, np.float32)
    together = trainer.run({"learning_rate": lr}, [0, 1], 20, datasets=draws)
    for i in range(2):
        alone = trainer.run({"learning_rate": lr[i]}, [i], 20, batched=False, datasets=draws[i : i + 1])
        np.testing.assert_allclose(together.test_loss[i], alone.test_loss[0], rtol=1e-5)
    shared = trainer.run({"learning_rate": lr}, [0, 1], 20)
    assert not np.allclose(shared.test_loss[1], together.test_loss[1])
    with pytest.raises(ValueError, match="one data set per run"):
        trainer.run({"learning_rate": lr}, [0, 1], 20, datasets=draws[:1])


# -------------------------------------------------------------------------------- the rule


def test_diverged_runs():
    curves = np.array(
        [
            [2.0, 1.0, 0.5],  # trains
            [2.3, 2.3, 2.29],  # learns slowly: bad, not diverged
            [2.0, 1.0, np.nan],  # not finite
            [60.0, 2.3, 2.3],  # blew up in the first interval
            [1.5, 0.8, 2.30],  # collapsed after learning
            [2.3, 2.3, 2.3],  # died at once: a uniform guess at the end
        ]
    )
    final_loss = np.array([0.6, 2.29, 2.3, 2.3, 2.3, 2.3])
    accuracy = np.array([0.8, 0.3, 0.1, 0.1, 0.1, 0.12])
    expected = [False, False, True, True, True, True]
    assert tuning.diverged(curves, final_loss, accuracy, 10).tolist() == expected


def test_a_diverging_cell_is_never_chosen():
    half = np.sqrt(10.0)
    low, mid, high, top = 0.01, 0.01 * half, 0.1, 0.1 * half  # half-decades
    near = 1e-4 * half  # half a decade from 1e-4
    cells = [(lr, wd) for lr in (low, mid, high, top) for wd in (1e-4, near, 1e-1)]
    stable = np.ones(len(cells), bool)
    stable[cells.index((high, 1e-4))] = False  # diverged
    scores = np.full(len(cells), 0.5)
    scores[cells.index((high, 1e-4))] = 0.0  # the best score, on a diverged cell
    scores[cells.index((top, 1e-4))] = 0.01  # trained by luck, past the edge
    scores[cells.index((mid, near))] = 0.02  # half a decade below a divergence, at a near decay
    scores[cells.index((mid, 1e-1))] = 0.03  # the same learning rate, far from the divergence
    allowed = tuning.may_choose(cells, stable)
    assert not allowed[cells.index((high, 1e-4))]
    assert not allowed[cells.index((top, 1e-4))]
    assert not allowed[cells.index((mid, near))] and not allowed[cells.index((mid, 1e-4))]
    assert allowed[cells.index((low, 1e-4))]  # a full decade below: allowed
    assert tuning.choose(scores, allowed) == cells.index((mid, 1e-1))
    assert tuning.choose(scores, np.zeros(len(cells), bool)) is None


def test_a_learning_rate_too_small_to_train_is_not_an_edge():
    """A dead cell below every stable one (too slow) leaves the larger learning rates free."""
    cells = [(1e-4, 0.0), (1e-3, 0.0), (1e-2, 0.0), (1e-1, 0.0), (1.0, 0.0)]
    stable = np.array([False, True, True, False, True])
    assert tuning.may_choose(cells, stable).tolist() == [False, True, True, False, False]


def test_refine_takes_half_steps_and_looks_beyond_an_edge():
    assert tuning.refine([1e-3, 1e-2, 1e-1], 1e-1) == pytest.approx([10**-1.5, 1e-1, 10**-0.5])
    assert tuning.refine([0.0], 0.0) == [0.0]
    cells = tuning.fine_cells([1e-3, 1e-2], [0.0], (1e-3, 0.0))
    assert [wd for _, wd in cells] == [0.0, 0.0, 0.0]
    assert [lr for lr, _ in cells] == pytest.approx([10**-3.5, 1e-3, 10**-2.5])


def test_separability_ignores_cells_that_did_not_train():
    """A separable surface plus diverged cells (all at the worst value) stays separable."""
    lrs, wds = np.logspace(-3, 0, 4), np.logspace(-4, -1, 4)
    surface = 0.1 + 0.02 * np.arange(4)[:, None] + 0.01 * np.arange(4)[None, :]
    trained = np.ones((4, 4), bool)
    trained[3, 2:] = False
    with_divergence = np.where(trained, surface, np.nan)
    assert diagnostics.separability(with_divergence, lrs, wds, 0.9).interaction > 0.1
    clean = diagnostics.separability(with_divergence, lrs, wds, 0.9, trained=trained)
    assert clean.interaction == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------- map, compare, metrics


@pytest.fixture(scope="module")
def tiny_map(tmp_path_factory):
    folder = tmp_path_factory.mktemp("map")
    (folder / "sweep.yaml").write_text(SWEEP)
    (folder / "map.yaml").write_text(MAP)
    out = folder / "runs"
    assert cli.main(["map", "--config", str(folder / "map.yaml"), "--out", str(out), "--no-progress"]) == 0
    return folder, out / "tiny_map"


def test_the_map_tunes_every_regime_and_never_picks_a_diverging_cell(tiny_map):
    folder, run = tiny_map
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["regimes"]) == {"cnn_200", "mlp_200"}
    sweep = json.loads((run / "cnn_200" / "metrics.json").read_text())
    cells = sweep["optimizers"]["adam_l2"]["cells"]
    assert any(c["learning_rate"] == 1e3 and c["diverged_runs"] for c in cells)  # lr 1000 diverges
    for label, result in sweep["optimizers"].items():
        best = result["best"]
        (chosen,) = [
            c
            for c in result["cells"]
            if c["learning_rate"] == best["learning_rate"] and c["weight_decay"] == best["weight_decay"]
        ]
        assert chosen["diverged_runs"] == 0, label
        assert min(result["final"]["seeds"]) >= 1000
        assert min(result["final"]["data_seeds"]) >= 1005  # draws that tuning never saw
    fine = [c for c in sweep["optimizers"]["adamw"]["cells"] if c["learning_rate"] not in (1e-2, 3e-2)]
    assert fine  # the fine stage ran
    assert (run / "cnn_200" / "heatmaps.png").exists() and (run / "summary.md").exists()
    tuned = json.loads((run / "tuned.json").read_text())["regimes"]["cnn_200"]
    assert set(tuned["optimizers"]) == {"adam", "adam_l2", "adamw"}
    assert tuned["best_decayed"] in ("adam_l2", "adamw")


def test_compare_reads_the_tuned_cells_and_repeats_the_maps_test_runs(tiny_map, tmp_path):
    folder, run = tiny_map
    path = tmp_path / "compare.yaml"
    path.write_text(_compare(str(run / "tuned.json")))
    experiment = config.load_experiment(path, "compare")
    tuned = json.loads((run / "tuned.json").read_text())["regimes"]["cnn_200"]["optimizers"]
    assert experiment.optimizers["adamw"].spec["learning_rate"] == tuned["adamw"]["learning_rate"]
    out = tmp_path / "runs"
    assert cli.main(["compare", "--config", str(path), "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "tiny_compare" / "metrics.json").read_text())
    assert metrics["data_draws"] == 3
    for label in ("adam", "adam_l2", "adamw"):
        accuracy = metrics["summary"][label]["test_accuracy"]
        assert set(accuracy) == {"mean", "ci95", "seeds"} and accuracy["seeds"] == 3
    keys = {"adamw - adam_l2", "adamw - adam", "adam_l2 - adam", "best decayed - adam"}
    assert keys <= set(metrics["paired_differences"])
    for name in keys:
        assert {"mean", "ci95", "seeds"} <= set(metrics["paired_differences"][name])
    swept = json.loads((run / "cnn_200" / "metrics.json").read_text())
    difference = metrics["paired_differences"]["adamw - adam_l2"]
    assert difference == swept["paired_differences"]["adamw - adam_l2"]  # every digit
    for label in ("adam", "adam_l2", "adamw"):
        assert (
            metrics["optimizers"][label]["test_accuracy"]
            == swept["optimizers"][label]["final"]["test_accuracy"]
        )
    assert 100 * np.mean(
        np.subtract(
            metrics["optimizers"]["adamw"]["test_accuracy"], metrics["optimizers"]["adam_l2"]["test_accuracy"]
        )
    ) == pytest.approx(difference["mean"], abs=1e-4)


def test_compare_refuses_a_regime_it_does_not_match(tiny_map, tmp_path):
    folder, run = tiny_map
    path = tmp_path / "compare.yaml"
    path.write_text(_compare(str(run / "tuned.json"), {"regime: cnn_200": "regime: cnn_9"}))
    with pytest.raises(
        config.ConfigError, match="'tuned.regime' is 'cnn_9'; valid choices: cnn_200, mlp_200"
    ):
        config.load_experiment(path, "compare")
    path.write_text(_compare(str(run / "tuned.json"), {"channels: 8": "channels: 5"}))
    with pytest.raises(config.ConfigError, match="was tuned with model"):
        config.load_experiment(path, "compare")
    path.write_text(
        _compare(str(run / "tuned.json"), {"{preset: adam}": "{preset: adam, learning_rate: 0.1}"})
    )
    with pytest.raises(config.ConfigError, match="'optimizers.adam.learning_rate' is set by the tuned cell"):
        config.load_experiment(path, "compare")


# ---------------------------------------------------------------------------------- sharding


SHARDED = textwrap.dedent(
    """
    import json, sys
    import numpy as np, jax
    import optim_chain as oc
    from optim_chain.lab import data, models
    from optim_chain.lab.training import Trainer
    draws = [data.mnist1d(seed=s, num_samples=300) for s in range(5)]
    trainer = Trainer(models.CNN(channels=4), draws[0],
                      lambda hp: oc.adamw(hp["learning_rate"], hp["weight_decay"]), 16, 10)
    hp = {"learning_rate": np.geomspace(1e-3, 1e-1, 5).astype(np.float32),
          "weight_decay": np.full(5, 1e-2, np.float32)}
    run = trainer.run(hp, list(range(5)), 20, datasets=draws)
    kernel = run.final.params["Dense_0"]["kernel"]
    print(json.dumps({"devices": len(jax.devices()), "shards": len(kernel.sharding.device_set),
                      "loss": run.test_loss.tolist(), "shape": list(kernel.shape)}))
    """
)


def _sharded_run(devices: int) -> dict:
    env = cpu_devices_env(devices)
    out = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_run_axis_is_sharded_over_every_device():
    """Five runs over 8 virtual CPU devices (padded to 8) equal the same runs on one device."""
    one, eight = _sharded_run(1), _sharded_run(8)
    assert one["devices"] == 1 and eight["devices"] == 8 and eight["shards"] == 8
    assert eight["shape"][0] == 5  # the padding runs are dropped
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-5, atol=1e-6)
