"""Small pytree helpers used by several transforms."""

from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

INT32_MAX = jnp.iinfo(jnp.int32).max


def state_dtype(param_dtype: Any, dtype: Any = None) -> np.dtype:
    """The dtype a buffer for a ``param_dtype`` leaf is stored in, given a requested ``dtype``.

    ``None`` keeps the parameter's dtype. A real ``dtype`` asked for a complex parameter gives
    the complex dtype of that precision (``float32`` -> ``complex64``): a complex buffer holds
    one real buffer per component, as ``torch.view_as_real`` sees it. A complex ``dtype`` is
    kept as asked for every parameter, as optax keeps it (for a real parameter the imaginary
    part stays zero, and what the transform passes on stays real: :func:`emitted_dtype`).
    """
    param_dtype = np.dtype(param_dtype)
    if dtype is None:
        return param_dtype
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(param_dtype, jnp.complexfloating) and not jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.promote_types(dtype, jnp.complex64)
    return dtype


def zeros_like(tree: Any, dtype: Any = None) -> Any:
    """Zeros shaped like ``tree``'s leaves that keep each leaf's sharding, also under ``jax.jit``.

    ``jnp.zeros_like`` of a traced array has no data dependence on it, so inside ``jit`` the
    compiler is free to place the result on one device. Deriving the zeros from the leaf
    itself (``|x * 0|``, with non-finite entries replaced) makes sharding propagation carry the
    leaf's layout over to the state, and still yields exact positive zeros. An abstract leaf
    (``jax.ShapeDtypeStruct``) gives concrete zeros of its shape, on its sharding when it names
    one. ``dtype`` is read by :func:`state_dtype` (complex leaves keep complex buffers).
    """

    def leaf_zeros(x: Any) -> jax.Array:
        if isinstance(x, jax.ShapeDtypeStruct):
            return jnp.zeros(x.shape, state_dtype(x.dtype, dtype), device=x.sharding)
        x = jnp.asarray(x)
        target = state_dtype(x.dtype, dtype)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.zeros(x.shape, target)
        return jnp.where(jnp.isfinite(x), jnp.abs(x * 0), 0).astype(target)

    return jax.tree.map(leaf_zeros, tree)


def full_like(tree: Any, value: float, dtype: Any = None) -> Any:
    """Like :func:`zeros_like` but filled with ``value``; both components of a complex leaf hold it."""

    def fill(z: jax.Array) -> jax.Array:
        complex_leaf = jnp.issubdtype(z.dtype, jnp.complexfloating)
        if complex_leaf:  # value may be a traced array (inject_hyperparams), so no complex(value, value)
            real = jnp.real(jnp.asarray(value)).astype(jnp.finfo(z.dtype).dtype)
            return z + jax.lax.complex(real, real)
        return z + jnp.asarray(value, z.dtype)

    return jax.tree.map(fill, zeros_like(tree, dtype))


def map_pair(fn: Any, tree: Any, *others: Any) -> tuple[Any, Any]:
    """``jax.tree.map`` for a ``fn`` that returns a pair: returns the two trees (empty trees too)."""
    leaves, treedef = jax.tree.flatten(tree)
    rest = [treedef.flatten_up_to(other) for other in others]
    pairs = [fn(*xs) for xs in zip(leaves, *rest)]
    return treedef.unflatten([p[0] for p in pairs]), treedef.unflatten([p[1] for p in pairs])


def per_dtype(make: Any) -> Any:
    """Memoizes ``make(dtype)``: a scalar factor is traced once per dtype and step, not per leaf.

    Transforms call it inside ``update`` (a fresh cache per trace), so that a tree of many
    leaves adds one set of scalar operations to the compiled program instead of one per leaf.
    """
    cache: dict[Any, Any] = {}

    def get(dtype: Any) -> Any:
        key = jnp.dtype(dtype)
        if key not in cache:
            cache[key] = make(key)
        return cache[key]

    return get


