"""Parameter groups in the style of ``torch.optim``: one optimizer, other hyperparameters per subset.

In torch a parameter group is a list of tensors plus the hyperparameters that differ from the
optimizer's defaults. Here a group is a *selector* (any mask form of :mod:`optim_chain.masks`)
plus those overrides, and :func:`param_groups` builds one optimizer per group from a preset (or
any function returning a gradient transformation), routing each leaf to its group with
``optax.multi_transform``::

    >>> import jax.numpy as jnp, optim_chain as oc
    >>> from optim_chain import masks
    >>> params = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
    >>> groups = [(masks.ndim_at_most(1), {"weight_decay": 0.0, "learning_rate": 2e-3})]
    >>> opt = oc.param_groups(oc.adamw, groups, learning_rate=1e-3, weight_decay=0.1)
    >>> state = opt.init(params)
    >>> print(oc.describe_param_groups(params, groups))   # which leaf went where
    path          shape   dtype    group
    dense/bias    (3,)    float32  0: weight_decay=0.0, learning_rate=0.002
    dense/kernel  (4, 3)  float32  default
    group 0 [ndim_at_most(1)] weight_decay=0.0, learning_rate=0.002: 1 leaf, 3 parameters
    default: 1 leaf, 12 parameters
    total: 2 leaves, 15 parameters in 2 groups

is the JAX counterpart of::

    torch.optim.AdamW([{"params": matrices}, {"params": vectors, "weight_decay": 0.0, "lr": 2e-3}],
                      lr=1e-3, weight_decay=0.1)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax

from optim_chain._tree import leaves_with_paths
from optim_chain.masks import Predicate, is_mask_function, resolve_mask
from optim_chain.transform import Transform

__all__ = ["param_groups", "describe_param_groups", "DEFAULT_LABEL"]

#: The label of the leaves that no selector matches (they run ``optimizer_fn(**defaults)``).
DEFAULT_LABEL = "default"

Group = tuple[Any, Mapping[str, Any]]

# torch's names for hyperparameters that optim_chain spells differently, for the error hints.
_TORCH_NAMES = {
    "lr": "learning_rate",
    "betas": "b1 and b2",
    "dampening": None,
    "maximize": None,
    "foreach": None,
    "fused": None,
    "capturable": None,
    "differentiable": None,
}


def _label(index: int) -> str:
    return f"group_{index}"


def _name_of(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _show(value: Any) -> str:
    """A value as the group descriptions print it: functions by name, everything else by repr."""
    return _name_of(value) if callable(value) else repr(value)


def _show_kwargs(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_show(v)}" for k, v in kwargs.items()) or "no overrides"


def _show_selector(selector: Any) -> str:
    if isinstance(selector, Predicate):
        return selector.description
    if is_mask_function(selector):
        return _name_of(selector)
    flags = [bool(x) for x in jax.tree.leaves(selector)]
    return f"bool tree ({sum(flags)} of {len(flags)} leaves True)"


def _count(number: int, one: str, many: str) -> str:
    return f"{number:,} {one if number == 1 else many}"


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------------------------ checks


def _is_bool_scalar(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return getattr(value, "dtype", None) == np.bool_ and np.ndim(value) == 0


_SELECTOR_FORMS = "a masks.Predicate, a callable params -> bool pytree or a bool pytree"


def _check_selector(selector: Any, where: str) -> None:
    """Accepts the mask forms of ``resolve_mask`` (Predicate, mask function, bool pytree) but ``None``."""
    if selector is None:
        raise TypeError(
            f"param_groups: {where} selector is None; to select every leaf use masks.everything()"
        )
    if isinstance(selector, Predicate) or is_mask_function(selector):
        return
    if isinstance(selector, str):
        raise TypeError(
            f"param_groups: {where} selector must be {_SELECTOR_FORMS}, got the string {selector!r}; "
            f"for a path pattern use masks.path_matches({selector!r})"
        )
    bad = [x for x in jax.tree.leaves(selector) if not _is_bool_scalar(x)]
    if bad:
        raise TypeError(
            f"param_groups: {where} selector must be {_SELECTOR_FORMS}; got {type(selector).__name__} "
            f"{_brief(selector)} with the non-bool leaf {_brief(bad[0])}"
        )


def _check_groups(groups: Any) -> list[tuple[Any, dict[str, Any]]]:
    """Checks the ``(selector, overrides)`` pairs; returns them with the overrides as dicts."""
    if isinstance(groups, (str, bytes, Mapping)) or not isinstance(groups, Sequence):
        raise TypeError(
            f"param_groups: groups must be a sequence of (selector, overrides) pairs, got "
            f"{type(groups).__name__} {_brief(groups)}"
        )
    checked = []
    for index, group in enumerate(groups):
        where = f"groups[{index}]"
        if not (isinstance(group, (tuple, list)) and len(group) == 2):
            hint = ""
            if isinstance(group, Mapping):
                hint = " (a torch-style dict; write (selector, {hyperparameter: value}) instead)"
            elif index == 0 and len(groups) == 2 and isinstance(groups[1], Mapping):
                hint = " (one group must still sit in a list: [(selector, overrides)])"
            raise TypeError(
                f"param_groups: {where} must be a (selector, overrides) pair, got "
                f"{type(group).__name__} {_brief(group)}{hint}"
            )
        selector, overrides = group
        _check_selector(selector, where)
        if not isinstance(overrides, Mapping):
            raise TypeError(
                f"param_groups: {where} overrides must be a mapping of optimizer_fn keywords to values "
                f"(e.g. {{'weight_decay': 0.0}}), got {type(overrides).__name__} {_brief(overrides)}"
            )
        checked.append((selector, dict(overrides)))
    return checked


def _keyword_names(fn: Callable[..., Any]) -> tuple[str, ...] | None:
    """The names ``fn`` accepts as keywords; ``None`` when it takes ``**kwargs`` or has no signature."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return tuple(name for name, p in signature.parameters.items() if p.kind in kinds)


