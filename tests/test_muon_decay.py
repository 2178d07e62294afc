"""Muon with a decay per branch: one optax Muon without decay and a decoupled decay masked to each
branch (the recipe in README) equals ``optax.contrib.muon(weight_decay=..., adam_weight_decay=...)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim_chain as oc

MATRICES = oc.masks.ndim_at_least(2) & oc.masks.ndim_at_most(2)  # Muon's branch, as optax labels it


def muon_with_decays(learning_rate, matrix_decay, other_decay):
    muon = optax.contrib.muon(learning_rate, weight_decay=0.0, adam_weight_decay=0.0)
    matrices = oc.with_decoupled_weight_decay(muon, matrix_decay, learning_rate, mask=MATRICES)
    return oc.with_decoupled_weight_decay(matrices, other_decay, learning_rate, mask=~MATRICES)


@pytest.mark.parametrize("decays", [(0.1, 0.0), (0.0, 0.3), (0.05, 0.2)])
def test_a_decay_per_branch_equals_optax_muon(decays):
    matrix_decay, other_decay = decays
    keys = jax.random.split(jax.random.key(0), 4)
    params = {
        "dense": {
            "kernel": jax.random.normal(keys[0], (6, 4), jnp.float64),
            "bias": jnp.ones(4, jnp.float64),
        },
        "scale": jax.random.normal(keys[1], (4,), jnp.float64),
    }
    ours = muon_with_decays(0.02, matrix_decay, other_decay)
    theirs = optax.contrib.muon(0.02, weight_decay=matrix_decay, adam_weight_decay=other_decay)
    a, b = params, params
    state_a, state_b = ours.init(a), theirs.init(b)
    for step in range(8):
        grads = jax.tree.map(lambda p, s=step: jnp.cos(p * (s + 1)), a)
        ua, state_a = ours.update(grads, state_a, a)
        ub, state_b = theirs.update(grads, state_b, b)
        a, b = optax.apply_updates(a, ua), optax.apply_updates(b, ub)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12), a, b)
    moved = jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, params)
    assert max(jax.tree.leaves(moved)) > 1e-2
