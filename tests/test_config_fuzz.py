"""Malformed config files: each gives one ConfigError line naming the file and the key, never a traceback.

Hand-written cases cover each kind of mistake (bad YAML, wrong types, unknown keys and names,
negative or out-of-range rates); a Hypothesis fuzzer mutates every real file in configs/ and
checks that loading either succeeds or fails with such a line. Loading only: nothing trains.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import chex
import jax.numpy as jnp
import optax
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optim_chain.lab import build, cli, config

CONFIGS = config.CONFIG_DIR
PRESET_FILES = sorted((CONFIGS / "presets").glob("*.yaml"))
EXPERIMENT_FILES = sorted(CONFIGS.glob("*.yaml"))
HUGE = "9" * 400  # an integer YAML reads exactly but no float can hold

OPT = "optimizer:\n  preset: adamw\n  learning_rate: 1.0e-3\n"  # a valid start to extend
GRID = "grid: {learning_rate: [1.0e-3], weight_decay: [1.0e-2]}"


def _load(kind: str, path: Path) -> Any:
    """Reads, checks and builds as the command does: an optimizer file, or an experiment's optimizers."""
    if kind == "optimizer":
        return build.load_optimizer(path)
    experiment = config.load_experiment(path, kind)
    build.check(experiment)
    return experiment


def _assert_one_line(message: str, path: Path, expected: tuple[str, ...]) -> None:
    assert "\n" not in message and "\r" not in message, message
    assert str(path) in message, message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


