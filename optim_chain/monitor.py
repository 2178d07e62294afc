r"""Seeing what decay does to each layer while training: :func:`monitor_weight_decay`.

For every leaf, each step records its weight norm, the norm of its update, the share of that
update that decoupled decay contributes, and the angle the step turns the weight by,

.. math:: \angle_t = \arccos \frac{\langle \theta_{t-1}, \theta_t \rangle}{\lVert \theta_{t-1} \rVert
    \lVert \theta_t \rVert}.

**Rotational equilibrium** (Kosson, Messmer & Jaggi, *Rotational Equilibrium: How Weight Decay
Balances Learning Across Neural Networks*, ICML 2024). For a scale-invariant weight (one followed
by a normalization layer) the gradient is orthogonal to the weight, so the update alone only
grows its norm, while decay shrinks it. The two balance at a norm where the angle each step
turns the weight by settles to a value set by the learning rate and the decay alone: about
``sqrt(2 * eta * lambda)`` for AdamW (``eta * lambda`` the fraction decayed per step; updates of
unit RMS), ``sqrt(2 * eta * lambda / (1 + beta))`` for SGD with momentum ``beta``. Layers whose
angle sits at that value learn at the pace decay sets; a layer far from it is still on its way
(a new run, a changed learning rate) or is not scale-invariant.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optim_chain.transform import Transform

#: The parts whose contribution to the update counts as decay.
DECAY_PARTS = ("decoupled_weight_decay",)


class WeightDecayMonitorState(NamedTuple):
    """The inner optimizer's state, and per leaf the last step's figures (params-shaped trees of
    scalars; ``optax.tree_utils.tree_get(state, "angle")`` reads one)."""

    inner: Any
    weight_norm: Any
    update_norm: Any
    decay_share: Any
    angle: Any


def _parts_and_states(inner: Any, state: Any) -> list[tuple[Any, Any]] | None:
    parts = getattr(inner, "parts", ())
    if parts and type(state) is tuple and len(state) == len(parts):  # optax.chain's state
        return list(zip(parts, state))
    return None


def monitor_weight_decay(inner: optax.GradientTransformation) -> Transform:
    """``inner``, recording per leaf what each step and its decay do (see the module doc).

    ``decay_share`` is ``|decay| / |update|``, the decay being what the chain's
    ``decoupled_weight_decay`` parts add (0 for leaves they do not decay, and NaN when
    ``inner`` is not a chain of optim_chain parts, whose decay cannot be told apart).

    Args:
      inner: any gradient transformation; a preset or chain for ``decay_share``.

    Returns:
      A :class:`~optim_chain.Transform` named ``monitor_weight_decay`` with ``inner``'s updates
      and a :class:`WeightDecayMonitorState`.

    Example::

      >>> import jax.numpy as jnp, optax, optim_chain as oc
      >>> opt = oc.monitor_weight_decay(oc.adamw(0.1, weight_decay=0.5))
      >>> params = {"w": jnp.array([3.0, 4.0])}
      >>> _, state = opt.update({"w": jnp.array([1.0, 1.0])}, opt.init(params), params)
      >>> round(float(optax.tree_utils.tree_get(state, "weight_norm")["w"]), 3)
      5.0
    """
    if not (hasattr(inner, "init") and hasattr(inner, "update")):
        raise TypeError(f"monitor_weight_decay needs a gradient transformation, got {inner!r}")
    inner = optax.with_extra_args_support(inner)

    def init(params: Any) -> WeightDecayMonitorState:
        zeros = jax.tree.map(lambda p: jnp.zeros([], jnp.result_type(p.dtype, jnp.float32)), params)
        return WeightDecayMonitorState(inner.init(params), zeros, zeros, zeros, zeros)

    def update(updates: Any, state: WeightDecayMonitorState, params: Any = None, **extra: Any):
        if params is None:
            raise ValueError("monitor_weight_decay needs the params: call update(updates, state, params)")
        split = _parts_and_states(inner, state.inner)
        if split is None:
            steps, inner_state = inner.update(updates, state.inner, params, **extra)
            decay = jax.tree.map(lambda u: jnp.full(u.shape, jnp.nan, u.dtype), steps)
        else:  # the chain's parts one by one (optax.chain's state), keeping what decay adds
            extra = {"gradient_support": jax.tree.map(lambda g: g != 0, updates), **extra}
            steps, states = updates, []
            decay = jax.tree.map(jnp.zeros_like, params)
            for part, part_state in split:
                before = steps
                steps, part_state = optax.with_extra_args_support(part).update(
                    steps, part_state, params, **extra
                )
                states.append(part_state)
                if getattr(part, "name", None) in DECAY_PARTS:
                    decay = jax.tree.map(lambda d, a, b: d + (a - b), decay, steps, before)
            inner_state = tuple(states)

        def figures(theta: jax.Array, u: jax.Array, d: jax.Array) -> tuple[jax.Array, ...]:
            theta, u, d = (x.astype(jnp.result_type(x.dtype, jnp.float32)) for x in (theta, u, d))
            new = theta + u
            weight, step, after = jnp.linalg.norm(theta), jnp.linalg.norm(u), jnp.linalg.norm(new)
            cosine = jnp.vdot(theta, new).real / jnp.maximum(weight * after, jnp.finfo(theta.dtype).tiny)
            share = jnp.linalg.norm(d) / jnp.maximum(step, jnp.finfo(theta.dtype).tiny)
            return weight, step, share, jnp.arccos(jnp.clip(cosine, -1.0, 1.0))

        treedef = jax.tree.structure(params)
        stats = [
            figures(theta, u, d)
            for theta, u, d in zip(
                jax.tree.leaves(params), treedef.flatten_up_to(steps), treedef.flatten_up_to(decay)
            )
        ]
        trees = [jax.tree.unflatten(treedef, [leaf[k] for leaf in stats]) for k in range(4)]
        return steps, WeightDecayMonitorState(inner_state, *trees)

    return Transform(init, update, name="monitor_weight_decay", parts=(inner,))
