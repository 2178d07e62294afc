"""YAML configuration: optimizers (a preset or a chain of primitives), masks and experiments.

Files are read with ``yaml.safe_load``. Every mistake raises :class:`ConfigError` (a
``ValueError``) on one line that names the file, the dotted key and, where there is a fixed set,
the valid choices::

    configs/x.yaml: key 'optimizer.nme' is unknown; valid keys: chain, preset, ...

An optimizer is a mapping, either a preset with its keyword arguments::

    optimizer:
      preset: adamw
      learning_rate: 1.0e-3
      weight_decay: 0.01
      mask: default

or a chain written primitive by primitive (each item ``name: {arguments}``, or just ``name``)::

    optimizer:
      chain:
        - add_l2_regularization: {weight_decay: 0.01, mask: default}
        - estimate_moments: {b1: 0.9, b2: 0.999}
        - correct_bias: {b1: 0.9, b2: 0.999}
        - normalize_by_second_moment: {eps: 1.0e-8}
        - scale_by_learning_rate: {learning_rate: 1.0e-3}

``mask`` is ``default`` (:data:`optim_chain.masks.DEFAULT_DECAY`), ``all``, or a predicate
written as a mapping with one key: ``name_is``, ``path_matches``, ``ndim_at_least``,
``ndim_at_most``, ``not``, ``all_of`` or ``any_of``. A learning rate, a weight decay or a
decay multiplier may be an optax schedule: ``{schedule: cosine_decay, init_value: 1.0e-3,
decay_steps: 2000}``. Numbers written like ``1e-3`` (which YAML reads as text) are accepted
as numbers. Every keyword of a preset is a key (``decay_scaling: corrected``,
``cautious_weight_decay: true``, ``anchor: init``, ``nesterov: true`` ...), and a preset may
split its parameters into torch-style groups, each a ``mask`` and the keywords it overrides::

    optimizer:
      preset: adamw
      learning_rate: 1.0e-3
      weight_decay: 0.1
      param_groups:
        - {mask: {ndim_at_most: 1}, weight_decay: 0.0}
        - {mask: {path_matches: Embed}, learning_rate: 1.0e-4}

Experiment files (``compare``, ``sweep`` and ``timescale``) are described in :func:`load_experiment`.

This module reads and checks; it builds nothing. :mod:`optim_chain.lab.build` turns what it
returns into optimizers, models and data sets, and :func:`optim_chain.lab.build.check` builds an
experiment's optimizers once, so that a value a constructor refuses (a negative learning rate,
``b1: 1.0``) is reported on the same kind of line before anything trains.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optax
import yaml

import optim_chain as oc
from optim_chain.lab import data as data_lib
from optim_chain.transform import Transform

PRESETS: dict[str, Callable[..., Transform]] = {
    "sgd": oc.sgd,
    "sgd_l2": oc.sgd_l2,
    "sgdw": oc.sgdw,
    "adagrad": oc.adagrad,
    "rmsprop": oc.rmsprop,
    "adam": oc.adam,
    "adam_l2": oc.adam_l2,
    "adamw": oc.adamw,
}

PRIMITIVES: dict[str, Callable[..., Transform]] = {
    "add_l2_regularization": oc.add_l2_regularization,
    "estimate_moments": oc.estimate_moments,
    "estimate_second_moment": oc.estimate_second_moment,
    "accumulate_second_moment": oc.accumulate_second_moment,
    "center_second_moment": oc.center_second_moment,
    "max_second_moment": oc.max_second_moment,
    "correct_bias": oc.correct_bias,
    "normalize_by_second_moment": oc.normalize_by_second_moment,
    "add_momentum": oc.add_momentum,
    "scale_by_learning_rate": oc.scale_by_learning_rate,
    "decoupled_weight_decay": oc.decoupled_weight_decay,
}

SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {
    "constant": optax.constant_schedule,
    "cosine_decay": optax.cosine_decay_schedule,
    "warmup_cosine_decay": optax.warmup_cosine_decay_schedule,
    "linear": optax.linear_schedule,
    "exponential_decay": optax.exponential_decay,
}

MASK_NAMES = ("default", "all")
MASK_OPERATORS = ("name_is", "path_matches", "ndim_at_least", "ndim_at_most", "not", "all_of", "any_of")
DTYPES = ("float32", "float64", "bfloat16", "float16")
MODELS = ("mlp", "cnn", "transformer")
#: The data sets each model reads.
MODEL_DATA = {"mlp": ("digits", "mnist1d"), "cnn": ("mnist1d",), "transformer": ("text",)}
#: Arguments that take a schedule as well as a number.
RATE_ARGUMENTS = ("learning_rate", "multiplier", "weight_decay")

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
#: The most values one ``{min, max, num}`` grid axis may have.
MAX_GRID_POINTS = 1000


class ConfigError(ValueError):
    """A configuration mistake, reported on one line with the file and the key."""


@dataclasses.dataclass(frozen=True)
class Where:
    """A position in a config file: the file and a dotted key, for error messages."""

    file: str
    key: str = ""

    def child(self, key: Any) -> Where:
        return Where(self.file, f"{self.key}.{key}" if self.key else str(key))

    def error(self, message: str) -> ConfigError:
        file, key = _printable(self.file), _printable(self.key)
        return ConfigError(f"{file}: key '{key}' {message}" if key else f"{file}: {message}")


def _printable(text: str) -> str:
    """``text`` with characters that would break the line (newlines, controls) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _choices(values: Sequence[str]) -> str:
    return ", ".join(values)


