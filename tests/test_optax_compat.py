"""What ``optax.adamw`` users take for granted, and complex parameters.

Masks checked at ``init``; ``init`` on abstract leaves; a dtype for SGD's momentum buffer;
``updates=None`` through stateless transforms; complex leaves in every preset, masked and
decayed like real ones (their parity with torch is in test_parity_torch.py).
"""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim_chain as oc

PRESETS = {
    "sgd": lambda: oc.sgd(0.1, momentum=0.9, nesterov=True),
    "sgd_l2": lambda: oc.sgd_l2(0.1, 1e-2, momentum=0.9, mask=oc.default_decay_mask),
    "sgdw": lambda: oc.sgdw(0.1, 1e-2, momentum=0.9, mask=oc.default_decay_mask),
    "adagrad": lambda: oc.adagrad(0.1, initial_accumulator_value=0.1),
    "rmsprop": lambda: oc.rmsprop(1e-2, centered=True, momentum=0.9),
    "adam": lambda: oc.adam(1e-2),
    "amsgrad": lambda: oc.adam(1e-2, amsgrad=True),
    "adam_l2": lambda: oc.adam_l2(1e-2, 1e-2, mask=oc.default_decay_mask),
    "adamw": lambda: oc.adamw(optax.linear_schedule(1e-2, 1e-3, 10), 0.1, mask=oc.default_decay_mask),
    "adamw_skip": lambda: oc.adamw(1e-2, 0.1, skip_nonfinite=True),
    "single_pass": lambda: oc.single_pass(oc.adamw(1e-2, 0.1)),
}


def _init(opt, params):
    """``opt.init(params)``, without single_pass's warning about XLA:CPU's fusion flag."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="single_pass needs", category=UserWarning)
        return opt.init(params)


PARAMS = {"dense": {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "bias": jnp.full(4, 0.5)}}


# ---------------------------------------------------------------------- masks checked at init

MASKED = {
    "adamw": lambda mask: oc.adamw(1e-3, 0.1, mask=mask),
    "sgdw": lambda mask: oc.sgdw(1e-3, 0.1, mask=mask),
    "adam_l2": lambda mask: oc.adam_l2(1e-3, 0.1, mask=mask),
    "sgd_l2": lambda mask: oc.sgd_l2(1e-3, 0.1, mask=mask),
    "add_l2_regularization": lambda mask: oc.add_l2_regularization(0.1, mask),
    "decoupled_weight_decay": lambda mask: oc.decoupled_weight_decay(0.1, 1e-3, mask),
}


@pytest.mark.parametrize("build", MASKED)
def test_mask_tree_missing_a_leaf_is_refused_at_init_naming_it(build):
    mask = {"dense": {"kernel": True}}
    with pytest.raises(ValueError, match=r"mask does not match.*missing from the mask: \['dense/bias'\]"):
        MASKED[build](mask).init(PARAMS)


@pytest.mark.parametrize("build", MASKED)
def test_mask_tree_with_an_extra_leaf_is_refused_at_init_naming_it(build):
    mask = {"dense": {"kernel": True, "bias": False, "scale": False}}
    with pytest.raises(ValueError, match=r"mask leaves not in params: \['dense/scale'\]"):
        MASKED[build](mask).init(PARAMS)


@pytest.mark.parametrize("build", MASKED)
def test_mask_function_giving_a_wrong_tree_is_refused_at_init(build):
    with pytest.raises(ValueError, match=r"mask does not match"):
        MASKED[build](lambda params: {"kernel": True}).init(PARAMS)


def test_optax_refuses_the_same_mask_at_init_too():
    """The behaviour matched: optax.adamw's masked wrapper fails at init on this mask."""
    with pytest.raises(ValueError):
        optax.adamw(1e-3, mask={"dense": {"kernel": True}}).init(PARAMS)


# --------------------------------------------------------------------- init on abstract leaves


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float64, jnp.complex64])
@pytest.mark.parametrize("preset", PRESETS)
def test_init_on_shape_dtype_structs_equals_init_on_arrays(preset, dtype):
    params = jax.tree.map(lambda x: x.astype(dtype), PARAMS)
    opt = PRESETS[preset]()
    from_abstract = _init(opt, _abstract(params))
    from_arrays = _init(opt, params)
    chex.assert_trees_all_equal_structs(from_abstract, from_arrays)
    chex.assert_trees_all_equal_dtypes(from_abstract, from_arrays)
    chex.assert_trees_all_equal(from_abstract, from_arrays)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(from_abstract))
    # and the state it gives can be stepped
    opt.update(jax.tree.map(jnp.ones_like, params), from_abstract, params)


