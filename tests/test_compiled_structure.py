"""What the compiled step looks like, against optax: fused loops and the bytes they move.

Splitting Adam into separate transforms must cost nothing once compiled: a chain of
optim_chain primitives has to compile to no more fused loops than optax's implementation of
the same optimizer, moving no more bytes. These tests read the optimized HLO of the jitted
step (``opt.update`` then ``optax.apply_updates``, params and state donated); none of them
times anything.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim_chain as oc
from optim_chain import _hlo

F32 = jnp.float32
SHAPES = {"embed": (97, 16), "dense": {"kernel": (16, 40), "bias": (40,)}, "norm": {"scale": (16,)}}


def _tree():
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), F32), SHAPES, is_leaf=lambda x: isinstance(x, tuple)
    )


def _step(opt, params, grads, state):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _structure(opt, params):
    step = jax.jit(functools.partial(_step, opt), donate_argnums=(0, 2))
    text = step.lower(params, params, opt.init(params)).compile().as_text()
    return _hlo.structure(text, sum(p.size for p in jax.tree.leaves(params)))


# the three presets with a constant learning rate, as optax users write them
PRESETS = {
    "adamw": (oc.adamw(1e-3, weight_decay=0.1), optax.adamw(1e-3, weight_decay=0.1)),
    "adam_l2": (
        oc.adam_l2(1e-3, weight_decay=0.1),
        optax.chain(optax.add_decayed_weights(0.1), optax.adam(1e-3)),
    ),
    "adam": (oc.adam(1e-3), optax.adam(1e-3)),
}


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("layout", ["leaf", "tree"])
def test_preset_compiles_to_no_more_fusions_than_optax(name, layout):
    ours, theirs = PRESETS[name]
    params = _tree() if layout == "tree" else {"w": jnp.ones(4096, F32)}
    mine, optax_ = _structure(ours, params), _structure(theirs, params)
    assert mine.fusions <= optax_.fusions, (mine, optax_)
    assert mine.array_loops <= optax_.array_loops, (mine, optax_)
    assert mine.bytes_per_element <= optax_.bytes_per_element, (mine, optax_)
    # one loop per written array: m, v and the parameters of every leaf
    assert mine.array_loops == 3 * len(jax.tree.leaves(params))


def _ndim_mask(params):
    return jax.tree.map(lambda x: x.ndim >= 2, params)


SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100)
VARIANTS = {
    "masked_adamw": (
        oc.adamw(1e-3, weight_decay=0.1, mask=_ndim_mask),
        optax.adamw(1e-3, weight_decay=0.1, mask=_ndim_mask),
    ),
    # a schedule needs a step counter in scale_by_learning_rate and one in the decay
    # transform (optax shares one): one more scalar fusion, no more loops over arrays
    "scheduled_adamw": (oc.adamw(SCHEDULE, weight_decay=0.1), optax.adamw(SCHEDULE, weight_decay=0.1)),
    "amsgrad": (oc.adam(1e-3, amsgrad=True, amsgrad_max_of="corrected"), optax.amsgrad(1e-3)),
    "sgd_momentum": (oc.sgd(1e-2, momentum=0.9), optax.sgd(1e-2, momentum=0.9)),
    "rmsprop": (oc.rmsprop(1e-2), optax.rmsprop(1e-2, decay=0.99, eps=1e-8)),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_other_chains_loop_over_arrays_no_more_than_optax(name):
    ours, theirs = VARIANTS[name]
    mine, optax_ = _structure(ours, _tree()), _structure(theirs, _tree())
    assert mine.array_loops <= optax_.array_loops, (mine, optax_)
    assert mine.bytes_per_element <= optax_.bytes_per_element, (mine, optax_)
    assert mine.fusions <= optax_.fusions + (name == "scheduled_adamw"), (mine, optax_)


def test_constant_rates_keep_no_step_counter():
    # only correct_bias counts steps in adamw with constants; the counters of the learning
    # rate and of the decay exist for schedules alone
    state = oc.adamw(1e-3, weight_decay=0.1).init(_tree())
    counters = [x for x in jax.tree.leaves(state) if x.dtype == jnp.int32]
    assert len(counters) == 1
    scheduled = oc.adamw(SCHEDULE, weight_decay=0.1).init(_tree())
    assert len([x for x in jax.tree.leaves(scheduled) if x.dtype == jnp.int32]) == 3


def test_hlo_reader_counts_loops_and_bytes():
    # a + b: one loop over 1000 float32, reading 8 bytes and writing 4 per element
    text = jax.jit(lambda a, b: a + b).lower(jnp.ones(1000, F32), jnp.ones(1000, F32)).compile().as_text()
    found = _hlo.structure(text, 1000)
    assert (found.fusions, found.array_loops, found.while_loops) == (1, 1, 0)
    assert found.bytes_per_element == pytest.approx(12.0)
    # a scalar computation is a fusion but not a loop over an array
    text = jax.jit(lambda a, s: (a * 2, s + 1)).lower(jnp.ones(64, F32), jnp.int32(0)).compile().as_text()
    found = _hlo.structure(text, 64)
    assert found.array_loops == 1 and found.fusions == 2
