"""Heavy-ball and Nesterov momentum."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optim_chain import _validation
from optim_chain._tree import (
    cast,
    check_float_params,
    check_matching,
    compute_dtype,
    emitted_dtype,
    map_pair,
    scalar_dtype,
    zeros_like,
)
from optim_chain.moments import _expect_step
from optim_chain.transform import Transform


class MomentumState(NamedTuple):
    """The momentum buffer, named ``trace`` as in ``optax.TraceState`` (so
    ``optax.tree_utils.tree_get(state, "trace")`` finds it)."""

    trace: Any


def add_momentum(momentum: float = 0.9, nesterov: bool = False, moment_dtype: Any = None) -> Transform:
    r"""Heavy-ball momentum, optionally with Nesterov's look-ahead.

    .. math::
       b_t = \mu\, b_{t-1} + u_t, \quad b_0 = 0, \qquad
       u_t \leftarrow b_t \;\;\text{or, with Nesterov,}\;\; u_t + \mu\, b_t

    The buffer starts at zero, so the first buffer equals the first update, as in
    ``torch.optim.SGD`` (no dampening) and ``optax.trace``. Placed after
    :func:`~optim_chain.normalize_by_second_moment` it gives RMSProp with momentum. The buffer
    has the parameters' dtype; the arithmetic runs in at least float32.

    Args:
      momentum: ``mu`` in [0, 1]. ``mu = 1`` sums every past update without forgetting any,
        which ``torch.optim.SGD`` and ``optax.trace`` also accept.
      nesterov: use Nesterov's variant; needs ``momentum > 0``.

    Reference: Sutskever et al., *On the importance of initialization and momentum in deep
    learning*, ICML 2013.
    """
    _validation.in_closed_unit_interval("momentum", momentum)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
    if nesterov and isinstance(momentum, (int, float)) and momentum == 0:
        raise ValueError("nesterov=True needs momentum > 0, got momentum=0")
    _validation.float_dtype("moment_dtype", moment_dtype)

    def init(params: Any) -> MomentumState:
        check_float_params(params, "add_momentum")
        return MomentumState(trace=zeros_like(params, moment_dtype))

    def update(updates: Any, state: MomentumState, params: Any = None, **extra: Any):
        del params, extra
        _expect_step("add_momentum", updates)
        check_matching(updates, state.trace, "updates", "the params given to init")

        def step(u: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
            emitted = emitted_dtype(b.dtype, u.dtype)
            dtype = compute_dtype(emitted)
            mu = jnp.asarray(momentum, scalar_dtype(dtype))
            buffer = mu * cast(b, dtype) + cast(u, dtype)
            out = (cast(u, dtype) + mu * buffer) if nesterov else buffer
            return cast(out, emitted), cast(buffer, b.dtype)

        out, buffer = map_pair(step, updates, state.trace)
        return out, MomentumState(trace=buffer)

    return Transform(
        init,
        update,
        name="add_momentum",
        hyperparams={"momentum": momentum, "nesterov": nesterov, "moment_dtype": moment_dtype},
    )
