"""Benchmark of the compiled optimizer step: ``optim-chain bench`` / ``python benchmarks/run.py``.

In one process it measures, for each size and tree layout:

* the machine's in-place streaming bandwidth (a donated, jitted ``a + b`` and, when torch is
  installed, ``torch.Tensor.add_``), which sets the floor: AdamW in float32 must move
  ``28`` bytes per parameter (read params, grads, m, v; write params, m, v);
* the jitted step ``(params, grads, state) -> (params, state)`` (``opt.update`` then
  ``optax.apply_updates``) of optim_chain's ``adamw``, ``adam_l2`` and ``adam`` against the
  same optimizer from optax, with and without buffer donation (and, with ``--single-pass``,
  ``optim_chain.single_pass`` of each preset under XLA:CPU's multi-output fusion);
* ``torch.optim`` (for-loop, foreach and fused), where installed;

and reports the median milliseconds per step, the effective bytes per parameter (median time
times the measured bandwidth, divided by the parameter count), the ratios to the floor and to
optax, the compile time and XLA's buffer total. Results go to ``bench.json`` and ``bench.md``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Dtypes the params (and gradients) can take; the moments stay float32 in every case.
DTYPES = ("float32", "bfloat16")
HYPER = {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-2, "momentum": 0.9}
#: ``sgd`` is heavy-ball momentum (``HYPER["momentum"]``), timed only when asked for.
OPTIMIZERS = ("adamw", "adam_l2", "adam", "sgd")
DEFAULT_OPTIMIZERS = ("adamw", "adam_l2", "adam")
#: Layouts whose shapes the bench makes up at any size.
SYNTHETIC = ("leaf", "tree", "deep")
#: Real models' parameter trees, built by ``transformers`` from a config (shapes only, nothing
#: downloaded): Flax BERT for masked LM, 8 layers x 512 (138 leaves, 41.4M parameters), and
#: Flax GPT-2 with its LM head, 8 layers x 512 (100 leaves, 51.5M parameters).
MODELS = ("hf-bert", "hf-gpt2")
LAYOUTS = SYNTHETIC + MODELS
#: Blocks of the layouts' transformer-like trees: 13 give 160 leaves, 85 give 1,024.
LAYERS = {"tree": 13, "deep": 85}
DEFAULT_SIZES = "1M,10M,50M"
SINGLE_PASS = "optim_chain single_pass"


# ------------------------------------------------------------------------------ arguments


def parse_size(text: str) -> int:
    """``"50M"`` -> 50_000_000; also ``k``/``K``, ``G``, plain integers and ``1e6``."""
    text = text.strip()
    scale = {"k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "g": 1e9, "G": 1e9}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1M, 250k, 1e6)") from None
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"size must be a positive whole number, got {text!r}")
    return int(value)


def _choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}; got {text!r}")
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optim-chain bench",
        description=(
            "Time the compiled optimizer step of optim_chain's presets against optax and "
            "torch.optim, next to the memory-bandwidth floor of 28 bytes per parameter."
        ),
    )
    parser.add_argument(
        "--sizes",
        type=lambda s: [parse_size(x) for x in s.split(",") if x.strip()],
        default=None,
        help=f"comma-separated parameter counts (default {DEFAULT_SIZES}; --quick: 1M)",
    )
    parser.add_argument(
        "--optimizers",
        type=_choices(OPTIMIZERS),
        default=None,
        help="subset of adamw,adam_l2,adam,sgd (sgd: momentum 0.9); default adamw,adam_l2,adam",
    )
    parser.add_argument(
        "--layouts",
        type=_choices(LAYOUTS),
        default=["leaf", "tree"],
        help="leaf (one array), tree (transformer-like, 160 leaves), deep (the same with "
        "85 blocks, 1,024 leaves), hf-bert (Hugging Face's Flax BERT, 8 x 512: 138 leaves, 41.4M) "
        "and/or hf-gpt2 (Flax GPT-2, 8 x 512: 100 leaves, 51.5M); a model fixes the size (--sizes is then "
        "refused) and the other layouts run at its size, timed in turns with it; default leaf,tree",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="dtype of the params and gradients (default float32); the moments stay float32 "
        "(optim_chain: moment_dtype; optax: mu_dtype, its second moment follows the params; "
        "torch keeps its state in the params' dtype)",
    )
    parser.add_argument(
        "--donate",
        type=_choices(("yes", "no")),
        default=None,
        help="yes,no: with and/or without buffer donation (default both; --quick: yes)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per case (median; default 11)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (default 2)")
    parser.add_argument(
        "--compiles",
        type=int,
        default=3,
        help="compilations per jax case; the median is reported (default 3)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="jax backend to run on: cpu (default), gpu, tpu, or any name jax.devices() accepts",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip torch.optim even if installed")
    parser.add_argument(
        "--xla-flags",
        default="",
        help="extra XLA_FLAGS for this run (applied before jax starts its backend)",
    )
    parser.add_argument(
        "--single-pass",
        action="store_true",
        help="also time oc.single_pass(preset); turns on XLA:CPU's multi-output fusion for the "
        "whole run (a process-wide option: optax and the plain chains run with it too)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short smoke run: 1M parameters, adamw only, donated only, 5 repeats",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="folder for bench.json and bench.md"
    )
    return parser


# ------------------------------------------------------------------------------ machine


def machine_info(device: Any) -> dict[str, Any]:
    import jax
    import optax

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "device": str(device),
        "device_kind": getattr(device, "device_kind", ""),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", ""),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "load_average_start": _load(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    torch = _torch()
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


# ------------------------------------------------------------------------------ trees


def transformer_shapes(size: int, layers: int = 13, context: int = 256) -> dict[str, Any]:
    """Shapes of a GPT-like parameter tree with about ``size`` parameters and ``12 * layers + 4`` leaves.

    160 leaves with the default 13 blocks, 1,024 with 85 (two thirds of them vectors). Each of
    the ``layers`` blocks has LayerNorm scale/bias twice, a fused QKV projection,
    an output projection and a 4x MLP (12 leaves); the token embedding absorbs the rest.
    """
    width = max(8, int(math.sqrt(0.8 * size / (12 * layers))) // 8 * 8)
    block = {
        "ln_1": {"scale": (width,), "bias": (width,)},
        "attn": {
            "qkv": {"kernel": (width, 3 * width), "bias": (3 * width,)},
            "out": {"kernel": (width, width), "bias": (width,)},
        },
        "ln_2": {"scale": (width,), "bias": (width,)},
        "mlp": {
            "fc": {"kernel": (width, 4 * width), "bias": (4 * width,)},
            "proj": {"kernel": (4 * width, width), "bias": (width,)},
        },
    }
    per_block = 12 * width * width + 13 * width
    rest = size - layers * per_block - context * width - 2 * width
    vocab = max(1, rest // width)
    tree: dict[str, Any] = {"wte": {"embedding": (vocab, width)}, "wpe": {"embedding": (context, width)}}
    for index in range(layers):
        tree[f"h_{index}"] = block
    tree["ln_f"] = {"scale": (width,), "bias": (width,)}
    return tree


#: One line for a missing ``transformers`` (the ``test`` extra); flax comes with the library.
MODELS_NEED = "the hf-bert and hf-gpt2 layouts need transformers: pip install 'optim_chain[test]'"


@functools.cache
def _model_shapes(layout: str) -> tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]:
    import jax

    try:
        import transformers
    except ImportError:
        raise SystemExit(MODELS_NEED) from None
    transformers.logging.set_verbosity_error()
    if layout == "hf-bert":
        config = transformers.BertConfig(
            num_hidden_layers=8, hidden_size=512, intermediate_size=2048, num_attention_heads=8
        )
        model = transformers.FlaxBertForMaskedLM(config, _do_init=False)
    elif layout == "hf-gpt2":
        config = transformers.GPT2Config(n_layer=8, n_embd=512, n_head=8)
        model = transformers.FlaxGPT2LMHeadModel(config, _do_init=False)
    else:
        raise ValueError(f"layout must be one of {', '.join(MODELS)}, got {layout!r}")
    # shapes only: nothing is initialised, let alone downloaded
    shapes = jax.eval_shape(functools.partial(model.init_weights, input_shape=(1, 1)), jax.random.key(0))
    found = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        found.append((tuple(str(getattr(k, "key", k)) for k in path), tuple(leaf.shape)))
    return tuple(found)


def model_shapes(layout: str) -> dict[str, Any]:
    """The nested dict of shapes (tuples) of the Flax model behind ``layout`` (``hf-bert``, ``hf-gpt2``)."""
    tree: dict[str, Any] = {}
    for path, shape in _model_shapes(layout):
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = shape
    return tree


def training_script_mask(params: Any) -> Any:
    """The decay mask of Hugging Face's Flax training scripts: every leaf but biases and LayerNorm scales.

    A leaf is left undecayed when it is named ``bias``, or when it is the ``scale`` of a module
    whose name holds ``layernorm``, ``layer_norm`` or ``ln`` (case aside), as those scripts decide.
    """
    import jax

    def decays(path: tuple, _: Any) -> bool:
        keys = [str(getattr(k, "key", k)) for k in path]
        norm = len(keys) > 1 and any(n in keys[-2].lower() for n in ("layernorm", "layer_norm", "ln"))
        return keys[-1] != "bias" and not (norm and keys[-1] == "scale")

    return jax.tree_util.tree_map_with_path(decays, params)


def decay_masks(layout: str, params: Any) -> dict[str, Any]:
    """The weight-decay masks of a layout: ``optim_chain`` (its default), ``optax`` and ``flags``.

    The synthetic layouts decay every leaf (no masks). A model decays what the Hugging Face
    training scripts decay: optax gets :func:`training_script_mask`, optim_chain its own
    :data:`~optim_chain.masks.DEFAULT_DECAY`; the two must select the same leaves (checked here),
    and ``flags`` (one bool per leaf) splits torch's parameters into a decayed and an undecayed group.
    """
    import jax

    from optim_chain import masks
    from optim_chain._tree import leaves_with_paths

    if layout not in MODELS:
        return {"optim_chain": None, "optax": None, "flags": None}
    ours = masks.resolve_mask(masks.DEFAULT_DECAY, params)
    theirs = jax.tree.leaves(training_script_mask(params))
    if ours != theirs:
        differ = [p for (p, _), a, b in zip(leaves_with_paths(params), ours, theirs) if a != b]
        raise ValueError(
            f"{layout}: optim_chain's default mask and the training scripts' differ at {differ[:5]}"
        )
    return {"optim_chain": masks.DEFAULT_DECAY, "optax": training_script_mask, "flags": ours}


def make_params(size: int, layout: str, device: Any, dtype: str = "float32") -> tuple[Any, Any]:
    """Parameters and gradients of ``size`` elements in ``dtype``, as one leaf or as a tree.

    A model layout (:data:`MODELS`) has its own size; ``size`` is then not read.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    if layout == "leaf":
        shapes: Any = {"w": (size,)}
    elif layout in MODELS:
        shapes = model_shapes(layout)
    else:
        shapes = transformer_shapes(size, layers=LAYERS[layout])
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    rng = np.random.default_rng(0)

    def array(shape: tuple[int, ...], scale: float) -> Any:
        values = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
        return jax.device_put(jnp.asarray(values, dtype), device)

    params = jax.tree.unflatten(treedef, [array(s, 0.02) for s in leaves])
    grads = jax.tree.unflatten(treedef, [array(s, 1e-3) for s in leaves])
    return params, grads


