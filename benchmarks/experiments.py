"""Attempts at an AdamW step below optax's 40 bytes per parameter on XLA:CPU.

Each experiment times its candidates round-robin in one process, next to the in-place
streaming bandwidth measured the same way, and prints one table. BENCHMARKS.md records what
they measured.

    python benchmarks/experiments.py mof      # XLA's CPU multi-output fusion (a compiler option)
    python benchmarks/experiments.py layout   # m and v in one buffer, interleaved or stacked
    python benchmarks/experiments.py sliced   # the step in cache-sized slices, written in place
    python benchmarks/experiments.py schedule # leaf by leaf: XLA's memory-optimized scheduler
    python benchmarks/experiments.py odd      # 256 one-dimensional leaves of odd and even lengths
    python benchmarks/experiments.py grouped  # 1,024 leaves: small leaves concatenated inside the step
    python benchmarks/experiments.py overhead # 1,024 leaves: the cost of the tree itself, and flat state
    python benchmarks/experiments.py realtree # Flax BERT's tree: big leaves, small leaves, work per element

Options: ``--size 10M`` (parameters, one float32 leaf), ``--repeats 15``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optim_chain as oc
from optim_chain import _hlo
from optim_chain.lab.bench import parse_size

LR, WD, B1, B2, EPS = 1e-3, 1e-2, 0.9, 0.999, 1e-8
MOF_FLAG = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"


def rotate(cases: dict[str, Callable[[], None]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds of each case, run in turns (ABC, CBA, ...)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for round_ in range(warmup + repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            cases[name]()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def stream_case(size: int) -> Callable[[], None]:
    """In-place ``a += b / 2``: 12 bytes per element."""
    b = jnp.ones(size, jnp.float32)
    box = [jnp.ones(size, jnp.float32)]
    add = jax.jit(lambda a, b: a + b * 0.5, donate_argnums=0)

    def run() -> None:
        box[0] = add(box[0], b)
        box[0].block_until_ready()

    return run


def step_case(step: Callable, *args: Any, donate: tuple[int, ...]) -> tuple[Callable[[], None], str]:
    """A compiled step whose outputs feed its next call; returns it and its optimized HLO."""
    compiled = jax.jit(step, donate_argnums=donate).lower(*args).compile()
    box = [args]

    def run() -> None:
        outputs = compiled(*box[0])
        jax.block_until_ready(outputs)
        box[0] = (*outputs, *box[0][len(outputs) :])

    return run, compiled.as_text()


def applied(opt: optax.GradientTransformation) -> Callable:
    """The step ``(params, state, grads) -> (params, state)`` of ``opt``, updates applied."""

    def step(p, s, g):
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s

    return step


def report(size: int, found: dict[str, float], texts: dict[str, str]) -> None:
    bandwidth = 12 * size / found.pop("stream a += b") / 1e6  # GB/s
    floor = 28 * size / bandwidth / 1e6
    print(
        f"{size:,} float32 parameters, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, load {os.getloadavg()}"
    )
    print(f"streaming {bandwidth:.1f} GB/s, floor (28 B/param) {floor:.2f} ms")
    base = found.get("optax.adamw")
    print(f"{'case':34s} {'ms':>8s} {'x floor':>8s} {'x optax':>8s} {'loops':>6s} {'HLO B/param':>12s}")
    for name, ms in found.items():
        shape = _hlo.structure(texts[name], size) if name in texts else None
        loops = "" if shape is None else str(shape.array_loops)
        moved = "" if shape is None or shape.while_loops else f"{shape.bytes_per_element:.1f}"
        ratio = f"{ms / base:8.2f}" if base else ""
        print(f"{name:34s} {ms:8.2f} {ms / floor:8.2f} {ratio:>8s} {loops:>6s} {moved:>12s}")


def plain_cases(size: int) -> tuple[dict[str, Callable[[], None]], dict[str, str]]:
    cases, texts = {}, {}
    g = jnp.full(size, 1e-3, jnp.float32)
    for name, opt in [("optax.adamw", optax.adamw(LR, weight_decay=WD)), ("oc.adamw", oc.adamw(LR, WD))]:
        p = jnp.ones(size, jnp.float32)
        cases[name], texts[name] = step_case(applied(opt), p, opt.init(p), g, donate=(0, 1))
    return cases, texts


# ------------------------------------------------------------------- compiler option: MOF


def _parent_runs_both_settings(experiment: str, *options: str) -> bool:
    """In the parent process: runs ``experiment`` again in one child per XLA setting (default
    options, then multi-output fusion) and returns True; in a child, returns False."""
    if os.environ.get("EXPERIMENT_CHILD"):
        return False
    for flags in ("", MOF_FLAG):
        env = dict(os.environ, EXPERIMENT_CHILD="1", XLA_FLAGS=flags)
        subprocess.run([sys.executable, __file__, experiment, *options], env=env, check=True)
        print()
    return True


def mof(args: argparse.Namespace) -> None:
    """Times optax and optim_chain with and without multi-output fusion (one process each)."""
    if _parent_runs_both_settings("mof", f"--size={args.size}", f"--repeats={args.repeats}"):
        return
    cases, texts = plain_cases(args.size)
    cases["stream a += b"] = stream_case(args.size)
    report(args.size, rotate(cases, args.repeats), texts)


# ------------------------------------------------------------------- state layout


def _adamw_separate(p, m, v, t, g):
    t = t + 1
    m = B1 * m + (1 - B1) * g
    v = B2 * v + (1 - B2) * g * g
    u = (m / (1 - B1 ** t.astype(jnp.float32))) / (jnp.sqrt(v / (1 - B2 ** t.astype(jnp.float32))) + EPS)
    return p - LR * u - LR * WD * p, m, v, t


def _adamw_interleaved(p, mv, t, g):  # mv[:, 0] = m, mv[:, 1] = v
    t = t + 1
    d = jnp.asarray([B1, B2], jnp.float32)
    mv = mv * d + (1 - d) * jnp.stack([g, g * g], -1)
    u = (mv[:, 0] / (1 - B1 ** t.astype(jnp.float32))) / (
        jnp.sqrt(mv[:, 1] / (1 - B2 ** t.astype(jnp.float32))) + EPS
    )
    return p - LR * u - LR * WD * p, mv, t


def _adamw_stacked(p, mv, t, g):  # mv[0] = m, mv[1] = v
    t = t + 1
    d = jnp.asarray([B1, B2], jnp.float32)[:, None]
    mv = mv * d + (1 - d) * jnp.stack([g, g * g], 0)
    u = (mv[0] / (1 - B1 ** t.astype(jnp.float32))) / (
        jnp.sqrt(mv[1] / (1 - B2 ** t.astype(jnp.float32))) + EPS
    )
    return p - LR * u - LR * WD * p, mv, t


def layout(args: argparse.Namespace) -> None:
    """The same AdamW, written by hand with m and v apart, interleaved and stacked."""
    n = args.size
    p, g, t = jnp.ones(n, jnp.float32), jnp.full(n, 1e-3, jnp.float32), jnp.int32(0)
    cases, texts = plain_cases(n)
    zeros = jnp.zeros(n, jnp.float32)
    cases["m, v apart (by hand)"], texts["m, v apart (by hand)"] = step_case(
        _adamw_separate, p, zeros, zeros + 0, t, g, donate=(0, 1, 2)
    )
    cases["m, v interleaved [N, 2]"], texts["m, v interleaved [N, 2]"] = step_case(
        _adamw_interleaved, p + 0, jnp.zeros((n, 2), jnp.float32), t, g, donate=(0, 1)
    )
    cases["m, v stacked [2, N]"], texts["m, v stacked [2, N]"] = step_case(
        _adamw_stacked, p + 0, jnp.zeros((2, n), jnp.float32), t, g, donate=(0, 1)
    )
    cases["stream a += b"] = stream_case(n)
    report(n, rotate(cases, args.repeats), texts)


# ------------------------------------------------------------------- cache-sized slices


def _zero_after(x: jax.Array) -> jax.Array:
    """An int32 zero that XLA cannot know is zero without reading ``x[0]`` (two half-width shifts)."""
    word = jax.lax.bitcast_convert_type(jnp.ravel(x)[0], jnp.uint32)
    half = jnp.uint32(16)
    return jax.lax.shift_right_logical(jax.lax.shift_right_logical(word, half), half).astype(jnp.int32)


def sliced_step(opt: optax.GradientTransformation, size: int, rows: int) -> Callable:
    """The step on ``rows`` elements at a time, written in place with dynamic_update_slice.

    Valid for elementwise chains on one flat leaf (every optim_chain preset is elementwise).
    The scalar state (step counters) is advanced once, from a one-element slice. Each slice's
    writes are chained through a zero read back from the previous write, so XLA orders them
    rather than copying whole buffers. ``size`` must be a multiple of ``rows``.
    """

    def step(p, s, g):
        def body(i, carry):
            p, s = carry
            start = i * rows
            cut = lambda x: jax.lax.dynamic_slice_in_dim(x, start, rows) if x.ndim else x  # noqa: E731
            u, new = opt.update(cut(g), jax.tree.map(cut, s), cut(p))
            offset = start
            p = jax.lax.dynamic_update_slice_in_dim(p, cut(p) + u, offset, 0)
            last = p  # the buffer written last; the next write waits for it
            leaves, treedef = jax.tree.flatten(s)
            written = []
            for old, value in zip(leaves, jax.tree.leaves(new)):
                if old.ndim:
                    offset = start + _zero_after(jax.lax.dynamic_slice_in_dim(last, offset, 1))
                    old = last = jax.lax.dynamic_update_slice_in_dim(old, value, offset, 0)
                written.append(old)
            return p, jax.tree.unflatten(treedef, written)

        head = lambda x: x[:1] if x.ndim else x  # noqa: E731
        _, counters = opt.update(g[:1], jax.tree.map(head, s), p[:1])
        p, s = jax.lax.fori_loop(0, size // rows, body, (p, s))
        s = jax.tree.map(lambda arr, scalar: arr if arr.ndim else scalar, s, counters)
        return p, s

    return step


def sliced(args: argparse.Namespace) -> None:
    """Plain steps against the sliced in-place step at three slice sizes."""
    n = args.size
    cases, texts = plain_cases(n)
    g = jnp.full(n, 1e-3, jnp.float32)
    for rows in (65536, 262144, 1048576):
        if n % rows:
            continue
        opt = oc.adamw(LR, WD)
        p = jnp.ones(n, jnp.float32)
        name = f"oc.adamw in slices of {rows}"
        cases[name], texts[name] = step_case(sliced_step(opt, n, rows), p, opt.init(p), g, donate=(0, 1))
    cases["stream a += b"] = stream_case(n)
    report(n, rotate(cases, args.repeats), texts)


# ------------------------------------------------------------------- schedule


MEMORY_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def leaf_major(text: str) -> float:
    """Fraction of consecutive array loops in the entry computation that work on the same leaf.

    With three loops per leaf (m, v, parameters), 2/3 means every leaf's loops run back to
    back, so its freshly written m and v are still in cache when the parameter loop reads them.
    """
    entry = text[text.index("ENTRY") :]
    leaves = []
    for line in entry.splitlines():
        if " fusion(" not in line or "= f32[] " in line or "= s32[] " in line:
            continue
        operands = line.split(" fusion(", 1)[1]
        names = [
            n[4:] for n in operands.replace(",", " ").replace(")", " ").split() if n[:4] in ("%g__", "%p__")
        ]
        leaves.append(names[0] if names else operands[:40])
    same = sum(a == b for a, b in zip(leaves, leaves[1:]))
    return same / max(len(leaves) - 1, 1)


def schedule(args: argparse.Namespace) -> None:
    """The transformer-like tree with XLA's default and memory-optimized CPU schedulers."""
    from optim_chain.lab.bench import make_params

    params, grads = make_params(args.size, "tree", jax.devices("cpu")[0])
    cases, texts, order = {}, {}, {}
    for name, opt in [("optax.adamw", optax.adamw(LR, weight_decay=WD)), ("oc.adamw", oc.adamw(LR, WD))]:
        for label, options in [("", {}), (" memory scheduler", MEMORY_SCHEDULER)]:
            p = jax.tree.map(jnp.copy, params)
            lowered = jax.jit(applied(opt), donate_argnums=(0, 1)).lower(p, opt.init(p), grads)
            compiled = lowered.compile(options)
            box = [(p, opt.init(p))]

            def run(compiled=compiled, box=box) -> None:
                box[0] = compiled(box[0][0], box[0][1], grads)
                jax.block_until_ready(box[0])

            cases[name + label], texts[name + label] = run, compiled.as_text()
            order[name + label] = leaf_major(texts[name + label])
    cases["stream a += b"] = stream_case(args.size)
    found = rotate(cases, args.repeats)
    report(args.size, found, texts)
    for name, fraction in order.items():
        print(f"{name:34s} consecutive loops on the same leaf: {fraction:.2f}")


