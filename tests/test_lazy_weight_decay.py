"""Lazy decoupled decay (``lazy_weight_decay=True``): only the entries whose gradient this step is
non-zero decay, so the embedding rows of tokens absent from a batch keep their values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import optim_chain as oc


def _grads(step):
    rng = np.random.default_rng(step)
    g = rng.normal(size=(6, 3))
    g[rng.integers(0, 6, size=3)] = 0.0  # three rows (some repeated) get no gradient this step
    return {"embedding": jnp.asarray(g), "bias": jnp.asarray(rng.normal(size=3))}


@pytest.mark.parametrize("preset", ["adamw", "sgdw"])
def test_lazy_decay_is_the_decay_of_the_entries_with_a_gradient(preset):
    params = {"embedding": jnp.asarray(np.linspace(-1, 1, 18).reshape(6, 3)), "bias": jnp.ones(3)}
    lr, wd = 0.05, 0.4
    if preset == "adamw":
        lazy, direction = oc.adamw(lr, wd, lazy_weight_decay=True), oc.adam(lr)
    else:
        lazy, direction = oc.sgdw(lr, wd, momentum=0.9, lazy_weight_decay=True), oc.sgd(lr, momentum=0.9)
    lazy_state, direction_state = lazy.init(params), direction.init(params)
    ours = reference = params
    for step in range(5):
        grads = _grads(step)
        updates, lazy_state = lazy.update(grads, lazy_state, ours)
        ours = optax.apply_updates(ours, updates)
        step_only, direction_state = direction.update(grads, direction_state, reference)
        decay = jax.tree.map(lambda g, p: -lr * wd * jnp.where(g != 0, p, 0.0), grads, reference)
        reference = optax.apply_updates(reference, jax.tree.map(jnp.add, step_only, decay))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ours, reference)
    eager = oc.adamw(lr, wd) if preset == "adamw" else oc.sgdw(lr, wd, momentum=0.9)
    updates, _ = eager.update(_grads(0), eager.init(params), params)
    assert not np.allclose(
        updates["embedding"], lazy.update(_grads(0), lazy.init(params), params)[0]["embedding"]
    )


def test_absent_tokens_keep_their_embedding_rows():
    model = nn.Embed(10, 4)
    params = model.init(jax.random.key(0), jnp.array([0]))["params"]
    tokens = jnp.array([1, 2, 2, 5])

    def loss(p):
        return jnp.sum(model.apply({"params": p}, tokens) ** 2)

    for lazy in (True, False):
        opt = oc.sgdw(0.1, 0.5, lazy_weight_decay=lazy)
        updates, _ = opt.update(jax.grad(loss)(params), opt.init(params), params)
        new = optax.apply_updates(params, updates)["embedding"]
        absent = np.setdiff1d(np.arange(10), np.asarray(tokens))
        untouched = np.array_equal(new[absent], params["embedding"][absent])
        assert untouched == lazy


def test_the_wrapper_and_the_primitive():
    params = {"w": jnp.ones(4)}
    grads = {"w": jnp.array([1.0, 0.0, 2.0, 0.0])}
    opt = oc.with_decoupled_weight_decay(optax.sgd(0.1), 0.5, 0.1, lazy_weight_decay=True)
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.1 - 0.05, 0.0, -0.2 - 0.05, 0.0], rtol=1e-6)
    bare = oc.chain(
        oc.scale_by_learning_rate(0.1), oc.decoupled_weight_decay(0.5, 0.1, lazy_weight_decay=True)
    )
    with pytest.raises(ValueError, match="lazy_weight_decay=True\\) needs this step's gradient"):
        bare.update(grads, bare.init(params), params)
    supported = oc.with_gradient_support(bare)
    np.testing.assert_allclose(supported.update(grads, supported.init(params), params)[0]["w"], updates["w"])
    with pytest.raises(TypeError, match="lazy_weight_decay must be a bool, got 'yes'"):
        oc.adamw(1e-3, lazy_weight_decay="yes")


def test_lazy_decay_under_jit_and_skip_nonfinite():
    params = {"w": jnp.ones(3)}
    opt = oc.adamw(0.1, 0.5, lazy_weight_decay=True, skip_nonfinite=True)
    step = jax.jit(opt.update)
    updates, _ = step({"w": jnp.array([1.0, 0.0, 1.0])}, opt.init(params), params)
    assert float(updates["w"][1]) == 0.0 and float(updates["w"][0]) < -0.1