def test_init_on_shape_dtype_structs_matches_optax_adamw():
    ours = oc.adamw(1e-3).init(_abstract(PARAMS))
    theirs = optax.adamw(1e-3).init(_abstract(PARAMS))
    chex.assert_trees_all_equal(ours[0].mu, theirs[0].mu)
    chex.assert_trees_all_equal(ours[0].nu, theirs[0].nu)


def test_abstract_leaves_are_checked_like_arrays():
    with pytest.raises(TypeError, match=r"parameter 'ids' has dtype int32"):
        oc.adamw(1e-3).init({"ids": jax.ShapeDtypeStruct((3,), jnp.int32)})
    with pytest.raises(ValueError, match=r"missing from the mask"):
        oc.adamw(1e-3, mask={}).init(_abstract(PARAMS))


# --------------------------------------------------------------------- moment_dtype for SGD


@pytest.mark.parametrize(
    "build",
    [
        lambda dtype: oc.sgd(0.1, momentum=0.9, moment_dtype=dtype),
        lambda dtype: oc.sgd(0.1, momentum=0.9, nesterov=True, moment_dtype=dtype),
        lambda dtype: oc.sgd_l2(0.1, 1e-2, momentum=0.9, moment_dtype=dtype),
        lambda dtype: oc.sgdw(0.1, 1e-2, momentum=0.9, moment_dtype=dtype),
        lambda dtype: oc.rmsprop(0.1, momentum=0.9, moment_dtype=dtype),
    ],
    ids=["sgd", "sgd_nesterov", "sgd_l2", "sgdw", "rmsprop"],
)
def test_moment_dtype_sets_the_momentum_buffer_dtype(build):
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS)
    state = build(jnp.float32).init(params)
    buffers = [
        s.trace
        for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, oc.MomentumState))
        if isinstance(s, oc.MomentumState)
    ]
    assert len(buffers) == 1
    assert {x.dtype for x in jax.tree.leaves(buffers[0])} == {jnp.dtype(jnp.float32)}
    default = build(None).init(params)
    assert {x.dtype for x in jax.tree.leaves(default)} <= {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.int32)}


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_moment_dtype_matches_optax_accumulator_dtype(nesterov):
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS)
    ours = oc.sgd(0.1, momentum=0.9, nesterov=nesterov, moment_dtype=jnp.float32)
    theirs = optax.sgd(0.1, momentum=0.9, nesterov=nesterov, accumulator_dtype=jnp.float32)
    states = [ours.init(params), theirs.init(params)]
    trajectories = [params, params]
    for t in range(10):
        for i, opt in enumerate((ours, theirs)):
            grads = jax.tree.map(
                lambda p, t=t: (jnp.sin(p.astype(jnp.float32) * 3 + t)).astype(p.dtype), trajectories[i]
            )
            updates, states[i] = opt.update(grads, states[i], trajectories[i])
            assert {u.dtype for u in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}
            trajectories[i] = optax.apply_updates(trajectories[i], updates)
    chex.assert_trees_all_equal(trajectories[0], trajectories[1])
    chex.assert_trees_all_close(states[0][0].trace, states[1][0].trace, rtol=1e-6)


def test_moment_dtype_must_be_a_float_dtype():
    with pytest.raises(TypeError, match="moment_dtype must be None or a floating-point dtype, got 'int32'"):
        oc.sgd(0.1, momentum=0.9, moment_dtype="int32")
    with pytest.raises(TypeError, match="moment_dtype"):
        oc.add_momentum(0.9, moment_dtype=jnp.int8)


# -------------------------------------------------------------------------------- updates=None

STATELESS = {
    "add_l2_regularization": lambda: oc.add_l2_regularization(0.1),
    "add_l2_regularization_masked": lambda: oc.add_l2_regularization(0.1, oc.default_decay_mask),
    "decoupled_weight_decay": lambda: oc.decoupled_weight_decay(0.1, 1e-3),
    "decoupled_weight_decay_scheduled": lambda: oc.decoupled_weight_decay(0.1, optax.constant_schedule(1.0)),
    "scale_by_learning_rate": lambda: oc.scale_by_learning_rate(0.1),
    "normalize_by_second_moment": lambda: oc.normalize_by_second_moment(),
}