# ------------------------------------------------------------------- odd lengths


def odd(args: argparse.Namespace) -> None:
    """oc.adamw on 256 leaves of about 78k elements: odd, even and 2-D shapes, against one leaf.

    XLA:CPU splits each loop into one task per core; when the tasks do not divide the length,
    every element of the loop is bounds-checked (``--xla_dump_to`` shows it in the kernel's IR).
    """
    shapes = {
        "one leaf of 20,000,000": (1, (20_000_000,)),
        "256 x (78128,)": (256, (78128,)),
        "256 x (78124,)": (256, (78124,)),
        "256 x (78126,)": (256, (78126,)),
        "256 x (78125,)": (256, (78125,)),
        "256 x (125, 625)": (256, (125, 625)),
    }
    cases = {}
    for name, (count, shape) in shapes.items():
        opt = oc.adamw(LR, WD)
        params = {f"p{i:03d}": jnp.ones(shape, jnp.float32) for i in range(count)}
        grads = jax.tree.map(lambda x: x * 1e-3, params)
        cases[name], _ = step_case(applied(opt), params, opt.init(params), grads, donate=(0, 1))
    found = rotate(cases, args.repeats)
    base = found["one leaf of 20,000,000"]
    for name, ms in found.items():
        count, shape = shapes[name]
        elements = count * int(np.prod(shape))
        print(f"{name:24s} {ms:8.2f} ms  {ms * 1e6 / elements:6.3f} ns/element  {ms / base:5.2f}x one leaf")