# (kind, file text, substrings the message must hold: the dotted key and, where fixed, the choices)
MALFORMED: dict[str, tuple[str, str | bytes, tuple[str, ...]]] = {
    # --- not YAML, or not a mapping at the top
    "yaml-unclosed-list": ("optimizer", "optimizer: [1, 2\n", ("is not valid YAML", "line 2")),
    "yaml-bad-indent": (
        "optimizer",
        "optimizer:\n  preset: adam\n learning_rate: 1.0\n",
        ("is not valid YAML", "line 3"),
    ),
    "yaml-tab": ("compare", "training:\n\tsteps: 3\n", ("is not valid YAML", "line 2")),
    "yaml-python-tag": (
        "optimizer",
        "optimizer: !!python/object:os.system {}\n",
        ("is not valid YAML", "python/object"),
    ),
    "yaml-too-deep": ("optimizer", "optimizer: " + "[" * 3000 + "]" * 3000 + "\n", ("nested too deeply",)),
    "yaml-control-chars": ("optimizer", b"optimizer:\x00\x01\x02\n", ("is not valid YAML",)),
    "binary-garbage": ("optimizer", bytes(range(256)) * 4, ("is not UTF-8 text",)),
    "binary-garbage-experiment": ("sweep", b"\xff\xfe\x00name: x\n", ("is not UTF-8 text",)),
    "empty-file": ("optimizer", "", ("is empty",)),
    "comments-only": ("optimizer", "# nothing here\n", ("is empty",)),
    "top-level-list": ("optimizer", "- preset: adam\n", ("must be a mapping, got [{'preset': 'adam'}]",)),
    "top-level-scalar": ("compare", "just some words\n", ("must be a mapping, got 'just some words'",)),
    "top-level-number-key": ("sweep", "1: 2\n", ("has a non-text key 1",)),
    "optimizer-null": (
        "optimizer",
        "optimizer:\n",
        ("key 'optimizer' must have exactly one of 'preset' or 'chain'",),
    ),
    # --- unknown keys, at several depths (the valid keys are listed)
    "unknown-top": (
        "optimizer",
        "optimiser: {preset: adam}\n",
        ("key 'optimiser' is unknown; valid keys: optimizer",),
    ),
    "unknown-preset-argument": (
        "optimizer",
        OPT + "  nme: 1\n",
        ("key 'optimizer.nme' is unknown; valid keys:", "learning_rate", "weight_decay"),
    ),
    "unknown-primitive-argument": (
        "optimizer",
        "optimizer:\n  chain:\n    - estimate_moments: {b3: 0.9}\n",
        ("key 'optimizer.chain.0.estimate_moments.b3' is unknown; valid keys: b1, b2",),
    ),
    "unknown-mask-operator-nested": (
        "optimizer",
        OPT + "  mask: {not: {name_iz: bias}}\n",
        ("key 'optimizer.mask.not.name_iz' is unknown; valid keys: all_of, any_of, name_is",),
    ),
    "unknown-schedule-argument": (
        "optimizer",
        "optimizer:\n  preset: adam\n"
        "  learning_rate: {schedule: cosine_decay, init_value: 1.0, decay_steps: 9, decay_step: 9}\n",
        ("key 'optimizer.learning_rate.decay_step' is unknown; valid keys: alpha, decay_steps",),
    ),
    "unknown-experiment-top": (
        "compare",
        "pairs: [[a, b]]\n",
        ("key 'pairs' is unknown; valid keys: data, model, name, optimizers, training",),
    ),
    "unknown-training-key": (
        "compare",
        "training: {step: 3}\n",
        (
            "key 'training.step' is unknown; valid keys: batch_size, eval_every, final_seeds, first_seed, "
            "schedule, seeds, steps",
        ),
    ),
    "unknown-data-key": (
        "compare",
        "data: {name: digits, sed: 1}\n",
        ("key 'data.sed' is unknown; valid keys: name, split_seed, test_fraction",),
    ),
    "unknown-grid-key": (
        "sweep",
        "optimizers: {a: {preset: adamw, grid: {learning_rate: [1.0], lr: [1.0]}}}\n",
        ("key 'optimizers.a.grid.lr' is unknown; valid keys: learning_rate, weight_decay",),
    ),
    "unknown-grid-axis-key": (
        "sweep",
        "optimizers: {a: {preset: adamw, grid: {learning_rate: {min: 0.1, max: 1.0, num: 2, step: 1},"
        " weight_decay: [0.0]}}}\n",
        ("key 'optimizers.a.grid.learning_rate.step' is unknown; valid keys: max, min, num",),
    ),
    "unknown-baseline-key": (
        "sweep",
        "baseline: {run: 2}\n",
        ("key 'baseline.run' is unknown; valid keys: runs",),
    ),
    # --- wrong types
    "string-as-learning-rate": (
        "optimizer",
        "optimizer: {preset: adam, learning_rate: fast}\n",
        ("key 'optimizer' is invalid: learning_rate must be a number, got 'fast'",),
    ),
    "string-as-test-fraction": (
        "compare",
        "data: {name: digits, test_fraction: half}\n",
        ("key 'data.test_fraction' must be a number, got 'half'",),
    ),
    "string-as-steps": (
        "compare",
        "training: {steps: ten}\n",
        ("key 'training.steps' must be an integer >= 1",),
    ),
    "string-as-schedule-value": (
        "optimizer",
        "optimizer:\n  preset: adam\n"
        "  learning_rate: {schedule: cosine_decay, init_value: high, decay_steps: 9}\n",
        ("key 'optimizer.learning_rate.init_value' must be a number, got 'high'",),
    ),
    "string-as-schedule-bool": (
        "optimizer",
        "optimizer:\n  preset: adam\n  learning_rate: {schedule: exponential_decay, init_value: 1.0,"
        " transition_steps: 9, decay_rate: 0.5, staircase: sometimes}\n",
        ("key 'optimizer.learning_rate.staircase' must be true or false",),
    ),
    "list-as-optimizer": ("optimizer", "optimizer: [preset, adam]\n", ("key 'optimizer' must be a mapping",)),
    "list-as-training": ("compare", "training: [1, 2]\n", ("key 'training' must be a mapping",)),
    "list-as-optimizers": ("compare", "optimizers: [adam, adamw]\n", ("key 'optimizers' must be a mapping",)),
    "list-as-primitive-arguments": (
        "optimizer",
        "optimizer:\n  chain:\n    - estimate_moments: [0.9, 0.999]\n",
        ("key 'optimizer.chain.0.estimate_moments' must be a mapping",),
    ),
    "list-as-preset-name": (
        "optimizer",
        "optimizer: {preset: [adam]}\n",
        ("key 'optimizer.preset' is ['adam']",),
    ),
    "list-as-schedule-name": (
        "optimizer",
        "optimizer: {preset: adam, learning_rate: {schedule: [linear]}}\n",
        ("key 'optimizer.learning_rate.schedule' is ['linear']; valid choices: constant, cosine_decay",),
    ),
    "list-as-learning-rate": (
        "optimizer",
        "optimizer: {preset: adam, learning_rate: [1.0e-3]}\n",
        ("key 'optimizer' is invalid: learning_rate must be a number",),
    ),
    "mapping-as-hidden": (
        "compare",
        "model: {name: mlp, hidden: {a: 1}}\n",
        ("key 'model.hidden' must be a non-empty list",),
    ),
    "mapping-as-b1": (
        "optimizer",
        OPT + "  b1: {value: 0.9}\n",
        ("key 'optimizer' is invalid: b1 must be a number",),
    ),
    "bool-as-b1": (
        "optimizer",
        OPT + "  b1: true\n",
        ("key 'optimizer' is invalid: b1 must be a number, got the bool",),
    ),
    "bool-as-steps": (
        "compare",
        "training: {steps: true}\n",
        ("key 'training.steps' must be an integer >= 1, got True",),
    ),
    "bool-as-grid-value": (
        "sweep",
        "optimizers: {a: {preset: adamw, grid: {learning_rate: [true], weight_decay: [0.0]}}}\n",
        ("key 'optimizers.a.grid.learning_rate.0' must be a number, got True",),
    ),
    "bool-as-grid-num": (
        "sweep",
        "optimizers: {a: {preset: adamw, grid: {learning_rate: {min: 0.1, max: 1.0, num: true},"
        " weight_decay: [0.0]}}}\n",
        ("key 'optimizers.a.grid.learning_rate.num' must be an integer >= 1",),
    ),
    "number-as-bool": ("optimizer", OPT + "  skip_nonfinite: 1\n", ("skip_nonfinite must be a bool, got 1",)),
    "number-as-layer-norm": (
        "compare",
        "model: {name: mlp, layer_norm: 1}\n",
        ("key 'model.layer_norm' must be true or false",),
    ),
    "number-as-mask": ("optimizer", OPT + "  mask: 3\n", ("key 'optimizer.mask' must be a mapping, got 3",)),
    "date-as-learning-rate": (
        "optimizer",
        "optimizer: {preset: adam, learning_rate: 2024-01-01}\n",
        ("learning_rate must be a number, got datetime.date",),
    ),
    "huge-integer-learning-rate": (
        "optimizer",
        f"optimizer: {{preset: adam, learning_rate: {HUGE}}}\n",
        ("key 'optimizer.learning_rate' is too large a number",),
    ),
    "huge-integer-in-grid": (
        "sweep",
        f"optimizers: {{a: {{preset: adamw, grid: {{learning_rate: [{HUGE}], weight_decay: [0.0]}}}}}}\n",
        ("key 'optimizers.a.grid.learning_rate.0' is too large a number",),
    ),
    "huge-grid-num": (
        "sweep",
        "optimizers: {a: {preset: adamw, grid: {learning_rate: {min: 0.1, max: 1.0,"
        " num: 9223372036854775808}, weight_decay: [0.0]}}}\n",
        ("key 'optimizers.a.grid.learning_rate.num' must be at most",),
    ),
    "path-as-name": ("compare", "name: ../elsewhere\n", ("key 'name' must be a plain file name",)),
    # --- negative or non-finite rates, betas >= 1
    "negative-learning-rate": (
        "optimizer",
        "optimizer: {preset: adam, learning_rate: -1.0e-3}\n",
        ("key 'optimizer' is invalid: learning_rate must be a finite number >= 0, got -0.001",),
    ),
    "negative-weight-decay": (
        "optimizer",
        OPT + "  weight_decay: -1.0e-2\n",
        ("key 'optimizer' is invalid: weight_decay must be a finite number >= 0",),
    ),
    "negative-eps": (
        "optimizer",
        OPT + "  eps: -1.0e-8\n",
        ("key 'optimizer' is invalid: eps must be", "-1e-08"),
    ),
    "nan-learning-rate": (
        "optimizer",
        "optimizer: {preset: sgd, learning_rate: .nan}\n",
        ("key 'optimizer' is invalid: learning_rate must be a finite number >= 0",),
    ),
    "negative-rate-in-chain": (
        "optimizer",
        "optimizer:\n  chain:\n    - scale_by_learning_rate: {learning_rate: -0.1}\n",
        ("key 'optimizer.chain.0.scale_by_learning_rate' is invalid: learning_rate must be",),
    ),
    "negative-decay-in-chain": (
        "optimizer",
        "optimizer:\n  chain:\n    - decoupled_weight_decay: {weight_decay: -1.0, multiplier: 0.1}\n",
        ("key 'optimizer.chain.0.decoupled_weight_decay' is invalid: weight_decay must be",),
    ),
    "negative-schedule-steps": (
        "optimizer",
        "optimizer:\n  preset: adam\n"
        "  learning_rate: {schedule: cosine_decay, init_value: 1.0, decay_steps: -5}\n",
        ("key 'optimizer.learning_rate' is invalid:", "decay_steps"),
    ),
    "negative-grid-value": (
        "sweep",
        "optimizers: {a: {preset: adamw, grid: {learning_rate: [-0.1], weight_decay: [0.0]}}}\n",
        ("key 'optimizers.a.grid.learning_rate' must hold one or more finite numbers >= 0",),
    ),
    "negative-grid-min": (
        "sweep",
        "optimizers: {a: {preset: adamw, grid: {learning_rate: [0.1],"
        " weight_decay: {min: -1.0, max: 1.0, num: 3}}}}\n",
        ("key 'optimizers.a.grid.weight_decay' needs 0 < min <= max",),
    ),
    "b1-equal-one": (
        "optimizer",
        OPT + "  b1: 1.0\n",
        ("key 'optimizer' is invalid: b1 must lie in [0, 1), got 1.0",),
    ),
    "b2-above-one": (
        "optimizer",
        OPT + "  b2: 1.5\n",
        ("key 'optimizer' is invalid: b2 must lie in [0, 1), got 1.5",),
    ),
    "beta-above-one-in-chain": (
        "optimizer",
        "optimizer:\n  chain:\n    - estimate_moments: {b1: 0.9, b2: 1.0}\n",
        ("key 'optimizer.chain.0.estimate_moments' is invalid: b2 must lie in [0, 1)",),
    ),
    "rmsprop-decay-one": (
        "optimizer",
        "optimizer: {preset: rmsprop, learning_rate: 0.1, decay: 1}\n",
        ("key 'optimizer' is invalid: decay must lie in [0, 1)",),
    ),
    "test-fraction-one": (
        "compare",
        "data: {name: digits, test_fraction: 1.0}\n",
        ("key 'data.test_fraction' must lie in (0, 1)",),
    ),
    # --- unknown names (the choices are listed)
    "unknown-preset": (
        "optimizer",
        "optimizer: {preset: adamx, learning_rate: 1.0}\n",
        ("key 'optimizer.preset' is 'adamx'; valid choices: adagrad, adam, adam_l2, adamw, rmsprop, sgd",),
    ),
    "unknown-primitive": (
        "optimizer",
        "optimizer:\n  chain: [correct_bias, normalise_by_second_moment]\n",
        ("key 'optimizer.chain.1' names 'normalise_by_second_moment'; valid primitives:", "correct_bias"),
    ),
    "unknown-schedule": (
        "optimizer",
        "optimizer: {preset: adam, learning_rate: {schedule: cosine, init_value: 1.0}}\n",
        ("key 'optimizer.learning_rate.schedule' is 'cosine'; valid choices: constant, cosine_decay",),
    ),
    "unknown-mask-name": (
        "optimizer",
        OPT + "  mask: defualt\n",
        ("key 'optimizer.mask' is 'defualt'; valid choices: default, all", "path_matches"),
    ),
    "unknown-mask-predicate": (
        "optimizer",
        OPT + "  mask: {name_matches: bias}\n",
        ("key 'optimizer.mask.name_matches' is unknown; valid keys: all_of, any_of, name_is, ndim_at_least",),
    ),
    "unknown-mask-in-list": (
        "optimizer",
        OPT + "  mask: {any_of: [{name_is: kernel}, everything]}\n",
        ("key 'optimizer.mask.any_of.1' is 'everything'; valid choices: default, all",),
    ),
    "unknown-moment-dtype": (
        "optimizer",
        "optimizer: {preset: adam, learning_rate: 1.0, moment_dtype: f32}\n",
        ("key 'optimizer.moment_dtype' is 'f32'; valid choices: float32, float64",),
    ),
    "unknown-decay-scaling": (
        "optimizer",
        OPT + "  decay_scaling: lr\n",
        (
            "key 'optimizer' is invalid: decay_scaling must be one of 'learning_rate', 'schedule', "
            "'corrected', 'none'",
        ),
    ),
    "unknown-model": (
        "compare",
        "model: {name: resnet}\n",
        ("key 'model.name' is 'resnet'; valid choices: mlp, cnn, transformer",),
    ),
    "unknown-data": (
        "compare",
        "data: {name: mnist}\n",
        ("key 'data.name' is 'mnist'; valid choices: digits, text",),
    ),
    "unknown-pair-label": (
        "sweep",
        "pairs: [[adam_l2, adamx]]\n",
        ("key 'pairs.0' names 'adamx'; valid choices: adam, adam_l2, adamw, adamw_torch, sgd_l2, sgdw",),
    ),
    "missing-optimizer-file": (
        "compare",
        "optimizers: {a: no/such/file.yaml}\n",
        ("key 'optimizers.a' names the optimizer file 'no/such/file.yaml'", "cannot be read"),
    ),
    # --- bad regex, malformed chains and masks
    "bad-regex": (
        "optimizer",
        OPT + "  mask: {path_matches: '(unclosed'}\n",
        ("key 'optimizer.mask.path_matches'", "is not a valid regular expression"),
    ),
    "bad-regex-nested": (
        "optimizer",
        OPT + "  mask: {all_of: [default, {not: {path_matches: '[a-'}}]}\n",
        ("key 'optimizer.mask.all_of.1.not.path_matches'", "is not a valid regular expression"),
    ),
    "regex-not-text": (
        "optimizer",
        OPT + "  mask: {path_matches: [a]}\n",
        ("key 'optimizer.mask.path_matches' must be a regular expression",),
    ),
    "mask-two-operators": (
        "optimizer",
        OPT + "  mask: {name_is: bias, ndim_at_least: 2}\n",
        ("key 'optimizer.mask' must have exactly one of name_is, path_matches",),
    ),
    "mask-negative-ndim": (
        "optimizer",
        OPT + "  mask: {ndim_at_least: -1}\n",
        ("key 'optimizer.mask.ndim_at_least' must be an integer >= 0, got -1",),
    ),
    "chain-item-two-keys": (
        "optimizer",
        "optimizer:\n  chain:\n    - {estimate_moments: {}, correct_bias: {}}\n",
        ("key 'optimizer.chain.0' must be a primitive name or a mapping {name: {arguments}}",),
    ),
    "chain-item-number": (
        "optimizer",
        "optimizer:\n  chain: [correct_bias, 3]\n",
        ("key 'optimizer.chain.1' must be a primitive name or a mapping",),
    ),
    "chain-empty": (
        "optimizer",
        "optimizer: {chain: []}\n",
        ("key 'optimizer.chain' must be a non-empty list",),
    ),
    "chain-and-preset": (
        "optimizer",
        "optimizer: {preset: adam, chain: [correct_bias]}\n",
        ("key 'optimizer' must have exactly one of 'preset' or 'chain'",),
    ),
    "chain-in-sweep": (
        "sweep",
        f"optimizers: {{a: {{chain: [correct_bias], {GRID}}}}}\npairs: []\n",
        ("key 'optimizers.a' is a chain; only a preset can take learning_rate, weight_decay",),
    ),
    "pair-of-three": (
        "sweep",
        "pairs: [[adam_l2, adamw, sgdw]]\n",
        ("key 'pairs.0' must be a pair [label, label]",),
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=str)
def test_malformed_file_gives_one_line_naming_file_and_key(tmp_path, case):
    kind, text, expected = MALFORMED[case]
    path = tmp_path / "bad.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(config.ConfigError) as caught:
        _load(kind, path)
    assert isinstance(caught.value, ValueError)
    _assert_one_line(str(caught.value), path, expected)


def test_skip_nonfinite_can_be_set_in_a_preset_file_and_an_experiment(tmp_path):
    """``skip_nonfinite: true`` in a preset file wraps the preset: a NaN step changes nothing."""
    raw = config.read_yaml(CONFIGS / "presets" / "adam.yaml")
    assert raw["optimizer"]["skip_nonfinite"] is False  # the file shows the option
    raw["optimizer"]["skip_nonfinite"] = True
    path = tmp_path / "adam_skip.yaml"
    path.write_text(yaml.safe_dump(raw))
    transform = build.load_optimizer(path)
    assert transform.name == "skip_nonfinite" and transform.parts[0].name == "adam"

    params = {"w": jnp.ones(3)}
    state = transform.init(params)
    nan_grads = {"w": jnp.array([1.0, jnp.nan, 0.0])}
    updates, state = transform.update(nan_grads, state, params)
    chex.assert_trees_all_equal(optax.apply_updates(params, updates), params)
    assert int(state.skipped) == 1
    updates, state = transform.update({"w": jnp.ones(3)}, state, params)
    assert bool(jnp.all(updates["w"] < 0)) and int(state.skipped) == 1

    experiment = config.load_experiment(None, "compare", ["optimizers.adamw.skip_nonfinite=true"])
    assert build.optimizer(experiment.optimizers["adamw"]).name == "skip_nonfinite"
    assert build.optimizer(experiment.optimizers["adam"]).name == "adam"


# ------------------------------------------------------------------------------- fuzzing


def _real_configs() -> list[tuple[str, dict[str, Any]]]:
    """Every file in configs/ as (kind, raw mapping), optimizer-file references made absolute."""
    found = []
    for path in PRESET_FILES:
        found.append(("optimizer", config.read_yaml(path)))
    for path in EXPERIMENT_FILES:
        raw = config.read_yaml(path)
        for label, spec in (raw.get("optimizers") or {}).items():
            if isinstance(spec, str):
                raw["optimizers"][label] = str((path.parent / spec).resolve())
        found.append(("sweep" if "pairs" in raw else "compare", raw))
    return found


REAL_CONFIGS = _real_configs()

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.sampled_from([-1, -1.0e-3, 1.0, 1.5, 0, 2**63, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "1e-3", "-1e-3", "default", "all", "adamw", "(", "a/b", "0x10", ".inf"]),
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=3)), max_size=3),
    st.builds(lambda: [[1, [2, None]], {}]),  # a fresh object each time: mutations change it
    st.dictionaries(st.text(max_size=6), st.one_of(st.integers(-3, 3), st.none()), max_size=2),
)
KEYS = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["name", "preset", "chain", "mask", "grid", "learning_rate", "weight_decay", "not"]),
)


