"""Real models from Equinox, Flax NNX and Hugging Face, used the way each library is used.

For every library: the default mask decays exactly the weight matrices, convolution kernels and
embeddings; a step with zero gradients moves only those leaves (decay is all that acts); a
training run tracks ``optax.adamw`` given the same mask. Hugging Face models are built from small
configs with random weights (nothing is downloaded), and our default mask is compared leaf by leaf
with the rule of the library's own Flax training scripts.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub, whatever a library tries

import chex
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, traverse_util

import optim_chain as oc
from optim_chain import masks
from optim_chain._tree import leaf_paths

eqx = pytest.importorskip("equinox", reason="equinox is not installed: pip install -e '.[test]'")

WEIGHT_DECAY = 0.3
PRESETS = {
    "adamw": lambda mask: oc.adamw(0.05, weight_decay=WEIGHT_DECAY, mask=mask),
    "sgdw": lambda mask: oc.sgdw(0.05, weight_decay=WEIGHT_DECAY, momentum=0.9, mask=mask),
    "adam_l2": lambda mask: oc.adam_l2(0.05, weight_decay=WEIGHT_DECAY, mask=mask),
    "sgd_l2": lambda mask: oc.sgd_l2(0.05, weight_decay=WEIGHT_DECAY, momentum=0.9, mask=mask),
}


def decayed(params, mask=oc.default_decay_mask) -> set[str]:
    return {p for p, flag in zip(leaf_paths(params), masks.resolve_mask(mask, params), strict=True) if flag}


def moved(before, after) -> set[str]:
    flags = [
        bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
    ]
    return {p for p, flag in zip(leaf_paths(before), flags, strict=True) if flag}


def nonzero(tree, seed=0):
    """Every leaf replaced by values in [1, 2), so that no zero-initialised bias can hide a decay."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([1.0 + jax.random.uniform(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def assert_trees_close(ours, theirs, rtol):
    for path, a, b in zip(leaf_paths(ours), jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=rtol, err_msg=path)


# ---------------------------------------------------------------------------------------- Equinox


class EqxNet(eqx.Module):
    """One of each Equinox layer the default rule must know: tokens and an image, two branches."""

    embed: eqx.nn.Embedding
    attn: eqx.nn.MultiheadAttention
    ln: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP
    rms: eqx.nn.RMSNorm
    conv: eqx.nn.Conv2d
    gn: eqx.nn.GroupNorm

    def __init__(self, key: jax.Array) -> None:
        keys = jax.random.split(key, 4)
        self.embed = eqx.nn.Embedding(10, 8, key=keys[0])
        self.attn = eqx.nn.MultiheadAttention(2, 8, key=keys[1])
        self.ln = eqx.nn.LayerNorm(8)
        self.mlp = eqx.nn.MLP(8, 8, 8, 1, key=keys[2])
        self.rms = eqx.nn.RMSNorm(8)
        self.conv = eqx.nn.Conv2d(1, 8, 3, key=keys[3])
        self.gn = eqx.nn.GroupNorm(2, 8)

    def __call__(self, ids: jax.Array, image: jax.Array) -> jax.Array:
        x = jax.vmap(self.embed)(ids)
        x = jax.vmap(self.ln)(x + self.attn(x, x, x))
        x = jax.vmap(self.rms)(jax.vmap(self.mlp)(x))
        y = self.gn(self.conv(image))
        return jnp.mean(x) + jnp.mean(y)


EQX_DECAYED = {
    "embed/weight",
    "attn/query_proj/weight",
    "attn/key_proj/weight",
    "attn/value_proj/weight",
    "attn/output_proj/weight",
    "mlp/layers/0/weight",
    "mlp/layers/1/weight",
    "conv/weight",
}
EQX_NOT_DECAYED = {
    "ln/weight",
    "ln/bias",
    "rms/weight",
    "rms/bias",
    "gn/weight",
    "gn/bias",
    "mlp/layers/0/bias",
    "mlp/layers/1/bias",
    "conv/bias",  # shape (8, 1, 1): three dimensions, but a bias
}