# ------------------------------------------------------------------- grouped small leaves


def _arrays(shapes: dict, scale: float, rng: np.random.Generator) -> dict:
    """Float32 arrays of the given shapes, standard normal times ``scale``, drawn in order from ``rng``."""
    return {k: jnp.asarray(rng.standard_normal(s, dtype=np.float32) * scale) for k, s in shapes.items()}


def tree_1024(vectors: int = 512, width: int = 512, matrices: int = 512, columns: int = 75) -> dict:
    """A tree of 1,024 leaves: 512 vectors of 512 and 512 matrices (512, 75); 19,922,944 in all."""
    shapes = {f"v{i:03d}": (width,) for i in range(vectors)}
    shapes.update({f"w{i:03d}": (width, columns) for i in range(matrices)})
    return shapes


def grouped_step(opt: optax.GradientTransformation, params: dict, threshold: int, barrier: bool = False):
    """oc.adamw's step with every leaf under ``threshold`` elements concatenated inside the step.

    Params, grads and both moments of the small leaves are concatenated into one vector each,
    the chain's own ``update`` runs on ``{small: vector, big leaves...}`` and the results are
    sliced back per leaf: the state the step takes and returns keeps its per-leaf layout.
    Valid for an elementwise chain whose first state is a ``MomentsState(mu, nu)``. With
    ``barrier`` the grouped results pass through ``lax.optimization_barrier`` before they are
    sliced, so that XLA computes them as whole vectors instead of fusing the arithmetic into
    every slice.
    """
    small = [k for k in sorted(params) if params[k].size < threshold]
    big = [k for k in sorted(params) if params[k].size >= threshold]
    shapes = {k: params[k].shape for k in small}
    offsets, start = {}, 0
    for k in small:
        offsets[k] = start
        start += params[k].size

    def join(tree: dict) -> dict:
        out = {k: tree[k] for k in big}
        if small:
            out["__small__"] = jnp.concatenate([jnp.ravel(tree[k]) for k in small])
        return out

    def split(tree: dict) -> dict:
        out = {k: tree[k] for k in big}
        for k in small:
            n = int(np.prod(shapes[k]))
            out[k] = tree["__small__"][offsets[k] : offsets[k] + n].reshape(shapes[k])
        return out

    def step(p, s, g):
        moments = s[0]
        state = (moments._replace(mu=join(moments.mu), nu=join(moments.nu)), *s[1:])
        gp = join(p)
        updates, state = opt.update(join(g), state, gp)
        new_p, moments = optax.apply_updates(gp, updates), state[0]
        if barrier:
            new_p, moments = jax.lax.optimization_barrier((new_p, moments))
        return split(new_p), (moments._replace(mu=split(moments.mu), nu=split(moments.nu)), *state[1:])

    return step


