"""How strong a weight decay is: timescales, and the same decay written in another convention.

A decoupled decay shrinks a decayed weight by the fraction ``eta * lambda`` per step, so AdamW
is an exponential moving average of its updates with a memory of ``1 / (eta * lambda)`` steps
(Wang & Aitchison 2024). That product is what the conventions disagree about:
``lambda = 0.1`` in torch's form (``eta = lr``) at ``lr = 1e-3`` is the same decay as
``lambda = 1e-4`` in the paper's (``eta = lr / lr_peak``, 1 at the peak). The helpers here
compare and convert decays at the schedule's **peak**, where ``eta`` is

======================  =========================
``decay_scaling``       ``eta`` at the peak
======================  =========================
``"learning_rate"``     ``lr_peak``
``"corrected"``         ``lr_peak**2 / lr_peak = lr_peak``
``"schedule"``          ``1``
``"none"``              ``1``
======================  =========================

Example::

    >>> import optim_chain as oc
    >>> oc.convert_weight_decay(0.1, 1e-3, source="learning_rate", target="schedule")
    0.0001
    >>> oc.timescale_of(0.1, 1e-3)            # iterations
    10000.0
"""

from __future__ import annotations

import math
from typing import Any

from optim_chain import _validation
from optim_chain.presets import DECAY_SCALINGS, DecayScaling, LearningRate

__all__ = [
    "convert_weight_decay",
    "normalized_weight_decay",
    "timescale_of",
    "weight_decay_from_timescale",
]


def _peak_multiplier(
    learning_rate: LearningRate, decay_scaling: str, peak_learning_rate: float | None, argument: str
) -> float:
    """``eta`` at the schedule's peak under ``decay_scaling`` (see the module's table)."""
    _validation.one_of(argument, decay_scaling, DECAY_SCALINGS)
    if decay_scaling in ("schedule", "none"):
        return 1.0
    if peak_learning_rate is not None:
        _validation.non_negative("peak_learning_rate", peak_learning_rate)
        peak = float(peak_learning_rate)
    elif callable(learning_rate):
        raise ValueError(
            f"{argument}={decay_scaling!r} with a learning-rate schedule needs peak_learning_rate "
            "(the schedule's maximum), got peak_learning_rate=None"
        )
    else:
        _validation.non_negative("learning_rate", learning_rate)
        peak = float(learning_rate)
    if peak <= 0:
        raise ValueError(f"the peak learning rate must be > 0 to give a decay per step, got {peak!r}")
    return peak


def _positive(name: str, value: Any) -> float:
    _validation.non_negative(name, value)
    if float(value) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def timescale_of(
    weight_decay: float,
    learning_rate: LearningRate,
    decay_scaling: DecayScaling = "learning_rate",
    peak_learning_rate: float | None = None,
) -> float:
    r"""The timescale of a decoupled decay, in iterations: how many steps its memory spans.

    .. math:: \tau_{iter} = \frac{1}{\eta \lambda}

    with ``eta`` the decay multiplier at the schedule's peak. Divide by the iterations per
    epoch for ``tau_epoch``, the quantity Wang & Aitchison find roughly fixed across model and
    dataset sizes. ``inf`` for ``weight_decay=0``.

    Args:
      weight_decay: ``lambda >= 0`` in the ``decay_scaling`` convention.
      learning_rate: the learning rate, or a schedule (then ``peak_learning_rate`` is needed
        where ``eta`` depends on it).
      decay_scaling: the convention ``weight_decay`` is written in (as in :func:`~optim_chain.adamw`).
      peak_learning_rate: the schedule's maximum.

    Example::

      >>> import optim_chain as oc
      >>> oc.timescale_of(0.1, 1e-3) / 400      # tau_epoch with 400 iterations per epoch
      25.0

    Reference: Wang & Aitchison, *How to set AdamW's weight decay as you scale model and
    dataset size*, arXiv 2405.13698, 2024.
    """
    _validation.non_negative("weight_decay", weight_decay)
    eta = _peak_multiplier(learning_rate, decay_scaling, peak_learning_rate, "decay_scaling")
    per_step = eta * float(weight_decay)
    return math.inf if per_step == 0 else 1.0 / per_step


def weight_decay_from_timescale(
    timescale: float,
    learning_rate: LearningRate,
    decay_scaling: DecayScaling = "learning_rate",
    peak_learning_rate: float | None = None,
) -> float:
    r"""The ``weight_decay`` that gives a decoupled decay the timescale ``timescale`` (iterations).

    .. math:: \lambda = \frac{1}{\eta\, \tau_{iter}}

    The inverse of :func:`timescale_of`; for a timescale in epochs multiply it by the
    iterations per epoch first.

    Example::

      >>> import optim_chain as oc
      >>> oc.weight_decay_from_timescale(10_000, 1e-3)              # torch's 0.1
      0.1
      >>> oc.weight_decay_from_timescale(10_000, 1e-3, "schedule")  # the paper's 1e-4
      0.0001

    Reference: Wang & Aitchison, arXiv 2405.13698, 2024.
    """
    tau = _positive("timescale", timescale)
    eta = _peak_multiplier(learning_rate, decay_scaling, peak_learning_rate, "decay_scaling")
    return 1.0 / (eta * tau)


def convert_weight_decay(
    weight_decay: float,
    learning_rate: LearningRate,
    source: DecayScaling,
    target: DecayScaling,
    peak_learning_rate: float | None = None,
) -> float:
    r"""``weight_decay`` written in the ``source`` convention, rewritten in the ``target`` one.

    Keeps the decay per step at the schedule's peak, ``eta_source * lambda_source =
    eta_target * lambda_target``, so the two decay the weights alike there (and, for
    ``"learning_rate"`` and ``"schedule"``, at every step of the same schedule; ``"corrected"``
    and ``"none"`` follow other shapes over the schedule by design).

    Args:
      weight_decay: ``lambda >= 0`` in the ``source`` convention.
      learning_rate: the learning rate or schedule both optimizers use.
      source: the convention ``weight_decay`` is written in (a ``decay_scaling``).
      target: the convention to write it in.
      peak_learning_rate: the schedule's maximum.

    Example::

      >>> import optim_chain as oc
      >>> oc.convert_weight_decay(0.1, 1e-3, "learning_rate", "schedule")   # torch -> paper
      0.0001
    """
    _validation.non_negative("weight_decay", weight_decay)
    source_eta = _peak_multiplier(learning_rate, source, peak_learning_rate, "source")
    target_eta = _peak_multiplier(learning_rate, target, peak_learning_rate, "target")
    return float(weight_decay) * source_eta / target_eta


def normalized_weight_decay(
    normalized: float, batch_size: int, dataset_size: int, epochs: float
) -> float:
    r"""The paper's normalized weight decay: one ``lambda_norm`` for every run length.

    .. math:: \lambda = \lambda_{norm} \sqrt{\frac{b}{B\,T}}

    with ``b`` the batch size, ``B`` the number of training points and ``T`` the number of
    epochs: a longer run (more steps) takes a proportionally weaker decay per step.

    Example::

      >>> import optim_chain as oc
      >>> round(oc.normalized_weight_decay(0.05, batch_size=128, dataset_size=50_000, epochs=100), 8)
      0.00025298

    Reference: Loshchilov & Hutter, *Decoupled Weight Decay Regularization*, ICLR 2019, Sec. 3.2.
    """
    _validation.non_negative("normalized", normalized)
    b = _positive("batch_size", batch_size)
    n = _positive("dataset_size", dataset_size)
    t = _positive("epochs", epochs)
    return float(normalized) * math.sqrt(b / (n * t))
