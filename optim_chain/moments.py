"""Moment estimation: running averages of the gradient and of its square.

These transforms turn a gradient tree into :class:`MomentEstimates`, a pair of trees
``(first, second)``: the numerator and the (not yet rooted) denominator of an adaptive step.
Later transforms (:func:`~optim_chain.correct_bias`, :func:`~optim_chain.max_second_moment`,
:func:`~optim_chain.center_second_moment`) refine the pair and
:func:`~optim_chain.normalize_by_second_moment` turns it back into an update tree.

===================================  ==============================  ==========================
transform                            ``first``                       ``second``
===================================  ==============================  ==========================
:func:`estimate_moments` (Adam)      ``b1*m + (1-b1)*g``             ``b2*v + (1-b2)*g^2``
:func:`estimate_second_moment`       ``g``                           ``d*v + (1-d)*g^2``
(RMSProp)
:func:`accumulate_second_moment`     ``g``                           ``v + g^2``
(Adagrad)
===================================  ==============================  ==========================
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optim_chain import _validation
from optim_chain._tree import compute_dtype, full_like, zeros_like
from optim_chain.transform import Transform


class MomentEstimates(NamedTuple):
    """The pair of trees that flows between moment transforms.

    Attributes:
      first: the numerator of the step (the first moment, or the gradient itself).
      second: the second-moment estimate, before the square root.
    """

    first: Any
    second: Any


def _expect_gradients(name: str, updates: Any) -> None:
    if isinstance(updates, MomentEstimates):
        raise TypeError(f"{name} takes gradients, but received MomentEstimates: it must come first")


def _expect_step(name: str, updates: Any) -> None:
    """Refuses ``MomentEstimates`` in a transform that acts on gradients or steps, elementwise."""
    if isinstance(updates, MomentEstimates):
        raise TypeError(
            f"{name} takes gradients or steps, but received MomentEstimates: place it before the "
            "moment estimator, or after normalize_by_second_moment has turned the moments into a step"
        )


def _expect_moments(name: str, updates: Any) -> MomentEstimates:
    if not isinstance(updates, MomentEstimates):
        raise TypeError(
            f"{name} takes the MomentEstimates produced by estimate_moments, "
            "estimate_second_moment or accumulate_second_moment; place it after one of them"
        )
    return updates


def _ema(decay: Any, average: jax.Array, value: jax.Array) -> jax.Array:
    """``decay * average + (1 - decay) * value``, stored in ``average``'s dtype.

    The arithmetic runs in at least float32: in bfloat16, ``0.999`` rounds to ``1.0`` and
    ``1 - decay`` would vanish, leaving the average at zero forever.
    """
    dtype = compute_dtype(average.dtype)
    d = jnp.asarray(decay, dtype)
    return (d * average.astype(dtype) + (1 - d) * value.astype(dtype)).astype(average.dtype)


class MomentsState(NamedTuple):
    """Running first and second moments (``mu``, ``nu``)."""

    mu: Any
    nu: Any


def estimate_moments(b1: float = 0.9, b2: float = 0.999, moment_dtype: Any = None) -> Transform:
    r"""Adam's exponential moving averages of the gradient and of its square.

    .. math::
       m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
       v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

    Both start at zero, so they are biased toward zero early on: follow with
    :func:`~optim_chain.correct_bias`.

    Args:
      b1: decay of the first moment, in [0, 1).
      b2: decay of the second moment, in [0, 1).
      moment_dtype: dtype of ``m`` and ``v`` (default: each parameter's dtype), for example
        ``jnp.float32`` moments for ``bfloat16`` parameters.

    Returns:
      A transform from gradients to ``MomentEstimates(first=m_t, second=v_t)``.

    Reference: Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
    """
    _validation.in_unit_interval("b1", b1)
    _validation.in_unit_interval("b2", b2)

    def init(params: Any) -> MomentsState:
        return MomentsState(mu=zeros_like(params, moment_dtype), nu=zeros_like(params, moment_dtype))

    def update(updates: Any, state: MomentsState, params: Any = None, **extra: Any):
        del params, extra
        _expect_gradients("estimate_moments", updates)
        mu = jax.tree.map(lambda g, m: _ema(b1, m, g), updates, state.mu)
        nu = jax.tree.map(lambda g, v: _ema(b2, v, jnp.square(g.astype(v.dtype))), updates, state.nu)
        return MomentEstimates(mu, nu), MomentsState(mu=mu, nu=nu)

    return Transform(
        init,
        update,
        name="estimate_moments",
        hyperparams={"b1": b1, "b2": b2, "moment_dtype": moment_dtype},
    )


class SecondMomentState(NamedTuple):
    """Running second moment ``nu``."""

    nu: Any


def estimate_second_moment(decay: float = 0.99, moment_dtype: Any = None) -> Transform:
    r"""RMSProp's moving average of the squared gradient; the gradient passes through as numerator.

    .. math:: v_t = d\, v_{t-1} + (1-d) g_t^2, \qquad \text{first} = g_t

    Args:
      decay: ``d`` in [0, 1) (``alpha`` in ``torch.optim.RMSprop``).
      moment_dtype: dtype of ``v`` (default: each parameter's dtype).

    Reference: Tieleman & Hinton, Lecture 6.5 - RMSProp, COURSERA 2012.
    """
    _validation.in_unit_interval("decay", decay)

    def init(params: Any) -> SecondMomentState:
        return SecondMomentState(nu=zeros_like(params, moment_dtype))

    def update(updates: Any, state: SecondMomentState, params: Any = None, **extra: Any):
        del params, extra
        _expect_gradients("estimate_second_moment", updates)
        nu = jax.tree.map(lambda g, v: _ema(decay, v, jnp.square(g.astype(v.dtype))), updates, state.nu)
        return MomentEstimates(updates, nu), SecondMomentState(nu=nu)

    return Transform(
        init,
        update,
        name="estimate_second_moment",
        hyperparams={"decay": decay, "moment_dtype": moment_dtype},
    )


def accumulate_second_moment(initial_value: float = 0.0, moment_dtype: Any = None) -> Transform:
    r"""Adagrad's running *sum* of squared gradients; the gradient passes through as numerator.

    .. math:: s_t = s_{t-1} + g_t^2, \quad s_0 = \text{initial\_value}, \qquad \text{first} = g_t

    Args:
      initial_value: ``s_0 >= 0`` (``initial_accumulator_value`` in torch; optax uses 0.1).
      moment_dtype: dtype of ``s`` (default: each parameter's dtype).

    Reference: Duchi, Hazan & Singer, *Adaptive Subgradient Methods*, JMLR 2011.
    """
    _validation.non_negative("initial_value", initial_value)

    def init(params: Any) -> SecondMomentState:
        return SecondMomentState(nu=full_like(params, initial_value, moment_dtype))

    def update(updates: Any, state: SecondMomentState, params: Any = None, **extra: Any):
        del params, extra
        _expect_gradients("accumulate_second_moment", updates)
        nu = jax.tree.map(lambda g, s: s + jnp.square(g.astype(s.dtype)), updates, state.nu)
        return MomentEstimates(updates, nu), SecondMomentState(nu=nu)

    return Transform(
        init,
        update,
        name="accumulate_second_moment",
        hyperparams={"initial_value": initial_value, "moment_dtype": moment_dtype},
    )


class CenteredState(NamedTuple):
    """Running mean of the gradient, ``mean``."""

    mean: Any


def center_second_moment(decay: float = 0.99, moment_dtype: Any = None) -> Transform:
    r"""Centered RMSProp: replaces the second moment by a variance estimate.

    .. math::
       \bar g_t = d\, \bar g_{t-1} + (1-d)\, \text{first}_t, \qquad
       \text{second}_t \leftarrow \text{second}_t - \bar g_t^2

    Place it right after :func:`estimate_second_moment` (whose ``first`` is the gradient), with
    the same ``decay``.

    Args:
      decay: ``d`` in [0, 1).
      moment_dtype: dtype of the running mean (default: each parameter's dtype).

    Reference: Graves, *Generating Sequences With Recurrent Neural Networks*, 2013, eq. 38.
    """
    _validation.in_unit_interval("decay", decay)

    def init(params: Any) -> CenteredState:
        return CenteredState(mean=zeros_like(params, moment_dtype))

    def update(updates: Any, state: CenteredState, params: Any = None, **extra: Any):
        del params, extra
        moments = _expect_moments("center_second_moment", updates)
        mean = jax.tree.map(lambda g, a: _ema(decay, a, g), moments.first, state.mean)
        second = jax.tree.map(lambda v, a: v - jnp.square(a).astype(v.dtype), moments.second, mean)
        return MomentEstimates(moments.first, second), CenteredState(mean=mean)

    return Transform(
        init,
        update,
        name="center_second_moment",
        hyperparams={"decay": decay, "moment_dtype": moment_dtype},
    )


class MaxSecondMomentState(NamedTuple):
    """The largest second moment seen so far, per entry."""

    nu_max: Any


def max_second_moment(moment_dtype: Any = None) -> Transform:
    r"""AMSGrad: replaces the second moment by its running maximum.

    .. math:: \hat v^{\max}_t = \max(\hat v^{\max}_{t-1}, \text{second}_t)

    Its place decides which AMSGrad you get:

    * **before** :func:`~optim_chain.correct_bias`: the maximum of the *raw* ``v``, later divided
      by the current ``1 - b2^t`` (``torch.optim.Adam(amsgrad=True)``, Keras);
    * **after** it: the maximum of the *bias-corrected* ``v`` (``optax.amsgrad``).

    Args:
      moment_dtype: dtype of the stored maximum; use the one given to the moment estimator.

    Reference: Reddi, Kale & Kumar, *On the Convergence of Adam and Beyond*, ICLR 2018.
    """

    def init(params: Any) -> MaxSecondMomentState:
        return MaxSecondMomentState(nu_max=zeros_like(params, moment_dtype))

    def update(updates: Any, state: MaxSecondMomentState, params: Any = None, **extra: Any):
        del params, extra
        moments = _expect_moments("max_second_moment", updates)
        nu_max = jax.tree.map(lambda v, mx: jnp.maximum(mx, v.astype(mx.dtype)), moments.second, state.nu_max)
        return MomentEstimates(moments.first, nu_max), MaxSecondMomentState(nu_max=nu_max)

    return Transform(init, update, name="max_second_moment", hyperparams={"moment_dtype": moment_dtype})
