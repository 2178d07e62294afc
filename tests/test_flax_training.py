"""Flax training: vmapped runs equal single runs, masks reach linen and NNX params, diagnostics."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from hypothesis import given, settings
from hypothesis import strategies as st

import optim_chain as oc
from optim_chain import masks
from optim_chain.lab import data, diagnostics, models, training


@pytest.fixture(scope="module")
def digits():
    ds = data.digits(test_fraction=0.5)
    return ds._replace(x_test=ds.x_test[:64], y_test=ds.y_test[:64])


def _adam_l2(hp):
    return oc.adam_l2(hp["learning_rate"], hp["weight_decay"], mask=masks.DEFAULT_DECAY)


def test_vmapped_grid_equals_runs_one_at_a_time(digits):
    """Traced hyperparameters under vmap give the run that Python floats give alone; seeds matter."""
    trainer = training.Trainer(models.MLP(hidden=(8,)), digits, _adam_l2, batch_size=8, chunk_steps=3)
    hyperparams = {
        "learning_rate": np.array([1e-2, 1e-2, 3e-3], np.float32),
        "weight_decay": np.array([0.1] * 3),
    }
    batched = trainer.run(hyperparams, [0, 0, 1], steps=6)
    assert batched.test_loss.shape == (3, 2) and list(batched.steps) == [3, 6]
    runs = [training.unstack(batched.final.params, i) for i in range(3)]
    chex.assert_trees_all_close(runs[0], runs[1])
    assert not np.allclose(runs[0]["Dense_0"]["kernel"], runs[2]["Dense_0"]["kernel"])

    fixed = training.Trainer(
        models.MLP(hidden=(8,)),
        digits,
        lambda hp: oc.adam_l2(3e-3, 0.1, mask=masks.DEFAULT_DECAY),
        batch_size=8,
        chunk_steps=3,
    )
    single = fixed.run({}, [1], steps=6, batched=False)
    chex.assert_trees_all_close(runs[2], training.unstack(single.final.params, 0), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(batched.test_loss[2], single.test_loss[0], rtol=2e-5)


def _decay_only():
    """AdamW with lr=0 and lambda not scaled by lr: only the decay moves the parameters."""
    return oc.adamw(0.0, weight_decay=0.25, mask=masks.DEFAULT_DECAY, decay_scaling="none")


def _check_only_weights_decayed(before, after, steps):
    flags = masks.resolve_mask(masks.DEFAULT_DECAY, before)
    assert any(flags) and not all(flags)
    for flag, b, a in zip(flags, jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b) * (0.75**steps if flag else 1.0), rtol=1e-5)


def _zeros(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def test_mask_reaches_linen_train_state_params():
    model = models.Transformer(vocab_size=11, max_len=6, d_model=8, num_heads=2, num_layers=1)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 6), jnp.int32))["params"]
    params = jax.tree.map(
        lambda p: np.asarray(p) + 0.5, params
    )  # non-zero biases and scales, to see they stay
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=_decay_only())
    step = jax.jit(lambda state: state.apply_gradients(grads=_zeros(state.params)))
    for _ in range(2):
        state = step(state)
    _check_only_weights_decayed(params, state.params, 2)


def test_mask_reaches_nnx_optimizer_params():
    model = models.NNXTransformer(11, max_len=6, d_model=8, num_heads=2, num_layers=1, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda p: np.asarray(p) + 0.5, params))
    before = jax.tree.map(np.array, nnx.state(model, nnx.Param))
    optimizer = nnx.Optimizer(model, _decay_only(), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        optimizer.update(model, _zeros(nnx.state(model, nnx.Param)))

    for _ in range(2):
        step(model, optimizer)
    _check_only_weights_decayed(before, nnx.state(model, nnx.Param), 2)


def test_nnx_loop_learns_the_digits(digits):
    model = models.NNXMLP(64, hidden=(16,), rngs=nnx.Rngs(0))
    history = training.train_nnx(
        model, oc.adamw(1e-2, 1e-2, mask=masks.DEFAULT_DECAY), digits, 60, 32, eval_every=30
    )
    assert history["step"] == [30, 60]
    assert history["test_accuracy"][-1] > 0.5  # ten classes: chance is 0.1


def test_effective_decay_reads_vhat_from_the_state(digits):
    trainer = training.Trainer(
        models.MLP(hidden=(8,)), digits, lambda hp: oc.adam_l2(1e-2, 0.1, mask=masks.DEFAULT_DECAY), 8, 5
    )
    result = trainer.run({}, [0], steps=5)
    params, state = training.unstack(result.final.params, 0), training.unstack(result.final.opt_state, 0)
    transform = oc.adam_l2(1e-2, 0.1, mask=masks.DEFAULT_DECAY)
    decay = diagnostics.effective_decay(transform, state, params)
    nu = optax.tree_utils.tree_get(state, "nu")
    vhat = [nu["Dense_0"]["kernel"], nu["Dense_1"]["kernel"]]
    expected = np.concatenate([(1e-3 / (np.sqrt(v / (1 - 0.999**5)) + 1e-8)).ravel() for v in vhat])
    assert decay.kind == "coupled"
    np.testing.assert_allclose(decay.values, expected, rtol=1e-5)
    assert diagnostics.decayed_parameters(transform, params) == (
        64 * 8 + 8 * 10,
        sum(x.size for x in jax.tree.leaves(params)),
    )

    adamw = oc.adamw(1e-2, 0.1, mask=masks.DEFAULT_DECAY)
    adamw_state = adamw.init(params)
    assert diagnostics.effective_decay(adamw, adamw_state, params).values.tolist() == pytest.approx([1e-3])
    assert diagnostics.effective_decay(oc.adam(1e-2), oc.adam(1e-2).init(params), params) is None
    assert diagnostics.decayed_parameters(oc.adam(1e-2), params)[0] == 0


@settings(max_examples=10, deadline=None)
@given(
    offset=st.floats(-1.0, 1.0),
    curvature=st.floats(0.5, 3.0),
)
def test_separability_of_synthetic_grids(offset, curvature):
    """A valley along lr*wd = const has slope -1 and interaction; f(lr) + g(wd) has neither."""
    log_lr = np.linspace(-4, -1, 7)
    log_wd = np.linspace(-6, 0, 13)
    a, b = np.meshgrid(log_lr, log_wd, indexing="ij")
    diagonal = 0.1 + curvature * (a + b + 5 + offset) ** 2
    separable = 0.1 + curvature * ((a + 2.5) ** 2 + (b + 3 + offset) ** 2)
    lrs, wds = 10**log_lr, 10**log_wd
    coupled = diagnostics.separability(diagonal, lrs, wds, worst=1e9, tolerance=1e9)
    apart = diagnostics.separability(separable, lrs, wds, worst=1e9, tolerance=1e9)
    assert coupled.slope == pytest.approx(-1.0, abs=0.1)
    assert apart.slope == pytest.approx(0.0, abs=1e-9) and apart.spread_decades == 0.0
    assert coupled.interaction > 0.1 and apart.interaction < 1e-9


def test_separability_clips_diverged_cells():
    grid = np.array([[0.5, 0.2], [np.nan, 0.3]])
    sep = diagnostics.separability(grid, np.array([1e-3, 1e-2]), np.array([1e-4, 1e-3]), worst=2.3)
    assert sep.best_weight_decay.tolist() == [1e-3, 1e-3]
    assert np.isfinite(sep.interaction)


def test_text_data_predicts_the_next_character():
    text = data.text(seq_len=16, test_fraction=0.1)
    assert text.x_train.shape[1] == 16 and text.num_classes == len(text.vocabulary)
    np.testing.assert_array_equal(text.x_train[:, 1:], text.y_train[:, :-1])
    assert text.x_test.shape[0] < text.x_train.shape[0]
