"""The classic optimizers, each rebuilt as a chain of optim_chain primitives.

Read the two Adam variants side by side: they are the same chain, and the only difference is
where the weight-decay transform sits.

    adam_l2 = chain(add_l2_regularization,   <Adam core>, scale_by_learning_rate)
    adamw   = chain(                         <Adam core>, scale_by_learning_rate, decoupled_weight_decay)

with ``<Adam core> = estimate_moments, correct_bias, normalize_by_second_moment``. SGD+L2 and
SGDW differ the same way. Every preset returns a :class:`~optim_chain.Transform`: print it to
see the chain, index ``.parts`` to take it apart.

Options every preset shares (keyword-only):

* ``skip_nonfinite=True`` wraps the chain in :func:`~optim_chain.skip_nonfinite`: a step whose
  gradients or updates hold NaN or Inf changes nothing and is counted in the state.
* ``moment_dtype`` sets the dtype the moments and momentum buffers are stored in, for example
  float32 moments for bfloat16 parameters, or bfloat16 moments to halve their memory (optax's
  ``mu_dtype`` and ``accumulator_dtype``).

Complex parameters are optimized as pairs of reals, as ``torch.optim`` does: squares, roots,
divisions and AMSGrad's maximum act on the real and imaginary parts apart, so every preset
follows torch's trajectory on complex leaves (optax's Adam uses ``|g|^2`` instead).

Every numeric hyperparameter may be a JAX array, which is what ``optax.inject_hyperparams``
passes; changing it at run time needs no recompilation. A momentum given as an array always
builds the momentum transform, since its value (possibly 0) is only known at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax

from optim_chain import _validation
from optim_chain.bias_correction import correct_bias
from optim_chain.cautious_updates import caution as _caution
from optim_chain.learning_rate import scale_by_learning_rate
from optim_chain.moments import (
    accumulate_second_moment,
    center_second_moment,
    estimate_moments,
    estimate_second_moment,
    max_second_moment,
)
from optim_chain.momentum import add_momentum
from optim_chain.nonfinite import skip_nonfinite as _skip_nonfinite
from optim_chain.normalization import normalize_by_second_moment
from optim_chain.transform import Transform, chain
from optim_chain.weight_decay import (
    Anchor,
    add_l2_regularization,
    decoupled_weight_decay,
    with_gradient_support,
)

Schedule = Callable[[jax.Array], Any]
LearningRate = float | Schedule
WeightDecay = float | Schedule
DecayScaling = Literal["learning_rate", "schedule", "corrected", "none"]
DECAY_SCALINGS = ("learning_rate", "schedule", "corrected", "none")
AMSGRAD_MAX_OF = ("raw", "corrected")


def _sgd_direction(momentum: float, nesterov: bool, moment_dtype: Any = None) -> list[Transform]:
    _validation.in_closed_unit_interval("momentum", momentum)
    _validation.float_dtype("moment_dtype", moment_dtype)
    if not _validation.is_number(momentum):
        # an array (inject_hyperparams): its value may change, so the buffer must exist
        return [add_momentum(momentum, nesterov, moment_dtype)]
    if nesterov and momentum == 0:
        raise ValueError("nesterov=True needs momentum > 0, got momentum=0")
    return [add_momentum(momentum, nesterov, moment_dtype)] if momentum else []


def _finish(name: str, parts: list[Transform], skip_nonfinite: bool, lazy: bool = False) -> Transform:
    """The preset's chain, told where the gradient is non-zero when a decay is lazy, and wrapped
    in :func:`~optim_chain.skip_nonfinite` when asked."""
    if not isinstance(skip_nonfinite, bool):
        raise TypeError(f"skip_nonfinite must be a bool, got {skip_nonfinite!r}")
    optimizer = chain(*parts, name=name)
    if lazy:
        optimizer = with_gradient_support(optimizer)
    return _skip_nonfinite(optimizer) if skip_nonfinite else optimizer


def _adam_core(
    b1: float,
    b2: float,
    eps: float,
    eps_root: float,
    amsgrad: bool,
    amsgrad_max_of: str,
    bias_correction: bool,
    moment_dtype: Any,
    nesterov: bool,
) -> list[Transform]:
    _validation.one_of("amsgrad_max_of", amsgrad_max_of, AMSGRAD_MAX_OF)
    if not isinstance(amsgrad, bool):
        raise TypeError(f"amsgrad must be a bool, got {amsgrad!r}")
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
    if nesterov and not bias_correction:
        raise ValueError("nesterov=True is a form of bias correction; it needs bias_correction=True")
    parts = [estimate_moments(b1, b2, moment_dtype)]
    running_max = [max_second_moment(moment_dtype)] if amsgrad else []
    if amsgrad_max_of == "raw":
        parts += running_max
    if bias_correction:
        parts.append(correct_bias(b1, b2, nesterov))
    if amsgrad_max_of == "corrected":
        parts += running_max
    return parts + [normalize_by_second_moment(eps, eps_root)]


def _cautious(parts: list[Transform], caution: bool) -> list[Transform]:
    """The Adam core as it is, or wrapped in :func:`~optim_chain.caution` (one part)."""
    if not isinstance(caution, bool):
        raise TypeError(f"caution must be a bool, got {caution!r}")
    return [_caution(chain(*parts, name="adam_direction"))] if caution else parts


def decay_multiplier(
    learning_rate: LearningRate,
    decay_scaling: DecayScaling = "learning_rate",
    peak_learning_rate: float | None = None,
) -> LearningRate:
    """The ``eta_t`` that multiplies decoupled weight decay under each convention.

    * ``"learning_rate"``: ``eta_t = lr_t`` (PyTorch, optax, Keras).
    * ``"schedule"``: ``eta_t = lr_t / peak_learning_rate`` (the paper's Algorithm 2, Composer).
    * ``"corrected"``: ``eta_t = lr_t**2 / peak_learning_rate`` (AdamC, Defazio et al. 2025:
      the decay follows the square of the schedule, so that the steady-state weight norm does
      not grow as the learning rate anneals).
    * ``"none"``: ``eta_t = 1``.

    A constant learning rate is its own peak; a schedule needs ``peak_learning_rate`` under
    ``"schedule"`` and ``"corrected"``.

    Example::

      >>> import optax, optim_chain as oc
      >>> schedule = optax.cosine_decay_schedule(1e-3, 1000)
      >>> eta = oc.decay_multiplier(schedule, "corrected", peak_learning_rate=1e-3)
      >>> round(float(eta(0)), 8), round(float(eta(500)), 8)   # lr^2 / peak: 1e-3, then 0.5e-3 * 0.5
      (0.001, 0.00025)
    """
    _validation.one_of("decay_scaling", decay_scaling, DECAY_SCALINGS)
    if peak_learning_rate is not None:
        _validation.non_negative("peak_learning_rate", peak_learning_rate)
        if _validation.is_number(peak_learning_rate) and peak_learning_rate == 0:
            raise ValueError("peak_learning_rate must be > 0, got 0")
    if decay_scaling == "learning_rate":
        return learning_rate
    if decay_scaling == "none":
        return 1.0
    power = 2 if decay_scaling == "corrected" else 1
    if callable(learning_rate):
        if peak_learning_rate is None:
            raise ValueError(
                f"decay_scaling={decay_scaling!r} with a learning-rate schedule needs peak_learning_rate "
                "(the schedule's maximum), got peak_learning_rate=None"
            )
        peak = peak_learning_rate

        def relative_learning_rate(step: jax.Array) -> Any:
            return learning_rate(step) ** power / peak

        return relative_learning_rate
    if peak_learning_rate is None:  # a constant rate is its own peak
        return 1.0 if power == 1 else learning_rate
    return learning_rate**power / peak_learning_rate


# --------------------------------------------------------------------------------- SGD family


def sgd(
    learning_rate: LearningRate,
    momentum: float = 0.0,
    nesterov: bool = False,
    *,
    moment_dtype: Any = None,
    skip_nonfinite: bool = False,
) -> Transform:
    """SGD with optional heavy-ball or Nesterov momentum (``torch.optim.SGD``, ``optax.sgd``).

    ``moment_dtype`` sets the dtype of the momentum buffer (optax's ``accumulator_dtype``).
    """
    return _finish(
        "sgd",
        [*_sgd_direction(momentum, nesterov, moment_dtype), scale_by_learning_rate(learning_rate)],
        skip_nonfinite,
    )


def sgd_l2(
    learning_rate: LearningRate,
    weight_decay: WeightDecay,
    momentum: float = 0.0,
    nesterov: bool = False,
    mask: Any = None,
    *,
    anchor: Anchor = None,
    moment_dtype: Any = None,
    skip_nonfinite: bool = False,
) -> Transform:
    """SGD with L2 regularization (``torch.optim.SGD(weight_decay=...)``): decay enters the gradient.

    ``weight_decay`` may be a schedule; ``anchor`` pulls toward the initial params (``"init"``)
    or a given tree instead of zero (see :func:`~optim_chain.add_l2_regularization`).
    """
    return _finish(
        "sgd_l2",
        [
            add_l2_regularization(weight_decay, mask, anchor=anchor),
            *_sgd_direction(momentum, nesterov, moment_dtype),
            scale_by_learning_rate(learning_rate),
        ],
        skip_nonfinite,
    )


def sgdw(
    learning_rate: LearningRate,
    weight_decay: WeightDecay,
    momentum: float = 0.0,
    nesterov: bool = False,
    mask: Any = None,
    decay_scaling: DecayScaling = "learning_rate",
    peak_learning_rate: float | None = None,
    *,
    cautious_weight_decay: bool = False,
    anchor: Anchor = None,
    lazy_weight_decay: bool = False,
    moment_dtype: Any = None,
    skip_nonfinite: bool = False,
) -> Transform:
    """SGDW (the paper's Algorithm 1): decay applied to the parameters, outside the momentum.

    ``decay_scaling`` picks ``eta_t`` (:func:`decay_multiplier`); ``weight_decay`` may be a
    schedule; ``cautious_weight_decay``, ``anchor`` and ``lazy_weight_decay`` as in
    :func:`~optim_chain.decoupled_weight_decay`.
    """
    return _finish(
        "sgdw",
        [
            *_sgd_direction(momentum, nesterov, moment_dtype),
            scale_by_learning_rate(learning_rate),
            decoupled_weight_decay(
                weight_decay,
                decay_multiplier(learning_rate, decay_scaling, peak_learning_rate),
                mask,
                cautious_weight_decay=cautious_weight_decay,
                anchor=anchor,
                lazy_weight_decay=lazy_weight_decay,
            ),
        ],
        skip_nonfinite,
        lazy_weight_decay,
    )


# ------------------------------------------------------------------------- adaptive methods


def adagrad(
    learning_rate: LearningRate,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    eps_root: float = 0.0,
    *,
    moment_dtype: Any = None,
    skip_nonfinite: bool = False,
) -> Transform:
    """Adagrad as in ``torch.optim.Adagrad``: ``theta -= lr * g / (sqrt(sum g^2) + eps)``.

    optax's convention is ``initial_accumulator_value=0.1, eps=0.0, eps_root=1e-7``.
    """
    _validation.non_negative("initial_accumulator_value", initial_accumulator_value)
    return _finish(
        "adagrad",
        [
            accumulate_second_moment(initial_accumulator_value, moment_dtype),
            normalize_by_second_moment(eps, eps_root),
            scale_by_learning_rate(learning_rate),
        ],
        skip_nonfinite,
    )


def rmsprop(
    learning_rate: LearningRate,
    decay: float = 0.99,
    eps: float = 1e-8,
    centered: bool = False,
    momentum: float = 0.0,
    eps_root: float = 0.0,
    *,
    initial_scale: float = 0.0,
    moment_dtype: Any = None,
    skip_nonfinite: bool = False,
) -> Transform:
    """RMSProp as in ``torch.optim.RMSprop`` (eps outside the root; ``eps_root`` puts one inside).

    ``initial_scale`` is the second moment's starting value (optax's ``initial_scale``; torch
    starts at 0).

    ``centered`` divides by an estimate of the standard deviation instead of the root mean
    square; ``momentum`` accumulates the normalized step. ``moment_dtype`` applies to every
    buffer: the second moment, the running mean and the momentum.
    """
    if not isinstance(centered, bool):
        raise TypeError(f"centered must be a bool, got {centered!r}")
    return _finish(
        "rmsprop",
        [
            estimate_second_moment(decay, moment_dtype, initial_scale),
            *([center_second_moment(decay, moment_dtype)] if centered else []),
            normalize_by_second_moment(eps, eps_root),
            *_sgd_direction(momentum, False, moment_dtype),
            scale_by_learning_rate(learning_rate),
        ],
        skip_nonfinite,
    )


def adam(
    learning_rate: LearningRate,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    amsgrad: bool = False,
    *,
    amsgrad_max_of: str = "raw",
    bias_correction: bool = True,
    nesterov: bool = False,
    caution: bool = False,
    moment_dtype: Any = None,
    skip_nonfinite: bool = False,
) -> Transform:
    """Adam (and AMSGrad with ``amsgrad=True``), without weight decay.

    ``amsgrad_max_of="raw"`` keeps the maximum of the uncorrected ``v`` (torch, Keras);
    ``"corrected"`` of the bias-corrected one (optax). ``bias_correction=False`` drops the
    correction transform; ``moment_dtype`` sets the dtype of ``m`` and ``v``.

    ``nesterov=True`` is NAdam as optax writes it (``optax.nadam``): the bias-corrected first
    moment looks one step ahead, ``b1 * m_t / (1 - b1^(t+1)) + (1 - b1) * g_t / (1 - b1^t)``.
    ``torch.optim.NAdam`` differs: it also decays the momentum coefficient over time
    (``momentum_decay=4e-3``, ``mu_t = b1 * (1 - 0.5 * 0.96^(t * momentum_decay))``), so its
    trajectory is another one.

    ``caution=True`` wraps the moments, correction and normalization in
    :func:`~optim_chain.caution` (Cautious Adam, timm's and pytorch_optimizer's ``caution``).
    """
    return _finish(
        "adam",
        [
            *_cautious(
                _adam_core(
                    b1, b2, eps, eps_root, amsgrad, amsgrad_max_of, bias_correction, moment_dtype, nesterov
                ),
                caution,
            ),
            scale_by_learning_rate(learning_rate),
        ],
        skip_nonfinite,
    )


def adam_l2(
    learning_rate: LearningRate,
    weight_decay: WeightDecay,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    amsgrad: bool = False,
    mask: Any = None,
    *,
    anchor: Anchor = None,
    amsgrad_max_of: str = "raw",
    bias_correction: bool = True,
    nesterov: bool = False,
    caution: bool = False,
    moment_dtype: Any = None,
    skip_nonfinite: bool = False,
) -> Transform:
    """Adam with L2 regularization (``torch.optim.Adam(weight_decay=...)``).

    ``lambda * theta`` joins the gradient *before* the moments, so its effect on each weight is
    divided by that weight's ``sqrt(vhat) + eps``. ``weight_decay`` may be a schedule;
    ``anchor`` pulls toward the initial params or a given tree instead of zero; ``nesterov``
    and ``caution`` as in :func:`adam` (the cautious mask compares with the gradient plus its
    L2 term, which is what the moments see).
    """
    return _finish(
        "adam_l2",
        [
            add_l2_regularization(weight_decay, mask, anchor=anchor),
            *_cautious(
                _adam_core(
                    b1, b2, eps, eps_root, amsgrad, amsgrad_max_of, bias_correction, moment_dtype, nesterov
                ),
                caution,
            ),
            scale_by_learning_rate(learning_rate),
        ],
        skip_nonfinite,
    )


def adamw(
    learning_rate: LearningRate,
    weight_decay: WeightDecay = 1e-2,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    amsgrad: bool = False,
    mask: Any = None,
    decay_scaling: DecayScaling = "learning_rate",
    peak_learning_rate: float | None = None,
    *,
    cautious_weight_decay: bool = False,
    anchor: Anchor = None,
    amsgrad_max_of: str = "raw",
    bias_correction: bool = True,
    nesterov: bool = False,
    caution: bool = False,
    lazy_weight_decay: bool = False,
    moment_dtype: Any = None,
    skip_nonfinite: bool = False,
) -> Transform:
    """AdamW: Adam plus weight decay applied to the parameters *after* the adaptive step.

    Every weight shrinks by the same fraction ``eta_t * weight_decay`` per step, ``eta_t`` set
    by ``decay_scaling`` (see :func:`decay_multiplier`: ``"corrected"`` is AdamC). With the
    default ``"learning_rate"`` it matches ``torch.optim.AdamW`` and ``optax.adamw``;
    ``nesterov=True`` matches ``optax.nadamw`` (see :func:`adam` for torch's NAdam).
    ``weight_decay`` may be a schedule; ``cautious_weight_decay`` decays only where the step
    and the weight agree in sign; ``anchor`` pulls toward the initial params (``"init"``) or a
    given tree (see :func:`~optim_chain.decoupled_weight_decay`). ``caution=True`` masks Adam's
    direction, not the decay (:func:`~optim_chain.caution`; timm's ``AdamWLegacy(caution=True)``).
    ``lazy_weight_decay=True`` decays only the entries whose gradient this step is non-zero
    (embedding rows of tokens absent from the batch are left alone).
    """
    return _finish(
        "adamw",
        [
            *_cautious(
                _adam_core(
                    b1, b2, eps, eps_root, amsgrad, amsgrad_max_of, bias_correction, moment_dtype, nesterov
                ),
                caution,
            ),
            scale_by_learning_rate(learning_rate),
            decoupled_weight_decay(
                weight_decay,
                decay_multiplier(learning_rate, decay_scaling, peak_learning_rate),
                mask,
                cautious_weight_decay=cautious_weight_decay,
                anchor=anchor,
                lazy_weight_decay=lazy_weight_decay,
            ),
        ],
        skip_nonfinite,
        lazy_weight_decay,
    )
