"""Objects built from validated configs: optimizers, models and data sets.

:mod:`optim_chain.lab.config` reads and checks the YAML (keys, types, choices); this module turns
what it returns into the things an experiment runs:

* :func:`optimizer` and :func:`scheduled_optimizer`: the transform of an
  :class:`~optim_chain.lab.config.OptimizerSpec` (a preset or a chain of primitives, with its
  masks as predicates, its schedules and its parameter groups), the second with every learning
  rate under the experiment's ``training.schedule``. :func:`load_optimizer` does the same for an
  optimizer file.
* :func:`run_optimizer`: the ``hyperparams -> optimizer`` function the training loops call with
  each run's learning rate and weight decay.
* :func:`model`, :func:`load_data` and :func:`load_test_data`: the experiment's Flax model and
  data set.
* :func:`check`: builds each optimizer of an experiment once, as its runs will, so that a value
  the constructors refuse (a negative learning rate, ``b1: 1.0``) is reported before training.

A value refused while building is a :class:`~optim_chain.lab.config.ConfigError` on one line
that names the file and the dotted key, as a mistake found by the config module is.

Example::

    >>> from optim_chain.lab import build, config
    >>> experiment = config.load_experiment(None, "compare")   # read and checked key by key
    >>> build.check(experiment)                                # every optimizer built once
    >>> build.optimizer(experiment.optimizers["adamw"]).name
    'adamw'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import optax

import optim_chain as oc
from optim_chain import masks
from optim_chain.lab import config, models
from optim_chain.lab import data as data_lib
from optim_chain.lab.config import Experiment, OptimizerSpec, Training, Where
from optim_chain.transform import Transform

#: What building a transform or schedule raises on a bad argument (a huge integer: OverflowError).
_BUILD_ERRORS = (TypeError, ValueError, ArithmeticError)


# ------------------------------------------------------------------------------- optimizers


def optimizer(spec: OptimizerSpec, overrides: Mapping[str, Any] | None = None) -> Transform:
    """Builds the transform that a validated optimizer mapping describes.

    Args:
      spec: from :func:`optim_chain.lab.config.parse_optimizer` (or an experiment's
        ``optimizers``): ``{preset: name, **arguments}`` or ``{chain: [...]}``.
      overrides: preset arguments set from outside the file (the sweep's learning rate and
        weight decay, possibly tracers).

    Raises:
      ConfigError: when a constructor refuses a value, naming the file and the key.
    """
    return _optimizer(spec.spec, spec.where, overrides)


def scheduled_optimizer(
    spec: OptimizerSpec, schedule: str, steps: int, overrides: Mapping[str, Any] | None = None
) -> Transform:
    """:func:`optimizer` with the learning rate (from ``overrides`` or the spec) under ``schedule``.

    ``"cosine"`` replaces a number ``lr`` by ``optax.cosine_decay_schedule(lr, steps)`` and,
    where decoupled decay follows the schedule (``decay_scaling`` ``schedule`` or
    ``corrected``), passes ``lr`` as its ``peak_learning_rate``. ``lr`` may be a tracer.

    Args:
      spec: the optimizer.
      schedule: ``training.schedule``: ``"constant"`` or ``"cosine"``.
      steps: the training steps the schedule spans.
      overrides: as for :func:`optimizer`.

    Raises:
      ConfigError: when the learning rate is not a number, or a constructor refuses a value.
    """
    if schedule == "constant":
        return optimizer(spec, overrides)
    given = dict(overrides or {})
    lr = given.pop("learning_rate", None)
    if lr is None:
        lr = spec.spec.get("learning_rate")
    if lr is None or isinstance(lr, Mapping) or callable(lr):
        raise spec.where.child("learning_rate").error(
            f"must be a number under training.schedule: {schedule}, which makes the schedule itself"
        )
    lr = config.numbers_in_text(lr)
    given["learning_rate"] = optax.cosine_decay_schedule(lr, steps)
    if spec.spec.get("decay_scaling") in ("schedule", "corrected") and "peak_learning_rate" not in spec.spec:
        given["peak_learning_rate"] = lr
    rest = {k: v for k, v in spec.spec.items() if k != "learning_rate"}
    return _optimizer(rest, spec.where, given)


def run_optimizer(spec: OptimizerSpec, training: Training) -> Callable[[Mapping[str, Any]], Transform]:
    """``hyperparams -> optimizer`` for the training loops: each run's preset arguments (arrays
    with one entry per run under ``jax.vmap``, so tracers) go in as :func:`scheduled_optimizer`'s
    overrides, under ``training.schedule`` over ``training.steps``.

    The sweep passes its grid this way, compare its learning rate and weight decay, the timescale
    study its decays: the compiled programs then treat them alike, as arguments, never as constants.
    """

    def build(hyperparams: Mapping[str, Any]) -> Transform:
        return scheduled_optimizer(spec, training.schedule, training.steps, dict(hyperparams))

    return build


def load_optimizer(path: str | Path, overrides: Sequence[str] = ()) -> Transform:
    """Builds the optimizer of a file whose top level is ``optimizer: {...}``.

    Args:
      path: the YAML file.
      overrides: ``key.path=value`` strings applied before validation.

    Raises:
      ConfigError: on any mistake, naming the file, the key and the valid choices.
    """
    return optimizer(config.read_optimizer(path, overrides))


def grid_point(experiment: Experiment, label: str, decay_index: int = 0) -> dict[str, Any] | None:
    """The first learning rate and the ``decay_index``-th weight decay of optimizer ``label``'s
    sweep grid, as :func:`optimizer` overrides; ``None`` for an optimizer without a grid."""
    grid = experiment.grids.get(label)
    if grid is None:
        return None
    return {"learning_rate": grid.learning_rate[0], "weight_decay": grid.weight_decay[decay_index]}


def check(experiment: Experiment) -> None:
    """Builds every optimizer of ``experiment`` once, as its runs will build it.

    :func:`optim_chain.lab.config.load_experiment` checks keys, types and choices; the values
    themselves (a negative learning rate, ``b1: 1.0``, a regular expression that does not
    compile) are checked by the constructors. Calling this right after loading reports such a
    mistake before any data is loaded or any run starts. A sweep's optimizers are built at the
    first cell of their grid. Each is built as written and then, where ``training.schedule`` is
    not constant, under the schedule (which would hide a bad learning rate from the constructor).

    Raises:
      ConfigError: naming the file and the key of the first value refused.
    """
    training = experiment.training
    for label, spec in experiment.optimizers.items():
        point = grid_point(experiment, label)
        if point is None and experiment.kind == "timescale":
            point = {"weight_decay": 0.0}  # each run's decay comes from its timescale
        optimizer(spec, point)
        if training.schedule != "constant":
            scheduled_optimizer(spec, training.schedule, training.steps, point)


def _optimizer(spec: Mapping[str, Any], where: Where, overrides: Mapping[str, Any] | None) -> Transform:
    if "chain" in spec:
        if overrides:
            raise where.error(f"is a chain; only a preset can take {', '.join(overrides)} from outside")
        return _chain(spec["chain"], where.child("chain"))
    preset = config.PRESETS[spec["preset"]]
    arguments = {
        key: _argument(key, value, where.child(key))
        for key, value in spec.items()
        if key not in ("preset", "param_groups")
    }
    arguments.update(overrides or {})
    groups = spec.get("param_groups")
    if groups is None:
        return _call(preset, arguments, where)
    parsed = [_param_group(item, where.child("param_groups").child(i)) for i, item in enumerate(groups)]
    return _call(lambda **defaults: oc.param_groups(preset, parsed, **defaults), arguments, where)


def _param_group(item: Mapping[str, Any], where: Where) -> tuple[masks.Predicate, dict[str, Any]]:
    """``(selector, overrides)`` from ``{mask: ..., keyword: value, ...}``."""
    selector = _predicate(item["mask"], where.child("mask"))
    return selector, {k: _argument(k, v, where.child(k)) for k, v in item.items() if k != "mask"}


def _chain(items: Sequence[Any], where: Where) -> Transform:
    parts = []
    for index, item in enumerate(items):
        name, given = (item, None) if isinstance(item, str) else next(iter(item.items()))
        here = where.child(index).child(name)
        arguments = {k: _argument(k, v, here.child(k)) for k, v in (given or {}).items()}
        parts.append(_call(config.PRIMITIVES[name], arguments, here))
    return oc.chain(*parts, name="chain")


def _argument(name: str, value: Any, where: Where) -> Any:
    if name == "mask":
        return _mask(value, where)
    if name == "moment_dtype":
        return None if value is None else jnp.dtype(value)
    if name in config.RATE_ARGUMENTS and isinstance(value, Mapping):
        return _schedule(value, where)
    return config.numbers_in_text(value)


def _schedule(spec: Mapping[str, Any], where: Where) -> optax.Schedule:
    function = config.SCHEDULES[spec["schedule"]]
    arguments = {k: config.numbers_in_text(v) for k, v in spec.items() if k != "schedule"}
    return _call(function, arguments, where)


def _call(function: Callable[..., Any], arguments: Mapping[str, Any], where: Where) -> Any:
    try:
        return function(**arguments)
    except _BUILD_ERRORS as error:
        raise where.error(f"is invalid: {' '.join(str(error).split())}") from None


def _mask(spec: Any, where: Where) -> masks.Predicate | None:
    """The mask that a validated YAML mask describes: ``None`` (all), the default, or a predicate."""
    if spec is None or spec == "all":
        return None
    if spec == "default":
        return masks.DEFAULT_DECAY
    ((operator, argument),) = spec.items()
    inner = where.child(operator)
    if operator == "name_is":
        return masks.name_is(*([argument] if isinstance(argument, str) else argument))
    if operator == "path_matches":
        try:
            return masks.path_matches(argument)
        except ValueError as error:
            raise inner.error(str(error)) from None
    if operator in ("ndim_at_least", "ndim_at_most"):
        return getattr(masks, operator)(argument)
    if operator == "not":
        return ~_predicate(argument, inner)
    parts = [_predicate(item, inner.child(i)) for i, item in enumerate(argument)]
    combined = parts[0]
    for part in parts[1:]:
        combined = (combined & part) if operator == "all_of" else (combined | part)
    return combined


def _predicate(spec: Any, where: Where) -> masks.Predicate:
    mask = _mask(spec, where)
    return masks.everything() if mask is None else mask


# ----------------------------------------------------------------------------- models, data


def _data_arguments(experiment: Experiment) -> dict[str, Any]:
    return {k: v for k, v in experiment.data.items() if k != "name"}


def load_data(experiment: Experiment) -> data_lib.Dataset:
    """The experiment's data set (see :mod:`optim_chain.lab.data`), as ``data:`` describes it."""
    return data_lib.load(experiment.data["name"], **_data_arguments(experiment))