def _check_keys(
    kwargs: Mapping[Any, Any], where: str, accepted: tuple[str, ...] | None, fn_name: str
) -> None:
    if accepted is None:
        return
    for key in kwargs:
        if key in accepted:
            continue
        hint = ""
        if key in _TORCH_NAMES:
            ours = _TORCH_NAMES[key]
            hint = f" (torch's {key} is {ours} here)" if ours else f" (torch's {key} has no counterpart here)"
        raise TypeError(
            f"param_groups: {where} key {key!r} is not a keyword of {fn_name}{hint}; "
            f"valid keywords: {', '.join(accepted)}"
        )


def _check_inner_mask(kwargs: Mapping[str, Any], where: str) -> None:
    """Refuses a bool-tree ``mask``: inside a group it could never match the group's subtree."""
    mask = kwargs.get("mask")
    if mask is None or isinstance(mask, Predicate) or is_mask_function(mask):
        return
    leaves = jax.tree.leaves(mask)
    if not (leaves and all(_is_bool_scalar(x) for x in leaves)):
        return  # not a bool tree at all: optimizer_fn's own check reports it, naming the group
    raise TypeError(
        f"param_groups: {where} mask is a {type(mask).__name__} of bools, but each group's optimizer sees "
        "only its own leaves (optax.MaskedNode stands for the others), so a full-structure mask cannot "
        "match; give mask as a masks.Predicate or a callable params -> bool pytree"
    )


def _build(optimizer_fn: Callable[..., Any], kwargs: dict[str, Any], where: str) -> Any:
    """``optimizer_fn(**kwargs)``, its own construction errors prefixed with the group they came from."""
    try:
        built = optimizer_fn(**kwargs)
    except (TypeError, ValueError) as error:
        try:
            wrapped = type(error)(f"param_groups: {where} ({_show_kwargs(kwargs)}): {error}")
        except Exception:  # an exception type with another constructor: keep the original
            raise error from None
        raise wrapped from error
    if not (hasattr(built, "init") and hasattr(built, "update")):
        raise TypeError(
            f"param_groups: optimizer_fn {_name_of(optimizer_fn)} must return a gradient transformation "
            f"with init and update; for {where} it returned {type(built).__name__} {_brief(built)}"
        )
    return built


