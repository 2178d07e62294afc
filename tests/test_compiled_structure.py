"""What the compiled step looks like: loop counts, bytes moved, and the streamed step.

Splitting Adam into separate transforms must cost nothing once compiled: the chain has to
compile to no more fused loops than optax's monolithic implementation, moving no more bytes.
These tests read the optimized HLO; none of them times anything.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim_chain as oc
from optim_chain import _hlo, masks
from optim_chain.streaming import update_and_apply

F32 = jnp.float32


def _tree(dtype=F32):
    rng = np.random.default_rng(0)
    shapes = {"embed": (97, 16), "dense": {"kernel": (16, 40), "bias": (40,)}, "norm": {"scale": (16,)}}
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), dtype), shapes, is_leaf=lambda x: isinstance(x, tuple)
    )


def _grads(params, seed=1):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)


def _compiled(opt, params, chunk_size=None):
    step = jax.jit(
        lambda p, g, s: update_and_apply(opt, g, s, p, chunk_size=chunk_size), donate_argnums=(0, 2)
    )
    return step.lower(params, _grads(params), opt.init(params)).compile().as_text()


PAIRS = {
    "adamw": (oc.adamw(1e-3, weight_decay=0.1), optax.adamw(1e-3, weight_decay=0.1)),
    "adam_l2": (
        oc.adam_l2(1e-3, weight_decay=0.1),
        optax.chain(optax.add_decayed_weights(0.1), optax.adam(1e-3)),
    ),
    "adam": (oc.adam(1e-3), optax.adam(1e-3)),
}


@pytest.mark.parametrize("name", PAIRS)
def test_chain_compiles_to_no_more_loops_than_optax(name):
    ours, theirs = PAIRS[name]
    params = _tree()
    size = sum(p.size for p in jax.tree.leaves(params))
    mine = _hlo.structure(_compiled(ours, params), size)
    optax_ = _hlo.structure(_compiled(theirs, params), size)
    assert mine.fusions <= optax_.fusions, (mine, optax_)
    assert mine.array_loops <= optax_.array_loops, (mine, optax_)
    assert mine.bytes_per_element <= optax_.bytes_per_element, (mine, optax_)
    # three array loops per leaf (m, v, parameters), as optax compiles it
    assert mine.array_loops == 3 * len(jax.tree.leaves(params))


def test_hlo_reader_counts_loops_and_bytes():
    # a + b in place: one loop over 1000 float32, reading 8 bytes and writing 4 per element
    text = jax.jit(lambda a, b: a + b).lower(jnp.ones(1000, F32), jnp.ones(1000, F32)).compile().as_text()
    found = _hlo.structure(text, 1000)
    assert (found.fusions, found.array_loops, found.while_loops) == (1, 1, 0)
    assert found.bytes_per_element == pytest.approx(12.0)


def _run(opt, params, steps, chunk_size, donate):
    step = jax.jit(
        functools.partial(_step, opt, chunk_size=chunk_size), donate_argnums=(0, 2) if donate else ()
    )
    state = opt.init(params)
    for seed in range(steps):
        params, state = step(params, _grads(params, seed), state)
    return params, state


def _step(opt, params, grads, state, chunk_size):
    return update_and_apply(opt, grads, state, params, chunk_size=chunk_size)


STREAMED = {
    "adamw_masked": oc.adamw(1e-3, weight_decay=0.1, mask=masks.ndim_at_least(2)),
    "adam_l2": oc.adam_l2(1e-3, weight_decay=0.1),
    "adam": oc.adam(1e-3),
    "amsgrad_schedule": oc.adamw(optax.cosine_decay_schedule(1e-2, 10), amsgrad=True),
    "rmsprop": oc.rmsprop(1e-3, centered=True, momentum=0.9),
    "sgdw": oc.sgdw(0.1, 1e-2, momentum=0.9),
}


@pytest.mark.parametrize(
    ("name", "dtype"),
    [(name, F32) for name in STREAMED] + [("adamw_masked", jnp.float64), ("adam_l2", jnp.float64)],
)
def test_streamed_step_is_the_two_line_step_bit_for_bit(name, dtype):
    params = _tree(dtype)
    # 100 elements per slice: rows of 16 and 40 give slices of 6 and 2 rows, with shorter tails
    expected = _run(STREAMED[name], params, 3, None, donate=False)
    streamed = _run(STREAMED[name], jax.tree.map(jnp.copy, params), 3, 100, donate=True)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(streamed), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_streamed_optax_adamw_matches_to_rounding():
    # optax's chain goes through the same path; XLA may reassociate its scalar divisions
    # differently in the two programs, so allow float32 rounding differences
    opt, params = optax.adamw(1e-3, weight_decay=0.1), _tree()
    expected = _run(opt, params, 3, None, donate=False)
    streamed = _run(opt, jax.tree.map(jnp.copy, params), 3, 64, donate=True)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(streamed), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_streamed_step_writes_in_place_without_copies():
    params = {"a": jnp.ones((300, 7), F32), "b": jnp.ones((300, 7), F32), "c": jnp.ones(5000, F32)}
    text = _compiled(oc.adamw(1e-3, weight_decay=0.1), params, chunk_size=256)
    big_copies = [line for line in text.splitlines() if re.search(r"= f32\[(300,7|5000)\]\S* copy\(", line)]
    assert big_copies == []
    # one loop for the two (300, 7) leaves, one for the flat 5000
    assert _hlo.structure(text).while_loops == 2
    # inside the loops every array loop works on one slice, never on a whole leaf
    body_loops = [lp for lp in _hlo.loops(text) if lp.computation != "ENTRY" and lp.over_arrays]
    assert body_loops and max(lp.bytes_written for lp in body_loops) <= 4 * 5000


def test_small_leaves_compile_like_the_two_line_form():
    params, opt = _tree(), oc.adamw(1e-3)
    plain = _hlo.structure(_compiled(opt, params))
    whole = _hlo.structure(_compiled(opt, params, chunk_size=10_000))
    assert whole == plain


def test_chain_with_a_reduction_is_refused():
    opt = oc.chain(optax.clip_by_global_norm(1.0), oc.scale_by_learning_rate(0.1))
    params = _tree()
    with pytest.raises(ValueError, match="element by element.*reduce"):
        update_and_apply(opt, _grads(params), opt.init(params), params, chunk_size=64)
    # the plain form still works for it
    jax.jit(functools.partial(_step, opt, chunk_size=None))(params, _grads(params), opt.init(params))


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64"])
def test_chunk_size_is_validated(bad):
    params, opt = _tree(), oc.adam(1e-3)
    with pytest.raises(
        ValueError, match=f"chunk_size must be a positive int or None, got {re.escape(repr(bad))}"
    ):
        update_and_apply(opt, _grads(params), opt.init(params), params, chunk_size=bad)


def test_grads_must_match_params():
    params, opt = _tree(), oc.adam(1e-3)
    grads = {**_grads(params), "extra": jnp.ones(3, F32)}
    with pytest.raises(ValueError, match="extra"):
        update_and_apply(opt, grads, opt.init(params), params)