def eqx_model(dtype=jnp.float32):
    model = EqxNet(jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_array)
    return eqx.combine(jax.tree.map(lambda x: x.astype(dtype), params), static)


IDS = jnp.array([1, 4, 7, 2, 9])
IMAGE = jnp.linspace(-1.0, 1.0, 36).reshape(1, 6, 6)


def eqx_loss(model, image):
    return (model(IDS, image.astype(jax.tree.leaves(model)[0].dtype)) - 3.0) ** 2


def test_equinox_default_mask_decays_exactly_matrices_kernels_and_embeddings():
    params = eqx.filter(eqx_model(), eqx.is_array)
    assert set(leaf_paths(params)) == EQX_DECAYED | EQX_NOT_DECAYED
    assert decayed(params) == EQX_DECAYED
    assert decayed(params, masks.DEFAULT_DECAY) == EQX_DECAYED


@pytest.mark.parametrize("layer", ["LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm"])
@pytest.mark.parametrize("attribute", ["ln", "layer", "block"])
def test_equinox_norm_weights_never_decay_whatever_holds_them(layer, attribute):
    build = {
        "LayerNorm": lambda: eqx.nn.LayerNorm(8),
        "RMSNorm": lambda: eqx.nn.RMSNorm(8),
        "GroupNorm": lambda: eqx.nn.GroupNorm(2, 8),
        "BatchNorm": lambda: eqx.nn.BatchNorm(8, "batch", mode="batch"),
    }[layer]
    params = eqx.filter({attribute: build()}, eqx.is_inexact_array)
    assert f"{attribute}/weight" in leaf_paths(params)
    assert decayed(params) == set()


@pytest.mark.parametrize("preset", PRESETS)
def test_equinox_zero_gradient_step_moves_only_the_decayed_leaves(preset):
    params = nonzero(eqx.filter(eqx_model(), eqx.is_array))
    opt = PRESETS[preset](oc.default_decay_mask)
    state = opt.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    after = params
    for _ in range(2):
        updates, state = opt.update(zero, state, after)
        after = eqx.apply_updates(after, updates)
    assert type(after) is EqxNet
    assert moved(params, after) == EQX_DECAYED


def _train_eqx(opt, steps=30, dtype=jnp.float64):
    """``steps`` steps on :class:`EqxNet` the Equinox way: filter, filter_grad, apply_updates."""
    model = eqx_model(dtype)
    state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state, image):
        grads = eqx.filter_grad(eqx_loss)(model, image)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state

    for t in range(steps):
        model, state = step(model, state, IMAGE * (1.0 + 0.1 * t))
    return eqx.filter(model, eqx.is_array)


@pytest.mark.parametrize(
    "mask",
    [
        pytest.param(oc.default_decay_mask, id="default_decay_mask"),
        # a tree of bools built the Equinox way is an eqx.Module, hence callable; it is a tree
        pytest.param(
            jax.tree.map(lambda x: x.ndim >= 2, eqx.filter(eqx_model(), eqx.is_array)), id="bool_module"
        ),
    ],
)
def test_equinox_training_tracks_optax_adamw(mask):
    ours = _train_eqx(oc.adamw(0.02, weight_decay=WEIGHT_DECAY, mask=mask))
    theirs = _train_eqx(optax.adamw(0.02, weight_decay=WEIGHT_DECAY, mask=mask))
    start = eqx.filter(eqx_model(jnp.float64), eqx.is_array)
    assert moved(start, theirs) == set(leaf_paths(start))
    assert_trees_close(ours, theirs, rtol=1e-9)


def test_equinox_bool_module_mask_is_read_as_a_tree():
    params = eqx.filter(eqx_model(), eqx.is_array)
    mask = jax.tree.map(lambda x: x.ndim >= 2, params)
    assert callable(mask) and not masks.is_mask_function(mask)
    assert decayed(params, mask) == EQX_DECAYED | {"conv/bias"}
    for build in PRESETS.values():
        opt = build(mask)
        state = opt.init(params)
        opt.update(params, state, params)  # no forward pass of the "mask"


