"""Steps on the sphere of each weight's norm (``oc.adamh``, ``oc.scale_on_sphere``) step by step
against levanter's AdamH rule written in NumPy from its ``optim/adamh.py``, float64, and after
optax's Muon direction (MuonH)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_parity_torch import (
    LEAF_PATHS,
    STEPS,
    THETA0,
    assert_same_trajectory,
    gradient,
    run_optim_chain,
)

import optim_chain as oc

#: The leaves held on their sphere in the comparison: the matrices (levanter takes a leaf of
#: more dimensions as a stack of matrices, one sphere each; ours takes the whole leaf).
MATRIX = oc.masks.ndim_at_least(2) & oc.masks.ndim_at_most(2)
ON_SPHERE = [len(np.shape(x)) == 2 for x in THETA0]


def run_levanter_rule(lr, b1, b2, eps):
    """levanter's AdamH: Adam's direction ``u``; a matrix ``p`` goes to ``p - lr * u * |p| / max(|u|,
    1e-10)``, rescaled to ``|p|``; the other leaves take ``-lr * u``."""
    params = [np.array(x, np.float64) for x in THETA0]
    mu = [np.zeros_like(x) for x in params]
    nu = [np.zeros_like(x) for x in params]
    history = []
    for step in range(STEPS):
        grads = gradient(params, step)
        t = step + 1
        for i, g in enumerate(grads):
            mu[i] = b1 * mu[i] + (1 - b1) * g
            nu[i] = b2 * nu[i] + (1 - b2) * g * g
            u = (mu[i] / (1 - b1**t)) / (np.sqrt(nu[i] / (1 - b2**t)) + eps)
            p = params[i]
            if ON_SPHERE[i]:
                moved = p - lr * u * np.linalg.norm(p) / max(np.linalg.norm(u), 1e-10)
                params[i] = moved / np.linalg.norm(moved) * np.linalg.norm(p)
            else:
                params[i] = p - lr * u
        history.append([x.copy() for x in params])
    return [np.stack(per_leaf) for per_leaf in zip(*history, strict=True)]


@settings(max_examples=8, deadline=None)
@given(lr=st.floats(1e-3, 0.2), b1=st.floats(0.5, 0.95), b2=st.floats(0.9, 0.9999))
def test_adamh_matches_levanters_rule(lr, b1, b2):
    theirs = run_levanter_rule(lr, b1, b2, 1e-8)
    ours = run_optim_chain(oc.adamh, {"mask": MATRIX}, learning_rate=lr, b1=b1, b2=b2)
    assert_same_trajectory(ours, theirs)
    for path, leaf, x0, held in zip(LEAF_PATHS, ours, THETA0, ON_SPHERE, strict=True):
        if held:  # the norm never moves
            np.testing.assert_allclose(
                np.linalg.norm(leaf, axis=(1, 2)), np.linalg.norm(x0), rtol=1e-12, err_msg=path
            )


def test_muonh_is_muons_direction_on_the_sphere():
    """MuonH: optax's Muon direction (orthogonalized momentum), then the step on the sphere."""
    params = {"w": jax.random.normal(jax.random.key(0), (8, 4))}
    grads = {"w": jax.random.normal(jax.random.key(1), (8, 4))}
    direction = optax.contrib.scale_by_muon(
        weight_dimension_numbers={"w": optax.contrib.MuonDimensionNumbers()}
    )
    muonh = oc.chain(direction, oc.scale_on_sphere(0.05))
    updates, _ = muonh.update(grads, muonh.init(params), params)
    muon_direction, _ = direction.update(grads, direction.init(params), params)
    w, u = np.asarray(params["w"], np.float64), np.asarray(muon_direction["w"], np.float64)
    moved = w - 0.05 * u * np.linalg.norm(w) / np.linalg.norm(u)
    expected = moved / np.linalg.norm(moved) * np.linalg.norm(w) - w
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        np.linalg.norm(params["w"] + updates["w"]), np.linalg.norm(params["w"]), rtol=1e-5
    )


def test_the_step_does_not_depend_on_the_directions_scale():
    params = {"w": jnp.eye(3, dtype=jnp.float64) * 5.0}
    opt = oc.scale_on_sphere(0.1)
    state = opt.init(params)
    direction = jnp.arange(9.0, dtype=jnp.float64).reshape(3, 3)
    steps = [opt.update({"w": scale * direction}, state, params)[0]["w"] for scale in (1e-3, 1.0, 1e3)]
    for step in steps[1:]:
        np.testing.assert_allclose(step, steps[0], rtol=1e-12, atol=1e-14)
    # orthogonal to the weight, the step turns it by arctan(lr)
    orthogonal = jnp.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], jnp.float64)
    new = params["w"] + opt.update({"w": orthogonal}, state, params)[0]["w"]
    cosine = jnp.vdot(new, params["w"]) / (jnp.linalg.norm(new) * jnp.linalg.norm(params["w"]))
    assert float(cosine) == pytest.approx(float(jnp.cos(jnp.arctan(0.1))), rel=1e-12)


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(ValueError, match="learning_rate"):
        oc.adamh(-1.0)
    opt = oc.scale_on_sphere(0.1)
    with pytest.raises(ValueError, match="needs the params"):
        opt.update({"w": jnp.ones((2, 2))}, opt.init({"w": jnp.ones((2, 2))}))
    assert jax.tree.structure(oc.adamh(0.1).init({"w": jnp.ones((2, 2))})) is not None
