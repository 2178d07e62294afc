"""Parameter groups: torch parity per group, routing rules, selector forms, errors and the table.

The parity tests follow ``torch.optim``'s param groups in float64: each side starts from the
same parameters and, at each step, gets the gradient of one fixed loss evaluated in numpy at its
*own* parameters, so a leaf sent to the wrong group (or a hyperparameter not passed through)
makes the trajectories part and is caught at the step where it happens.
"""

from __future__ import annotations

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optim_chain as oc
from optim_chain import masks
from optim_chain.groups import describe_param_groups, param_groups
from optim_chain.transform import Transform

STEPS = 40
RTOL = 1e-9
ATOL = 1e-12

#: Leaf path -> shape. jax flattens dicts by sorted key, so this is also the flattening order.
SHAPES = {"dense/bias": (3,), "dense/kernel": (5, 3), "embed/embedding": (4, 2), "norm/scale": (3,)}
NAMES = list(SHAPES)
VECTORS = ["dense/bias", "norm/scale"]
MATRICES = ["dense/kernel", "embed/embedding"]

_RNG = np.random.default_rng(7)
THETA0 = {name: _RNG.normal(size=shape) for name, shape in SHAPES.items()}
CURVATURE = {name: _RNG.uniform(0.5, 2.0, size=shape) for name, shape in SHAPES.items()}
NOISE = [
    {name: (1.5 if t < 10 else 0.2) * _RNG.normal(size=shape) for name, shape in SHAPES.items()}
    for t in range(STEPS)
]


def gradient(flat: dict[str, np.ndarray], step: int) -> dict[str, np.ndarray]:
    """The gradient of ``sum(c/2 x^2 - cos(3x)/6 + noise_t x)`` at ``flat``, in float64 numpy."""
    return {n: CURVATURE[n] * x + 0.5 * np.sin(3.0 * x) + NOISE[step][n] for n, x in flat.items()}


def nest(flat: dict[str, object]) -> dict[str, dict[str, object]]:
    """``{"dense/bias": x}`` -> ``{"dense": {"bias": x}}``."""
    tree: dict[str, dict[str, object]] = {}
    for name, value in flat.items():
        outer, inner = name.split("/")
        tree.setdefault(outer, {})[inner] = value
    return tree


def flatten(tree) -> dict[str, np.ndarray]:
    return {name: np.asarray(leaf) for name, leaf in zip(NAMES, jax.tree.leaves(tree), strict=True)}


def make_params(value: float | None = None):
    if value is None:
        return nest({n: jnp.asarray(x) for n, x in THETA0.items()})
    return nest({n: jnp.full(s, value, jnp.float64) for n, s in SHAPES.items()})


@functools.partial(jax.jit, static_argnums=0)
def _jit_step(opt, grads, state, params):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def run_ours(opt: optax.GradientTransformation, steps: int = STEPS) -> list[dict[str, np.ndarray]]:
    """The parameters after each step, with a jitted update and ``optax.apply_updates``."""
    params = make_params()
    state = opt.init(params)
    history = []
    for step in range(steps):
        grads = nest({n: jnp.asarray(g) for n, g in gradient(flatten(params), step).items()})
        params, state = _jit_step(opt, grads, state, params)
        history.append(flatten(params))
    return history


def run_torch(torch, make_optimizer, steps: int = STEPS) -> list[dict[str, np.ndarray]]:
    """The same for ``make_optimizer(tensors_by_name)``, a ``torch.optim`` optimizer."""
    tensors = {n: torch.nn.Parameter(torch.tensor(x, dtype=torch.float64)) for n, x in THETA0.items()}
    opt = make_optimizer(tensors)
    history = []
    for step in range(steps):
        current = {n: t.detach().numpy().copy() for n, t in tensors.items()}
        for name, g in gradient(current, step).items():
            tensors[name].grad = torch.from_numpy(g)
        opt.step()
        history.append({n: t.detach().numpy().copy() for n, t in tensors.items()})
    return history


