"""Where optim_chain used to refuse what optax accepts, and the shim that runs optax's own tests.

momentum=1 and a complex moment_dtype are accepted as optax accepts them; the shim in
tests/optax_suite rebuilds optax's aliases from our presets, and must compute what they compute
(else the optax suite would be testing something else).
"""

import sys
from pathlib import Path
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim_chain as oc

sys.path.insert(0, str(Path(__file__).parent / "optax_suite"))
import shim  # noqa: E402

PARAMS = {"w": jnp.asarray([[0.5, -1.5], [2.0, 0.25]]), "b": jnp.asarray([0.1, -0.3])}


def _grads(t):
    return jax.tree.map(lambda p: jnp.sin(p * (t + 1.0)) + 0.1 * t, PARAMS)


def _run(opt, params, steps=6):
    state = opt.init(params)
    out = []
    for t in range(steps):
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), _grads(t), params)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(params)
    return out, state


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_one_is_accepted_and_follows_optax(nesterov):
    ours, _ = _run(oc.sgd(0.1, momentum=1.0, nesterov=nesterov), PARAMS)
    theirs, _ = _run(optax.sgd(0.1, momentum=1.0, nesterov=nesterov), PARAMS)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-12)


def test_momentum_one_sums_every_step():
    # b_t = b_{t-1} + g_t: the buffer is the running sum of the gradients
    _, state = _run(oc.add_momentum(1.0), PARAMS, steps=4)
    expected = jax.tree.map(lambda *g: sum(g), *[_grads(t) for t in range(4)])
    chex.assert_trees_all_close(state.trace, expected, rtol=1e-12)


@pytest.mark.parametrize(
    "make", [lambda m: oc.sgd_l2(0.1, 1e-2, momentum=m), lambda m: oc.rmsprop(0.1, momentum=m)]
)
def test_momentum_one_is_accepted_by_every_preset_with_momentum(make):
    make(1.0)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\], got 1.01"):
        make(1.01)


COMPLEX = {"z": jnp.asarray([1.0 - 2.0j, 0.5 + 0.25j], jnp.complex128)}


@pytest.mark.parametrize(
    "make",
    [
        lambda d: oc.adam(1e-2, moment_dtype=d),
        lambda d: oc.sgd(1e-2, momentum=0.9, moment_dtype=d),
        lambda d: oc.rmsprop(1e-2, centered=True, momentum=0.5, moment_dtype=d),
        lambda d: oc.adagrad(1e-2, moment_dtype=d),
    ],
)
def test_complex_moment_dtype(make):
    # complex params: the state takes the complex dtype asked for
    state = make(jnp.complex64).init(COMPLEX)
    assert {x.dtype for x in jax.tree.leaves(state) if x.ndim} == {jnp.dtype(jnp.complex64)}
    # real params: the state is complex as asked, its imaginary part stays zero, the updates stay
    # real and equal those of a real state of that precision
    real = jax.tree.map(lambda p: p.astype(jnp.float32), PARAMS)
    ours, state = _run(make(jnp.complex64), real)
    plain, _ = _run(make(jnp.float32), real)
    assert {x.dtype for x in jax.tree.leaves(state) if x.ndim} == {jnp.dtype(jnp.complex64)}
    for x in jax.tree.leaves(state):
        if x.ndim:
            np.testing.assert_array_equal(np.imag(x), 0)
    assert {x.dtype for x in jax.tree.leaves(ours)} == {jnp.dtype(jnp.float32)}
    chex.assert_trees_all_close(ours, plain, rtol=1e-6)


def test_integer_moment_dtype_is_still_refused():
    with pytest.raises(TypeError, match="moment_dtype must be None or a floating-point .* got 'int8'"):
        oc.adam(1e-3, moment_dtype="int8")


OPTAX_ALIASES = {
    "adam": {"learning_rate": 1e-2},
    "adamw": {"learning_rate": 1e-2, "weight_decay": 0.1},
    "nadam": {"learning_rate": 1e-2},
    "nadamw": {"learning_rate": 1e-2},
    "amsgrad": {"learning_rate": 1e-2, "b2": 0.5},
    "sgd": {"learning_rate": 1e-2, "momentum": 0.9, "nesterov": True},
    "rmsprop": {"learning_rate": 1e-2, "momentum": 0.9, "centered": True},
    "rmsprop_eps_outside": {"learning_rate": 1e-2, "eps": 1e-3, "eps_in_sqrt": False},
    "rmsprop_initial_scale": {"learning_rate": 1e-2, "initial_scale": 0.5, "centered": True},
    "adagrad": {"learning_rate": 1e-1},
}


@pytest.mark.parametrize("name", OPTAX_ALIASES)
def test_shim_rebuilds_each_optax_alias(name):
    alias = name.split("_")[0]
    kwargs = OPTAX_ALIASES[name]
    ours, _ = _run(shim.ALIASES[alias](**kwargs), PARAMS)
    theirs, _ = _run(getattr(optax, alias)(**kwargs), PARAMS)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_shim_refuses_what_no_preset_expresses():
    with pytest.raises(NotImplementedError, match="bias_correction=True"):
        shim.ALIASES["rmsprop"](1e-2, bias_correction=True)


class _MomentumStateBeforeRename(NamedTuple):
    """The momentum state as checkpoints written before the rename hold it."""

    buffer: Any


def _renamed(node):
    """An orbax raw restore, with the old field name replaced and lists keyed as flax reads them
    (orbax gives back an empty state, such as optax.EmptyState(), as None)."""
    if node is None:
        return {}
    if isinstance(node, dict):
        return {("trace" if key == "buffer" else key): _renamed(value) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return {str(i): _renamed(value) for i, value in enumerate(node)}
    return node


def test_checkpoint_with_the_old_buffer_name_loads_through_the_documented_recipe(tmp_path):
    flax_serialization = pytest.importorskip("flax.serialization")
    ocp = pytest.importorskip("orbax.checkpoint")
    opt = oc.sgd(0.1, momentum=0.9)
    _, state = _run(opt, PARAMS, steps=3)
    old = tuple(_MomentumStateBeforeRename(s.trace) if isinstance(s, oc.MomentumState) else s for s in state)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", {"opt_state": old})
    checkpointer.wait_until_finished()
    with pytest.raises(ValueError):  # orbax matches by names: the old name does not fit the new state
        checkpointer.restore(tmp_path / "ckpt", {"opt_state": opt.init(PARAMS)})
    raw = checkpointer.restore(tmp_path / "ckpt")
    restored = flax_serialization.from_state_dict({"opt_state": opt.init(PARAMS)}, _renamed(raw))
    chex.assert_trees_all_equal(restored["opt_state"], state)
    assert isinstance(restored["opt_state"][0], oc.MomentumState)


def test_rmsprop_initial_scale_fills_both_components_also_when_injected():
    params = {"z": jnp.asarray([1.0 + 2.0j, -1.0j], jnp.complex64), "w": jnp.asarray([1.0, 2.0], jnp.float32)}
    plain = oc.rmsprop(0.1, initial_scale=0.5, centered=True).init(params)
    injected = optax.inject_hyperparams(oc.rmsprop)(learning_rate=0.1, initial_scale=0.5, centered=True)
    # (an injected momentum is an array, so that chain also holds a momentum buffer: compare the moments)
    chex.assert_trees_all_equal(jax.jit(injected.init)(params).inner_state[:2], plain[:2])
    np.testing.assert_array_equal(plain[0].nu["z"], [0.5 + 0.5j, 0.5 + 0.5j])
