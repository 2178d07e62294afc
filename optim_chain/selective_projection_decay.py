"""Selective projection decay (Tian et al., NeurIPS 2024): decay toward the pretrained weights, only
for the layers that are moving away from them, for robust fine-tuning.

Per leaf, after the inner optimizer's step ``theta' = theta + u``, the leaf is pulled back toward
its anchor ``theta_0`` only when the gradient points away from the anchor,
``<g, theta - theta_0> > 0``, and then by a share of the distance that grows with how far this step
moved it away:

.. math::

    r = \\operatorname{clip}\\Big(\\frac{\\lVert \\theta' - \\theta_0 \\rVert - \\lVert \\theta - \\theta_0
    \\rVert}{\\lVert \\theta' - \\theta_0 \\rVert}, 0, 1\\Big), \\qquad
    \\theta^{+} = \\theta' - \\lambda\\, r\\, (\\theta' - \\theta_0)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optim_chain import _validation
from optim_chain._tree import check_float_params, check_matching
from optim_chain.presets import LearningRate, adam
from optim_chain.transform import Transform
from optim_chain.weight_decay import Anchor, _check_anchor, _copy


class SelectiveProjectionDecayState(NamedTuple):
    """The inner optimizer's state, and the anchor's copy when ``anchor="init"``."""

    inner: Any
    anchor: Any = None


def _project(g: jax.Array, theta: jax.Array, u: jax.Array, reference: Any, weight_decay: Any) -> jax.Array:
    """One leaf: the update that takes ``theta`` to the projected ``theta'`` (see the module doc)."""
    reference = jnp.zeros_like(theta) if reference is None else jnp.asarray(reference, theta.dtype)
    moved = theta + u
    away = jnp.sum(g * (theta - reference)) > 0
    after, before = jnp.linalg.norm(moved - reference), jnp.linalg.norm(theta - reference)
    ratio = jnp.clip((after - before) / jnp.where(after > 0, after, 1), 0, 1)
    pulled = moved - jnp.asarray(weight_decay, theta.dtype) * ratio * (moved - reference)
    return jnp.where(away, pulled - theta, u)


def with_selective_projection_decay(
    inner: optax.GradientTransformation, weight_decay: float, anchor: Anchor = "init"
) -> Transform:
    """``inner`` followed by selective projection decay toward ``anchor`` (see the module doc).

    Args:
      inner: any gradient transformation whose updates include the learning rate.
      weight_decay: ``lambda``, the share of the projection applied, ``>= 0``.
      anchor: ``"init"`` (the params given to ``init``: the pretrained weights, kept in the
        state), a params-shaped tree, or ``None`` (zero: for adapters such as LoRA, which start
        at zero).

    Returns:
      A :class:`~optim_chain.Transform` named ``with_selective_projection_decay``.

    Example::

      >>> import optim_chain as oc
      >>> print(oc.adam_spd(1e-4, weight_decay=1.0).name)
      adam_spd

    Reference: Tian, Huang, Kira & Lin, *Rethinking Weight Decay for Robust Fine-Tuning of
    Foundation Models*, NeurIPS 2024 (``adamSPD.py`` in GT-RIPL/Selective-Projection-Decay).
    Where the step lands exactly on the anchor, the authors' ratio is 0 / 0; here it is 0.
    """
    if not (hasattr(inner, "init") and hasattr(inner, "update")):
        raise TypeError(
            f"with_selective_projection_decay needs a gradient transformation with init and update, "
            f"got {inner!r}"
        )
    _validation.non_negative("weight_decay", weight_decay)
    _check_anchor(anchor)
    inner = optax.with_extra_args_support(inner)
    name = "with_selective_projection_decay"

    def init(params: Any) -> SelectiveProjectionDecayState:
        check_float_params(params, name)
        if anchor is not None and not isinstance(anchor, str):
            check_matching(anchor, params, f"{name} anchor", "params")
        stored = _copy(params) if isinstance(anchor, str) else None
        return SelectiveProjectionDecayState(inner.init(params), stored)

    def update(updates: Any, state: SelectiveProjectionDecayState, params: Any = None, **extra: Any):
        steps, inner_state = inner.update(updates, state.inner, params, **extra)
        if updates is None:
            return steps, state._replace(inner=inner_state)
        if params is None:
            raise ValueError(f"{name} needs the params: call update(updates, state, params)")
        reference = state.anchor if isinstance(anchor, str) else anchor
        leaves, treedef = jax.tree.flatten(steps)
        references = [None] * len(leaves) if reference is None else treedef.flatten_up_to(reference)
        projected = [
            _project(g, theta, u, ref, weight_decay)
            for g, theta, u, ref in zip(
                treedef.flatten_up_to(updates), treedef.flatten_up_to(params), leaves, references
            )
        ]
        return jax.tree.unflatten(treedef, projected), state._replace(inner=inner_state)

    return Transform(
        init,
        update,
        name=name,
        hyperparams={
            "weight_decay": weight_decay,
            "anchor": anchor if isinstance(anchor, str | None) else "tree",
        },
        parts=(inner,),
    )


def adam_spd(
    learning_rate: LearningRate,
    weight_decay: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    anchor: Anchor = "init",
) -> Transform:
    """AdamSPD: Adam (no decay of its own) followed by selective projection decay toward
    ``anchor`` (:func:`with_selective_projection_decay`), step by step the authors' ``AdamSPD``."""
    spd = with_selective_projection_decay(adam(learning_rate, b1, b2, eps), weight_decay, anchor)
    return Transform(spd.init, spd.update, name="adam_spd", hyperparams=spd.hyperparams, parts=spd.parts)