def _mapping(value: Any, where: Where) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise where.error(f"must be a mapping, got {value!r}")
    for key in value:
        if not isinstance(key, str):
            raise where.error(f"has a non-text key {key!r}")
    return dict(value)


def _check_keys(value: Mapping[str, Any], valid: Sequence[str], where: Where) -> None:
    for key in value:
        if key not in valid:
            raise where.child(key).error(f"is unknown; valid keys: {_choices(sorted(valid))}")


def _number(value: Any, where: Where) -> float:
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise where.error(f"must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:
        raise where.error(f"is too large a number, got {value!r}") from None


def _file_name(value: Any, where: Where) -> str:
    """``value``, checked to be usable as a folder name: a run's or a regime's."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise where.error(f"must be a plain file name (letters, digits, _ . -), got {value!r}")
    return value


def _integer(value: Any, where: Where, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise where.error(f"must be an integer >= {minimum}, got {value!r}")
    return value


# ------------------------------------------------------------------------------------ masks


def _check_mask(spec: Any, where: Where) -> None:
    """Checks a mask's YAML form: ``default``, ``all`` or a predicate mapping (see module doc)."""
    if spec is None or spec in MASK_NAMES:
        return
    if isinstance(spec, str):
        raise where.error(
            f"is {spec!r}; valid choices: {_choices(MASK_NAMES)}, or a mapping with one of "
            f"{_choices(MASK_OPERATORS)}"
        )
    spec = _mapping(spec, where)
    if len(spec) != 1:
        raise where.error(f"must have exactly one of {_choices(MASK_OPERATORS)}, got {sorted(spec)}")
    ((operator, argument),) = spec.items()
    _check_keys(spec, MASK_OPERATORS, where)
    inner = where.child(operator)
    if operator == "name_is":
        names = [argument] if isinstance(argument, str) else argument
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise inner.error(f"must be a name or a list of names, got {argument!r}")
    elif operator == "path_matches":
        if not isinstance(argument, str):
            raise inner.error(f"must be a regular expression, got {argument!r}")
    elif operator in ("ndim_at_least", "ndim_at_most"):
        _integer(argument, inner)
    elif operator == "not":
        _check_mask(argument, inner)
    else:
        if not isinstance(argument, list) or not argument:
            raise inner.error(f"must be a non-empty list of masks, got {argument!r}")
        for index, item in enumerate(argument):
            _check_mask(item, inner.child(index))


# ------------------------------------------------------------------------------- optimizers


def numbers_in_text(value: Any) -> Any:
    """``value``, or the number it spells when it is text: YAML 1.1 reads ``1e-3`` as text."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return value


def _check_schedule(spec: Any, where: Where) -> None:
    spec = _mapping(spec, where)
    name = spec.pop("schedule", None)
    if not isinstance(name, str) or name not in SCHEDULES:
        raise where.child("schedule").error(f"is {name!r}; valid choices: {_choices(sorted(SCHEDULES))}")
    _check_arguments(SCHEDULES[name], spec, where)
    parameters = inspect.signature(SCHEDULES[name]).parameters
    for key, value in spec.items():
        value = numbers_in_text(value)
        default = parameters[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise where.child(key).error(f"must be true or false, got {value!r}")
        elif not (value is None and default is None) and (
            isinstance(value, bool) or not isinstance(value, (int, float))
        ):
            raise where.child(key).error(f"must be a number, got {value!r}")


def _check_argument(name: str, value: Any, where: Where) -> None:
    if name == "mask":
        _check_mask(value, where)
    elif name == "moment_dtype":
        if value is not None and value not in DTYPES:
            raise where.error(f"is {value!r}; valid choices: {_choices(DTYPES)}")
    elif name in RATE_ARGUMENTS and isinstance(value, Mapping):
        _check_schedule(value, where)
    elif isinstance(value, int) and not isinstance(value, bool):
        _number(value, where)  # an integer beyond the float range is reported here, by its key


def _check_arguments(function: Callable[..., Any], given: Mapping[str, Any], where: Where) -> None:
    """Checks ``given`` against ``function``'s keyword arguments, and each value's form."""
    parameters = inspect.signature(function).parameters
    _check_keys(given, list(parameters), where)
    missing = [
        name
        for name, p in parameters.items()
        if p.default is inspect.Parameter.empty and p.kind != p.VAR_POSITIONAL and name not in given
    ]
    if missing:
        raise where.error(f"is missing the required argument(s) {', '.join(missing)}")
    for name, value in given.items():
        _check_argument(name, value, where.child(name))


def parse_optimizer(spec: Any, where: Where, set_by_experiment: Sequence[str] = ()) -> OptimizerSpec:
    """Checks an optimizer mapping's keys, types and choices; :mod:`.build` builds it.

    Args:
      spec: ``{preset: name, **arguments}`` or ``{chain: [...]}`` (see the module docstring).
      where: the file and key of ``spec``, for error messages.
      set_by_experiment: preset arguments that the experiment sets and the mapping must leave out
        (a sweep's ``learning_rate`` and ``weight_decay``).

    Raises:
      ConfigError: on any mistake, naming the file, the key and the valid choices.
    """
    spec = _mapping(spec, where)
    if ("preset" in spec) == ("chain" in spec):
        raise where.error("must have exactly one of 'preset' or 'chain'")
    if "chain" in spec:
        _check_keys(spec, ["chain"], where)
        if set_by_experiment:
            taken = ", ".join(set_by_experiment)
            raise where.error(f"is a chain; only a preset can take {taken} from outside")
        _check_chain(spec["chain"], where.child("chain"))
        return OptimizerSpec(spec, where)
    name = spec["preset"]
    if not isinstance(name, str) or name not in PRESETS:
        raise where.child("preset").error(f"is {name!r}; valid choices: {_choices(sorted(PRESETS))}")
    preset = PRESETS[name]
    valid = ["preset", "param_groups", *inspect.signature(preset).parameters]
    _check_keys(spec, valid, where)
    for key in set_by_experiment:
        if key in spec:
            raise where.child(key).error("is set by the experiment and must be left out here")
        if key not in valid:
            raise where.child("preset").error(f"is {name!r}, which has no argument {key!r}")
    arguments = {k: v for k, v in spec.items() if k not in ("preset", "param_groups")}
    _check_arguments(preset, {**dict.fromkeys(set_by_experiment, 0.0), **arguments}, where)
    if spec.get("param_groups") is not None:
        _check_param_groups(preset, spec["param_groups"], where.child("param_groups"))
    return OptimizerSpec(spec, where)


def _check_param_groups(preset: Callable[..., Transform], items: Any, where: Where) -> None:
    """Checks ``[{mask: ..., keyword: value, ...}, ...]``."""
    if not isinstance(items, list) or not items:
        raise where.error("must be a non-empty list of groups, each {mask: ..., keyword: value, ...}")
    keywords = [k for k in inspect.signature(preset).parameters if k != "mask"]
    for index, item in enumerate(items):
        here = where.child(index)
        item = _mapping(item, here)
        if "mask" not in item:
            raise here.error("needs a 'mask' selecting the group's parameters")
        _check_keys(item, ["mask", *keywords], here)
        _check_mask(item["mask"], here.child("mask"))
        for key, value in item.items():
            if key != "mask":
                _check_argument(key, value, here.child(key))


def _check_chain(items: Any, where: Where) -> None:
    if not isinstance(items, list) or not items:
        raise where.error("must be a non-empty list of primitives")
    for index, item in enumerate(items):
        here = where.child(index)
        if isinstance(item, str):
            name, given = item, {}
        elif isinstance(item, Mapping) and len(item) == 1:
            ((name, given),) = item.items()
            given = _mapping(given, here.child(name))
        else:
            raise here.error(f"must be a primitive name or a mapping {{name: {{arguments}}}}, got {item!r}")
        if name not in PRIMITIVES:
            raise here.error(f"names {name!r}; valid primitives: {_choices(sorted(PRIMITIVES))}")
        _check_arguments(PRIMITIVES[name], given, here.child(name))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a YAML mapping with ``yaml.safe_load``; a missing or malformed file is a ConfigError."""
    where = Where(str(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise where.error(f"cannot be read: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise where.error(f"is not UTF-8 text: byte {error.start} cannot be decoded") from None
    except ValueError as error:  # a path with a NUL character
        raise where.error(f"cannot be read: {error}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise where.error(f"is not valid YAML: {' '.join(str(error).split())}") from None
    except RecursionError:
        raise where.error("is not valid YAML: it is nested too deeply") from None
    if loaded is None:
        raise where.error(
            "is empty; write the keys to change, or leave --config out for the default experiment"
        )
    return _mapping(loaded, where)


def read_optimizer(path: str | Path, overrides: Sequence[str] = ()) -> OptimizerSpec:
    """Reads and checks a file whose top level is ``optimizer: {...}``.

    Args:
      path: the YAML file.
      overrides: ``key.path=value`` strings applied before validation.

    Raises:
      ConfigError: on any mistake, naming the file, the key and the valid choices.
    """
    file = find_config(path)
    where = Where(str(path) if file == Path(path) else _shown(file))
    raw = apply_overrides(read_yaml(file), overrides, where)
    _check_keys(raw, ["optimizer"], where)
    if "optimizer" not in raw:
        raise where.error("has no 'optimizer' mapping")
    return parse_optimizer(raw["optimizer"], where.child("optimizer"))


# ------------------------------------------------------------------------------ experiments


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer: its checked mapping and where it came from (:mod:`.build` builds it)."""

    spec: dict[str, Any]
    where: Where

    @property
    def label(self) -> str:
        return self.where.key.rsplit(".", 1)[-1]


#: Learning-rate schedules an experiment can put around every optimizer's learning rate.
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class Training:
    """How each run trains: steps, batch size, evaluation interval, seeds and the lr schedule.

    ``schedule: cosine`` anneals every optimizer's learning rate from its value to zero over
    ``steps`` (``optax.cosine_decay_schedule``), the value being the schedule's peak (decoupled
    decay under ``decay_scaling: schedule`` or ``corrected`` is told so). ``final_seeds`` (sweep)
    is the number of seeds trained at each optimizer's tuned cell and evaluated on the test split.
    """

    steps: int = 2000
    batch_size: int = 32
    eval_every: int = 100
    seeds: int = 5
    first_seed: int = 0
    schedule: str = "constant"
    final_seeds: int = 0


@dataclasses.dataclass(frozen=True)
class Grid:
    """The learning rates and weight decays of one optimizer's sweep."""

    learning_rate: tuple[float, ...]
    weight_decay: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Study:
    """The grid of a ``timescale`` experiment (Wang & Aitchison's claim).

    Attributes:
      train_sizes: the training-set sizes, each the first that many training examples.
      epochs: epochs per run, the same at every size (so runs on more data take more steps).
      timescales: the AdamW timescales ``tau_epoch = 1 / (eta * lambda * iterations per epoch)``
        to train at, each turned into a weight decay by
        :func:`optim_chain.weight_decay_from_timescale`.
    """

    train_sizes: tuple[int, ...]
    epochs: int
    timescales: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A ``compare``, ``sweep`` or ``timescale`` configuration, its keys, types and choices checked.

    Attributes:
      kind: ``"compare"``, ``"sweep"`` or ``"timescale"``.
      name: the run's name; results go to ``runs/<name>/``.
      data: the data set's name and keyword arguments (see :mod:`optim_chain.lab.data`).
      model: the model's name and keyword arguments.
      training: see :class:`Training`.
      optimizers: label -> :class:`OptimizerSpec`, in file order.
      grids: (sweep) label -> :class:`Grid`.
      pairs: (sweep) the heatmaps drawn side by side, as pairs of labels.
      baseline_runs: (sweep) runs per optimizer timed one at a time, for the speed-up.
      source: the file the experiment was read from (a packaged one as
        ``optim_chain/lab/configs/<file>``).
      study: (timescale) the sizes, epochs and timescales, see :class:`Study`.
      refine: (sweep) after each coarse grid, a fine stage of half steps around its best cell
        (see :mod:`optim_chain.lab.tuning`).
      tuned: (compare) the regime whose tuned cells set the optimizers' learning rates and
        decays, as the results file records it, with ``"regime"`` and ``"file"``.
    """

    kind: str
    name: str
    data: dict[str, Any]
    model: dict[str, Any]
    training: Training
    optimizers: dict[str, OptimizerSpec]
    grids: dict[str, Grid] = dataclasses.field(default_factory=dict)
    pairs: tuple[tuple[str, str], ...] = ()
    baseline_runs: int = 0
    source: str = ""
    study: Study | None = None
    refine: bool = False
    tuned: dict[str, Any] | None = None


_MLP_ARGUMENTS = {"hidden": [128], "layer_norm": True}
_CNN_ARGUMENTS = {"channels": 25, "layer_norm": False}
_TRANSFORMER_ARGUMENTS = {"d_model": 64, "num_heads": 4, "num_layers": 2}

#: The configs shipped with the package: the default experiments, the map, one file per preset
#: and the README's examples (``configs/`` of the source tree is a link to this folder).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: The default experiment of each kind: the file a command reads when ``--config`` is left out.
DEFAULT_FILES: dict[str, Path] = {
    "compare": CONFIG_DIR / "mnist1d_compare.yaml",
    "sweep": CONFIG_DIR / "mnist1d_sweep.yaml",
    "timescale": CONFIG_DIR / "mnist1d_timescale.yaml",
}


def packaged_configs() -> list[str]:
    """The packaged config files, relative to :data:`CONFIG_DIR` (``presets/adamw.yaml``)."""
    return sorted(p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*.yaml"))


def find_config(path: str | Path) -> Path:
    """``path`` when it exists, else the packaged config it names.

    A relative path that does not exist is looked up in :data:`CONFIG_DIR` by its last parts,
    so ``configs/digits_compare.yaml`` and ``configs/presets/adamw.yaml``, as the README writes
    them, work from any folder.

    Example::

      >>> from optim_chain.lab import config
      >>> path = config.find_config("configs/presets/adamw.yaml")   # from any folder
      >>> path.resolve().relative_to(config.CONFIG_DIR).as_posix()
      'presets/adamw.yaml'

    Raises:
      ConfigError: neither ``path`` nor a packaged config of that name exists; the message
        lists the packaged configs.
    """
    given = Path(path)
    if given.exists():
        return given
    if not given.is_absolute():
        for start in range(len(given.parts)):
            candidate = CONFIG_DIR.joinpath(*given.parts[start:])
            if candidate.is_file():
                return candidate
    raise Where(str(path)).error(
        f"does not exist and names no packaged config; packaged configs: {_choices(packaged_configs())}"
    )


def _shown(path: Path) -> str:
    """How messages and reports name a config file: a packaged one by its place in the package."""
    try:
        return (Path("optim_chain") / "lab" / "configs" / path.resolve().relative_to(CONFIG_DIR)).as_posix()
    except ValueError:
        return str(path)


def _default(kind: str) -> dict[str, Any]:
    """The default experiment of ``kind`` as read from its packaged file."""
    return read_yaml(DEFAULT_FILES[kind])


_COMMON_KEYS = ("name", "data", "model", "training", "optimizers")
_KEYS = {
    "compare": (*_COMMON_KEYS, "tuned"),
    "sweep": (*_COMMON_KEYS, "pairs", "baseline", "refine"),
    "timescale": (*_COMMON_KEYS, "study"),
}


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], where: Where) -> dict[str, Any]:
    """Applies ``key.path=value`` overrides (values read as YAML) to a raw config mapping."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise where.error(f"override {item!r} must look like key.path=value")
        path, _, text = item.partition("=")
        keys = path.strip().split(".")
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise where.child(".".join(keys[: depth + 1])).error(f"is not a mapping; cannot set {path!r}")
            node = child
        try:
            node[keys[-1]] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise where.error(f"override {item!r} has a value that is not valid YAML") from None
    return raw


def load_experiment(path: str | Path | None, kind: str, overrides: Sequence[str] = ()) -> Experiment:
    """Reads and checks a ``compare``, ``sweep`` or ``timescale`` experiment.

    Keys (all optional; a section left out is the default experiment's, from the packaged file of
    :data:`DEFAULT_FILES`; a key left out of a section given is that section's own default):

    * ``name``: results go to ``runs/<name>/``.
    * ``data``: ``{name: mnist1d | digits | text, ...}`` with the keyword arguments of
      :func:`optim_chain.lab.data.mnist1d`, :func:`optim_chain.lab.data.digits` or
      :func:`optim_chain.lab.data.text`.
    * ``model``: ``{name: cnn, channels: 25, layer_norm: false}`` (MNIST-1D), ``{name: mlp,
      hidden: [128], layer_norm: true}`` or ``{name: transformer, d_model: 64, num_heads: 4,
      num_layers: 2}``.
    * ``tuned`` (compare): ``{regime: name}`` (and optionally ``file``, a ``tuned.json`` of
      ``optim-chain map``; default: the one shipped in ``optim_chain/lab/results/``) sets each
      optimizer's learning rate and decay to its tuned cell in that regime; the model and
      ``data.train_size`` must be the regime's.
    * ``training``: ``steps``, ``batch_size``, ``eval_every``, ``seeds``, ``first_seed``,
      ``schedule`` (``constant`` or ``cosine``) and, in a sweep, ``final_seeds`` (see :class:`Training`).
    * ``optimizers``: label -> an optimizer mapping, or the path of an optimizer file (relative
      to this file). In a sweep each is a preset whose learning rate and weight decay come from
      its ``grid: {learning_rate: ..., weight_decay: ...}``, each axis a list of numbers or
      ``{min, max, num}`` (log-spaced).
    * ``pairs`` (sweep): the heatmaps to draw side by side, e.g. ``[[adam_l2, adamw]]``.
    * ``baseline`` (sweep): ``{runs: 2}``, runs per optimizer timed one at a time.
    * ``refine`` (sweep): ``true`` adds a fine stage of half steps around each coarse grid's
      best cell (see :mod:`optim_chain.lab.tuning`).
    * ``study`` (timescale): ``{train_sizes: [...], epochs: N, timescales: [...]}`` (see
      :class:`Study`); each optimizer is a preset with a number ``learning_rate`` and no
      ``weight_decay``, which each timescale sets.

    Args:
      path: the YAML file (one that does not exist is looked up among the packaged configs, see
        :func:`find_config`), or ``None`` for the default experiment of ``kind``.
      kind: ``"compare"``, ``"sweep"`` or ``"timescale"``.
      overrides: ``key.path=value`` strings applied before validation.

    Raises:
      ConfigError: on any mistake in the keys, types or choices, naming the file and the key. The
        values an optimizer's constructor checks are checked by
        :func:`optim_chain.lab.build.check`.
    """
    if kind not in DEFAULT_FILES:
        raise ValueError(f"kind must be one of {', '.join(DEFAULT_FILES)}, got {kind!r}")
    file = DEFAULT_FILES[kind] if path is None else find_config(path)
    where = Where(str(path) if path is not None and file == Path(path) else _shown(file))
    raw = apply_overrides(read_yaml(file), overrides, where)
    return parse_experiment(raw, kind, where, file.parent)


def parse_experiment(raw: dict[str, Any], kind: str, where: Where, base: Path = Path(".")) -> Experiment:
    """Checks an experiment mapping read from a file (see :func:`load_experiment`).

    Args:
      raw: the mapping, overrides applied.
      kind: ``"compare"``, ``"sweep"`` or ``"timescale"``.
      where: the file, for error messages.
      base: the folder that relative file names in ``raw`` are read from.

    Raises:
      ConfigError: on any mistake, naming the file and the key.
    """
    default = _default(kind)
    _check_keys(raw, _KEYS[kind], where)
    name = _file_name(raw.get("name", default["name"]), where.child("name"))
    dataset = _data(raw.get("data", default["data"]), where.child("data"))
    model = _model(raw.get("model", default["model"]), dataset["name"], where.child("model"))
    training_raw = _mapping(raw.get("training", default["training"]), where.child("training"))
    training = _training(training_raw, where.child("training"))
    optimizers_raw = _mapping(raw.get("optimizers", default["optimizers"]), where.child("optimizers"))
    if not optimizers_raw:
        raise where.child("optimizers").error("must name at least one optimizer")
    tuned = None
    if kind == "compare" and raw.get("tuned") is not None:
        tuned = _tuned_regime(raw["tuned"], dataset, model, training, where.child("tuned"), base)
        optimizers_raw = _with_tuned_cells(optimizers_raw, tuned, where.child("optimizers"), base)
    optimizers: dict[str, OptimizerSpec] = {}
    grids: dict[str, Grid] = {}
    for label, spec in optimizers_raw.items():
        here = where.child("optimizers").child(label)
        if isinstance(spec, str):
            file = base / spec
            try:
                loaded = read_yaml(file)
            except ConfigError as error:
                raise here.error(f"names the optimizer file {spec!r}, and {error}") from None
            _check_keys(loaded, ["optimizer"], Where(str(file)))
            spec, here = loaded.get("optimizer"), Where(str(file), "optimizer")
        spec = _mapping(spec, here)
        if kind == "sweep":
            grids[label] = _grid(spec.pop("grid", None), here.child("grid"))
            optimizers[label] = parse_optimizer(spec, here, ("learning_rate", "weight_decay"))
        elif kind == "timescale":
            if not isinstance(numbers_in_text(spec.get("learning_rate")), (int, float)):
                raise here.child("learning_rate").error(
                    "must be a number: each timescale becomes a weight decay at this learning rate"
                )
            optimizers[label] = parse_optimizer(spec, here, ("weight_decay",))
        else:
            optimizers[label] = parse_optimizer(spec, here)
    if kind == "compare":
        return Experiment(kind, name, dataset, model, training, optimizers, source=where.file, tuned=tuned)
    if kind == "timescale":
        if "train_size" in dataset:
            raise where.child("data").child("train_size").error("is set by study.train_sizes; leave it out")
        study = _study(raw.get("study", default["study"]), where.child("study"))
        return Experiment(kind, name, dataset, model, training, optimizers, source=where.file, study=study)
    pairs = _pairs(raw.get("pairs", []), list(optimizers), where.child("pairs"))
    baseline = _mapping(raw.get("baseline", default["baseline"]), where.child("baseline"))
    _check_keys(baseline, ["runs"], where.child("baseline"))
    runs = _integer(baseline.get("runs", 2), where.child("baseline").child("runs"))
    refine = raw.get("refine", default["refine"])
    if not isinstance(refine, bool):
        raise where.child("refine").error(f"must be true or false, got {refine!r}")
    return Experiment(
        kind, name, dataset, model, training, optimizers, grids, pairs, runs, where.file, refine=refine
    )


def _data(raw: Any, where: Where) -> dict[str, Any]:
    raw = _mapping(raw, where)
    name = raw.get("name", "mnist1d")
    if name not in data_lib.DATASETS:
        raise where.child("name").error(f"is {name!r}; valid choices: {_choices(data_lib.DATASETS)}")
    parameters = inspect.signature(data_lib.LOADERS[name]).parameters
    _check_keys(raw, ["name", *parameters], where)
    checked: dict[str, Any] = {"name": name}
    for key, value in raw.items():
        here = where.child(key)
        if key == "test_fraction":
            checked[key] = _number(value, here)
            if not 0 < checked[key] < 1:
                raise here.error(f"must lie in (0, 1), got {value!r}")
        elif key == "validation_fraction":
            checked[key] = _number(value, here)
            if not 0 <= checked[key] < 1:
                raise here.error(f"must lie in [0, 1) (0: no validation split), got {value!r}")
        elif key == "evaluation_split":
            if value not in data_lib.EVALUATION_SPLITS:
                raise here.error(f"is {value!r}; valid choices: {_choices(data_lib.EVALUATION_SPLITS)}")
            checked[key] = value
        elif key != "name":
            checked[key] = _integer(value, here, 2 if key == "seq_len" else 0)
    if checked.get("evaluation_split") == "validation" and checked.get("validation_fraction", 1) == 0:
        raise where.child("evaluation_split").error("is 'validation', which needs validation_fraction > 0")
    return checked


def _model(raw: Any, data_name: str, where: Where) -> dict[str, Any]:
    raw = _mapping(raw, where)
    name = raw.get("name", "cnn")
    if name not in MODELS:
        raise where.child("name").error(f"is {name!r}; valid choices: {_choices(MODELS)}")
    expected = MODEL_DATA[name]
    if data_name not in expected:
        raise where.child("name").error(
            f"is {name!r}, which needs data.name {' or '.join(map(repr, expected))}, not {data_name!r}"
        )
    defaults = {"mlp": _MLP_ARGUMENTS, "cnn": _CNN_ARGUMENTS, "transformer": _TRANSFORMER_ARGUMENTS}[name]
    _check_keys(raw, ["name", *defaults], where)
    checked: dict[str, Any] = {"name": name}
    for key, value in raw.items():
        if key == "name":
            continue
        here = where.child(key)
        if key == "hidden":
            if not isinstance(value, list) or not value:
                raise here.error(f"must be a non-empty list of layer widths, got {value!r}")
            checked[key] = tuple(_integer(v, here, 1) for v in value)
        elif key == "layer_norm":
            if not isinstance(value, bool):
                raise here.error(f"must be true or false, got {value!r}")
            checked[key] = value
        else:
            checked[key] = _integer(value, here, 1)
    if name == "transformer":
        d_model = checked.get("d_model", 64)
        heads = checked.get("num_heads", 4)
        if d_model % heads:
            raise where.child("num_heads").error(f"must divide d_model={d_model}, got {heads}")
    return checked


def _training(raw: dict[str, Any], where: Where) -> Training:
    fields = [f.name for f in dataclasses.fields(Training)]
    _check_keys(raw, fields, where)
    minimum = {"first_seed": 0, "final_seeds": 0}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "schedule":
            if value not in LR_SCHEDULES:
                raise where.child(key).error(f"is {value!r}; valid choices: {_choices(LR_SCHEDULES)}")
            values[key] = value
        else:
            values[key] = _integer(value, where.child(key), minimum.get(key, 1))
    return Training(**values)


def _axis(raw: Any, where: Where) -> tuple[float, ...]:
    if isinstance(raw, list):
        values = [_number(v, where.child(i)) for i, v in enumerate(raw)]
    else:
        raw = _mapping(raw, where)
        _check_keys(raw, ["min", "max", "num"], where)
        for key in ("min", "max", "num"):
            if key not in raw:
                raise where.error(f"needs min, max and num (or a list of values); {key} is missing")
        low, high = _number(raw["min"], where.child("min")), _number(raw["max"], where.child("max"))
        num = _integer(raw["num"], where.child("num"), 1)
        if num > MAX_GRID_POINTS:
            raise where.child("num").error(f"must be at most {MAX_GRID_POINTS}, got {num}")
        if not 0 < low <= high:
            raise where.error(f"needs 0 < min <= max, got min={low}, max={high}")
        values = list(np.geomspace(low, high, num)) if num > 1 else [low]
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise where.error(f"must hold one or more finite numbers >= 0, got {values!r}")
    return tuple(float(v) for v in values)


def _grid(raw: Any, where: Where) -> Grid:
    raw = _mapping(raw, where)
    _check_keys(raw, ["learning_rate", "weight_decay"], where)
    for key in ("learning_rate", "weight_decay"):
        if key not in raw:
            raise where.error(f"needs {key} (a list of numbers or {{min, max, num}})")
    return Grid(
        _axis(raw["learning_rate"], where.child("learning_rate")),
        _axis(raw["weight_decay"], where.child("weight_decay")),
    )


def _study(raw: Any, where: Where) -> Study:
    raw = _mapping(raw, where)
    fields = ("train_sizes", "epochs", "timescales")
    _check_keys(raw, fields, where)
    for key in fields:
        if key not in raw:
            raise where.error(f"needs {', '.join(fields)}; {key} is missing")
    sizes = raw["train_sizes"]
    if not isinstance(sizes, list) or len(sizes) < 2:
        raise where.child("train_sizes").error(f"must list two or more sizes, got {sizes!r}")
    sizes = tuple(_integer(v, where.child("train_sizes").child(i), 1) for i, v in enumerate(sizes))
    timescales = _axis(raw["timescales"], where.child("timescales"))
    if len(timescales) < 3 or min(timescales) <= 0 or list(timescales) != sorted(set(timescales)):
        raise where.child("timescales").error(
            f"must be three or more increasing numbers > 0, got {list(timescales)!r}"
        )
    return Study(sizes, _integer(raw["epochs"], where.child("epochs"), 1), timescales)


def _pairs(raw: Any, labels: list[str], where: Where) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list):
        raise where.error(f"must be a list of [label, label] pairs, got {raw!r}")
    pairs = []
    for index, pair in enumerate(raw):
        here = where.child(index)
        if not isinstance(pair, list) or len(pair) != 2:
            raise here.error(f"must be a pair [label, label], got {pair!r}")
        for label in pair:
            if label not in labels:
                raise here.error(f"names {label!r}; valid choices: {_choices(labels)}")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


# ------------------------------------------------------------------------- tuned cells, maps

#: The default map, read by ``optim-chain map`` when ``--config`` is left out.
MAP_FILE = CONFIG_DIR / "mnist1d_map.yaml"
#: The results file shipped with the package: the tuned cells of every regime of the default map.
TUNED_FILE = Path(__file__).parent / "results" / "mnist1d_map.json"


def read_tuned(file: str | Path = TUNED_FILE) -> dict[str, Any]:
    """The regimes of a results file written by ``optim-chain map`` (``tuned.json``)."""
    import json

    where = Where(str(file))
    try:
        loaded = json.loads(Path(file).read_text(encoding="utf-8"))
    except OSError as error:
        raise where.error(f"cannot be read: {error.strerror}") from None
    except ValueError as error:
        raise where.error(f"is not a results file written by optim-chain map: {error}") from None
    if not isinstance(loaded, dict) or not isinstance(loaded.get("regimes"), dict):
        raise where.error("is not a results file written by optim-chain map: it has no 'regimes'")
    return loaded


def _tuned_regime(
    raw: Any, dataset: dict[str, Any], model: dict[str, Any], training: Training, where: Where, base: Path
) -> dict[str, Any]:
    """``tuned: {regime: name, file: path}``: the regime's record, checked against the experiment."""
    raw = _mapping(raw, where)
    _check_keys(raw, ["regime", "file"], where)
    file = Path(raw["file"]) if "file" in raw else TUNED_FILE
    if "file" in raw and not file.is_absolute():
        file = base / file
    regimes = read_tuned(file)["regimes"]
    name = raw.get("regime")
    if name not in regimes:
        raise where.child("regime").error(f"is {name!r}; valid choices: {_choices(sorted(regimes))}")
    record = regimes[name]
    found_model = {k: tuple(v) if isinstance(v, list) else v for k, v in record["model"].items()}
    if found_model != model:
        raise where.child("regime").error(f"was tuned with model {record['model']}, not {model}")
    if record["data"].get("train_size", 0) != dataset.get("train_size", 0):
        raise where.child("regime").error(
            f"was tuned with data.train_size {record['data'].get('train_size', 0)}, "
            f"not {dataset.get('train_size', 0)}"
        )
    shown = file if "file" in raw else Path("optim_chain") / "lab" / "results" / file.name
    return {**record, "regime": name, "file": str(shown)}


def _with_tuned_cells(
    optimizers: dict[str, Any], tuned: dict[str, Any], where: Where, base: Path
) -> dict[str, Any]:
    """Each optimizer mapping with the learning rate and decay of its tuned cell."""
    cells = tuned["optimizers"]
    out = {}
    for label, spec in optimizers.items():
        here = where.child(label)
        if label not in cells:
            raise here.error(
                f"has no tuned cell in regime {tuned['regime']!r}; valid choices: {_choices(sorted(cells))}"
            )
        if isinstance(spec, str):
            raise here.error("must be written out (a preset) to take its tuned cell")
        spec = _mapping(spec, here)
        for key in ("learning_rate", "weight_decay"):
            if key in spec:
                raise here.child(key).error(
                    f"is set by the tuned cell of regime {tuned['regime']!r}; leave it out"
                )
        preset = PRESETS.get(spec.get("preset"))
        cell = {"learning_rate": cells[label]["learning_rate"]}
        if preset is not None and "weight_decay" in inspect.signature(preset).parameters:
            cell["weight_decay"] = cells[label]["weight_decay"]
        elif cells[label]["weight_decay"]:
            raise here.child("preset").error(
                f"takes no weight decay, but the tuned cell has {cells[label]['weight_decay']}"
            )
        out[label] = {**spec, **cell}
    return out


@dataclasses.dataclass(frozen=True)
class Regime:
    """One regime of a map: its name, what it is, and the sweep it runs."""

    name: str
    description: str
    sweep: Experiment


_REGIME_KEYS = ("description", "model", "data")


def load_map(path: str | Path, overrides: Sequence[str] = ()) -> tuple[str, list[Regime]]:
    """Reads and checks a map: one sweep run in several regimes (models, amounts of data).

    The file has ``name``, ``sweep`` (a sweep experiment, or the path of its file relative to
    this one) and ``regimes``: name -> ``{description, model, data}``, where ``model`` replaces
    the sweep's model and ``data`` updates its data (``train_size: 1000``). Overrides apply
    after the sweep file is read in: ``--set sweep.data.seed=7`` moves every regime's draws.

    Raises:
      ConfigError: on any mistake, naming the file and the key.
    """
    file = find_config(path)
    where = Where(str(path) if file == Path(path) else _shown(file))
    raw = read_yaml(file)
    _check_keys(raw, ["name", "sweep", "regimes"], where)
    base = file.parent
    sweep_where, sweep_base = where.child("sweep"), base
    if isinstance(raw.get("sweep"), str):
        file = base / raw["sweep"]
        try:
            raw["sweep"] = read_yaml(file)
        except ConfigError as error:
            raise sweep_where.error(f"names the sweep file {str(raw['sweep'])!r}, and {error}") from None
        sweep_where, sweep_base = Where(str(file)), file.parent
    raw = apply_overrides(raw, overrides, where)
    name = _file_name(raw.get("name", "map"), where.child("name"))
    sweep = _mapping(raw.get("sweep"), where.child("sweep"))
    regimes_raw = _mapping(raw.get("regimes"), where.child("regimes"))
    if not regimes_raw:
        raise where.child("regimes").error("must name at least one regime")
    regimes = []
    for label, regime in regimes_raw.items():
        here = where.child("regimes").child(label)
        _file_name(label, here)
        regime = _mapping(regime, here)
        _check_keys(regime, _REGIME_KEYS, here)
        merged = copy.deepcopy(sweep)
        merged["name"] = label
        if "model" in regime:
            merged["model"] = regime["model"]
        merged["data"] = {
            **_mapping(merged.get("data"), sweep_where.child("data")),
            **_mapping(regime.get("data"), here.child("data")),
        }
        description = regime.get("description", label)
        if not isinstance(description, str):
            raise here.child("description").error(f"must be text, got {description!r}")
        regimes.append(Regime(label, description, parse_experiment(merged, "sweep", sweep_where, sweep_base)))
    return name, regimes