def _nodes(value: Any, path: tuple = ()) -> list[tuple]:
    """The paths of every mapping entry and list item under ``value``."""
    found = []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return found
    for key, child in items:
        found.append((*path, key))
        found.extend(_nodes(child, (*path, key)))
    return found


def _containers(value: Any, path: tuple = ()) -> list[tuple]:
    """The paths of every mapping under ``value`` (itself included)."""
    found = [path] if isinstance(value, dict) else []
    children = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    )
    for key, child in children:
        found.extend(_containers(child, (*path, key)))
    return found


def _at(root: Any, path: tuple) -> Any:
    for key in path:
        root = root[key]
    return root


@st.composite
def mutated_configs(draw: st.DrawFn) -> tuple[str, str]:
    """A real config with one to three mutations, dumped to YAML text (sometimes then damaged)."""
    kind, raw = draw(st.sampled_from(REAL_CONFIGS))
    raw = copy.deepcopy(raw)
    for _ in range(draw(st.integers(1, 3))):
        operation = draw(st.sampled_from(["delete", "replace", "replace", "insert", "rename"]))
        if operation == "insert":
            target = _at(raw, draw(st.sampled_from(_containers(raw))))
            target[draw(KEYS)] = draw(ODD_VALUES)
            continue
        nodes = _nodes(raw)
        if not nodes:
            raw = draw(ODD_VALUES)
            break
        *parent_path, key = draw(st.sampled_from(nodes))
        parent = _at(raw, tuple(parent_path))
        if operation == "delete":
            del parent[key]
        elif operation == "replace":
            parent[key] = draw(ODD_VALUES)
        elif isinstance(parent, dict):
            parent[draw(KEYS)] = parent.pop(key)
        else:
            parent[key] = {draw(KEYS): parent[key]}
    text = yaml.safe_dump(raw, sort_keys=False)
    if draw(st.integers(0, 9)) == 0:  # damage the text itself: a splice of random characters
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(min_size=1, max_size=4)) + text[at:]
    return kind, text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_configs())
