"""Cautious updates (``caution=True``) step by step against timm's ``AdamWLegacy(caution=True)``,
float64, in both of timm's code paths (one tensor at a time, and ``foreach``).

``import timm`` needs torchvision, which is not installed beside our pinned torch, so timm's
``optim/adamw.py`` is loaded as a module of its own (with the two helper modules it imports).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_parity_torch import (
    THETA0,
    TREEDEF,
    assert_same_trajectory,
    max_relative_difference,
    run_optim_chain,
    run_torch,
)

import optim_chain as oc

torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[parity]'")


def _timm_adamw():
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("timm is not installed: pip install --no-deps timm==1.0.31")
    name = "_timm_optim_reference"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(spec.submodule_search_locations[0], "optim")]
        sys.modules[name] = package
    return importlib.import_module(f"{name}.adamw").AdamWLegacy


EXAMPLES = settings(max_examples=6, deadline=None)


@pytest.mark.parametrize("foreach", [False, True])
@EXAMPLES
@given(
    lr=st.floats(1e-3, 0.1),
    b1=st.floats(0.5, 0.95),
    b2=st.floats(0.9, 0.9999),
    weight_decay=st.floats(0.0, 0.2),
)
def test_cautious_adamw_matches_timm(foreach, lr, b1, b2, weight_decay):
    adamw_legacy = _timm_adamw()
    theirs = run_torch(
        lambda p: adamw_legacy(
            p, lr=lr, betas=(b1, b2), eps=1e-8, weight_decay=weight_decay, caution=True, foreach=foreach
        )
    )
    ours = run_optim_chain(
        oc.adamw, {"caution": True}, learning_rate=lr, b1=b1, b2=b2, weight_decay=weight_decay
    )
    assert_same_trajectory(ours, theirs)
    plain = run_optim_chain(oc.adamw, {}, learning_rate=lr, b1=b1, b2=b2, weight_decay=weight_decay)
    assert max_relative_difference(plain, theirs) > 1e-4  # the mask changed the trajectory


def test_cautious_adam_is_cautious_adamw_without_decay():
    """Adam with caution equals AdamW with caution at zero decay; with L2 at zero, the same."""
    ours = run_optim_chain(oc.adam, {"caution": True}, learning_rate=0.05)
    assert_same_trajectory(
        ours, run_optim_chain(oc.adamw, {"caution": True}, learning_rate=0.05, weight_decay=0.0)
    )
    l2 = run_optim_chain(oc.adam_l2, {"caution": True}, learning_rate=0.05, weight_decay=0.0)
    np.testing.assert_array_equal(
        np.concatenate([x.ravel() for x in l2]), np.concatenate([x.ravel() for x in ours])
    )


def test_the_mask_and_its_rescaling():
    """Entries whose direction disagrees with the gradient are dropped, the rest scaled by 1/share;
    the decoupled decay is not masked."""
    direction = optax.GradientTransformation(
        lambda p: optax.EmptyState(),
        lambda u, s, p=None: (jax.tree.map(lambda g: jnp.array([1.0, -1.0, 2.0, 0.0]), u), s),
    )
    cautious = oc.caution(direction)
    grads = jnp.array([1.0, 1.0, 3.0, 5.0])  # agree, disagree, agree, zero direction
    update, _ = cautious.update(grads, cautious.init(grads), grads)
    np.testing.assert_allclose(update, [2.0, 0.0, 4.0, 0.0])  # kept entries / (2 of 4)
    nothing, _ = cautious.update(-grads, cautious.init(grads), grads)
    assert np.all(np.isfinite(nothing))  # no entry agrees: the share is floored, nothing moves

    params = {"w": jnp.ones(3)}
    opt = oc.adamw(0.1, weight_decay=0.5, caution=True)
    state = opt.init(params)
    updates, state = opt.update({"w": jnp.array([1.0, -1.0, 1.0])}, state, params)
    params = optax.apply_updates(params, updates)
    # step 2: m[1] = 0.9 * -0.1 + 0.1 * 0.5 < 0 disagrees with g[1] = 0.5 and is dropped
    updates, _ = opt.update({"w": jnp.array([1.0, 0.5, 1.0])}, state, params)
    decay = -0.1 * 0.5 * params["w"]  # lr * lambda * theta, on every entry, masked or not
    assert float(updates["w"][1]) == pytest.approx(float(decay[1]), rel=1e-6)
    assert abs(float(updates["w"][0] - decay[0])) > 0.1  # a kept entry, scaled up by 3/2


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(TypeError, match="caution must be a bool, got 'yes'"):
        oc.adamw(1e-3, caution="yes")
    with pytest.raises(TypeError, match="caution needs a gradient transformation"):
        oc.caution(3)


def test_cautious_state_checkpoints_like_any_chain():
    params = jax.tree.unflatten(TREEDEF, [jnp.asarray(x) for x in THETA0])
    opt = oc.adamw(1e-2, caution=True)
    state = opt.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(opt.init(params))
    assert optax.tree_utils.tree_get(state, "mu") is not None
