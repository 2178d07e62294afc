"""Hyperparameters changed at run time through optax.inject_hyperparams: effective, compiled once."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim_chain as oc

STEPS = 100


def _params():
    return {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.linspace(0.5, 1.0, 3)}


def _grads(t):
    return jax.tree.map(lambda x: jnp.sin(3.0 * x + 0.37 * t), _params())


def _schedule(t):
    """The values set by hand before step ``t`` (not an optax schedule: the loop pushes them in)."""
    return {
        "learning_rate": 1e-2 * (1.5 + np.sin(0.3 * t)),
        "weight_decay": 0.1 * (1.0 + np.cos(0.2 * t)),
        "b1": 0.85 + 0.1 * np.sin(0.1 * t),
        "b2": 0.99 + 0.009 * np.cos(0.05 * t),
        "momentum": 0.45 + 0.45 * np.sin(0.15 * t),
    }


def _run(opt, names):
    """100 jitted steps, each with new values for ``names`` written into the state.

    Returns the params after every step and how often the step function was traced.
    """
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(None)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    params = _params()
    state = opt.init(params)
    history = []
    for t in range(STEPS):
        values = _schedule(t)
        hyperparams = dict(state.hyperparams)
        for name in names:
            hyperparams[name] = jnp.asarray(values[name], hyperparams[name].dtype)
        state = state._replace(hyperparams=hyperparams)
        params, state = step(params, state, _grads(t))
        history.append(params)
    return history, len(traces)


def _adamw_reference(wd_mask):
    """AdamW written out in NumPy with the per-step values of ``_schedule``."""
    params = {k: np.asarray(v) for k, v in _params().items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    history = []
    for t in range(STEPS):
        h = _schedule(t)
        for k in params:
            g = np.asarray(_grads(t)[k])
            m[k] = h["b1"] * m[k] + (1 - h["b1"]) * g
            v[k] = h["b2"] * v[k] + (1 - h["b2"]) * g * g
            mhat = m[k] / -np.expm1((t + 1) * np.log(h["b1"]))
            vhat = v[k] / -np.expm1((t + 1) * np.log(h["b2"]))
            step = h["learning_rate"] * mhat / (np.sqrt(vhat) + 1e-8)
            decay = h["learning_rate"] * h["weight_decay"] * params[k] if wd_mask[k] else 0.0
            params[k] = params[k] - step - decay
        history.append(dict(params))
    return history


def test_adamw_hyperparameters_change_every_step_without_recompiling():
    opt = optax.inject_hyperparams(oc.adamw)(learning_rate=1e-2, weight_decay=0.1, b1=0.9, b2=0.999)
    history, traces = _run(opt, ["learning_rate", "weight_decay", "b1", "b2"])
    assert traces == 1
    reference = _adamw_reference({"w": True, "b": True})
    for t in (0, 1, 49, STEPS - 1):
        chex.assert_trees_all_close(history[t], reference[t], rtol=1e-10, atol=1e-12)


def test_mask_and_skip_nonfinite_stay_static():
    """A mask is callable, so optax would take it for a schedule: it goes in ``static_args``."""
    opt = optax.inject_hyperparams(oc.adamw, static_args=("mask",))(
        learning_rate=1e-2,
        weight_decay=0.1,
        b1=0.9,
        b2=0.999,
        mask=oc.masks.ndim_at_least(2),
        skip_nonfinite=True,
    )
    history, traces = _run(opt, ["learning_rate", "weight_decay", "b1", "b2"])
    assert traces == 1
    reference = _adamw_reference({"w": True, "b": False})
    chex.assert_trees_all_close(history[-1], reference[-1], rtol=1e-10, atol=1e-12)


def test_sgd_momentum_injected_from_zero():
    """momentum=0.0 given as an array still builds the buffer, so it can be raised later."""
    opt = optax.inject_hyperparams(oc.sgdw)(learning_rate=0.1, weight_decay=0.1, momentum=0.0)
    assert int(opt.init(_params()).inner_state[0].trace["w"].size) == 6
    history, traces = _run(opt, ["learning_rate", "weight_decay", "momentum"])
    assert traces == 1
    params = {k: np.asarray(v) for k, v in _params().items()}
    buffer = {k: np.zeros_like(v) for k, v in params.items()}
    for t in range(STEPS):
        h = _schedule(t)
        for k in params:
            buffer[k] = h["momentum"] * buffer[k] + np.asarray(_grads(t)[k])
            params[k] = (
                params[k]
                - h["learning_rate"] * buffer[k]
                - h["learning_rate"] * h["weight_decay"] * params[k]
            )
    chex.assert_trees_all_close(history[-1], params, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "factory, kwargs, names",
    [
        (
            oc.rmsprop,
            {"learning_rate": 1e-2, "centered": True, "momentum": 0.5},
            ["learning_rate", "momentum"],
        ),
        (oc.adagrad, {"learning_rate": 0.1}, ["learning_rate"]),
        (oc.adam_l2, {"learning_rate": 1e-2, "weight_decay": 0.1}, ["learning_rate", "weight_decay", "b1"]),
    ],
    ids=["rmsprop", "adagrad", "adam_l2"],
)
def test_other_presets_accept_injected_hyperparameters(factory, kwargs, names):
    opt = optax.inject_hyperparams(factory)(**kwargs)
    history, traces = _run(opt, names)
    assert traces == 1
    chex.assert_tree_all_finite(history[-1])
    assert not np.allclose(history[-1]["w"], _params()["w"])


def test_injected_values_are_validated_when_known():
    """At init the injected values are concrete arrays and get the same checks as numbers."""
    with pytest.raises(ValueError, match="learning_rate"):
        optax.inject_hyperparams(oc.adamw)(learning_rate=-1.0).init(_params())
    with pytest.raises(ValueError, match="b1"):
        optax.inject_hyperparams(oc.adam)(learning_rate=1e-3, b1=1.0).init(_params())
