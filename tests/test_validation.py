"""Bad hyperparameters are refused when the optimizer is built, naming the argument and the value."""

import math
import re

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim_chain as oc

# name -> (factory, the keyword arguments it accepts besides the learning rate)
PRESETS = {
    "sgd": oc.sgd,
    "sgd_l2": lambda lr, **kw: oc.sgd_l2(lr, kw.pop("weight_decay", 1e-2), **kw),
    "sgdw": lambda lr, **kw: oc.sgdw(lr, kw.pop("weight_decay", 1e-2), **kw),
    "adagrad": oc.adagrad,
    "rmsprop": oc.rmsprop,
    "adam": oc.adam,
    "adam_l2": lambda lr, **kw: oc.adam_l2(lr, kw.pop("weight_decay", 1e-2), **kw),
    "adamw": oc.adamw,
}
DECAYING = ["sgd_l2", "sgdw", "adam_l2", "adamw"]
DECOUPLED = ["sgdw", "adamw"]
ADAM = ["adam", "adam_l2", "adamw"]
WITH_EPS = ["adagrad", "rmsprop", *ADAM]
SGD = ["sgd", "sgd_l2", "sgdw"]


def _raises(error, *fragments):
    """``pytest.raises`` whose message must contain every fragment (argument name, value) in order."""
    return pytest.raises(error, match=".*".join(re.escape(f) for f in fragments))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("lr", [-1e-3, -1, float("nan"), float("inf")])
def test_bad_learning_rate(preset, lr):
    with _raises(ValueError, "learning_rate", repr(lr)):
        PRESETS[preset](lr)


@pytest.mark.parametrize("preset", PRESETS)
def test_learning_rate_array_must_be_scalar(preset):
    with _raises(ValueError, "learning_rate", "(2,)"):
        PRESETS[preset](jnp.array([1e-3, 1e-3]))


@pytest.mark.parametrize("preset", PRESETS)
def test_bool_learning_rate(preset):
    with _raises(TypeError, "learning_rate", "bool True"):
        PRESETS[preset](True)


@pytest.mark.parametrize("preset", PRESETS)
def test_string_learning_rate(preset):
    with _raises(TypeError, "learning_rate", "'1e-3'", "str"):
        PRESETS[preset]("1e-3")


@pytest.mark.parametrize("preset", DECAYING)
@pytest.mark.parametrize("wd", [-0.1, float("nan")])
def test_bad_weight_decay(preset, wd):
    with _raises(ValueError, "weight_decay", repr(wd)):
        PRESETS[preset](1e-3, weight_decay=wd)


@pytest.mark.parametrize("preset", DECAYING)
def test_bool_weight_decay(preset):
    with _raises(TypeError, "weight_decay", "bool True"):
        PRESETS[preset](1e-3, weight_decay=True)


@pytest.mark.parametrize("preset", WITH_EPS)
@pytest.mark.parametrize("argument", ["eps", "eps_root"])
def test_negative_eps(preset, argument):
    with _raises(ValueError, argument, "-1e-08"):
        PRESETS[preset](1e-3, **{argument: -1e-8})


@pytest.mark.parametrize("preset", ADAM)
@pytest.mark.parametrize(("argument", "value"), [("b1", 1.0), ("b2", -0.1), ("b1", 1.5), ("b2", 1)])
def test_betas_outside_unit_interval(preset, argument, value):
    with _raises(ValueError, argument, "[0, 1)", repr(value)):
        PRESETS[preset](1e-3, **{argument: value})


@pytest.mark.parametrize("preset", SGD)
@pytest.mark.parametrize("momentum", [1.5, -0.5])
def test_momentum_outside_unit_interval(preset, momentum):
    with _raises(ValueError, "momentum", repr(momentum)):
        PRESETS[preset](1e-3, momentum=momentum)


@pytest.mark.parametrize("preset", SGD)
def test_nesterov_needs_momentum(preset):
    with _raises(ValueError, "nesterov=True", "momentum=0"):
        PRESETS[preset](1e-3, nesterov=True)
    with _raises(ValueError, "nesterov=True", "momentum=0"):
        PRESETS[preset](1e-3, momentum=0.0, nesterov=True)


@pytest.mark.parametrize("preset", SGD)
def test_non_bool_nesterov(preset):
    with _raises(TypeError, "nesterov", "'yes'"):
        PRESETS[preset](1e-3, momentum=0.9, nesterov="yes")


@pytest.mark.parametrize("preset", DECOUPLED)
def test_unknown_decay_scaling_lists_choices(preset):
    with _raises(ValueError, "decay_scaling", "'learning_rate', 'schedule', 'corrected', 'none'", "'lr'"):
        PRESETS[preset](1e-3, weight_decay=0.1, decay_scaling="lr")


