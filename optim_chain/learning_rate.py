"""Scaling by the (negated) learning rate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optim_chain import _validation
from optim_chain._tree import cast, check_float_params, check_matching, increment, per_dtype, scalar_dtype
from optim_chain.moments import _expect_step
from optim_chain.transform import Transform


class LearningRateState(NamedTuple):
    """Step counter for the schedule, ``count`` (starts at 0)."""

    # optax names its step counters count; the field shadows tuple.count on purpose
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]


def scale_by_learning_rate(learning_rate: float | Callable[[jax.Array], Any]) -> Transform:
    r"""Multiplies updates by ``-lr_t``, turning a descent direction into a parameter change.

    .. math:: u_t \leftarrow -\text{lr}(t)\, u_t

    Args:
      learning_rate: a constant ``>= 0`` or an optax schedule ``step -> lr`` (the first update
        uses ``lr(0)``, as in optax). With a schedule the state is a :class:`LearningRateState`
        counting steps; with a constant it is ``optax.EmptyState()``. ``updates=None`` passes
        through as ``None`` (the schedule still counts the step).

    Example::

      >>> import optax, optim_chain as oc
      >>> oc.scale_by_learning_rate(optax.cosine_decay_schedule(1e-3, decay_steps=1000))
      scale_by_learning_rate(learning_rate=schedule)
    """
    _validation.rate("learning_rate", learning_rate)

    def init(params: Any) -> LearningRateState | optax.EmptyState:
        check_float_params(params, "scale_by_learning_rate")
        # Only a schedule reads the counter; a constant rate keeps no state (as optax does).
        return (
            LearningRateState(count=jnp.zeros([], jnp.int32))
            if callable(learning_rate)
            else optax.EmptyState()
        )

    def update(updates: Any, state: LearningRateState, params: Any = None, **extra: Any):
        del extra
        _expect_step("scale_by_learning_rate", updates)
        if params is not None and updates is not None:
            check_matching(updates, params)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

        negative_lr = per_dtype(lambda dtype: -jnp.asarray(lr, dtype))

        def scale(u: jax.Array) -> jax.Array:
            return cast(negative_lr(scalar_dtype(u.dtype)) * u, u.dtype)

        if not callable(learning_rate):
            return jax.tree.map(scale, updates), state
        return jax.tree.map(scale, updates), LearningRateState(count=increment(state.count))

    return Transform(
        init, update, name="scale_by_learning_rate", hyperparams={"learning_rate": learning_rate}
    )