def hlo_counts(text: str, elements: int) -> str:
    """Fusions, array loops, HLO bytes per element and the entry's unfused copies, slices, concatenates."""
    shape = _hlo.structure(text, elements)
    entry = text[text.index("ENTRY") :]
    ops = {op: len(re.findall(rf"= [^=]*? {op}\(", entry)) for op in ("copy", "slice", "concatenate")}
    fused_slices = len(re.findall(r"= [^=]*? slice\(", text)) - ops["slice"]
    return (
        f"fusions {shape.fusions}, array loops {shape.array_loops}, "
        f"HLO B/param {shape.bytes_per_element:.1f}, entry copies {ops['copy']}, "
        f"entry slices {ops['slice']}, entry concatenates {ops['concatenate']}, "
        f"slices inside fusions {fused_slices}"
    )


def grouped(args: argparse.Namespace) -> None:
    """oc.adamw and optax.adamw on the 1,024-leaf tree, the grouped step, and one leaf."""
    if _parent_runs_both_settings("grouped", f"--repeats={args.repeats}"):
        return
    shapes = tree_1024()
    rng = np.random.default_rng(0)
    params, grads = _arrays(shapes, 0.02, rng), _arrays(shapes, 1e-3, rng)
    total = sum(int(np.prod(s)) for s in shapes.values())

    steps = {
        "(a) oc.adamw tree": (oc.adamw(LR, WD), applied(oc.adamw(LR, WD))),
        "(b) optax.adamw tree": (optax.adamw(LR, weight_decay=WD), applied(optax.adamw(LR, weight_decay=WD))),
    }
    for threshold in (65536, 4096):
        opt = oc.adamw(LR, WD)
        steps[f"(c) grouped, leaves < {threshold}"] = (opt, grouped_step(opt, params, threshold))
        steps[f"(c) grouped < {threshold}, barrier"] = (opt, grouped_step(opt, params, threshold, True))
    cases, texts, compiled = {}, {}, {}
    for name, (opt, step) in steps.items():
        p = jax.tree.map(jnp.copy, params)
        start = time.perf_counter()
        compiled[name] = jax.jit(step, donate_argnums=(0, 1)).lower(p, opt.init(p), grads).compile()
        print(f"compiled {name} in {time.perf_counter() - start:.1f} s", flush=True)
        box = [(p, opt.init(p))]

        def run(c=compiled[name], box=box) -> None:
            box[0] = c(box[0][0], box[0][1], grads)
            jax.block_until_ready(box[0])

        cases[name], texts[name] = run, compiled[name].as_text()

    # Exactness: three steps of each grouped variant against (a), from the same start.
    def three(name: str, opt) -> tuple[Any, Any]:
        p, s = jax.tree.map(jnp.copy, params), opt.init(params)
        for _ in range(3):
            p, s = compiled[name](p, s, grads)
        return p, s

    reference = three("(a) oc.adamw tree", oc.adamw(LR, WD))
    for name in steps:
        if name.startswith("(a)"):
            continue
        got = three(name, steps[name][0])
        # Params always; the state too where its structure is oc.adamw's (not optax's).
        same_tree = jax.tree.structure(reference) == jax.tree.structure(got)
        pairs = list(zip(*(jax.tree.leaves(r if same_tree else r[0]) for r in (reference, got))))
        diffs = [float(jnp.max(jnp.abs(a - b))) for a, b in pairs]
        same = all(bool(jnp.array_equal(a, b)) for a, b in pairs)
        what = "params and state" if same_tree else "params"
        print(f"{name} vs (a), 3 steps, {what}: bit-identical {same}, max |difference| {max(diffs):.3g}")

    for name, opt in [("(d) oc.adamw one leaf", oc.adamw(LR, WD)), ("(d) optax.adamw one leaf", None)]:
        opt = opt or optax.adamw(LR, weight_decay=WD)
        p = jnp.asarray(rng.standard_normal(total, dtype=np.float32) * 0.02)
        g = jnp.full(total, 1e-3, jnp.float32)
        run, text = step_case(applied(opt), p, opt.init(p), g, donate=(0, 1))
        cases[name], texts[name] = run, text

    found = rotate(cases, args.repeats)
    leaf = found["(d) oc.adamw one leaf"]
    print(
        f"{len(shapes)} leaves, {total:,} float32 parameters, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"median of {args.repeats} steps, load {os.getloadavg()}"
    )
    print(f"{'case':34s} {'ms':>8s} {'/ oc leaf':>10s}")
    for name, ms in found.items():
        print(f"{name:34s} {ms:8.2f} {ms / leaf:10.2f}")
    for name, text in texts.items():
        print(f"{name:34s} {hlo_counts(text, total)}")