def assert_same_trajectory(ours, theirs, rtol: float = RTOL, atol: float = ATOL) -> float:
    """Compares every step; returns the largest relative difference seen (for the record)."""
    worst = 0.0
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for name in NAMES:
            np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol, err_msg=f"{name}, step {step}")
            worst = max(worst, float(np.max(np.abs(a[name] - b[name]) / np.abs(b[name]))))
    return worst


def assert_trees_equal(a, b) -> None:
    chex.assert_trees_all_equal(a, b)


# ----------------------------------------------------------------------------- torch parity


def test_adamw_groups_match_torch(torch):
    groups = [(masks.ndim_at_most(1), {"weight_decay": 0.0, "learning_rate": 2e-3})]
    ours = run_ours(param_groups(oc.adamw, groups, learning_rate=1e-3, weight_decay=0.1, b2=0.99))

    def make(t):
        torch_groups = [
            {"params": [t[n] for n in MATRICES]},
            {"params": [t[n] for n in VECTORS], "weight_decay": 0.0, "lr": 2e-3},
        ]
        return torch.optim.AdamW(torch_groups, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99), foreach=False)

    assert_same_trajectory(ours, run_torch(torch, make))


def test_adamw_per_group_betas_and_eps_match_torch(torch):
    groups = [
        (masks.ndim_at_most(1), {"b1": 0.8, "b2": 0.95, "weight_decay": 0.0, "learning_rate": 3e-3}),
        (masks.path_matches(r"^embed/"), {"b2": 0.9, "eps": 1e-6, "weight_decay": 0.3}),
    ]
    opt = param_groups(oc.adamw, groups, learning_rate=1e-2, weight_decay=0.05, b1=0.9, b2=0.999)

    def make(t):
        torch_groups = [
            {
                "params": [t["dense/bias"], t["norm/scale"]],
                "betas": (0.8, 0.95),
                "weight_decay": 0.0,
                "lr": 3e-3,
            },
            {"params": [t["embed/embedding"]], "betas": (0.9, 0.9), "eps": 1e-6, "weight_decay": 0.3},
            {"params": [t["dense/kernel"]]},
        ]
        return torch.optim.AdamW(torch_groups, lr=1e-2, weight_decay=0.05, betas=(0.9, 0.999), foreach=False)

    assert_same_trajectory(run_ours(opt), run_torch(torch, make))


def test_sgd_l2_groups_match_torch(torch):
    # overlapping selectors: norm/scale matches groups 0 and 1 and must take group 0 (no momentum)
    groups = [
        (masks.name_is("scale"), {"momentum": 0.0, "weight_decay": 0.0}),
        (masks.ndim_at_most(1), {"momentum": 0.5, "weight_decay": 0.0}),
        (masks.path_matches(r"^embed/"), {"momentum": 0.8, "nesterov": True, "learning_rate": 0.05}),
    ]
    opt = param_groups(oc.sgd_l2, groups, learning_rate=0.1, weight_decay=1e-2, momentum=0.9)

    def make(t):
        torch_groups = [
            {"params": [t["norm/scale"]], "momentum": 0.0, "weight_decay": 0.0},
            {"params": [t["dense/bias"]], "momentum": 0.5, "weight_decay": 0.0},
            {"params": [t["embed/embedding"]], "momentum": 0.8, "nesterov": True, "lr": 0.05},
            {"params": [t["dense/kernel"]]},
        ]
        return torch.optim.SGD(torch_groups, lr=0.1, weight_decay=1e-2, momentum=0.9, foreach=False)

    assert_same_trajectory(run_ours(opt), run_torch(torch, make))