def count_shapes(shapes: Any) -> int:
    """The number of entries in a tree of shapes (tuples)."""
    import jax

    leaves = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
    return sum(math.prod(shape) for shape in leaves)


def count(tree: Any) -> int:
    import jax

    return sum(int(x.size) for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------------------ timing


class Runner:
    """One thing to time: ``tick()`` runs one step and returns its duration in seconds."""

    def __init__(self, label: dict[str, Any], tick: Callable[[], float], info: dict[str, Any] | None = None):
        self.label = label
        self.tick = tick
        self.info = dict(info or {})
        self.times: list[float] = []


def rotate(runners: list[Runner], repeats: int, warmup: int) -> None:
    """Times ``runners`` in turns (ABC, CBA, ABC, ...), so that load changes hit all alike."""
    for runner in runners:
        for _ in range(warmup):
            runner.tick()
    for round_ in range(repeats):
        for runner in runners if round_ % 2 == 0 else runners[::-1]:
            runner.times.append(runner.tick())


def _timed(call: Callable[[], Any], sync: Callable[[Any], Any]) -> float:
    start = time.perf_counter()
    sync(call())
    return time.perf_counter() - start


def stream_runners(size: int, device: Any) -> list[Runner]:
    """In-place ``a += b`` (12 bytes per element moved) through jax and, if installed, torch."""
    import jax
    import jax.numpy as jnp

    b = jax.device_put(jnp.ones(size, jnp.float32), device)
    box = [jax.device_put(jnp.ones(size, jnp.float32), device)]
    add = jax.jit(lambda a, b: a + b * 0.5, donate_argnums=0)

    def jax_tick() -> float:
        def call() -> Any:
            box[0] = add(box[0], b)
            return box[0]

        return _timed(call, jax.block_until_ready)

    runners = [Runner({"impl": "stream jax"}, jax_tick)]
    torch, target = _torch(), _torch_device(device)
    if torch is not None and target is not None:
        ta, tb = torch.ones(size, device=target), torch.ones(size, device=target)
        sync = _torch_sync(torch, target)
        runners.append(Runner({"impl": "stream torch"}, lambda: _timed(lambda: ta.add_(tb, alpha=0.5), sync)))
    return runners


def _torch_device(device: Any) -> str | None:
    torch = _torch()
    if torch is None:
        return None
    if device.platform == "cpu":
        return "cpu"
    if device.platform == "gpu" and torch.cuda.is_available():
        return "cuda"
    return None


def _torch_sync(torch: Any, target: str) -> Callable[[Any], None]:
    if target == "cuda":
        return lambda _: torch.cuda.synchronize()
    return lambda _: None


# ------------------------------------------------------------------------------ optimizers


def floor_bytes(dtype: str, optimizer: str = "adamw") -> int:
    """Bytes a step must move per parameter, the state in float32: Adam reads p, g, m, v and
    writes p, m, v; SGD with momentum reads p, g, m and writes p, m."""
    state = 1 if optimizer == "sgd" else 2
    return 3 * {"float32": 4, "bfloat16": 2}[dtype] + 2 * state * 4


def optim_chain_optimizer(
    name: str, single_pass: bool = False, dtype: str = "float32", mask: Any = None
) -> Any:
    """optim_chain's preset ``name``; ``mask`` selects the leaves that decay (``None``: all)."""
    import jax.numpy as jnp

    import optim_chain as oc

    h = HYPER
    common = {"b1": h["b1"], "b2": h["b2"], "eps": h["eps"]}
    if dtype != "float32":
        common["moment_dtype"] = jnp.float32
    if name == "adamw":
        opt = oc.adamw(h["learning_rate"], weight_decay=h["weight_decay"], mask=mask, **common)
    elif name == "adam_l2":
        opt = oc.adam_l2(h["learning_rate"], weight_decay=h["weight_decay"], mask=mask, **common)
    elif name == "sgd":
        moment = {"moment_dtype": jnp.float32} if dtype != "float32" else {}
        opt = oc.sgd(h["learning_rate"], momentum=h["momentum"], **moment)
    else:
        opt = oc.adam(h["learning_rate"], **common)
    return oc.single_pass(opt) if single_pass else opt


def optax_optimizer(name: str, dtype: str = "float32", mask: Any = None) -> Any:
    """The same optimizer as optax users write it (``mu_dtype=float32`` for other params dtypes)."""
    import jax.numpy as jnp
    import optax

    h = HYPER
    common = {"b1": h["b1"], "b2": h["b2"], "eps": h["eps"]}
    if dtype != "float32":
        common["mu_dtype"] = jnp.float32
    if name == "adamw":
        return optax.adamw(h["learning_rate"], weight_decay=h["weight_decay"], mask=mask, **common)
    if name == "adam_l2":
        return optax.chain(
            optax.add_decayed_weights(h["weight_decay"], mask=mask), optax.adam(h["learning_rate"], **common)
        )
    if name == "sgd":
        moment = {"accumulator_dtype": jnp.float32} if dtype != "float32" else {}
        return optax.sgd(h["learning_rate"], momentum=h["momentum"], **moment)
    return optax.adam(h["learning_rate"], **common)


def torch_optimizer(
    torch: Any, name: str, tensors: list, variant: str, decays: list[bool] | None = None
) -> Any:
    """torch's optimizer ``name``; ``decays`` (one bool per tensor) splits off an undecayed group."""
    h = HYPER
    flags = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[variant]
    if name == "sgd":
        return torch.optim.SGD(tensors, lr=h["learning_rate"], momentum=h["momentum"], **flags)
    kwargs = {"lr": h["learning_rate"], "betas": (h["b1"], h["b2"]), "eps": h["eps"], **flags}
    decay = h["weight_decay"] if name != "adam" else 0.0
    groups: Any = tensors
    if decays is not None:
        groups = [
            {"params": [t for t, d in zip(tensors, decays) if d], "weight_decay": decay},
            {"params": [t for t, d in zip(tensors, decays) if not d], "weight_decay": 0.0},
        ]
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=decay, **kwargs)
    return torch.optim.Adam(groups, weight_decay=decay, **kwargs)


