"""skip_nonfinite: a step with NaN/Inf changes nothing, is counted, and costs no recompilation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim_chain as oc

INT32_MAX = np.iinfo(np.int32).max

PRESETS = {
    "sgd_nesterov": lambda **kw: oc.sgd(0.1, momentum=0.9, nesterov=True, **kw),
    "sgd_l2": lambda **kw: oc.sgd_l2(0.1, 1e-2, momentum=0.9, **kw),
    "adagrad": lambda **kw: oc.adagrad(0.1, initial_accumulator_value=0.1, **kw),
    "rmsprop": lambda **kw: oc.rmsprop(1e-2, centered=True, momentum=0.9, **kw),
    "amsgrad": lambda **kw: oc.adam(1e-2, amsgrad=True, **kw),
    "adamw": lambda **kw: oc.adamw(
        optax.linear_schedule(1e-2, 1e-3, 10), 0.1, mask=oc.default_decay_mask, **kw
    ),
}


def _params():
    return {
        "dense": {"kernel": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "bias": jnp.array([0.1, -0.2, 0.3])},
        "scale": jnp.ones((), jnp.float64) * 1.5,
    }


def _grads(step):
    return jax.tree.map(lambda x: jnp.cos(x * (step + 1.0)) + 0.1 * step, _params())


def _poison(grads, value):
    """One entry of one leaf replaced by ``value``: the smallest fault that must stop a step."""
    kernel = grads["dense"]["kernel"].at[1, 2].set(value)
    return {**grads, "dense": {**grads["dense"], "kernel": kernel}}


def _stepper(opt):
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(None)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, updates

    return step, traces


@pytest.mark.parametrize("preset", PRESETS)
def test_bad_steps_change_nothing_and_are_counted(preset):
    """Steps 1, 2 and 4 get a NaN, an Inf and a -Inf: the run must equal one that never saw them.

    The reference is the same optimizer fed only the clean gradients (the same compiled program,
    so equality is exact, bit for bit). That the wrapper adds nothing on finite steps is a
    property test (``test_properties.py``).
    """
    opt = PRESETS[preset](skip_nonfinite=True)
    step, traces = _stepper(opt)

    params, state = _params(), opt.init(_params())
    ref_params, ref_state = _params(), opt.init(_params())
    faults = {1: np.nan, 2: np.inf, 4: -np.inf}
    clean = 0
    for t in range(7):
        if t in faults:
            before = (params, state)
            params, state, updates = step(params, state, _poison(_grads(clean), faults[t]))
            chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, updates))
            chex.assert_trees_all_equal((params, state.inner_state), (before[0], before[1].inner_state))
            assert int(state.consecutive) == (2 if t == 2 else 1)
        else:
            grads = _grads(clean)
            params, state, _ = step(params, state, grads)
            ref_params, ref_state, _ = step(ref_params, ref_state, grads)
            clean += 1
            assert int(state.consecutive) == 0
        chex.assert_trees_all_equal(params, ref_params)
        chex.assert_trees_all_equal(state.inner_state, ref_state.inner_state)
    assert int(state.skipped) == len(faults) and int(ref_state.skipped) == 0
    chex.assert_tree_all_finite((params, state))
    assert len(traces) == 1, "a skipped step must not retrace"


def test_without_the_option_the_fault_spreads():
    """The same fault without skip_nonfinite poisons the params: the option is what prevents it."""
    opt = oc.adamw(1e-2, 0.1)
    params = _params()
    updates, _ = opt.update(_poison(_grads(0), np.nan), opt.init(params), params)
    assert not np.isfinite(np.asarray(optax.apply_updates(params, updates)["dense"]["kernel"])).all()


def test_finite_gradients_that_overflow_inside_the_chain_are_skipped():
    """Gradients near the float32 maximum are finite, but the momentum buffer overflows to Inf."""
    opt = oc.sgd(1.0, momentum=0.9, skip_nonfinite=True)
    params = {"w": jnp.zeros(3, jnp.float32)}
    big = {"w": jnp.full(3, 3e38, jnp.float32)}
    state = opt.init(params)
    updates, state = opt.update(big, state, params)  # buffer = 3e38: finite, applied
    assert int(state.skipped) == 0 and np.isfinite(np.asarray(updates["w"])).all()
    kept = state.inner_state
    updates, state = opt.update(big, state, params)  # 0.9 * 3e38 + 3e38 overflows
    assert int(state.skipped) == 1
    chex.assert_trees_all_equal(updates, {"w": jnp.zeros(3, jnp.float32)})
    chex.assert_trees_all_equal(state.inner_state, kept)


def test_nan_hyperparameter_injected_at_run_time_is_skipped():
    opt = oc.skip_nonfinite(optax.inject_hyperparams(oc.adamw)(learning_rate=1e-2, weight_decay=0.1))
    params = _params()
    state = opt.init(params)
    state.inner_state.hyperparams["learning_rate"] = jnp.asarray(np.nan, jnp.float32)
    updates, new_state = jax.jit(opt.update)(_grads(0), state, params)
    assert int(new_state.skipped) == 1
    chex.assert_trees_all_equal(new_state.inner_state, state.inner_state)
    chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))


def test_counters_saturate_instead_of_wrapping():
    opt = oc.sgd(0.1, skip_nonfinite=True)
    params = _params()
    state = opt.init(params)._replace(skipped=jnp.int32(INT32_MAX - 1), consecutive=jnp.int32(INT32_MAX - 1))
    for _ in range(3):
        _, state = opt.update(_poison(_grads(0), np.nan), state, params)
    assert int(state.skipped) == INT32_MAX and int(state.consecutive) == INT32_MAX


def test_wrapper_prints_around_its_chain_and_validates_its_flag():
    opt = oc.adam(1e-3, skip_nonfinite=True)
    assert opt.name == "skip_nonfinite" and opt.parts[0].name == "adam"
    assert str(opt).startswith("skip_nonfinite(\n  adam(")
    assert oc.adam(1e-3).name == "adam"
    with pytest.raises(TypeError, match="skip_nonfinite must be a bool"):
        oc.adam(1e-3, skip_nonfinite="yes")
    with pytest.raises(TypeError, match="init and update"):
        oc.skip_nonfinite(lambda g: g)


def test_an_empty_tree_is_never_skipped():
    opt = oc.adamw(1e-3, skip_nonfinite=True)
    state = opt.init({})
    updates, state = opt.update({}, state, {})
    assert updates == {} and int(state.skipped) == 0


@pytest.mark.parametrize("preset", ["adam_l2", "sgdw"])
def test_nonfinite_params_reaching_the_updates_are_skipped_and_show_in_consecutive(preset):
    """A NaN parameter enters the update through weight decay: every step is refused, and counted."""
    opt = {
        "adam_l2": lambda: oc.adam_l2(1e-2, 1e-2, skip_nonfinite=True),
        "sgdw": lambda: oc.sgdw(0.1, 1e-2, momentum=0.9, skip_nonfinite=True),
    }[preset]()
    params = _poison(_params(), np.nan)
    state = opt.init(params)
    initial = state.inner_state
    update = jax.jit(opt.update)
    for t in range(3):
        updates, state = update(_grads(t), state, params)
        chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, updates))
    chex.assert_trees_all_equal(state.inner_state, initial)
    assert int(state.skipped) == 3 and int(state.consecutive) == 3
