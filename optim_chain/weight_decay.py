"""Where weight decay enters: coupled (L2, into the gradient) or decoupled (onto the parameters).

The difference between Adam+L2 and AdamW is only *where* one of these two transforms sits in a
chain:

* :func:`add_l2_regularization` goes **first**, so ``lambda * theta`` is averaged into the
  moments and divided by ``sqrt(vhat) + eps`` like the gradient: each weight ends up decayed by
  ``lr * lambda / (sqrt(vhat) + eps)``, large for weights with small gradients.
* :func:`decoupled_weight_decay` goes **last**, after the learning rate was applied, so every
  weight shrinks by the same fraction ``eta_t * lambda`` whatever its gradient history
  (Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim_chain import _validation
from optim_chain._tree import check_float_params, check_matching, increment, per_dtype, scalar_dtype
from optim_chain.masks import Predicate, is_mask_function, resolve_mask
from optim_chain.moments import _expect_step
from optim_chain.transform import Transform

Schedule = Callable[[jax.Array], Any]


def _check_mask(mask: Any) -> None:
    if mask is None or isinstance(mask, Predicate) or is_mask_function(mask):
        return
    leaves = jax.tree.leaves(mask)
    bad = [x for x in leaves if not (isinstance(x, bool) or getattr(x, "dtype", None) == np.bool_)]
    if bad:
        raise TypeError(
            f"mask must be None, a Predicate, a callable params -> bool pytree, or a bool pytree; "
            f"got a pytree with the non-bool leaf {bad[0]!r}"
        )


def _decay_selected(
    name: str, mask: Any, updates: Any, params: Any, decay: Callable[[jax.Array, jax.Array], jax.Array]
) -> Any:
    """Applies ``decay(update, param)`` on the leaves that ``mask`` selects, passes others through.

    ``updates=None`` (an empty tree, as optax allows) comes back as ``None``.
    """
    if updates is None:
        return None
    _expect_step(name, updates)
    if params is None:
        raise ValueError(f"{name} needs the params: call update(updates, state, params)")
    check_matching(updates, params)
    flags = resolve_mask(mask, params, f"{name} mask")
    leaves, treedef = jax.tree.flatten(updates)
    param_leaves = jax.tree.leaves(params)
    out = [decay(u, p).astype(u.dtype) if flag else u for u, p, flag in zip(leaves, param_leaves, flags)]
    return jax.tree.unflatten(treedef, out)


def _check_params(name: str, mask: Any, params: Any) -> None:
    """What ``init`` checks: floating-point leaves, and a mask that fits them (paths named)."""
    check_float_params(params, name)
    resolve_mask(mask, params, f"{name} mask")


def add_l2_regularization(weight_decay: float, mask: Any = None) -> Transform:
    r"""Coupled (L2) regularization: adds the gradient of ``lambda/2 * ||theta||^2``.

    .. math:: g_t \leftarrow g_t + \lambda \theta_{t-1}

    Place it *before* any moment estimation: that is what makes the regularizer pass through
    the adaptive denominator (Adam+L2, ``torch.optim.Adam(weight_decay=...)``). For plain SGD
    it equals decoupled decay (Loshchilov & Hutter, Prop. 1).

    Args:
      weight_decay: ``lambda >= 0``.
      mask: which leaves are regularized (see :mod:`optim_chain.masks`); ``None`` means all.
        Checked against the params at ``init``.

    Example::

      >>> opt = oc.chain(oc.add_l2_regularization(1e-4), oc.scale_by_learning_rate(0.1))
    """
    _validation.non_negative("weight_decay", weight_decay)
    _check_mask(mask)
    name = "add_l2_regularization"

    def init(params: Any) -> optax.EmptyState:
        _check_params(name, mask, params)
        return optax.EmptyState()

    def update(updates: Any, state: optax.EmptyState, params: Any = None, **extra: Any):
        del extra
        factor = per_dtype(lambda dtype: jnp.asarray(weight_decay, dtype))
        decay = lambda g, p: g + factor(scalar_dtype(g.dtype)) * p
        return _decay_selected(name, mask, updates, params, decay), state

    return Transform(init, update, name=name, hyperparams={"weight_decay": weight_decay, "mask": mask})


def _known_zero(value: Any) -> bool:
    """Whether ``value`` is a concrete number equal to zero (a schedule or a tracer is not)."""
    return not callable(value) and not isinstance(value, jax.core.Tracer) and float(value) == 0.0


class DecoupledWeightDecayState(NamedTuple):
    """Step counter used to evaluate ``multiplier`` when it is a schedule."""

    count: jax.Array


def decoupled_weight_decay(
    weight_decay: float, multiplier: float | Schedule = 1.0, mask: Any = None
) -> Transform:
    r"""Decoupled weight decay: shrinks the parameters directly, outside every preconditioner.

    .. math:: u_t \leftarrow u_t - \eta_t \lambda \theta_{t-1}

    ``u_t`` is the update *after* the learning rate was applied (it already carries the minus
    sign), so this transform goes **last** in a chain. ``eta_t = multiplier(t)`` picks the
    convention (see :func:`optim_chain.adamw`'s ``decay_scaling``):

    * ``multiplier=learning_rate`` (PyTorch ``AdamW``, optax ``adamw``, Keras):
      ``theta -= lr_t * lambda * theta``;
    * ``multiplier=lambda t: lr(t) / lr_peak`` (the paper's Algorithm 2, Composer's
      ``DecoupledAdamW``): the schedule multiplier only;
    * ``multiplier=1.0``: ``theta *= 1 - lambda`` each step, whatever the learning rate.

    Args:
      weight_decay: ``lambda >= 0``.
      multiplier: a non-negative constant or a schedule ``step -> eta_t`` (step counts from 0).
        With a schedule the state is a :class:`DecoupledWeightDecayState` counting steps; with a
        constant it is ``optax.EmptyState()``.
      mask: which leaves decay (see :mod:`optim_chain.masks`); ``None`` means all. Checked
        against the params at ``init``.

    Example::

      >>> opt = oc.chain(oc.scale_by_learning_rate(1e-3), oc.decoupled_weight_decay(0.1, 1e-3))

    Reference: Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019.
    """
    _validation.non_negative("weight_decay", weight_decay)
    _validation.rate("multiplier", multiplier)
    _check_mask(mask)
    # A decay known to be zero is left out of the arithmetic, not computed as ``u - 0 * theta``:
    # XLA fuses ``theta + lr * step`` into one FMA, which the extra term would split into two
    # roundings, and AdamW with ``weight_decay=0`` would no longer be Adam bit for bit under jit.
    inert = _known_zero(weight_decay) or _known_zero(multiplier)

    def init(params: Any) -> DecoupledWeightDecayState:
        _check_params("decoupled_weight_decay", mask, params)
        # Only a schedule reads the counter; a constant multiplier keeps no state.
        return (
            DecoupledWeightDecayState(count=jnp.zeros([], jnp.int32))
            if callable(multiplier)
            else optax.EmptyState()
        )

    def update(updates: Any, state: DecoupledWeightDecayState, params: Any = None, **extra: Any):
        del extra
        eta = multiplier(state.count) if callable(multiplier) else multiplier

        factor = per_dtype(lambda dtype: jnp.asarray(eta, dtype) * jnp.asarray(weight_decay, dtype))

        def decay(u: jax.Array, p: jax.Array) -> jax.Array:
            if inert:
                return u
            return u - factor(scalar_dtype(u.dtype)) * p

        new_updates = _decay_selected("decoupled_weight_decay", mask, updates, params, decay)
        if not callable(multiplier):
            return new_updates, state
        return new_updates, DecoupledWeightDecayState(count=increment(state.count))

    return Transform(
        init,
        update,
        name="decoupled_weight_decay",
        hyperparams={"weight_decay": weight_decay, "multiplier": multiplier, "mask": mask},
    )
