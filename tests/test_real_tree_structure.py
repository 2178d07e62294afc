"""The compiled step on a real model's parameter tree: Flax BERT (8 x 512, 138 leaves) from a config.

The bench's ``hf-bert`` layout, shapes only (nothing is downloaded or initialised). optim_chain's
AdamW with its default decay mask must compile to the loops of ``optax.adamw`` with the Hugging
Face training scripts' mask, moving the same bytes, and ``single_pass`` to one loop per leaf at
28 bytes per parameter under multi-output fusion. Nothing here times anything.
"""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import cpu_devices_env

pytest.importorskip("transformers")
pytest.importorskip("flax")

from optim_chain import _hlo  # noqa: E402
from optim_chain.lab import bench  # noqa: E402


def _abstract_params(layout):
    shapes = bench.model_shapes(layout)
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes, is_leaf=lambda x: isinstance(x, tuple)
    )


def _structure(opt, params):
    def step(params, grads, state):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = jax.eval_shape(opt.init, params)
    text = jax.jit(step, donate_argnums=(0, 2)).lower(params, params, state).compile().as_text()
    return _hlo.structure(text, bench.count_shapes(bench.model_shapes("hf-bert")))


def test_training_script_mask_spares_biases_and_layer_norm_scales():
    params = {
        "dense": {"kernel": 1, "bias": 2},
        "LayerNorm": {"scale": 3, "bias": 4},
        "ln_f": {"scale": 5},
        "rescale": {"scale": 6},  # a scale outside a norm decays, as in the scripts
        "cls": {"bias": 7},
    }
    flags = bench.training_script_mask(params)
    assert flags == {
        "dense": {"kernel": True, "bias": False},
        "LayerNorm": {"scale": False, "bias": False},
        "ln_f": {"scale": False},
        "rescale": {"scale": True},
        "cls": {"bias": False},
    }


@pytest.mark.parametrize(("layout", "leaves", "decayed"), [("hf-bert", 138, 52), ("hf-gpt2", 100, 34)])
def test_model_layouts_decay_the_same_leaves_in_every_implementation(layout, leaves, decayed):
    params = _abstract_params(layout)
    masks = bench.decay_masks(layout, params)  # raises if optim_chain's and the scripts' masks differ
    flags = masks["flags"]
    assert len(flags) == leaves and sum(flags) == decayed
    # what decays is every matrix and embedding, nothing else
    assert flags == [x.ndim == 2 for x in jax.tree.leaves(params)]


OPTIMIZERS = ["adamw", "adam_l2", "sgd"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_bert_tree_compiles_to_optax_loops_and_bytes(name):
    params = _abstract_params("hf-bert")
    masks = bench.decay_masks("hf-bert", params)
    mine = _structure(bench.optim_chain_optimizer(name, mask=masks["optim_chain"]), params)
    theirs = _structure(bench.optax_optimizer(name, mask=masks["optax"]), params)
    assert mine.fusions <= theirs.fusions, (mine, theirs)
    assert mine.array_loops <= theirs.array_loops, (mine, theirs)
    assert mine.bytes_per_element <= theirs.bytes_per_element, (mine, theirs)
    # one loop per written array: two for SGD's (buffer, params), three for Adam's (m, v, params)
    per_leaf = 2 if name == "sgd" else 3
    assert mine.array_loops == per_leaf * 138


_CHILD = """
import json, jax, jax.numpy as jnp, optax
from optim_chain import _hlo
from optim_chain.lab import bench

shapes = bench.model_shapes("hf-bert")
params = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes, is_leaf=lambda x: isinstance(x, tuple)
)
masks = bench.decay_masks("hf-bert", params)
found = {}
for name in ("adamw", "adam_l2", "sgd"):
    cases = {"single_pass": bench.optim_chain_optimizer(name, single_pass=True, mask=masks["optim_chain"])}
    if name == "adamw":  # the plain chains compile alike under the flag too (one pair, to keep this short)
        cases["optax"] = bench.optax_optimizer(name, mask=masks["optax"])
        cases["optim_chain"] = bench.optim_chain_optimizer(name, mask=masks["optim_chain"])
    for impl, opt in cases.items():
        def step(params, grads, state, opt=opt):
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state
        state = jax.eval_shape(opt.init, params)
        text = jax.jit(step, donate_argnums=(0, 2)).lower(params, params, state).compile().as_text()
        shape = _hlo.structure(text, bench.count_shapes(shapes))
        found[f"{name} {impl}"] = [shape.array_loops, shape.bytes_per_element]
print(json.dumps(found))
"""


def test_bert_tree_with_multi_output_fusion():
    env = cpu_devices_env(1)
    env["XLA_FLAGS"] = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"
    command = [sys.executable, "-c", _CHILD]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for name, least in (("adamw", 28), ("adam_l2", 28), ("sgd", 20)):
        # single_pass: one loop per leaf, every array read once and written once
        assert found[f"{name} single_pass"] == [138, least], found
    mine, theirs = found["adamw optim_chain"], found["adamw optax"]
    # the same loops as optax's, more than one per leaf, and more than 28 bytes per parameter
    assert mine == theirs and mine[0] > 138 and mine[1] > 28, found
