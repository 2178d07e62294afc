"""Dtypes: every preset keeps the parameters' dtypes in its updates and state, with and without jit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import param_shaped_subtrees

import optim_chain as oc
from optim_chain._tree import cast

STEPS = 3

# one configuration per preset, each with its optional parts switched on
# name -> (builder, number of state subtrees shaped like the params)
CONFIGS = {
    "sgd": (lambda: oc.sgd(0.1, momentum=0.9, nesterov=True), 1),
    "sgd_l2": (lambda: oc.sgd_l2(0.1, 1e-2, momentum=0.9), 1),
    "sgdw": (lambda: oc.sgdw(0.1, 1e-2, momentum=0.9, mask=oc.default_decay_mask), 1),
    "adagrad": (lambda: oc.adagrad(0.1, initial_accumulator_value=0.1), 1),
    "rmsprop": (lambda: oc.rmsprop(1e-2, centered=True, momentum=0.9), 3),
    "adam": (lambda: oc.adam(1e-2, amsgrad=True), 3),
    "adam_l2": (lambda: oc.adam_l2(1e-2, 1e-2), 2),
    "adamw": (
        lambda: oc.adamw(
            optax.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10),
            0.1,
            mask=oc.default_decay_mask,
            decay_scaling="schedule",
            peak_learning_rate=1e-2,
        ),
        2,
    ),
}
DTYPES = ["float32", "float64", "bfloat16"]
# jit may keep bfloat16 intermediates in float32 where eager rounds each one (XLA's excess
# precision), and centered RMSProp's v - mean^2 amplifies that, so bfloat16 gets a few of its ulps
JIT_TOLERANCE = {"float32": 1e-6, "float64": 1e-12, "bfloat16": 2e-2}


def _tree(kernel, bias):
    """A kernel in each dtype, and a bias next to the bfloat16 one (that decay masks leave out)."""
    tree = {name: {"kernel": kernel.astype(name)} for name in DTYPES}
    tree["bfloat16"]["bias"] = bias.astype(jnp.bfloat16)
    return tree


def _draw(seed):
    """Values representable in bfloat16, so that every dtype's copy holds the very same numbers."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    kernel = jax.random.normal(k1, (4, 3), jnp.float32).astype(jnp.bfloat16)
    return kernel, jax.random.normal(k2, (3,), jnp.float32).astype(jnp.bfloat16)


def _params():
    """The same kernel in each dtype side by side: float32 and float64 are the reference for bfloat16."""
    return _tree(*_draw(0))


def _grads(step):
    return _tree(*_draw(100 + step))


def _train(opt, params, jit):
    """Initialises and runs ``STEPS`` updates; returns every step's updates, the final params and state.

    Eagerly every operation is dispatched on its own; under jit, init and the steps are one program
    (the steps as a ``lax.scan``, so the step is compiled once).
    """
    grads = [{name: _grads(t)[name] for name in params} for t in range(STEPS)]

    def step(carry, g):
        params, state = carry
        updates, state = opt.update(g, state, params)
        return (optax.apply_updates(params, updates), state), updates

    if not jit:
        carry, history = (params, opt.init(params)), []
        for g in grads:
            carry, updates = step(carry, g)
            history.append(updates)
        return history, *carry

    @jax.jit
    def run(params, stacked):
        (params, state), history = jax.lax.scan(step, (params, opt.init(params)), stacked)
        return history, params, state

    history, final, state = run(params, jax.tree.map(lambda *xs: jnp.stack(xs), *grads))
    return [jax.tree.map(lambda x, t=t: x[t], history) for t in range(STEPS)], final, state


def _dtypes(tree):
    return jax.tree.map(lambda x: jnp.asarray(x).dtype, tree)


@pytest.fixture(scope="module", params=list(CONFIGS))
def trained(request):
    """Each configuration run once eagerly and once under jit on the mixed-dtype params."""
    build, n_param_like = CONFIGS[request.param]
    opt = build()
    params = _params()
    return {
        "params": params,
        "n_param_like": n_param_like,
        "eager": _train(opt, params, jit=False),
        "jit": _train(opt, params, jit=True),
    }


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_updates_and_params_keep_param_dtypes(trained, mode):
    params = trained["params"]
    history, final, _ = trained[mode]
    for updates in history:
        assert _dtypes(updates) == _dtypes(params)
        chex.assert_tree_all_finite(updates)
    assert _dtypes(final) == _dtypes(params)
    chex.assert_tree_all_finite(final)
    # the run did something: the params moved
    assert any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(params)))


@pytest.mark.parametrize("mode", ["eager", "jit"])
def test_state_keeps_param_dtypes(trained, mode):
    params = trained["params"]
    _, _, state = trained[mode]
    subtrees = param_shaped_subtrees(state, params)
    assert len(subtrees) == trained["n_param_like"]
    for subtree in subtrees:
        assert _dtypes(subtree) == _dtypes(params)
    counters = [x for x in jax.tree.leaves(state) if x.ndim == 0]
    assert len(jax.tree.leaves(state)) == len(counters) + len(subtrees) * len(jax.tree.leaves(params))
    assert all(x.dtype == jnp.int32 for x in counters)
    chex.assert_tree_all_finite(state)


