"""optax's alias names, rebuilt from optim_chain's presets (test-only).

Each function here takes the arguments of the optax 0.2.8 alias of the same name, with optax's
defaults, and returns the optim_chain preset configured to compute what that alias computes.
:func:`install` puts them in place of optax's own (in ``optax`` and in ``optax._src.alias``,
where optax's tests look them up), so optax's test suite runs against our presets.

Arguments of optax that have no counterpart in a preset raise ``NotImplementedError`` naming the
argument: a test that needs one fails, and is counted as failed.

Every optimizer built here is recorded (:data:`EXERCISED`) when it is built, initialized or
updated, which is how the suite's runner knows which tests exercise the presets.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import optax

import optim_chain as oc

#: The aliases rebuilt from presets, by optax's name.
REBUILT = ("adagrad", "adam", "adamw", "amsgrad", "nadam", "nadamw", "rmsprop", "sgd")


class Exercised:
    """Counts calls into the rebuilt aliases and into the optimizers they built."""

    def __init__(self) -> None:
        self.calls = 0

    def wrap(self, tx: oc.Transform) -> oc.Transform:
        def init(params: Any) -> Any:
            self.calls += 1
            return tx.init(params)

        def update(updates: Any, state: Any, params: Any = None, **extra: Any) -> Any:
            self.calls += 1
            return tx.update(updates, state, params, **extra)

        return oc.Transform(init, update, name=tx.name, hyperparams=tx.hyperparams, parts=tx.parts)


EXERCISED = Exercised()


def _unsupported(alias: str, name: str, value: Any) -> NotImplementedError:
    return NotImplementedError(f"{alias}: optax's argument {name}={value!r} has no counterpart in the preset")


def _built(tx: oc.Transform) -> oc.Transform:
    return EXERCISED.wrap(tx)


def _counted(fn: Callable[..., oc.Transform]) -> Callable[..., oc.Transform]:
    """``fn``, counting each call (before the preset is built, so a refused argument counts too)."""

    @functools.wraps(fn)
    def alias(*args: Any, **kwargs: Any) -> oc.Transform:
        EXERCISED.calls += 1
        return fn(*args, **kwargs)

    return alias


def adam(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = False,
) -> oc.Transform:
    return _built(oc.adam(learning_rate, b1, b2, eps, eps_root, moment_dtype=mu_dtype, nesterov=nesterov))


def nadam(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any = None,
    *,
    nesterov: bool = True,
) -> oc.Transform:
    return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)


def adamw(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any = None,
    weight_decay: Any = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = False,
) -> oc.Transform:
    return _built(
        oc.adamw(
            learning_rate,
            weight_decay,
            b1,
            b2,
            eps,
            eps_root,
            mask=mask,
            moment_dtype=mu_dtype,
            nesterov=nesterov,
        )
    )


def nadamw(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any = None,
    weight_decay: Any = 1e-4,
    mask: Any = None,
    *,
    nesterov: bool = True,
) -> oc.Transform:
    return adamw(learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask, nesterov=nesterov)


def amsgrad(
    learning_rate: Any,
    b1: Any = 0.9,
    b2: Any = 0.999,
    eps: Any = 1e-8,
    eps_root: Any = 0.0,
    mu_dtype: Any = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
) -> oc.Transform:
    # optax keeps the running maximum of the bias-corrected second moment
    if bias_correction_mu != bias_correction_nu:
        raise _unsupported("amsgrad", "bias_correction_mu", bias_correction_mu)
    return _built(
        oc.adam(
            learning_rate,
            b1,
            b2,
            eps,
            eps_root,
            amsgrad=True,
            amsgrad_max_of="corrected",
            bias_correction=bias_correction_mu,
            moment_dtype=mu_dtype,
        )
    )


def sgd(
    learning_rate: Any,
    momentum: Any = None,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
) -> oc.Transform:
    return _built(
        oc.sgd(learning_rate, 0.0 if momentum is None else momentum, nesterov, moment_dtype=accumulator_dtype)
    )


def rmsprop(
    learning_rate: Any,
    decay: Any = 0.9,
    eps: Any = 1e-8,
    initial_scale: Any = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: Any = None,
    nesterov: bool = False,
    bias_correction: bool = False,
) -> oc.Transform:
    if nesterov:
        raise _unsupported("rmsprop", "nesterov", nesterov)
    if bias_correction:
        raise _unsupported("rmsprop", "bias_correction", bias_correction)
    # optax's default puts eps inside the root: 1 / sqrt(v + eps)
    eps_outside, eps_inside = (0.0, eps) if eps_in_sqrt else (eps, 0.0)
    return _built(
        oc.rmsprop(
            learning_rate,
            decay,
            eps_outside,
            centered,
            0.0 if momentum is None else momentum,
            eps_inside,
            initial_scale=initial_scale,
        )
    )


def adagrad(learning_rate: Any, initial_accumulator_value: Any = 0.1, eps: Any = 1e-7) -> oc.Transform:
    # optax: g / sqrt(sum + eps), the eps inside the root
    return _built(oc.adagrad(learning_rate, initial_accumulator_value, eps=0.0, eps_root=eps))


ALIASES: dict[str, Callable[..., oc.Transform]] = {name: _counted(globals()[name]) for name in REBUILT}


def install() -> None:
    """Replaces optax's rebuilt aliases by the functions above, where optax's tests look them up."""
    from optax._src import alias

    for name, fn in ALIASES.items():
        setattr(alias, name, fn)
        setattr(optax, name, fn)