@pytest.mark.parametrize("preset", ["adamw", "adam", "sgd", "rmsprop", "adagrad", "sgd_l2"])
def test_unfiltered_equinox_model_is_refused_with_the_leaf_and_the_fix(preset):
    opt = {
        "adamw": lambda: oc.adamw(1e-3),
        "adam": lambda: oc.adam(1e-3),
        "sgd": lambda: oc.sgd(1e-3, momentum=0.9),
        "rmsprop": lambda: oc.rmsprop(1e-3),
        "adagrad": lambda: oc.adagrad(1e-3),
        "sgd_l2": lambda: oc.sgd_l2(1e-3, 1e-2),
    }[preset]()
    model = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
    with pytest.raises(
        TypeError, match=r"parameter 'activation' is a custom_jvp.*eqx\.filter\(model, eqx\.is_array\)"
    ):
        opt.init(model)


# ---------------------------------------------------------------------------- leaves named value


class EqxHolder(eqx.Module):
    value: jax.Array
    other: jax.Array


class LinenHolder(linen.Module):
    @linen.compact
    def __call__(self, x):
        return x * self.param("value", linen.initializers.ones, (3, 3)) + self.param(
            "other", linen.initializers.ones, (3,)
        )


class NnxHolder(nnx.Module):
    def __init__(self) -> None:
        self.value = nnx.Param(jnp.ones((3, 3)))
        self.other = nnx.Param(jnp.ones(3))


@pytest.mark.parametrize("library", ["equinox", "linen", "nnx", "dict"])
def test_a_leaf_named_value_keeps_its_name(library):
    params = {
        "equinox": lambda: {"holder": EqxHolder(jnp.ones((3, 3)), jnp.ones(3))},
        "linen": lambda: {"holder": LinenHolder().init(jax.random.key(0), jnp.ones(3))["params"]},
        "nnx": lambda: {"holder": nnx.state(NnxHolder(), nnx.Param)},
        "dict": lambda: {"holder": {"value": jnp.ones((3, 3)), "other": jnp.ones(3)}},
    }[library]()
    assert sorted(leaf_paths(params)) == ["holder/other", "holder/value"]
    assert decayed(params, masks.name_is("value")) == {"holder/value"}
    assert decayed(params) == {"holder/value"}


# ------------------------------------------------------------------------------------- Flax NNX


