"""Training loops for Flax models: a compiled linen ``TrainState`` loop and an NNX loop.

:class:`Trainer` is the engine behind ``optim-chain compare`` and ``optim-chain sweep``. A run is
a pure function of its hyperparameters and its seed, so many runs train as one program:
``jax.vmap`` over seeds (compare) or over a learning-rate x weight-decay grid (sweep), then one
``jax.jit``. The optimizer is rebuilt inside the traced function from the hyperparameters, which
may be tracers; optim_chain's constructors check concrete numbers and let tracers through. The
random parts (initial parameters and batch order) are drawn outside the vmapped program, from the
seed alone, so a run gives the same result alone or in a grid.

Each run may train on its own data set (``datasets``: one draw of the data per run, same shapes),
passed to the program with a leading run axis like the parameters; otherwise all runs share the
trainer's data set. Where there are several local devices (GPUs, a TPU slice, or CPU devices
made with ``--xla_force_host_platform_device_count``), the run axis is sharded over all of them
with ``jax.sharding`` (padded to a multiple of their number): each device trains its share of
the runs and nothing else changes.

Inside a run the steps are a ``jax.lax.scan`` over ``flax.training.train_state.TrainState``
(``apply_gradients`` calls the optimizer's ``update``). The loop is cut into chunks of
``chunk_steps`` steps, after each of which the test set is evaluated: that gives the training
curves and lets a progress bar advance.

:func:`train_nnx` is the same training written with ``nnx.Optimizer``, one run at a time.

Example::

    >>> import optim_chain as oc
    >>> from optim_chain.lab import data, models, training
    >>> ds = data.digits()
    >>> trainer = training.Trainer(
    ...     models.MLP(), ds, lambda hp: oc.adamw(1e-3, 0.01, mask=oc.masks.DEFAULT_DECAY),
    ...     batch_size=128, chunk_steps=10)
    >>> result = trainer.run({}, seeds=[0, 1, 2], steps=20)     # three seeds, one program
    >>> result.test_accuracy.shape                              # (seeds, evaluations)
    (3, 2)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import nnx
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from optim_chain.lab.data import Dataset

Hyperparams = Mapping[str, Any]
OptimizerBuilder = Callable[[Hyperparams], optax.GradientTransformation]


def loss_and_accuracy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy and accuracy over every label position."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = (jnp.argmax(logits, -1) == labels).mean()
    return loss, accuracy


class RunState(NamedTuple):
    """What one run carries between chunks: parameters, optimizer state and step count."""

    params: Any
    opt_state: Any
    step: jax.Array


class ChunkMetrics(NamedTuple):
    """Metrics at the end of a chunk: mean training loss over its steps, test loss and accuracy."""

    train_loss: jax.Array
    test_loss: jax.Array
    test_accuracy: jax.Array


class RunResult(NamedTuple):
    """The outcome of :meth:`Trainer.run` for ``R`` runs evaluated at ``E`` points.

    Attributes:
      steps: ``int[E]``, the step after which each evaluation was taken.
      train_loss, test_loss, test_accuracy: ``float[R, E]`` curves.
      final: the final :class:`RunState`, each leaf with a leading axis of size ``R``.
      seconds: wall time of the run, compilation included.
      compile_seconds: wall time until the first chunk was done (compilation plus its steps).
    """

    steps: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray
    test_accuracy: np.ndarray
    final: RunState
    seconds: float
    compile_seconds: float


def batch_indices(seed: int, steps: int, batch_size: int, num_examples: int) -> np.ndarray:
    """The training examples of every step of a run, ``int32[steps, batch_size]``, drawn with replacement.

    Drawn on the host with NumPy from ``seed`` alone, so a run sees the same batches whether it
    trains alone or vmapped with others, and the compiled program holds no random-number code.
    """
    rng = np.random.default_rng([int(seed), 1])
    return rng.integers(0, num_examples, (steps, batch_size), dtype=np.int32)


class Trainer:
    """Trains a linen model on a :class:`~optim_chain.lab.data.Dataset`, many runs at once.

    A run is fixed by its hyperparameters and its seed: the seed sets the initial parameters
    (``model.init`` with an ``"rbg"`` key, which compiles quickly on CPU) and the batches
    (:func:`batch_indices`).

    Args:
      model: a linen module mapping a batch of inputs to logits.
      dataset: the data; its arrays are passed to the compiled program as arguments.
      build_optimizer: ``hyperparams -> optax.GradientTransformation``, called inside the traced
        function (so the hyperparameters may be tracers).
      batch_size: examples per step.
      chunk_steps: steps between two evaluations of the test set.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        build_optimizer: OptimizerBuilder,
        batch_size: int = 128,
        chunk_steps: int = 100,
    ) -> None:
        if batch_size < 1 or chunk_steps < 1:
            raise ValueError(f"batch_size and chunk_steps must be >= 1, got {batch_size} and {chunk_steps}")
        self.model = model
        self.dataset = dataset
        self.build_optimizer = build_optimizer
        self.batch_size = batch_size
        self.chunk_steps = chunk_steps
        self.arrays = tuple(jnp.asarray(a) for a in dataset[1:5])
        sample = jnp.zeros((1, *dataset.x_train.shape[1:]), dataset.x_train.dtype)
        self._init_params = jax.jit(
            lambda seed: model.init(jax.random.key(seed, impl="rbg"), sample)["params"]
        )

    # ------------------------------------------------------------------ one run, pure functions

    def init_params(self, seed: int) -> Any:
        """The model's initial parameters for ``seed`` (compiled once per trainer)."""
        return self._init_params(np.int32(seed))

    def init(self, hyperparams: Hyperparams, params: Any) -> RunState:
        """The starting :class:`RunState` of one run from its initial parameters."""
        opt_state = self.build_optimizer(hyperparams).init(params)
        return RunState(params, opt_state, jnp.zeros([], jnp.int32))

    def chunk(
        self, hyperparams: Hyperparams, run: RunState, arrays: tuple[jax.Array, ...], indices: jax.Array
    ) -> tuple[RunState, ChunkMetrics]:
        """One training step per row of ``indices`` (``int[steps, batch]``), then a test evaluation."""
        x_train, y_train, x_test, y_test = arrays
        tx = self.build_optimizer(hyperparams)
        state = train_state.TrainState(
            step=run.step, apply_fn=self.model.apply, params=run.params, tx=tx, opt_state=run.opt_state
        )

        def train_step(state: train_state.TrainState, index: jax.Array):
            def loss_fn(params: Any) -> jax.Array:
                logits = state.apply_fn({"params": params}, x_train[index])
                return loss_and_accuracy(logits, y_train[index])[0]

            loss, grads = jax.value_and_grad(loss_fn)(state.params)
            return state.apply_gradients(grads=grads), loss

        state, losses = jax.lax.scan(train_step, state, indices)
        test_loss, test_accuracy = self.evaluate(state.params, x_test, y_test)
        new_run = RunState(state.params, state.opt_state, state.step)
        return new_run, ChunkMetrics(losses.mean(), test_loss, test_accuracy)

    def evaluate(self, params: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Test loss and accuracy of ``params`` on ``(x, y)``."""
        return loss_and_accuracy(self.model.apply({"params": params}, x), y)

    # -------------------------------------------------------------------------- many runs

    def compiled(
        self, batched: bool = True, data_per_run: bool = False
    ) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """The jitted ``(init, chunk)`` pair; ``batched`` vmaps both over a leading run axis, and
        ``data_per_run`` (with ``batched``) gives the data arrays that axis too."""
        init, chunk = self.init, self.chunk
        if batched:
            init = jax.vmap(init)
            chunk = jax.vmap(chunk, in_axes=(0, 0, 0 if data_per_run else None, 0))
        return jax.jit(init), jax.jit(chunk)

    def _data(self, datasets: Sequence[Dataset] | None, runs: Sequence[int]) -> tuple[np.ndarray, ...]:
        """The data arrays the program reads: the trainer's, or one draw per run stacked."""
        if datasets is None:
            return self.arrays
        if len(datasets) != len(set(runs)):
            raise ValueError(
                f"datasets must hold one data set per run: {len(datasets)} for {len(set(runs))} runs"
            )
        for dataset in datasets:
            shapes = [a.shape for a in dataset[1:5]]
            if shapes != [a.shape for a in self.arrays]:
                raise ValueError(
                    f"every run's data set must have the trainer's shapes {[a.shape for a in self.arrays]}, "
                    f"got {shapes}"
                )
        return tuple(np.stack([datasets[i][field] for i in runs]) for field in range(1, 5))

    def run(
        self,
        hyperparams: Hyperparams,
        seeds: Sequence[int] | np.ndarray,
        steps: int,
        *,
        batched: bool = True,
        progress: Callable[[int], None] | None = None,
        compiled: tuple[Callable[..., Any], Callable[..., Any]] | None = None,
        datasets: Sequence[Dataset] | None = None,
        devices: Sequence[jax.Device] | None = None,
    ) -> RunResult:
        """Trains ``len(seeds)`` runs for ``steps`` steps.

        Args:
          hyperparams: a mapping of arrays with one entry per run along axis 0 (``batched``), or
            of scalars (one run, ``batched=False``). Empty when the optimizer has none.
          seeds: one integer seed per run (it sets the initialisation and the batches).
          steps: training steps per run.
          batched: train all runs as one vmapped program (``True``) or a single run.
          progress: called with the number of steps just taken, after every chunk.
          compiled: a pair from :meth:`compiled` to reuse (avoids compiling again).
          datasets: one data set per run (its own draw of the data), each with the shapes of the
            trainer's; ``None``: every run trains on the trainer's data set.
          devices: the devices the run axis is sharded over (``batched`` only); ``None``: all
            local devices.

        Returns:
          A :class:`RunResult`; with ``batched=False`` the run axis has size 1.
        """
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        seeds = [int(s) for s in np.atleast_1d(np.asarray(seeds))]
        if not batched and len(seeds) != 1:
            raise ValueError(f"batched=False trains one run; got {len(seeds)} seeds")
        if not batched and datasets is not None and len(datasets) != 1:
            raise ValueError(f"batched=False trains one run; got {len(datasets)} data sets")
        start = time.perf_counter()
        init, chunk = compiled or self.compiled(batched, datasets is not None and batched)
        runs = list(range(len(seeds)))
        shard = None
        if batched:
            mesh = Mesh(np.asarray(list(devices or jax.local_devices())), ("runs",))
            shard = NamedSharding(mesh, PartitionSpec("runs"))
            runs += [runs[-1]] * (-len(runs) % mesh.size)  # padded to a multiple of the devices
        unique = sorted(set(seeds))
        initial = {s: self.init_params(s) for s in unique}
        indices = {s: batch_indices(s, steps, self.batch_size, len(self.dataset.x_train)) for s in unique}
        arrays = self._data(datasets, runs)
        if batched:
            params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[initial[seeds[i]] for i in runs])
            all_indices = np.stack([indices[seeds[i]] for i in runs], axis=1)  # [steps, runs, batch]
            hyperparams = {k: np.asarray(v)[runs] for k, v in hyperparams.items()}
            params, hyperparams = jax.device_put((params, hyperparams), shard)
            if datasets is not None:
                arrays = jax.device_put(arrays, shard)
            else:
                arrays = jax.device_put(arrays, NamedSharding(shard.mesh, PartitionSpec()))
        else:
            params, all_indices = initial[seeds[0]], indices[seeds[0]]
            arrays = tuple(a[0] for a in arrays) if datasets is not None else arrays
            hyperparams = {k: jnp.asarray(v) for k, v in hyperparams.items()}
        state = init(hyperparams, params)
        history = []
        compile_seconds = 0.0
        done = 0
        while done < steps:
            size = min(self.chunk_steps, steps - done)
            chunk_indices = all_indices[done : done + size]
            if batched:
                chunk_indices = jax.device_put(np.swapaxes(chunk_indices, 0, 1), shard)
            state, metrics = chunk(hyperparams, state, arrays, chunk_indices)
            history.append(jax.device_get(metrics))
            done += size
            if not compile_seconds:
                compile_seconds = time.perf_counter() - start
            if progress is not None:
                progress(size)
        state = jax.block_until_ready(state)
        seconds = time.perf_counter() - start
        kept = len(seeds)  # the padding runs are dropped
        curves = [
            np.stack([np.atleast_1d(getattr(m, f))[:kept] for m in history], -1) for f in ChunkMetrics._fields
        ]
        final = jax.tree.map(lambda x: x[:kept], state) if batched else jax.tree.map(lambda x: x[None], state)
        evaluated = np.minimum(np.arange(1, len(history) + 1) * self.chunk_steps, steps)
        return RunResult(evaluated, *curves, final=final, seconds=seconds, compile_seconds=compile_seconds)


