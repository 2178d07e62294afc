"""YAML configs: every packaged config is loaded, built and exercised; mistakes give one-line errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import cpu_devices_env

import optim_chain as oc
from optim_chain import masks
from optim_chain.lab import build, config, data, models

CONFIGS = config.CONFIG_DIR
PRESET_FILES = sorted((CONFIGS / "presets").glob("*.yaml"))
EXPERIMENT_FILES = sorted(CONFIGS.glob("*.yaml"))


def _mlp_params(hidden: int = 8) -> dict:
    return jax.jit(models.MLP(hidden=(hidden,)).init)(jax.random.key(0), jnp.zeros((1, 64)))["params"]


def test_every_config_file_is_covered():
    names = {p.name for p in PRESET_FILES}
    assert names == {f"{preset}.yaml" for preset in config.PRESETS}
    assert {p.name for p in EXPERIMENT_FILES} >= {
        "mnist1d_compare.yaml", "mnist1d_sweep.yaml", "digits_compare.yaml", "compare_custom_chain.yaml"
    }


def test_preset_files_build_their_preset_and_train():
    """Each preset file builds the preset it names; two training steps of each change the params."""
    x = jax.random.normal(jax.random.key(1), (16, 64))
    y = jnp.arange(16) % 10
    params = _mlp_params()
    model = models.MLP(hidden=(8,))
    transforms = {path.stem: build.load_optimizer(path) for path in PRESET_FILES}
    for stem, transform in transforms.items():
        assert transform.name == stem

    @jax.jit
    def two_steps(params):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

        out = {}
        for stem, tx in transforms.items():
            p, state = params, tx.init(params)
            for _ in range(2):
                updates, state = tx.update(jax.grad(loss)(p), state, p)
                p = optax.apply_updates(p, updates)
            out[stem] = p
        return out

    for stem, trained in two_steps(params).items():
        chex.assert_tree_all_finite(trained)
        moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), trained, params)
        assert moved["Dense_1"]["kernel"], stem


def test_adamw_file_predicate_matches_the_default_mask():
    mask = build.load_optimizer(CONFIGS / "presets" / "adamw.yaml").parts[-1].hyperparams["mask"]
    transformer = models.Transformer(vocab_size=12, max_len=8, d_model=8, num_heads=2, num_layers=1)
    text_params = jax.eval_shape(transformer.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    for params in (_mlp_params(), text_params):
        assert masks.resolve_mask(mask, params) == masks.resolve_mask(masks.DEFAULT_DECAY, params)


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda p: p.name)
def test_experiment_files_load_build_and_step(path):
    """Every experiment file validates and builds, and each optimizer takes a step on its model."""
    raw = config.read_yaml(path)
    if "regimes" in raw:  # a map: one sweep per regime
        _, regimes = config.load_map(path)
        for regime in regimes:
            build.check(regime.sweep)
        path, raw = path.parent / raw["sweep"], config.read_yaml(path.parent / raw["sweep"])
    kind = "sweep" if "pairs" in raw else "timescale" if "study" in raw else "compare"
    experiment = config.load_experiment(path, kind)
    build.check(experiment)
    assert experiment.optimizers
    dataset = build.load_data(experiment) if experiment.data["name"] in ("digits", "mnist1d") else None
    if dataset is None:  # the text model: a tiny vocabulary is enough to exercise its parameters
        dataset = data.Dataset("text", np.zeros((2, 8), np.int32), *[np.zeros((2, 8), np.int32)] * 3, 12)
    model = build.model(experiment, dataset)
    shapes = jax.eval_shape(model.init, jax.random.key(0), dataset.x_train[:1])["params"]
    params = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), shapes)
    grads = jax.tree.map(lambda s: np.full(s.shape, 0.1, s.dtype), shapes)
    transforms = []
    for label, spec in experiment.optimizers.items():
        if kind == "sweep":
            grid = experiment.grids[label]
            assert len(grid.learning_rate) >= 2 and len(grid.weight_decay) >= 1
            point = {"learning_rate": grid.learning_rate[-1], "weight_decay": grid.weight_decay[-1]}
            transforms.append(build.scheduled_optimizer(spec, experiment.training.schedule, 10, point))
        elif kind == "timescale":
            point = {"weight_decay": 0.1}
            transforms.append(build.scheduled_optimizer(spec, experiment.training.schedule, 10, point))
        else:
            transforms.append(build.scheduled_optimizer(spec, experiment.training.schedule, 10))

    @jax.jit
    def one_step(params):
        return [
            optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0]) for tx in transforms
        ]

    for new in one_step(params):
        chex.assert_tree_all_finite(new)
        assert any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)))


def _without_source(experiment: config.Experiment) -> config.Experiment:
    spec_only = {k: v.spec for k, v in experiment.optimizers.items()}
    return dataclasses.replace(experiment, source="", optimizers=spec_only)


@pytest.mark.parametrize("kind", ["compare", "sweep", "timescale"])
def test_sections_left_out_are_the_packaged_default_files(kind, tmp_path):
    default = config.load_experiment(None, kind)
    assert default.source == f"optim_chain/lab/configs/mnist1d_{kind}.yaml"
    assert default.name == config.read_yaml(config.DEFAULT_FILES[kind])["name"]
    only_name = tmp_path / "only_name.yaml"
    only_name.write_text("name: only_name\n")
    if kind == "compare":  # a compare's tuned cells are its own key, never a default's
        only_name.write_text(f"name: only_name\ntuned: {{regime: {default.tuned['regime']}}}\n")
    from_file = config.load_experiment(only_name, kind)
    assert from_file.source == str(only_name)
    assert from_file.name == "only_name"
    mine, packaged = _without_source(from_file), _without_source(default)
    for section in ("data", "model", "training", "optimizers", "grids", "study", "tuned"):
        assert getattr(mine, section) == getattr(packaged, section), section


def test_custom_chains_differ_by_the_decay_line_and_match_the_presets():
    experiment = config.load_experiment(CONFIGS / "compare_custom_chain.yaml", "compare")
    l2, decoupled = (experiment.optimizers[k].spec["chain"] for k in ("adam_l2", "adamw"))
    assert l2[1:] == decoupled[:-1]
    assert list(l2[0]) == ["add_l2_regularization"] and list(decoupled[-1]) == ["decoupled_weight_decay"]

    params = _mlp_params()
    grads = jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size).reshape(p.shape) * 0.3), params)
    pairs = [
        (build.optimizer(experiment.optimizers["adam_l2"]), oc.adam_l2(1e-3, 1e-2, mask=masks.DEFAULT_DECAY)),
        (build.optimizer(experiment.optimizers["adamw"]), oc.adamw(1e-3, 1e-2, mask=masks.DEFAULT_DECAY)),
    ]

    @jax.jit
    def three_steps(params):
        results = []
        for tx in [tx for pair in pairs for tx in pair]:
            p, state = params, tx.init(params)
            for _ in range(3):
                updates, state = tx.update(grads, state, p)
                p = optax.apply_updates(p, updates)
            results.append(p)
        return results

    results = three_steps(params)
    chex.assert_trees_all_close(results[0], results[1], rtol=1e-6)
    chex.assert_trees_all_close(results[2], results[3], rtol=1e-6)


def test_numbers_written_without_a_dot_and_schedules(tmp_path):
    path = tmp_path / "opt.yaml"
    path.write_text(
        "optimizer:\n  preset: adamw\n"
        "  learning_rate: {schedule: cosine_decay, init_value: 1e-3, decay_steps: 10}\n"
        "  weight_decay: 1e-2\n  decay_scaling: schedule\n  peak_learning_rate: 1e-3\n"
    )
    transform = build.load_optimizer(path)
    lr = transform.parts[-2].hyperparams["learning_rate"]
    assert callable(lr) and float(lr(0)) == pytest.approx(1e-3)
    assert transform.parts[-1].hyperparams["weight_decay"] == 1e-2


def test_overrides_apply_before_validation():
    experiment = config.load_experiment(None, "sweep", ["training.steps=7", "model.channels=4", "name=x"])
    assert experiment.training.steps == 7 and experiment.model["channels"] == 4 and experiment.name == "x"


def test_loading_checks_the_form_and_building_the_values(tmp_path):
    """load_experiment checks keys, types and choices and builds nothing; build.check finds the
    values a constructor refuses."""
    path = tmp_path / "x.yaml"
    path.write_text("optimizers: {a: {preset: adam, learning_rate: -1.0}}\n")
    experiment = config.load_experiment(path, "compare")
    assert experiment.optimizers["a"].spec == {"preset": "adam", "learning_rate": -1.0}
    with pytest.raises(config.ConfigError) as caught:
        build.check(experiment)
    assert str(caught.value) == (
        f"{path}: key 'optimizers.a' is invalid: learning_rate must be a finite number >= 0, got -1.0"
    )


def test_the_config_module_imports_neither_models_nor_build():
    """Data flows one way: config, then build, then the experiments."""
    code = (
        "import sys, optim_chain.lab.config; "
        "unwanted = ('optim_chain.lab.models', 'optim_chain.lab.build', 'flax'); "
        "print(sorted(m for m in unwanted if m in sys.modules))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=cpu_devices_env(1), capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == "[]", run.stdout + run.stderr


BAD = [
    (
        "optimizer:\n  preset: adamw\n  learning_rate: 1.0e-3\n  nme: 1\n",
        "key 'optimizer.nme' is unknown; valid keys:",
    ),
    (
        "optimizer:\n  preset: adamx\n  learning_rate: 1.0\n",
        "key 'optimizer.preset' is 'adamx'; valid choices: adagrad",
    ),
    ("optimizer:\n  preset: adamw\n", "key 'optimizer' is missing the required argument(s) learning_rate"),
    (
        "optimizer:\n  chain: [estimate_moment]\n",
        "key 'optimizer.chain.0' names 'estimate_moment'; valid primitives:",
    ),
    (
        "optimizer:\n  preset: adamw\n  learning_rate: 1.0e-3\n  mask: defualt\n",
        "valid choices: default, all",
    ),
    (
        "optimizer:\n  preset: adamw\n  learning_rate: 1.0e-3\n  mask: {name_iz: bias}\n",
        "key 'optimizer.mask.name_iz' is unknown; valid keys: all_of, any_of, name_is",
    ),
    (
        "optimizer:\n  preset: adamw\n  learning_rate: 1.0e-3\n  weight_decay: -1.0\n",
        "key 'optimizer' is invalid: weight_decay must be a finite number >= 0, got -1.0",
    ),
    (
        "optimizer:\n  preset: adamw\n  learning_rate: 1.0e-3\n  decay_scaling: lr\n",
        "decay_scaling must be one of 'learning_rate', 'schedule', 'corrected', 'none'",
    ),
    ("optimizer: {preset: adam, learning_rate: 1.0e-3, moment_dtype: f32}\n", "valid choices: float32"),
    ("optimizer: [1, 2\n", "is not valid YAML"),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_bad_optimizer_files_give_one_line_errors(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as caught:
        build.load_optimizer(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert expected in message


BAD_EXPERIMENTS = [
    (
        "compare",
        "traning: {steps: 3}\n",
        "key 'traning' is unknown; valid keys: data, model, name, optimizers",
    ),
    ("compare", "data: {name: mnist}\n", "key 'data.name' is 'mnist'; valid choices: digits, text"),
    (
        "compare",
        "model: {name: transformer}\n",
        "key 'model.name' is 'transformer', which needs data.name 'text'",
    ),
    (
        "compare",
        "model: {name: mlp, hiden: [3]}\n",
        "key 'model.hiden' is unknown; valid keys: hidden, layer_norm",
    ),
    ("compare", "training: {steps: 0}\n", "key 'training.steps' must be an integer >= 1, got 0"),
    ("compare", "optimizers: {a: {preset: adam, learning_rate: fast}}\n", "key 'optimizers.a' is invalid"),
    ("compare", "optimizers: {a: missing.yaml}\n", "missing.yaml: cannot be read"),
    ("sweep", "optimizers: {a: {preset: adamw}}\n", "key 'optimizers.a.grid' needs learning_rate"),
    (
        "sweep",
        "optimizers: {a: {preset: adam, grid: {learning_rate: [1.0], weight_decay: [1.0]}}}\n",
        "key 'optimizers.a.preset' is 'adam', which has no argument 'weight_decay'",
    ),
    (
        "sweep",
        "optimizers: {a: {preset: adamw, learning_rate: 1.0,"
        " grid: {learning_rate: [1.0], weight_decay: [1.0]}}}\n",
        "key 'optimizers.a.learning_rate' is set by the experiment",
    ),
    (
        "sweep",
        "optimizers: {a: {preset: adamw,"
        " grid: {learning_rate: {min: 1.0, max: 0.1, num: 3}, weight_decay: [0.0]}}}\n",
        "key 'optimizers.a.grid.learning_rate' needs 0 < min <= max",
    ),
    (
        "sweep",
        "pairs: [[adam_l2, adamx]]\n",
        "key 'pairs.0' names 'adamx'; valid choices: adam, adam_l2, adamw, adamw_torch, sgd_l2, sgdw",
    ),
]


@pytest.mark.parametrize(("kind", "text", "expected"), BAD_EXPERIMENTS)
def test_bad_experiment_files_give_one_line_errors(tmp_path, kind, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as caught:
        build.check(config.load_experiment(path, kind))
    message = str(caught.value)
    assert "\n" not in message
    assert str(tmp_path) in message
    assert expected in message


# --------------------------------------------------------------- weight-decay options in YAML

DECAY_OPTIONS = CONFIGS / "optimizers" / "adamw_weight_decay_options.yaml"


def test_every_weight_decay_option_is_reachable_from_yaml():
    loaded = build.load_optimizer(DECAY_OPTIONS)
    lr = optax.cosine_decay_schedule(1e-3, 2000)
    defaults = {
        "learning_rate": lr,
        "peak_learning_rate": 1e-3,
        "decay_scaling": "corrected",
        "weight_decay": optax.linear_schedule(0.1, 0.01, 2000),
        "cautious_weight_decay": True,
        "anchor": "init",
        "nesterov": True,
    }
    groups = [
        (masks.ndim_at_most(1), {"weight_decay": 0.0}),
        (
            masks.path_matches("Dense_1"),
            {"learning_rate": optax.cosine_decay_schedule(1e-4, 2000), "peak_learning_rate": 1e-4},
        ),
    ]
    direct = oc.param_groups(oc.adamw, groups, **defaults)
    params = _mlp_params()
    grads = jax.tree.map(lambda p: jnp.sin(3 * p) + 0.1, params)
    results = []
    for opt in (loaded, direct):
        state, p = opt.init(params), params
        for _ in range(3):
            updates, state = opt.update(grads, state, p)
            p = optax.apply_updates(p, updates)
        results.append(p)
    chex.assert_trees_all_equal(results[0], results[1])
    assert any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(params)))


BAD_GROUPS = [
    ("  param_groups: {mask: default}\n", "key 'optimizer.param_groups' must be a non-empty list of groups"),
    ("  param_groups:\n    - {weight_decay: 0.0}\n", "key 'optimizer.param_groups.0' needs a 'mask'"),
    (
        "  param_groups:\n    - {mask: default, wd: 0.0}\n",
        "key 'optimizer.param_groups.0.wd' is unknown; valid keys: amsgrad, amsgrad_max_of, anchor,",
    ),
    ("  param_groups:\n    - {mask: {ndim: 1}}\n", "key 'optimizer.param_groups.0.mask.ndim' is unknown"),
    (
        "  anchor: initial\n",
        "is invalid: anchor must be None, 'init' or a params-shaped pytree, got 'initial'",
    ),
    (
        "  learning_rate: {schedule: cosine_decay, init_value: 1.0e-3, decay_steps: 10}\n"
        "  decay_scaling: corrected\n",
        "needs peak_learning_rate",
    ),
    ("  cautious_weight_decay: 1\n", "cautious_weight_decay must be a bool, got 1"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_GROUPS)
def test_bad_weight_decay_options_give_one_line_errors(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    base = "optimizer:\n  preset: adamw\n"
    if "learning_rate" not in text:
        base += "  learning_rate: 1.0e-3\n"
    path.write_text(base + text)
    with pytest.raises(config.ConfigError) as caught:
        build.load_optimizer(path)
    message = str(caught.value)
    assert "\n" not in message
    assert expected in message, message