class NnxZoo(nnx.Module):
    """Every NNX layer kind the default rule must know about, BatchNorm with its statistics."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(10, 8, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False, rngs=rngs)
        self.ln = nnx.LayerNorm(8, rngs=rngs)
        self.linear = nnx.Linear(8, 8, rngs=rngs)
        self.rms = nnx.RMSNorm(8, rngs=rngs)
        self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)

    def __call__(self, ids: jax.Array, image: jax.Array) -> jax.Array:
        x = self.embed(ids)
        x = self.ln(x + self.attn(x))
        x = self.rms(self.linear(x))
        y = self.bn(self.conv(image))
        return jnp.mean(x) + jnp.mean(y)


NNX_DECAYED = {
    "embed/embedding",
    "attn/query/kernel",
    "attn/key/kernel",
    "attn/value/kernel",
    "attn/out/kernel",
    "linear/kernel",
    "conv/kernel",
}
NNX_NOT_DECAYED = {
    "attn/query/bias",  # shape (heads, head_dim): two dimensions, but a bias
    "attn/key/bias",
    "attn/value/bias",
    "attn/out/bias",
    "ln/scale",
    "ln/bias",
    "linear/bias",
    "rms/scale",
    "conv/bias",
    "bn/scale",
    "bn/bias",
}
NNX_IMAGE = jnp.linspace(-1.0, 1.0, 2 * 6 * 6).reshape(2, 6, 6, 1)


def nnx_model(dtype=jnp.float32) -> NnxZoo:
    model = NnxZoo(nnx.Rngs(0))
    nnx.update(model, jax.tree.map(lambda x: x.astype(dtype), nnx.state(model)))
    model.eval()  # BatchNorm reads its running statistics; only the optimizer could move them
    return model


def test_nnx_default_mask_decays_exactly_kernels_and_embeddings():
    params = nnx.state(nnx_model(), nnx.Param)
    assert set(leaf_paths(params)) == NNX_DECAYED | NNX_NOT_DECAYED
    assert decayed(params) == NNX_DECAYED


@pytest.mark.parametrize("preset", PRESETS)
def test_nnx_zero_gradient_step_moves_only_the_decayed_leaves(preset):
    model = nnx_model()
    nnx.update(model, nonzero(nnx.state(model, nnx.Param)))
    before = jax.tree.map(jnp.array, nnx.state(model, nnx.Param))
    stats = jax.tree.map(jnp.array, nnx.state(model, nnx.BatchStat))
    optimizer = nnx.Optimizer(model, PRESETS[preset](oc.default_decay_mask), wrt=nnx.Param)
    for _ in range(2):
        optimizer.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
    assert moved(before, nnx.state(model, nnx.Param)) == NNX_DECAYED
    chex.assert_trees_all_equal(stats, nnx.state(model, nnx.BatchStat))


def _train_nnx(tx, steps=30):
    model = nnx_model(jnp.float64)
    stats = jax.tree.map(jnp.array, nnx.state(model, nnx.BatchStat))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, image):
        loss = lambda m: (m(jnp.array([1, 4, 7, 2]), image) - 3.0) ** 2
        grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Param))(model)
        optimizer.update(model, grads)

    for t in range(steps):
        step(model, optimizer, NNX_IMAGE * (1.0 + 0.1 * t))
    chex.assert_trees_all_equal(stats, nnx.state(model, nnx.BatchStat))
    return nnx.state(model, nnx.Param)


def test_nnx_optimizer_training_tracks_optax_adamw_and_leaves_batch_stats_alone():
    ours = _train_nnx(oc.adamw(0.02, weight_decay=WEIGHT_DECAY, mask=oc.default_decay_mask))
    theirs = _train_nnx(optax.adamw(0.02, weight_decay=WEIGHT_DECAY, mask=oc.default_decay_mask))
    start = nnx.state(nnx_model(jnp.float64), nnx.Param)
    assert moved(start, theirs) == set(leaf_paths(start))
    assert_trees_close(ours, theirs, rtol=1e-9)


# --------------------------------------------------------------------------------- Hugging Face


def hf_training_script_mask(params):
    """The decay rule of the Flax training scripts in ``transformers``' examples (run_mlm_flax.py).

    A leaf is decayed unless its name is ``bias`` or its last two path components are those of
    some leaf whose whole path, joined without separators and lower-cased, contains
    ``layernorm``, ``layer_norm`` or ``ln``.
    """
    flat = traverse_util.flatten_dict(params)
    norm_pairs = {
        path[-2:]
        for path in flat
        if any(word in "".join(path).lower() for word in ("layernorm", "layer_norm", "ln"))
    }
    return traverse_util.unflatten_dict(
        {path: path[-1] != "bias" and path[-2:] not in norm_pairs for path in flat}
    )


def _hf_models():
    transformers = pytest.importorskip(
        "transformers", reason="transformers (4.x, with Flax) is not installed"
    )
    if not hasattr(transformers, "FlaxBertForMaskedLM"):
        pytest.skip(f"transformers {transformers.__version__} has no Flax models (they ended with 4.x)")
    return transformers


SMALL = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
HF_MODELS = {
    "bert": lambda t, **kw: t.FlaxBertForMaskedLM(
        t.BertConfig(vocab_size=64, max_position_embeddings=32, **SMALL), **kw
    ),
    "roberta": lambda t, **kw: t.FlaxRobertaForMaskedLM(
        t.RobertaConfig(vocab_size=64, max_position_embeddings=32, **SMALL), **kw
    ),
    "gpt2": lambda t, **kw: t.FlaxGPT2LMHeadModel(
        t.GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2), **kw
    ),
    "llama": lambda t, **kw: t.FlaxLlamaForCausalLM(
        t.LlamaConfig(vocab_size=64, max_position_embeddings=32, num_key_value_heads=2, **SMALL), **kw
    ),
    "bart": lambda t, **kw: t.FlaxBartForConditionalGeneration(
        t.BartConfig(
            vocab_size=64,
            max_position_embeddings=32,
            d_model=16,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
        ),
        **kw,
    ),
    "vit": lambda t, **kw: t.FlaxViTForImageClassification(
        t.ViTConfig(image_size=8, patch_size=4, num_labels=3, **SMALL), **kw
    ),
    "clip": lambda t, **kw: t.FlaxCLIPModel(
        t.CLIPConfig(
            text_config={"vocab_size": 64, "max_position_embeddings": 16, **SMALL},
            vision_config={"image_size": 8, "patch_size": 4, **SMALL},
            projection_dim=8,
        ),
        **kw,
    ),
}

#: Where the script's rule and ours part ways, and why. Everything else agrees leaf by leaf.
HF_DISAGREEMENTS = {
    "clip": {
        # a scalar temperature: the script decays every leaf not named bias outside a layer
        # norm, so it pulls the logit scale toward 0 (temperature 1); we never decay scalars
        "logit_scale": False,
        # a learned vector (the [CLS] patch embedding), a raw parameter with no Embed module
        "vision_model/embeddings/class_embedding": False,
        # a LayerNorm that CLIP's code spells "pre_layrnorm": none of the script's words match
        # it, so the script decays its scale; ours skips it as a vector
        "vision_model/pre_layrnorm/scale": False,
    },
}


def hf_abstract_params(name):
    """A model's parameter tree as ``jax.ShapeDtypeStruct`` leaves, from its config: traced, not run."""
    model = HF_MODELS[name](_hf_models(), _do_init=False)
    return jax.eval_shape(lambda: model.init_weights(jax.random.PRNGKey(0), model.input_shape))


