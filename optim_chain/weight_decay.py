"""Where weight decay enters: coupled (L2, into the gradient) or decoupled (onto the parameters).

The difference between Adam+L2 and AdamW is only *where* one of these two transforms sits in a
chain:

* :func:`add_l2_regularization` goes **first**, so ``lambda * theta`` is averaged into the
  moments and divided by ``sqrt(vhat) + eps`` like the gradient: each weight ends up decayed by
  ``lr * lambda / (sqrt(vhat) + eps)``, large for weights with small gradients.
* :func:`decoupled_weight_decay` goes **last**, after the learning rate was applied, so every
  weight shrinks by the same fraction ``eta_t * lambda`` whatever its gradient history
  (Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019).

Both take ``weight_decay`` as a number or an optax schedule ``step -> lambda_t`` (counted like
the learning-rate schedules: the first update reads ``lambda(0)``), and an ``anchor``: decay
pulls toward zero by default, toward the initial parameters with ``anchor="init"`` (L2-SP; the
state then holds one copy of the params), or toward any params-shaped tree.
:func:`decoupled_weight_decay` can also be *cautious*: decay only the entries that the step
already moves toward the anchor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from optim_chain import _validation
from optim_chain._complex import componentwise
from optim_chain._tree import (
    cast,
    check_float_params,
    check_matching,
    increment,
    is_numeric,
    leaves_with_paths,
    per_dtype,
    scalar_dtype,
    zeros_like,
)
from optim_chain.masks import Predicate, is_mask_function, resolve_mask
from optim_chain.moments import _expect_step
from optim_chain.transform import Transform

Schedule = Callable[[jax.Array], Any]
#: Where decay pulls the parameters: ``None`` (zero), ``"init"`` (the params given to ``init``),
#: or a pytree with the params' structure and shapes.
Anchor = None | Literal["init"] | Any


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


def _check_anchor(anchor: Any) -> None:
    if anchor is None or (isinstance(anchor, str) and anchor == "init"):
        return
    if isinstance(anchor, str):
        raise ValueError(f"anchor must be None, 'init' or a params-shaped pytree, got {anchor!r}")
    for path, leaf in leaves_with_paths(anchor):
        if not is_numeric(leaf):
            raise TypeError(f"anchor leaf {path!r} must be an array, got {type(leaf).__name__}")


def _shown_anchor(anchor: Any) -> dict[str, Any]:
    """The anchor as a transform prints it: left out when ``None``, a tree by its kind."""
    if anchor is None:
        return {}
    return {"anchor": anchor if isinstance(anchor, str) else "<params-shaped tree>"}


def _copy(params: Any) -> Any:
    """A copy of ``params`` in its own buffers (zeros of the right shape for abstract leaves)."""

    def copy(x: Any) -> Any:
        if isinstance(x, jax.ShapeDtypeStruct):
            return zeros_like(x)
        return jnp.array(x, copy=True)

    return jax.tree.map(copy, params)


class WeightDecayState(NamedTuple):
    """State of a weight-decay transform with a schedule or an ``anchor="init"``.

    Attributes:
      count: steps taken (int32, saturating): the argument of the schedules.
      anchor: the params given to ``init`` with ``anchor="init"``, else ``None``.
    """

    # optax names its step counters count; the field shadows tuple.count on purpose
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
    anchor: Any = None


#: The former name of :class:`WeightDecayState`.
DecoupledWeightDecayState = WeightDecayState


def _init_state(
    name: str, mask: Any, anchor: Any, counted: bool, params: Any
) -> WeightDecayState | optax.EmptyState:
    """Checks ``params`` against the mask and anchor (paths named); the state, if one is needed."""
    check_float_params(params, name)
    resolve_mask(mask, params, f"{name} mask")
    if anchor is not None and not isinstance(anchor, str):
        check_matching(anchor, params, f"{name} anchor", "params")
    if not counted and not isinstance(anchor, str):
        return optax.EmptyState()
    return WeightDecayState(
        count=jnp.zeros([], jnp.int32), anchor=_copy(params) if isinstance(anchor, str) else None
    )


def _reference(anchor: Any, state: Any) -> Any:
    """The tree decay pulls toward: ``None`` for zero, the stored initial params, or ``anchor``."""
    if anchor is None:
        return None
    return state.anchor if isinstance(anchor, str) else anchor


def _at(value: Any, state: Any) -> Any:
    """``value`` at this step: a schedule is read at the state's count, a constant is itself."""
    return value(state.count) if callable(value) else value


