"""Norm-constrained steps in place of weight decay: each selected weight moves on the sphere of its
own norm ("hyperball" training, levanter's AdamH and MuonH).

Decay exists, in a normalized network, to keep weight norms from growing and the effective step
from shrinking. Holding each weight matrix at a fixed norm does the same without a decay rate:
the step is scaled to a fixed share of the weight's norm, then the result is put back on the
sphere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optim_chain import _validation
from optim_chain._tree import check_float_params, check_matching, increment
from optim_chain.bias_correction import correct_bias
from optim_chain.masks import default_decay_mask, resolve_mask
from optim_chain.moments import estimate_moments
from optim_chain.normalization import normalize_by_second_moment
from optim_chain.presets import LearningRate
from optim_chain.transform import Transform, chain
from optim_chain.weight_decay import _at

#: The smallest direction norm a step divides by.
TINY = 1e-10


class HyperballState(NamedTuple):
    """Step counter for a learning-rate schedule, ``count`` (starts at 0)."""

    # optax names its step counters count; the field shadows tuple.count on purpose
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]


def _on_sphere(theta: jax.Array, direction: jax.Array, lr: Any) -> jax.Array:
    radius = jnp.linalg.norm(theta)
    moved = theta - lr * direction * radius / jnp.maximum(jnp.linalg.norm(direction), TINY)
    return moved / jnp.linalg.norm(moved) * radius - theta


def scale_on_sphere(
    learning_rate: float | Callable[[jax.Array], Any], mask: Any = default_decay_mask
) -> Transform:
    r"""Turns a direction into a step that keeps each selected leaf's Frobenius norm.

    For a selected leaf ``W`` with direction ``U`` (Adam's ``mhat / (sqrt(vhat) + eps)``, or
    any other, such as Muon's orthogonalized momentum):

    .. math::

        W' = W - \eta_t\, U \frac{\lVert W \rVert}{\max(\lVert U \rVert, 10^{-10})}, \qquad
        W^{+} = W' \frac{\lVert W \rVert}{\lVert W' \rVert}

    so each step turns ``W`` by an angle set by ``eta_t`` alone, whatever the scale of ``U``.
    The other leaves take the plain step ``-eta_t * U``, with no decay. It replaces
    :func:`~optim_chain.scale_by_learning_rate` at the end of a chain.

    Args:
      learning_rate: ``eta >= 0`` or a schedule ``step -> eta_t``.
      mask: the leaves held on their sphere (see :mod:`optim_chain.masks`; default: those with
        two or more dimensions, not embeddings or norms' parameters). A selected leaf is taken
        as one matrix (the norm of the whole leaf).

    Example::

      >>> import optim_chain as oc
      >>> print(oc.adamh(0.01).parts[-1].name)
      scale_on_sphere

    Reference: levanter's ``AdamH`` and ``MuonH`` (marin-community/marin, ``levanter/optim``);
    Wen et al., *Hyperspherical training*; Loshchilov et al., *nGPT*, 2024.
    """
    _validation.rate("learning_rate", learning_rate)

    def init(params: Any) -> HyperballState | optax.EmptyState:
        check_float_params(params, "scale_on_sphere")
        resolve_mask(mask, params, "scale_on_sphere mask")
        return HyperballState(jnp.zeros([], jnp.int32)) if callable(learning_rate) else optax.EmptyState()

    def update(updates: Any, state: Any, params: Any = None, **extra: Any):
        del extra
        if updates is None:
            return None, state
        if params is None:
            raise ValueError("scale_on_sphere needs the params: call update(updates, state, params)")
        check_matching(updates, params)
        lr = _at(learning_rate, state)
        flags = resolve_mask(mask, params, "scale_on_sphere mask")
        leaves, treedef = jax.tree.flatten(updates)
        steps = [
            _on_sphere(theta, u, jnp.asarray(lr, u.dtype)) if flag else -jnp.asarray(lr, u.dtype) * u
            for u, theta, flag in zip(leaves, treedef.flatten_up_to(params), flags)
        ]
        new_state = HyperballState(increment(state.count)) if callable(learning_rate) else state
        return jax.tree.unflatten(treedef, steps), new_state

    return Transform(
        init, update, name="scale_on_sphere", hyperparams={"learning_rate": learning_rate, "mask": mask}
    )


def adamh(
    learning_rate: LearningRate,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    mask: Any = default_decay_mask,
    moment_dtype: Any = None,
) -> Transform:
    """AdamH: Adam's direction, each selected leaf stepped on the sphere of its norm
    (:func:`scale_on_sphere`), the other leaves plain Adam at the same learning rate; no decay.

    ``chain(estimate_moments, correct_bias, normalize_by_second_moment, scale_on_sphere)``: the
    Adam chain with its last line changed. levanter's ``AdamH`` steps its non-matrix leaves with
    a learning rate of their own (``adam_lr``); split the groups with
    :func:`~optim_chain.param_groups` for that.
    """
    return chain(
        estimate_moments(b1, b2, moment_dtype),
        correct_bias(b1, b2),
        normalize_by_second_moment(eps),
        scale_on_sphere(learning_rate, mask),
        name="adamh",
    )
