"""Edge inputs: empty trees, scalar, zero-size and None leaves work; bad leaves and trees get clear errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim_chain as oc

PRESETS = {
    "sgd": lambda: oc.sgd(0.1),
    "sgd_nesterov": lambda: oc.sgd(0.1, momentum=0.9, nesterov=True),
    "sgd_l2": lambda: oc.sgd_l2(0.1, 1e-2, momentum=0.9),
    "sgdw": lambda: oc.sgdw(0.1, 1e-2, mask=oc.default_decay_mask),
    "adagrad": lambda: oc.adagrad(0.1),
    "rmsprop": lambda: oc.rmsprop(1e-2, centered=True, momentum=0.9),
    "adam": lambda: oc.adam(1e-2),
    "amsgrad": lambda: oc.adam(1e-2, amsgrad=True),
    "adam_l2": lambda: oc.adam_l2(1e-2, 1e-2),
    "adamw": lambda: oc.adamw(1e-2, 0.1),
    "adamw_skip": lambda: oc.adamw(1e-2, 0.1, skip_nonfinite=True),
}


def _grads_like(params, t=0):
    return jax.tree.map(lambda p: jnp.cos(p + t) + 0.1, params)


def _run(opt, params, steps=3, jit=False):
    update = jax.jit(opt.update) if jit else opt.update
    state = opt.init(params)
    history = []
    for t in range(steps):
        updates, state = update(_grads_like(params, t), state, params)
        params = optax.apply_updates(params, updates)
        history.append(updates)
    return params, history


# ------------------------------------------------------------------------------ what works


@pytest.mark.parametrize("tree", [{}, [], (), {"a": {}, "b": []}], ids=["dict", "list", "tuple", "nested"])
@pytest.mark.parametrize("preset", PRESETS)
def test_empty_trees_give_empty_updates(preset, tree):
    opt = PRESETS[preset]()
    state = opt.init(tree)
    updates, state = opt.update(tree, state, tree)
    assert jax.tree.structure(updates) == jax.tree.structure(tree)
    assert jax.tree.leaves(updates) == []


@pytest.mark.parametrize("preset", PRESETS)
def test_scalar_zero_size_and_none_leaves(preset):
    """Each leaf is updated on its own: the odd leaves neither break nor change the ordinary one."""
    odd = {
        "w": jnp.linspace(-1.0, 1.0, 4),
        "scalar": jnp.ones((), jnp.float64) * 0.5,
        "empty": jnp.zeros((0,)),
        "empty_matrix": jnp.zeros((3, 0)),
        "frozen": None,
    }
    opt = PRESETS[preset]()
    final, history = _run(opt, odd)
    for updates in history:
        assert updates["frozen"] is None
        assert updates["empty"].shape == (0,) and updates["empty_matrix"].shape == (3, 0)
        assert updates["scalar"].shape == ()
        chex.assert_tree_all_finite(updates)
    ordinary, _ = _run(opt, {"w": odd["w"], "scalar": odd["scalar"]})
    chex.assert_trees_all_close(
        (final["w"], final["scalar"]), (ordinary["w"], ordinary["scalar"]), rtol=1e-13
    )


@pytest.mark.parametrize("preset", ["adamw_skip", "rmsprop"])
def test_odd_leaves_under_jit(preset):
    odd = {"scalar": jnp.ones((), jnp.float64), "empty": jnp.zeros((3, 0)), "frozen": None, "w": jnp.ones(2)}
    opt = PRESETS[preset]()
    compiled, _ = _run(opt, odd, jit=True)
    eager, _ = _run(opt, odd)
    chex.assert_trees_all_close(compiled, eager, rtol=1e-13)
    assert compiled["frozen"] is None and compiled["empty"].shape == (3, 0)


def test_none_leaves_in_a_mask_tree():
    params = {"w": jnp.ones(3), "frozen": None}
    opt = oc.sgdw(0.1, 0.5, mask={"w": True, "frozen": None})
    updates, _ = opt.update(_grads_like(params), opt.init(params), params)
    assert updates["frozen"] is None
    np.testing.assert_allclose(updates["w"], -0.1 * (np.cos(1.0) + 0.1) - 0.1 * 0.5)


# ------------------------------------------------------------------------- what is refused

NON_FLOAT_LEAVES = {
    "int32": jnp.arange(3, dtype=jnp.int32),
    "int64": np.arange(3),
    "bool": jnp.array([True, False]),
    "python_int": 7,
}


@pytest.mark.parametrize("leaf", NON_FLOAT_LEAVES)
@pytest.mark.parametrize("preset", PRESETS)
def test_non_float_leaves_are_refused_at_init_by_path(preset, leaf):
    params = {"layer": {"w": jnp.ones(3), "counter": NON_FLOAT_LEAVES[leaf]}}
    with pytest.raises(TypeError, match=r"parameter 'layer/counter' has dtype .*floating-point"):
        PRESETS[preset]().init(params)


def _rename(tree):
    return {"w": tree["w"], "c": tree["b"]}


MISMATCHES = {
    # grads transform -> what the error message must say
    "missing_leaf": (lambda g: {"w": g["w"]}, r"differ in structure; leaves of .* missing from .*: \['b'\]"),
    "extra_leaf": (lambda g: {**g, "z": g["b"]}, r"leaves of (gradients|updates) not in .*: \['z'\]"),
    "renamed_leaf": (_rename, r"missing from .*: \['b'\]; leaves of .* not in .*: \['c'\]"),
    "broadcastable_shape": (lambda g: {"w": g["w"][:, None], "b": g["b"]}, r"leaf 'w' has shape \(3, 1\)"),
    "wrong_length": (lambda g: {"w": g["w"], "b": g["b"][:1]}, r"leaf 'b' has shape \(1,\)"),
    "list_for_dict": (lambda g: [g["b"], g["w"]], r"missing from .*: \['b', 'w'\]; .* \['0', '1'\]"),
    "none_for_leaf": (lambda g: {"w": g["w"], "b": None}, r"missing from .*: \['b'\]"),
}


@pytest.mark.parametrize("mismatch", MISMATCHES)
@pytest.mark.parametrize("preset", PRESETS)
def test_gradients_that_do_not_match_the_params_are_refused_by_path(preset, mismatch):
    params = {"w": jnp.ones(3), "b": jnp.zeros(2)}
    opt = PRESETS[preset]()
    state = opt.init(params)
    change, message = MISMATCHES[mismatch]
    with pytest.raises(ValueError, match=message):
        opt.update(change(_grads_like(params)), state, params)
    with pytest.raises(ValueError, match=message):  # the same check at trace time under jit
        jax.jit(opt.update)(change(_grads_like(params)), state, params)


BAD_ARGUMENTS = {
    "negative_lr": (lambda: oc.adamw(-1e-3), ValueError, "learning_rate"),
    "nan_lr": (lambda: oc.sgd(float("nan")), ValueError, "learning_rate"),
    "string_lr": (lambda: oc.adam("1e-3"), TypeError, "learning_rate"),
    "vector_lr": (lambda: oc.adam(jnp.ones(2)), ValueError, "learning_rate"),
    "negative_weight_decay": (lambda: oc.adamw(1e-3, -0.1), ValueError, "weight_decay"),
    "inf_weight_decay": (lambda: oc.sgdw(1e-3, float("inf")), ValueError, "weight_decay"),
    "b1_one": (lambda: oc.adam(1e-3, b1=1.0), ValueError, "b1"),
    "b2_negative": (lambda: oc.adam_l2(1e-3, 0.1, b2=-0.5), ValueError, "b2"),
    "negative_eps": (lambda: oc.rmsprop(1e-3, eps=-1e-8), ValueError, "eps"),
    "momentum_above_one": (lambda: oc.sgd(0.1, momentum=1.5), ValueError, "momentum"),
    "nesterov_without_momentum": (lambda: oc.sgd(0.1, nesterov=True), ValueError, "nesterov"),
    "unknown_decay_scaling": (lambda: oc.adamw(1e-3, decay_scaling="paper"), ValueError, "decay_scaling"),
    "skip_nonfinite_not_bool": (lambda: oc.sgd(0.1, skip_nonfinite=1), TypeError, "skip_nonfinite"),
    "moment_dtype_integer": (lambda: oc.rmsprop(1e-3, moment_dtype="int8"), TypeError, "moment_dtype"),
    "mask_of_numbers": (lambda: oc.adamw(1e-3, mask={"w": 1.0}), TypeError, "mask"),
    "bool_weight_decay": (lambda: oc.adamw(1e-3, True), TypeError, "weight_decay"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_arguments_are_refused_at_construction(case):
    build, error, name = BAD_ARGUMENTS[case]
    with pytest.raises(error, match=name):
        build()


def test_mask_that_does_not_match_the_params_is_refused_with_paths():
    params = {"w": jnp.ones(3), "b": jnp.zeros(2)}
    opt = oc.adamw(1e-3, mask={"w": True, "bias": False})
    with pytest.raises(ValueError, match=r"missing from the mask: \['b'\].*not in params: \['bias'\]"):
        opt.update(_grads_like(params), opt.init(params), params)


def test_decay_without_params_is_refused():
    params = {"w": jnp.ones(3)}
    opt = oc.adamw(1e-3)
    with pytest.raises(ValueError, match="needs the params"):
        opt.update(_grads_like(params), opt.init(params))
