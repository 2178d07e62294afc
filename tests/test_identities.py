"""Identities between chains, and the decay conventions against formulas written out in numpy.

* SGD+L2 and SGDW are the same algorithm without momentum (Loshchilov & Hutter, Prop. 1), and
  different ones with it.
* AdamW with ``weight_decay=0`` is Adam, bit for bit, in every dtype, jitted or not.
* Adam+L2 is not AdamW: the L2 term is divided by the adaptive denominator.
* Each ``decay_scaling`` of ``adamw`` and ``sgdw`` follows its formula with a cosine schedule.
* Dropping ``correct_bias`` gives Adam without bias correction.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optim_chain as oc

STEPS = 40

SHAPES = {"dense": {"kernel": (4, 3), "bias": (3,)}, "scale": (), "embedding": (3, 2, 2)}
_SHAPE_LEAVES, TREEDEF = jax.tree_util.tree_flatten_with_path(SHAPES, is_leaf=lambda x: isinstance(x, tuple))
LEAF_PATHS = [jax.tree_util.keystr(path) for path, _ in _SHAPE_LEAVES]
LEAF_SHAPES = [shape for _, shape in _SHAPE_LEAVES]

_rng = np.random.default_rng(2)
THETA0 = [_rng.normal(size=s) + 0.5 for s in LEAF_SHAPES]
CURVATURE = [_rng.uniform(0.5, 2.0, size=s) for s in LEAF_SHAPES]
NOISE = [[(2.0 if t < 12 else 0.2) * _rng.normal(size=s) for s in LEAF_SHAPES] for t in range(STEPS)]

# Cosine decay from PEAK to ALPHA * PEAK over DECAY_STEPS, then flat: the last steps run on the floor.
PEAK, ALPHA, DECAY_STEPS = 0.05, 0.1, 30
COSINE = optax.cosine_decay_schedule(PEAK, DECAY_STEPS, alpha=ALPHA)


def numpy_cosine(step: int) -> float:
    """The same cosine schedule, written out: ``COSINE(step)`` for ``step = 0, 1, ...``."""
    progress = min(step, DECAY_STEPS) / DECAY_STEPS
    return PEAK * ((1 - ALPHA) * 0.5 * (1 + np.cos(np.pi * progress)) + ALPHA)


def gradient(leaves, step, frozen=()):
    """Gradient of ``sum(c/2 x^2 - cos(3x)/6) + <noise_t, x>`` in float64; zero on ``frozen`` leaves."""
    return [
        np.zeros_like(x) if index in frozen else c * x + 0.5 * np.sin(3.0 * x) + n
        for index, (x, c, n) in enumerate(zip(leaves, CURVATURE, NOISE[step], strict=True))
    ]


def _apply(opt, grads, state, params):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state


@functools.partial(jax.jit, static_argnums=(0, 1))
def _traced_step(build, static, hyper, grads, state, params):
    # Float hyperparameters traced: a hypothesis test compiles once, not once per example.
    return _apply(build(**dict(static), **hyper), grads, state, params)


def trajectory(optimizer, static=None, *, dtype=jnp.float64, jit=True, frozen=(), steps=STEPS, **hyper):
    """Per leaf, the parameters after each step, shape ``(steps, *leaf)``, and the final state.

    ``optimizer`` is a transformation (run with ``jax.jit(update)`` or eagerly), or a function
    that ``build(**static, **hyper)`` a transformation from traced float hyperparameters.
    """
    if isinstance(optimizer, optax.GradientTransformation):
        opt = optimizer
        step_fn = functools.partial(_apply, opt)
        step_fn = jax.jit(step_fn) if jit else step_fn
    else:
        static = tuple(sorted((static or {}).items()))
        opt = optimizer(**dict(static), **hyper)
        step_fn = functools.partial(_traced_step, optimizer, static, hyper)
    params = jax.tree.unflatten(TREEDEF, [jnp.asarray(x, dtype) for x in THETA0])
    state = opt.init(params)
    history = []
    for step in range(steps):
        leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(params)]
        grads = jax.tree.unflatten(TREEDEF, [jnp.asarray(g, dtype) for g in gradient(leaves, step, frozen)])
        params, state = step_fn(grads, state, params)
        history.append([np.asarray(x) for x in jax.tree.leaves(params)])
    return [np.stack(per_leaf) for per_leaf in zip(*history, strict=True)], state


def run(optimizer, static=None, **kwargs):
    """The trajectory alone."""
    return trajectory(optimizer, static, **kwargs)[0]


def assert_trajectories_close(ours, reference, rtol, atol):
    for path, a, b in zip(LEAF_PATHS, ours, reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"leaf {path}")


def max_relative_difference(ours, theirs) -> float:
    return max(float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))) for a, b in zip(ours, theirs))


# ------------------------------------------------------------------------------ SGD+L2 vs SGDW


def _learning_rate(lr, schedule: bool):
    return optax.cosine_decay_schedule(lr, DECAY_STEPS, alpha=ALPHA) if schedule else lr


def sgd_l2_preset(lr, weight_decay, schedule):
    return oc.sgd_l2(_learning_rate(lr, schedule), weight_decay)


def sgdw_preset(lr, weight_decay, schedule):
    return oc.sgdw(_learning_rate(lr, schedule), weight_decay)


def sgd_preset(lr, schedule):
    return oc.sgd(_learning_rate(lr, schedule))


@settings(max_examples=6, deadline=None)
@given(lr=st.floats(1e-2, 0.3), weight_decay=st.floats(1e-2, 0.3), schedule=st.booleans())
def test_sgd_l2_equals_sgdw_without_momentum(lr, weight_decay, schedule):
    """``-lr*(g + wd*theta)`` and ``-lr*g - (lr*wd)*theta`` are one step, rounded differently.

    Floating-point multiplication does not distribute exactly over addition, so the two chains
    differ in the last bits of each step; on this contracting problem the differences stay at
    rounding level (1e-15 to 1e-13 relative, the larger on entries near zero), inside
    ``rtol=1e-12``, while the decay itself changes the trajectory by far more.
    """
    static = {"schedule": schedule}
    l2 = run(sgd_l2_preset, static, lr=lr, weight_decay=weight_decay)
    decoupled = run(sgdw_preset, static, lr=lr, weight_decay=weight_decay)
    assert_trajectories_close(decoupled, l2, rtol=1e-12, atol=1e-14)
    assert max_relative_difference(l2, run(sgd_preset, static, lr=lr)) > 1e-5  # the decay acted


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_l2_and_sgdw_differ_with_momentum(nesterov):
    """With momentum, L2 decay is accumulated in the buffer and decoupled decay is not."""
    l2 = run(oc.sgd_l2(0.05, 0.1, momentum=0.9, nesterov=nesterov))
    decoupled = run(oc.sgdw(0.05, 0.1, momentum=0.9, nesterov=nesterov))
    assert max_relative_difference(decoupled, l2) > 1e-2


# ---------------------------------------------------------------------------- AdamW(0) == Adam


def _bits(x: np.ndarray) -> np.ndarray:
    return x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
def test_adamw_without_decay_is_adam_bit_for_bit(dtype, jit):
    """Parameters and states compared as bit patterns, not within a tolerance.

    Under jit this also pins down that a zero decay adds no arithmetic: XLA fuses
    ``theta + (-lr) * step`` into one FMA, and an extra ``- 0 * theta`` would split it into
    two roundings and change last bits.
    """
    steps = 25 if jit else 8
    adam, adam_state = trajectory(oc.adam(0.02, 0.9, 0.99), dtype=dtype, jit=jit, steps=steps)
    adamw, adamw_state = trajectory(oc.adamw(0.02, 0.0, 0.9, 0.99), dtype=dtype, jit=jit, steps=steps)
    for path, a, b in zip(LEAF_PATHS, adamw, adam, strict=True):
        assert a.dtype == b.dtype == jnp.dtype(dtype)
        np.testing.assert_array_equal(_bits(a), _bits(b), err_msg=f"leaf {path}")
    # The Adam part of AdamW's state is Adam's state, bit for bit too.
    adam_parts = len(oc.adam(0.02).parts)
    for a, b in zip(jax.tree.leaves(adamw_state[:adam_parts]), jax.tree.leaves(adam_state), strict=True):
        np.testing.assert_array_equal(_bits(np.asarray(a)), _bits(np.asarray(b)))
    # Not vacuous: a non-zero decay does change the trajectory at this dtype.
    decayed = run(oc.adamw(0.02, 0.5, 0.9, 0.99), dtype=dtype, jit=True, steps=steps)
    assert all(not np.array_equal(a, b) for a, b in zip(decayed, adam))


# ------------------------------------------------------------------------- Adam+L2 vs AdamW


def test_adam_l2_is_not_adamw():
    """The same ``lambda`` decays very differently once it passes through ``sqrt(vhat)``.

    The kernel (leaf 1) gets no gradient from the loss. Under AdamW it shrinks geometrically,
    ``theta_t = (1 - lr*lambda)^t theta_0``; under Adam+L2 its only gradient is
    ``lambda*theta``, which Adam normalizes to about one, so it moves by about ``lr`` per step
    whatever ``lambda`` is.
    """
    lr, weight_decay, kernel = 0.01, 0.01, 1
    assert LEAF_PATHS[kernel] == "['dense']['kernel']"
    l2 = run(oc.adam_l2(lr, weight_decay), frozen=(kernel,))
    decoupled = run(oc.adamw(lr, weight_decay), frozen=(kernel,))

    geometric = (1 - lr * weight_decay) ** np.arange(1, STEPS + 1)
    expected = geometric[:, None, None] * THETA0[kernel]
    np.testing.assert_allclose(decoupled[kernel], expected, rtol=1e-12)
    # Adam+L2: the first step is lr * sign(theta) (up to eps), and the kernel keeps moving by
    # nearly lr per step (until it reaches zero), about 1/(lambda*|theta|) times (here 100/|theta|)
    # what AdamW's decay does to it.
    decay_gradient = weight_decay * THETA0[kernel]
    first = THETA0[kernel] - lr * decay_gradient / (np.abs(decay_gradient) + 1e-8)
    np.testing.assert_allclose(l2[kernel][0], first, rtol=1e-12)
    moved_l2 = np.abs(l2[kernel][-1] - THETA0[kernel])
    moved_decoupled = np.abs(decoupled[kernel][-1] - THETA0[kernel])
    far_from_zero = np.abs(THETA0[kernel]) > lr * STEPS
    assert np.count_nonzero(far_from_zero) >= 6
    assert np.all(moved_l2[far_from_zero] > 0.8 * lr * STEPS)
    assert np.all(moved_l2 > 20 * moved_decoupled)
    # The leaves that do get gradients follow different trajectories too.
    others = [i for i in range(len(LEAF_PATHS)) if i != kernel]
    assert max_relative_difference([l2[i] for i in others], [decoupled[i] for i in others]) > 1e-3


# -------------------------------------------------------------------- decay_scaling, in numpy


def learning_rates(schedule: bool) -> np.ndarray:
    return np.array([numpy_cosine(t) if schedule else PEAK for t in range(STEPS)])


def decay_multipliers(mode: str, lrs: np.ndarray, peak: float) -> np.ndarray:
    return {"learning_rate": lrs, "schedule": lrs / peak, "none": np.ones_like(lrs)}[mode]


def numpy_adamw(lrs, etas, weight_decay, b1, b2, eps):
    """AdamW as the formula: ``theta -= lr_t*mhat/(sqrt(vhat)+eps) + eta_t*lambda*theta``."""
    theta = [x.copy() for x in THETA0]
    m = [np.zeros_like(x) for x in theta]
    v = [np.zeros_like(x) for x in theta]
    history = []
    for t in range(STEPS):
        grads = gradient(theta, t)
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            mhat = m[i] / (1 - b1 ** (t + 1))
            vhat = v[i] / (1 - b2 ** (t + 1))
            theta[i] = theta[i] - lrs[t] * mhat / (np.sqrt(vhat) + eps) - etas[t] * weight_decay * theta[i]
        history.append([x.copy() for x in theta])
    return [np.stack(per_leaf) for per_leaf in zip(*history, strict=True)]


def numpy_sgdw(lrs, etas, weight_decay, momentum):
    """SGDW as the formula: ``b = mu*b + g``, ``theta -= lr_t*b + eta_t*lambda*theta``."""
    theta = [x.copy() for x in THETA0]
    buffer = [np.zeros_like(x) for x in theta]
    history = []
    for t in range(STEPS):
        grads = gradient(theta, t)
        for i, g in enumerate(grads):
            buffer[i] = momentum * buffer[i] + g
            theta[i] = theta[i] - lrs[t] * buffer[i] - etas[t] * weight_decay * theta[i]
        history.append([x.copy() for x in theta])
    return [np.stack(per_leaf) for per_leaf in zip(*history, strict=True)]


MODES = ["learning_rate", "schedule", "none"]


def test_numpy_cosine_is_the_optax_schedule():
    ours = np.array([numpy_cosine(t) for t in range(STEPS)])
    theirs = np.array([float(COSINE(jnp.asarray(t, jnp.int32))) for t in range(STEPS)])
    np.testing.assert_allclose(ours, theirs, rtol=1e-14)
    assert theirs[0] == PEAK and theirs[-1] == pytest.approx(ALPHA * PEAK)


@pytest.mark.parametrize("mode", MODES)
def test_adamw_decay_scaling_follows_its_formula(mode):
    weight_decay, b1, b2, eps = 0.05, 0.9, 0.99, 1e-8
    opt = oc.adamw(COSINE, weight_decay, b1, b2, eps, decay_scaling=mode, peak_learning_rate=PEAK)
    ours = run(opt)
    lrs = learning_rates(schedule=True)

    def reference(m):
        return numpy_adamw(lrs, decay_multipliers(m, lrs, PEAK), weight_decay, b1, b2, eps)

    assert_trajectories_close(ours, reference(mode), rtol=1e-10, atol=1e-13)
    for other in set(MODES) - {mode}:
        assert max_relative_difference(ours, reference(other)) > 1e-3, f"{mode} looks like {other}"


@pytest.mark.parametrize("mode", MODES)
def test_sgdw_decay_scaling_follows_its_formula(mode):
    weight_decay, momentum = 0.05, 0.8
    ours = run(oc.sgdw(COSINE, weight_decay, momentum, decay_scaling=mode, peak_learning_rate=PEAK))
    lrs = learning_rates(schedule=True)

    def reference(m):
        return numpy_sgdw(lrs, decay_multipliers(m, lrs, PEAK), weight_decay, momentum)

    assert_trajectories_close(ours, reference(mode), rtol=1e-10, atol=1e-13)
    for other in set(MODES) - {mode}:
        assert max_relative_difference(ours, reference(other)) > 1e-3, f"{mode} looks like {other}"


@pytest.mark.parametrize("preset", [oc.adamw, oc.sgdw], ids=["adamw", "sgdw"])
def test_constant_learning_rate_is_its_own_peak(preset):
    """With a constant ``lr``, ``"schedule"`` means ``eta_t = lr/peak``: ``1`` without a peak."""
    lr, weight_decay, peak = 0.02, 0.05, 0.08
    schedule_mode = run(preset(lr, weight_decay, decay_scaling="schedule"))
    none_mode = run(preset(lr, weight_decay, decay_scaling="none"))
    for a, b in zip(schedule_mode, none_mode, strict=True):
        np.testing.assert_array_equal(a, b)
    # With a peak, it is "none" with lambda scaled by lr/peak, and "learning_rate" with lambda/peak.
    with_peak = run(preset(lr, weight_decay, decay_scaling="schedule", peak_learning_rate=peak))
    scaled_none = run(preset(lr, weight_decay * lr / peak, decay_scaling="none"))
    scaled_lr = run(preset(lr, weight_decay / peak, decay_scaling="learning_rate"))
    assert_trajectories_close(with_peak, scaled_none, rtol=1e-12, atol=1e-14)
    assert_trajectories_close(with_peak, scaled_lr, rtol=1e-12, atol=1e-14)
    assert max_relative_difference(with_peak, none_mode) > 1e-3
    # And with the numpy formula (eta_t = lr/peak every step).
    lrs = np.full(STEPS, lr)
    if preset is oc.adamw:
        reference = numpy_adamw(lrs, lrs / peak, weight_decay, 0.9, 0.999, 1e-8)
    else:
        reference = numpy_sgdw(lrs, lrs / peak, weight_decay, 0.0)
    assert_trajectories_close(with_peak, reference, rtol=1e-10, atol=1e-13)


def test_schedule_scaling_of_a_schedule_needs_the_peak():
    with pytest.raises(ValueError, match="peak_learning_rate"):
        oc.decay_multiplier(COSINE, "schedule")
    with pytest.raises(ValueError, match="peak_learning_rate"):
        oc.adamw(COSINE, 0.1, decay_scaling="schedule")
    with pytest.raises(ValueError, match="peak_learning_rate"):
        oc.sgdw(COSINE, 0.1, decay_scaling="schedule")
    relative = oc.decay_multiplier(COSINE, "schedule", peak_learning_rate=PEAK)
    for step in (0, 10, DECAY_STEPS, STEPS):
        count = jnp.asarray(step, jnp.int32)
        np.testing.assert_allclose(float(relative(count)), float(COSINE(count)) / PEAK, rtol=1e-15)


# --------------------------------------------------------------------------- bias correction


@settings(max_examples=5, deadline=None)
@given(lr=st.floats(1e-3, 0.05), b1=st.floats(0.5, 0.95), b2=st.floats(0.9, 0.999))
def test_adam_without_bias_correction_follows_its_formula(lr, b1, b2):
    eps = 1e-8
    assert "correct_bias" not in [part.name for part in oc.adam(lr, bias_correction=False).parts]
    ours = run(oc.adam, {"bias_correction": False}, learning_rate=lr, b1=b1, b2=b2, eps=eps)

    theta = [x.copy() for x in THETA0]
    m = [np.zeros_like(x) for x in theta]
    v = [np.zeros_like(x) for x in theta]
    history = []
    for t in range(STEPS):
        for i, g in enumerate(gradient(theta, t)):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            theta[i] = theta[i] - lr * m[i] / (np.sqrt(v[i]) + eps)
        history.append([x.copy() for x in theta])
    reference = [np.stack(per_leaf) for per_leaf in zip(*history, strict=True)]
    assert_trajectories_close(ours, reference, rtol=1e-10, atol=1e-13)
    corrected = run(oc.adam, learning_rate=lr, b1=b1, b2=b2, eps=eps)
    assert max_relative_difference(corrected, reference) > 1e-3