def jax_runner(
    label: dict[str, Any],
    build: Callable[[], Any],
    params: Any,
    grads: Any,
    donate: bool,
    compiles: int = 3,
) -> Runner:
    """Compiles the jitted step ``(params, grads, state) -> (params, state)`` for timing.

    The compile time (tracing, lowering and XLA) is the median of ``compiles`` compilations,
    each of a new step with a new optimizer from ``build()``, as a program compiles once.
    """
    import jax
    import jax.numpy as jnp
    import optax

    from optim_chain import _hlo

    def make_step() -> Callable:
        # a new function and optimizer each time, so that nothing traced or compiled before is
        # reused (single_pass keeps the trace of its inner transform)
        opt = build()

        def step(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        return jax.jit(step, donate_argnums=(0, 2) if donate else ())

    params = jax.tree.map(jnp.copy, params)
    state = jax.jit(build().init)(params)
    jax.block_until_ready((params, state))  # so that the compile time below is compile time only
    compile_times = []
    for _ in range(compiles):
        start = time.perf_counter()
        compiled = make_step().lower(params, grads, state).compile()
        compile_times.append(time.perf_counter() - start)
    compile_s = statistics.median(compile_times)
    memory = compiled.memory_analysis()
    peak = None
    if memory is not None:
        peak = (
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes
        )
    shape = _hlo.structure(compiled.as_text(), count(params))
    box = [(params, state)]

    def tick() -> float:
        def call() -> Any:
            box[0] = compiled(box[0][0], grads, box[0][1])
            return box[0]

        return _timed(call, jax.block_until_ready)

    info = {
        "compile_s": compile_s,
        "peak_bytes": peak,
        "fusions": shape.fusions,
        "array_loops": shape.array_loops,
        "while_loops": shape.while_loops,
        "hlo_bytes_per_param": None if shape.while_loops else shape.bytes_per_element,
    }
    return Runner(label, tick, info)


def to_torch(x: Any, target: str) -> Any:
    """A torch copy of the jax array ``x`` on ``target``, in ``x``'s dtype (bfloat16 included)."""
    import numpy as np

    torch = _torch()
    # a copy: torch updates in place and must not write into the jax buffer
    return torch.from_numpy(np.array(x, np.float32)).to(target, getattr(torch, str(x.dtype)))


def torch_runner(
    label: dict[str, Any],
    variant: str,
    params: Any,
    torch_grads: list,
    device: Any,
    decays: list[bool] | None = None,
) -> Runner:
    import jax

    torch = _torch()
    target = _torch_device(device)
    tensors = [to_torch(x, target) for x in jax.tree.leaves(params)]
    for tensor, grad in zip(tensors, torch_grads):
        tensor.grad = grad
    opt = torch_optimizer(torch, label["optimizer"], tensors, variant, decays)
    sync = _torch_sync(torch, target)
    opt.step()  # creates the state
    state_bytes = sum(
        v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v)
    )
    tensor_bytes = sum(2 * t.numel() * t.element_size() for t in tensors) + state_bytes
    return Runner(label, lambda: _timed(opt.step, sync), {"tensor_bytes": tensor_bytes})