def test_mutated_real_configs_load_or_give_one_line_error(case):
    """Any mutation of a real config loads, or fails with a one-line ConfigError naming the file."""
    kind, text = case
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "mutated.yaml"
        path.write_text(text)
        try:
            _load(kind, path)
        except config.ConfigError as error:
            _assert_one_line(str(error), path, ())


# ------------------------------------------------------------------------------------ CLI

CLI_CASES = [
    (
        "compare",
        "optimizers: {a: {preset: adamw, learning_rate: 1.0e-3, nme: 1}}\n",
        "key 'optimizers.a.nme'",
    ),
    ("compare", "training: {steps: -3}\n", "key 'training.steps' must be an integer >= 1"),
    ("compare", bytes(range(256)), "is not UTF-8 text"),
    (
        "sweep",
        "optimizers: {a: {preset: adamw, grid: {learning_rate: [-1.0], weight_decay: [0.0]}}}\n",
        "grid",
    ),
    ("show", "optimizer: {preset: adam, learning_rate: 1.0, b1: 1.0}\n", "b1 must lie in [0, 1)"),
    ("show", "optimizer: [1, 2\n", "is not valid YAML"),
    ("masks", "model: {name: mlp, hidden: [0]}\n", "key 'model.hidden' must be an integer >= 1"),
]


@pytest.mark.parametrize(
    ("command", "text", "expected"), CLI_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CLI_CASES)]
)
def test_cli_reports_a_bad_config_on_one_stderr_line(tmp_path, capsys, command, text, expected):
    path = tmp_path / "bad.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    assert cli.main([command, "--config", str(path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == ""
    assert err.startswith(f"optim-chain {command}: ") and "Traceback" not in err
    _assert_one_line(err, path, (expected,))
