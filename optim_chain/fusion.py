"""One pass over memory per step: the whole update fused into one loop per parameter array.

An optimizer step is memory-bound. AdamW must read ``theta, g, m, v`` and write ``theta, m, v``:
28 bytes per float32 parameter. Compiled by XLA:CPU, a chain (optim_chain's or optax's) runs as
several loops instead: one writes ``m``, one ``v``, and the parameter loop reads the new ``m`` and
``v`` back from memory (40 bytes per parameter; 48 for Adam+L2, whose loops each rebuild
``g + lambda * theta``).

:func:`single_pass` removes the read-back. It runs the wrapped transform once per group of
outputs (the update, and every part of the state shaped like the params: ``m``, ``v``, ...), so
that each output is computed from the step's *inputs* alone. With XLA:CPU's multi-output fusion
switched on, the loops that read the same inputs then merge into one loop per parameter array
that reads ``theta, g, m, v`` once and writes ``theta, m, v`` once.

One obstacle had to be taken care of: XLA's common-subexpression elimination would merge the
recomputed ``b1 * m`` back into the stored one, and under multi-output fusion a producer shared
by two outputs is written to a temporary array. So each group reads its inputs through its own
exact identity (``x * 1``, ``x + (-0.0)``, ``x / 1``, ``x - 0``; exact for every float, signed
zeros, infinities and NaN included) whose constant sits behind ``lax.optimization_barrier``,
which makes the expressions distinct to the compiler.

The arithmetic is the plain transform's, operation for operation. What changes is the loops it
is compiled into, and with them the places where the compiler contracts a multiply and an add
into one fused multiply-add: results equal the plain transform's or differ by one rounding
(at most one unit in the last place of each array's largest entry, in the tests).

Multi-output fusion is a process-wide XLA option; set it before jax starts::

    XLA_FLAGS=--xla_backend_extra_options=xla_cpu_use_multi_output_fusion python train.py

Without it the groups compile to separate loops that each read the inputs again, which is
slower than the plain transform; ``single_pass(...).init`` warns on a CPU backend without the
option.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
import optax

from optim_chain._tree import shaped_like
from optim_chain.transform import Transform

#: The XLA flag that turns on multi-output fusion in XLA:CPU.
MULTI_OUTPUT_FUSION_FLAG = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"

# Exact identities, one per group of outputs: (constant, operation). The first operation of each
# differs, so no two groups share a subexpression the compiler could merge.
_IDENTITIES: tuple[tuple[float, Callable[[jax.Array, jax.Array], jax.Array]], ...] = (
    (1.0, lambda x, c: x * c),
    (-0.0, lambda x, c: x + c),
    (1.0, lambda x, c: x / c),
    (0.0, lambda x, c: x - c),
)


def multi_output_fusion_enabled() -> bool:
    """Whether ``XLA_FLAGS`` (as this process sees it) turns on XLA:CPU's multi-output fusion."""
    return "xla_cpu_use_multi_output_fusion" in os.environ.get("XLA_FLAGS", "")


def _through_identity(tree: Any, group: int) -> Any:
    """``tree`` with every floating-point (real or complex) leaf passed through identity number ``group``."""
    value, operation = _IDENTITIES[group]
    constants: dict[np.dtype, jax.Array] = {}

    def leaf(x: Any) -> Any:
        if not (hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)):
            return x
        dtype = np.dtype(x.dtype)
        if dtype not in constants:
            constants[dtype] = jax.lax.optimization_barrier(jnp.asarray(value, dtype))
        return operation(x, constants[dtype])

    return jax.tree.map(leaf, tree)


def _traced_arrays(tree: Any) -> bool:
    """Whether every leaf of ``tree`` is an array and some are tracers (the step is being traced)."""
    leaves = jax.tree.leaves(tree)
    arrays = all(isinstance(x, (jax.Array, np.ndarray, np.generic)) for x in leaves)
    return arrays and any(isinstance(x, jax.core.Tracer) for x in leaves)


