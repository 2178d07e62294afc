"""Moment estimation: running averages of the gradient and of its square.

These transforms turn a gradient tree into :class:`MomentEstimates`, a pair of trees
``(first, second)``: the numerator and the (not yet rooted) denominator of an adaptive step.
Later transforms (:func:`~optim_chain.correct_bias`, :func:`~optim_chain.max_second_moment`,
:func:`~optim_chain.center_second_moment`) refine the pair and
:func:`~optim_chain.normalize_by_second_moment` turns it back into an update tree.

============================================  ======================  ==========================
transform                                     ``first``               ``second``
============================================  ======================  ==========================
:func:`estimate_moments` (Adam)               ``b1*m + (1-b1)*g``     ``b2*v + (1-b2)*g^2``
:func:`estimate_second_moment` (RMSProp)      ``g``                   ``d*v + (1-d)*g^2``
:func:`accumulate_second_moment` (Adagrad)    ``g``                   ``v + g^2``
============================================  ======================  ==========================

Dtypes: the state is stored in ``moment_dtype`` (default: each parameter's dtype); the
arithmetic, decay rates included, runs in at least float32 and is rounded once when stored; the
``MomentEstimates`` passed on are in the wider of the gradient's and the state's dtypes (float32
moments for bfloat16 gradients give float32 estimates, and so float32 updates, as in optax).

Complex parameters are pairs of reals, as in ``torch.optim``: ``g^2`` is taken per component
(``a^2 + i b^2`` for ``g = a + ib``), so each component has its own second moment, stored as
the real and imaginary parts of a complex state (a real ``moment_dtype`` gives the complex dtype
of that precision).

Every ``update`` checks that the incoming tree has the structure and leaf shapes of the state
(built from the params at ``init``) and raises a ``ValueError`` naming the paths otherwise; every
``init`` refuses non-floating-point leaves with a ``TypeError`` naming the path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optim_chain import _validation
from optim_chain._complex import componentwise, square
from optim_chain._tree import (
    cast,
    check_float_params,
    check_matching,
    compute_dtype,
    emitted_dtype,
    full_like,
    leaf_dtype,
    map_pair,
    per_dtype,
    scalar_dtype,
    state_dtype,
    zeros_like,
)
from optim_chain.transform import Transform


class MomentEstimates(NamedTuple):
    """The pair of trees that flows between moment transforms.

    Attributes:
      first: the numerator of the step (the first moment, or the gradient itself).
      second: the second-moment estimate, before the square root.
      gradient: this step's gradient, passed along by :func:`estimate_moments` for Nesterov's
        form of bias correction (``correct_bias(nesterov=True)``); ``None`` otherwise.
    """

    first: Any
    second: Any
    gradient: Any = None


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


#: How the gradients and the state are named when their structures or shapes disagree.
_GRADIENTS, _STATE = "gradients", "the params given to init"


def _ema(
    decay: float | jax.Array | Callable[[Any], tuple[jax.Array, jax.Array]],
    average: jax.Array, value: jax.Array, squared: bool = False
) -> tuple[jax.Array, jax.Array]:
    """``decay * average + (1 - decay) * value`` (``value**2``, per component, with ``squared``).

    ``decay`` is a number or ``dtype -> (decay, 1 - decay)`` (from :func:`_ema_weights`, which
    builds the two scalars once for all leaves). The arithmetic, ``decay`` included, runs in at
    least float32 even for bfloat16 moments (in bfloat16 ``0.999`` rounds to ``1`` and the
    average would never move). Returns the new average twice: in ``average``'s dtype, to
    store, and in the wider of ``average``'s and ``value``'s dtypes, to pass on down the chain.
    """
    emitted = emitted_dtype(average.dtype, value.dtype)
    dtype = compute_dtype(emitted)
    x = cast(value, dtype)
    if squared:
        x = square(x)
    real = scalar_dtype(dtype)
    d, one_minus_d = decay(real) if callable(decay) else _weights(decay, real)
    new = d * cast(average, dtype) + one_minus_d * x
    return cast(new, average.dtype), cast(new, emitted)


def _weights(decay: Any, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """``(decay, 1 - decay)`` in ``dtype``."""
    d = jnp.asarray(decay, dtype)
    return d, 1 - d


def _ema_weights(decay: Any) -> Any:
    """``dtype -> (decay, 1 - decay)``, traced once per dtype for a whole tree (see ``per_dtype``)."""
    return per_dtype(lambda dtype: _weights(decay, dtype))


def _check_decay(name: str, decay: Any, params: Any, moment_dtype: Any) -> None:
    """Refuses a decay that rounds to 1 in the dtype its average is computed in (it would never move)."""
    if not _validation.is_number(decay):
        return
    for param_dtype in {leaf_dtype(leaf) for leaf in jax.tree.leaves(params)}:
        stored = state_dtype(param_dtype, moment_dtype)
        dtype = scalar_dtype(jnp.promote_types(stored, param_dtype))
        if float(np.asarray(decay, dtype)) == 1.0:
            raise ValueError(
                f"{name}={decay!r} rounds to 1 in {dtype.name}, so the average would never change; "
                f"use a smaller {name} or a wider moment_dtype"
            )


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
      A transform from gradients to ``MomentEstimates(first=m_t, second=v_t, gradient=g_t)``.

    Reference: Kingma & Ba, *Adam: A Method for Stochastic Optimization*, ICLR 2015.
    """
    _validation.in_unit_interval("b1", b1)
    _validation.in_unit_interval("b2", b2)
    _validation.float_dtype("moment_dtype", moment_dtype)

    def init(params: Any) -> MomentsState:
        check_float_params(params, "estimate_moments")
        _check_decay("b1", b1, params, moment_dtype)
        _check_decay("b2", b2, params, moment_dtype)
        return MomentsState(mu=zeros_like(params, moment_dtype), nu=zeros_like(params, moment_dtype))

    def update(updates: Any, state: MomentsState, params: Any = None, **extra: Any):
        del params, extra
        _expect_gradients("estimate_moments", updates)
        check_matching(updates, state.mu, _GRADIENTS, _STATE)
        w1, w2 = _ema_weights(b1), _ema_weights(b2)
        mu, first = map_pair(lambda m, g: _ema(w1, m, g), state.mu, updates)
        nu, second = map_pair(lambda v, g: _ema(w2, v, g, squared=True), state.nu, updates)
        return MomentEstimates(first, second, updates), MomentsState(mu=mu, nu=nu)

    return Transform(
        init,
        update,
        name="estimate_moments",
        hyperparams={"b1": b1, "b2": b2, "moment_dtype": moment_dtype},
    )


