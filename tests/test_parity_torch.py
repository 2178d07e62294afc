"""Trajectory parity with ``torch.optim`` in float64.

Both sides start from the same parameters and, at every step, receive the gradient of the same
fixed loss evaluated (in numpy) at their *own* current parameters. A wrong formula therefore
does not just shift one step: it sends the two trajectories apart, and the comparison at every
one of the steps catches it. The loss mixes a per-entry quadratic, a sine and a fixed noise
sequence whose amplitude drops after a few steps, so gradients stay far from zero, depend on the
parameters (which makes weight decay matter) and shrink over time (which makes AMSGrad's running
maximum matter).

torch and optim_chain evaluate the same formulas in different orders, so they agree to rounding:
after 40 float64 steps the largest relative difference measured was about 2e-11 (on an entry
passing near zero), typically 1e-13. ``rtol=1e-9`` leaves two orders of margin, while a
difference in the algorithm (a misplaced ``eps``, another AMSGrad maximum, decay on the wrong
side of the preconditioner) moves the trajectories by 1e-3 or more.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optim_chain as oc

torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[parity]'")

STEPS = 40
RTOL = 1e-9
ATOL = 1e-12  # for entries that pass close to zero; parameters are of order one

# A small tree with a matrix, a vector, a scalar and a 3-d leaf.
SHAPES = {"dense": {"kernel": (5, 3), "bias": (3,)}, "scale": (), "embedding": (4, 2, 2)}
_SHAPE_LEAVES, TREEDEF = jax.tree_util.tree_flatten_with_path(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
LEAF_PATHS = [jax.tree_util.keystr(path) for path, _ in _SHAPE_LEAVES]
LEAF_SHAPES = [shape for _, shape in _SHAPE_LEAVES]


class Problem(NamedTuple):
    """Starting point, curvature and noise of the test loss, real or complex."""

    theta0: list[np.ndarray]
    curvature: list[np.ndarray]
    noise: list[list[np.ndarray]]


def _problem(seed: int = 0, complex_leaves: bool = False) -> Problem:
    rng = np.random.default_rng(seed)

    def draw(shape):
        x = rng.normal(size=shape)
        return x + 1j * rng.normal(size=shape) if complex_leaves else x

    theta0 = [draw(s) for s in LEAF_SHAPES]
    curvature = [rng.uniform(0.5, 2.0, size=s) for s in LEAF_SHAPES]
    noise = [[(2.0 if t < 12 else 0.2) * draw(s) for s in LEAF_SHAPES] for t in range(STEPS)]
    return Problem(theta0, curvature, noise)


REAL = _problem()
#: The same loss on complex leaves: real and imaginary parts each see the real problem's terms.
COMPLEX = _problem(1, complex_leaves=True)
THETA0 = REAL.theta0


def _wave(x: np.ndarray) -> np.ndarray:
    """``sin(3x)/2``, per component for a complex ``x`` (``sin`` of a complex number grows without bound)."""
    if np.iscomplexobj(x):
        return 0.5 * (np.sin(3.0 * x.real) + 1j * np.sin(3.0 * x.imag))
    return 0.5 * np.sin(3.0 * x)


def gradient(leaves: list[np.ndarray], step: int, problem: Problem = REAL) -> list[np.ndarray]:
    """Gradient of ``sum(c/2 x^2 - cos(3x)/6) + <noise_t, x>`` at ``leaves``, in float64 numpy."""
    return [
        c * x + _wave(x) + n for x, c, n in zip(leaves, problem.curvature, problem.noise[step], strict=True)
    ]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _step(build, static, hyper, grads, state, params):
    # The hyperparameters are traced, so a test compiles once, not once per example.
    updates, state = build(**dict(static), **hyper).update(grads, state, params)
    return optax.apply_updates(params, updates), state


def run_optim_chain(build: Callable[..., optax.GradientTransformation], static=None, problem=REAL, **hyper):
    """Per leaf, the parameters after each of the ``STEPS`` steps, shape ``(STEPS, *leaf)``.

    ``build(**static, **hyper)`` makes the optimizer: ``static`` holds what decides the chain's
    structure (flags, and a momentum, which decides whether a momentum transform is added),
    ``hyper`` the float hyperparameters.
    """
    static = tuple(sorted((static or {}).items()))
    params = jax.tree.unflatten(TREEDEF, [jnp.asarray(x) for x in problem.theta0])
    state = build(**dict(static), **hyper).init(params)
    history = []
    for step in range(STEPS):
        leaves = [np.asarray(x) for x in jax.tree.leaves(params)]
        grads = jax.tree.unflatten(TREEDEF, gradient(leaves, step, problem))
        params, state = _step(build, static, hyper, grads, state, params)
        history.append([np.asarray(x) for x in jax.tree.leaves(params)])
    return [np.stack(per_leaf) for per_leaf in zip(*history, strict=True)]


def run_torch(make_optimizer, problem=REAL) -> list[np.ndarray]:
    """The same as :func:`run_optim_chain` for a ``torch.optim`` optimizer factory."""
    tensors = [torch.tensor(x, requires_grad=True) for x in problem.theta0]
    opt = make_optimizer(tensors)
    history = []
    for step in range(STEPS):
        grads = gradient([t.detach().numpy().copy() for t in tensors], step, problem)
        for tensor, g in zip(tensors, grads, strict=True):
            tensor.grad = torch.from_numpy(np.array(g))
        opt.step()
        history.append([t.detach().numpy().copy() for t in tensors])
    return [np.stack(per_leaf) for per_leaf in zip(*history, strict=True)]


def assert_same_trajectory(ours: list[np.ndarray], theirs: list[np.ndarray], problem=REAL) -> None:
    dtype = np.result_type(*problem.theta0)
    for path, a, b in zip(LEAF_PATHS, ours, theirs, strict=True):
        assert a.dtype == dtype and b.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=f"leaf {path}")
    # The comparison means something only if the parameters went somewhere.
    moved = max(np.max(np.abs(b[-1] - x0)) for b, x0 in zip(theirs, problem.theta0, strict=True))
    assert moved > 1e-2, f"the trajectory barely moved ({moved:.2e}): the test would be vacuous"


def max_relative_difference(ours: list[np.ndarray], theirs: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))) for a, b in zip(ours, theirs))


lrs = st.floats(1e-3, 0.1)
betas1 = st.floats(0.0, 0.95)
betas2 = st.floats(0.9, 0.9999)
epsilons = st.floats(-8.0, -4.0).map(lambda e: 10.0**e)
decays = st.floats(1e-3, 0.2)
momenta = st.floats(0.05, 0.95)
EXAMPLES = settings(max_examples=10, deadline=None)
# A momentum decides whether the chain holds a momentum transform, so it cannot be traced and
# every example compiles anew: fewer of them.
MOMENTUM_EXAMPLES = settings(max_examples=4, deadline=None)


# ------------------------------------------------------------------------------------------ SGD


@pytest.mark.parametrize("variant", ["plain", "momentum", "nesterov"])
@MOMENTUM_EXAMPLES
@given(lr=st.floats(1e-3, 0.3), momentum=momenta)
def test_sgd_matches_torch(variant, lr, momentum):
    if variant == "plain":
        static = {}
    else:
        static = {"momentum": momentum, "nesterov": variant == "nesterov"}
    theirs = run_torch(lambda p: torch.optim.SGD(p, lr=lr, **static))
    assert_same_trajectory(run_optim_chain(oc.sgd, static, learning_rate=lr), theirs)


@MOMENTUM_EXAMPLES
@given(
    lr=st.floats(1e-3, 0.3),
    weight_decay=decays,
    momentum=st.one_of(st.just(0.0), momenta),
    nesterov=st.booleans(),
)
def test_sgd_l2_matches_torch_sgd_weight_decay(lr, weight_decay, momentum, nesterov):
    static = {"momentum": momentum, "nesterov": nesterov and momentum > 0}
    theirs = run_torch(lambda p: torch.optim.SGD(p, lr=lr, weight_decay=weight_decay, **static))
    ours = run_optim_chain(oc.sgd_l2, static, learning_rate=lr, weight_decay=weight_decay)
    assert_same_trajectory(ours, theirs)


# ----------------------------------------------------------------------------------------- Adam


@pytest.mark.parametrize("amsgrad", [False, True])
@EXAMPLES
@given(lr=lrs, b1=betas1, b2=betas2, eps=epsilons)
def test_adam_matches_torch(amsgrad, lr, b1, b2, eps):
    theirs = run_torch(lambda p: torch.optim.Adam(p, lr=lr, betas=(b1, b2), eps=eps, amsgrad=amsgrad))
    ours = run_optim_chain(oc.adam, {"amsgrad": amsgrad}, learning_rate=lr, b1=b1, b2=b2, eps=eps)
    assert_same_trajectory(ours, theirs)


@pytest.mark.parametrize("amsgrad", [False, True])
@EXAMPLES
@given(lr=lrs, b1=betas1, b2=betas2, eps=epsilons, weight_decay=decays)
def test_adam_l2_matches_torch_adam_weight_decay(amsgrad, lr, b1, b2, eps, weight_decay):
    theirs = run_torch(
        lambda p: torch.optim.Adam(
            p, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad
        )
    )
    hyper = {"learning_rate": lr, "weight_decay": weight_decay, "b1": b1, "b2": b2, "eps": eps}
    assert_same_trajectory(run_optim_chain(oc.adam_l2, {"amsgrad": amsgrad}, **hyper), theirs)


@pytest.mark.parametrize("amsgrad", [False, True])
@EXAMPLES
@given(lr=lrs, b1=betas1, b2=betas2, eps=epsilons, weight_decay=decays)
def test_adamw_matches_torch_adamw(amsgrad, lr, b1, b2, eps, weight_decay):
    theirs = run_torch(
        lambda p: torch.optim.AdamW(
            p, lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad
        )
    )
    hyper = {"learning_rate": lr, "weight_decay": weight_decay, "b1": b1, "b2": b2, "eps": eps}
    assert_same_trajectory(run_optim_chain(oc.adamw, {"amsgrad": amsgrad}, **hyper), theirs)


def test_torch_amsgrad_is_the_raw_maximum_convention():
    """torch keeps the maximum of the raw ``v``; the bias-corrected maximum is another trajectory.

    With ``b2 = 0.9`` and gradients that shrink after step 12, ``v`` falls and the running
    maximum is what sets the step, so plain Adam, the raw and the corrected maximum all differ.
    """
    hyper = {"learning_rate": 0.05, "b1": 0.9, "b2": 0.9}
    theirs = run_torch(lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.9, 0.9), amsgrad=True))
    assert_same_trajectory(run_optim_chain(oc.adam, {"amsgrad": True}, **hyper), theirs)
    corrected = run_optim_chain(oc.adam, {"amsgrad": True, "amsgrad_max_of": "corrected"}, **hyper)
    assert max_relative_difference(corrected, theirs) > 1e-2
    no_max = run_optim_chain(oc.adam, {"amsgrad": False}, **hyper)
    assert max_relative_difference(no_max, theirs) > 1e-2


# -------------------------------------------------------------------------------------- RMSprop


def rmsprop_l2(weight_decay, **rmsprop_args):
    """torch's RMSprop ``weight_decay`` is L2: the preset's parts with the L2 transform in front."""
    return oc.chain(oc.add_l2_regularization(weight_decay), *oc.rmsprop(**rmsprop_args).parts)


@pytest.mark.parametrize("variant", ["plain", "centered", "momentum", "weight_decay", "everything"])
@MOMENTUM_EXAMPLES
@given(
    lr=st.floats(1e-3, 0.05), alpha=st.floats(0.8, 0.999), eps=epsilons, momentum=momenta, weight_decay=decays
)
def test_rmsprop_matches_torch(variant, lr, alpha, eps, momentum, weight_decay):
    centered = variant in ("centered", "everything")
    momentum = momentum if variant in ("momentum", "everything") else 0.0
    weight_decay = weight_decay if variant in ("weight_decay", "everything") else 0.0
    theirs = run_torch(
        lambda p: torch.optim.RMSprop(
            p, lr=lr, alpha=alpha, eps=eps, centered=centered, momentum=momentum, weight_decay=weight_decay
        )
    )
    static = {"centered": centered, "momentum": momentum}
    hyper = {"learning_rate": lr, "decay": alpha, "eps": eps}
    if weight_decay:
        ours = run_optim_chain(rmsprop_l2, static, weight_decay=weight_decay, **hyper)
    else:
        ours = run_optim_chain(oc.rmsprop, static, **hyper)
    assert_same_trajectory(ours, theirs)


# -------------------------------------------------------------------------------------- Adagrad


def adagrad_l2(weight_decay, **adagrad_args):
    return oc.chain(oc.add_l2_regularization(weight_decay), *oc.adagrad(**adagrad_args).parts)


@settings(max_examples=10, deadline=None)
@given(
    lr=st.floats(1e-2, 0.5),
    initial=st.one_of(st.just(0.0), st.floats(1e-3, 1.0)),
    eps=st.floats(-10.0, -6.0).map(lambda e: 10.0**e),
    weight_decay=st.one_of(st.just(0.0), decays),
)
def test_adagrad_matches_torch(lr, initial, eps, weight_decay):
    theirs = run_torch(
        lambda p: torch.optim.Adagrad(
            p, lr=lr, initial_accumulator_value=initial, eps=eps, weight_decay=weight_decay
        )
    )
    hyper = {"learning_rate": lr, "initial_accumulator_value": initial, "eps": eps}
    if weight_decay:
        ours = run_optim_chain(adagrad_l2, weight_decay=weight_decay, **hyper)
    else:
        ours = run_optim_chain(oc.adagrad, **hyper)
    assert_same_trajectory(ours, theirs)


# ------------------------------------------------------------------------------ complex leaves

# torch optimizes a complex parameter as the pair of reals torch.view_as_real gives; so do we.
# Every entry of COMPLEX has a nonzero imaginary part, and the gradient's real and imaginary
# parts differ, so a second moment of |g|^2 (optax's convention) leaves these trajectories at once.
COMPLEX_CASES = {
    "adam": (
        lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.99), eps=1e-6),
        oc.adam,
        {},
        {"learning_rate": 0.05, "b1": 0.8, "b2": 0.99, "eps": 1e-6},
    ),
    "adam_amsgrad": (
        lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.9, 0.9), amsgrad=True),
        oc.adam,
        {"amsgrad": True},
        {"learning_rate": 0.05, "b1": 0.9, "b2": 0.9},
    ),
    "adamw": (
        lambda p: torch.optim.AdamW(p, lr=0.05, betas=(0.8, 0.99), weight_decay=0.1),
        oc.adamw,
        {},
        {"learning_rate": 0.05, "b1": 0.8, "b2": 0.99, "weight_decay": 0.1},
    ),
    "adam_l2": (
        lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.8, 0.99), weight_decay=0.1),
        oc.adam_l2,
        {},
        {"learning_rate": 0.05, "b1": 0.8, "b2": 0.99, "weight_decay": 0.1},
    ),
    "sgd_momentum": (
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
        oc.sgd_l2,
        {"momentum": 0.9, "nesterov": True},
        {"learning_rate": 0.05, "weight_decay": 0.1},
    ),
    "rmsprop": (
        lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, centered=True, momentum=0.5),
        oc.rmsprop,
        {"centered": True, "momentum": 0.5},
        {"learning_rate": 0.01, "decay": 0.9},
    ),
    "adagrad": (
        lambda p: torch.optim.Adagrad(p, lr=0.1, initial_accumulator_value=0.1, weight_decay=0.05),
        adagrad_l2,
        {},
        {"learning_rate": 0.1, "initial_accumulator_value": 0.1, "weight_decay": 0.05},
    ),
}


@pytest.mark.parametrize("case", COMPLEX_CASES)
def test_complex_leaves_match_torch(case):
    make_torch, build, static, hyper = COMPLEX_CASES[case]
    theirs = run_torch(make_torch, COMPLEX)
    assert all(np.iscomplexobj(x) for x in theirs)
    assert_same_trajectory(run_optim_chain(build, static, COMPLEX, **hyper), theirs, COMPLEX)


def test_complex_adam_is_not_the_modulus_convention():
    """A second moment of ``|g|^2`` shared by both components (optax's Adam) is another trajectory."""
    theirs = run_torch(lambda p: torch.optim.Adam(p, lr=0.05), COMPLEX)
    params = jax.tree.unflatten(TREEDEF, [jnp.asarray(x) for x in COMPLEX.theta0])
    opt = optax.adam(0.05)
    state = opt.init(params)
    for step in range(STEPS):
        leaves = gradient([np.asarray(x) for x in jax.tree.leaves(params)], step, COMPLEX)
        grads = jax.tree.unflatten(TREEDEF, [jnp.asarray(g) for g in leaves])
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    final = [np.asarray(x) for x in jax.tree.leaves(params)]
    assert max(np.max(np.abs(a - b[-1])) for a, b in zip(final, theirs, strict=True)) > 1e-2
