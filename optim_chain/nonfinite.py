"""Skipping steps whose gradients or updates hold NaN or Inf.

One overflowing loss in a run of days should cost one step, not the run. :func:`skip_nonfinite`
wraps any transformation (a preset, a chain, an ``optax`` transformation) so that such a step
leaves the parameters and the optimizer state exactly as they were, and counts it::

    >>> import jax.numpy as jnp, optim_chain as oc
    >>> opt = oc.adamw(1e-3, weight_decay=0.1, skip_nonfinite=True)   # or oc.skip_nonfinite(...)
    >>> params = {"w": jnp.ones(3)}
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": jnp.array([1.0, jnp.nan, 0.0])}, state, params)
    >>> updates["w"].tolist(), int(state.skipped)
    ([0.0, 0.0, 0.0], 1)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optim_chain._tree import increment
from optim_chain.transform import Transform


class SkipNonfiniteState(NamedTuple):
    """State of :func:`skip_nonfinite`.

    Attributes:
      inner_state: the wrapped transformation's state, as of the last applied step.
      skipped: how many steps were skipped in total (int32, saturating).
      consecutive: how many steps in a row were skipped up to now; 0 after an applied step
        (int32, saturating). A value that keeps growing means training has stalled: stop and
        look, the wrapper cannot tell a transient overflow from a broken run.
    """

    inner_state: Any
    skipped: jax.Array
    consecutive: jax.Array


def _all_finite(tree: Any) -> jax.Array:
    """A scalar bool: whether every floating-point entry of ``tree`` is finite (True if none)."""
    checks = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    ]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def skip_nonfinite(inner: optax.GradientTransformation) -> Transform:
    r"""Applies ``inner`` only on steps where everything it sees and produces is finite.

    A step is taken when the incoming gradients and the updates ``inner`` computes from them
    are all finite; otherwise the returned updates are zeros (so ``optax.apply_updates`` leaves
    the parameters unchanged), ``inner``'s state is kept as it was (moments, step counters and
    schedules do not advance) and the step is counted in ``skipped`` and ``consecutive``:

    .. math::
       (u_t, s_t) = \begin{cases} \text{inner}(g_t, s_{t-1}) & g_t \text{ and } u_t \text{ finite} \\
       (0, s_{t-1}) & \text{otherwise} \end{cases}

    The choice is a ``jnp.where`` select over the trees, not Python control flow, so it
    compiles once and works under ``jit``, ``vmap`` and ``pmap``. Checking the updates as well
    as the gradients also catches faults that arise inside the chain from finite gradients,
    for instance a NaN learning rate set through ``optax.inject_hyperparams``.

    Differences from ``optax.apply_if_finite``: that wrapper checks only the gradients, and
    after ``max_consecutive_errors`` bad steps in a row it applies the non-finite update anyway
    (so that the failure shows). This one never applies a non-finite update, leaves the decision
    to stop to the caller (``consecutive`` in the state), also checks the outgoing updates,
    returns a :class:`~optim_chain.Transform` that prints as a wrapper around its chain, and
    saturates its counters instead of wrapping around.

    Args:
      inner: the transformation to protect, usually a whole optimizer.

    Returns:
      A :class:`~optim_chain.Transform` named ``skip_nonfinite`` with ``parts=(inner,)`` and
      state :class:`SkipNonfiniteState`.

    Example::

      >>> import optim_chain as oc
      >>> opt = oc.skip_nonfinite(oc.adam(1e-3))   # for a preset: oc.adam(1e-3, skip_nonfinite=True)
      >>> opt.name, opt.parts[0].name
      ('skip_nonfinite', 'adam')
    """
    if not (hasattr(inner, "init") and hasattr(inner, "update")):
        raise TypeError(f"skip_nonfinite needs a gradient transformation with init and update, got {inner!r}")
    inner_update = optax.with_extra_args_support(inner).update

    def init(params: Any) -> SkipNonfiniteState:
        zero = jnp.zeros([], jnp.int32)
        return SkipNonfiniteState(inner_state=inner.init(params), skipped=zero, consecutive=zero)

    def update(updates: Any, state: SkipNonfiniteState, params: Any = None, **extra: Any):
        new_updates, new_inner = inner_update(updates, state.inner_state, params, **extra)
        ok = jnp.logical_and(_all_finite(updates), _all_finite(new_updates))
        out = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
        inner_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_inner, state.inner_state)
        skipped = jnp.where(ok, state.skipped, increment(state.skipped))
        consecutive = jnp.where(ok, jnp.zeros([], jnp.int32), increment(state.consecutive))
        return out, SkipNonfiniteState(inner_state=inner_state, skipped=skipped, consecutive=consecutive)

    return Transform(init, update, name="skip_nonfinite", parts=(inner,))
