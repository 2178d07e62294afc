"""Identities that must hold for every tree shape and every hyperparameter, checked with hypothesis.

* SGD+L2 equals SGDW without momentum (Loshchilov & Hutter, Prop. 1), masks included;
* AdamW with ``weight_decay=0`` is Adam, bit for bit;
* a mask that selects nothing is no decay at all, bit for bit;
* regrouping a chain into nested chains does not change a bit;
* ``skip_nonfinite`` is invisible while everything is finite;
* ``single_pass`` is the transform it wraps, bit for bit (eagerly; compiled, see test_single_pass).

Trees have 1 to 3 leaves of rank 0 to 2 with sides 0 to 2 (so scalars and zero-size leaves are
drawn too); hyperparameters are drawn over their valid ranges. Runs are eager, so the two sides
of each identity execute the same operations without compiler fusion in between.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

import optim_chain as oc

STEPS = 3
SETTINGS = settings(max_examples=20, deadline=None)

shapes = st.lists(array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=2), min_size=1, max_size=3)
learning_rates = st.floats(1e-4, 1.0)
weight_decays = st.floats(1e-4, 0.5)
decays = st.floats(0.0, 0.999)
epsilons = st.floats(1e-10, 1e-3)


def _tree(shape_list, seed, offset=0.0):
    rng = np.random.default_rng(seed)
    return {f"leaf{i}": jnp.asarray(rng.normal(size=s) + offset) for i, s in enumerate(shape_list)}


def _trajectory(opt, params, seed):
    """Params and updates of ``STEPS`` eager steps on gradients drawn from ``seed``."""
    shape_list = [x.shape for x in params.values()]
    state = opt.init(params)
    out = []
    for t in range(STEPS):
        grads = _tree(shape_list, seed + 1000 * (t + 1))
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append((updates, params))
    return out


@SETTINGS
@given(shape_list=shapes, seed=st.integers(0, 2**16), lr=learning_rates, wd=weight_decays, data=st.data())
def test_sgd_l2_equals_sgdw_without_momentum(shape_list, seed, lr, wd, data):
    mask = {f"leaf{i}": data.draw(st.booleans()) for i in range(len(shape_list))}
    params = _tree(shape_list, seed, offset=0.5)
    coupled = _trajectory(oc.sgd_l2(lr, wd, mask=mask), params, seed)
    decoupled = _trajectory(oc.sgdw(lr, wd, mask=mask), params, seed)
    chex.assert_trees_all_close(coupled, decoupled, rtol=1e-12, atol=1e-14)


@SETTINGS
@given(
    shape_list=shapes,
    seed=st.integers(0, 2**16),
    lr=learning_rates,
    b1=decays,
    b2=decays,
    eps=epsilons,
    amsgrad=st.booleans(),
    decay_scaling=st.sampled_from(["learning_rate", "schedule", "none"]),
)
def test_adamw_without_decay_is_adam(shape_list, seed, lr, b1, b2, eps, amsgrad, decay_scaling):
    params = _tree(shape_list, seed)
    kwargs = dict(b1=b1, b2=b2, eps=eps, amsgrad=amsgrad)
    adamw = oc.adamw(lr, 0.0, decay_scaling=decay_scaling, **kwargs)
    chex.assert_trees_all_equal(
        _trajectory(adamw, params, seed), _trajectory(oc.adam(lr, **kwargs), params, seed)
    )


@SETTINGS
@given(
    shape_list=shapes,
    seed=st.integers(0, 2**16),
    lr=learning_rates,
    wd=weight_decays,
    momentum=st.sampled_from([0.0, 0.5, 0.9]),
    preset=st.sampled_from(["adamw", "adam_l2", "sgdw", "sgd_l2"]),
    as_predicate=st.booleans(),
)
def test_mask_selecting_nothing_is_no_decay(shape_list, seed, lr, wd, momentum, preset, as_predicate):
    params = _tree(shape_list, seed)
    nothing = ~oc.masks.everything() if as_predicate else jax.tree.map(lambda _: False, params)
    if preset in ("adamw", "adam_l2"):
        decayed = getattr(oc, preset)(lr, wd, mask=nothing)
        plain = oc.adam(lr)
    else:
        decayed = getattr(oc, preset)(lr, wd, momentum=momentum, mask=nothing)
        plain = oc.sgd(lr, momentum=momentum)
    chex.assert_trees_all_equal(_trajectory(decayed, params, seed), _trajectory(plain, params, seed))


def _regroup(parts, cuts, nest):
    """``parts`` split at ``cuts`` into sub-chains, optionally each wrapped once more."""
    groups, start = [], 0
    for index, cut in enumerate(cuts, start=1):
        if cut:
            groups.append(parts[start:index])
            start = index
    groups.append(parts[start:])
    chains = [oc.chain(*group) for group in groups if group]
    if nest:
        chains = [oc.chain(c) for c in chains]
    return oc.chain(*chains)


@SETTINGS
@given(
    shape_list=shapes,
    seed=st.integers(0, 2**16),
    preset=st.sampled_from(["adamw", "adam_l2", "amsgrad", "rmsprop", "sgdw"]),
    cut_bits=st.lists(st.booleans(), min_size=6, max_size=6),
    nest=st.booleans(),
    use_optax_chain=st.booleans(),
)
def test_regrouping_a_chain_changes_nothing(shape_list, seed, preset, cut_bits, nest, use_optax_chain):
    build = {
        "adamw": lambda: oc.adamw(1e-2, 0.1),
        "adam_l2": lambda: oc.adam_l2(1e-2, 0.1),
        "amsgrad": lambda: oc.adam(1e-2, amsgrad=True),
        "rmsprop": lambda: oc.rmsprop(1e-2, centered=True, momentum=0.9),
        "sgdw": lambda: oc.sgdw(0.1, 0.1, momentum=0.9, nesterov=True),
    }[preset]
    flat = build()
    parts = list(flat.parts)
    regrouped = optax.chain(*parts) if use_optax_chain else _regroup(parts, cut_bits[: len(parts) - 1], nest)
    params = _tree(shape_list, seed)
    chex.assert_trees_all_equal(_trajectory(regrouped, params, seed), _trajectory(flat, params, seed))


@SETTINGS
@given(
    shape_list=shapes,
    seed=st.integers(0, 2**16),
    preset=st.sampled_from(["adamw", "rmsprop", "sgd", "adagrad"]),
)
def test_skip_nonfinite_is_invisible_on_finite_steps(shape_list, seed, preset):
    build = {
        "adamw": lambda **kw: oc.adamw(1e-2, 0.1, **kw),
        "rmsprop": lambda **kw: oc.rmsprop(1e-2, momentum=0.5, **kw),
        "sgd": lambda **kw: oc.sgd(0.1, momentum=0.9, **kw),
        "adagrad": lambda **kw: oc.adagrad(0.1, **kw),
    }[preset]
    params = _tree(shape_list, seed)
    wrapped = _trajectory(build(skip_nonfinite=True), params, seed)
    chex.assert_trees_all_equal(wrapped, _trajectory(build(), params, seed))
    assert all(jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree.leaves(wrapped))


@SETTINGS
@given(
    shape_list=shapes,
    seed=st.integers(0, 2**16),
    preset=st.sampled_from(["adamw", "adam_l2", "amsgrad", "sgdw", "rmsprop", "adagrad"]),
    lr=learning_rates,
    wd=weight_decays,
    b1=decays,
    b2=decays,
)
@pytest.mark.filterwarnings("ignore:single_pass needs:UserWarning")
def test_single_pass_is_the_same_transform(shape_list, seed, preset, lr, wd, b1, b2):
    build = {
        "adamw": lambda: oc.adamw(lr, wd, b1=b1, b2=b2),
        "adam_l2": lambda: oc.adam_l2(lr, wd, b1=b1, b2=b2),
        "amsgrad": lambda: oc.adamw(lr, wd, b1=b1, b2=b2, amsgrad=True),
        "sgdw": lambda: oc.sgdw(lr, wd, momentum=b1),
        "rmsprop": lambda: oc.rmsprop(lr, decay=b2, centered=True, momentum=b1),
        "adagrad": lambda: oc.adagrad(lr),
    }[preset]
    params = _tree(shape_list, seed)
    # eager: every operation runs on its own, so nothing but the exact identities tells them apart
    chex.assert_trees_all_equal(
        _trajectory(oc.single_pass(build()), params, seed), _trajectory(build(), params, seed)
    )
