"""Stable weight decay (``oc.adams``, ``oc.with_stable_weight_decay``) step by step against
pytorch_optimizer 4.1.0's ``AdamS``, float64, in both of its code paths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_parity_torch import LEAF_PATHS, THETA0, TREEDEF, assert_same_trajectory, run_optim_chain, run_torch

import optim_chain as oc

torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[parity]'")


def _adams_reference():
    reference = pytest.importorskip(
        "pytorch_optimizer",
        reason="pytorch_optimizer is not installed: pip install --no-deps pytorch-optimizer==4.1.0",
    )
    return reference.AdamS


EXAMPLES = settings(max_examples=6, deadline=None)
MATRICES = [i for i, path in enumerate(LEAF_PATHS) if len(np.shape(THETA0[i])) >= 2]


@pytest.mark.parametrize("foreach", [False, True])
@EXAMPLES
@given(
    lr=st.floats(1e-3, 0.1),
    b1=st.floats(0.5, 0.95),
    b2=st.floats(0.9, 0.9999),
    weight_decay=st.floats(0.01, 2.0),
)
def test_adams_matches_pytorch_optimizer(foreach, lr, b1, b2, weight_decay):
    adams_reference = _adams_reference()
    theirs = run_torch(
        lambda p: adams_reference(
            p, lr=lr, betas=(b1, b2), weight_decay=weight_decay, eps=1e-8, foreach=foreach
        )
    )
    ours = run_optim_chain(oc.adams, {}, learning_rate=lr, b1=b1, b2=b2, weight_decay=weight_decay)
    assert_same_trajectory(ours, theirs)


@pytest.mark.parametrize("fixed_decay", [False, True])
def test_a_mask_decays_some_leaves_and_averages_over_all(fixed_decay):
    """Decay on the matrices only (the others in a torch group without decay): the mean second
    moment still runs over every entry of every leaf."""
    adams_reference = _adams_reference()

    def groups(tensors):
        decayed = [t for i, t in enumerate(tensors) if i in MATRICES]
        rest = [t for i, t in enumerate(tensors) if i not in MATRICES]
        return adams_reference(
            [{"params": decayed}, {"params": rest, "weight_decay": 0.0}],
            lr=0.05,
            weight_decay=0.8,
            fixed_decay=fixed_decay,
            foreach=False,
        )

    theirs = run_torch(groups)
    scaling = "none" if fixed_decay else "learning_rate"
    static = {"mask": oc.masks.ndim_at_least(2), "decay_scaling": scaling}
    ours = run_optim_chain(oc.adams, static, learning_rate=0.05, weight_decay=0.8)
    assert_same_trajectory(ours, theirs)


def test_stable_decay_wraps_any_optimizer_and_zero_decay_is_the_inner():
    params = jax.tree.unflatten(TREEDEF, [jnp.asarray(x) for x in THETA0])
    grads = jax.tree.map(jnp.cos, params)
    inner = optax.sgd(0.1, momentum=0.9)
    wrapped = oc.with_stable_weight_decay(inner, 0.0, 0.1)
    plain, _ = inner.update(grads, inner.init(params), params)
    ours, state = wrapped.update(grads, wrapped.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, ours, plain)
    mean_square = np.mean(np.concatenate([np.ravel(np.cos(x)) ** 2 for x in THETA0]))
    assert float(state.mean_square) == pytest.approx((1 - 0.999) * mean_square, rel=1e-12)


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(ValueError, match="weight_decay"):
        oc.adams(1e-3, weight_decay=-1.0)
    with pytest.raises(ValueError, match="b2"):
        oc.adams(1e-3, b2=1.0)
    with pytest.raises(TypeError, match="with_stable_weight_decay needs a gradient transformation"):
        oc.with_stable_weight_decay("adam", 0.1, 1e-3)
