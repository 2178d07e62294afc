"""Measurements of trained optimizers: which weights decay, by how much, and how separable a sweep is.

* :func:`decay_parts` / :func:`decayed_parameters`: the weight-decay transforms of a chain and
  the parameters they act on.
* :func:`effective_decay`: the fraction of each decayed weight removed per step. For a coupled
  (L2) adaptive chain it is ``lr * lambda / (sqrt(vhat) + eps)``, one value per weight, read
  from the second moment in the optimizer state; for decoupled decay it is the single value
  ``eta * lambda``.
* :func:`separability`: how far the best weight decay moves as the learning rate changes in a
  learning-rate x weight-decay grid (Loshchilov & Hutter, Figure 2).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np

from optim_chain import masks
from optim_chain.masks import resolve_mask
from optim_chain.transform import Transform

DECAY_TRANSFORMS = ("add_l2_regularization", "decoupled_weight_decay")
SECOND_MOMENT_TRANSFORMS = ("estimate_moments", "estimate_second_moment", "accumulate_second_moment")


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def decay_parts(transform: Transform) -> list[tuple[int, Transform]]:
    """The ``(position, part)`` of every weight-decay transform among ``transform.parts``."""
    parts = transform.parts or (transform,)
    return [(i, p) for i, p in enumerate(parts) if getattr(p, "name", "") in DECAY_TRANSFORMS]


def decayed_flags(transform: Transform, params: Any) -> list[bool]:
    """One flag per leaf of ``params``: does some weight-decay part with ``lambda != 0`` act on it?"""
    flags = [False] * len(jax.tree.leaves(params))
    for _, part in decay_parts(transform):
        if _number(part.hyperparams.get("weight_decay")) == 0.0:
            continue
        part_flags = resolve_mask(part.hyperparams.get("mask"), params)
        flags = [a or b for a, b in zip(flags, part_flags)]
    return flags


def decayed_parameters(transform: Transform, params: Any) -> tuple[int, int]:
    """``(decayed, total)`` numbers of scalar parameters."""
    leaves = jax.tree.leaves(params)
    flags = decayed_flags(transform, params)
    decayed = sum(int(np.size(x)) for x, f in zip(leaves, flags) if f)
    return decayed, sum(int(np.size(x)) for x in leaves)


def weight_norm(params: Any, mask: Any = masks.DEFAULT_DECAY) -> float:
    """The L2 norm of the leaves ``mask`` selects (by default the weights a decay mask would decay)."""
    flags = resolve_mask(mask, params)
    total = sum(
        float(np.sum(np.square(np.asarray(x, np.float64))))
        for x, f in zip(jax.tree.leaves(params), flags)
        if f
    )
    return math.sqrt(total)


class EffectiveDecay(NamedTuple):
    """Per-step decay of an optimizer's decayed weights.

    Attributes:
      kind: ``"coupled"`` (L2 through an adaptive denominator), ``"decoupled"`` or ``"uniform"``
        (L2 without an adaptive denominator, as in SGD+L2: ``lr * lambda`` for every weight).
      values: ``lr * lambda / (sqrt(vhat) + eps)`` for every decayed weight (coupled), or a
        one-element array with the single value.
    """

    kind: str
    values: np.ndarray


def _at_step(value: Any, step: int) -> float:
    return float(value(step)) if callable(value) else float(value)


def _last_step(state: Any) -> int:
    """The index of the last step a counter state has taken; 0 for a stateless (constant) part."""
    if "count" not in getattr(state, "_fields", ()):
        return 0
    return max(int(state.count) - 1, 0)


def effective_decay(
    transform: Transform, opt_state: Any, params: Any, step: int | None = None
) -> EffectiveDecay | None:
    """The per-step decay that ``transform`` applies, read from its state.

    Works on flat chains such as the presets (``opt_state[i]`` is the state of ``parts[i]``).
    For L2 placed before an adaptive normalisation the decay of weight ``i`` is
    ``lr * lambda / (sqrt(vhat_i) + eps)`` with ``vhat = v / (1 - b2^t)`` when the chain corrects
    the bias; for decoupled decay it is ``eta * lambda``. Returns ``None`` when the chain has no
    weight decay.

    Args:
      transform: the optimizer (a chain with ``parts``).
      opt_state: its state after training (one run, no leading run axis).
      params: the parameters the state belongs to.
      step: the step at which learning-rate and weight-decay schedules are read (``vhat`` is
        always the state's); ``None``: the state's last step. Under a schedule that anneals to
        zero the last step decays nothing, and the schedule's peak (step 0 for a cosine) is the
        step that compares conventions.
    """

    def at(state: Any) -> int:
        return _last_step(state) if step is None else step

    parts = list(transform.parts or (transform,))
    names = [getattr(p, "name", "") for p in parts]
    found = decay_parts(transform)
    if not found:
        return None
    position, part = found[0]
    weight_decay = _at_step(part.hyperparams["weight_decay"], at(opt_state[position]))
    flags = resolve_mask(part.hyperparams.get("mask"), params)
    if part.name == "decoupled_weight_decay":
        eta = _at_step(part.hyperparams["multiplier"], at(opt_state[position]))
        return EffectiveDecay("decoupled", np.array([eta * weight_decay]))
    lr_index = names.index("scale_by_learning_rate")
    lr = _at_step(parts[lr_index].hyperparams["learning_rate"], at(opt_state[lr_index]))
    moment_index = next((i for i, n in enumerate(names) if n in SECOND_MOMENT_TRANSFORMS), None)
    if moment_index is None or moment_index < position or "normalize_by_second_moment" not in names:
        return EffectiveDecay("uniform", np.array([lr * weight_decay]))
    nu = jax.tree.leaves(opt_state[moment_index].nu)
    if "correct_bias" in names:
        corrector = parts[names.index("correct_bias")]
        count = int(opt_state[names.index("correct_bias")].count)
        nu = [v / (1 - float(corrector.hyperparams["b2"]) ** count) for v in nu]
    eps = float(parts[names.index("normalize_by_second_moment")].hyperparams["eps"])
    values = [
        lr * weight_decay / (np.sqrt(np.asarray(v, np.float64)) + eps).ravel() for v, f in zip(nu, flags) if f
    ]
    return EffectiveDecay("coupled", np.concatenate(values) if values else np.zeros(0))


class Separability(NamedTuple):
    """How a learning-rate x weight-decay grid couples the two hyperparameters.

    Attributes:
      best_weight_decay: for each learning rate, the weight decay with the lowest metric.
      rows_used: which learning rates enter the fit: those whose best cell is within a factor
        ``tolerance`` of the grid's best (rows that did not train well say little about decay).
      slope: least-squares slope of ``log10(best wd)`` against ``log10(lr)`` over those rows.
        About ``-1`` means the good region is a diagonal (``lr * lambda`` constant: coupled);
        about ``0`` means the best decay does not move (separable).
      spread_decades: ``max - min`` of ``log10(best wd)`` over those rows.
      interaction: the share of the variance of the (clipped) metric over the whole grid that
        an additive model ``a(lr) + b(wd)`` cannot explain: 0 for a perfectly separable surface.
    """

    best_weight_decay: np.ndarray
    rows_used: np.ndarray
    slope: float
    spread_decades: float
    interaction: float


def separability(
    metric: np.ndarray,
    learning_rates: np.ndarray,
    weight_decays: np.ndarray,
    worst: float,
    tolerance: float = 2.0,
    trained: np.ndarray | None = None,
) -> Separability:
    """Separability numbers of a grid ``metric[lr_index, wd_index]`` where lower is better.

    Args:
      metric: the grid (e.g. final test loss, mean over seeds); NaN marks diverged runs.
      learning_rates, weight_decays: the axes (positive).
      worst: the value that diverged or worse-than-chance cells are clipped to (e.g. the loss of
        a uniform prediction, ``log(num_classes)``).
      tolerance: a row enters the slope fit when its best cell is at most ``tolerance`` times
        the grid's best.
      trained: ``bool[lr, wd]``, the cells whose runs all trained; when given, only they enter
        the numbers: the best decay of a learning rate is its best trained cell, and the
        additive model ``a(lr) + b(wd)`` is fitted by least squares to the trained cells alone,
        so that cells that diverged (all alike at ``worst``) cannot make up the interaction.
    """
    grid = np.asarray(metric, np.float64)
    grid = np.where(np.isfinite(grid), np.minimum(grid, worst), worst)
    used_cells = np.ones(grid.shape, bool) if trained is None else np.asarray(trained, bool)
    masked = np.where(used_cells, grid, np.inf)
    best_index = np.argmin(masked, axis=1)
    best_wd = np.asarray(weight_decays, np.float64)[best_index]
    floor = masked.min() if np.isfinite(masked).any() else np.inf
    rows = np.isfinite(masked.min(axis=1)) & (masked.min(axis=1) <= tolerance * floor)
    log_lr = np.log10(np.asarray(learning_rates, np.float64))[rows]
    log_wd = np.log10(np.maximum(best_wd[rows], 1e-30))
    slope = float(np.polyfit(log_lr, log_wd, 1)[0]) if rows.sum() >= 2 else float("nan")
    spread = float(log_wd.max() - log_wd.min()) if rows.any() else float("nan")
    return Separability(best_wd, rows, slope, spread, _interaction(grid, used_cells))


def _interaction(grid: np.ndarray, cells: np.ndarray) -> float:
    """The share of the variance of ``grid[cells]`` that a least-squares ``a(lr) + b(wd)`` leaves."""
    i, j = np.nonzero(cells)
    z = grid[i, j]
    total = float(np.sum((z - z.mean()) ** 2)) if z.size else 0.0
    if total <= 0:
        return 0.0
    n_lr, n_wd = grid.shape
    design = np.zeros((z.size, n_lr + n_wd))
    design[np.arange(z.size), i] = 1.0
    design[np.arange(z.size), n_lr + j] = 1.0
    fitted = design @ np.linalg.lstsq(design, z, rcond=None)[0]
    return float(np.sum((z - fitted) ** 2) / total)
