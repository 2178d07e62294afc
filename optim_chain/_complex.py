"""Complex parameters as pairs of reals, the convention of ``torch.optim`` (``torch.view_as_real``).

Linear steps (moving averages, momentum, learning rate, weight decay) treat a complex entry the
same whether it is seen as one complex number or as two reals, since every hyperparameter is
real. The nonlinear ones (squaring a gradient, its square root, a division, a running maximum)
differ, and optim_chain applies them to each component on its own, as torch does: the second
moment of a complex gradient ``a + ib`` is ``a^2 + i b^2``, one real moment per component.
(optax's Adam family keeps the real ``|g|^2 = a^2 + b^2`` instead, shared by both components.)
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def componentwise(fn: Callable[..., jax.Array], *arrays: jax.Array) -> jax.Array:
    """``fn(*arrays)``, applied to the real and the imaginary parts apart when any array is complex.

    ``fn`` must be elementwise. For real arrays this is ``fn(*arrays)`` itself.
    """
    if not any(jnp.iscomplexobj(a) for a in arrays):
        return fn(*arrays)
    real = fn(*(jnp.real(a) for a in arrays))
    imag = fn(*(jnp.imag(a) for a in arrays))
    return jax.lax.complex(real, imag)


def square(x: jax.Array) -> jax.Array:
    """``x * x``, per component for a complex ``x`` (``a^2 + i b^2``)."""
    return componentwise(jnp.square, x)
