"""Compile time of a jitted, donated optimizer step: optim_chain's presets against optax's.

Each compilation builds a fresh ``jax.jit(step, donate_argnums=(0, 2))`` and times its three
phases: tracing to a jaxpr (``.trace``, where the Python of the transforms runs), lowering to
StableHLO (``.lower``) and XLA's compilation (``.compile``). The cases of one table row run in
turns (A, B, B, A, ...) so that a change of load hits them alike; the table gives medians and
the ratio of the medians of the totals. BENCHMARKS.md records what it measured.

    python benchmarks/compile_time.py presets            # 1M parameters, one leaf and the tree
    python benchmarks/compile_time.py presets --mask     # the same with mask=DEFAULT_DECAY
    python benchmarks/compile_time.py leaves             # 64 to 4,096 leaves, adamw
    python benchmarks/compile_time.py presets --single-pass  # oc.single_pass(preset), plain, optax

``--single-pass`` runs in a child process with XLA:CPU's multi-output fusion switched on (the
flag ``single_pass`` is made for), for all three implementations alike.

Options: ``--repeats 9`` (compilations per case), ``--optimizers adamw,adam_l2,adam``,
``--leaves 64,256,1024,4096``.
"""

from __future__ import annotations

import argparse
import os
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
from optim_chain.lab.bench import make_params

LR, WD = 1e-3, 1e-2


def ours(name: str, mask: Any) -> Any:
    decay = {} if mask is None else {"mask": mask}
    if name == "adamw":
        return oc.adamw(LR, weight_decay=WD, **decay)
    if name == "adam_l2":
        return oc.adam_l2(LR, weight_decay=WD, **decay)
    return oc.adam(LR)


def implementations(name: str, mask: Any, single_pass: bool) -> dict[str, Callable[[], Any]]:
    """Builders of the cases of one row, optax last (the ratios are taken against it).

    Every compilation builds its optimizer afresh, as a program does once: nothing an optimizer
    caches (``single_pass`` keeps its inner trace) carries over from one compilation to the next.
    """
    cases = {"optim_chain": lambda: ours(name, mask), "optax": lambda: theirs(name, mask)}
    if single_pass:
        cases = {"single_pass": lambda: oc.single_pass(ours(name, mask)), **cases}
    return cases


def theirs(name: str, mask: Any) -> Any:
    """The same optimizer as optax users write it (with optax's mask callable when masked)."""
    decay = {} if mask is None else {"mask": oc.masks.default_decay_mask}
    if name == "adamw":
        return optax.adamw(LR, weight_decay=WD, **decay)
    if name == "adam_l2":
        return optax.chain(optax.add_decayed_weights(WD, **decay), optax.adam(LR))
    return optax.adam(LR)


def phases(opt: Any, params: Any, grads: Any, state: Any) -> tuple[float, float, float]:
    """Seconds to trace, lower and compile a fresh donated step of ``opt``."""

    def step(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    start = time.perf_counter()
    traced = jax.jit(step, donate_argnums=(0, 2)).trace(params, grads, state)
    traced_at = time.perf_counter()
    lowered = traced.lower()
    lowered_at = time.perf_counter()
    lowered.compile()
    return traced_at - start, lowered_at - traced_at, time.perf_counter() - lowered_at


def compare(label: str, cases: dict[str, Callable[[], Any]], params: Any, grads: Any, repeats: int) -> None:
    """Compiles every case ``repeats`` times in turns after one untimed round; prints a row each."""
    states = {name: jax.jit(build().init)(params) for name, build in cases.items()}
    jax.block_until_ready(states)
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cases}
    names = list(cases)
    for round_ in range(repeats + 1):
        for name in names if round_ % 2 == 0 else names[::-1]:
            timing = phases(cases[name](), params, grads, states[name])
            if round_:
                times[name].append(timing)
    totals = {name: statistics.median(sum(t) for t in ts) for name, ts in times.items()}
    for name, ts in times.items():
        trace, lower, compile_ = (statistics.median(t[i] for t in ts) * 1e3 for i in range(3))
        ratio = totals[name] / totals[names[-1]]
        print(
            f"| {label} | {name} | {trace:.1f} | {lower:.1f} | {compile_:.1f} | "
            f"{totals[name] * 1e3:.1f} | {ratio:.2f} |",
            flush=True,
        )


HEADER = (
    "| case | implementation | trace ms | lower ms | compile ms | total ms | / optax |\n"
    + "| --- " * 2
    + "| ---: " * 5
    + "|"
)


def presets(args: argparse.Namespace) -> None:
    mask = oc.masks.DEFAULT_DECAY if args.mask else None
    print(HEADER)
    for layout in ("leaf", "tree"):
        params, grads = make_params(1_000_000, layout, jax.devices("cpu")[0])
        for name in args.optimizers:
            if mask is not None and name == "adam":
                continue
            cases = implementations(name, mask, args.single_pass)
            compare(
                f"1M {layout} {name}{' masked' if mask is not None else ''}",
                cases,
                params,
                grads,
                args.repeats,
            )


def many_leaves(count: int) -> tuple[Any, Any]:
    """``count`` float32 leaves, alternately ``(32, 32)`` and ``(64,)``, in a dict."""
    rng = np.random.default_rng(0)
    shapes = [(32, 32) if i % 2 == 0 else (64,) for i in range(count)]
    params = {
        f"p{i:05d}": jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for i, s in enumerate(shapes)
    }
    grads = {k: v * 1e-3 for k, v in params.items()}
    return params, grads


def leaves(args: argparse.Namespace) -> None:
    print(HEADER)
    for count in args.leaves:
        params, grads = many_leaves(count)
        for name in args.optimizers:
            cases = implementations(name, None, args.single_pass)
            compare(f"{count} leaves {name}", cases, params, grads, args.repeats)


EXPERIMENTS: dict[str, Callable[[argparse.Namespace], None]] = {"presets": presets, "leaves": leaves}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--mask", action="store_true", help="presets: mask=oc.masks.DEFAULT_DECAY")
    parser.add_argument(
        "--single-pass",
        action="store_true",
        help="add oc.single_pass(preset); every case compiled with multi-output fusion",
    )
    parser.add_argument("--optimizers", type=lambda s: s.split(","), default=None)
    parser.add_argument(
        "--leaves", type=lambda s: [int(x) for x in s.split(",")], default=[64, 256, 1024, 4096]
    )
    args = parser.parse_args(argv)
    if args.single_pass and not oc.multi_output_fusion_enabled():
        # XLA reads its flags once, when jax starts: run again in a child that has the flag
        flags = f"{os.environ.get('XLA_FLAGS', '')} {oc.MULTI_OUTPUT_FUSION_FLAG}".strip()
        command = [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)]
        return subprocess.run(command, env=dict(os.environ, XLA_FLAGS=flags)).returncode
    if args.optimizers is None:
        args.optimizers = ["adamw", "adam_l2", "adam"] if args.experiment == "presets" else ["adamw"]
    EXPERIMENTS[args.experiment](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
