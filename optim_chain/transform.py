"""The :class:`Transform` type and :func:`chain`.

Every primitive in optim_chain returns a :class:`Transform`: an ordinary
``optax.GradientTransformationExtraArgs`` (so ``optax``, Flax's ``TrainState`` and
``nnx.Optimizer`` accept it unchanged) that also remembers its name, its hyperparameters and,
for a chain, its parts. That is what lets a preset be printed and taken apart::

    >>> import optim_chain as oc
    >>> opt = oc.adamw(1e-3, weight_decay=0.1)
    >>> print(opt)                       # one primitive per line
    adamw(
      estimate_moments(b1=0.9, b2=0.999, moment_dtype=None),
      correct_bias(b1=0.9, b2=0.999),
      normalize_by_second_moment(eps=1e-08, eps_root=0.0),
      scale_by_learning_rate(learning_rate=0.001),
      decoupled_weight_decay(weight_decay=0.1, multiplier=0.001, mask=None),
    )
    >>> opt.parts[-1].name
    'decoupled_weight_decay'
    >>> custom = oc.chain(*opt.parts[:-1])   # the same chain without decay: Adam
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import optax

from optim_chain._tree import check_float_params

#: An update function ``(updates, state, params=None, **extra) -> (updates, state)``. Each
#: transform's update takes its own state type, which optax's protocol (state typed as any
#: ``OptState``) cannot express, so the state is left open here.
UpdateFn: TypeAlias = Callable[..., tuple[Any, Any]]


class Transform(optax.GradientTransformationExtraArgs):
    """A gradient transformation with a name, its hyperparameters and (for chains) its parts.

    It is a ``NamedTuple`` of ``(init, update)`` like every optax transformation; the extra
    attributes are for people reading and recombining optimizers and play no part in the math.
    """

    name: str
    hyperparams: Mapping[str, Any]
    parts: tuple[optax.GradientTransformation, ...]

    def __new__(
        cls,
        init: optax.TransformInitFn,
        update: UpdateFn,
        name: str = "transform",
        hyperparams: Mapping[str, Any] | None = None,
        parts: Sequence[optax.GradientTransformation] = (),
    ) -> Transform:
        self = super().__new__(cls, init, update)
        self.name = name
        self.hyperparams = dict(hyperparams or {})
        self.parts = tuple(parts)
        return self

    def __repr__(self) -> str:
        if self.parts:
            inner = "".join(
                "\n" + "\n".join("  " + line for line in _part_repr(p).splitlines()) + "," for p in self.parts
            )
            return f"{self.name}({inner}\n)"
        args = ", ".join(f"{k}={_short(v)}" for k, v in self.hyperparams.items())
        return f"{self.name}({args})"

    __str__ = __repr__


def _part_repr(part: Any) -> str:
    """A part as a chain prints it: its own repr for a Transform, one line for any other transformation."""
    return repr(part) if isinstance(part, Transform) else f"<{type(part).__name__}>"


def _short(value: Any) -> str:
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    return repr(value)


def chain(*transforms: optax.GradientTransformation, name: str = "chain") -> Transform:
    """Applies ``transforms`` one after the other, like ``optax.chain``.

    The state is the tuple of the parts' states, exactly as ``optax.chain`` builds it, so a chain
    built here and one built by optax from the same parts hold the same state.

    Args:
      *transforms: the transformations, applied left to right.
      name: the name shown when the chain is printed (presets pass their own name).

    Returns:
      A :class:`Transform` whose ``parts`` are ``transforms``.
    """
    for index, t in enumerate(transforms):
        if not (hasattr(t, "init") and hasattr(t, "update")):
            raise TypeError(
                f"chain argument {index} must be a gradient transformation with init and update, got {t!r}"
            )
    combined = optax.chain(*transforms)
    return Transform(combined.init, combined.update, name=name, parts=transforms)


def stateless(name: str, update_fn: Any, **hyperparams: Any) -> Transform:
    """A :class:`Transform` with empty state whose update is ``update_fn(updates, params)``.

    ``updates=None`` passes through as ``None``, as in optax's stateless transforms.
    """

    def init(params: Any) -> optax.EmptyState:
        check_float_params(params, name)
        return optax.EmptyState()

    def update(updates: Any, state: optax.EmptyState, params: Any = None, **extra: Any):
        del extra
        return (None if updates is None else update_fn(updates, params)), state

    return Transform(init, update, name=name, hyperparams=hyperparams)
