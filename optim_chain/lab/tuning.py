"""Tuning that cannot pick a lucky cell: which runs trained, which cells may be chosen, and the
fine stage of a two-stage grid.

A *cell* is one learning rate and one weight decay, trained once per tuning draw (each draw its
own data set and initialisation). The rule, in three parts:

1. **A run diverged** when a loss it reports is not finite, when the mean training loss of an
   evaluation interval exceeds twice ``log(num_classes)`` (twice a uniform guess's loss: a
   blow-up), or when that of a later interval exceeds the first interval's by more than 0.1 (a
   spike or a collapse after learning, which the run may or may not recover from), or when its
   final accuracy is within 5 points of a uniform guess's (a dead network). A run that learns
   slowly is not diverged, only bad.
2. **A cell is stable** when none of its runs diverged.
3. **A cell may be chosen** when it is stable; when it is not past the edge of stability of its
   decay (the smallest learning rate, above a stable one, at which a cell of that decay
   diverged: a stable cell past it is a fluke of the draws, while cells that diverged below every
   stable one only learned too slowly); and when no unstable cell lies within half a decade above
   its learning rate, at its decay or at a decay within half a decade of it (a margin: a cell
   right at the edge fails on some of the draws that test it).

Among the cells that may be chosen, the tuned cell has the lowest mean validation error.

The grid has two stages: a coarse one the config gives (decades, say), then a fine one of the log
midpoints between the best coarse value and its neighbours on each axis (half-decades around the
optimum), chosen again over both stages together (:func:`refine`).

Example::

    >>> import numpy as np
    >>> from optim_chain.lab import tuning
    >>> cells = [(0.01, 0.0), (0.1, 0.0), (0.3, 0.0)]
    >>> stable = np.array([True, True, False])
    >>> tuning.may_choose(cells, stable).tolist()   # 0.1 sits half a decade below a divergence
    [True, False, False]
    >>> tuning.refine([1e-3, 1e-2, 1e-1], 1e-2)
    [0.0031622776601683794, 0.01, 0.0316227766016838]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Cell = tuple[float, float]

#: A run blew up when an interval's mean training loss exceeds this many times a uniform guess's.
BLOW_UP = 2.0
#: A run collapsed when a later interval's mean training loss exceeds the first's by this much.
RISE = 0.1
#: A cell needs every learning rate up to this factor above it to be stable (half a decade).
MARGIN = math.sqrt(10.0)
#: A run died when its final accuracy is at most a uniform guess's plus this much.
DEAD = 0.05

#: The rule in one sentence, as results state it.
RULE = (
    "the lowest mean validation error among cells where no tuning run diverged (a non-finite loss, an "
    "interval's training loss above twice a uniform guess's, a later interval's 0.1 above the first's, "
    "or a final accuracy within 5 points of a uniform guess's), that are not past the edge of "
    "stability (a smaller learning rate at the same decay, above a stable one, diverged), and with no "
    "diverged cell up to half a decade above their learning rate, at their decay or one within half "
    "a decade."
)


def diverged(
    train_loss: np.ndarray, final_loss: np.ndarray, final_accuracy: np.ndarray, num_classes: int
) -> np.ndarray:
    """``bool[runs]``: which runs diverged (rule 1 of the module docstring).

    Args:
      train_loss: ``float[runs, evaluations]``, the mean training loss of each interval.
      final_loss: ``float[runs]``, the final evaluation loss.
      final_accuracy: ``float[runs]``, the final evaluation accuracy.
      num_classes: the number of classes: ``log(num_classes)`` is a uniform guess's loss,
        ``1 / num_classes`` its accuracy.
    """
    train_loss = np.asarray(train_loss, np.float64)
    final_loss = np.asarray(final_loss, np.float64)
    not_finite = ~np.all(np.isfinite(train_loss), axis=-1) | ~np.isfinite(final_loss)
    with np.errstate(invalid="ignore"):
        blew_up = np.any(train_loss > BLOW_UP * math.log(num_classes), axis=-1)
        rose = np.any(train_loss[:, 1:] > train_loss[:, :1] + RISE, axis=-1)
        dead = np.asarray(final_accuracy, np.float64) <= 1.0 / num_classes + DEAD
    return not_finite | blew_up | rose | dead


def may_choose(cells: Sequence[Cell], stable: np.ndarray) -> np.ndarray:
    """``bool[cells]``: which cells the tuning may pick (rule 3 of the module docstring).

    Args:
      cells: ``(learning_rate, weight_decay)`` of each cell, any order, both stages together.
      stable: ``bool[cells]``, whether every run of the cell trained.
    """
    stable = np.asarray(stable, bool)
    allowed = stable.copy()
    edges = _edges(cells, stable)
    for index, (lr, wd) in enumerate(cells):
        if not stable[index]:
            continue
        if lr > edges[wd]:
            allowed[index] = False  # past the edge of stability
        for other, (other_lr, other_wd) in enumerate(cells):
            if not stable[other] and _near(other_wd, wd) and lr < other_lr <= lr * MARGIN * (1 + 1e-9):
                allowed[index] = False  # at the edge: no margin
    return allowed


def _edges(cells: Sequence[Cell], stable: np.ndarray) -> dict[float, float]:
    """The edge of stability of each decay: the smallest learning rate, above a stable one, at
    which a cell diverged (cells that diverged below every stable one are too slow, not past an
    edge); infinity where there is none."""
    edges: dict[float, float] = {}
    for wd in {wd for _, wd in cells}:
        row = sorted((lr, bool(stable[k])) for k, (lr, other) in enumerate(cells) if other == wd)
        first = next((i for i, (_, ok) in enumerate(row) if ok), len(row))
        edges[wd] = next((lr for lr, ok in row[first:] if not ok), math.inf)
    return edges


def _near(a: float, b: float) -> bool:
    """Whether two decays are the same or at most half a decade apart."""
    if a == b:
        return True
    if a <= 0 or b <= 0:
        return False
    return abs(math.log10(a / b)) <= 0.5 + 1e-9


def choose(scores: np.ndarray, allowed: np.ndarray) -> int | None:
    """The index of the lowest score among the allowed cells; ``None`` when none is allowed."""
    scores = np.where(np.asarray(allowed, bool) & np.isfinite(scores), scores, np.inf)
    if not np.isfinite(scores).any():
        return None
    return int(np.argmin(scores))


def refine(values: Sequence[float], best: float) -> list[float]:
    """The fine stage's values on one axis: ``best`` and the log midpoints to its neighbours.

    With decades on the coarse axis these are half-decades. At an end of the axis the step to
    the one neighbour is used on both sides, so the fine stage looks half a step beyond the
    coarse grid. An axis of one value, or a best value of 0, is not refined.

    Args:
      values: the coarse axis (any order, positive or 0).
      best: the coarse axis' best value.
    """
    ordered = sorted(v for v in values if v > 0)
    if best <= 0 or len(ordered) < 2:
        return [best]
    k = ordered.index(best)
    lower = ordered[k] / ordered[k - 1] if k > 0 else ordered[1] / ordered[0]
    upper = ordered[k + 1] / ordered[k] if k < len(ordered) - 1 else lower
    return [best / math.sqrt(lower), best, best * math.sqrt(upper)]


def fine_cells(learning_rates: Sequence[float], weight_decays: Sequence[float], best: Cell) -> list[Cell]:
    """The fine stage's cells around the coarse grid's ``best`` (the best cell itself included)."""
    return [(lr, wd) for lr in refine(learning_rates, best[0]) for wd in refine(weight_decays, best[1])]