def sgd_step(p, g):
    """The least a step can do: read ``theta, g`` and write ``theta`` (one loop per leaf)."""
    return jax.tree.map(lambda x, y: x - LR * y, p, g)


def flat_adamw_step(shapes: dict, write: str) -> Callable:
    """AdamW on a tree whose ``m`` and ``v`` are each one flat vector (the params stay a tree).

    Each leaf reads its slice of the old ``m`` and ``v``; the new ones are written back either
    by one ``concatenate`` of all leaves or by one in-place ``dynamic_update_slice`` per leaf.
    """
    keys = sorted(shapes)
    sizes = {k: int(np.prod(shapes[k])) for k in keys}
    offsets = dict(zip(keys, np.cumsum([0] + [sizes[k] for k in keys])[:-1].tolist()))

    def step(p, m, v, count, g):
        count = count + 1
        c1, c2 = 1 - B1**count, 1 - B2**count
        new_p, ms, vs = {}, [], []
        for k in keys:
            start, n = offsets[k], sizes[k]
            mk = B1 * m[start : start + n].reshape(shapes[k]) + (1 - B1) * g[k]
            vk = B2 * v[start : start + n].reshape(shapes[k]) + (1 - B2) * g[k] * g[k]
            new_p[k] = p[k] - LR * ((mk / c1) / (jnp.sqrt(vk / c2) + EPS) + WD * p[k])
            ms.append(mk.ravel())
            vs.append(vk.ravel())
        if write == "concatenate":
            return new_p, jnp.concatenate(ms), jnp.concatenate(vs), count
        for k, mk, vk in zip(keys, ms, vs):
            m = jax.lax.dynamic_update_slice(m, mk, (offsets[k],))
            v = jax.lax.dynamic_update_slice(v, vk, (offsets[k],))
        return new_p, m, v, count

    return step


