"""Small pytree helpers used by several transforms."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

INT32_MAX = jnp.iinfo(jnp.int32).max


def zeros_like(tree: Any, dtype: Any = None) -> Any:
    """Zeros shaped like ``tree``'s leaves that keep each leaf's sharding, also under ``jax.jit``.

    ``jnp.zeros_like`` of a traced array has no data dependence on it, so inside ``jit`` the
    compiler is free to place the result on one device. Deriving the zeros from the leaf
    itself (``|x * 0|``, with non-finite entries replaced) makes sharding propagation carry the
    leaf's layout over to the state, and still yields exact positive zeros.
    """

    def leaf_zeros(x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        target = x.dtype if dtype is None else jnp.dtype(dtype)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.zeros(x.shape, target)
        return jnp.where(jnp.isfinite(x), jnp.abs(x * 0), 0).astype(target)

    return jax.tree.map(leaf_zeros, tree)


def full_like(tree: Any, value: float, dtype: Any = None) -> Any:
    """Like :func:`zeros_like` but filled with ``value``."""
    return jax.tree.map(lambda z: z + jnp.asarray(value, z.dtype), zeros_like(tree, dtype))


def increment(count: jax.Array) -> jax.Array:
    """Adds one to an int32 step counter, saturating at the largest int32 instead of wrapping."""
    return jnp.where(count < INT32_MAX, count + 1, INT32_MAX).astype(jnp.int32)


def compute_dtype(dtype: Any) -> jnp.dtype:
    """The dtype in which scalar factors for a ``dtype`` leaf are computed (at least float32)."""
    return jnp.promote_types(dtype, jnp.float32)


def path_to_str(path: tuple[Any, ...]) -> str:
    """Joins a jax key path with ``/``, dropping the ``.value`` of Flax NNX variables."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    while parts and parts[-1] in ("value", "raw_value"):
        parts.pop()
    return "/".join(parts)


def leaf_paths(tree: Any) -> list[str]:
    """The ``/``-joined path of every leaf of ``tree``, in flattening order."""
    return [path_to_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def check_same_structure(updates: Any, params: Any, what: str = "updates") -> None:
    """Raises a ``ValueError`` naming the first path where ``updates`` and ``params`` differ."""
    if jax.tree.structure(updates) == jax.tree.structure(params):
        return
    ours, theirs = leaf_paths(updates), leaf_paths(params)
    for index, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            raise ValueError(
                f"{what} and params differ in structure at leaf {index}: {what} has "
                f"{a!r} where params has {b!r}"
            )
    if len(ours) != len(theirs):
        longer, name = (ours, what) if len(ours) > len(theirs) else (theirs, "params")
        extra = longer[min(len(ours), len(theirs))]
        raise ValueError(
            f"{what} has {len(ours)} leaves and params has {len(theirs)}; "
            f"first unmatched leaf {extra!r} is only in {name}"
        )
    raise ValueError(
        f"{what} and params have the same leaf paths but different container types: "
        f"{jax.tree.structure(updates)} vs {jax.tree.structure(params)}"
    )
