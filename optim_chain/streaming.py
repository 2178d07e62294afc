r"""Taking an optimizer step in one pass over memory: :func:`update_and_apply`.

An optimizer step is memory-bound. Adam with decoupled decay in float32 has to read the
parameters, the gradients and both moments and write the parameters and both moments back:
``7 * 4 = 28`` bytes per parameter, and nothing more is needed. Written the usual way,

.. code-block:: python

    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)

XLA:CPU compiles one loop per array it has to write (the new ``m``, the new ``v``, the new
parameters). The last loop reads ``m`` and ``v`` back from memory after the first two wrote
them: about 40 bytes per parameter, 1.4 times the minimum. This is the same for ``optax.adamw``
and for a chain of optim_chain primitives.

:func:`update_and_apply` computes the same step cache-block by cache-block. It traces the chain
once on the real tree (so masks, schedules and every transform behave exactly as in
``opt.update``), checks that what it traced is elementwise, and then runs that computation
over slices of ``chunk_size`` elements: the loops that write ``m``, ``v`` and the parameters
for one slice run back to back while the slice is still in cache, so main memory sees each
array once. Every element goes through the same operations as in ``opt.update`` followed by
``optax.apply_updates``, so the result is identical bit for bit.

Example::

    >>> import functools, jax, optim_chain as oc
    >>> opt = oc.adamw(1e-3, weight_decay=0.1)
    >>> @functools.partial(jax.jit, donate_argnums=(0, 2))
    ... def train_step(params, grads, state):
    ...     return oc.update_and_apply(opt, grads, state, params)

Donate the parameters and the state (``donate_argnums``) so the step can write in place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import optax

from optim_chain._tree import check_same_structure

DEFAULT_CHUNK_SIZE = 1 << 18
"""Elements per slice: 1 MiB per float32 array, so a slice of every array stays in cache."""

# Primitives that act element by element; their results for one element depend only on that
# element of each array operand (rank-0 operands are broadcast).
_ELEMENTWISE = frozenset(
    """
    abs acos acosh add and asin asinh atan atan2 atanh cbrt ceil clamp convert_element_type
    copy copy_p cos cosh div eq erf erf_inv erfc exp exp2 expm1 floor ge gt imag integer_pow
    is_finite le lgamma digamma log log1p logistic lt max min mul ne neg nextafter not or pow
    real reduce_precision rem round rsqrt select_n sign sin sinh sqrt square sub tan tanh xor
    """.split()
)

# Primitives that call a sub-computation; it is inlined and checked like the rest.
_CALLS = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "custom_vjp_call_jaxpr": "fun_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
}


@dataclasses.dataclass(frozen=True)
class _Const:
    value: Any


@dataclasses.dataclass
class _Op:
    primitive: Any
    inputs: list[Any]  # value ids (int) or _Const
    outputs: list[int]
    params: dict[str, Any]


@dataclasses.dataclass
class _Program:
    """A traced step with every call inlined: values are numbered, ops listed in order."""

    avals: list[Any] = dataclasses.field(default_factory=list)
    ops: list[_Op] = dataclasses.field(default_factory=list)
    arrays: dict[int, Any] = dataclasses.field(default_factory=dict)  # array constants by id

    def new(self, aval: Any) -> int:
        self.avals.append(aval)
        return len(self.avals) - 1


def _inline(program: _Program, jaxpr: Any, consts: Sequence[Any], args: Sequence[Any]) -> list[Any]:
    """Appends ``jaxpr``'s equations to ``program``; returns the ids/constants of its outputs."""
    env: dict[Any, Any] = {}

    def read(atom: Any) -> Any:
        if isinstance(atom, jex.core.Literal):
            return _Const(atom.val)
        return env[atom]

    for var, value in zip(jaxpr.constvars, consts):
        if np.shape(value):
            env[var] = program.new(var.aval)
            program.arrays[env[var]] = value
        else:
            env[var] = _Const(value)
    for var, value in zip(jaxpr.invars, args):
        env[var] = value
    for eqn in jaxpr.eqns:
        inputs = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name in _CALLS and _CALLS[name] in eqn.params:
            inner = eqn.params[_CALLS[name]]
            inner_consts = getattr(inner, "consts", ())
            inner_jaxpr = getattr(inner, "jaxpr", inner)
            outputs = _inline(program, inner_jaxpr, inner_consts, inputs)
            for var, value in zip(eqn.outvars, outputs):
                env[var] = value
            continue
        outputs = [program.new(v.aval) for v in eqn.outvars]
        program.ops.append(_Op(eqn.primitive, inputs, outputs, dict(eqn.params)))
        for var, value in zip(eqn.outvars, outputs):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _shape(program: _Program, ref: Any) -> tuple[int, ...]:
    if isinstance(ref, _Const):
        return tuple(np.shape(ref.value))
    return tuple(program.avals[ref].shape)