# ---------------------------------------------------------------------------------- labelling


def _group_flags(selectors: Sequence[Any], tree: Any) -> list[list[bool]]:
    """Per group, one flag per leaf of ``tree``: whether the group's selector matches it."""
    return [
        resolve_mask(selector, tree, f"param_groups groups[{index}] selector")
        for index, selector in enumerate(selectors)
    ]


def _first_match(flags: list[list[bool]], leaf_count: int) -> list[int | None]:
    """Per leaf, the index of the first group that matches it, ``None`` when none does."""
    owners: list[int | None] = []
    for leaf in range(leaf_count):
        owners.append(next((index for index, group in enumerate(flags) if group[leaf]), None))
    return owners


def _labeler(selectors: Sequence[Any]) -> Callable[[Any], Any]:
    """The ``param_labels`` function for ``optax.multi_transform``: a tree of group labels.

    optax calls it on the params at ``init`` and on the updates at every ``update``; it reads
    only paths, shapes and the tree structure, so both give the same labels, also under ``jit``.
    """

    def labels(tree: Any) -> Any:
        count = len(jax.tree.leaves(tree))
        owners = _first_match(_group_flags(selectors, tree), count)
        names = [DEFAULT_LABEL if owner is None else _label(owner) for owner in owners]
        return jax.tree.unflatten(jax.tree.structure(tree), names)

    return labels


class _ParamGroupsTransform(Transform):
    """A :class:`Transform` that prints each group's selector and overrides above its optimizer."""

    def __repr__(self) -> str:
        blocks = []
        for heading, part in zip(self.hyperparams["groups"], self.parts):
            body = "\n".join("    " + line for line in repr(part).splitlines())
            blocks.append(f"\n  {heading}:\n{body},")
        return f"{self.name}({''.join(blocks)}\n)"

    __str__ = __repr__


# ------------------------------------------------------------------------------------ public


