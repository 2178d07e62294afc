"""Heavy-ball and Nesterov momentum."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optim_chain import _validation
from optim_chain._tree import zeros_like
from optim_chain.moments import _expect_step
from optim_chain.transform import Transform


class MomentumState(NamedTuple):
    """The momentum buffer ``buffer``."""

    buffer: Any


def add_momentum(momentum: float = 0.9, nesterov: bool = False) -> Transform:
    r"""Heavy-ball momentum, optionally with Nesterov's look-ahead.

    .. math::
       b_t = \mu\, b_{t-1} + u_t, \quad b_0 = 0, \qquad
       u_t \leftarrow b_t \;\;\text{or, with Nesterov,}\;\; u_t + \mu\, b_t

    The buffer starts at zero, so the first buffer equals the first update, as in
    ``torch.optim.SGD`` (no dampening) and ``optax.trace``. Placed after
    :func:`~optim_chain.normalize_by_second_moment` it gives RMSProp with momentum.

    Args:
      momentum: ``mu`` in [0, 1).
      nesterov: use Nesterov's variant; needs ``momentum > 0``.

    Reference: Sutskever et al., *On the importance of initialization and momentum in deep
    learning*, ICML 2013.
    """
    _validation.in_unit_interval("momentum", momentum)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
    if nesterov and isinstance(momentum, (int, float)) and momentum == 0:
        raise ValueError("nesterov=True needs momentum > 0, got momentum=0")

    def init(params: Any) -> MomentumState:
        return MomentumState(buffer=zeros_like(params))

    def update(updates: Any, state: MomentumState, params: Any = None, **extra: Any):
        del params, extra
        _expect_step("add_momentum", updates)

        def step(u: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
            mu = jnp.asarray(momentum, b.dtype)
            buffer = (mu * b + u.astype(b.dtype)).astype(b.dtype)
            out = (u + mu * buffer) if nesterov else buffer
            return out.astype(u.dtype), buffer

        pairs = jax.tree.map(step, updates, state.buffer)
        treedef = jax.tree.structure(updates)
        out, buffer = jax.tree.transpose(treedef, jax.tree.structure((0, 0)), pairs)
        return out, MomentumState(buffer=buffer)

    return Transform(
        init, update, name="add_momentum", hyperparams={"momentum": momentum, "nesterov": nesterov}
    )