#: Data sets generated from a seed: each run draws its own (see :func:`load_draws`).
DRAWN_DATA = ("mnist1d",)


def data_seed(experiment: Experiment, run_seed: int) -> int:
    """The data seed of the run with seed ``run_seed``: ``data.seed + run_seed``."""
    return int(experiment.data.get("seed", 42)) + int(run_seed)


def load_draws(
    experiment: Experiment, seeds: Sequence[int], split: str | None = None
) -> list[data_lib.Dataset] | None:
    """One data set per run: run ``i`` with seed ``s`` draws the data at ``data.seed + s``.

    Every optimizer's runs with the same seed see the same draw (and the same initialisation and
    batches), so differences between optimizers stay paired, and intervals over runs cover the
    draw of the data as well as the initialisation. ``--set data.seed=N`` moves every draw.
    ``None`` for data sets that are not generated from a seed (the digits, the text): every run
    then shares :func:`load_data`'s.

    Args:
      experiment: its ``data`` section gives the data set and its arguments.
      seeds: the runs' seeds.
      split: ``"test"`` or ``"validation"`` to set where the loops evaluate (default: as the
        config says).
    """
    if experiment.data["name"] not in DRAWN_DATA:
        return None
    arguments = _data_arguments(experiment)
    arguments.pop("seed", None)
    if split is not None:
        arguments["evaluation_split"] = split
    return [
        data_lib.load(experiment.data["name"], seed=data_seed(experiment, s), **arguments) for s in seeds
    ]


def load_test_data(experiment: Experiment) -> data_lib.Dataset:
    """The data with the test split where the loops evaluate (for the tuned point only)."""
    arguments = _data_arguments(experiment)
    if "evaluation_split" in arguments:
        arguments["evaluation_split"] = "test"
    return data_lib.load(experiment.data["name"], **arguments)


def model(experiment: Experiment, dataset: data_lib.Dataset) -> Any:
    """The experiment's Flax model (see :mod:`optim_chain.lab.models`), sized for ``dataset``.

    Args:
      experiment: its ``model`` holds the model's name and keyword arguments.
      dataset: gives the number of classes (the vocabulary size and sequence length for text).
    """
    arguments = {k: v for k, v in experiment.model.items() if k != "name"}
    name = experiment.model["name"]
    if name == "mlp":
        return models.MLP(num_classes=dataset.num_classes, **arguments)
    if name == "cnn":
        return models.CNN(num_classes=dataset.num_classes, **arguments)
    return models.Transformer(vocab_size=dataset.num_classes, max_len=dataset.x_train.shape[1], **arguments)