def unstack(tree: Any, index: int) -> Any:
    """Run ``index`` of a tree whose leaves have a leading run axis."""
    return jax.tree.map(lambda x: x[index], tree)


# --------------------------------------------------------------------------------------- NNX


def train_nnx(
    model: nnx.Module,
    tx: optax.GradientTransformation,
    dataset: Dataset,
    steps: int,
    batch_size: int = 128,
    seed: int = 0,
    eval_every: int = 0,
) -> dict[str, list[float]]:
    """Trains an NNX ``model`` in place with ``nnx.Optimizer(model, tx, wrt=nnx.Param)``.

    Args:
      model: an NNX module mapping inputs to logits; updated in place.
      tx: the optimizer (any optim_chain transform; masks see the ``nnx.State`` of the params).
      dataset: the data.
      steps: training steps.
      batch_size: examples per step, drawn uniformly with replacement.
      seed: the seed of the batch order.
      eval_every: evaluate the test set every this many steps (and after the last); 0: only at
        the end.

    Returns:
      ``{"step": [...], "train_loss": [...], "test_loss": [...], "test_accuracy": [...]}``.
    """
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
        def loss_fn(model: nnx.Module) -> jax.Array:
            return loss_and_accuracy(model(x), y)[0]

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def evaluate(model: nnx.Module, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        return loss_and_accuracy(model(x), y)

    x_train, y_train = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    x_test, y_test = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
    rng = np.random.default_rng(seed)
    history: dict[str, list[float]] = {"step": [], "train_loss": [], "test_loss": [], "test_accuracy": []}
    losses = []
    for step in range(1, steps + 1):
        index = rng.integers(0, len(dataset.y_train), batch_size)
        losses.append(train_step(model, optimizer, x_train[index], y_train[index]))
        if step == steps or (eval_every and step % eval_every == 0):
            test_loss, test_accuracy = evaluate(model, x_test, y_test)
            history["step"].append(step)
            history["train_loss"].append(float(np.mean(jax.device_get(losses))))
            history["test_loss"].append(float(test_loss))
            history["test_accuracy"].append(float(test_accuracy))
            losses = []
    return history
