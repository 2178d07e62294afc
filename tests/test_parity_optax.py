"""Trajectory parity with optax where both libraries implement the same algorithm, in float32.

Each optimizer is run for ``STEPS`` steps from the same float32 parameters; the gradient at every
step is that of a fixed loss evaluated at each side's own current parameters, so the
trajectories only stay together if the algorithms are the same.

Tolerances: the two libraries evaluate the same formulas with different groupings (optax folds
the decay into the update before the learning rate, computes ``1 - b**t`` in float64 and rounds
it, uses ``rsqrt``), which costs a few float32 ulps (about 1e-7 relative) per step. Over 50
steps on a contracting problem these round-off differences add up to a few 1e-6 relative, so
``rtol=2e-5`` with an ``atol`` of 1e-6 (parameters are of order one) leaves margin. An
algorithmic difference (``eps`` inside instead of outside the root, a different AMSGrad
maximum, decay scaled differently) moves the trajectories by 1e-3 or more.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optim_chain as oc
from optim_chain import masks

STEPS = 50
RTOL = 2e-5
ATOL = 1e-6

PARAMS_SHAPES = {"dense": {"kernel": (5, 3), "bias": (3,)}, "norm": {"scale": (3,)}, "embedding": (4, 2)}
_SHAPE_LEAVES, TREEDEF = jax.tree_util.tree_flatten_with_path(
    PARAMS_SHAPES, is_leaf=lambda x: isinstance(x, tuple)
)
LEAF_PATHS = [jax.tree_util.keystr(path) for path, _ in _SHAPE_LEAVES]
LEAF_SHAPES = [shape for _, shape in _SHAPE_LEAVES]

_rng = np.random.default_rng(1)
THETA0 = [_rng.normal(size=s) for s in LEAF_SHAPES]
CURVATURE = [_rng.uniform(0.5, 2.0, size=s) for s in LEAF_SHAPES]
NOISE = [[(2.0 if t < 12 else 0.2) * _rng.normal(size=s) for s in LEAF_SHAPES] for t in range(STEPS)]

# Decay the matrices, not the bias or the norm scale: as a bool tree (both libraries) and as
# an optim_chain predicate.
DECAY_TREE = {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}, "embedding": True}
DECAY_RULE = masks.ndim_at_least(2)
SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 0.05, warmup_steps=10, decay_steps=STEPS, end_value=0.005)


def gradient(leaves: list[np.ndarray], step: int, dtype) -> list[np.ndarray]:
    """Gradient of ``sum(c/2 x^2 - cos(3x)/6) + <noise_t, x>``, computed in ``dtype``."""
    return [
        (c.astype(dtype) * x + dtype(0.5) * np.sin(dtype(3.0) * x) + n.astype(dtype)).astype(dtype)
        for x, c, n in zip(leaves, CURVATURE, NOISE[step], strict=True)
    ]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _step(build, static, hyper, grads, state, params):
    # The float hyperparameters are traced: one compilation per test, not per example.
    updates, state = build(**dict(static), **hyper).update(grads, state, params)
    return optax.apply_updates(params, updates), state


def trajectory(build: Callable[..., optax.GradientTransformation], static=None, dtype=np.float32, **hyper):
    """Per leaf, the parameters after each step, stacked: shape ``(STEPS, *leaf)``."""
    static = tuple(sorted((static or {}).items()))
    params = jax.tree.unflatten(TREEDEF, [jnp.asarray(x, dtype) for x in THETA0])
    state = build(**dict(static), **hyper).init(params)
    history = []
    for step in range(STEPS):
        leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
        grads = jax.tree.unflatten(TREEDEF, gradient(leaves, step, dtype))
        params, state = _step(build, static, hyper, grads, state, params)
        history.append([np.asarray(x) for x in jax.tree.leaves(params)])
    return [np.stack(per_leaf) for per_leaf in zip(*history, strict=True)]


def assert_same_trajectory(ours, theirs, rtol=RTOL, atol=ATOL):
    for path, a, b in zip(LEAF_PATHS, ours, theirs, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"leaf {path}")
    moved = max(np.max(np.abs(b[-1] - x0)) for b, x0 in zip(theirs, THETA0, strict=True))
    assert moved > 1e-2, f"the trajectory barely moved ({moved:.2e}): the test would be vacuous"


def max_relative_difference(ours, theirs) -> float:
    return max(float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))) for a, b in zip(ours, theirs))


lrs = st.floats(1e-3, 0.05)
betas1 = st.floats(0.0, 0.95)
betas2 = st.floats(0.9, 0.999)
epsilons = st.floats(-8.0, -4.0).map(lambda e: 10.0**e)
decays = st.floats(1e-3, 0.2)
EXAMPLES = settings(max_examples=5, deadline=None)


# ----------------------------------------------------------------------------------------- Adam


@EXAMPLES
@given(lr=lrs, b1=betas1, b2=betas2, eps=epsilons, eps_root=st.one_of(st.just(0.0), epsilons))
def test_adam_matches_optax(lr, b1, b2, eps, eps_root):
    hyper = {"learning_rate": lr, "b1": b1, "b2": b2, "eps": eps, "eps_root": eps_root}
    assert_same_trajectory(trajectory(oc.adam, **hyper), trajectory(optax.adam, **hyper))


@EXAMPLES
@given(lr=lrs, b1=betas1, b2=betas2, eps=epsilons, weight_decay=decays)
def test_adamw_matches_optax(lr, b1, b2, eps, weight_decay):
    hyper = {"learning_rate": lr, "weight_decay": weight_decay, "b1": b1, "b2": b2, "eps": eps}
    assert_same_trajectory(trajectory(oc.adamw, **hyper), trajectory(optax.adamw, **hyper))


def optax_adamw_masked(**kwargs):
    return optax.adamw(mask=DECAY_TREE, **kwargs)


def adamw_mask_tree(**kwargs):
    return oc.adamw(mask=DECAY_TREE, **kwargs)


def adamw_mask_rule(**kwargs):
    return oc.adamw(mask=DECAY_RULE, **kwargs)


@pytest.mark.parametrize("ours", [adamw_mask_tree, adamw_mask_rule], ids=["bool_tree", "predicate"])
def test_masked_adamw_matches_optax(ours):
    hyper = {"learning_rate": 0.03, "weight_decay": 0.2}
    theirs = trajectory(optax_adamw_masked, **hyper)
    assert_same_trajectory(trajectory(ours, **hyper), theirs)
    # The mask matters: decaying everything is a different trajectory.
    assert max_relative_difference(trajectory(oc.adamw, **hyper), theirs) > 1e-3


def test_adamw_with_a_schedule_matches_optax():
    static = {"learning_rate": SCHEDULE}
    hyper = {"weight_decay": 0.1, "b1": 0.9, "b2": 0.99}
    assert_same_trajectory(trajectory(oc.adamw, static, **hyper), trajectory(optax.adamw, static, **hyper))


def test_amsgrad_corrected_matches_optax_and_differs_from_raw():
    """``amsgrad_max_of="corrected"`` is optax's AMSGrad; the default (torch's) is not.

    Run in float64 so that agreement is tight. ``b2 = 0.9`` and gradients that shrink after a
    few steps make the running maximum active.
    """
    hyper = {"learning_rate": 0.05, "b1": 0.9, "b2": 0.9, "eps": 1e-8}
    theirs = trajectory(optax.amsgrad, dtype=np.float64, **hyper)
    corrected = trajectory(oc.adam, {"amsgrad": True, "amsgrad_max_of": "corrected"}, np.float64, **hyper)
    assert_same_trajectory(corrected, theirs, rtol=1e-10, atol=1e-12)
    raw = trajectory(oc.adam, {"amsgrad": True}, np.float64, **hyper)
    assert max_relative_difference(raw, theirs) > 1e-2


# ------------------------------------------------------------------------------------------ SGD


@pytest.mark.parametrize("momentum,nesterov", [(None, False), (0.9, False), (0.5, True)])
@EXAMPLES
@given(lr=st.floats(1e-3, 0.3))
def test_sgd_matches_optax(momentum, nesterov, lr):
    static = {} if momentum is None else {"momentum": momentum, "nesterov": nesterov}
    theirs = trajectory(optax.sgd, static, learning_rate=lr)
    assert_same_trajectory(trajectory(oc.sgd, static, learning_rate=lr), theirs)


@pytest.mark.parametrize("nesterov", [False, True])
def test_add_momentum_matches_optax_trace(nesterov):
    ours, theirs = oc.add_momentum(0.8, nesterov), optax.trace(0.8, nesterov)
    tree = jax.tree.unflatten(TREEDEF, [jnp.asarray(x, jnp.float32) for x in THETA0])
    ours_state, theirs_state = ours.init(tree), theirs.init(tree)
    for step in range(STEPS):
        grads = jax.tree.unflatten(TREEDEF, [jnp.asarray(n, jnp.float32) for n in NOISE[step]])
        ours_updates, ours_state = ours.update(grads, ours_state)
        theirs_updates, theirs_state = theirs.update(grads, theirs_state)
        # The same two float32 operations in the same order: agreement to the last few ulps.
        for a, b in zip(jax.tree.leaves(ours_updates), jax.tree.leaves(theirs_updates), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(
            np.concatenate([np.ravel(x) for x in jax.tree.leaves(ours_state.trace)]),
            np.concatenate([np.ravel(x) for x in jax.tree.leaves(theirs_state.trace)]),
            rtol=1e-6,
            atol=1e-7,
        )


# -------------------------------------------------------------------------------------- RMSprop


@pytest.mark.parametrize(
    "centered,momentum,eps_inside",
    [(False, 0.0, True), (True, 0.0, True), (False, 0.7, False), (True, 0.7, True), (True, 0.0, False)],
)
def test_rmsprop_matches_optax(centered, momentum, eps_inside):
    """optax puts ``eps`` under the root by default: ``eps=0, eps_root=eps`` here.

    optax applies the learning rate before its momentum trace and optim_chain after; for a
    constant learning rate the two orders are the same algorithm.
    """
    lr, decay, eps = 0.01, 0.9, 1e-6
    theirs_static = {"centered": centered, "eps_in_sqrt": eps_inside, "momentum": momentum or None}
    theirs = trajectory(optax.rmsprop, theirs_static, learning_rate=lr, decay=decay, eps=eps)
    eps_args = {"eps": 0.0, "eps_root": eps} if eps_inside else {"eps": eps}
    ours_static = {"centered": centered, "momentum": momentum}
    ours = trajectory(oc.rmsprop, ours_static, learning_rate=lr, decay=decay, **eps_args)
    assert_same_trajectory(ours, theirs)


# -------------------------------------------------------------------------------------- Adagrad


@pytest.mark.parametrize("initial", [0.1, 0.0])
def test_adagrad_in_optax_convention_matches_optax(initial):
    """optax's Adagrad: accumulator from 0.1 by default, ``eps`` under the root."""
    theirs = trajectory(optax.adagrad, learning_rate=0.1, initial_accumulator_value=initial, eps=1e-7)
    ours = trajectory(
        oc.adagrad, learning_rate=0.1, initial_accumulator_value=initial, eps=0.0, eps_root=1e-7
    )
    assert_same_trajectory(ours, theirs)
    # torch's convention (eps outside the root, here made large to be visible) is another one.
    torch_like = trajectory(oc.adagrad, learning_rate=0.1, initial_accumulator_value=initial, eps=1e-2)
    assert max_relative_difference(torch_like, theirs) > 1e-3
