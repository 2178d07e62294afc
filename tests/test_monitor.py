"""The decay monitor: per-leaf weight norm, update norm, decay share and angle, and AdamW reaching
the rotational equilibrium ``sqrt(2 * eta * lambda)`` on a scale-invariant toy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim_chain as oc


def test_figures_of_one_step():
    opt = oc.monitor_weight_decay(oc.adamw(0.1, weight_decay=0.5, mask=oc.default_decay_mask))
    params = {"kernel": jnp.array([[3.0, 4.0]]), "bias": jnp.array([1.0, 1.0])}
    grads = {"kernel": jnp.array([[1.0, 1.0]]), "bias": jnp.array([1.0, -1.0])}
    updates, state = opt.update(grads, opt.init(params), params)
    plain = oc.adamw(0.1, weight_decay=0.5, mask=oc.default_decay_mask)
    expected, _ = plain.update(grads, plain.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, updates, expected)  # the monitor changes nothing
    read = lambda name: optax.tree_utils.tree_get(state, name)  # noqa: E731
    assert float(read("weight_norm")["kernel"]) == pytest.approx(5.0)
    decay = 0.1 * 0.5 * 5.0  # |lr * lambda * theta|
    assert float(read("decay_share")["kernel"]) == pytest.approx(
        decay / float(jnp.linalg.norm(updates["kernel"]))
    )
    assert float(read("decay_share")["bias"]) == 0.0  # not decayed
    new = params["kernel"] + updates["kernel"]
    cosine = float(jnp.vdot(params["kernel"], new) / (5.0 * jnp.linalg.norm(new)))
    assert float(read("angle")["kernel"]) == pytest.approx(np.arccos(cosine), rel=1e-4)


def test_adamw_settles_at_the_rotational_equilibrium():
    """A weight whose loss is scale-invariant (its gradient is orthogonal to it): the angle each
    step turns it by settles at sqrt(2 * eta * lambda), the decay share at sqrt(eta * lambda / 2)."""
    size, eta, lam, steps = 512, 0.01, 0.1, 3000
    opt = oc.monitor_weight_decay(oc.adamw(eta, lam, b1=0.0, b2=0.99))
    w = jax.random.normal(jax.random.key(0), (size,))
    w = w / jnp.linalg.norm(w) * 20.0  # far from the equilibrium norm sqrt(eta * size / (2 * lam)) = 5.1

    def step(carry, key):
        w, state = carry
        noise = jax.random.normal(key, (size,))
        g = noise - jnp.vdot(noise, w) / jnp.vdot(w, w) * w  # orthogonal to w
        updates, state = opt.update({"w": g}, state, {"w": w})
        return (w + updates["w"], state), (state.angle["w"], state.decay_share["w"], jnp.linalg.norm(w))

    keys = jax.random.split(jax.random.key(1), steps)
    _, (angles, shares, norms) = jax.lax.scan(step, ({"w": w}["w"], opt.init({"w": w})), keys)
    settled = slice(steps - 1000, steps)
    assert float(jnp.mean(angles[settled])) == pytest.approx(np.sqrt(2 * eta * lam), rel=0.1)
    assert float(jnp.mean(shares[settled])) == pytest.approx(np.sqrt(eta * lam / 2), rel=0.15)
    assert float(jnp.mean(norms[settled])) == pytest.approx(np.sqrt(eta * size / (2 * lam)), rel=0.1)
    assert float(angles[10]) < 0.5 * np.sqrt(2 * eta * lam)  # far from it at the start


def test_any_optimizer_and_bad_input():
    params = {"w": jnp.ones(3)}
    opt = oc.monitor_weight_decay(optax.adamw(0.1))  # not a chain of parts: no decay share
    _, state = opt.update({"w": jnp.ones(3)}, opt.init(params), params)
    assert np.isnan(float(state.decay_share["w"])) and float(state.weight_norm["w"]) == pytest.approx(
        np.sqrt(3)
    )
    with pytest.raises(TypeError, match="monitor_weight_decay needs a gradient transformation"):
        oc.monitor_weight_decay(None)
    with pytest.raises(ValueError, match="needs the params"):
        opt.update({"w": jnp.ones(3)}, opt.init(params))
