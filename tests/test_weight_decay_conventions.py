"""Every form of weight decay against an independent numpy reference of its formula, and optax.

The reference below is written from the formulas (REFERENCE.md, "Weight decay since the paper"),
not from the library: a step direction ``s`` (Adam's ``mhat / (sqrt(vhat) + eps)``, or SGD's
momentum), then ``theta -= lr_t * s + eta_t * lambda_t * keep * (theta - theta_ref)``. Both sides
run in float64 for 40 steps on a cosine-annealed learning rate, each receiving the gradient of the
same parameter-dependent loss at its own parameters, and are compared at every step.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optim_chain as oc
from optim_chain import masks

STEPS = 40
RTOL, ATOL = 1e-9, 1e-12
SHAPES = {"kernel": (4, 3), "bias": (3,), "scale": ()}
NAMES = sorted(SHAPES)  # jax flattens dicts in key order
PEAK = 0.05
COSINE = optax.cosine_decay_schedule(PEAK, decay_steps=STEPS, alpha=0.05)


def cosine(step: int) -> float:
    """The same schedule in Python floats (optax's formula, written out)."""
    progress = min(step, STEPS) / STEPS
    return PEAK * ((1 - 0.05) * 0.5 * (1 + math.cos(math.pi * progress)) + 0.05)


def test_the_reference_schedule_is_optax_cosine():
    for step in range(STEPS + 2):
        assert float(COSINE(step)) == pytest.approx(cosine(step), rel=1e-12)


_rng = np.random.default_rng(7)
THETA0 = {k: _rng.normal(size=s) + 0.3 for k, s in SHAPES.items()}
CURVATURE = {k: _rng.uniform(0.5, 2.0, size=s) for k, s in SHAPES.items()}
NOISE = [{k: (1.5 if t < 10 else 0.3) * _rng.normal(size=s) for k, s in SHAPES.items()} for t in range(STEPS)]
ANCHOR = {k: _rng.normal(size=s) for k, s in SHAPES.items()}


def gradient(theta: dict, step: int) -> dict:
    return {k: CURVATURE[k] * theta[k] + 0.5 * np.sin(3 * theta[k]) + NOISE[step][k] for k in theta}


# ------------------------------------------------------------------------------ the reference


def reference(
    direction: str = "adam",
    *,
    lr=cosine,
    weight_decay=lambda t: 0.1,
    coupling: str = "decoupled",
    eta=None,
    cautious: bool = False,
    anchor=None,
    decayed=("kernel", "bias", "scale"),
    b1: float = 0.9,
    b2: float = 0.99,
    eps: float = 1e-8,
    momentum: float = 0.9,
    nesterov: bool = False,
    steps: int = STEPS,
) -> list[dict]:
    """The parameters after each step, from the formulas in numpy float64.

    ``direction``: ``"adam"`` (with bias correction, Nesterov's look-ahead optional) or ``"sgd"``
    (heavy-ball or Nesterov momentum). ``coupling``: ``"decoupled"`` or ``"l2"``. ``eta(t)`` the
    decay multiplier (default ``lr(t)``). ``anchor``: ``None``, ``"init"`` or a dict.
    """
    eta = lr if eta is None else eta
    theta = {k: v.copy() for k, v in THETA0.items()}
    ref = {k: np.zeros_like(v) for k, v in THETA0.items()}
    if anchor == "init":
        ref = {k: v.copy() for k, v in THETA0.items()}
    elif anchor is not None:
        ref = anchor
    m = {k: np.zeros_like(v) for k, v in theta.items()}
    v = {k: np.zeros_like(x) for k, x in theta.items()}
    history = []
    for t in range(steps):  # t counts from 0, as the schedules do; the Adam step is t + 1
        g = gradient(theta, t)
        if coupling == "l2":
            g = {k: g[k] + (weight_decay(t) * (theta[k] - ref[k]) if k in decayed else 0) for k in g}
        new = {}
        for k in theta:
            if direction == "adam":
                m[k] = b1 * m[k] + (1 - b1) * g[k]
                v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
                n = t + 1
                if nesterov:
                    mhat = b1 * m[k] / (1 - b1 ** (n + 1)) + (1 - b1) * g[k] / (1 - b1**n)
                else:
                    mhat = m[k] / (1 - b1**n)
                s = mhat / (np.sqrt(v[k] / (1 - b2**n)) + eps)
            else:
                m[k] = momentum * m[k] + g[k]
                s = g[k] + momentum * m[k] if nesterov else m[k]
            step = theta[k] - lr(t) * s
            if coupling == "decoupled" and k in decayed:
                d = theta[k] - ref[k]
                keep = (s * d >= 0).astype(np.float64) if cautious else 1.0
                step = step - eta(t) * weight_decay(t) * keep * d
            new[k] = step
        theta = new
        history.append({k: x.copy() for k, x in theta.items()})
    return history


def run(opt: optax.GradientTransformation, steps: int = STEPS) -> list[dict]:
    params = {k: jnp.asarray(v) for k, v in THETA0.items()}
    state = opt.init(params)
    step_fn = jax.jit(opt.update)
    history = []
    for t in range(steps):
        grads = {
            k: jnp.asarray(g) for k, g in gradient({k: np.asarray(x) for k, x in params.items()}, t).items()
        }
        updates, state = step_fn(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append({k: np.asarray(x) for k, x in params.items()})
    return history


def assert_same(ours: list[dict], theirs: list[dict], rtol: float = RTOL) -> None:
    assert len(ours) == len(theirs)
    for t, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for k in NAMES:
            assert a[k].dtype == np.float64
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=ATOL, err_msg=f"step {t}, leaf {k}")
    moved = max(np.max(np.abs(theirs[-1][k] - THETA0[k])) for k in NAMES)
    assert moved > 1e-2, "the trajectory barely moved: the comparison would be vacuous"


def differ(a: list[dict], b: list[dict]) -> float:
    return max(float(np.max(np.abs(a[-1][k] - b[-1][k]))) for k in NAMES)


# ----------------------------------------------------------------- 1. AdamC's corrected decay


@settings(max_examples=4, deadline=None)
@given(weight_decay=st.floats(0.05, 2.0))
def test_adamw_corrected_decay_follows_the_square_of_the_schedule(weight_decay):
    opt = oc.adamw(COSINE, weight_decay, b2=0.99, decay_scaling="corrected", peak_learning_rate=PEAK)
    expected = reference(weight_decay=lambda t: weight_decay, eta=lambda t: cosine(t) ** 2 / PEAK)
    assert_same(run(opt), expected)
    # and it is another trajectory than torch's form on the same schedule
    assert differ(expected, reference(weight_decay=lambda t: weight_decay)) > 1e-4


def test_sgdw_corrected_decay_follows_the_square_of_the_schedule():
    opt = oc.sgdw(COSINE, 0.5, momentum=0.9, decay_scaling="corrected", peak_learning_rate=PEAK)
    expected = reference("sgd", weight_decay=lambda t: 0.5, eta=lambda t: cosine(t) ** 2 / PEAK)
    assert_same(run(opt), expected)


@pytest.mark.parametrize("preset", [oc.adamw, oc.sgdw])
def test_corrected_equals_learning_rate_scaling_at_a_constant_rate(preset):
    corrected = run(preset(0.02, 0.3, decay_scaling="corrected"))
    torch_form = run(preset(0.02, 0.3))
    for a, b in zip(corrected, torch_form, strict=True):
        chex.assert_trees_all_equal(a, b)


def test_corrected_decay_of_a_schedule_needs_its_peak():
    with pytest.raises(
        ValueError, match=r"decay_scaling='corrected' with a learning-rate schedule needs peak"
    ):
        oc.adamw(COSINE, 0.1, decay_scaling="corrected")
    assert oc.decay_multiplier(0.02, "corrected") == 0.02
    assert oc.decay_multiplier(0.02, "corrected", peak_learning_rate=0.04) == pytest.approx(0.01)


# ---------------------------------------------------------------------- 2. cautious decay


@pytest.mark.parametrize("direction", ["adam", "sgd"])
def test_cautious_decay_matches_its_formula(direction):
    if direction == "adam":
        opt = oc.adamw(COSINE, 0.5, b2=0.99, cautious_weight_decay=True)
    else:
        opt = oc.sgdw(COSINE, 0.5, momentum=0.9, cautious_weight_decay=True)
    expected = reference(direction, weight_decay=lambda t: 0.5, cautious=True)
    assert_same(run(opt), expected)
    assert differ(expected, reference(direction, weight_decay=lambda t: 0.5)) > 1e-3


def test_cautious_decay_reads_the_sign_of_the_step_not_of_the_update():
    """The update reaching the decay is ``-lr * s``: decay where ``s * theta >= 0``, i.e. ``u * theta <= 0``.

    theta = +1 for both entries. A gradient of +1 makes Adam step toward zero (``s = +1``): that
    entry decays. A gradient of -1 steps away from zero (``s = -1``): it does not.
    """
    opt = oc.adamw(0.1, 0.5, cautious_weight_decay=True)
    params = {"w": jnp.array([1.0, 1.0])}
    updates, _ = opt.update({"w": jnp.array([1.0, -1.0])}, opt.init(params), params)
    s = 1.0 / (1.0 + 1e-8)  # Adam's first step is g / (|g| + eps)
    np.testing.assert_allclose(updates["w"], [-0.1 * s - 0.1 * 0.5, 0.1 * s], rtol=1e-12)


def test_cautious_decay_with_every_sign_agreeing_is_plain_decay():
    """A constant positive gradient on positive weights: Adam's step and the weights agree throughout."""
    params = {"w": jnp.linspace(1.0, 2.0, 5)}
    grads = {"w": jnp.full(5, 0.3)}
    results = []
    for cautious in (False, True):
        opt = oc.adamw(0.01, 0.4, cautious_weight_decay=cautious)
        p, state = params, opt.init(params)
        for _ in range(20):
            updates, state = opt.update(grads, state, p)
            p = optax.apply_updates(p, updates)
        results.append(p)
    assert bool(jnp.all(results[0]["w"] > 0))
    chex.assert_trees_all_equal(results[0], results[1])


def test_cautious_decay_toward_an_anchor_reads_the_sign_of_the_difference():
    opt = oc.sgdw(0.1, 0.5, cautious_weight_decay=True, anchor={"w": jnp.array([2.0, 2.0])})
    params = {"w": jnp.array([1.0, 1.0])}  # below the anchor: decay pulls up
    updates, _ = opt.update({"w": jnp.array([1.0, -1.0])}, opt.init(params), params)
    # s = g; s*(theta - ref) = g*(-1) >= 0 only for g = -1, the entry stepping up toward the anchor
    np.testing.assert_allclose(updates["w"], [-0.1, 0.1 + 0.1 * 0.5 * 1.0], rtol=1e-12)


# --------------------------------------------------------------------------------- 3. anchors


ANCHORED = {
    "adamw": (lambda a: oc.adamw(COSINE, 0.5, b2=0.99, anchor=a), "adam", "decoupled"),
    "sgdw": (lambda a: oc.sgdw(COSINE, 0.5, momentum=0.9, anchor=a), "sgd", "decoupled"),
    "adam_l2": (lambda a: oc.adam_l2(COSINE, 0.5, b2=0.99, anchor=a), "adam", "l2"),
    "sgd_l2": (lambda a: oc.sgd_l2(COSINE, 0.5, momentum=0.9, anchor=a), "sgd", "l2"),
}


@pytest.mark.parametrize("anchor", ["init", "tree"])
@pytest.mark.parametrize("preset", ANCHORED)
def test_decay_toward_an_anchor_matches_its_formula(preset, anchor):
    build, direction, coupling = ANCHORED[preset]
    given_anchor = "init" if anchor == "init" else {k: jnp.asarray(v) for k, v in ANCHOR.items()}
    expected_anchor = "init" if anchor == "init" else ANCHOR
    expected = reference(direction, weight_decay=lambda t: 0.5, coupling=coupling, anchor=expected_anchor)
    assert_same(run(build(given_anchor)), expected)
    assert differ(expected, reference(direction, weight_decay=lambda t: 0.5, coupling=coupling)) > 1e-3


@pytest.mark.parametrize("preset", ANCHORED)
def test_an_anchor_of_zeros_is_no_anchor(preset):
    build, _, _ = ANCHORED[preset]
    zeros = {k: jnp.zeros(s) for k, s in SHAPES.items()}
    for a, b in zip(run(build(zeros)), run(build(None)), strict=True):
        chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        # u - eta * lambda * (theta - ref) with u = 0, eta = 0.1, lambda = 0.5
        (lambda a: oc.decoupled_weight_decay(0.5, 0.1, anchor=a), [0.0, -0.1]),
        # g + lambda * (theta - ref) with g = 0
        (lambda a: oc.add_l2_regularization(0.5, anchor=a), [0.0, 1.0]),
    ],
    ids=["decoupled_weight_decay", "add_l2_regularization"],
)
def test_the_primitives_take_an_anchor(build, expected):
    params, anchor = {"w": jnp.array([1.0, 3.0])}, {"w": jnp.array([1.0, 1.0])}
    transform = build(anchor)
    updates, _ = transform.update({"w": jnp.zeros(2)}, transform.init(params), params)
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-12)