@pytest.mark.parametrize("name", HF_MODELS)
def test_hf_default_mask_against_the_training_script_rule_leaf_by_leaf(name):
    params = hf_abstract_params(name)
    ours = dict(zip(leaf_paths(params), masks.resolve_mask(oc.default_decay_mask, params), strict=True))
    theirs = dict(zip(leaf_paths(params), jax.tree.leaves(hf_training_script_mask(params)), strict=True))
    differ = {path: ours[path] for path in ours if ours[path] != theirs[path]}
    assert differ == HF_DISAGREEMENTS.get(name, {})
    assert any(ours.values()) and not all(ours.values())
    # every decayed leaf is a matrix or more, every matrix not named bias is decayed
    shapes = dict(zip(leaf_paths(params), (x.shape for x in jax.tree.leaves(params)), strict=True))
    assert all(len(shapes[p]) >= 2 for p, flag in ours.items() if flag)
    # the optimizer initialises on the abstract tree, with the mask checked there
    state = oc.adamw(1e-3, mask=oc.default_decay_mask).init(params)
    assert jax.tree.structure(state[0].mu) == jax.tree.structure(params)


def test_hf_bert_masked_lm_training_tracks_optax_with_the_script_mask():
    transformers = _hf_models()
    model = HF_MODELS["bert"](transformers)
    ids = jnp.arange(16).reshape(2, 8) % 64

    def loss(params):
        logits = model(ids, params=params, train=False).logits
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), ids[..., None], axis=-1))

    def train(opt, steps=5):
        params = model.params
        state = opt.init(params)

        @jax.jit
        def step(params, state):
            updates, state = opt.update(jax.grad(loss)(params), state, params)
            return optax.apply_updates(params, updates), state

        for _ in range(steps):
            params, state = step(params, state)
        return params

    ours = train(oc.adamw(1e-2, weight_decay=WEIGHT_DECAY, mask=oc.default_decay_mask))
    theirs = train(optax.adamw(1e-2, weight_decay=WEIGHT_DECAY, mask=hf_training_script_mask))
    assert moved(model.params, ours) == set(leaf_paths(model.params))
    assert_trees_close(ours, theirs, rtol=2e-5)  # float32, two orders of evaluation
