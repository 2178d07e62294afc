"""Which parameters decay: masks as predicates over parameter paths.

A *predicate* answers, for one leaf, whether it is selected, from the leaf's ``/``-joined path
(``"Dense_0/kernel"``, ``"blocks/0/ln/scale"``) and the leaf itself. Predicates combine with
``&``, ``|`` and ``~``. Every ``mask=`` argument in optim_chain accepts:

* a predicate (evaluated on the params' paths when the optimizer is initialised),
* a callable ``params -> bool pytree`` (optax's convention), for example
  :func:`default_decay_mask`,
* a bool pytree with the params' structure. As in optax, a value counts as a callable only
  when it is not a tree of bools: an Equinox module of bools (callable, being a module) is a
  tree.

Paths join dict keys, sequence indices and attribute names with ``/``. A Flax NNX ``Variable``
is named by its place (``"linear/kernel"``); no other key is dropped, so a leaf really named
``value`` keeps that name. The mask is resolved, and checked against the params, at ``init``.

Example::

    >>> import jax.numpy as jnp, optim_chain as oc
    >>> from optim_chain import masks
    >>> params = {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)},
    ...           "LayerNorm_0": {"scale": jnp.ones(4)}}
    >>> no_norms = ~masks.path_matches(r"(?i)norm") & ~masks.name_is("bias")
    >>> opt = oc.adamw(1e-3, weight_decay=0.1, mask=no_norms)
    >>> print(masks.describe_mask(params, no_norms))   # check before training
    path               shape   dtype     decays
    Dense_0/bias       (4,)    float32   no
    Dense_0/kernel     (3, 4)  float32   yes
    LayerNorm_0/scale  (4,)    float32   no
    1 of 3 leaves decay (12 of 20 parameters)
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.core
import numpy as np

from optim_chain._tree import leaves_with_paths

__all__ = [
    "Predicate",
    "path_matches",
    "name_is",
    "ndim_at_least",
    "ndim_at_most",
    "everything",
    "DEFAULT_DECAY",
    "mask_from_predicate",
    "default_decay_mask",
    "is_mask_function",
    "resolve_mask",
    "describe_mask",
]


class Predicate:
    """A test on ``(path, leaf)`` that can be combined with ``&``, ``|`` and ``~``.

    Args:
      test: ``test(path, leaf) -> bool``, ``path`` the ``/``-joined key path of the leaf.
      description: how the predicate prints.
      atoms: the basic predicates it was built from (used to warn about patterns that match
        nothing); a basic predicate leaves this out.
    """

    def __init__(
        self,
        test: Callable[[str, Any], bool],
        description: str,
        atoms: tuple[Predicate, ...] | None = None,
    ) -> None:
        self._test = test
        self.description = description
        self.atoms = (self,) if atoms is None else atoms

    def __call__(self, path: str, leaf: Any) -> bool:
        return bool(self._test(path, leaf))

    def __and__(self, other: Predicate) -> Predicate:
        _check_predicate(other, "&")
        return Predicate(
            lambda p, x: self(p, x) and other(p, x),
            f"({self.description} & {other.description})",
            self.atoms + other.atoms,
        )

    def __or__(self, other: Predicate) -> Predicate:
        _check_predicate(other, "|")
        return Predicate(
            lambda p, x: self(p, x) or other(p, x),
            f"({self.description} | {other.description})",
            self.atoms + other.atoms,
        )

    def __invert__(self) -> Predicate:
        return Predicate(lambda p, x: not self(p, x), f"~{self.description}", self.atoms)

    def __repr__(self) -> str:
        return self.description


def _check_predicate(other: Any, operator: str) -> None:
    if not isinstance(other, Predicate):
        raise TypeError(f"can only combine a Predicate with another Predicate via {operator}, got {other!r}")


def path_matches(pattern: str) -> Predicate:
    """Selects leaves whose ``/``-joined path contains a match of the regex ``pattern``."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {error}") from None
    return Predicate(lambda path, leaf: compiled.search(path) is not None, f"path_matches({pattern!r})")


def name_is(*names: str) -> Predicate:
    """Selects leaves whose own name (the last path component) is one of ``names``."""
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"name_is needs one or more strings, got {names!r}")
    wanted = frozenset(names)
    shown = ", ".join(repr(n) for n in names)
    return Predicate(lambda path, leaf: path.rsplit("/", 1)[-1] in wanted, f"name_is({shown})")


def ndim_at_least(n: int) -> Predicate:
    """Selects leaves with ``ndim >= n`` (``n=2``: matrices, kernels, embeddings)."""
    return Predicate(lambda path, leaf: len(np.shape(leaf)) >= n, f"ndim_at_least({n})")


def ndim_at_most(n: int) -> Predicate:
    """Selects leaves with ``ndim <= n`` (``n=1``: biases, norm scales, scalars)."""
    return Predicate(lambda path, leaf: len(np.shape(leaf)) <= n, f"ndim_at_most({n})")


def everything() -> Predicate:
    """Selects every leaf."""
    return Predicate(lambda path, leaf: True, "everything()")