def test_inner_decay_mask_inside_groups(torch):
    """``mask=default_decay_mask`` is evaluated on each group's subtree: vectors never decay."""
    groups = [(masks.ndim_at_most(1), {"learning_rate": 2e-3})]
    opt = param_groups(oc.adamw, groups, learning_rate=1e-3, weight_decay=0.1, mask=oc.default_decay_mask)

    def make(t):
        torch_groups = [
            {"params": [t[n] for n in MATRICES]},
            {"params": [t[n] for n in VECTORS], "weight_decay": 0.0, "lr": 2e-3},
        ]
        return torch.optim.AdamW(torch_groups, lr=1e-3, weight_decay=0.1, foreach=False)

    assert_same_trajectory(run_ours(opt, steps=10), run_torch(torch, make, steps=10))


def test_inner_predicate_mask_inside_groups():
    # decay only the kernel, expressed as a predicate on the full path, inside both groups
    groups = [(masks.path_matches(r"^dense/"), {"learning_rate": 2e-3})]
    masked = param_groups(
        oc.adamw, groups, learning_rate=1e-3, weight_decay=0.1, mask=masks.name_is("kernel")
    )
    explicit = param_groups(
        oc.adamw,
        [
            (masks.name_is("kernel"), {"learning_rate": 2e-3, "weight_decay": 0.1}),
            (masks.name_is("bias"), {"learning_rate": 2e-3}),
        ],
        learning_rate=1e-3,
        weight_decay=0.0,
    )
    for a, b in zip(run_ours(masked, steps=5), run_ours(explicit, steps=5), strict=True):
        chex.assert_trees_all_close(a, b, rtol=1e-14, atol=0)


# ---------------------------------------------------------------------------------- identity


@pytest.mark.parametrize("groups", [[], [(masks.everything(), {})]], ids=["no_groups", "one_group_of_all"])
def test_groups_reduce_to_the_plain_preset(groups):
    grouped = param_groups(oc.adamw, groups, learning_rate=1e-3, weight_decay=0.1)
    plain = oc.adamw(1e-3, weight_decay=0.1)
    for a, b in zip(run_ours(grouped, steps=10), run_ours(plain, steps=10), strict=True):
        assert_trees_equal(a, b)  # bit for bit


def test_every_group_overriding_a_default_is_the_preset_with_that_value():
    grouped = param_groups(
        oc.sgd_l2, [(masks.everything(), {"momentum": 0.7})], learning_rate=0.1, weight_decay=0.0
    )
    plain = oc.sgd_l2(0.1, weight_decay=0.0, momentum=0.7)
    for a, b in zip(run_ours(grouped, steps=5), run_ours(plain, steps=5), strict=True):
        assert_trees_equal(a, b)  # bit for bit


# ----------------------------------------------------------------------------------- routing


def learning_rates(opt: optax.GradientTransformation) -> dict[str, float]:
    """Which learning rate each leaf got: with plain SGD and unit gradients, the update is ``-lr``."""
    params = make_params(1.0)
    updates, _ = opt.update(make_params(1.0), opt.init(params), params)
    out = {}
    for name, leaf in flatten(updates).items():
        assert np.all(leaf == leaf.flat[0]), name
        out[name] = -float(leaf.flat[0])
    return out


def test_first_match_wins_and_unmatched_leaves_take_the_defaults():
    groups = [
        (masks.ndim_at_most(1), {"learning_rate": 0.25}),
        (masks.name_is("bias", "embedding"), {"learning_rate": 0.5}),  # bias already taken by group 0
    ]
    got = learning_rates(param_groups(oc.sgd, groups, learning_rate=1.0))
    assert got == {"dense/bias": 0.25, "norm/scale": 0.25, "embed/embedding": 0.5, "dense/kernel": 1.0}


def test_groups_that_match_nothing_are_harmless():
    groups = [
        (masks.name_is("no_such_leaf"), {"learning_rate": 9.0}),
        (masks.name_is("scale"), {"learning_rate": 0.5}),
        (masks.ndim_at_most(1) & masks.name_is("scale"), {"learning_rate": 7.0}),  # shadowed by group 1
    ]
    opt = param_groups(oc.adamw, groups, learning_rate=1e-3, weight_decay=0.1)
    reference = param_groups(oc.adamw, groups[1:2], learning_rate=1e-3, weight_decay=0.1)
    for a, b in zip(run_ours(opt, steps=3), run_ours(reference, steps=3), strict=True):
        assert_trees_equal(a, b)
    assert learning_rates(param_groups(oc.sgd, groups, learning_rate=1.0))["norm/scale"] == 0.5