def test_jit_agrees_with_eager(trained):
    for jitted, eager in zip(jax.tree.leaves(trained["jit"]), jax.tree.leaves(trained["eager"])):
        tolerance = JIT_TOLERANCE.get(jnp.dtype(jitted.dtype).name, 0)
        scale = max(1.0, float(np.max(np.abs(np.asarray(eager, np.float64)))))
        chex.assert_trees_all_close(jitted, eager, rtol=tolerance, atol=tolerance * scale)


def test_float32_matches_float64(trained):
    history, _, _ = trained["jit"]
    for updates in history:
        chex.assert_trees_all_close(
            jax.tree.map(lambda x: x.astype(jnp.float64), updates["float32"]),
            updates["float64"],
            rtol=1e-5,
            atol=1e-7,
        )


def test_bfloat16_tracks_float32(trained):
    """bfloat16 params follow the float32 trajectory to bfloat16 precision, not off by orders of magnitude.

    This is what catches arithmetic done in the storage dtype: ``b2 = 0.999`` rounds to ``1.0``
    in bfloat16, and a second moment computed as ``v + (1 - 0.999) * g**2`` there stays zero.
    """
    history, _, _ = trained["jit"]
    moved = 0.0
    for updates in history:
        low = np.asarray(updates["bfloat16"]["kernel"], np.float32)
        high = np.asarray(updates["float32"]["kernel"])
        # a warmup that starts at 0 makes the first step exactly zero in both
        np.testing.assert_allclose(low, high, atol=0.1 * np.max(np.abs(high)), rtol=0.05)
        moved = max(moved, float(np.max(np.abs(high))))
    assert moved > 0


def test_float32_moments_for_bfloat16_params():
    opt = oc.adamw(1e-2, 1e-2, amsgrad=True, amsgrad_max_of="corrected", moment_dtype=jnp.float32)
    params = {"bfloat16": _params()["bfloat16"]}
    for jit in (False, True):
        history, final, state = _train(opt, params, jit)
        mu, nu, nu_max = param_shaped_subtrees(state, params)
        assert set(jax.tree.leaves(_dtypes((mu, nu, nu_max)))) == {jnp.dtype(jnp.float32)}
        # the step is computed from float32 moments and handed over in float32 (as optax does);
        # optax.apply_updates rounds once, into the params' own dtype
        for updates in history:
            assert set(jax.tree.leaves(_dtypes(updates))) == {jnp.dtype(jnp.float32)}
        assert _dtypes(final) == _dtypes(params)
        chex.assert_tree_all_finite((history, final, state))
    # float32 moments fed by bfloat16 gradients: close to the all-float32 run
    reference, _, _ = _train(opt, {"float32": _params()["float32"]}, jit=False)
    for low, high in zip(history, reference):
        chex.assert_trees_all_close(
            low["bfloat16"]["kernel"], high["float32"]["kernel"], rtol=2e-2, atol=1e-4
        )


def test_bfloat16_moments_for_float32_params():
    opt = oc.adamw(1e-2, 1e-2, moment_dtype=jnp.bfloat16)
    params = {"float32": _params()["float32"]}
    history, final, state = _train(opt, params, jit=True)
    mu, nu = param_shaped_subtrees(state, params)
    assert set(jax.tree.leaves(_dtypes((mu, nu)))) == {jnp.dtype(jnp.bfloat16)}
    assert _dtypes(final) == _dtypes(params)
    chex.assert_tree_all_finite((history, final))


LEAVES = {
    "float32": lambda: jnp.asarray([1.5, -2.0], jnp.float32),
    "bfloat16": lambda: jnp.asarray([1.5, -2.0], jnp.bfloat16),
    "complex64": lambda: jnp.asarray([1.5 - 2j], jnp.complex64),
    "weak float32": lambda: jnp.asarray(1.5),
}


@pytest.mark.parametrize("leaf", LEAVES)
def test_cast_equals_astype_and_skips_only_conversions_that_change_nothing(leaf):
    # the transforms convert through _tree.cast, which hands back a leaf already in the target
    # dtype (and not weakly typed) as it is; in every case the result is astype's
    x = LEAVES[leaf]()
    targets = [jnp.complex64] if jnp.iscomplexobj(x) else [jnp.float32, jnp.bfloat16, jnp.complex64]

    def check(x):
        assert (cast(x, x.dtype) is x) == (not x.weak_type)
        ours, theirs = [cast(x, jnp.dtype(t)) for t in targets], [x.astype(t) for t in targets]
        assert [(a.dtype, a.weak_type) for a in ours] == [(b.dtype, b.weak_type) for b in theirs]
        return ours, theirs

    for ours, theirs in (check(x), jax.jit(check)(x)):
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(np.asarray(a, np.complex128), np.asarray(b, np.complex128))