class _Groups:
    """Union-find over the ids of array values: an elementwise op joins its arrays."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, items: Sequence[int]) -> None:
        roots = [self.find(x) for x in items]
        for r in roots[1:]:
            self.parent[r] = roots[0]


def _not_elementwise(op: _Op, why: str) -> ValueError:
    return ValueError(
        f"update_and_apply needs a chain whose step acts element by element, but the traced "
        f"step contains {op.primitive.name} ({why}); use opt.update with optax.apply_updates "
        f"(or chunk_size=None) for this chain"
    )


def _classify(program: _Program, op: _Op) -> bool:
    """True when ``op`` produces arrays (and is elementwise), False when it is scalar-only."""
    out_shapes = [_shape(program, o) for o in op.outputs]
    in_shapes = [_shape(program, i) for i in op.inputs]
    if all(s == () for s in out_shapes):
        if any(s != () for s in in_shapes):
            raise _not_elementwise(op, "it reduces an array to a scalar")
        return False
    if len(op.outputs) != 1:
        raise _not_elementwise(op, "it has several outputs")
    out = out_shapes[0]
    name = op.primitive.name
    if name == "broadcast_in_dim":
        if in_shapes[0] != () or any(s != () for s in in_shapes[1:]):
            raise _not_elementwise(op, "it broadcasts an array, not a scalar")
        return True
    if name not in _ELEMENTWISE:
        raise _not_elementwise(op, "not an elementwise primitive")
    if any(s not in ((), out) for s in in_shapes):
        raise _not_elementwise(op, f"operand shapes {in_shapes} differ from its output {out}")
    return True


def _zero_after(x: jax.Array) -> jax.Array:
    """An int32 zero computed from the first element of ``x``.

    Adding it to an offset makes a write wait for ``x`` without changing where it writes: the
    compiler then orders the in-place writes of one slice after each other instead of
    copying whole buffers to keep them apart. Every bit pattern gives zero (two shifts by
    half the width), so NaN or infinite values do not move the write.
    """
    first = jnp.ravel(x)[0]
    if first.dtype == jnp.bool_:
        first = first.astype(jnp.uint8)
    bits = jnp.dtype(first.dtype).itemsize * 8
    word = jax.lax.bitcast_convert_type(first, jnp.dtype(f"uint{bits}"))
    half = jnp.asarray(bits // 2, word.dtype)
    return jax.lax.shift_right_logical(jax.lax.shift_right_logical(word, half), half).astype(jnp.int32)


@dataclasses.dataclass
class _Block:
    """The elementwise ops of one group of same-shaped arrays, with its inputs and outputs."""

    shape: tuple[int, ...]
    ops: list[_Op] = dataclasses.field(default_factory=list)
    inputs: list[int] = dataclasses.field(default_factory=list)  # program inputs the ops read
    outputs: list[int] = dataclasses.field(default_factory=list)  # program outputs they compute
    targets: dict[int, int] = dataclasses.field(default_factory=dict)  # output -> input it overwrites
    dtypes: dict[int, Any] = dataclasses.field(default_factory=dict)  # dtype of each output


def _slicing(shape: tuple[int, ...], chunk_size: int) -> tuple[tuple[int, ...], int]:
    """The shape to slice along its first axis, and how many of its rows make one slice.

    Arrays are sliced by rows in their own shape when a row is at most ``chunk_size``
    elements (no reshape, so writes stay in place); otherwise they are viewed as flat.
    """
    row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    if len(shape) >= 1 and row <= chunk_size:
        return shape, max(1, chunk_size // row)
    return (int(np.prod(shape, dtype=np.int64)),), chunk_size


def update_and_apply(
    opt: optax.GradientTransformation,
    grads: Any,
    state: Any,
    params: Any,
    *,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    **extra_args: Any,
) -> tuple[Any, Any]:
    r"""``opt.update`` followed by ``optax.apply_updates``, streamed through memory once.

    .. math::
       (u_t, s_t) = \mathrm{opt.update}(g_t, s_{t-1}, \theta_{t-1}), \qquad
       \theta_t = \theta_{t-1} + u_t

    computed slice by slice (about ``chunk_size`` elements of every array at a time) so that
    XLA:CPU reads and writes each parameter, gradient and state buffer once per step instead
    of reading freshly written moments back. Each element goes through the same primitives as
    in the two-line form; the chain stays an ordinary composition of separate transforms.
    Arrays of at most ``chunk_size`` elements are updated whole, exactly as in the two-line
    form.

    Use it inside ``jax.jit`` with the parameters and the state donated. It applies to chains
    whose step acts element by element, as every optim_chain primitive does (masks,
    schedules and step counters included); a chain with a reduction, such as
    ``optax.clip_by_global_norm``, is refused with a ``ValueError`` when traced. Meant for
    arrays on one device.

    Args:
      opt: the gradient transformation (a preset, a chain, any optax transformation).
      grads: the gradients, a tree like ``params``.
      state: ``opt``'s state.
      params: the parameters before the step.
      chunk_size: elements per slice (a positive int), or ``None`` for the plain two-line form.
      **extra_args: passed on to ``opt.update``.

    Returns:
      ``(new_params, new_state)``, as ``optax.apply_updates(params, u), s`` would give with
      ``u, s = opt.update(grads, state, params)``.

    Example::

      >>> opt = oc.adamw(1e-3, weight_decay=0.1)
      >>> step = jax.jit(lambda p, g, s: oc.update_and_apply(opt, g, s, p), donate_argnums=(0, 2))
      >>> params, state = step(params, grads, state)
    """
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    check_same_structure(grads, params, "grads")

    def step(grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
        updates, new_state = opt.update(grads, state, params, **extra_args)
        return optax.apply_updates(params, updates), new_state

    if chunk_size is None:
        return step(grads, state, params)
    chunk_size = int(chunk_size)

    closed, out_shape = jax.make_jaxpr(step, return_shape=True)(grads, state, params)
    g_leaves, s_leaves, p_leaves = (jax.tree.leaves(t) for t in (grads, state, params))
    program = _Program()
    input_ids = [program.new(v.aval) for v in closed.jaxpr.invars]
    outputs = _inline(program, closed.jaxpr, closed.consts, input_ids)

    groups = _Groups()
    array_ops: list[_Op] = []
    scalar_ops: list[_Op] = []
    for op in program.ops:
        if _classify(program, op):
            array_ops.append(op)
            groups.join([i for i in (*op.inputs, *op.outputs) if isinstance(i, int) and _shape(program, i)])
        else:
            scalar_ops.append(op)

    env: dict[int, Any] = {i: jnp.asarray(x) for i, x in zip(input_ids, (*g_leaves, *s_leaves, *p_leaves))}
    env.update(program.arrays)
    for op in scalar_ops:
        _evaluate(op, env, None)

    blocks: dict[int, _Block] = {}
    read_by_ops: set[int] = set()
    for op in array_ops:
        block = blocks.setdefault(groups.find(op.outputs[0]), _Block(_shape(program, op.outputs[0])))
        block.ops.append(op)
        for ref in op.inputs:
            if isinstance(ref, int) and ref in env and _shape(program, ref):
                read_by_ops.add(ref)
                if ref not in block.inputs:
                    block.inputs.append(ref)

    # The buffer each output may overwrite: new params <- params, new state <- state.
    n_g, n_s = len(g_leaves), len(s_leaves)
    partner = [*range(n_g + n_s, n_g + n_s + len(p_leaves)), *range(n_g, n_g + n_s)]
    computed = {o for op in array_ops for o in op.outputs}
    for index, ref in enumerate(outputs):
        if not (isinstance(ref, int) and ref in computed):
            continue
        block = blocks[groups.find(ref)]
        if ref in block.outputs:
            continue
        block.outputs.append(ref)
        block.dtypes[ref] = program.avals[ref].dtype
        source = input_ids[partner[index]]
        same_group = groups.find(source) == groups.find(ref) or source not in read_by_ops
        if (
            same_group
            and program.avals[source].shape == program.avals[ref].shape
            and program.avals[source].dtype == program.avals[ref].dtype
            and source not in block.targets.values()
        ):
            block.targets[ref] = source

    # Blocks that fit in one slice run whole; larger ones share one loop per sliced shape.
    loops: dict[tuple[tuple[int, ...], int], list[_Block]] = {}
    for block in blocks.values():
        if not block.outputs:
            continue
        view, rows = _slicing(block.shape, chunk_size)
        if view[0] <= rows:
            local = dict(env)
            for op in block.ops:
                _evaluate(op, local, block.shape)
            env.update({ref: local[ref] for ref in block.outputs})
        else:
            loops.setdefault((view, rows), []).append(block)
    for (view, rows), same in loops.items():
        _run_sliced(same, view, rows, scalar_ops, env)

    values = [ref.value if isinstance(ref, _Const) else env[ref] for ref in outputs]
    return jax.tree.unflatten(jax.tree.structure(out_shape), values)


def _evaluate(op: _Op, env: dict[int, Any], shape: tuple[int, ...] | None) -> None:
    """Binds ``op`` on the values in ``env``; ``shape`` is the array shape of this evaluation."""
    values = [ref.value if isinstance(ref, _Const) else env[ref] for ref in op.inputs]
    params = op.params
    if op.primitive.name == "broadcast_in_dim" and shape is not None:
        params = dict(params, shape=shape, broadcast_dimensions=())
        if "sharding" in params:
            params["sharding"] = None
    results = op.primitive.bind(*values, **params)
    env.update(zip(op.outputs, results if op.primitive.multiple_results else [results]))


def _slice_step(
    block: _Block,
    buffers: dict[int, jax.Array],
    env: dict[int, Any],
    scalar_ops: list[_Op],
    start: Any,
    rows: int,
) -> tuple[dict[int, jax.Array], list[jax.Array]]:
    """Computes ``block`` on rows ``[start, start + rows)`` and writes them into ``buffers``.

    ``buffers`` maps each output to its destination; an input whose buffer is a destination
    is read from it, so that a loop carries a single version of every buffer. The writes are
    chained through :func:`_zero_after` so that XLA orders them instead of copying buffers.
    """
    local = dict(env)
    for op in scalar_ops:  # recomputed here so that XLA simplifies them as in the plain form
        _evaluate(op, local, None)
    source = {inp: out for out, inp in block.targets.items()}
    for ref in block.inputs:
        array = buffers[source[ref]] if ref in source else env[ref]
        local[ref] = jax.lax.dynamic_slice_in_dim(array, start, rows, axis=0)
    shape = (rows, *next(iter(buffers.values())).shape[1:])
    for op in block.ops:
        _evaluate(op, local, shape)
    written = dict(buffers)
    offset = start
    for ref in block.outputs:
        written[ref] = jax.lax.dynamic_update_slice_in_dim(buffers[ref], local[ref], offset, axis=0)
        offset = start + _zero_after(jax.lax.dynamic_slice_in_dim(written[ref], offset, 1, axis=0))
    return written, [local[ref] for ref in block.outputs]


def _run_sliced(
    blocks: list[_Block],
    view: tuple[int, ...],
    rows: int,
    scalar_ops: list[_Op],
    env: dict[int, Any],
) -> None:
    """Runs ``blocks`` (all of shape ``view`` once reshaped) slice by slice in one loop."""
    viewed = dict(env)
    carried = []
    for block in blocks:
        for ref in block.inputs:
            viewed[ref] = env[ref].reshape(view)
        carried.append(
            {
                ref: viewed[block.targets[ref]]
                if ref in block.targets
                else jnp.zeros(view, block.dtypes[ref])
                for ref in block.outputs
            }
        )
    count, tail = divmod(view[0], rows)
    if tail:  # the last, shorter slice first, so that the loop's results are the outputs
        carried = [
            _slice_step(b, bufs, viewed, scalar_ops, count * rows, tail)[0] for b, bufs in zip(blocks, carried)
        ]
    keep = bool(__import__("os").environ.get("OC_KEEP", "1") == "1")

    def body(i: jax.Array, carry: tuple) -> tuple:
        buffers, previous = carry
        start = i * rows
        for temps in previous:
            for t in temps:
                start = start + _zero_after(t)
        steps = [_slice_step(b, bufs, viewed, scalar_ops, start, rows) for b, bufs in zip(blocks, buffers)]
        return [w for w, _ in steps], ([s for _, s in steps] if keep else [])

    if keep:
        scratch = [
            [jnp.zeros((rows, *view[1:]), block.dtypes[ref]) for ref in block.outputs] for block in blocks
        ]
    else:
        scratch = []
    carried, _ = jax.lax.fori_loop(0, count, body, (carried, scratch))
    for block, buffers in zip(blocks, carried):
        for ref in block.outputs:
            env[ref] = buffers[ref].reshape(block.shape)
