"""Dividing by the root of the second moment: the adaptive part of an adaptive optimizer."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from optim_chain import _validation
from optim_chain._complex import componentwise
from optim_chain._tree import cast, compute_dtype, per_dtype, scalar_dtype
from optim_chain.moments import _expect_moments
from optim_chain.transform import Transform, stateless


def normalize_by_second_moment(eps: float = 1e-8, eps_root: float = 0.0) -> Transform:
    r"""Turns moment estimates into a step: first moment over root second moment.

    .. math:: u = \frac{\text{first}}{\sqrt{\text{second} + \epsilon_{root}} + \epsilon}

    ``eps`` outside the root is torch's convention for Adam, RMSProp and Adagrad; ``eps_root``
    inside it is optax's for RMSProp and Adagrad (and keeps the gradient of the step finite
    when differentiating through the optimizer).

    Args:
      eps: added after the square root, ``>= 0``.
      eps_root: added under the square root, ``>= 0``.

    Returns:
      A transform from ``MomentEstimates`` to an update tree in the wider of the two moments'
      dtypes; the division runs in at least float32, per component for complex moments.
    """
    _validation.non_negative("eps", eps)
    _validation.non_negative("eps_root", eps_root)

    def normalize(m: jax.Array, v: jax.Array, constants: Any) -> jax.Array:
        emitted = jnp.promote_types(m.dtype, v.dtype)
        dtype = compute_dtype(emitted)
        root_eps, outer_eps = constants(scalar_dtype(dtype))

        def divide(first: jax.Array, second: jax.Array) -> jax.Array:
            return first / (jnp.sqrt(second + root_eps) + outer_eps)

        # per component for complex moments (torch's view_as_real), plain division otherwise
        return cast(componentwise(divide, cast(m, dtype), cast(v, dtype)), emitted)

    def update(updates: Any, params: Any) -> Any:
        del params
        moments = _expect_moments("normalize_by_second_moment", updates)
        constants = per_dtype(lambda dtype: (jnp.asarray(eps_root, dtype), jnp.asarray(eps, dtype)))
        return jax.tree.map(lambda m, v: normalize(m, v, constants), moments.first, moments.second)

    return stateless("normalize_by_second_moment", update, eps=eps, eps_root=eps_root)
