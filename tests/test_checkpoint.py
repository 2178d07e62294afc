"""Checkpoint with orbax, resume, and get bit for bit the run that was never interrupted."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import optim_chain as oc

TOTAL, INTERRUPT = 10, 5
NAN_STEPS = (2, 7)  # one skipped step before the checkpoint, one after
WEIGHT_DECAY_CHANGE = (6, 0.05)  # a hyperparameter changed by hand after the restart


def _adamw_everything():
    """A schedule, a mask, injected hyperparameters, AMSGrad and non-finite skipping, all at once."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, warmup_steps=3, decay_steps=TOTAL)
    return oc.skip_nonfinite(
        optax.inject_hyperparams(oc.adamw, static_args=("mask",))(
            learning_rate=schedule,
            weight_decay=0.1,
            b1=0.9,
            amsgrad=True,
            mask=oc.default_decay_mask,
            decay_scaling="schedule",
            peak_learning_rate=1e-2,
        )
    )


def _rmsprop_bfloat16_moments():
    return optax.inject_hyperparams(oc.rmsprop)(
        learning_rate=1e-2, centered=True, momentum=0.9, moment_dtype="bfloat16", skip_nonfinite=True
    )


OPTIMIZERS = {"adamw_everything": _adamw_everything, "rmsprop_bfloat16_moments": _rmsprop_bfloat16_moments}


def _init_params(seed):
    rng = np.random.default_rng(seed)

    def dense(fan_in, fan_out):
        kernel = jnp.asarray(rng.normal(size=(fan_in, fan_out)), jnp.float32)
        return {"kernel": kernel, "bias": jnp.zeros(fan_out, jnp.float32)}

    return {"Dense_0": dense(4, 8), "Dense_1": dense(8, 2)}


def _loss(params, x, y):
    h = jnp.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    return jnp.mean((h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"] - y) ** 2)


def _batch(t):
    x = np.random.default_rng(100 + t).normal(size=(16, 4)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1))


def _make_step(opt, traces):
    @jax.jit
    def step(params, state, x, y, poison):
        traces.append(None)
        grads = jax.grad(_loss)(params, x, y)
        grads = jax.tree.map(lambda g: jnp.where(poison, jnp.nan, g), grads)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def _set_weight_decay(state, value):
    """Writes a new weight decay into the inject_hyperparams state, wherever it sits."""
    inner = state.inner_state if isinstance(state, oc.SkipNonfiniteState) else state
    if "weight_decay" not in inner.hyperparams:
        return state
    hyperparams = {
        **inner.hyperparams,
        "weight_decay": jnp.asarray(value, inner.hyperparams["weight_decay"].dtype),
    }
    inner = inner._replace(hyperparams=hyperparams)
    return state._replace(inner_state=inner) if isinstance(state, oc.SkipNonfiniteState) else inner


def _train(step, params, state, start, stop):
    for t in range(start, stop):
        if t == WEIGHT_DECAY_CHANGE[0]:
            state = _set_weight_decay(state, WEIGHT_DECAY_CHANGE[1])
        x, y = _batch(t)
        params, state = step(params, state, x, y, jnp.asarray(t in NAN_STEPS))
    return params, state


def _skipped(state):
    return int(state.skipped if isinstance(state, oc.SkipNonfiniteState) else state.inner_state.skipped)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_interrupted_and_resumed_run_is_bit_identical(name, tmp_path):
    traces = []
    opt = OPTIMIZERS[name]()
    step = _make_step(opt, traces)
    params0 = _init_params(0)

    # the run that is never interrupted
    params, state = _train(step, params0, opt.init(params0), 0, TOTAL)
    assert _skipped(state) == len(NAN_STEPS)

    # the run that stops after INTERRUPT steps and saves everything
    saved_params, saved_state = _train(step, params0, opt.init(params0), 0, INTERRUPT)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", {"params": saved_params, "opt_state": saved_state})
    checkpointer.wait_until_finished()

    # a restart: a new optimizer object, the restore target built from shapes only
    fresh = OPTIMIZERS[name]()
    abstract_params = jax.eval_shape(lambda: _init_params(0))
    target = {"params": abstract_params, "opt_state": jax.eval_shape(fresh.init, abstract_params)}
    restored = ocp.StandardCheckpointer().restore(tmp_path / "ckpt", target)
    chex.assert_trees_all_equal(restored, {"params": saved_params, "opt_state": saved_state})
    chex.assert_trees_all_equal_dtypes(restored, {"params": saved_params, "opt_state": saved_state})

    resumed_params, resumed_state = _train(step, restored["params"], restored["opt_state"], INTERRUPT, TOTAL)
    chex.assert_trees_all_equal(resumed_params, params)
    chex.assert_trees_all_equal(resumed_state, state)
    chex.assert_tree_all_finite(resumed_params)
    assert len(traces) == 1, "a restored state must not retrace the step function"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_holds_only_arrays(name):
    """No functions, masks or schedules in the state: they live in the optimizer, the state is data."""
    opt = OPTIMIZERS[name]()
    state = opt.init(_init_params(0))
    for leaf in jax.tree.leaves(state):
        assert isinstance(leaf, jax.Array), type(leaf)
        assert leaf.dtype.kind in "fiub" or leaf.dtype == jnp.bfloat16
    dtypes = {str(x.dtype) for x in jax.tree.leaves(state)}
    assert "int32" in dtypes
    if name == "rmsprop_bfloat16_moments":
        assert "bfloat16" in dtypes


def test_restore_refuses_a_different_optimizer(tmp_path):
    """Restoring an AdamW state into an SGD target fails loudly instead of mixing states."""
    params = _init_params(0)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", oc.adamw(1e-3).init(params))
    checkpointer.wait_until_finished()
    target = jax.eval_shape(oc.sgd(0.1, momentum=0.9).init, params)
    with pytest.raises(ValueError, match="(?i)structure|tree|mismatch"):
        ocp.StandardCheckpointer().restore(tmp_path / "ckpt", target)
