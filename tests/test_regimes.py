"""The map of regimes: data draws per run, the tuning rule, the sharded run axis, the metrics keys
and the tuned cells that compare reads (tiny MNIST-1D runs; none trains long)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from optim_chain.lab import build, cli, config, diagnostics, tuning

pytest.importorskip("mnist1d", reason="mnist1d is not installed: pip install -e '.[lab]'")

SWEEP = """
name: tiny
data: {name: mnist1d, seed: 5, evaluation_split: validation, num_samples: 600, train_size: 200}
model: {name: cnn, channels: 4}
training: {steps: 30, batch_size: 16, eval_every: 10, seeds: 2, schedule: cosine, final_seeds: 3}
refine: true
optimizers:
  adam: {preset: adam_l2, grid: {learning_rate: [1.0e-3, 1.0e-2], weight_decay: [0.0]}}
  adam_l2: {preset: adam_l2, mask: default, grid: {learning_rate: [1.0e-3, 1.0e-2, 1.0e+3], weight_decay: [1.0e-4, 1.0e-2]}}
  adamw: {preset: adamw, mask: default, decay_scaling: schedule, grid: {learning_rate: [1.0e-3, 1.0e-2], weight_decay: [1.0e-4, 1.0e-2]}}
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
model: {{name: cnn, channels: 4}}
training: {{steps: 30, batch_size: 16, eval_every: 10, seeds: 3, first_seed: 1000, schedule: cosine}}
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
    log10 = np.log(10)
    curves = np.array(
        [
            [2.0, 1.0, 0.5],  # trains
            [2.3, 2.3, 2.29],  # learns nothing: bad, not diverged
            [2.0, 1.0, np.nan],  # not finite
            [60.0, 2.3, 2.3],  # blew up in the first interval
            [1.5, 0.8, 2.30],  # collapsed after learning
        ]
    )
    final = np.array([0.6, 2.3, 2.3, 2.3, 2.3])
    assert tuning.diverged(curves, final, 10).tolist() == [False, False, True, True, True]
    assert tuning.BLOW_UP * log10 < 60


def test_a_diverging_cell_is_never_chosen():
    cells = [(lr, wd) for lr in (0.01, 0.1, 1.0, 10.0) for wd in (0.0, 1e-3)]
    # at wd 0: lr 1 diverges, lr 10 trains by luck; at wd 1e-3 every cell trains
    stable = np.array(
        [
            *(True, True),  # lr 0.01
            *(True, True),  # lr 0.1
            *(False, True),  # lr 1
            *(True, True),  # lr 10
        ]
    )
    allowed = tuning.may_choose(cells, stable)
    scores = np.array([0.5, 0.5, 0.2, 0.4, 0.0, 0.3, 0.01, 0.35])
    assert not allowed[4]  # diverged
    assert not allowed[6]  # past the edge: a smaller lr at the same decay diverged
    assert not allowed[2]  # at the edge: the next larger lr diverged
    assert tuning.choose(scores, allowed) == 5  # the best cell with a margin on its row
    assert tuning.choose(scores, np.zeros(8, bool)) is None


def test_refine_takes_half_steps_and_looks_beyond_an_edge():
    assert tuning.refine([1e-3, 1e-2, 1e-1], 1e-1) == pytest.approx([10**-1.5, 1e-1, 10**-0.5])
    assert tuning.refine([0.0], 0.0) == [0.0]
    cells = tuning.fine_cells([1e-3, 1e-2], [0.0], (1e-3, 0.0))
    assert cells == pytest.approx([(10**-3.5, 0.0), (1e-3, 0.0), (10**-2.5, 0.0)])


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
            c for c in result["cells"]
            if c["learning_rate"] == best["learning_rate"] and c["weight_decay"] == best["weight_decay"]
        ]
        assert chosen["diverged_runs"] == 0, label
        assert min(result["final"]["seeds"]) >= 1000
        assert min(result["final"]["data_seeds"]) >= 1005  # draws that tuning never saw
    fine = [c for c in sweep["optimizers"]["adamw"]["cells"] if c["learning_rate"] not in (1e-3, 1e-2)]
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
        assert metrics["optimizers"][label]["test_accuracy"] == swept["optimizers"][label]["final"]["test_accuracy"]
    assert 100 * np.mean(
        np.subtract(metrics["optimizers"]["adamw"]["test_accuracy"], metrics["optimizers"]["adam_l2"]["test_accuracy"])
    ) == pytest.approx(difference["mean"])


def test_compare_refuses_a_regime_it_does_not_match(tiny_map, tmp_path):
    folder, run = tiny_map
    path = tmp_path / "compare.yaml"
    path.write_text(_compare(str(run / "tuned.json"), {"regime: cnn_200": "regime: cnn_9"}))
    with pytest.raises(config.ConfigError, match="'tuned.regime' is 'cnn_9'; valid choices: cnn_200, mlp_200"):
        config.load_experiment(path, "compare")
    path.write_text(_compare(str(run / "tuned.json"), {"channels: 4": "channels: 5"}))
    with pytest.raises(config.ConfigError, match="was tuned with model"):
        config.load_experiment(path, "compare")
    path.write_text(_compare(str(run / "tuned.json"), {"{preset: adam}": "{preset: adam, learning_rate: 0.1}"}))
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
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_run_axis_is_sharded_over_every_device():
    """Five runs over 8 virtual CPU devices (padded to 8) equal the same runs on one device."""
    one, eight = _sharded_run(1), _sharded_run(8)
    assert one["devices"] == 1 and eight["devices"] == 8 and eight["shards"] == 8
    assert eight["shape"][0] == 5  # the padding runs are dropped
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-5, atol=1e-6)
