"""Decoupled weight decay added to any optax transformation."""

from __future__ import annotations

from typing import Any

import optax

from optim_chain.presets import DecayScaling, LearningRate, WeightDecay, decay_multiplier
from optim_chain.transform import Transform, chain
from optim_chain.weight_decay import Anchor, decoupled_weight_decay, with_gradient_support


def with_decoupled_weight_decay(
    inner: optax.GradientTransformation,
    weight_decay: WeightDecay,
    learning_rate: LearningRate,
    *,
    mask: Any = None,
    decay_scaling: DecayScaling = "learning_rate",
    peak_learning_rate: float | None = None,
    cautious: bool = False,
    anchor: Anchor = None,
    lazy_weight_decay: bool = False,
) -> Transform:
    r"""``inner`` followed by decoupled weight decay: the W of AdamW for any optimizer.

    .. math:: u_t = \text{inner}(g_t) - \eta_t \lambda_t (\theta_{t-1} - \theta_{ref})

    ``inner`` must return updates that already include the learning rate and the minus sign
    (every optax optimizer does); the decay is added after it, outside whatever
    preconditioning ``inner`` does, with ``eta_t`` from ``decay_scaling`` and ``learning_rate``
    (see :func:`~optim_chain.decay_multiplier`). Build ``inner`` with its own decay off.

    Placement in optax's optimizers, to reproduce them:

    * ``optax.lion``, ``optax.contrib.ademamix`` (and ``optax.adamw``): decay inside, before the
      learning rate, so it is scaled by it: ``decay_scaling="learning_rate"``.
      ``with_decoupled_weight_decay(optax.lion(lr, weight_decay=0.0), wd, lr)`` is
      ``optax.lion(lr, weight_decay=wd)`` (mind lion's default ``weight_decay=1e-3``).
    * ``optax.adafactor``: ``weight_decay_rate`` is added after the learning rate, so it is not
      scaled by it: ``decay_scaling="none"``.
    * ``optax.lamb``: decay inside the trust ratio, coupled to it: not a decoupled decay, and
      not reproduced by this wrapper.

    Args:
      inner: any gradient transformation whose updates include the learning rate.
      weight_decay: ``lambda >= 0``, or a schedule ``step -> lambda_t``.
      learning_rate: the learning rate (or schedule) ``inner`` uses, which ``eta_t`` follows.
      mask: which leaves decay (see :mod:`optim_chain.masks`); ``None`` means all.
      decay_scaling: ``"learning_rate"``, ``"schedule"``, ``"corrected"`` or ``"none"``.
      peak_learning_rate: the schedule's maximum, for ``"schedule"`` and ``"corrected"``.
      cautious: decay only where ``inner``'s step and the parameter agree in sign.
      anchor: decay toward ``None`` (zero), ``"init"`` or a params-shaped tree.
      lazy_weight_decay: decay only the entries whose gradient this step is non-zero.

    Returns:
      A chain ``(inner, decoupled_weight_decay)`` named ``with_decoupled_weight_decay``; its
      state is ``(inner_state, decay_state)``.

    Example::

      >>> import optax, optim_chain as oc
      >>> opt = oc.with_decoupled_weight_decay(optax.lion(1e-4, weight_decay=0.0), 1.0, 1e-4,
      ...                                      mask=oc.default_decay_mask)
      >>> print(opt)
      with_decoupled_weight_decay(
        <GradientTransformationExtraArgs>,
        decoupled_weight_decay(weight_decay=1.0, multiplier=0.0001, mask=default_decay_mask),
      )

    Reference: Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019.
    """
    if not (hasattr(inner, "init") and hasattr(inner, "update")):
        raise TypeError(
            f"with_decoupled_weight_decay needs a gradient transformation with init and update, got {inner!r}"
        )
    decay = decoupled_weight_decay(
        weight_decay,
        decay_multiplier(learning_rate, decay_scaling, peak_learning_rate),
        mask,
        cautious_weight_decay=cautious,
        anchor=anchor,
        lazy_weight_decay=lazy_weight_decay,
    )
    combined = chain(optax.with_extra_args_support(inner), decay, name="with_decoupled_weight_decay")
    return with_gradient_support(combined) if lazy_weight_decay else combined
