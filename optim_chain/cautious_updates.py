"""Cautious updates (Liang et al., *Cautious Optimizers*, 2024): a step only where it agrees with
the gradient.

Not to be confused with cautious *weight decay* (``cautious_weight_decay`` of
:func:`~optim_chain.adamw`), which masks the decay; this masks the optimizer's own direction.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optim_chain.transform import Transform

#: The smallest share of agreeing entries the rescaling divides by (as the authors' code does).
FLOOR = 1e-3


def _cautious_leaf(direction: jax.Array, gradient: jax.Array) -> jax.Array:
    if jnp.iscomplexobj(direction):  # real and imaginary parts apart, as torch's view_as_real
        real = jnp.stack([direction.real, direction.imag])
        grad = jnp.stack([jnp.real(gradient), jnp.imag(gradient)])
        masked = _cautious_leaf(real, grad)
        return jax.lax.complex(masked[0], masked[1])
    agree = (direction * gradient > 0).astype(direction.dtype)
    share = jnp.maximum(jnp.mean(agree), jnp.asarray(FLOOR, direction.dtype))
    return direction * (agree / share)


def caution(inner: optax.GradientTransformation) -> Transform:
    r"""``inner``'s direction kept only where it agrees in sign with this step's gradient.

    .. math::

        d_t = \text{inner}(g_t), \quad
        \phi_t = \mathbb{1}[d_t \odot g_t > 0], \quad
        u_t = d_t \odot \phi_t / \max(\operatorname{mean}(\phi_t), 10^{-3})

    per leaf: entries whose direction would climb the current gradient are dropped, and the
    rest are scaled up by the share dropped, so the step keeps its size. ``inner`` must return
    a *direction* (a descent direction before the learning rate's minus sign, as the Adam core
    ``estimate_moments, correct_bias, normalize_by_second_moment`` does): put the learning rate
    and any decoupled decay after this wrapper, so that decay is not masked. Adam's direction
    ``mhat / (sqrt(vhat) + eps)`` has the sign of ``m``, so this is the authors' mask ``m * g >
    0``.

    Args:
      inner: the transformation whose direction is masked; its state is this one's.

    Returns:
      A :class:`~optim_chain.Transform` named ``caution`` with ``inner`` as its one part.

    Example::

      >>> import optim_chain as oc
      >>> print(oc.adamw(1e-3, 0.1, caution=True).parts[0].name)
      caution

    Reference: Liang, Chen, Liu & Liu, *Cautious Optimizers: Improving Training with One Line of
    Code*, arXiv:2411.16085 (2024); ``caution=True`` in timm, heavyball and pytorch_optimizer.
    """
    if not (hasattr(inner, "init") and hasattr(inner, "update")):
        raise TypeError(f"caution needs a gradient transformation with init and update, got {inner!r}")
    inner = optax.with_extra_args_support(inner)

    def update(updates: Any, state: Any, params: Any = None, **extra: Any):
        direction, state = inner.update(updates, state, params, **extra)
        if updates is None:
            return direction, state
        return jax.tree.map(_cautious_leaf, direction, updates), state

    return Transform(inner.init, update, name="caution", parts=(inner,))
