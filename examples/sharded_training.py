"""Data-parallel plus FSDP training of the small transformer on a mesh of all devices.

The parameters and the AdamW state (two moments per parameter) are split over the ``fsdp`` axis
of a ``("data", "fsdp")`` mesh and the batch over both axes. The script prints how many bytes of
parameters and optimizer state each device holds, then the loss curve. The same code runs on one
device, on several GPUs or TPUs, and across hosts (see docs/sharding.md).

On a CPU-only machine, ask XLA for virtual devices before jax starts::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/sharded_training.py
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/sharded_training.py --devices 4

Checkpoints are written with orbax and restore onto any mesh::

    ... sharded_training.py --stop-after 150 --save /tmp/ckpt       # steps 1-150 on 8 devices
    ... sharded_training.py --devices 4 --restore /tmp/ckpt         # steps 151-300 on 4

Multi-host: start the same command on every host with ``--coordinator HOST:PORT
--num-processes N --process-id I`` (this calls ``jax.distributed.initialize``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

import optim_chain as oc
from optim_chain import sharding
from optim_chain.lab import data, models


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps in all (default 300)")
    parser.add_argument("--devices", type=int, default=None, help="how many devices (default: all)")
    parser.add_argument(
        "--data", type=int, default=None, help="size of the data axis (default: 2 when >= 4 devices, else 1)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size (default 32)")
    parser.add_argument("--seq-len", type=int, default=64, help="context length (default 64)")
    parser.add_argument("--d-model", type=int, default=64, help="model width (default 64)")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="decoupled weight decay")
    parser.add_argument("--min-shard-size", type=int, default=sharding.DEFAULT_MIN_SIZE)
    parser.add_argument("--log-every", type=int, default=25, help="print the loss every N steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stop-after", type=int, default=None, help="stop after this step (the schedule still spans --steps)"
    )
    parser.add_argument("--save", default=None, help="write an orbax checkpoint here at the end")
    parser.add_argument("--restore", default=None, help="start from the orbax checkpoint here")
    parser.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (multi-host)")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    args = parser.parse_args(argv)
    if args.stop_after is None:
        args.stop_after = args.steps
    for name in ("steps", "batch_size", "seq_len", "d_model", "layers", "log_every", "stop_after"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def make_mesh(num_devices: int | None = None, data_axis: int | None = None) -> Mesh:
    """A ``("data", "fsdp")`` mesh over the first ``num_devices`` devices (all by default)."""
    devices = jax.devices()
    if num_devices is not None:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"--devices must lie in [1, {len(devices)}], got {num_devices}")
        devices = devices[:num_devices]
    if data_axis is None:
        data_axis = 2 if len(devices) >= 4 and len(devices) % 2 == 0 else 1
    return sharding.data_fsdp_mesh(data=data_axis, devices=devices)


def make_model(vocab_size: int, seq_len: int, d_model: int, layers: int) -> models.Transformer:
    return models.Transformer(vocab_size, max_len=seq_len, d_model=d_model, num_heads=4, num_layers=layers)


def make_optimizer(learning_rate: float, weight_decay: float, steps: int) -> oc.Transform:
    """AdamW with warm-up and cosine decay; biases and LayerNorm parameters do not decay."""
    warmup = max(1, steps // 10)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup, decay_steps=max(steps, warmup + 1), end_value=learning_rate / 10
    )
    return oc.adamw(schedule, weight_decay, mask=oc.default_decay_mask)


def global_batch(tokens: np.ndarray, labels: np.ndarray, step: int, batch_size: int, seed: int):
    """The batch of ``step``: the same rows on every host, whatever the mesh."""
    rows = np.random.default_rng([seed, step]).integers(0, len(tokens), batch_size)
    return tokens[rows], labels[rows]


def to_global_array(batch: np.ndarray, batch_sh: NamedSharding) -> jax.Array:
    """Builds the global batch from this process's rows (every row, with a single process)."""
    shape = batch.shape
    rows = {
        index[0].indices(shape[0])[:2] for index in batch_sh.addressable_devices_indices_map(shape).values()
    }
    start, stop = min(a for a, _ in rows), max(b for _, b in rows)
    if sum(b - a for a, b in rows) != stop - start:
        raise ValueError(f"this process's devices hold rows {sorted(rows)}, not one contiguous block")
    return jax.make_array_from_process_local_data(batch_sh, batch[start:stop], shape)


def make_train_step(
    model: models.Transformer,
    opt: optax.GradientTransformation,
    param_sh: Any,
    state_sh: Any,
    batch_sh: NamedSharding,
) -> Callable[..., tuple[Any, Any, jax.Array]]:
    """One jitted AdamW step whose inputs and outputs keep the given shardings."""

    def loss_fn(params: Any, tokens: jax.Array, labels: jax.Array) -> jax.Array:
        logits = model.apply({"params": params}, tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def step(params: Any, opt_state: Any, tokens: jax.Array, labels: jax.Array):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, labels)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    loss_sh = sharding.replicated(batch_sh.mesh)
    return jax.jit(
        step,
        in_shardings=(param_sh, state_sh, batch_sh, batch_sh),
        out_shardings=(param_sh, state_sh, loss_sh),
        donate_argnums=(0, 1),
    )