def shaped_like(params: Any) -> Any:
    """A predicate: whether a node has ``params``' tree structure and leaf shapes (``m``, ``v``, a buffer).

    The structure and shapes of ``params`` are read once; use it as ``is_leaf`` to stop a
    flattening of an optimizer state at its params-shaped parts.
    """
    structure = jax.tree.structure(params)
    shapes = [np.shape(x) for x in jax.tree.leaves(params)]

    def check(node: Any) -> bool:
        if jax.tree.structure(node) != structure:
            return False
        leaves = jax.tree.leaves(node)
        return bool(leaves) and [np.shape(x) for x in leaves] == shapes

    return check


def increment(count: jax.Array) -> jax.Array:
    """Adds one to an int32 step counter, saturating at the largest int32 instead of wrapping."""
    return jnp.where(count < INT32_MAX, count + 1, INT32_MAX).astype(jnp.int32)


def cast(x: jax.Array, dtype: Any) -> jax.Array:
    """``x.astype(dtype)``; ``x`` itself when it already is a ``dtype`` array that is not weakly typed.

    The value is the same either way (jax elides such a conversion). Skipping the call keeps
    tracing cheap: ``astype`` runs several layers of Python per call, and the per-leaf functions
    of a chain call it a dozen times per leaf, most of them on leaves already in their dtype.
    """
    if x.dtype == dtype and not getattr(x, "weak_type", False):
        return x
    if jnp.iscomplexobj(x) and not jnp.issubdtype(dtype, jnp.complexfloating):
        x = jnp.real(x)  # only for a complex state of a real parameter, whose imaginary part is zero
    return x.astype(dtype)


def emitted_dtype(stored: Any, incoming: Any) -> jnp.dtype:
    """The dtype a transform passes on from a ``stored`` state leaf and an ``incoming`` leaf.

    The wider of the two, but real whenever ``incoming`` is real: a complex state kept for a
    real parameter (a complex ``moment_dtype``) has a zero imaginary part, and a real
    parameter's updates stay real.
    """
    dtype = jnp.promote_types(stored, incoming)
    if jnp.issubdtype(dtype, jnp.complexfloating) and not jnp.issubdtype(incoming, jnp.complexfloating):
        return jnp.dtype(jnp.finfo(dtype).dtype)
    return dtype


def compute_dtype(dtype: Any) -> jnp.dtype:
    """The dtype in which a ``dtype`` leaf's arithmetic runs: at least float32 (complex stays complex)."""
    return jnp.promote_types(dtype, jnp.float32)


def scalar_dtype(dtype: Any) -> jnp.dtype:
    """The real dtype of the scalar factors (rates, decays) applied to a ``dtype`` leaf.

    That of :func:`compute_dtype`, or its real counterpart for a complex leaf: hyperparameters
    are real, and a real factor scales both components of a complex entry alike.
    """
    return jnp.dtype(jnp.finfo(compute_dtype(dtype)).dtype)


def path_to_str(path: tuple[Any, ...]) -> str:
    """Joins a jax key path with ``/``: dict keys, sequence indices and attribute names as they are."""
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
    return "/".join(parts)


def _is_nnx_variable(node: Any) -> bool:
    """Whether ``node`` is a Flax NNX ``Variable`` (``nnx.Param``, ``nnx.BatchStat`` ...).

    Read from ``sys.modules``: when flax.nnx was never imported no such object can exist, and
    the library does not import Flax for it.
    """
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(node, nnx.Variable)


def leaves_with_paths(tree: Any) -> list[tuple[str, Any]]:
    """Every leaf of ``tree`` with its ``/``-joined path, in flattening order.

    A Flax NNX ``Variable`` is named by where it sits, not by the attribute holding its array
    (``"Linear_0/kernel"``, not ``"Linear_0/kernel/value"``). Every other key is kept, so a
    leaf that is really named ``value`` (an Equinox field, a linen ``self.param("value")``)
    keeps its name.
    """
    items = []
    for path, node in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_nnx_variable)[0]:
        name = path_to_str(path)
        if _is_nnx_variable(node):
            items.extend((name, leaf) for leaf in jax.tree.leaves(node))
        else:
            items.append((name, node))
    return items


