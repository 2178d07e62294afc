"""Transform and chain: printing, taking presets apart, and errors for mis-ordered chains."""

import copy
import re

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import optim_chain as oc

PRESETS = {
    "sgd": lambda: oc.sgd(0.1, momentum=0.9, nesterov=True),
    "sgd_l2": lambda: oc.sgd_l2(0.1, 1e-2, momentum=0.9),
    "sgdw": lambda: oc.sgdw(0.1, 1e-2, momentum=0.9),
    "adagrad": lambda: oc.adagrad(0.1),
    "rmsprop": lambda: oc.rmsprop(1e-2, centered=True, momentum=0.5),
    "adam": lambda: oc.adam(1e-2, amsgrad=True),
    "adam_l2": lambda: oc.adam_l2(1e-2, 1e-2),
    "adamw": lambda: oc.adamw(optax.linear_schedule(1e-2, 1e-3, 10), 1e-2, mask=oc.default_decay_mask),
}

PARTS = {
    "sgd": ["add_momentum", "scale_by_learning_rate"],
    "sgd_l2": ["add_l2_regularization", "add_momentum", "scale_by_learning_rate"],
    "sgdw": ["add_momentum", "scale_by_learning_rate", "decoupled_weight_decay"],
    "adagrad": ["accumulate_second_moment", "normalize_by_second_moment", "scale_by_learning_rate"],
    "rmsprop": [
        "estimate_second_moment",
        "center_second_moment",
        "normalize_by_second_moment",
        "add_momentum",
        "scale_by_learning_rate",
    ],
    "adam": [
        "estimate_moments",
        "max_second_moment",
        "correct_bias",
        "normalize_by_second_moment",
        "scale_by_learning_rate",
    ],
    "adam_l2": [
        "add_l2_regularization",
        "estimate_moments",
        "correct_bias",
        "normalize_by_second_moment",
        "scale_by_learning_rate",
    ],
    "adamw": [
        "estimate_moments",
        "correct_bias",
        "normalize_by_second_moment",
        "scale_by_learning_rate",
        "decoupled_weight_decay",
    ],
}

PARAMS = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3) / 6 - 0.4, "bias": jnp.array([0.3, -0.2, 0.1])}}


def _grads(step):
    return jax.tree.map(lambda p: jnp.cos(p * (step + 1.7)) + 0.1 * step, PARAMS)


def _run(opt, steps=3):
    params, state, history = PARAMS, opt.init(PARAMS), []
    for t in range(steps):
        updates, state = opt.update(_grads(t), state, params)
        params = optax.apply_updates(params, updates)
        history.append(updates)
    return history, state


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_parts_and_name(preset):
    opt = PRESETS[preset]()
    assert isinstance(opt, oc.Transform)
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    assert opt.name == preset
    assert [part.name for part in opt.parts] == PARTS[preset]
    assert all(isinstance(part, oc.Transform) and not part.parts for part in opt.parts)