def single_pass(inner: optax.GradientTransformation) -> Transform:
    r"""Computes each output of ``inner`` from the step's inputs, so that a step fuses into one pass.

    The result is the same transformation: ``single_pass(t).update`` performs the operations of
    ``t.update`` and returns a state of the same structure; only the compiled program changes
    (values equal, or one rounding apart where the compiler contracts a multiply-add
    differently). Each part of the new state shaped like the params (``m``, ``v``, a momentum buffer)
    is computed by its own run of ``inner.update``, on inputs passed through an exact identity
    that the compiler cannot see through; the update and the remaining state (step counters)
    come from a plain run. Nothing computed elementwise is then shared between outputs, so with
    XLA:CPU's multi-output fusion (:data:`MULTI_OUTPUT_FUSION_FLAG`) the loops writing
    :math:`\theta_t`, :math:`m_t` and :math:`v_t` merge into one loop per parameter array that
    moves the minimum, 28 bytes per float32 parameter for AdamW:

    .. math:: (\theta_{t-1}, g_t, m_{t-1}, v_{t-1}) \mapsto (\theta_t, m_t, v_t)
       \quad\text{in one pass.}

    Under a trace the runs are calls of one ``jax.jit`` of ``inner.update``, traced once per
    input shapes (when every input leaf is an array) and lowered to one function that each run
    calls, so that compiling costs about what the plain transform's does; the compiler inlines
    the calls and removes what each run does not need. Called eagerly, each run executes
    ``inner.update`` operation by operation, exactly as ``inner`` does. Up to four groups get
    their own run; a fifth and later share the plain run (the same values, no longer one pass).

    Args:
      inner: any gradient transformation: a preset, a chain of primitives, an optax optimizer.

    Returns:
      A :class:`~optim_chain.Transform` with ``inner`` as its only part.

    Example (run with ``XLA_FLAGS=--xla_backend_extra_options=xla_cpu_use_multi_output_fusion``
    on a CPU, where ``init`` otherwise warns)::

        >>> import warnings, jax.numpy as jnp, optim_chain as oc
        >>> opt = oc.single_pass(oc.adamw(1e-3, weight_decay=1e-2))
        >>> params = {"w": jnp.ones((4, 4))}
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     state = opt.init(params)
        >>> updates, state = opt.update(params, state, params)   # oc.adamw's values
        >>> updates["w"].shape
        (4, 4)

    ``init`` warns (``UserWarning``) on a CPU backend without multi-output fusion: there each
    group compiles to its own loop reading the inputs again, and the step gets slower.
    """
    if not (hasattr(inner, "init") and hasattr(inner, "update")):
        raise TypeError(f"single_pass takes a gradient transformation with init and update, got {inner!r}")

    def init(params: Any) -> Any:
        # checked here, not at construction: asking for the backend starts it, and a program may
        # still have to call jax.distributed.initialize after building its optimizer
        if jax.default_backend() == "cpu" and not multi_output_fusion_enabled():
            warnings.warn(
                "single_pass needs XLA:CPU's multi-output fusion to fuse the step into one pass; "
                "without it the step is slower than the plain transform. Set "
                f"XLA_FLAGS={MULTI_OUTPUT_FUSION_FLAG} before jax starts",
                UserWarning,
                stacklevel=2,
            )
        return inner.init(params)

    def run(updates: Any, state: Any, params: Any, extra: dict[str, Any]) -> tuple[Any, Any]:
        return inner.update(updates, state, params, **extra)

    # Traced once per input shapes and reused by every group: the runs cost one trace of
    # ``inner`` (and lower to one function called once per group) instead of one trace each.
    traced_run = jax.jit(run)

    def update(updates: Any, state: Any, params: Any = None, **extra: Any) -> tuple[Any, Any]:
        if params is None:
            return inner.update(updates, state, params, **extra)
        # Eagerly, every operation runs on its own, as in ``inner``: no compiling. A leaf that is
        # not an array (a Python flag, say) would become a tracer inside jit.
        call = traced_run if _traced_arrays((updates, state, params, extra)) else run
        new_updates, new_state = call(updates, state, params, extra)
        is_group = shaped_like(params)
        nodes, treedef = jax.tree.flatten(new_state, is_leaf=is_group)
        groups = [i for i, node in enumerate(nodes) if is_group(node)][: len(_IDENTITIES)]
        for group, index in enumerate(groups):
            u, s, p = _through_identity((updates, state, params), group)
            _, group_state = call(u, s, p, extra)
            nodes[index] = jax.tree.flatten(group_state, is_leaf=is_group)[0][index]
        return new_updates, jax.tree.unflatten(treedef, nodes)

    return Transform(init, update, name="single_pass", parts=(inner,))
