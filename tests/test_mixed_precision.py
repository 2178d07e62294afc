"""Mixed precision: bfloat16 params with float32 moments, bfloat16 moments, and the documented dtypes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import param_shaped_subtrees

import optim_chain as oc

BF16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)

# preset -> builder taking moment_dtype; how many param-shaped trees its state holds
ADAPTIVE = {
    "adamw_amsgrad": (lambda md: oc.adamw(1e-2, 0.1, amsgrad=True, moment_dtype=md, skip_nonfinite=True), 3),
    "rmsprop": (lambda md: oc.rmsprop(1e-2, centered=True, moment_dtype=md), 2),
    "adagrad": (lambda md: oc.adagrad(0.1, initial_accumulator_value=0.1, moment_dtype=md), 1),
}


def _params(dtype):
    return {
        "kernel": (jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(4, 3)).astype(dtype),
        "bias": jnp.linspace(0.1, 0.3, 3, dtype=jnp.float32).astype(dtype),
    }


def _grads(params, t):
    return jax.tree.map(lambda p: (jnp.sin(3.0 * p.astype(jnp.float32) + t) + 0.2).astype(p.dtype), params)


def _train(opt, params, steps=20):
    @jax.jit
    def step(params, state, t):
        updates, state = opt.update(_grads(params, t), state, params)
        return optax.apply_updates(params, updates), state, updates

    state = opt.init(params)
    for t in range(steps):
        params, state, updates = step(params, state, t)
    return params, state, updates


def _dtypes(tree):
    return {jnp.dtype(x.dtype) for x in jax.tree.leaves(tree)}


@pytest.mark.parametrize(
    "param_dtype, moment_dtype",
    [(BF16, F32), (F32, BF16), (BF16, None), (F32, None)],
    ids=["bf16_params_f32_moments", "f32_params_bf16_moments", "bf16", "f32"],
)
@pytest.mark.parametrize("preset", ADAPTIVE)
def test_state_and_update_dtypes(preset, param_dtype, moment_dtype):
    """The documented contract.

    * moments, accumulators and running maxima: ``moment_dtype``, or the params' dtype;
    * step counters and skip counters: int32;
    * updates: the wider of the gradients' and the moments' dtypes;
    * params after ``optax.apply_updates``: their own dtype.
    """
    build, n_trees = ADAPTIVE[preset]
    params = _params(param_dtype)
    final, state, updates = _train(build(moment_dtype), params, steps=3)
    stored = jnp.dtype(moment_dtype or param_dtype)
    trees = param_shaped_subtrees(state, params)
    assert len(trees) == n_trees
    assert _dtypes(trees) == {stored}
    others = [x for x in jax.tree.leaves(state) if x.ndim == 0]
    # step counters are int32 (rmsprop and adagrad with a constant learning rate keep none)
    assert {x.dtype for x in others} <= {jnp.dtype(jnp.int32)}
    assert others or preset in ("rmsprop", "adagrad")
    assert _dtypes(updates) == {jnp.promote_types(param_dtype, stored)}
    assert _dtypes(final) == {param_dtype}
    chex.assert_tree_all_finite((final, state, updates))


def test_momentum_buffer_takes_the_params_dtype():
    params = _params(BF16)
    final, state, updates = _train(oc.sgdw(0.1, 1e-2, momentum=0.9), params, steps=3)
    assert _dtypes(state[0].trace) == {BF16} and _dtypes(updates) == {BF16} and _dtypes(final) == {BF16}


def test_bfloat16_params_with_float32_moments_track_float32_training():
    """The moments stay float32 and follow a float32 run; only the params carry bfloat16 rounding."""
    opt = oc.adamw(1e-2, 0.1, moment_dtype=jnp.float32)
    low, low_state, _ = _train(opt, _params(BF16))
    high, high_state, _ = _train(opt, _params(F32))
    chex.assert_trees_all_close(
        jax.tree.map(lambda x: x.astype(jnp.float32), low), high, rtol=2e-2, atol=2e-2
    )
    chex.assert_trees_all_close(low_state[0], high_state[0], rtol=5e-2, atol=1e-3)


def test_bfloat16_moments_keep_their_decay_rates():
    """In bfloat16, ``0.999`` rounds to 1 and ``0.9`` to 0.898; the averages are computed in float32.

    With the averaging done in bfloat16 the second moment would never leave zero. Here the
    bias-corrected moments of bfloat16 storage stay within a few percent of float32 storage over
    300 steps of a fluctuating gradient.
    """
    g = {"w": jnp.array([1.0, 0.01, 3.0], jnp.float32)}

    def moments(moment_dtype):
        opt = oc.chain(
            oc.estimate_moments(0.9, 0.999, moment_dtype=moment_dtype), oc.correct_bias(0.9, 0.999)
        )
        state, update = opt.init(g), jax.jit(opt.update)
        for t in range(300):
            scale = float(1 + 0.5 * np.sin(t))
            estimates, state = update({"w": g["w"] * scale}, state)
        return estimates, state

    low, low_state = moments(jnp.bfloat16)
    high, _ = moments(jnp.float32)
    assert _dtypes(low_state[0]) == {BF16} and _dtypes(low) == {F32}
    chex.assert_trees_all_close(low, high, rtol=0.1)
    # one step from zero: m = (1 - b1) * g exactly as float32 computes it, then rounded once
    opt = oc.estimate_moments(0.9, 0.999, moment_dtype=jnp.bfloat16)
    _, state = opt.update(g, opt.init(g))
    expected = ((1 - np.float32(0.9)) * np.asarray(g["w"])).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(state.mu["w"]), expected)


@pytest.mark.parametrize("bad", ["banana", jnp.int32, "bool", 3], ids=["name", "int32", "bool", "number"])
def test_moment_dtype_must_be_floating(bad):
    with pytest.raises(TypeError, match="moment_dtype must be None or a floating-point dtype"):
        oc.adam(1e-3, moment_dtype=bad)