def overhead(args: argparse.Namespace) -> None:
    """What 1,024 leaves cost by themselves, and AdamW with its state in flat vectors."""
    shapes = tree_1024()
    total = sum(int(np.prod(s)) for s in shapes.values())
    tiny = {f"t{i:04d}": (8,) for i in range(1024)}
    rng = np.random.default_rng(0)
    cases, texts = {}, {}

    def sgd(p, g):
        return (sgd_step(p, g),)  # a tuple, as step_case feeds outputs back

    adamw = oc.adamw(LR, WD)
    for label, layout in (("one leaf", {"w": (total,)}), ("1,024 leaves", shapes), ("1,024 x (8,)", tiny)):
        p, g = _arrays(layout, 0.02, rng), _arrays(layout, 1e-3, rng)
        name = f"oc.adamw, {label}"
        cases[name], texts[name] = step_case(applied(adamw), p, adamw.init(p), g, donate=(0, 1))
        name = f"p - lr * g, {label}"
        cases[name], texts[name] = step_case(sgd, jax.tree.map(jnp.copy, p), g, donate=(0,))
    p, g = _arrays(shapes, 0.02, rng), _arrays(shapes, 1e-3, rng)
    flat = optax.flatten(optax.adamw(LR, weight_decay=WD))
    name = "optax.flatten(optax.adamw), 1,024 leaves"
    cases[name], texts[name] = step_case(applied(flat), p, flat.init(p), g, donate=(0, 1))
    for write in ("concatenate", "dynamic_update_slice"):
        zeros = jnp.zeros(total, jnp.float32)
        state = (jax.tree.map(jnp.copy, p), zeros, jnp.copy(zeros), jnp.zeros((), jnp.int32))
        name = f"flat m, v ({write}), 1,024 leaves"
        cases[name], texts[name] = step_case(flat_adamw_step(shapes, write), *state, g, donate=(0, 1, 2))

    try:
        import torch
    except ImportError:
        torch = None
    for label, layout in (("one leaf", {"w": (total,)}), ("1,024 leaves", shapes)) if torch else ():
        tensors = [torch.from_numpy(np.array(x)) for x in _arrays(layout, 0.02, rng).values()]
        for tensor, grad in zip(tensors, _arrays(layout, 1e-3, rng).values()):
            tensor.grad = torch.from_numpy(np.array(grad))
        torch_opt = torch.optim.AdamW(tensors, lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD, fused=True)
        cases[f"torch AdamW(fused=True), {label}"] = torch_opt.step

    found = rotate(cases, args.repeats)
    leaf = found["oc.adamw, one leaf"]
    print(f"{total:,} float32 parameters, median of {args.repeats} steps, load {os.getloadavg()}")
    print(f"{'case':44s} {'ms':>8s} {'/ oc.adamw leaf':>16s}")
    for name, ms in found.items():
        print(f"{name:44s} {ms:8.2f} {ms / leaf:16.2f}")
    for name, text in texts.items():
        print(f"{name:44s} {hlo_counts(text, total)}")