#: The rule behind :func:`default_decay_mask`: decay what has two or more dimensions (weight
#: matrices, convolution kernels, embeddings), whatever the model library calls it; never a
#: vector or a scalar (biases, the scale and bias of LayerNorm, RMSNorm, BatchNorm, GroupNorm in
#: Flax, Equinox and Hugging Face models). Two exceptions among the matrices: a leaf named
#: ``bias`` or ``scale`` (Equinox's convolution bias has shape ``(channels, 1, 1)``) and a leaf
#: directly inside a module whose name contains "norm". Its parts are alternatives that need not
#: all occur in one model, so :func:`describe_mask` does not warn about them.
_DEFAULT_RULE = (
    ndim_at_least(2) & ~name_is("bias", "scale") & ~path_matches(r"(?i)(^|/)[^/]*norm[^/]*/[^/]+$")
)
DEFAULT_DECAY: Predicate = Predicate(_DEFAULT_RULE, _DEFAULT_RULE.description, atoms=())


def mask_from_predicate(predicate: Predicate, params: Any) -> Any:
    """The bool pytree that ``predicate`` gives on ``params`` (same structure as ``params``)."""
    flags = [predicate(path, leaf) for path, leaf in leaves_with_paths(params)]
    return jax.tree.unflatten(jax.tree.structure(params), flags)


def default_decay_mask(params: Any) -> Any:
    """Decay mask for linen dicts, ``FrozenDict``, NNX ``State``, Equinox modules and HF Flax params.

    See :data:`DEFAULT_DECAY`: matrices, kernels and embeddings decay, vectors and scalars do
    not. Usable wherever optax expects a mask callable: ``oc.adamw(1e-3, mask=default_decay_mask)``.
    """
    return mask_from_predicate(DEFAULT_DECAY, params)


def is_mask_function(mask: Any) -> bool:
    """Whether ``mask`` is a function ``params -> mask`` rather than a mask tree (optax's rule).

    A value is a function when every one of its pytree leaves is callable. An ``eqx.Module`` is
    callable but its leaves (here bools) are not, so a module of bools is a tree.
    """
    leaves = jax.tree.leaves(mask)
    return bool(leaves) and all(callable(leaf) for leaf in leaves)


def resolve_mask(mask: Any, params: Any, argument: str = "mask") -> list[bool]:
    """Turns any accepted mask form into one Python bool per leaf of ``params`` (flatten order).

    Raises:
      ValueError: the mask's structure differs from the params' (naming the paths that
        differ), or a leaf is not a boolean.
    """
    if mask is None:
        return [True] * len(jax.tree.leaves(params))
    if isinstance(mask, Predicate):
        return [mask(path, leaf) for path, leaf in leaves_with_paths(params)]
    tree = mask(params) if is_mask_function(mask) else mask
    param_paths = [path for path, _ in leaves_with_paths(params)]
    mask_items = leaves_with_paths(tree)
    mask_paths = [path for path, _ in mask_items]
    if param_paths != mask_paths:
        missing = sorted(set(param_paths) - set(mask_paths))
        extra = sorted(set(mask_paths) - set(param_paths))
        detail = []
        if missing:
            detail.append(f"params leaves missing from the mask: {missing[:5]}")
        if extra:
            detail.append(f"mask leaves not in params: {extra[:5]}")
        if not detail:
            detail.append("same paths in a different order")
        raise ValueError(
            f"{argument} does not match the params' structure ({len(mask_paths)} mask leaves vs "
            f"{len(param_paths)} params leaves); " + "; ".join(detail)
        )
    flags = []
    for path, value in mask_items:
        if isinstance(value, jax.core.Tracer) or np.ndim(value) != 0:
            raise TypeError(
                f"{argument} leaf {path!r} must be a Python bool, got {type(value).__name__} "
                f"{getattr(value, 'shape', '')}"
            )
        flags.append(bool(value))
    return flags


def describe_mask(params: Any, mask: Any = default_decay_mask, *, warn: bool = True) -> str:
    """A table of every parameter: path, shape, dtype and whether ``mask`` selects it (decays).

    When ``mask`` is a :class:`Predicate` and one of the patterns it was built from matches no
    parameter at all, a ``UserWarning`` names it: usually a typo in a module name.

    Args:
      params: the parameter pytree (linen dict, ``FrozenDict``, NNX ``State`` ...).
      mask: any form accepted by ``mask=`` arguments; defaults to :func:`default_decay_mask`.
      warn: whether to warn about patterns that match nothing.

    Returns:
      The table as text, ending with a count of decayed leaves and parameters.
    """
    flags = resolve_mask(mask, params)
    items = leaves_with_paths(params)
    rows = [(p, str(tuple(np.shape(x))), str(getattr(x, "dtype", type(x).__name__))) for p, x in items]
    width = max([len("path")] + [len(r[0]) for r in rows])
    shape_width = max([len("shape")] + [len(r[1]) for r in rows])
    lines = [f"{'path':<{width}}  {'shape':<{shape_width}}  {'dtype':<8}  decays"]
    for (path, shape, dtype), flag in zip(rows, flags):
        lines.append(f"{path:<{width}}  {shape:<{shape_width}}  {dtype:<8}  {'yes' if flag else 'no'}")
    decayed = sum(int(np.size(x)) for (_, x), f in zip(items, flags) if f)
    total = sum(int(np.size(x)) for _, x in items)
    lines.append(f"{sum(flags)} of {len(flags)} leaves decay ({decayed:,} of {total:,} parameters)")
    if warn and isinstance(mask, Predicate):
        for atom in mask.atoms:
            if not any(atom(p, x) for p, x in items):
                warnings.warn(f"mask pattern {atom.description} matches no parameter", stacklevel=2)
    return "\n".join(lines)