@pytest.mark.parametrize("build", STATELESS)
@pytest.mark.parametrize("with_params", [True, False])
def test_none_updates_pass_through_like_optax(build, with_params):
    opt = STATELESS[build]()
    state = opt.init(PARAMS)
    updates, _ = opt.update(None, state, PARAMS if with_params else None)
    assert updates is None
    # optax's own scenario: add_decayed_weights(0.1, mask=None).update(None, 0, weights)
    assert optax.add_decayed_weights(0.1).update(None, optax.EmptyState(), PARAMS)[0] is None


# ------------------------------------------------------------------------------ complex leaves

COMPLEX = {
    "w": (jnp.linspace(-1.0, 1.0, 6) + 1j * jnp.linspace(0.5, -0.5, 6)).reshape(2, 3).astype(jnp.complex64),
    "b": jnp.array([0.5 - 0.25j, -1.0 + 2.0j], jnp.complex64),
}


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_steps_complex_leaves_under_jit(preset):
    opt = PRESETS[preset]()
    state = _init(opt, COMPLEX)
    step = jax.jit(opt.update)
    params = COMPLEX
    for t in range(3):
        grads = jax.tree.map(lambda p, t=t: jnp.cos(p + t) + 0.1j, params)
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.complex64)}
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((params, state)))
    assert all(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(COMPLEX)))


@pytest.mark.parametrize(
    ("build", "factor"),
    [
        (lambda: oc.adamw(0.1, 0.5, mask=oc.default_decay_mask), 1 - 0.1 * 0.5),
        (lambda: oc.sgdw(0.1, 0.5, momentum=0.9, mask=oc.default_decay_mask), 1 - 0.1 * 0.5),
        (lambda: oc.sgd_l2(0.1, 0.5, mask=oc.default_decay_mask), 1 - 0.1 * 0.5),
    ],
)
def test_masked_decay_shrinks_both_components_of_complex_leaves(build, factor):
    opt = build()
    state = opt.init(COMPLEX)
    zero = jax.tree.map(jnp.zeros_like, COMPLEX)
    updates, state = opt.update(zero, state, COMPLEX)
    after = optax.apply_updates(COMPLEX, updates)
    np.testing.assert_allclose(after["w"], COMPLEX["w"] * factor, rtol=1e-6)
    chex.assert_trees_all_equal(after["b"], COMPLEX["b"])  # a vector: not decayed by the default mask


def test_complex_second_moment_is_per_component():
    g = jnp.array([3.0 + 4.0j])
    _, state = oc.adam(0.1, b2=0.5).update({"p": g}, oc.adam(0.1, b2=0.5).init({"p": g}), {"p": g})
    nu = state[0].nu["p"]
    np.testing.assert_allclose(nu, [0.5 * 9.0 + 0.5j * 16.0])  # not 0.5 * |g|^2 = 12.5


def test_real_moment_dtype_for_complex_leaves_gives_that_precision_of_complex():
    params = jax.tree.map(lambda x: x.astype(jnp.complex128), COMPLEX)
    for opt in (oc.adam(1e-3, moment_dtype=jnp.float32), oc.sgd(0.1, momentum=0.9, moment_dtype=jnp.float32)):
        state = opt.init(params)
        dtypes = {x.dtype for x in jax.tree.leaves(state) if x.ndim}
        assert dtypes == {jnp.dtype(jnp.complex64)}
        updates, _ = opt.update(params, state, params)
        assert {u.dtype for u in jax.tree.leaves(updates)} == {jnp.dtype(jnp.complex128)}


def test_single_pass_on_complex_leaves_equals_the_plain_preset():
    plain = oc.adamw(1e-2, 0.1)
    fused = oc.single_pass(plain)
    fused_state = _init(fused, COMPLEX)
    plain_state = plain.init(COMPLEX)
    grads = jax.tree.map(lambda p: jnp.sin(p) + 0.3j, COMPLEX)
    ours, fused_state = jax.jit(fused.update)(grads, fused_state, COMPLEX)
    theirs, plain_state = jax.jit(plain.update)(grads, plain_state, COMPLEX)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6)
    chex.assert_trees_all_close(fused_state, plain_state, rtol=1e-6)
