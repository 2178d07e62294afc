"""The decay-strength helpers: timescales, conversions between conventions, normalized decay."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optim_chain as oc

SCALINGS = ("learning_rate", "schedule", "corrected", "none")


def test_torch_decay_in_the_papers_form():
    """torch's 0.1 at lr 1e-3 shrinks each weight by 1e-4 per step: the paper's lambda = 1e-4."""
    assert oc.convert_weight_decay(0.1, 1e-3, "learning_rate", "schedule") == pytest.approx(1e-4, rel=1e-12)
    assert oc.convert_weight_decay(1e-4, 1e-3, "schedule", "learning_rate") == pytest.approx(0.1, rel=1e-12)
    assert oc.convert_weight_decay(0.1, 1e-3, "learning_rate", "corrected") == pytest.approx(0.1, rel=1e-12)
    assert oc.convert_weight_decay(0.1, 1e-3, "learning_rate", "none") == pytest.approx(1e-4, rel=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    weight_decay=st.floats(1e-6, 10.0),
    lr=st.floats(1e-6, 1.0),
    source=st.sampled_from(SCALINGS),
    target=st.sampled_from(SCALINGS),
)
def test_conversion_keeps_the_decay_per_step_and_round_trips(weight_decay, lr, source, target):
    converted = oc.convert_weight_decay(weight_decay, lr, source, target)
    back = oc.convert_weight_decay(converted, lr, target, source)
    assert back == pytest.approx(weight_decay, rel=1e-12)
    assert oc.timescale_of(converted, lr, target) == pytest.approx(
        oc.timescale_of(weight_decay, lr, source), rel=1e-12
    )


@settings(max_examples=50, deadline=None)
@given(tau=st.floats(1.0, 1e7), lr=st.floats(1e-6, 1.0), scaling=st.sampled_from(SCALINGS))
def test_timescale_and_weight_decay_are_inverse(tau, lr, scaling):
    wd = oc.weight_decay_from_timescale(tau, lr, scaling)
    assert oc.timescale_of(wd, lr, scaling) == pytest.approx(tau, rel=1e-12)


def test_the_timescale_is_the_memory_of_the_decay():
    """With zero gradients AdamW shrinks the weights by (1 - 1/tau) per step: to 1/e after tau steps."""
    tau = 200
    wd = oc.weight_decay_from_timescale(tau, 1e-2)
    opt = oc.adamw(1e-2, wd)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    zero = {"w": jnp.zeros(3)}
    step = jax.jit(opt.update)
    for _ in range(tau):
        updates, state = step(zero, state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params["w"], (1 - 1 / tau) ** tau, rtol=1e-6)
    assert float(params["w"][0]) == pytest.approx(math.exp(-1), rel=3e-3)


def test_converted_decays_shrink_alike_at_every_step_of_a_schedule():
    """learning_rate <-> schedule conversion at the peak holds along the whole schedule."""
    peak = 0.1
    schedule = optax.cosine_decay_schedule(peak, 50)
    torch_form = oc.sgdw(schedule, 0.5)
    paper_wd = oc.convert_weight_decay(0.5, schedule, "learning_rate", "schedule", peak_learning_rate=peak)
    paper_form = oc.sgdw(schedule, paper_wd, decay_scaling="schedule", peak_learning_rate=peak)
    results = []
    for opt in (torch_form, paper_form):
        params, state = {"w": jnp.ones(2)}, opt.init({"w": jnp.ones(2)})
        for _ in range(50):
            updates, state = opt.update({"w": jnp.zeros(2)}, state, params)
            params = optax.apply_updates(params, updates)
        results.append(params["w"])
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12)
    assert float(results[0][0]) < 0.5


def test_timescale_in_epochs():
    iterations_per_epoch = 100
    assert oc.timescale_of(0.1, 1e-3) / iterations_per_epoch == pytest.approx(100.0)
    assert oc.timescale_of(0.0, 1e-3) == math.inf


def test_normalized_weight_decay_is_the_papers_formula():
    assert oc.normalized_weight_decay(0.05, 128, 50_000, 100) == pytest.approx(0.05 * math.sqrt(128 / 5e6))
    # a run four times as long takes half the decay per step
    short = oc.normalized_weight_decay(0.05, 128, 50_000, 25)
    assert oc.normalized_weight_decay(0.05, 128, 50_000, 100) == pytest.approx(short / 2)


def test_helpers_refuse_bad_input():
    schedule = optax.cosine_decay_schedule(1e-3, 10)
    with pytest.raises(ValueError, match="needs peak_learning_rate"):
        oc.timescale_of(0.1, schedule)
    assert oc.timescale_of(0.1, schedule, peak_learning_rate=1e-3) == pytest.approx(1e4)
    assert oc.timescale_of(0.1, schedule, "schedule") == pytest.approx(10.0)  # eta = 1 at the peak
    with pytest.raises(ValueError, match="source must be one of"):
        oc.convert_weight_decay(0.1, 1e-3, "torch", "schedule")
    with pytest.raises(ValueError, match="timescale must be > 0, got 0"):
        oc.weight_decay_from_timescale(0, 1e-3)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        oc.timescale_of(-0.1, 1e-3)
    with pytest.raises(ValueError, match="batch_size must be > 0"):
        oc.normalized_weight_decay(0.05, 0, 100, 1)
    with pytest.raises(ValueError, match="peak learning rate must be > 0"):
        oc.timescale_of(0.1, 0.0)


def test_adamwr_recipe_decay_follows_the_restarting_multiplier():
    """AdamWR: warm restarts (SGDR), decay following the schedule multiplier, restarting with it."""
    cycle = {"init_value": 0.0, "peak_value": 1e-2, "warmup_steps": 0, "decay_steps": 20, "end_value": 0.0}
    schedule = optax.sgdr_schedule([cycle] * 3)
    wd = oc.normalized_weight_decay(0.5, batch_size=10, dataset_size=200, epochs=1)
    opt = oc.adamw(schedule, wd, decay_scaling="schedule", peak_learning_rate=1e-2)
    params, state = {"w": jnp.ones(())}, opt.init({"w": jnp.ones(())})
    shrink = []
    for _ in range(60):
        updates, state = opt.update({"w": jnp.zeros(())}, state, params)
        new = optax.apply_updates(params, updates)
        shrink.append(1 - float(new["w"]) / float(params["w"]))
        params = new
    expected = [wd * float(schedule(t)) / 1e-2 for t in range(60)]
    np.testing.assert_allclose(shrink, expected, rtol=1e-9, atol=1e-15)
    assert shrink[20] > shrink[19] and shrink[40] > shrink[39]  # the restarts
