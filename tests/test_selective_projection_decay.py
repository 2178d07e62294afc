"""Selective projection decay (``oc.adam_spd``, ``oc.with_selective_projection_decay``) step by step
against a torch reference written from the authors' ``adamSPD.py``, float64.

The authors' optimizer is not installable, so the reference is their algorithm in torch: torch's
``Adam`` takes the step (their Adam step is the same formula), then, per tensor, when
``<g, p - p0> > 0``, ``p' -= lambda * clip((|p' - p0| - |p - p0|) / |p' - p0|, 0, 1) * (p' - p0)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_parity_torch import STEPS, THETA0, TREEDEF, assert_same_trajectory, gradient, run_optim_chain

import optim_chain as oc

torch = pytest.importorskip("torch", reason="torch is not installed: pip install -e '.[parity]'")


def run_reference(lr, weight_decay, anchor):
    """The reference trajectory; ``anchor`` is a list of arrays (the pretrained weights) or None."""
    tensors = [torch.tensor(x, requires_grad=True) for x in THETA0]
    adam = torch.optim.Adam(tensors, lr=lr)
    history = []
    for step in range(STEPS):
        grads = gradient([t.detach().numpy().copy() for t in tensors], step)
        before = [t.detach().clone() for t in tensors]
        for tensor, g in zip(tensors, grads, strict=True):
            tensor.grad = torch.from_numpy(np.array(g))
        adam.step()
        with torch.no_grad():
            for i, tensor in enumerate(tensors):
                reference = torch.zeros_like(tensor) if anchor is None else torch.from_numpy(anchor[i])
                if torch.sum(tensor.grad * (before[i] - reference)) > 0:
                    after = torch.linalg.vector_norm(tensor - reference)
                    ratio = torch.clamp(
                        (after - torch.linalg.vector_norm(before[i] - reference)) / after, 0, 1
                    )
                    tensor -= weight_decay * ratio * (tensor - reference)
        history.append([t.detach().numpy().copy() for t in tensors])
    return [np.stack(per_leaf) for per_leaf in zip(*history, strict=True)]


EXAMPLES = settings(max_examples=6, deadline=None)


@pytest.mark.parametrize("anchor", ["init", "tree", None])
@EXAMPLES
@given(lr=st.floats(1e-3, 0.1), weight_decay=st.floats(0.1, 2.0))
def test_adam_spd_matches_the_authors_algorithm(anchor, lr, weight_decay):
    pretrained = [np.asarray(0.5 * x + 0.1) for x in THETA0]
    if anchor == "init":
        theirs, static = run_reference(lr, weight_decay, THETA0), {"anchor": "init"}
    elif anchor == "tree":
        tree = jax.tree.unflatten(TREEDEF, [jnp.asarray(x) for x in pretrained])
        theirs, static = run_reference(lr, weight_decay, pretrained), {"anchor": _Hashable(tree)}
    else:
        theirs, static = run_reference(lr, weight_decay, None), {"anchor": None}
    ours = run_optim_chain(_adam_spd, static, learning_rate=lr, weight_decay=weight_decay)
    assert_same_trajectory(ours, theirs)


class _Hashable:
    """A tree passed through ``run_optim_chain``'s static (hashed) arguments."""

    def __init__(self, tree):
        self.tree = tree

    def __hash__(self):
        return id(self)


def _adam_spd(anchor, **hyper):
    return oc.adam_spd(anchor=anchor.tree if isinstance(anchor, _Hashable) else anchor, **hyper)


def test_a_step_toward_the_anchor_is_left_alone():
    """Where the gradient points toward the anchor, the inner step passes unchanged."""
    params = {"w": jnp.array([2.0, 2.0])}
    opt = oc.with_selective_projection_decay(optax.sgd(0.1), 1.0, anchor=None)
    toward = {"w": jnp.array([-1.0, -1.0])}  # <g, w - 0> < 0: the step moves away from 0, no decay
    updates, _ = opt.update(toward, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], [0.1, 0.1])
    away = {"w": jnp.array([-1.0, -1.0])}
    opt = oc.with_selective_projection_decay(optax.sgd(-0.1), 1.0, anchor=None)  # moves away
    updates, _ = opt.update({"w": -away["w"]}, opt.init(params), params)
    moved = 2.1
    ratio = (np.sqrt(2) * moved - np.sqrt(2) * 2.0) / (np.sqrt(2) * moved)
    np.testing.assert_allclose(params["w"] + updates["w"], moved - ratio * moved, rtol=1e-6)


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(ValueError, match="weight_decay"):
        oc.adam_spd(1e-3, weight_decay=-1.0)
    opt = oc.adam_spd(1e-3, 1.0, anchor={"w": jnp.zeros(3)})
    with pytest.raises(ValueError, match="anchor"):
        opt.init({"w": jnp.zeros(4)})