def test_all_selector_forms_agree():
    as_predicate = masks.ndim_at_most(1)

    def as_callable(params):
        return jax.tree.map(lambda x: np.ndim(x) <= 1, params)

    as_tree = nest({n: n in VECTORS for n in NAMES})
    runs = [
        run_ours(param_groups(oc.adamw, [(s, {"weight_decay": 0.0, "b1": 0.5})], learning_rate=1e-2), steps=4)
        for s in (as_predicate, as_callable, as_tree)
    ]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert_trees_equal(a, b)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=len(NAMES), max_size=len(NAMES)), max_size=4))
def test_routing_is_first_match_for_any_bool_tree_selectors(selections):
    rates = [2.0 ** -(i + 1) for i in range(len(selections))]
    groups = [(nest(dict(zip(NAMES, flags))), {"learning_rate": r}) for flags, r in zip(selections, rates)]
    got = learning_rates(param_groups(oc.sgd, groups, learning_rate=1.0))
    rows = describe_param_groups(make_params(), groups).splitlines()[1 : 1 + len(NAMES)]
    for leaf, (name, row) in enumerate(zip(NAMES, rows, strict=True)):
        owner = next((i for i, flags in enumerate(selections) if flags[leaf]), None)
        assert got[name] == (1.0 if owner is None else rates[owner])
        assert row.startswith(name) and row.endswith(
            "default" if owner is None else f"  {owner}: learning_rate={rates[owner]}"
        )


def test_jit_matches_eager_and_works_with_apply_updates():
    opt = param_groups(oc.adamw, [(masks.ndim_at_most(1), {"weight_decay": 0.0})], learning_rate=1e-2)
    params = make_params()
    grads = nest({n: jnp.asarray(g) for n, g in gradient(flatten(params), 0).items()})
    state = opt.init(params)
    eager_updates, eager_state = opt.update(grads, state, params)
    jit_updates, jit_state = jax.jit(opt.update)(grads, state, params)
    chex.assert_trees_all_close(eager_updates, jit_updates, rtol=1e-15, atol=0)
    chex.assert_trees_all_close(eager_state, jit_state, rtol=1e-15, atol=0)
    new_params = jax.jit(optax.apply_updates)(params, jit_updates)
    chex.assert_trees_all_close(new_params, jax.tree.map(jnp.add, params, eager_updates), rtol=1e-15, atol=0)


def test_other_optimizer_factories_work():
    """Any function returning a transformation can be grouped, optax's own optimizers included."""
    groups = [(masks.ndim_at_most(1), {"weight_decay": 0.0, "b2": 0.99})]
    ours = param_groups(oc.adamw, groups, learning_rate=1e-3, weight_decay=0.1)
    theirs = param_groups(optax.adamw, groups, learning_rate=1e-3, weight_decay=0.1)
    for a, b in zip(run_ours(ours, steps=5), run_ours(theirs, steps=5), strict=True):
        chex.assert_trees_all_close(a, b, rtol=1e-12, atol=1e-15)


def test_the_transform_shows_its_groups():
    groups = [(masks.ndim_at_most(1), {"weight_decay": 0.0, "learning_rate": 2e-3}), (masks.name_is("x"), {})]
    opt = param_groups(oc.adamw, groups, learning_rate=1e-3, weight_decay=0.1)
    assert isinstance(opt, Transform) and isinstance(opt, optax.GradientTransformationExtraArgs)
    assert opt.name == "param_groups"
    assert [p.name for p in opt.parts] == ["adamw", "adamw", "adamw"]
    assert opt.parts[0].parts[3].hyperparams["learning_rate"] == 2e-3
    assert opt.parts[-1].parts[3].hyperparams["learning_rate"] == 1e-3
    assert opt.hyperparams["defaults"] == {"learning_rate": 1e-3, "weight_decay": 0.1}
    text = str(opt)
    assert "group_0 [ndim_at_most(1)] weight_decay=0.0, learning_rate=0.002:" in text
    assert "group_1 [name_is('x')] no overrides:" in text
    assert "default [leaves no selector matches] learning_rate=0.001, weight_decay=0.1:" in text
    assert text.count("decoupled_weight_decay(") == 3
    state = opt.init(make_params())
    assert set(state.inner_states) == {"group_0", "group_1", "default"}