def param_groups(
    optimizer_fn: Callable[..., optax.GradientTransformation],
    groups: Sequence[tuple[Any, Mapping[str, Any]]],
    **defaults: Any,
) -> Transform:
    r"""One optimizer with per-group hyperparameters, like the param groups of ``torch.optim``.

    Every leaf belongs to exactly one group: the first ``(selector, overrides)`` pair whose
    selector matches it, or, when none does, the default group. Group :math:`i` runs

    .. math:: \mathrm{optimizer\_fn}(\mathrm{defaults} \cup \mathrm{overrides}_i)

    (an override replaces the default of the same name) on its own leaves only, with its own
    state; the default group runs ``optimizer_fn(**defaults)``. Since each group's optimizer
    sees only its leaves, any per-leaf rule (Adam's moments, decoupled decay, momentum) gives
    exactly what it would give on those leaves alone, which is how torch treats its groups.

    The routing is ``optax.multi_transform`` with the labels ``"group_0"``, ``"group_1"``, ...,
    ``"default"``, computed with :func:`~optim_chain.masks.resolve_mask` from the leaf paths
    and shapes (at ``init`` on the params, at each ``update`` on the updates). The state is
    optax's ``PartitionState``; ``state.inner_states["group_1"]`` is group 1's optimizer state.
    A group whose selector matches no leaf is allowed; its optimizer is built and holds an
    empty state.

    Masks inside a group: ``optax.multi_transform`` hands each group's optimizer a tree in which
    the other groups' leaves are ``optax.MaskedNode()``. A ``mask=`` passed to that optimizer
    (in ``defaults`` or in an override) must therefore be a :class:`~optim_chain.masks.Predicate`
    or a callable ``params -> bool pytree`` such as :func:`~optim_chain.masks.default_decay_mask`,
    which are evaluated on the subtree it sees; a bool tree with the full params' structure
    could not match that subtree and is refused here.

    Args:
      optimizer_fn: a function returning a gradient transformation, usually a preset such as
        :func:`optim_chain.adamw` (any optax optimizer factory works too).
      groups: ``(selector, overrides)`` pairs, in priority order. ``selector`` is any mask form
        of :mod:`optim_chain.masks`: a ``Predicate``, a callable ``params -> bool pytree`` or a
        bool pytree with the params' structure (checked against the params at ``init``).
        ``overrides`` maps keywords of ``optimizer_fn`` to the values this group uses.
      **defaults: keywords of ``optimizer_fn`` shared by all groups; they alone must make a
        valid call, since the default group is always built.

    Returns:
      A :class:`~optim_chain.Transform` named ``"param_groups"`` whose ``parts`` are the groups'
      optimizers (group 0 first, the default group last) and whose ``hyperparams`` hold
      ``optimizer_fn``, ``defaults``, one description per group and ``labels`` (the function
      ``params -> tree of group labels`` that routes the leaves); ``print()`` shows the groups.

    Raises:
      TypeError: ``optimizer_fn`` is not callable, ``groups`` is not a sequence of pairs, an
        ``overrides`` is not a mapping, a key is not a keyword of ``optimizer_fn``, a selector
        is not a mask form, or an inner ``mask`` is a bool tree. Errors that ``optimizer_fn``
        raises for a group's values name that group.

    Example::

      >>> import optim_chain as oc
      >>> from optim_chain import masks
      >>> groups = [
      ...     (masks.name_is("bias") | masks.ndim_at_most(1), {"weight_decay": 0.0}),
      ...     (masks.path_matches(r"^embed/"), {"learning_rate": 3e-4}),
      ... ]
      >>> opt = oc.param_groups(oc.adamw, groups, learning_rate=1e-3, weight_decay=0.1, b2=0.95)
      >>> [part.name for part in opt.parts]     # group 0, group 1, the default group
      ['adamw', 'adamw', 'adamw']

    Differences from torch: a leaf in two groups goes to the first (torch refuses it); a leaf in
    no group is optimized with ``defaults`` (torch leaves it alone; to freeze leaves, wrap the
    optimizer in ``optax.masked``); hyperparameters are fixed at construction (use schedules
    to change them over time, not assignments to ``param_groups[i]["lr"]``); the names are the
    optimizer function's (``learning_rate``, ``b1``/``b2``), not torch's (``lr``, ``betas``).
    """
    if not callable(optimizer_fn):
        raise TypeError(
            f"param_groups: optimizer_fn must be a callable returning a gradient transformation "
            f"(e.g. oc.adamw), got {type(optimizer_fn).__name__} {_brief(optimizer_fn)}"
        )
    fn_name = _name_of(optimizer_fn)
    checked = _check_groups(groups)
    accepted = _keyword_names(optimizer_fn)
    _check_keys(defaults, "defaults", accepted, fn_name)
    _check_inner_mask(defaults, "defaults")
    for index, (_, overrides) in enumerate(checked):
        _check_keys(overrides, f"groups[{index}] overrides", accepted, fn_name)
        _check_inner_mask(overrides, f"groups[{index}] overrides")

    transforms: dict[Hashable, optax.GradientTransformation] = {}
    headings: list[str] = []
    for index, (selector, overrides) in enumerate(checked):
        transforms[_label(index)] = _build(optimizer_fn, {**defaults, **overrides}, f"groups[{index}]")
        headings.append(f"{_label(index)} [{_show_selector(selector)}] {_show_kwargs(overrides)}")
    transforms[DEFAULT_LABEL] = _build(optimizer_fn, dict(defaults), "the default group")
    headings.append(f"{DEFAULT_LABEL} [leaves no selector matches] {_show_kwargs(defaults)}")

    labeler = _labeler([selector for selector, _ in checked])
    combined = optax.multi_transform(transforms, labeler)
    return _ParamGroupsTransform(
        combined.init,
        combined.update,
        name="param_groups",
        hyperparams={
            "optimizer_fn": optimizer_fn,
            "defaults": dict(defaults),
            "groups": tuple(headings),
            "labels": labeler,
        },
        parts=tuple(transforms.values()),
    )