@pytest.mark.parametrize("preset", DECOUPLED)
def test_schedule_scaling_of_a_schedule_needs_peak(preset):
    schedule = optax.cosine_decay_schedule(1e-3, 100)
    with _raises(ValueError, "decay_scaling='schedule'", "peak_learning_rate=None"):
        PRESETS[preset](schedule, weight_decay=0.1, decay_scaling="schedule")
    # with the peak given, the same call is accepted
    PRESETS[preset](schedule, weight_decay=0.1, decay_scaling="schedule", peak_learning_rate=1e-3)


@pytest.mark.parametrize("preset", DECOUPLED)
@pytest.mark.parametrize("peak", [0, -1.0, float("nan")])
def test_bad_peak_learning_rate(preset, peak):
    with _raises(ValueError, "peak_learning_rate", repr(peak)):
        PRESETS[preset](1e-3, weight_decay=0.1, decay_scaling="schedule", peak_learning_rate=peak)


@pytest.mark.parametrize("preset", ADAM)
def test_unknown_amsgrad_max_of(preset):
    with _raises(ValueError, "amsgrad_max_of", "'raw', 'corrected'", "'max'"):
        PRESETS[preset](1e-3, amsgrad=True, amsgrad_max_of="max")


@pytest.mark.parametrize("preset", ADAM)
def test_non_bool_amsgrad(preset):
    with _raises(TypeError, "amsgrad", "1"):
        PRESETS[preset](1e-3, amsgrad=1)


@pytest.mark.parametrize("preset", DECAYING)
@pytest.mark.parametrize("leaf", [1.0, 0, "yes", None])
def test_non_bool_mask_leaves(preset, leaf):
    mask = {"w": True, "b": leaf} if leaf is not None else {"w": True, "b": np.float32(1.0)}
    shown = repr(leaf) if leaf is not None else repr(np.float32(1.0))
    with _raises(TypeError, "mask", shown):
        PRESETS[preset](1e-3, weight_decay=0.1, mask=mask)


@pytest.mark.parametrize("preset", DECAYING)
def test_bool_mask_forms_are_accepted(preset):
    for mask in [
        {"w": True, "b": False},
        {"w": np.bool_(True)},
        oc.default_decay_mask,
        oc.masks.everything(),
    ]:
        PRESETS[preset](1e-3, weight_decay=0.1, mask=mask)


def test_rmsprop_specific_arguments():
    with _raises(ValueError, "decay", "[0, 1)", "1.0"):
        oc.rmsprop(1e-3, decay=1.0)
    with _raises(ValueError, "momentum", "-0.1"):
        oc.rmsprop(1e-3, momentum=-0.1)
    with _raises(TypeError, "centered", "1"):
        oc.rmsprop(1e-3, centered=1)


def test_adagrad_initial_accumulator_value():
    with _raises(ValueError, "initial_accumulator_value", "-0.1"):
        oc.adagrad(1e-3, initial_accumulator_value=-0.1)


@pytest.mark.parametrize(
    ("build", "fragments"),
    [
        (lambda: oc.estimate_moments(b1=1.0), ("b1", "1.0")),
        (lambda: oc.estimate_moments(b2=math.nan), ("b2", "nan")),
        (lambda: oc.estimate_second_moment(decay=-0.5), ("decay", "-0.5")),
        (lambda: oc.center_second_moment(decay=2.0), ("decay", "2.0")),
        (lambda: oc.accumulate_second_moment(-1.0), ("initial_value", "-1.0")),
        (lambda: oc.correct_bias(b2=1.0), ("b2", "1.0")),
        (lambda: oc.normalize_by_second_moment(eps=-1.0), ("eps", "-1.0")),
        (lambda: oc.normalize_by_second_moment(eps_root=math.inf), ("eps_root", "inf")),
        (lambda: oc.add_momentum(1.5), ("momentum", "1.5")),
        (lambda: oc.scale_by_learning_rate(-0.1), ("learning_rate", "-0.1")),
        (lambda: oc.add_l2_regularization(-1e-4), ("weight_decay", "-0.0001")),
        (lambda: oc.decoupled_weight_decay(-1e-4), ("weight_decay", "-0.0001")),
        (lambda: oc.decoupled_weight_decay(1e-4, multiplier=-1.0), ("multiplier", "-1.0")),
        (lambda: oc.decay_multiplier(1e-3, "paper"), ("decay_scaling", "'paper'")),
    ],
)
def test_primitives_validate_their_arguments(build, fragments):
    with _raises(ValueError, *fragments):
        build()


def test_errors_are_raised_at_construction_not_at_update():
    """Nothing about the params is needed to spot a bad hyperparameter: no init call happens here."""
    with pytest.raises(ValueError):
        oc.adamw(1e-3, weight_decay=-1.0)
    # concrete jax scalars are checked too; schedules are accepted without being called
    with _raises(ValueError, "learning_rate", "-1"):
        oc.adamw(jnp.asarray(-1.0))
    calls = []
    oc.adamw(lambda step: calls.append(step) or 1e-3)
    assert calls == []