def leaf_paths(tree: Any) -> list[str]:
    """The ``/``-joined path of every leaf of ``tree``, in flattening order (:func:`leaves_with_paths`)."""
    return [name for name, _ in leaves_with_paths(tree)]


def check_same_structure(updates: Any, params: Any, what: str = "updates", against: str = "params") -> None:
    """Raises a ``ValueError`` naming the first path where ``updates`` and ``params`` differ.

    ``what`` and ``against`` are the names the message gives the two trees.
    """
    if jax.tree.structure(updates) == jax.tree.structure(params):
        return
    ours, theirs = leaf_paths(updates), leaf_paths(params)
    only_ours = [p for p in ours if p not in set(theirs)]
    only_theirs = [p for p in theirs if p not in set(ours)]
    if only_ours or only_theirs:
        detail = []
        if only_theirs:
            detail.append(f"leaves of {against} missing from {what}: {only_theirs[:5]}")
        if only_ours:
            detail.append(f"leaves of {what} not in {against}: {only_ours[:5]}")
        raise ValueError(f"{what} and {against} differ in structure; " + "; ".join(detail))
    if ours != theirs:
        index = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        raise ValueError(
            f"{what} and {against} hold the same leaves in a different order: leaf {index} is "
            f"{ours[index]!r} in {what} and {theirs[index]!r} in {against}"
        )
    raise ValueError(
        f"{what} and {against} have the same leaf paths but different containers (or None "
        f"placeholders): {jax.tree.structure(updates)} vs {jax.tree.structure(params)}"
    )


def check_matching(updates: Any, reference: Any, what: str = "updates", against: str = "params") -> None:
    """Like :func:`check_same_structure`, and also checks that every pair of leaves has one shape.

    Shapes are static, so under ``jax.jit`` this costs nothing at run time. Without it a
    gradient of shape ``(3, 1)`` against a state of shape ``(3,)`` would broadcast silently.
    """
    check_same_structure(updates, reference, what, against)
    for (path, a), b in zip(leaves_with_paths(updates), jax.tree.leaves(reference)):
        if np.shape(a) != np.shape(b):
            raise ValueError(
                f"{what} leaf {path!r} has shape {tuple(np.shape(a))} but {against} has "
                f"shape {tuple(np.shape(b))} there"
            )


def leaf_dtype(leaf: Any) -> np.dtype:
    """The dtype of an array, a ``jax.ShapeDtypeStruct`` or a Python/NumPy scalar leaf."""
    return np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.result_type(leaf)


def is_numeric(leaf: Any) -> bool:
    """Whether ``leaf`` is an array, an abstract array or a number (not a function, string ...)."""
    return (hasattr(leaf, "dtype") and hasattr(leaf, "shape")) or isinstance(leaf, (int, float, complex))


def check_float_params(params: Any, transform: str) -> None:
    """Raises a ``TypeError`` naming the first leaf of ``params`` that is not floating point.

    Real and complex floating-point leaves are optimized (complex ones as pairs of reals, like
    ``torch.view_as_real``). Integer and boolean leaves (step counters, masks, token ids) have
    no gradient step to take: an optimizer state for them would be integer moments and
    truncated updates, silently wrong. Functions, strings and other non-array leaves (an
    unfiltered Equinox model holds its activation functions and sizes) are not parameters.
    Either must be kept out of the optimized tree.
    """
    for path, leaf in leaves_with_paths(params):
        if not is_numeric(leaf):
            raise TypeError(
                f"{transform}: parameter {path!r} is a {type(leaf).__name__}, not an array. Give the "
                "optimizer only the arrays of a model: for Equinox, eqx.filter(model, eqx.is_array); for "
                "Flax NNX, nnx.state(model, nnx.Param)"
            )
        dtype = leaf_dtype(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{transform}: parameter {path!r} has dtype {np.dtype(dtype).name}; only "
                "floating-point (real or complex) leaves can be optimized. Keep integer and boolean "
                "leaves out of the params given to the optimizer (filter the tree, for Equinox "
                "eqx.filter(model, eqx.is_inexact_array), or wrap the optimizer in optax.masked)"
            )