# ------------------------------------------------------------------------------ running


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    import jax

    quick = args.quick
    sizes = args.sizes or ([parse_size("1M")] if quick else [parse_size(s) for s in DEFAULT_SIZES.split(",")])
    optimizers = args.optimizers or (["adamw"] if quick else list(DEFAULT_OPTIMIZERS))
    donations = [d == "yes" for d in (args.donate or (["yes"] if quick else ["yes", "no"]))]
    repeats = args.repeats or (5 if quick else 11)
    warmup = args.warmup
    compiles = args.compiles
    device = jax.devices(args.device)[0]
    use_torch = not args.no_torch and _torch_device(device) is not None
    models = [layout for layout in args.layouts if layout in MODELS]
    synthetic = [layout for layout in args.layouts if layout not in MODELS]
    # one group per size; a model's group is its own size, with the other layouts at that size
    groups = [(count_shapes(model_shapes(m)), [*synthetic, m]) for m in models]
    groups = groups or [(size, synthetic) for size in sizes]
    sizes = [size for size, _ in groups]

    implementations = {
        "optax": functools.partial(optax_optimizer, dtype=args.dtype),
        "optim_chain": functools.partial(optim_chain_optimizer, dtype=args.dtype),
    }
    if args.single_pass:
        implementations[SINGLE_PASS] = functools.partial(
            optim_chain_optimizer, single_pass=True, dtype=args.dtype
        )

    report: dict[str, Any] = {"machine": machine_info(device), "hyperparameters": HYPER, "results": []}
    report["settings"] = {
        "sizes": sizes,
        "optimizers": optimizers,
        "layouts": args.layouts,
        "dtype": args.dtype,
        "bytes_floor": floor_bytes(args.dtype),
        "bytes_floor_by_optimizer": {name: floor_bytes(args.dtype, name) for name in optimizers},
        "donate": donations,
        "repeats": repeats,
        "warmup": warmup,
        "compiles": compiles,
        "torch": use_torch,
        "timing": "round-robin: every case of a group (all layouts of a size, optimizer and "
        "donation) runs once per round, alternating order; "
        "jax cases and torch cases in separate groups, each with its framework's in-place a += b",
    }

    def measure(streams: list[Runner], group: list[Runner], size: int) -> None:
        """Times ``group`` in turns with ``streams``, records the results and frees the group."""
        for stream in streams:
            stream.times = []
        rotate(streams + group, repeats, warmup)
        bandwidth = {
            stream.label["impl"].split()[1]: 12 * size / statistics.median(stream.times) / 1e9
            for stream in streams
        }
        for runner in group:
            result = {**runner.label, **runner.info}
            result["ms"] = statistics.median(runner.times) * 1e3
            result["ms_all"] = [round(t * 1e3, 4) for t in runner.times]
            result["bandwidth_gb_s"] = bandwidth
            report["results"].append(result)
            log(_line(result))
        group.clear()
        gc.collect()

    for size, group_layouts in groups:
        streams = stream_runners(size, device)
        jax_streams = [r for r in streams if r.label["impl"] == "stream jax"]
        torch_streams = [r for r in streams if r.label["impl"] == "stream torch"]
        # every layout of a size in one group, so that "tree / one leaf" compares steps timed
        # in turns (the machine's bandwidth can change from one group to the next)
        layouts = []
        for layout in group_layouts:
            params, grads = make_params(size, layout, device, args.dtype)
            torch_grads = None
            if use_torch:
                torch_grads = [to_torch(g, _torch_device(device)) for g in jax.tree.leaves(grads)]
            label = {"size": size, "params": count(params), "layout": layout}
            label["leaves"] = len(jax.tree.leaves(params))
            masks = decay_masks(layout, params)
            if masks["flags"] is not None:
                label["decayed_leaves"] = sum(masks["flags"])
            layouts.append((label, params, grads, torch_grads, masks))
        for name in optimizers:
            # jax and torch are timed in separate groups: their thread pools, run in turns,
            # slow each other down (each keeps its threads spinning after a step)
            for donate in donations:
                runners = [
                    jax_runner(
                        {**label, "optimizer": name, "donated": donate, "impl": impl},
                        functools.partial(
                            make, name, mask=masks["optax" if impl == "optax" else "optim_chain"]
                        ),
                        params,
                        grads,
                        donate,
                        compiles,
                    )
                    for label, params, grads, _, masks in layouts
                    for impl, make in implementations.items()
                ]
                measure(jax_streams, runners, size)
            if use_torch:
                runners = [
                    torch_runner(
                        {**label, "optimizer": name, "donated": True, "impl": f"torch {variant}"},
                        variant,
                        params,
                        torch_grads,
                        device,
                        masks["flags"],
                    )
                    for label, params, _, torch_grads, masks in layouts
                    for variant in ("fused", "foreach", "for-loop")
                ]
                measure(torch_streams, runners, size)
        layouts.clear()
        del streams, jax_streams, torch_streams
        gc.collect()
    report["machine"]["load_average_end"] = _load()
    _derive(report)
    return report


