"""Construction-time argument checks shared by every transform.

Each check raises a one-line ``ValueError``/``TypeError`` that names the argument and the
offending value. Values that cannot be inspected in Python (tracers, schedules) are left for
the caller; concrete numbers and arrays are checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np


def _concrete_float(name: str, value: Any) -> float | None:
    """Returns ``value`` as a float when it is a concrete scalar, ``None`` when it is not knowable."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got the bool {value!r}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, (np.ndarray, jax.Array)):
        if np.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar, got an array of shape {np.shape(value)}")
        return float(value)
    raise TypeError(f"{name} must be a number, got {value!r} of type {type(value).__name__}")


def non_negative(name: str, value: Any) -> None:
    """Checks ``value >= 0`` and finite."""
    number = _concrete_float(name, value)
    if number is not None and not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def rate(name: str, value: Any) -> None:
    """Checks a learning rate or multiplier: a non-negative number or a schedule callable."""
    if callable(value):
        return
    non_negative(name, value)


def in_unit_interval(name: str, value: Any) -> None:
    """Checks ``0 <= value < 1`` (decay rates of moving averages)."""
    number = _concrete_float(name, value)
    if number is not None and not (0.0 <= number < 1.0):
        raise ValueError(f"{name} must lie in [0, 1), got {value!r}")


def in_closed_unit_interval(name: str, value: Any) -> None:
    """Checks ``0 <= value <= 1`` (momentum: ``1`` keeps every past step, as torch and optax allow)."""
    number = _concrete_float(name, value)
    if number is not None and not (0.0 <= number <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def one_of(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Checks ``value`` is one of ``choices``, listing them in the error."""
    choices = tuple(choices)
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {listed}; got {value!r}")


def schedule_or_number(value: Any) -> Callable[[jax.Array], Any] | None:
    """Returns ``value`` when it is a schedule, ``None`` when it is a constant."""
    return value if callable(value) else None


def is_number(value: Any) -> bool:
    """Whether ``value`` is a Python or NumPy scalar (known when the optimizer is built).

    Anything else that passes the checks above is an array, possibly traced, whose value may
    change at run time (``optax.inject_hyperparams`` passes hyperparameters that way), so
    Python code must not branch on it.
    """
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def float_dtype(name: str, value: Any) -> None:
    """Checks that ``value`` is ``None`` or names a floating-point dtype, real or complex.

    Which dtype each state leaf then gets is decided per parameter by ``_tree.state_dtype``.
    """
    if value is None:
        return
    message = f"{name} must be None or a floating-point dtype, got {value!r}"
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        raise TypeError(message) from None
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(message)