def _next(state: Any) -> Any:
    return state._replace(count=increment(state.count)) if isinstance(state, WeightDecayState) else state


def _decay_selected(
    name: str,
    mask: Any,
    updates: Any,
    params: Any,
    reference: Any,
    decay: Callable[[jax.Array, jax.Array], jax.Array],
    support: Any = None,
) -> Any:
    """``decay(update, theta - reference)`` on the leaves that ``mask`` selects; others pass through.

    ``support`` (a bool tree like the updates) keeps the decay to its true entries (lazy decay).
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
    references = [None] * len(leaves) if reference is None else treedef.flatten_up_to(reference)
    supports = [None] * len(leaves) if support is None else treedef.flatten_up_to(support)
    out = []
    for u, p, ref, flag, keep in zip(leaves, param_leaves, references, flags, supports):
        target = p if ref is None else p - jnp.asarray(ref).astype(p.dtype)
        if keep is not None:
            target = jnp.where(keep, target, jnp.zeros_like(target))
        out.append(cast(decay(u, target), u.dtype) if flag else u)
    return jax.tree.unflatten(treedef, out)


def _support(updates: Any) -> Any:
    """Where ``updates`` is non-zero, leaf by leaf (``None`` for ``None``)."""
    return None if updates is None else jax.tree.map(lambda g: g != 0, updates)


def with_gradient_support(inner: Transform) -> Transform:
    """``inner`` (a chain) told where this step's gradient is non-zero, through the extra argument
    ``gradient_support`` that every part receives: what ``lazy_weight_decay`` reads. It prints,
    holds its state and takes apart as ``inner`` does."""

    def update(updates: Any, state: Any, params: Any = None, **extra: Any):
        return inner.update(updates, state, params, gradient_support=_support(updates), **extra)

    return Transform(inner.init, update, name=inner.name, hyperparams=inner.hyperparams, parts=inner.parts)


def add_l2_regularization(
    weight_decay: float | Schedule, mask: Any = None, *, anchor: Anchor = None
) -> Transform:
    r"""Coupled (L2) regularization: adds the gradient of ``lambda/2 * ||theta - theta_ref||^2``.

    .. math:: g_t \leftarrow g_t + \lambda_t (\theta_{t-1} - \theta_{ref})

    Place it *before* any moment estimation: that is what makes the regularizer pass through
    the adaptive denominator (Adam+L2, ``torch.optim.Adam(weight_decay=...)``). For plain SGD
    it equals decoupled decay (Loshchilov & Hutter, Prop. 1).

    Args:
      weight_decay: ``lambda >= 0``, or a schedule ``step -> lambda_t`` (step counts from 0).
      mask: which leaves are regularized (see :mod:`optim_chain.masks`); ``None`` means all.
        Checked against the params at ``init``.
      anchor: ``theta_ref``: ``None`` is zero (plain L2); ``"init"`` the params given to
        ``init``, kept in the state (one more copy of the params in memory); or a tree shaped
        like the params, e.g. pretrained weights (L2-SP, Li et al., ICML 2018).

    The state is ``optax.EmptyState()``, or a :class:`WeightDecayState` with a schedule or
    ``anchor="init"``.

    Example::

      >>> import jax.numpy as jnp, optim_chain as oc
      >>> opt = oc.chain(oc.add_l2_regularization(0.5), oc.scale_by_learning_rate(0.25))
      >>> params = {"w": jnp.array([2.0])}
      >>> updates, _ = opt.update({"w": jnp.array([1.0])}, opt.init(params), params)
      >>> updates["w"].tolist()        # -0.25 * (1 + 0.5 * 2)
      [-0.5]
    """
    _validation.rate("weight_decay", weight_decay)
    _check_mask(mask)
    _check_anchor(anchor)
    name = "add_l2_regularization"

    def init(params: Any) -> WeightDecayState | optax.EmptyState:
        return _init_state(name, mask, anchor, callable(weight_decay), params)

    def update(updates: Any, state: Any, params: Any = None, **extra: Any):
        del extra
        lam = _at(weight_decay, state)
        factor = per_dtype(lambda dtype: jnp.asarray(lam, dtype))
        decay = lambda g, target: g + factor(scalar_dtype(g.dtype)) * target
        reference = _reference(anchor, state)
        return _decay_selected(name, mask, updates, params, reference, decay), _next(state)

    return Transform(
        init,
        update,
        name=name,
        hyperparams={"weight_decay": weight_decay, "mask": mask, **_shown_anchor(anchor)},
    )


def _known_zero(value: Any) -> bool:
    """Whether ``value`` is a concrete number equal to zero (a schedule or a tracer is not)."""
    return not callable(value) and not isinstance(value, jax.core.Tracer) and float(value) == 0.0


def decoupled_weight_decay(
    weight_decay: float | Schedule,
    multiplier: float | Schedule = 1.0,
    mask: Any = None,
    *,
    cautious_weight_decay: bool = False,
    anchor: Anchor = None,
    lazy_weight_decay: bool = False,
) -> Transform:
    r"""Decoupled weight decay: shrinks the parameters directly, outside every preconditioner.

    .. math:: u_t \leftarrow u_t - \eta_t \lambda_t (\theta_{t-1} - \theta_{ref})

    ``u_t`` is the update *after* the learning rate was applied (it already carries the minus
    sign), so this transform goes **last** in a chain. ``eta_t = multiplier(t)`` picks the
    convention (see :func:`optim_chain.decay_multiplier`):

    * ``multiplier=learning_rate`` (PyTorch ``AdamW``, optax ``adamw``, Keras):
      ``theta -= lr_t * lambda * theta``;
    * ``multiplier=lambda t: lr(t) / lr_peak`` (the paper's Algorithm 2, Composer's
      ``DecoupledAdamW``): the schedule multiplier only;
    * ``multiplier=lambda t: lr(t)**2 / lr_peak`` (AdamC, Defazio et al. 2025);
    * ``multiplier=1.0``: ``theta *= 1 - lambda`` each step, whatever the learning rate.

    With ``cautious_weight_decay=True`` an entry decays only where the optimizer's step
    direction ``s`` (the step before the learning rate, ``u = -lr * s``) and the parameter
    agree in sign, ``s * theta >= 0`` (Chen et al. 2025): where the step already moves the
    weight toward zero (toward ``theta_ref`` with an anchor). The sign is read from ``u``, which
    has the opposite sign of ``s``: the test is ``u * theta <= 0``; complex entries are tested
    per component. An entry whose update is exactly zero (a zero learning rate) counts as agreeing.

    Args:
      weight_decay: ``lambda >= 0``, or a schedule ``step -> lambda_t`` (step counts from 0).
      multiplier: ``eta_t``: a non-negative constant or a schedule ``step -> eta_t``.
      mask: which leaves decay (see :mod:`optim_chain.masks`); ``None`` means all. Checked
        against the params at ``init``.
      cautious_weight_decay: decay only where the step and the parameter agree in sign.
      anchor: ``theta_ref``: ``None`` is zero; ``"init"`` the params given to ``init``, kept in
        the state (one more copy of the params in memory); or a tree shaped like the params.
      lazy_weight_decay: decay only the entries whose gradient this step is non-zero (rows of an
        embedding whose tokens are absent from the batch keep their values). The decay sees the
        gradient through the extra argument ``gradient_support``, which the presets' and
        :func:`~optim_chain.with_decoupled_weight_decay`'s ``lazy_weight_decay=True`` pass (see
        :func:`with_gradient_support`).

    The state is ``optax.EmptyState()``, or a :class:`WeightDecayState` counting steps when
    ``weight_decay`` or ``multiplier`` is a schedule, holding the initial params with
    ``anchor="init"``.

    Example::

      >>> import jax.numpy as jnp, optim_chain as oc
      >>> opt = oc.chain(oc.scale_by_learning_rate(0.25), oc.decoupled_weight_decay(0.5, 0.25))
      >>> params = {"w": jnp.array([2.0])}
      >>> updates, _ = opt.update({"w": jnp.array([1.0])}, opt.init(params), params)
      >>> updates["w"].tolist()        # -0.25 * 1 - 0.25 * 0.5 * 2
      [-0.5]

    References: Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019;
    Chen et al., *Cautious Weight Decay*, arXiv 2510.12402, 2025.
    """
    _validation.rate("weight_decay", weight_decay)
    _validation.rate("multiplier", multiplier)
    _check_mask(mask)
    _check_anchor(anchor)
    if not isinstance(cautious_weight_decay, bool):
        raise TypeError(f"cautious_weight_decay must be a bool, got {cautious_weight_decay!r}")
    if not isinstance(lazy_weight_decay, bool):
        raise TypeError(f"lazy_weight_decay must be a bool, got {lazy_weight_decay!r}")
    # A decay known to be zero is left out of the arithmetic, not computed as ``u - 0 * theta``:
    # XLA fuses ``theta + lr * step`` into one FMA, which the extra term would split into two
    # roundings, and AdamW with ``weight_decay=0`` would no longer be Adam bit for bit under jit.
    inert = _known_zero(weight_decay) or _known_zero(multiplier)
    name = "decoupled_weight_decay"

    def init(params: Any) -> WeightDecayState | optax.EmptyState:
        return _init_state(name, mask, anchor, callable(weight_decay) or callable(multiplier), params)

    def update(updates: Any, state: Any, params: Any = None, **extra: Any):
        support = extra.get("gradient_support") if lazy_weight_decay else None
        if lazy_weight_decay and support is None and updates is not None:
            raise ValueError(
                "decoupled_weight_decay(lazy_weight_decay=True) needs this step's gradient: build it with a "
                "preset's or with_decoupled_weight_decay's lazy_weight_decay=True, or wrap the chain in "
                "with_gradient_support"
            )
        eta, lam = _at(multiplier, state), _at(weight_decay, state)
        factor = per_dtype(lambda dtype: jnp.asarray(eta, dtype) * jnp.asarray(lam, dtype))

        def shrink(u: jax.Array, target: jax.Array) -> jax.Array:
            step = factor(scalar_dtype(u.dtype)) * target
            return jnp.where(u * target <= 0, step, jnp.zeros_like(step))

        def decay(u: jax.Array, target: jax.Array) -> jax.Array:
            if inert:
                return u
            if cautious_weight_decay:
                return u - componentwise(shrink, u, target)
            return u - factor(scalar_dtype(u.dtype)) * target

        reference = _reference(anchor, state)
        return _decay_selected(name, mask, updates, params, reference, decay, support), _next(state)

    return Transform(
        init,
        update,
        name=name,
        hyperparams={
            "weight_decay": weight_decay,
            "multiplier": multiplier,
            "mask": mask,
            **({"cautious_weight_decay": True} if cautious_weight_decay else {}),
            **({"lazy_weight_decay": True} if lazy_weight_decay else {}),
            **_shown_anchor(anchor),
        },
    )