def _derive(report: dict[str, Any]) -> None:
    """Adds the floor, effective bytes per parameter and the ratios to every result.

    The bandwidth of a size is the better of the median jax and the median torch in-place
    streaming rates measured alongside its cases; the floor is 28 bytes per parameter at it.
    """
    per_size: dict[int, dict[str, list[float]]] = {}
    for r in report["results"]:
        for framework, rate in r["bandwidth_gb_s"].items():
            per_size.setdefault(r["size"], {}).setdefault(framework, []).append(rate)
    report["bandwidth_gb_s"] = {
        str(size): {k: statistics.median(v) for k, v in rates.items()} for size, rates in per_size.items()
    }
    by_key = {}
    for r in report["results"]:
        by_key[(r["size"], r["layout"], r["optimizer"], r["impl"], r["donated"])] = r
    for r in report["results"]:
        bytes_floor = floor_bytes(report["settings"]["dtype"], r["optimizer"])
        bandwidth = max(report["bandwidth_gb_s"][str(r["size"])].values()) * 1e9
        floor_ms = bytes_floor * r["params"] / bandwidth * 1e3
        r["floor_ms"] = floor_ms
        r["bytes_per_param"] = r["ms"] / 1e3 * bandwidth / r["params"]
        r["x_floor"] = r["ms"] / floor_ms
        optax_ = by_key.get((r["size"], r["layout"], r["optimizer"], "optax", r["donated"]))
        r["x_optax"] = r["ms"] / optax_["ms"] if optax_ else None
        if optax_ and "compile_s" in r:
            r["x_optax_compile"] = r["compile_s"] / optax_["compile_s"]
        leaf = by_key.get((r["size"], "leaf", r["optimizer"], r["impl"], r["donated"]))
        r["x_one_leaf"] = r["ms"] / leaf["ms"] if leaf and r["layout"] != "leaf" else None


