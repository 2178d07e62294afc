"""Long runs: step counters saturate instead of wrapping, bias correction stays finite and exact."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim_chain as oc
from optim_chain._tree import increment

INT32_MAX = int(np.iinfo(np.int32).max)

PRESETS = {
    "adam": lambda: oc.adam(1e-3),
    "amsgrad_corrected": lambda: oc.adam(1e-3, amsgrad=True, amsgrad_max_of="corrected"),
    "adamw_schedule": lambda: oc.adamw(
        optax.warmup_cosine_decay_schedule(0.0, 1e-3, 100, 10_000),
        0.1,
        decay_scaling="schedule",
        peak_learning_rate=1e-3,
        skip_nonfinite=True,
    ),
    "sgdw_schedule": lambda: oc.sgdw(optax.exponential_decay(0.1, 1000, 0.5), 1e-2, momentum=0.9),
    "injected_adam_l2": lambda: optax.inject_hyperparams(oc.adam_l2)(
        learning_rate=optax.linear_schedule(1e-3, 1e-4, 1000), weight_decay=1e-2
    ),
}


def _params():
    return {"w": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(2, 3), "b": jnp.ones(3, jnp.float32)}


def _set_counters(state, value):
    """Every int32 scalar in the state (step counts, skip counters) set to ``value``."""
    return jax.tree.map(
        lambda x: jnp.full_like(x, value) if x.dtype == jnp.int32 and x.ndim == 0 else x, state
    )


def _counters(state):
    return [int(x) for x in jax.tree.leaves(state) if x.dtype == jnp.int32 and x.ndim == 0]


def test_increment_saturates():
    step = jax.jit(increment)
    assert int(step(jnp.int32(0))) == 1
    assert int(step(jnp.int32(INT32_MAX - 1))) == INT32_MAX
    assert int(step(jnp.int32(INT32_MAX))) == INT32_MAX


@pytest.mark.parametrize("preset", PRESETS)
def test_counters_saturate_at_the_int32_limit(preset):
    opt = PRESETS[preset]()
    params = _params()
    state = _set_counters(opt.init(params), INT32_MAX - 2)
    update = jax.jit(opt.update)
    grads = jax.tree.map(lambda x: jnp.cos(x) + 0.5, params)
    for _ in range(4):
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        chex.assert_tree_all_finite((updates, params, state))
    if isinstance(state, oc.SkipNonfiniteState):  # nothing was skipped: its counters did not move
        assert (int(state.skipped), int(state.consecutive)) == (INT32_MAX - 2, 0)
        state = state.inner_state
    counters = _counters(state)
    assert counters and all(c == INT32_MAX for c in counters)


def _reference_factor(decay, step, dtype):
    """``1 - decay**step`` in double precision for ``decay`` as rounded to ``dtype``."""
    rounded = float(np.asarray(decay, dtype))
    return -math.expm1(step * math.log(rounded))


STEPS = [1, 2, 3, 10, 1000, 10**6, 2**24 + 1, INT32_MAX - 1, INT32_MAX]


@pytest.mark.parametrize(
    "dtype, decays, rtol",
    [
        (jnp.float32, [0.9, 0.999, 0.999999, 0.9999999], 1e-6),
        (jnp.float64, [0.9, 0.999, 0.999999, 1 - 1e-10], 1e-13),
    ],
    ids=["float32", "float64"],
)
def test_bias_correction_factor_is_accurate_at_every_step(dtype, decays, rtol):
    """``correct_bias`` divides by ``1 - b**t`` to a few ulps at every ``t``, the saturated one too.

    ``1 - b**t`` evaluated as written loses digits to cancellation (``b = 0.999999``, ``t = 10``
    keeps about 3 in float32); large ``t`` must give a factor of exactly 1, never Inf or NaN.
    """
    ones = {"m": jnp.ones(2, dtype)}
    correct = jax.jit(lambda b, state: oc.correct_bias(b, b).update(oc.MomentEstimates(ones, ones), state))
    for decay in decays:
        for step in STEPS:
            state = oc.BiasCorrectionState(count=jnp.int32(step - 1 if step < INT32_MAX else INT32_MAX))
            moments, new_state = correct(decay, state)
            assert int(new_state.count) == step
            got = np.asarray(moments.first["m"], np.float64)
            want = 1.0 / _reference_factor(decay, step, dtype)
            np.testing.assert_allclose(got, want, rtol=rtol, err_msg=f"decay={decay}, step={step}")
            chex.assert_trees_all_equal(moments.first, moments.second)


@pytest.mark.parametrize("b2", [0.999, 0.999999, 0.9999999])
def test_constant_gradient_comes_back_unbiased(b2):
    """Moving average then bias correction of a constant gradient is that gradient, at every step."""
    opt = oc.chain(oc.estimate_moments(0.9, b2), oc.correct_bias(0.9, b2))
    g = {"w": jnp.array([0.3, -2.0, 1e-3], jnp.float32)}
    state = opt.init(g)
    update = jax.jit(opt.update)
    for _ in range(30):
        moments, state = update(g, state)
        chex.assert_trees_all_close(moments.first, g, rtol=2e-6)
        chex.assert_trees_all_close(moments.second, jax.tree.map(jnp.square, g), rtol=2e-6)


def test_adam_step_at_the_saturated_count_is_the_uncorrected_step():
    """At ``t = 2**31 - 1`` both factors are exactly 1: the step is ``lr * m / (sqrt(v) + eps)``."""
    opt = oc.adam(1e-3)
    g = {"w": jnp.array([0.3, -2.0, 1e-3], jnp.float32)}
    state = opt.init(g)
    moments = oc.MomentsState(mu=g, nu=jax.tree.map(jnp.square, g))
    state = _set_counters((moments, *state[1:]), INT32_MAX - 1)
    update = jax.jit(opt.update)
    for _ in range(2):
        updates, state = update(g, state, g)
        expected = -1e-3 * state[0].mu["w"] / (jnp.sqrt(state[0].nu["w"]) + 1e-8)
        np.testing.assert_array_equal(np.asarray(updates["w"]), np.asarray(expected))
    assert _counters(state) == [INT32_MAX]  # correct_bias's; a constant learning rate keeps none


def test_decay_that_rounds_to_one_is_refused_at_init():
    """``b2 = 1 - 1e-9`` is 1.0 in float32: the average would never move and 0/0 would follow."""
    with pytest.raises(ValueError, match=r"b2=.* rounds to 1 in float32"):
        oc.adam(1e-3, b2=1 - 1e-9).init({"w": jnp.zeros(3, jnp.float32)})
    oc.adam(1e-3, b2=1 - 1e-9).init({"w": jnp.zeros(3, jnp.float64)})  # representable in float64