# ------------------------------------------------------------------------------------ errors

GOOD = [(masks.ndim_at_most(1), {"weight_decay": 0.0})]


@pytest.mark.parametrize(
    ("optimizer_fn", "groups", "defaults", "error", "message"),
    [
        ("adamw", GOOD, {}, TypeError, r"optimizer_fn must be a callable .* got str 'adamw'"),
        (
            oc.adamw,
            masks.everything(),
            {},
            TypeError,
            r"groups must be a sequence of \(selector, overrides\)",
        ),
        (oc.adamw, {"bias": {}}, {}, TypeError, r"groups must be a sequence .* got dict"),
        (
            oc.adamw,
            [masks.everything()],
            {},
            TypeError,
            r"groups\[0\] must be a \(selector, overrides\) pair",
        ),
        (oc.adamw, (masks.everything(), {}), {}, TypeError, r"groups\[0\] .* must still sit in a list"),
        (oc.adamw, [{"params": [], "lr": 1.0}], {}, TypeError, r"groups\[0\] .* torch-style dict"),
        (oc.adamw, [(masks.everything(), {}, {})], {}, TypeError, r"groups\[0\] must be a \(selector, over"),
        (
            oc.adamw,
            [*GOOD, (masks.everything(), 0.0)],
            {},
            TypeError,
            r"groups\[1\] overrides must be a mapping",
        ),
        (
            oc.adamw,
            [(masks.everything(), {"lr": 1.0})],
            {},
            TypeError,
            r"groups\[0\] overrides key 'lr' is not a keyword of adamw \(torch's lr is learning_rate here\); "
            r"valid keywords: learning_rate, weight_decay, b1, b2",
        ),
        (
            oc.adamw,
            GOOD,
            {"betas": (0.9, 0.99)},
            TypeError,
            r"defaults key 'betas' is not a keyword of adamw",
        ),
        (
            oc.sgd,
            [(masks.everything(), {"weight_decay": 0.1})],
            {},
            TypeError,
            r"groups\[0\] overrides key 'weight_decay' is not a keyword of sgd; valid keywords: "
            r"learning_rate, momentum",
        ),
        (oc.adamw, [("bias", {})], {}, TypeError, r"groups\[0\] selector .* masks\.path_matches\('bias'\)"),
        (
            oc.adamw,
            [*GOOD, (None, {})],
            {},
            TypeError,
            r"groups\[1\] selector is None; .* masks\.everything\(\)",
        ),
        (oc.adamw, [({"dense": 1}, {})], {}, TypeError, r"groups\[0\] selector must be .* non-bool leaf 1"),
        (
            oc.adamw,
            [(masks.everything(), {"weight_decay": -1.0})],
            {},
            ValueError,
            r"groups\[0\] \(learning_rate=0.001, weight_decay=-1.0\): "
            r"weight_decay must be a finite number >= 0",
        ),
        (
            oc.adamw,
            GOOD,
            {"mask": {"dense": {"kernel": True}}},
            TypeError,
            r"defaults mask is a dict of bools.* masks\.Predicate or a callable",
        ),
        (lambda **kw: 3, GOOD, {}, TypeError, r"optimizer_fn <lambda> must return a gradient transformation"),
    ],
)
def test_construction_errors(optimizer_fn, groups, defaults, error, message):
    defaults = {"learning_rate": 1e-3, **defaults} if optimizer_fn in (oc.adamw, oc.sgd) else defaults
    with pytest.raises(error, match=message):
        param_groups(optimizer_fn, groups, **defaults)


