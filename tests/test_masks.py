"""Masks: predicates, the default decay rule on real Flax models, and that masked leaves never decay."""

import re
import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.core import freeze

import optim_chain as oc
from optim_chain import masks
from optim_chain._tree import leaf_paths

# ----------------------------------------------------------------------------------------- models


class LinenNet(nn.Module):
    """Every layer kind the default rule must know about; BatchNorm adds a batch_stats collection.

    All widths are equal so that few distinct shapes need compiling.
    """

    @nn.compact
    def __call__(self, ids: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Embed(10, 4)(ids)
        x = nn.Dense(4)(x)
        x = nn.LayerNorm()(x)
        x = nn.RMSNorm()(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(4)(x)


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(10, 4, rngs=rngs)
        self.linear = nnx.Linear(4, 4, rngs=rngs)
        self.ln = nnx.LayerNorm(4, rngs=rngs)
        self.rms = nnx.RMSNorm(4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.out = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return self.out(self.bn(self.rms(self.ln(self.linear(self.embed(ids))))))


LINEN_DECAYED = {"Dense_0/kernel", "Dense_1/kernel", "Embed_0/embedding"}
LINEN_ALL = LINEN_DECAYED | {
    "Dense_0/bias",
    "Dense_1/bias",
    "LayerNorm_0/scale",
    "LayerNorm_0/bias",
    "RMSNorm_0/scale",
    "BatchNorm_0/scale",
    "BatchNorm_0/bias",
}
NNX_DECAYED = {"linear/kernel", "out/kernel", "embed/embedding"}
NNX_ALL = NNX_DECAYED | {
    "linear/bias",
    "out/bias",
    "ln/scale",
    "ln/bias",
    "rms/scale",
    "bn/scale",
    "bn/bias",
}


def _randomize(params, seed=0):
    """Replaces every leaf by nonzero random values, so that a zero bias cannot hide a decay."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [1.0 + jax.random.uniform(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, new)


@pytest.fixture(scope="module")
def linen_variables():
    return LinenNet().init(jax.random.key(0), jnp.zeros((2, 3), jnp.int32))


@pytest.fixture(scope="module")
def linen_params(linen_variables):
    return _randomize(linen_variables["params"])


def _decayed(params, mask) -> set[str]:
    return {p for p, flag in zip(leaf_paths(params), masks.resolve_mask(mask, params)) if flag}


# ------------------------------------------------------------------------------------- predicates

TREE = {
    "encoder": {"Dense_0": {"kernel": np.ones((3, 4)), "bias": np.ones(4)}},
    "LayerNorm_0": {"scale": np.ones(4), "bias": np.ones(4)},
    "temperature": np.ones(()),
}


def test_path_matches_searches_the_joined_path():
    assert _decayed(TREE, masks.path_matches("Dense")) == {"encoder/Dense_0/kernel", "encoder/Dense_0/bias"}
    assert _decayed(TREE, masks.path_matches(r"^encoder/")) == {
        "encoder/Dense_0/kernel",
        "encoder/Dense_0/bias",
    }
    assert _decayed(TREE, masks.path_matches(r"(?i)layernorm")) == {"LayerNorm_0/scale", "LayerNorm_0/bias"}
    assert _decayed(TREE, masks.path_matches("layernorm")) == set()


def test_name_is_looks_only_at_the_last_component():
    assert _decayed(TREE, masks.name_is("bias")) == {"encoder/Dense_0/bias", "LayerNorm_0/bias"}
    assert _decayed(TREE, masks.name_is("kernel", "temperature")) == {"encoder/Dense_0/kernel", "temperature"}
    # "encoder" is a path component but not the name of any leaf
    assert _decayed(TREE, masks.name_is("encoder")) == set()


def test_ndim_predicates():
    assert _decayed(TREE, masks.ndim_at_least(2)) == {"encoder/Dense_0/kernel"}
    assert _decayed(TREE, masks.ndim_at_most(0)) == {"temperature"}
    assert _decayed(TREE, masks.ndim_at_most(1)) == set(leaf_paths(TREE)) - {"encoder/Dense_0/kernel"}


def test_combinators_follow_set_algebra():
    a, b = masks.name_is("bias"), masks.path_matches("LayerNorm")
    sa, sb, everything = _decayed(TREE, a), _decayed(TREE, b), set(leaf_paths(TREE))
    assert _decayed(TREE, a & b) == sa & sb == {"LayerNorm_0/bias"}
    assert _decayed(TREE, a | b) == sa | sb
    assert _decayed(TREE, ~a) == everything - sa
    assert _decayed(TREE, ~(a | b)) == _decayed(TREE, ~a & ~b)
    assert _decayed(TREE, masks.everything()) == everything


def test_predicates_print_as_built():
    rule = ~masks.name_is("bias") & (masks.path_matches("Dense") | masks.ndim_at_least(2))
    assert repr(rule) == "(~name_is('bias') & (path_matches('Dense') | ndim_at_least(2)))"
    assert len(rule.atoms) == 3


def test_predicate_construction_errors():
    with pytest.raises(ValueError, match=re.escape("'(unclosed'")):
        masks.path_matches("(unclosed")
    with pytest.raises(ValueError, match="name_is"):
        masks.name_is()
    with pytest.raises(TypeError, match="Predicate"):
        masks.name_is("bias") & (lambda path, leaf: True)
    with pytest.raises(TypeError, match="Predicate"):
        masks.name_is("bias") | True


# ------------------------------------------------------------------- default rule on real models


def test_default_mask_on_linen_params(linen_variables):
    params = linen_variables["params"]
    assert set(leaf_paths(params)) == LINEN_ALL
    # BatchNorm's running statistics live in their own collection, which the optimizer never sees
    assert "batch_stats" in linen_variables and "batch_stats" not in params
    assert _decayed(params, oc.default_decay_mask) == LINEN_DECAYED
    assert _decayed(params, masks.DEFAULT_DECAY) == LINEN_DECAYED
    tree = oc.default_decay_mask(params)
    assert jax.tree.structure(tree) == jax.tree.structure(params)
    assert all(isinstance(flag, bool) for flag in jax.tree.leaves(tree))


def test_default_mask_on_frozen_dict(linen_variables):
    frozen = freeze(linen_variables["params"])
    tree = oc.default_decay_mask(frozen)
    assert type(tree) is type(frozen)
    assert jax.tree.structure(tree) == jax.tree.structure(frozen)
    assert _decayed(frozen, oc.default_decay_mask) == LINEN_DECAYED


def test_default_mask_on_nnx_state():
    model = NnxNet(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    assert set(leaf_paths(state)) == NNX_ALL
    assert _decayed(state, oc.default_decay_mask) == NNX_DECAYED
    assert _decayed(state, masks.DEFAULT_DECAY) == NNX_DECAYED
    assert jax.tree.structure(oc.default_decay_mask(state)) == jax.tree.structure(state)


def test_default_rule_recognises_norm_modules_and_torch_style_names():
    tree = {
        "block": {
            "GroupNorm_0": {"scale": np.ones(4), "bias": np.ones(4)},
            "final_norm": {"weight": np.ones(4)},  # a norm's weight vector, torch naming
            "proj": {"weight": np.ones((4, 4)), "bias": np.ones(4)},
        },
        "pos_table": np.ones((8, 4)),  # unnamed matrix: decayed because ndim >= 2
        "log_temperature": np.ones(()),
    }
    assert _decayed(tree, oc.default_decay_mask) == {"block/proj/weight", "pos_table"}


# --------------------------------------------------------------- masks in optimizers: behaviour

STEPS = 3


def _run(opt, params, steps=STEPS):
    """Runs ``steps`` updates with zero gradients; returns the final params."""
    state = opt.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    for _ in range(steps):
        updates, state = opt.update(zero, state, params)
        params = optax.apply_updates(params, updates)
    return params


def _moved(before, after) -> set[str]:
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after)
    return {p for p, flag in zip(leaf_paths(before), jax.tree.leaves(changed)) if flag}


PRESETS = {
    "adamw": lambda mask: oc.adamw(0.1, weight_decay=0.5, mask=mask),
    "adamw_amsgrad": lambda mask: oc.adamw(0.1, weight_decay=0.5, amsgrad=True, mask=mask),
    "sgdw": lambda mask: oc.sgdw(0.1, weight_decay=0.5, momentum=0.9, mask=mask),
    "adam_l2": lambda mask: oc.adam_l2(0.1, weight_decay=0.5, mask=mask),
    "sgd_l2": lambda mask: oc.sgd_l2(0.1, weight_decay=0.5, momentum=0.9, nesterov=True, mask=mask),
}


@pytest.mark.parametrize("preset", PRESETS)
def test_only_masked_leaves_decay(preset, linen_params):
    after = _run(PRESETS[preset](oc.default_decay_mask), linen_params)
    assert _moved(linen_params, after) == LINEN_DECAYED
    # decay shrinks every decayed leaf toward zero (all entries start positive)
    for path in LINEN_DECAYED:
        module, name = path.split("/")
        assert float(jnp.max(after[module][name] - linen_params[module][name])) < 0


@pytest.mark.parametrize("preset", ["adamw", "sgdw"])
def test_decoupled_decay_with_zero_gradients_is_geometric(preset, linen_params):
    """With g = 0 the adaptive step is exactly 0, so decayed leaves shrink by (1 - lr*wd) per step."""
    after = _run(PRESETS[preset](oc.default_decay_mask), linen_params)
    kernel = linen_params["Dense_0"]["kernel"]
    np.testing.assert_allclose(after["Dense_0"]["kernel"], kernel * (1 - 0.1 * 0.5) ** STEPS, rtol=1e-6)


@pytest.mark.parametrize("preset", PRESETS)
def test_mask_forms_agree(preset, linen_params):
    """A predicate, a callable and a bool pytree that select the same leaves give identical results."""
    forms = [masks.DEFAULT_DECAY, oc.default_decay_mask, oc.default_decay_mask(linen_params)]
    results = [_run(PRESETS[preset](form), linen_params) for form in forms]
    for other in results[1:]:
        chex.assert_trees_all_equal(results[0], other)
    # and they differ from decaying everything, so the comparison is not vacuous
    assert _moved(results[0], _run(PRESETS[preset](None), linen_params))


@pytest.mark.parametrize("preset", ["adamw", "sgd_l2"])
def test_frozen_dict_params_decay_like_dict(preset, linen_params):
    frozen = freeze(linen_params)
    after = _run(PRESETS[preset](oc.default_decay_mask), frozen)
    assert type(after) is type(frozen)
    assert _moved(frozen, after) == LINEN_DECAYED
    chex.assert_trees_all_equal(
        dict(after), dict(freeze(_run(PRESETS[preset](oc.default_decay_mask), linen_params)))
    )


@pytest.mark.parametrize(
    ("preset", "form"),
    [
        ("adamw", "predicate"),
        ("adamw", "callable"),
        ("adamw", "tree"),
        ("adam_l2", "tree"),
        ("sgdw", "callable"),
    ],
)
def test_nnx_optimizer_decays_only_masked_params(preset, form):
    model = NnxNet(nnx.Rngs(0))
    nnx.update(model, _randomize(nnx.state(model, nnx.Param)))
    params = nnx.state(model, nnx.Param)
    mask = {
        "predicate": masks.DEFAULT_DECAY,
        "callable": oc.default_decay_mask,
        "tree": oc.default_decay_mask(params),
    }[form]
    before = jax.tree.map(jnp.array, params)
    stats_before = jax.tree.map(jnp.array, nnx.state(model, nnx.BatchStat))
    optimizer = nnx.Optimizer(model, PRESETS[preset](mask), wrt=nnx.Param)
    for _ in range(STEPS):
        optimizer.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
    after = nnx.state(model, nnx.Param)
    assert _moved(before, after) == NNX_DECAYED
    chex.assert_trees_all_equal(stats_before, nnx.state(model, nnx.BatchStat))


# ---------------------------------------------------------------------------- mismatched masks


def _mask_without(params, module, name):
    tree = jax.tree.map(lambda _: True, params)
    tree[module] = {k: v for k, v in tree[module].items() if k != name}
    return tree


@pytest.mark.parametrize("preset", PRESETS)
def test_mask_tree_missing_a_leaf_is_refused(preset, linen_params):
    opt = PRESETS[preset](_mask_without(linen_params, "Dense_0", "bias"))
    grads = jax.tree.map(jnp.zeros_like, linen_params)
    with pytest.raises(ValueError, match=r"missing from the mask: \['Dense_0/bias'\]"):
        opt.update(grads, opt.init(linen_params), linen_params)


@pytest.mark.parametrize("preset", ["adamw", "sgd_l2"])
def test_mask_tree_with_an_extra_leaf_is_refused(preset, linen_params):
    tree = jax.tree.map(lambda _: True, linen_params)
    tree["Dense_0"]["gate"] = False
    opt = PRESETS[preset](tree)
    grads = jax.tree.map(jnp.zeros_like, linen_params)
    with pytest.raises(ValueError, match=r"mask leaves not in params: \['Dense_0/gate'\]"):
        opt.update(grads, opt.init(linen_params), linen_params)


def test_mask_callable_returning_wrong_tree_is_refused(linen_params):
    opt = oc.adamw(0.1, mask=lambda params: {"Dense_0": {"kernel": True}})
    grads = jax.tree.map(jnp.zeros_like, linen_params)
    with pytest.raises(ValueError, match=r"1 mask leaves vs 10 params leaves.*'Dense_0/bias'"):
        opt.update(grads, opt.init(linen_params), linen_params)


def test_resolve_mask_rejects_array_leaves(linen_params):
    tree = jax.tree.map(lambda x: jnp.ones(x.shape, bool), linen_params)
    with pytest.raises(TypeError, match="must be a Python bool"):
        masks.resolve_mask(tree, linen_params)


# -------------------------------------------------------------------------------- describe_mask


def test_describe_mask_lists_every_leaf(linen_params):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default rule matches something on this model
        text = oc.describe_mask(linen_params)
    lines = text.splitlines()
    assert lines[0].split() == ["path", "shape", "dtype", "decays"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert set(rows) == LINEN_ALL
    for path, row in rows.items():
        assert row.rstrip().endswith("yes" if path in LINEN_DECAYED else "no"), row
    assert "(4, 4)" in rows["Dense_0/kernel"] and "float32" in rows["Dense_0/kernel"]
    assert "(4,)" in rows["LayerNorm_0/scale"]
    assert "(10, 4)" in rows["Embed_0/embedding"]
    decayed = 4 * 4 + 4 * 4 + 10 * 4
    total = sum(int(np.size(x)) for x in jax.tree.leaves(linen_params))
    assert lines[-1] == f"3 of 10 leaves decay ({decayed:,} of {total:,} parameters)"


def test_describe_mask_on_nnx_state_and_predicate():
    state = nnx.state(NnxNet(nnx.Rngs(0)), nnx.Param)
    with warnings.catch_warnings():
        # NNX names its norm modules freely ("ln", "bn"): the default rule's norm-path pattern
        # then matches nothing, which is expected and must not be reported as a typo
        warnings.simplefilter("error")
        text = oc.describe_mask(state, masks.DEFAULT_DECAY)
    rows = {line.split()[0]: line.split()[-1] for line in text.splitlines()[1:-1]}
    assert rows == {path: "yes" if path in NNX_DECAYED else "no" for path in NNX_ALL}


def test_describe_mask_warns_about_patterns_that_match_nothing(linen_params):
    typo = ~masks.path_matches("LayerNrom") & masks.ndim_at_least(1)
    with pytest.warns(UserWarning, match=re.escape("path_matches('LayerNrom') matches no parameter")):
        text = oc.describe_mask(linen_params, typo)
    assert "10 of 10 leaves decay" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        oc.describe_mask(linen_params, typo, warn=False)


def test_default_rule_combined_with_a_typo_still_warns(linen_params):
    rule = masks.DEFAULT_DECAY & ~masks.name_is("kernal")
    with pytest.warns(UserWarning, match="kernal") as record:
        oc.describe_mask(linen_params, rule)
    assert len(record) == 1