def test_anchor_init_keeps_one_copy_of_the_params_in_the_state():
    params = {"w": jnp.arange(3.0), "b": jnp.ones(2)}
    plain = oc.adamw(1e-3, 0.1).init(params)
    anchored = oc.adamw(1e-3, 0.1, anchor="init").init(params)
    size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
    assert size(anchored) - size(plain) == size(params) + 1  # the copy and a step counter
    chex.assert_trees_all_equal(anchored[-1].anchor, params)
    # zero gradients from the initial point: decay toward init has nothing to pull
    opt = oc.sgdw(0.1, 0.5, anchor="init")
    state = opt.init(params)
    updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), state, params)
    chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))


def test_bad_anchors_are_refused():
    with pytest.raises(
        ValueError, match=r"anchor must be None, 'init' or a params-shaped pytree, got 'initial'"
    ):
        oc.adamw(1e-3, 0.1, anchor="initial")
    with pytest.raises(ValueError, match=r"anchor.*missing.*\['b'\]"):
        oc.adamw(1e-3, 0.1, anchor={"w": jnp.zeros(3)}).init({"w": jnp.zeros(3), "b": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"anchor leaf 'w' has shape \(2,\) but params has shape \(3,\)"):
        oc.sgd_l2(1e-3, 0.1, anchor={"w": jnp.zeros(2)}).init({"w": jnp.zeros(3)})


# ----------------------------------------------------------------- 4. weight-decay schedules


def WD_SCHEDULE(count: jax.Array) -> jax.Array:
    """From 0.8 down to 0.1 over the run, in float64 (optax.linear_schedule rounds to float32
    for an int32 count)."""
    return 0.8 - 0.7 * jnp.minimum(jnp.asarray(count, jnp.float64), STEPS) / STEPS


def wd_schedule(step: int) -> float:
    return 0.8 - 0.7 * min(step, STEPS) / STEPS


@pytest.mark.parametrize(
    ("build", "direction", "coupling"),
    [
        (lambda: oc.adamw(COSINE, WD_SCHEDULE, b2=0.99), "adam", "decoupled"),
        (lambda: oc.sgdw(COSINE, WD_SCHEDULE, momentum=0.9), "sgd", "decoupled"),
        (lambda: oc.adam_l2(COSINE, WD_SCHEDULE, b2=0.99), "adam", "l2"),
        (lambda: oc.sgd_l2(COSINE, WD_SCHEDULE, momentum=0.9), "sgd", "l2"),
    ],
    ids=["adamw", "sgdw", "adam_l2", "sgd_l2"],
)
def test_weight_decay_schedules_match_their_formula(build, direction, coupling):
    assert_same(run(build()), reference(direction, weight_decay=wd_schedule, coupling=coupling))


def test_weight_decay_schedule_matches_optax_adamw():
    ours = run(oc.adamw(COSINE, WD_SCHEDULE, b2=0.99, mask=masks.ndim_at_least(1)))
    theirs = run(
        optax.adamw(COSINE, b2=0.99, weight_decay=WD_SCHEDULE, mask=lambda p: {k: k != "scale" for k in p})
    )
    assert_same(ours, theirs, rtol=1e-11)


def test_weight_decay_schedule_is_refused_where_it_cannot_be_read():
    with pytest.raises(TypeError, match="weight_decay must be a number"):
        oc.adamw(1e-3, "0.1")


# -------------------------------------------------- 5. decoupled decay around any optimizer


def test_with_decoupled_weight_decay_around_lion_is_optax_lion():
    ours = run(oc.with_decoupled_weight_decay(optax.lion(COSINE, weight_decay=0.0), 0.4, COSINE))
    theirs = run(optax.lion(COSINE, weight_decay=0.4))
    assert_same(ours, theirs, rtol=1e-11)


def test_with_decoupled_weight_decay_around_adafactor_is_unscaled_decay():
    """adafactor adds ``weight_decay_rate * theta`` after its learning rate: ``decay_scaling="none"``."""
    inner = optax.adafactor(0.05, min_dim_size_to_factor=2, weight_decay_rate=None)
    ours = run(oc.with_decoupled_weight_decay(inner, 1e-3, 0.05, decay_scaling="none"))
    theirs = run(optax.adafactor(0.05, min_dim_size_to_factor=2, weight_decay_rate=1e-3))
    assert_same(ours, theirs, rtol=1e-11)


def test_with_decoupled_weight_decay_around_ademamix_from_optax_contrib():
    ours = run(oc.with_decoupled_weight_decay(optax.contrib.ademamix(0.02, weight_decay=0.0), 0.3, 0.02))
    theirs = run(optax.contrib.ademamix(0.02, weight_decay=0.3))
    assert_same(ours, theirs, rtol=1e-11)


def test_with_decoupled_weight_decay_around_our_rmsprop_and_adagrad():
    for inner, name in ((oc.rmsprop(COSINE, decay=0.9), "rmsprop"), (oc.adagrad(COSINE), "adagrad")):
        ours = run(oc.with_decoupled_weight_decay(inner, 0.5, COSINE, mask=masks.ndim_at_least(1)))
        plain = run(inner)
        # the decay is exactly what sits on top of the plain optimizer's step, one step at a time
        theta, s_state = {k: jnp.asarray(v) for k, v in THETA0.items()}, inner.init(THETA0)
        for t in range(STEPS):
            g = {
                k: jnp.asarray(x)
                for k, x in gradient({k: np.asarray(v) for k, v in theta.items()}, t).items()
            }
            u, s_state = inner.update(g, s_state, theta)
            theta = {
                k: theta[k] + u[k] - (cosine(t) * 0.5 * theta[k] if k != "scale" else 0.0) for k in theta
            }
            for k in NAMES:
                np.testing.assert_allclose(
                    ours[t][k], theta[k], rtol=1e-10, atol=ATOL, err_msg=f"{name} {t} {k}"
                )
        assert differ(ours, plain) > 1e-3


def test_with_decoupled_weight_decay_cautious_anchor_and_paper_scaling():
    opt = oc.with_decoupled_weight_decay(
        oc.adam(COSINE, b2=0.99),
        0.5,
        COSINE,
        decay_scaling="schedule",
        peak_learning_rate=PEAK,
        cautious=True,
        anchor={k: jnp.asarray(v) for k, v in ANCHOR.items()},
    )
    expected = reference(
        weight_decay=lambda t: 0.5, eta=lambda t: cosine(t) / PEAK, cautious=True, anchor=ANCHOR
    )
    assert_same(run(opt), expected)


def test_with_decoupled_weight_decay_refuses_what_is_not_a_transformation():
    with pytest.raises(TypeError, match="with_decoupled_weight_decay needs a gradient transformation"):
        oc.with_decoupled_weight_decay(lambda g: g, 0.1, 1e-3)


# ----------------------------------------------------------------------------------- 6. NAdam


def test_adam_nesterov_is_optax_nadam():
    assert_same(run(oc.adam(COSINE, b2=0.99, nesterov=True)), run(optax.nadam(COSINE, b2=0.99)), rtol=1e-11)


def test_adamw_nesterov_is_optax_nadamw():
    ours = run(oc.adamw(COSINE, 0.3, b2=0.99, nesterov=True))
    theirs = run(optax.nadamw(COSINE, b2=0.99, weight_decay=0.3))
    assert_same(ours, theirs, rtol=1e-11)


@pytest.mark.parametrize(
    ("build", "coupling"),
    [
        (lambda: oc.adamw(COSINE, 0.3, b2=0.99, nesterov=True), "decoupled"),
        (lambda: oc.adam_l2(COSINE, 0.3, b2=0.99, nesterov=True), "l2"),
    ],
    ids=["adamw", "adam_l2"],
)
def test_nesterov_matches_its_formula(build, coupling):
    expected = reference(weight_decay=lambda t: 0.3, coupling=coupling, nesterov=True)
    assert_same(run(build()), expected)
    assert differ(expected, reference(weight_decay=lambda t: 0.3, coupling=coupling)) > 1e-3


def test_nesterov_needs_bias_correction_and_a_bool():
    with pytest.raises(ValueError, match="nesterov=True .* needs bias_correction=True"):
        oc.adam(1e-3, nesterov=True, bias_correction=False)
    with pytest.raises(TypeError, match="nesterov must be a bool, got 1"):
        oc.adamw(1e-3, nesterov=1)


def test_torch_nadam_is_another_trajectory(torch):
    """torch's NAdam decays its momentum coefficient (``momentum_decay``): not optax's NAdam."""
    tensors = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in THETA0.items()}
    opt = torch.optim.NAdam(list(tensors.values()), lr=0.02, betas=(0.9, 0.99))
    for t in range(STEPS):
        grads = gradient({k: x.detach().numpy() for k, x in tensors.items()}, t)
        for k, x in tensors.items():
            x.grad = torch.from_numpy(np.asarray(grads[k], np.float64).copy())
        opt.step()
    torch_final = {k: x.detach().numpy() for k, x in tensors.items()}
    ours = run(oc.adam(0.02, b2=0.99, nesterov=True))
    assert max(float(np.max(np.abs(ours[-1][k] - torch_final[k]))) for k in NAMES) > 1e-4