# ------------------------------------------------------------------- a real model's tree


def _lean_adamw(p, s, g):
    """AdamW with the per-element work cut to one divide: the bias corrections folded into two
    scalars (``lr / bc1`` and ``1 / sqrt(bc2)``), as torch's fused kernel does. Not bit for bit
    optim_chain's (a few roundings apart); it only asks how much the arithmetic costs."""
    m, v, t = s
    t = t + 1
    bc1, bc2 = 1 - B1 ** t.astype(jnp.float32), 1 - B2 ** t.astype(jnp.float32)
    step, inv = LR / bc1, jax.lax.rsqrt(bc2)
    m = jax.tree.map(lambda m, g: B1 * m + (1 - B1) * g, m, g)
    v = jax.tree.map(lambda v, g: B2 * v + (1 - B2) * g * g, v, g)
    p = jax.tree.map(lambda p, m, v: p * (1 - LR * WD) - step * m / (jnp.sqrt(v) * inv + EPS), p, m, v)
    return p, (m, v, t)


def realtree(args: argparse.Namespace) -> None:
    """Flax BERT's tree (bench layout hf-bert) against one leaf of its size and its parts, in turns."""
    if _parent_runs_both_settings("realtree", f"--repeats={args.repeats}"):
        return
    from optim_chain.lab import bench

    shapes = {"/".join(path): shape for path, shape in bench._model_shapes("hf-bert")}
    total = sum(int(np.prod(s)) for s in shapes.values())
    big = {k: s for k, s in shapes.items() if np.prod(s) >= 65536}
    small = {k: s for k, s in shapes.items() if np.prod(s) < 65536}
    layouts = {"one leaf": {"w": (total,)}, "BERT tree": shapes, "big leaves": big, "small leaves": small}
    rng = np.random.default_rng(0)
    mof_on = MOF_FLAG in os.environ.get("XLA_FLAGS", "")
    optimizers = {"oc.adamw": oc.adamw(LR, WD), "optax.adamw": optax.adamw(LR, weight_decay=WD)}
    if mof_on:
        optimizers["single_pass"] = oc.single_pass(oc.adamw(LR, WD))
    cases, texts = {}, {}
    for label, layout in layouts.items():
        p, g = _arrays(layout, 0.02, rng), _arrays(layout, 1e-3, rng)
        for name, opt in optimizers.items():
            if name == "optax.adamw" and label not in ("one leaf", "BERT tree"):
                continue
            key = f"{name}, {label}"
            state = opt.init(p)
            cases[key], texts[key] = step_case(
                applied(opt), jax.tree.map(jnp.copy, p), state, g, donate=(0, 1)
            )
        if label in ("one leaf", "BERT tree"):
            key = f"lean adamw, {label}"
            zeros = jax.tree.map(jnp.zeros_like, p)
            state = (zeros, jax.tree.map(jnp.copy, zeros), jnp.zeros((), jnp.int32))
            cases[key], texts[key] = step_case(
                _lean_adamw, jax.tree.map(jnp.copy, p), state, g, donate=(0, 1)
            )
    try:
        import torch
    except ImportError:
        torch = None
    for label in ("one leaf", "BERT tree") if torch else ():
        layout = layouts[label]
        tensors = [torch.from_numpy(np.array(x)) for x in _arrays(layout, 0.02, rng).values()]
        for tensor, grad in zip(tensors, _arrays(layout, 1e-3, rng).values()):
            tensor.grad = torch.from_numpy(np.array(grad))
        torch_opt = torch.optim.AdamW(tensors, lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD, fused=True)
        torch_opt.step()
        cases[f"torch fused, {label}"] = torch_opt.step
    cases["stream a += b"] = stream_case(total)
    found = rotate(cases, args.repeats)
    bandwidth = 12 * total / found.pop("stream a += b") / 1e6
    leaf = found["oc.adamw, one leaf"]
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, median of {args.repeats}, load {os.getloadavg()}")
    print(
        f"{total:,} parameters in {len(shapes)} leaves ({len(big)} of 65,536 or more); {bandwidth:.1f} GB/s"
    )
    print(f"{'case':34s} {'ms':>8s} {'/ oc leaf':>10s} {'x floor':>8s} {'loops':>6s} {'HLO B/param':>12s}")
    for name, ms in found.items():
        label = name.split(", ")[1]
        size = sum(int(np.prod(s)) for s in layouts[label].values())
        floor = 28 * size / bandwidth / 1e6
        shape = _hlo.structure(texts[name], size) if name in texts else None
        loops = "" if shape is None else str(shape.array_loops)
        moved = "" if shape is None else f"{shape.bytes_per_element:.1f}"
        print(f"{name:34s} {ms:8.2f} {ms / leaf:10.2f} {ms / floor:8.2f} {loops:>6s} {moved:>12s}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "experiment",
        choices=["mof", "layout", "sliced", "schedule", "odd", "grouped", "overhead", "realtree"],
    )
    parser.add_argument("--size", type=parse_size, default=parse_size("10M"))
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    if args.experiment == "sliced":
        args.size -= args.size % 1048576 or 0
    experiments = {"mof": mof, "layout": layout, "sliced": sliced, "schedule": schedule, "odd": odd}
    experiments["grouped"] = grouped
    experiments["overhead"] = overhead
    experiments["realtree"] = realtree
    experiments[args.experiment](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