def describe_param_groups(params: Any, groups: Sequence[tuple[Any, Mapping[str, Any]]]) -> str:
    """A table of every parameter: path, shape, dtype and the group it falls in.

    The group is given as its index and overrides, or ``default`` for leaves no selector
    matches; as in :func:`param_groups` the first matching group wins. The table ends with one
    line per group counting its leaves and scalar parameters, and says when a group matches no
    leaf, or only leaves that an earlier group already took.

    Args:
      params: the parameter pytree (linen dict, ``FrozenDict``, NNX ``State`` ...).
      groups: the ``(selector, overrides)`` pairs given to :func:`param_groups`.

    Returns:
      The table as text.

    Example::

      >>> import jax.numpy as jnp, optim_chain as oc
      >>> from optim_chain import masks
      >>> params = {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}
      >>> print(oc.describe_param_groups(params, [(masks.ndim_at_most(1), {"weight_decay": 0.0})]))
      path    shape   dtype    group
      bias    (3,)    float32  0: weight_decay=0.0
      kernel  (4, 3)  float32  default
      group 0 [ndim_at_most(1)] weight_decay=0.0: 1 leaf, 3 parameters
      default: 1 leaf, 12 parameters
      total: 2 leaves, 15 parameters in 2 groups
    """
    checked = _check_groups(groups)
    items = leaves_with_paths(params)
    flags = _group_flags([selector for selector, _ in checked], params)
    owners = _first_match(flags, len(items))

    def group_text(owner: int | None) -> str:
        return DEFAULT_LABEL if owner is None else f"{owner}: {_show_kwargs(checked[owner][1])}"

    rows = [
        (path, str(tuple(np.shape(x))), str(getattr(x, "dtype", type(x).__name__)), group_text(owner))
        for (path, x), owner in zip(items, owners)
    ]
    widths = [
        max([len(title)] + [len(row[col]) for row in rows]) for col, title in enumerate(("path", "shape"))
    ]
    dtype_width = max([len("dtype")] + [len(row[2]) for row in rows])
    lines = [f"{'path':<{widths[0]}}  {'shape':<{widths[1]}}  {'dtype':<{dtype_width}}  group"]
    for path, shape, dtype, group in rows:
        lines.append(f"{path:<{widths[0]}}  {shape:<{widths[1]}}  {dtype:<{dtype_width}}  {group}")

    def counts(owner: int | None) -> tuple[int, int]:
        mine = [x for (_, x), o in zip(items, owners) if o == owner]
        return len(mine), sum(int(np.size(x)) for x in mine)

    for index, (selector, overrides) in enumerate(checked):
        leaves, size = counts(index)
        note = ""
        if leaves == 0:
            note = (
                " (matches no leaf)"
                if not any(flags[index])
                else " (every leaf it matches is in an earlier group)"
            )
        lines.append(
            f"group {index} [{_show_selector(selector)}] {_show_kwargs(overrides)}: "
            f"{_count(leaves, 'leaf', 'leaves')}, {_count(size, 'parameter', 'parameters')}{note}"
        )
    leaves, size = counts(None)
    total = sum(int(np.size(x)) for _, x in items)
    lines.append(f"default: {_count(leaves, 'leaf', 'leaves')}, {_count(size, 'parameter', 'parameters')}")
    lines.append(
        f"total: {_count(len(items), 'leaf', 'leaves')}, {_count(total, 'parameter', 'parameters')} "
        f"in {_count(len(checked) + 1, 'group', 'groups')}"
    )
    return "\n".join(lines)
