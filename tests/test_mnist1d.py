"""MNIST-1D generated locally, its validation split, the paper's CNN, and the lab's error bars."""

from __future__ import annotations

import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim_chain.lab import build, config, data, models, statistics

pytest.importorskip("mnist1d", reason="mnist1d is not installed: pip install -e '.[lab]'")


@pytest.fixture(scope="module")
def default():
    return data.mnist1d()


def test_generated_locally_without_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("MNIST-1D must be generated locally, not downloaded")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    ds = data.mnist1d(num_samples=500)
    assert ds.x_train.shape[1] == 40


def test_splits_shapes_and_dtypes(default):
    assert default.x_train.shape == (3200, 40) and default.x_val.shape == (800, 40)
    assert default.x_test.shape == (1000, 40)
    assert default.x_train.dtype == np.float32 and default.y_train.dtype == np.int32
    assert set(np.unique(default.y_train)) == set(range(10)) and default.num_classes == 10


def test_deterministic_per_seed_and_different_across_seeds(default):
    again = data.mnist1d()
    np.testing.assert_array_equal(default.x_train, again.x_train)
    np.testing.assert_array_equal(default.y_test, again.y_test)
    other = data.mnist1d(seed=7)
    assert not np.array_equal(default.x_train, other.x_train)


def test_the_test_split_is_unread_when_evaluating_on_validation(default):
    tuning = data.mnist1d(evaluation_split="validation")
    np.testing.assert_array_equal(tuning.x_test, default.x_val)
    np.testing.assert_array_equal(tuning.x_train, default.x_train)
    # no example of the real test split is anywhere in the tuning data set
    rows = {r.tobytes() for r in default.x_test}
    for split in (tuning.x_train, tuning.x_test, tuning.x_val):
        assert not any(r.tobytes() in rows for r in split)


def test_no_validation_split_trains_on_the_published_4000(default):
    published = data.mnist1d(validation_fraction=0.0)
    assert published.x_train.shape == (4000, 40) and published.x_val.shape == (0, 40)
    np.testing.assert_array_equal(published.x_train, np.concatenate([default.x_train, default.x_val]))
    np.testing.assert_array_equal(published.x_test, default.x_test)


def test_train_size_keeps_a_prefix(default):
    small = data.mnist1d(train_size=1000)
    np.testing.assert_array_equal(small.x_train, default.x_train[:1000])
    np.testing.assert_array_equal(small.x_val, default.x_val)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match=r"validation_fraction must lie in \[0, 1\)"):
        data.mnist1d(validation_fraction=1.0)
    with pytest.raises(ValueError, match="needs a validation split"):
        data.mnist1d(validation_fraction=0.0, evaluation_split="validation")
    with pytest.raises(ValueError, match="evaluation_split must be one of test, validation"):
        data.mnist1d(evaluation_split="train")
    with pytest.raises(ValueError, match=r"train_size must lie in \[1, 3200\]"):
        data.mnist1d(train_size=5000)


def test_the_papers_cnn():
    params = models.CNN().init(jax.random.key(0), jnp.zeros((2, 40)))["params"]
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes["Conv_0"]["kernel"] == (5, 1, 25) and shapes["Dense_0"]["kernel"] == (125, 10)
    assert sum(x.size for x in jax.tree.leaves(params)) == 5210
    logits = models.CNN().apply({"params": params}, jnp.ones((3, 40)))
    assert logits.shape == (3, 10)


def test_configs_read_mnist1d_and_the_cnn(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(
        "data: {name: mnist1d, seed: 3, evaluation_split: validation}\nmodel: {name: cnn, channels: 8}\n"
        "training: {steps: 2, batch_size: 4, eval_every: 2, seeds: 2}\n"
        "optimizers: {adam: {preset: adam, learning_rate: 1.0e-2}}\n"
    )
    experiment = config.load_experiment(path, "compare", ["data.seed=4"])
    assert experiment.data == {"name": "mnist1d", "seed": 4, "evaluation_split": "validation"}
    model = build.model(experiment, build.load_data(experiment))
    assert isinstance(model, models.CNN) and model.channels == 8
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {name: digits}\nmodel: {name: cnn}\n")
    with pytest.raises(config.ConfigError, match="'cnn', which needs data.name 'mnist1d', not 'digits'"):
        config.load_experiment(bad, "compare")
    bad.write_text("data: {name: mnist1d, evaluation_split: train}\n")
    with pytest.raises(config.ConfigError, match="valid choices: test, validation"):
        config.load_experiment(bad, "compare")


# ---------------------------------------------------------------------------------- error bars


def test_t_interval_against_a_known_case():
    """Student's t for n = 5 at 95%: t = 2.776445; values 1..5 have mean 3 and sd sqrt(2.5)."""
    interval = statistics.mean_interval(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    half = 2.7764451051977987 * np.sqrt(2.5) / np.sqrt(5)
    assert interval.mean == 3.0 and interval.seeds == 5
    assert interval.low == pytest.approx(3 - half, rel=1e-12) and interval.high == pytest.approx(3 + half)
    assert interval.as_dict() == {"mean": 3.0, "ci95": [interval.low, interval.high], "seeds": 5}


def test_paired_difference_uses_the_pairing():
    """Two optimizers on the same seeds: a constant offset is certain even when seeds vary a lot."""
    a = np.array([0.9, 0.5, 0.7, 0.95, 0.6])
    difference = statistics.paired_difference(a + 0.01 + np.array([0, 1e-4, -1e-4, 0, 0]), a)
    assert difference.excludes_zero() and difference.low > 0.009
    unpaired = statistics.mean_interval(a + 0.01)
    assert unpaired.high - unpaired.low > 100 * (difference.high - difference.low)
    with pytest.raises(ValueError, match="one value per seed on both sides"):
        statistics.paired_difference(a, a[:3])
    with pytest.raises(ValueError, match="at least 2 seeds"):
        statistics.mean_interval(np.array([1.0]))


def test_bootstrap_is_reproducible_and_covers_the_mean():
    rng = np.random.default_rng(0)
    per_seed = rng.normal(1.0, 0.1, size=(20, 3))
    stat = lambda x: float(x.mean())
    first = statistics.bootstrap(stat, per_seed)
    assert first == statistics.bootstrap(stat, per_seed)
    assert first.low < 1.0 < first.high
    assert first.low < first.mean < first.high


def test_the_cnn_equals_flax_convolutions():
    """CNN's windowed matrix products are nn.Conv: the same initial parameters and outputs."""
    from flax import linen as nn

    class Reference(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = x[..., None]
            for kernel in (5, 3, 3):
                x = nn.relu(nn.Conv(25, (kernel,), strides=(2,), padding=[(1, 1)])(x))
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    x = jax.random.normal(jax.random.key(1), (7, 40))
    ours = models.CNN().init(jax.random.key(3), x)["params"]
    reference = Reference().init(jax.random.key(3), x)["params"]
    assert jax.tree.structure(ours) == jax.tree.structure(reference)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        models.CNN().apply({"params": ours}, x), Reference().apply({"params": ours}, x), rtol=1e-5, atol=1e-5
    )