class SecondMomentState(NamedTuple):
    """Running second moment ``nu``."""

    nu: Any


def estimate_second_moment(
    decay: float = 0.99, moment_dtype: Any = None, initial_value: float = 0.0
) -> Transform:
    r"""RMSProp's moving average of the squared gradient; the gradient passes through as numerator.

    .. math:: v_t = d\, v_{t-1} + (1-d) g_t^2, \qquad v_0 = \text{initial\_value}, \qquad \text{first} = g_t

    Args:
      decay: ``d`` in [0, 1) (``alpha`` in ``torch.optim.RMSprop``).
      moment_dtype: dtype of ``v`` (default: each parameter's dtype).
      initial_value: ``v_0 >= 0``; ``0`` as in torch, optax's ``initial_scale``.

    Reference: Tieleman & Hinton, Lecture 6.5 - RMSProp, COURSERA 2012.
    """
    _validation.in_unit_interval("decay", decay)
    _validation.float_dtype("moment_dtype", moment_dtype)
    _validation.non_negative("initial_value", initial_value)

    def init(params: Any) -> SecondMomentState:
        check_float_params(params, "estimate_second_moment")
        _check_decay("decay", decay, params, moment_dtype)
        if _validation.is_number(initial_value) and initial_value == 0:
            return SecondMomentState(nu=zeros_like(params, moment_dtype))
        return SecondMomentState(nu=full_like(params, initial_value, moment_dtype))

    def update(updates: Any, state: SecondMomentState, params: Any = None, **extra: Any):
        del params, extra
        _expect_gradients("estimate_second_moment", updates)
        check_matching(updates, state.nu, _GRADIENTS, _STATE)
        weights = _ema_weights(decay)
        nu, second = map_pair(lambda v, g: _ema(weights, v, g, squared=True), state.nu, updates)
        return MomentEstimates(updates, second), SecondMomentState(nu=nu)

    return Transform(
        init,
        update,
        name="estimate_second_moment",
        hyperparams={"decay": decay, "moment_dtype": moment_dtype, "initial_value": initial_value},
    )