def test_defaults_must_make_a_complete_call():
    with pytest.raises(TypeError, match=r"the default group \(weight_decay=0.1\): .*learning_rate"):
        param_groups(oc.adamw, [(masks.everything(), {"learning_rate": 1e-3})], weight_decay=0.1)


def test_a_bool_tree_selector_of_the_wrong_structure_names_its_group_at_init():
    bad = nest({"dense/bias": True, "dense/kernel": False, "embed/embedding": False})  # no norm/scale
    opt = param_groups(oc.adamw, [(masks.name_is("kernel"), {}), (bad, {})], learning_rate=1e-3)
    with pytest.raises(
        ValueError, match=r"groups\[1\] selector does not match .*missing from the mask: \['norm/scale'\]"
    ):
        opt.init(make_params())
    with pytest.raises(ValueError, match=r"groups\[0\] selector does not match"):
        describe_param_groups(make_params(), [(bad, {})])


def test_accepted_keywords_of_a_kwargs_function_are_not_checked():
    def factory(**kwargs):
        return optax.sgd(**kwargs)

    opt = param_groups(factory, [(masks.ndim_at_most(1), {"momentum": 0.5})], learning_rate=0.1)
    opt.init(make_params())


# ---------------------------------------------------------------------------------- the table


def test_describe_param_groups_lists_every_leaf_and_the_counts():
    groups = [
        (masks.ndim_at_most(1), {"weight_decay": 0.0, "learning_rate": 2e-3}),
        (masks.name_is("bias"), {"b1": 0.5}),  # fully shadowed by group 0
        (masks.name_is("nothing"), {}),
        (masks.path_matches(r"^embed/"), {"learning_rate": 1e-4}),
    ]
    params = make_params()
    lines = describe_param_groups(params, groups).splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["path", "shape", "dtype", "group"]
    rows = {line.split()[0]: re.split(r"\s{2,}", line) for line in lines[1:5]}
    assert rows == {
        "dense/bias": ["dense/bias", "(3,)", "float64", "0: weight_decay=0.0, learning_rate=0.002"],
        "dense/kernel": ["dense/kernel", "(5, 3)", "float64", "default"],
        "embed/embedding": ["embed/embedding", "(4, 2)", "float64", "3: learning_rate=0.0001"],
        "norm/scale": ["norm/scale", "(3,)", "float64", "0: weight_decay=0.0, learning_rate=0.002"],
    }
    assert lines[5:] == [
        "group 0 [ndim_at_most(1)] weight_decay=0.0, learning_rate=0.002: 2 leaves, 6 parameters",
        "group 1 [name_is('bias')] b1=0.5: 0 leaves, 0 parameters "
        "(every leaf it matches is in an earlier group)",
        "group 2 [name_is('nothing')] no overrides: 0 leaves, 0 parameters (matches no leaf)",
        "group 3 [path_matches('^embed/')] learning_rate=0.0001: 1 leaf, 8 parameters",
        "default: 1 leaf, 15 parameters",
        "total: 4 leaves, 29 parameters in 5 groups",
    ]


def test_describe_param_groups_without_groups_and_with_a_bool_tree():
    params = make_params()
    assert describe_param_groups(params, []).splitlines()[-2:] == [
        "default: 4 leaves, 29 parameters",
        "total: 4 leaves, 29 parameters in 1 group",
    ]
    tree = nest({n: n == "dense/kernel" for n in NAMES})
    text = describe_param_groups(params, [(tree, {"learning_rate": 0.5})])
    assert "group 0 [bool tree (1 of 4 leaves True)] learning_rate=0.5: 1 leaf, 15 parameters" in text
    with pytest.raises(TypeError, match=r"groups\[0\] overrides must be a mapping"):
        describe_param_groups(params, [(tree, None)])