@pytest.mark.parametrize("preset", PRESETS)
def test_print_lists_the_parts_in_order(preset, capsys):
    opt = PRESETS[preset]()
    print(opt)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{preset}("
    assert lines[-1] == ")"
    assert [line.strip().split("(")[0] for line in lines[1:-1]] == PARTS[preset]
    assert all(line.startswith("  ") and line.endswith("),") for line in lines[1:-1])
    assert str(opt) == repr(opt)


@pytest.mark.parametrize("preset", PRESETS)
def test_chain_of_parts_reproduces_the_preset(preset):
    opt = PRESETS[preset]()
    expected, expected_state = _run(opt)
    for rebuilt in (oc.chain(*opt.parts), optax.chain(*opt.parts)):
        history, state = _run(rebuilt)
        chex.assert_trees_all_equal(history, expected)
        chex.assert_trees_all_equal(state, expected_state)
        assert jax.tree.structure(state) == jax.tree.structure(expected_state)


def test_primitive_repr_shows_hyperparameters():
    assert repr(oc.estimate_moments(0.8, 0.95)) == "estimate_moments(b1=0.8, b2=0.95, moment_dtype=None)"
    assert repr(oc.correct_bias()) == "correct_bias(b1=0.9, b2=0.999)"
    assert (
        repr(oc.add_momentum(0.5, nesterov=True))
        == "add_momentum(momentum=0.5, nesterov=True, moment_dtype=None)"
    )
    assert repr(oc.normalize_by_second_moment(1e-6)) == "normalize_by_second_moment(eps=1e-06, eps_root=0.0)"


def test_hyperparams_are_recorded():
    opt = oc.adamw(1e-3, weight_decay=0.05, b2=0.95, eps=1e-6)
    by_name = {part.name: part for part in opt.parts}
    assert by_name["estimate_moments"].hyperparams == {"b1": 0.9, "b2": 0.95, "moment_dtype": None}
    assert by_name["normalize_by_second_moment"].hyperparams == {"eps": 1e-6, "eps_root": 0.0}
    assert by_name["scale_by_learning_rate"].hyperparams == {"learning_rate": 1e-3}
    decay = by_name["decoupled_weight_decay"].hyperparams
    assert decay["weight_decay"] == 0.05 and decay["multiplier"] == 1e-3 and decay["mask"] is None
    assert opt.hyperparams == {}


def test_schedules_and_masks_print_by_name():
    def warmup(step):
        return jnp.minimum(1.0, step / 10) * 1e-3

    text = repr(oc.adamw(warmup, 0.1, mask=oc.default_decay_mask))
    assert "scale_by_learning_rate(learning_rate=warmup)" in text
    assert "multiplier=warmup" in text
    assert "mask=default_decay_mask" in text
    text = repr(oc.adamw(warmup, 0.1, decay_scaling="schedule", peak_learning_rate=1e-3))
    assert "multiplier=relative_learning_rate" in text


def test_nested_chain_prints_indented():
    inner = oc.chain(oc.estimate_moments(), oc.correct_bias(), name="adam_core")
    outer = oc.chain(inner, oc.normalize_by_second_moment(), oc.scale_by_learning_rate(1e-3), name="mine")
    lines = repr(outer).splitlines()
    assert lines[:2] == ["mine(", "  adam_core("]
    assert lines[2].startswith("    estimate_moments(")
    assert outer.parts[0] is inner
    # and it computes what the flat chain computes
    flat = oc.chain(*inner.parts, *outer.parts[1:])
    chex.assert_trees_all_equal(_run(outer)[0], _run(flat)[0])


def test_transform_is_a_named_tuple_of_init_and_update():
    opt = oc.sgd(0.1)
    init, update = opt
    assert init is opt.init and update is opt.update
    assert copy.deepcopy(opt).name == "sgd"
    # works where optax expects a plain transformation
    wrapped = optax.chain(optax.clip_by_global_norm(1.0), opt)
    updates, _ = wrapped.update(_grads(0), wrapped.init(PARAMS), PARAMS)
    assert jax.tree.structure(updates) == jax.tree.structure(PARAMS)


def test_optax_transforms_can_be_chained():
    opt = oc.chain(optax.clip_by_global_norm(0.5), oc.scale_by_learning_rate(0.1), name="clipped_sgd")
    assert opt.name == "clipped_sgd"
    updates, _ = opt.update(_grads(0), opt.init(PARAMS), PARAMS)
    norm = optax.tree.norm(updates)
    assert jnp.isclose(norm, 0.05, rtol=1e-6)


@pytest.mark.parametrize(
    ("bad", "shown"),
    [(0.1, "0.1"), (oc.sgd, "function sgd"), ("adam", "'adam'"), (None, "None")],
)
def test_chain_rejects_non_transforms(bad, shown):
    with pytest.raises(
        TypeError, match=r"chain argument 1 must be a gradient transformation.*" + re.escape(shown)
    ):
        oc.chain(oc.sgd(0.1), bad)


# ------------------------------------------------------------------------- mis-ordered chains

MISPLACED = {
    # needs MomentEstimates, receives raw gradients
    "correct_bias_first": (
        lambda: oc.chain(oc.correct_bias(), oc.scale_by_learning_rate(0.1)),
        "correct_bias takes the MomentEstimates",
    ),
    "max_first": (lambda: oc.chain(oc.max_second_moment()), "max_second_moment takes the MomentEstimates"),
    "center_first": (
        lambda: oc.chain(oc.center_second_moment(), oc.normalize_by_second_moment()),
        "center_second_moment takes the MomentEstimates",
    ),
    "normalize_first": (
        lambda: oc.chain(oc.normalize_by_second_moment(), oc.scale_by_learning_rate(0.1)),
        "normalize_by_second_moment takes the MomentEstimates",
    ),
    # a second estimator receives the first one's MomentEstimates
    "two_estimators": (
        lambda: oc.chain(oc.estimate_moments(), oc.estimate_second_moment()),
        "estimate_second_moment takes gradients, but received MomentEstimates",
    ),
    "accumulate_after_estimate": (
        lambda: oc.chain(oc.estimate_moments(), oc.accumulate_second_moment()),
        "accumulate_second_moment takes gradients, but received MomentEstimates",
    ),
    # a step transform placed before normalize_by_second_moment
    "lr_before_normalize": (
        lambda: oc.chain(
            oc.estimate_moments(), oc.scale_by_learning_rate(0.1), oc.normalize_by_second_moment()
        ),
        "scale_by_learning_rate takes gradients or steps, but received MomentEstimates",
    ),
    "lr_without_normalize": (
        lambda: oc.chain(oc.estimate_moments(), oc.correct_bias(), oc.scale_by_learning_rate(0.1)),
        "scale_by_learning_rate takes gradients or steps",
    ),
    "momentum_on_moments": (
        lambda: oc.chain(oc.estimate_second_moment(), oc.add_momentum(0.9)),
        "add_momentum takes gradients or steps",
    ),
    "decay_on_moments": (
        lambda: oc.chain(oc.estimate_moments(), oc.decoupled_weight_decay(0.1)),
        "decoupled_weight_decay takes gradients or steps",
    ),
    "l2_after_moments": (
        lambda: oc.chain(oc.estimate_moments(), oc.add_l2_regularization(0.1)),
        "add_l2_regularization takes gradients or steps",
    ),
}


@pytest.mark.parametrize("case", MISPLACED)
def test_misplaced_transform_raises_a_helpful_type_error(case):
    build, message = MISPLACED[case]
    opt = build()
    state = opt.init(PARAMS)
    with pytest.raises(TypeError, match=re.escape(message)):
        opt.update(_grads(0), state, PARAMS)
    # the same under jit: the check happens while tracing
    with pytest.raises(TypeError, match=re.escape(message)):
        jax.jit(opt.update)(_grads(0), state, PARAMS)


def test_error_messages_say_where_to_place_the_transform():
    opt = oc.chain(oc.correct_bias())
    with pytest.raises(TypeError, match="place it after one of them"):
        opt.update(_grads(0), opt.init(PARAMS), PARAMS)
    opt = oc.chain(oc.estimate_moments(), oc.scale_by_learning_rate(0.1))
    with pytest.raises(TypeError, match="after normalize_by_second_moment"):
        opt.update(_grads(0), opt.init(PARAMS), PARAMS)


def test_decay_without_params_says_so():
    opt = oc.adamw(1e-3)
    with pytest.raises(ValueError, match=re.escape("decoupled_weight_decay needs the params")):
        opt.update(_grads(0), opt.init(PARAMS))


def test_the_library_never_imports_the_lab_or_its_dependencies():
    """``import optim_chain`` and building and stepping a preset load no lab module, YAML,
    scikit-learn, matplotlib or tqdm (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = (
        "import sys, jax.numpy as jnp, optim_chain as oc\n"
        "opt = oc.adamw(1e-3, 0.1, mask=oc.default_decay_mask)\n"
        "p = {'w': jnp.ones((2, 2))}\n"
        "opt.update(p, opt.init(p), p)\n"
        "oc.param_groups(oc.adamw, [], learning_rate=1e-3)\n"
        "bad = [m for m in sys.modules if m.startswith('optim_chain.lab') or m.split('.')[0] in "
        "('yaml', 'sklearn', 'matplotlib', 'tqdm', 'mnist1d')]\n"
        "print(bad)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]", run.stdout


def test_importing_the_package_does_not_start_jax():
    """The public names load on first use, so the command line answers ``--help`` without JAX."""
    import subprocess
    import sys

    code = "import sys, optim_chain, optim_chain.lab.cli\nprint('jax' in sys.modules)\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "False"