def format_bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


def memory_report(params: Any, opt_state: Any) -> str:
    """Per-device bytes of params and optimizer state, next to the unsharded totals."""
    p, s = sharding.per_device_bytes(params), sharding.per_device_bytes(opt_state)
    total_p = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    total_s = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(opt_state))
    lines = [
        f"unsharded: params {format_bytes(total_p)} ({total_p:,} B), "
        f"optimizer state {format_bytes(total_s)} ({total_s:,} B)",
        f"{'device':<12} {'params':>22} {'optimizer state':>24}",
    ]
    for device in sorted(p, key=lambda d: d.id):
        lines.append(
            f"{str(device.id):<12} {p[device]:>12,} B ({p[device] / total_p:4.0%}) "
            f"{s[device]:>14,} B ({s[device] / total_s:4.0%})"
        )
    return "\n".join(lines)


def checkpoint_target(tree: Any, shardings: Any) -> Any:
    """Abstract arrays with the shapes and dtypes of ``tree`` and the layouts of ``shardings``."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def main(
    argv: Sequence[str] | None = None, on_step: Callable[[int, Any, Any], None] | None = None
) -> dict[str, Any]:
    """Trains and returns the final params, optimizer state, losses and mesh.

    ``on_step(step, params, opt_state)``, when given, is called after every step (for
    monitoring); ``step`` counts from 1.
    """
    args = parse_args(argv)
    if args.coordinator is not None:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    mesh = make_mesh(args.devices, args.data)
    leader = jax.process_index() == 0
    say = print if leader else (lambda *a, **k: None)
    say(f"mesh {dict(mesh.shape)} over {mesh.devices.size} {mesh.devices.flat[0].platform} devices")
    if args.batch_size % mesh.devices.size:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by {mesh.devices.size} devices")

    ds = data.text(seq_len=args.seq_len)
    model = make_model(ds.num_classes, args.seq_len, args.d_model, args.layers)
    opt = make_optimizer(args.learning_rate, args.weight_decay, args.steps)

    # The params are created directly in their shards: no device ever holds the full model.
    # The random numbers do not depend on the layout, so every mesh starts from the same values.
    def init_params(key: jax.Array) -> Any:
        return model.init(key, jnp.zeros((1, args.seq_len), jnp.int32))["params"]

    key = jax.random.key(args.seed)
    param_sh = sharding.fsdp_shardings(jax.eval_shape(init_params, key), mesh, min_size=args.min_shard_size)
    params = jax.jit(init_params, out_shardings=param_sh)(key)
    state_sh = sharding.state_shardings(opt, params, param_sh)
    opt_state = jax.jit(opt.init, out_shardings=state_sh)(params)
    batch_sh = sharding.batch_sharding(mesh)
    train_step = make_train_step(model, opt, param_sh, state_sh, batch_sh)

    start = 0
    if args.restore is not None:
        import orbax.checkpoint as ocp

        target = {
            "params": checkpoint_target(params, param_sh),
            "opt_state": checkpoint_target(opt_state, state_sh),
            "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh)),
        }
        restored = ocp.StandardCheckpointer().restore(os.path.abspath(args.restore), target)
        params, opt_state, start = restored["params"], restored["opt_state"], int(restored["step"])
        say(f"restored step {start} from {args.restore} onto this mesh")

    split = sum(any(s.spec) for s in jax.tree.leaves(param_sh))
    say(
        f"{split} of {len(jax.tree.leaves(param_sh))} parameter arrays split over 'fsdp', the rest replicated"
    )
    say(memory_report(params, opt_state))

    losses = []
    end, printed = min(args.stop_after, args.steps), 0
    for step in range(start, end):
        tokens, labels = global_batch(ds.x_train, ds.y_train, step, args.batch_size, args.seed)
        params, opt_state, loss = train_step(
            params, opt_state, to_global_array(tokens, batch_sh), to_global_array(labels, batch_sh)
        )
        losses.append(float(loss))
        if on_step is not None:
            on_step(step + 1, params, opt_state)
        if (step + 1) % args.log_every == 0 or step + 1 == end:
            window = losses[printed:]
            printed = len(losses)
            first, last = step + 2 - len(window), step + 1
            say(f"step {last:5d}  loss {sum(window) / len(window):.4f}  (mean over steps {first}-{last})")

    if args.save is not None:
        import orbax.checkpoint as ocp

        checkpointer = ocp.StandardCheckpointer()
        step_array = jax.device_put(jnp.int32(end), sharding.replicated(mesh))
        checkpointer.save(
            os.path.abspath(args.save), {"params": params, "opt_state": opt_state, "step": step_array}
        )
        checkpointer.wait_until_finished()
        say(f"saved step {end} to {args.save}")
    return {"params": params, "opt_state": opt_state, "losses": losses, "mesh": mesh}


if __name__ == "__main__":
    main()