def _fmt_size(size: int) -> str:
    for unit, scale in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if size >= scale and size % (scale // 10) == 0:
            return f"{size / scale:g}{unit}"
        if size >= scale:  # a model's own count: 41404730 -> 41.4M
            return f"{size / scale:.1f}{unit}"
    return str(size)


def _line(r: dict[str, Any]) -> str:
    donated = "donated" if r["donated"] else "copied"
    extra = f" compile {r['compile_s']:.2f} s" if "compile_s" in r else ""
    bandwidth = max(r["bandwidth_gb_s"].values())
    return (
        f"  {_fmt_size(r['size']):>4} {r['layout']:<4} {r['optimizer']:<7} {r['impl']:<23} {donated:<7} "
        f"{r['ms']:9.2f} ms{extra} (stream {bandwidth:.1f} GB/s, load {_load()})"
    )


# ------------------------------------------------------------------------------ reporting


def _kind(kind: str) -> str:
    """`` (NVIDIA H200)`` for an accelerator's model; nothing for a CPU."""
    return f" ({kind})" if kind and kind.lower() != "cpu" else ""


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    dtype = report["settings"]["dtype"]
    bytes_floor = floor_bytes(dtype)
    lines = [
        "| machine | |",
        "| --- | --- |",
        f"| CPU | {m['cpu']} ({m['cores']} cores), {m.get('memory') or '?'} |",
        f"| device | {m['device']}{_kind(m.get('device_kind', ''))} |",
        f"| versions | jax {m['jax']}, optax {m['optax']}"
        + (f", torch {m['torch']} ({m['torch_threads']} threads)" if "torch" in m else "")
        + f", Python {m['python']} |",
        f"| load average (1, 5, 15 min) | start {m['load_average_start']}, end {m.get('load_average_end')} |",
        f"| XLA_FLAGS | `{m['xla_flags'] or '(none)'}` |",
        f"| OMP_WAIT_POLICY (torch) | `{m.get('omp_wait_policy') or '(default)'}` |",
        f"| date | {m['date']} |",
        *([f"| params | {dtype}, moments float32 |"] if dtype != "float32" else []),
        "",
        "In-place streaming bandwidth (`a += b`, 12 bytes per element) and the resulting floor "
        f"for {bytes_floor} bytes per parameter (the better of the two bandwidths):",
        "",
        "| parameters | jax GB/s | torch GB/s | floor ms |",
        "| --- | ---: | ---: | ---: |",
    ]
    for size, bw in report["bandwidth_gb_s"].items():
        floor = bytes_floor * int(size) / (max(bw.values()) * 1e9) * 1e3
        torch_bw = f"{bw['torch']:.1f}" if "torch" in bw else ""
        lines.append(f"| {_fmt_size(int(size))} | {bw['jax']:.1f} | {torch_bw} | {floor:.2f} |")
    lines += [
        "",
        "Median ms per step; B/param = median time x bandwidth / parameters (measured, not "
        "counted); x floor and x optax are ratios of step times (optax: same optimizer, layout "
        "and donation); tree / leaf = this tree's time over one leaf of the same size; compile = "
        "trace + lower + compile in seconds (median of 3); peak = XLA's buffers (arguments + "
        "outputs - aliased + temporaries), for torch the tensors (params, grads, state). torch "
        "updates in place.",
        "",
        "| size | layout | optimizer | implementation | donated | ms/step | B/param | x floor | x optax "
        "| tree / leaf | compile s | x optax compile | peak MB |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        peak = r.get("peak_bytes") or r.get("tensor_bytes")
        jitted = "compile_s" in r
        cells = [
            _fmt_size(r["size"]),
            f"{r['layout']} ({r['leaves']})",
            r["optimizer"],
            r["impl"],
            ("yes" if r["donated"] else "no") if jitted else "in place",
            f"{r['ms']:.2f}",
            f"{r['bytes_per_param']:.1f}",
            f"{r['x_floor']:.2f}",
            _ratio(r["x_optax"]),
            _ratio(r.get("x_one_leaf")),
            f"{r['compile_s']:.2f}" if jitted else "",
            _ratio(r.get("x_optax_compile")),
            "" if peak is None else f"{peak / 2**20:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *summary(report)]
    return "\n".join(lines) + "\n"


def summary(report: dict[str, Any]) -> list[str]:
    """Key ratios at the largest size and at every model's size, for donated steps."""
    results = [r for r in report["results"] if r["donated"]]
    if not results:
        return []
    sizes = {max(r["size"] for r in results)} | {r["size"] for r in results if r["layout"] in MODELS}
    lines = []
    for size in sorted(sizes):
        lines += [*_summary_at(results, size), ""]
    return lines[:-1]


def _summary_at(results: list[dict[str, Any]], size: int) -> list[str]:
    pick = {(r["layout"], r["optimizer"], r["impl"]): r for r in results if r["size"] == size}
    lines = [
        f"Key ratios at {_fmt_size(size)} parameters, donated buffers (ratios of median step times):",
        "",
        "| layout | optimizer | implementation | / optax | / floor | optax / floor "
        "| / torch fused | tree / one leaf | compile / optax compile |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (layout, name, impl), r in sorted(pick.items()):
        if impl not in ("optim_chain", SINGLE_PASS):
            continue
        optax_ = pick.get((layout, name, "optax"))
        fused = pick.get((layout, name, "torch fused"))
        lines.append(
            f"| {layout} | {name} | {impl} | {_ratio(r['x_optax'])} | {_ratio(r['x_floor'])} | "
            f"{_ratio(optax_ and optax_['x_floor'])} | {_ratio(fused and r['ms'] / fused['ms'])} | "
            f"{_ratio(r.get('x_one_leaf'))} | {_ratio(r.get('x_optax_compile'))} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``optim-chain bench``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.compiles < 1:
        parser.error(f"--compiles must be >= 1, got {args.compiles}")
    models = [layout for layout in args.layouts if layout in MODELS]
    if models and args.sizes:
        parser.error(f"--sizes cannot be given with {', '.join(models)}: a model layout has its own size")
    if models and not all(importlib.util.find_spec(m) for m in ("transformers", "flax")):
        parser.error(MODELS_NEED)
    # imports jax, whose backend (which reads XLA_FLAGS) starts later
    from optim_chain.fusion import MULTI_OUTPUT_FUSION_FLAG, multi_output_fusion_enabled

    def add_xla_flags(flags: str) -> None:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()

    if args.xla_flags:
        add_xla_flags(args.xla_flags)
    if args.single_pass and not multi_output_fusion_enabled():
        add_xla_flags(MULTI_OUTPUT_FUSION_FLAG)
    # torch's OpenMP threads otherwise spin after each step and slow down whatever runs next
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # on a GPU jax would otherwise reserve 75% of its memory at start, leaving torch too little
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    try:
        jax.devices(args.device)
    except RuntimeError as error:
        parser.error(f"--device {args.device!r} is not available here: {error}")

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    report = run(args, log)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=1))
    table = markdown(report)
    (args.out / "bench.md").write_text(table)
    print(table)
    log(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
