"""Stable weight decay (Xie et al., NeurIPS 2023): decoupled decay divided by the root of the mean
second moment, so that the decay keeps pace with Adam's own step size.

AdamW shrinks every weight by ``eta_t * lambda`` per step while Adam's step shrinks as ``vhat``
grows; the ratio between the two drifts over training. Stable weight decay divides the decay by
``sqrt(mean(vhat)) + eps``, where the mean runs over every entry of every parameter, which keeps
the effective decay in step with the adaptive learning rate.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optim_chain import _validation
from optim_chain._tree import cast, check_float_params, increment
from optim_chain.masks import resolve_mask
from optim_chain.presets import DecayScaling, LearningRate, WeightDecay, adam, decay_multiplier
from optim_chain.transform import Transform
from optim_chain.weight_decay import _at, _check_mask, _decay_selected


class StableWeightDecayState(NamedTuple):
    """The steps taken, the running mean of ``g**2`` over every entry, and the inner state.

    ``mean_square`` is ``(1 - b2) * sum_k b2**(t-k) * mean(g_k**2)``: the mean over all entries of
    Adam's ``v`` (a moving average is linear, so one number carries it).
    """

    # optax names its step counters count; the field shadows tuple.count on purpose
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
    mean_square: jax.Array
    inner: Any


def with_stable_weight_decay(
    inner: optax.GradientTransformation,
    weight_decay: WeightDecay,
    learning_rate: LearningRate,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    mask: Any = None,
    decay_scaling: DecayScaling = "learning_rate",
    peak_learning_rate: float | None = None,
) -> Transform:
    r"""``inner`` followed by stable weight decay, for any optimizer.

    .. math::

        \bar v_t = \frac{\beta_2 \bar v_{t-1} + (1 - \beta_2)\,\operatorname{mean}(g_t^2)}{1 -
        \beta_2^t}, \qquad
        u_t = \text{inner}(g_t) - \frac{\eta_t \lambda}{\sqrt{\bar v_t} + \epsilon}\,\theta_{t-1}

    The mean runs over every entry of every leaf, the leaves the mask leaves out included; the
    decay acts on the masked leaves only. ``inner`` must return updates that include the
    learning rate (every optax optimizer does), and should not decay itself.

    Args:
      inner: any gradient transformation whose updates include the learning rate.
      weight_decay: ``lambda >= 0`` (a number or a schedule).
      learning_rate: the learning rate ``inner`` uses, which ``eta_t`` follows.
      b2: the decay rate of the mean second moment (Adam's ``b2``), in ``[0, 1)``.
      eps: added to ``sqrt(mean(vhat))``, ``>= 0``.
      mask: which leaves decay (see :mod:`optim_chain.masks`); ``None`` means all.
      decay_scaling: ``eta_t``, as for :func:`~optim_chain.adamw`: ``"learning_rate"`` (the
        authors' code), ``"none"`` (its ``fixed_decay=True``), ``"schedule"`` or ``"corrected"``.
      peak_learning_rate: the schedule's maximum, for ``"schedule"`` and ``"corrected"``.

    Returns:
      A :class:`~optim_chain.Transform` named ``with_stable_weight_decay`` whose state is a
      :class:`StableWeightDecayState`.

    Example::

      >>> import optim_chain as oc
      >>> print(oc.adams(1e-3, weight_decay=1e-4).name)
      adams

    Reference: Xie, Xu, Zhang, Sato & Sugiyama, *On the Overlooked Pitfalls of Weight Decay and
    How to Mitigate Them: A Gradient-Norm Perspective*, NeurIPS 2023 (``AdamS`` in
    pytorch_optimizer).
    """
    if not (hasattr(inner, "init") and hasattr(inner, "update")):
        raise TypeError(
            f"with_stable_weight_decay needs a gradient transformation with init and update, got {inner!r}"
        )
    _validation.rate("weight_decay", weight_decay)
    _validation.in_unit_interval("b2", b2)
    _validation.non_negative("eps", eps)
    _check_mask(mask)
    multiplier = decay_multiplier(learning_rate, decay_scaling, peak_learning_rate)
    inner = optax.with_extra_args_support(inner)
    name = "with_stable_weight_decay"

    def init(params: Any) -> StableWeightDecayState:
        check_float_params(params, name)
        resolve_mask(mask, params, f"{name} mask")
        dtype = jnp.result_type(jnp.float32, *jax.tree.leaves(params))  # float64 where params are
        return StableWeightDecayState(jnp.zeros([], jnp.int32), jnp.zeros([], dtype), inner.init(params))

    def update(updates: Any, state: StableWeightDecayState, params: Any = None, **extra: Any):
        steps, inner_state = inner.update(updates, state.inner, params, **extra)
        if updates is None:
            return steps, state._replace(inner=inner_state)
        leaves = jax.tree.leaves(updates)
        size = sum(g.size for g in leaves)
        dtype = state.mean_square.dtype
        total = sum(jnp.sum(jnp.square(g.astype(dtype))) for g in leaves)
        mean_square = b2 * state.mean_square + (1 - b2) * total / size
        count = increment(state.count)
        mean_vhat = mean_square / (1 - jnp.asarray(b2, dtype) ** count.astype(dtype))
        eta, lam = _at(multiplier, state), _at(weight_decay, state)
        factor = eta * lam / (jnp.sqrt(mean_vhat) + eps)

        def decay(u: jax.Array, theta: jax.Array) -> jax.Array:
            return u - cast(factor, u.dtype) * theta

        steps = _decay_selected(name, mask, steps, params, None, decay)
        return steps, StableWeightDecayState(count, mean_square.astype(dtype), inner_state)

    return Transform(
        init,
        update,
        name=name,
        hyperparams={
            "weight_decay": weight_decay,
            "multiplier": multiplier,
            "b2": b2,
            "eps": eps,
            "mask": mask,
        },
        parts=(inner,),
    )


def adams(
    learning_rate: LearningRate,
    weight_decay: WeightDecay = 1e-4,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    mask: Any = None,
    decay_scaling: DecayScaling = "learning_rate",
    peak_learning_rate: float | None = None,
    moment_dtype: Any = None,
) -> Transform:
    r"""AdamS: Adam with stable weight decay (:func:`with_stable_weight_decay` around
    :func:`~optim_chain.adam`).

    Each step first shrinks the decayed weights by ``lr_t * lambda / (sqrt(mean(vhat)) + eps)``,
    the mean over every entry of every parameter, then takes Adam's step. Equal step by step to
    pytorch_optimizer's ``AdamS`` (``weight_decouple=True``, ``fixed_decay=False``; with
    ``decay_scaling="none"``, to ``fixed_decay=True``).

    Args:
      learning_rate: the learning rate (or schedule).
      weight_decay: ``lambda >= 0`` (pytorch_optimizer's default ``1e-4``).
      b1, b2, eps: Adam's.
      mask: which leaves decay; the mean second moment covers all of them.
      decay_scaling, peak_learning_rate: ``eta_t``, as for :func:`~optim_chain.adamw`.
      moment_dtype: the dtype of Adam's ``m`` and ``v``.
    """
    inner = adam(learning_rate, b1, b2, eps, moment_dtype=moment_dtype)
    stable = with_stable_weight_decay(
        inner,
        weight_decay,
        learning_rate,
        b2,
        eps,
        mask=mask,
        decay_scaling=decay_scaling,
        peak_learning_rate=peak_learning_rate,
    )
    return Transform(
        stable.init, stable.update, name="adams", hyperparams=stable.hyperparams, parts=stable.parts
    )