def accumulate_second_moment(initial_value: float = 0.0, moment_dtype: Any = None) -> Transform:
    r"""Adagrad's running *sum* of squared gradients; the gradient passes through as numerator.

    .. math:: s_t = s_{t-1} + g_t^2, \qquad \text{first} = g_t

    starting from ``s_0 = initial_value``.

    Args:
      initial_value: ``s_0 >= 0`` (``initial_accumulator_value`` in torch; optax uses 0.1).
      moment_dtype: dtype of ``s`` (default: each parameter's dtype).

    Reference: Duchi, Hazan & Singer, *Adaptive Subgradient Methods*, JMLR 2011.
    """
    _validation.non_negative("initial_value", initial_value)
    _validation.float_dtype("moment_dtype", moment_dtype)

    def init(params: Any) -> SecondMomentState:
        check_float_params(params, "accumulate_second_moment")
        return SecondMomentState(nu=full_like(params, initial_value, moment_dtype))

    def accumulate(s: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
        emitted = emitted_dtype(s.dtype, g.dtype)
        dtype = compute_dtype(emitted)
        new = cast(s, dtype) + square(cast(g, dtype))
        return cast(new, s.dtype), cast(new, emitted)

    def update(updates: Any, state: SecondMomentState, params: Any = None, **extra: Any):
        del params, extra
        _expect_gradients("accumulate_second_moment", updates)
        check_matching(updates, state.nu, _GRADIENTS, _STATE)
        nu, second = map_pair(accumulate, state.nu, updates)
        return MomentEstimates(updates, second), SecondMomentState(nu=nu)

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
    _validation.float_dtype("moment_dtype", moment_dtype)

    def init(params: Any) -> CenteredState:
        check_float_params(params, "center_second_moment")
        _check_decay("decay", decay, params, moment_dtype)
        return CenteredState(mean=zeros_like(params, moment_dtype))

    def center(v: jax.Array, a: jax.Array) -> jax.Array:
        emitted = jnp.promote_types(v.dtype, a.dtype)
        dtype = compute_dtype(emitted)
        return cast(cast(v, dtype) - square(cast(a, dtype)), emitted)

    def update(updates: Any, state: CenteredState, params: Any = None, **extra: Any):
        del params, extra
        moments = _expect_moments("center_second_moment", updates)
        check_matching(moments.first, state.mean, _GRADIENTS, _STATE)
        weights = _ema_weights(decay)
        mean, running = map_pair(lambda a, g: _ema(weights, a, g), state.mean, moments.first)
        second = jax.tree.map(center, moments.second, running)
        return moments._replace(second=second), CenteredState(mean=mean)

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

    _validation.float_dtype("moment_dtype", moment_dtype)

    def init(params: Any) -> MaxSecondMomentState:
        check_float_params(params, "max_second_moment")
        return MaxSecondMomentState(nu_max=zeros_like(params, moment_dtype))

    def running_max(mx: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
        emitted = emitted_dtype(mx.dtype, v.dtype)
        new = componentwise(jnp.maximum, cast(mx, emitted), cast(v, emitted))
        return cast(new, mx.dtype), new

    def update(updates: Any, state: MaxSecondMomentState, params: Any = None, **extra: Any):
        del params, extra
        moments = _expect_moments("max_second_moment", updates)
        check_matching(moments.second, state.nu_max, _GRADIENTS, _STATE)
        nu_max, second = map_pair(running_max, state.nu_max, moments.second)
        return moments._replace(second=second), MaxSecondMomentState(nu_max=nu_max)

    return Transform(init, update, name="max_second_moment", hyperparams={"moment_dtype": moment_dtype})
