"""Bias correction of moment estimates that start at zero."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optim_chain import _validation
from optim_chain._tree import cast, check_float_params, compute_dtype, increment, per_dtype, scalar_dtype
from optim_chain.moments import _expect_moments
from optim_chain.transform import Transform


class BiasCorrectionState(NamedTuple):
    """Number of steps taken, ``count`` (int32, saturating)."""

    # optax names its step counters count; the field shadows tuple.count on purpose
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]


def _factor(decay: Any, step: jax.Array, dtype: Any) -> jax.Array:
    """``1 - decay**step`` in ``dtype``, accurate to a few ulps at every step.

    ``decay`` is rounded to ``dtype`` first, as the moving average rounds it, so a constant
    gradient comes back exactly. The factor is evaluated as ``-expm1(step * log(decay))``:
    ``1 - decay**step`` loses most digits to cancellation when ``decay**step`` is close to 1
    (``decay = 0.999999`` at step 10 leaves 3 correct digits in float32).
    """
    log_decay = jnp.log1p(jnp.asarray(decay, dtype) - 1)
    return -jnp.expm1(step.astype(dtype) * log_decay)


def _correct(moment: jax.Array, factor: Any) -> jax.Array:
    """``moment / (1 - decay**step)``; ``factor(dtype)`` gives the divisor in at least float32."""
    dtype = compute_dtype(moment.dtype)
    return cast(cast(moment, dtype) / factor(scalar_dtype(dtype)), moment.dtype)


def correct_bias(b1: float = 0.9, b2: float = 0.999, nesterov: bool = False) -> Transform:
    r"""Divides the moments by ``1 - beta^t`` so that they are unbiased from the first step.

    .. math::
       \hat m_t = \frac{m_t}{1-\beta_1^t}, \qquad \hat v_t = \frac{v_t}{1-\beta_2^t}

    With ``nesterov=True`` the first moment looks one step ahead (NAdam as optax writes it,
    Dozat 2016), from the gradient that :func:`~optim_chain.estimate_moments` passes along:

    .. math::
       \hat m_t = \beta_1 \frac{m_t}{1-\beta_1^{t+1}} + (1-\beta_1) \frac{g_t}{1-\beta_1^t}

    A separate transform because it is a per-step scalar: leaving it out of a chain gives Adam
    without bias correction, and moving :func:`~optim_chain.max_second_moment` across it
    switches between the two AMSGrad conventions. The step ``t`` counts from 1 and saturates at
    the largest int32 (it never wraps to a negative count), where ``beta^t`` has long underflowed
    to zero: the factor is then exactly 1 and stays finite for as long as training runs. The
    factor is computed in at least float32 as ``-expm1(t log beta)``, accurate to a few units in
    the last place at every ``t`` (the plain ``1 - beta^t`` cancels when ``beta^t`` is near 1).

    Args:
      b1: the decay used for the first moment, in [0, 1).
      b2: the decay used for the second moment, in [0, 1).
      nesterov: Nesterov's look-ahead first moment (needs :func:`~optim_chain.estimate_moments`
        before it, which passes the gradient on).

    References: Kingma & Ba, *Adam*, ICLR 2015, Section 3; Dozat, *Incorporating Nesterov
    Momentum into Adam*, ICLR 2016 workshop.
    """
    _validation.in_unit_interval("b1", b1)
    _validation.in_unit_interval("b2", b2)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {nesterov!r}")

    def init(params: Any) -> BiasCorrectionState:
        check_float_params(params, "correct_bias")
        return BiasCorrectionState(count=jnp.zeros([], jnp.int32))

    def update(updates: Any, state: BiasCorrectionState, params: Any = None, **extra: Any):
        del params, extra
        moments = _expect_moments("correct_bias", updates)
        count = increment(state.count)
        first_factor = per_dtype(lambda dtype: _factor(b1, count, dtype))
        second_factor = per_dtype(lambda dtype: _factor(b2, count, dtype))
        second = jax.tree.map(lambda v: _correct(v, second_factor), moments.second)
        if not nesterov:
            first = jax.tree.map(lambda m: _correct(m, first_factor), moments.first)
            return moments._replace(first=first, second=second), BiasCorrectionState(count=count)
        if moments.gradient is None:
            raise TypeError(
                "correct_bias(nesterov=True) needs the gradient passed along by estimate_moments; "
                "place it right after estimate_moments (or max_second_moment)"
            )
        ahead_factor = per_dtype(lambda dtype: _factor(b1, increment(count), dtype))

        def look_ahead(m: jax.Array, g: jax.Array) -> jax.Array:
            dtype = compute_dtype(jnp.promote_types(m.dtype, g.dtype))
            real = scalar_dtype(dtype)
            d = jnp.asarray(b1, real)
            ahead = cast(m, dtype) / ahead_factor(real)
            current = cast(g, dtype) / first_factor(real)
            return cast(d * ahead + (1 - d) * current, m.dtype)

        first = jax.tree.map(look_ahead, moments.first, moments.gradient)
        return moments._replace(first=first, second=second), BiasCorrectionState(count=count)

    hyperparams = {"b1": b1, "b2": b2, **({"nesterov": True} if nesterov else {})}
    return Transform(init, update, name="correct_bias", hyperparams=hyperparams)
