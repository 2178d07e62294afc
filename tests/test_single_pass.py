"""single_pass: the same arithmetic as the wrapped transform, compiled into one loop per array.

The operations are the same; only the loops they are compiled into change, and with them the
places where the compiler contracts a multiply and an add into one fused multiply-add. So the
results agree to the last bit or to one rounding (relative to each array's scale). Values are
checked here, in this process (XLA's default options); the compiled structure with XLA:CPU's
multi-output fusion, a process-wide option, is checked in a child process.
"""

import json
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import cpu_devices_env

import optim_chain as oc
from optim_chain import fusion

pytestmark = pytest.mark.filterwarnings("ignore:single_pass needs:UserWarning")

SHAPES = {"embed": (13, 4), "dense": {"kernel": (4, 6), "bias": (6,)}, "norm": {"scale": (4,)}}
SCHEDULE = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20)


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), dtype), SHAPES, is_leaf=lambda x: isinstance(x, tuple)
    )


def _bias_and_norm_free(params):
    return jax.tree.map(lambda x: x.ndim >= 2, params)


OPTIMIZERS = {
    "adamw": lambda: oc.adamw(1e-2, weight_decay=0.1),
    "adam_l2": lambda: oc.adam_l2(1e-2, weight_decay=0.1),
    "adam": lambda: oc.adam(1e-2),
    "amsgrad": lambda: oc.adamw(1e-2, weight_decay=0.1, amsgrad=True),
    "scheduled_masked_adamw": lambda: oc.adamw(SCHEDULE, weight_decay=0.1, mask=_bias_and_norm_free),
    "nesterov_sgd_l2": lambda: oc.sgd_l2(1e-2, weight_decay=0.1, momentum=0.9, nesterov=True),
    "sgdw": lambda: oc.sgdw(1e-2, weight_decay=0.1, momentum=0.9),
    "rmsprop_centered_momentum": lambda: oc.rmsprop(1e-3, centered=True, momentum=0.9),
    "adagrad": lambda: oc.adagrad(1e-2),
    "skip_nonfinite_adamw": lambda: oc.adamw(1e-2, weight_decay=0.1, skip_nonfinite=True),
    "injected_adamw": lambda: optax.inject_hyperparams(oc.adamw, hyperparam_dtype=jnp.float32)(
        learning_rate=1e-2, weight_decay=0.1
    ),
    "optax_adamw": lambda: optax.adamw(1e-2, weight_decay=0.1),
    # five momentum buffers: more groups than identities, the last one shares the plain run
    "five_buffers": lambda: optax.chain(*(optax.trace(d) for d in (0.9, 0.8, 0.7, 0.6, 0.5))),
}


def _run(opt, params, steps, grads_scale=1.0):
    @jax.jit
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    history = []
    for t in range(steps):
        grads = jax.tree.map(lambda p, t=t: (p * 0.3 + 0.1 * (t + 1)) * grads_scale, params)
        params, state = step(params, state, grads)
        history.append((params, state))
    return history


def _assert_same_to_rounding(a, b):
    """Equal leaf by leaf to one rounding of each float leaf's largest entry; other leaves exactly."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        if not jnp.issubdtype(x.dtype, jnp.floating):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
            continue
        eps = float(jnp.finfo(x.dtype).eps)
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        finite = np.isfinite(x)
        np.testing.assert_array_equal(y[~finite], x[~finite])  # NaN and infinities in the same places
        scale = np.max(np.abs(x[finite]), initial=0.0)
        np.testing.assert_allclose(y[finite], x[finite], rtol=0, atol=eps * scale)


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
def test_same_params_and_state_to_rounding(name, dtype):
    params = _params(dtype)
    plain = _run(OPTIMIZERS[name](), params, steps=30)
    fused = _run(oc.single_pass(OPTIMIZERS[name]()), params, steps=30)
    for (p, s), (q, r) in zip(plain, fused):
        _assert_same_to_rounding(p, q)
        _assert_same_to_rounding(s, r)


def test_special_values_pass_through_exactly():
    tiny = np.finfo(np.float32).smallest_subnormal
    values = np.array([0.0, -0.0, tiny, -tiny, 1e-38, 3e38, -3e38, np.inf, -np.inf, np.nan, 1.5], np.float32)
    for group in range(len(fusion._IDENTITIES)):
        out = np.asarray(jax.jit(lambda x, group=group: fusion._through_identity(x, group))(values))
        assert np.array_equal(np.signbit(out), np.signbit(values))
        normal = ~(np.abs(values) < np.finfo(np.float32).tiny)  # NaN included
        np.testing.assert_array_equal(out[normal], values[normal])
        # subnormals come out unchanged or flushed to zero, as XLA:CPU's own arithmetic does
        assert all(o in (v, 0.0) for o, v in zip(out[~normal], values[~normal]))
    # integer leaves (step counters) are left alone
    count = jnp.int32(7)
    assert fusion._through_identity({"count": count}, 1)["count"] is count


def test_non_finite_and_signed_zero_gradients_match():
    params = _params(jnp.float32)
    grads = jax.tree.map(lambda p: p.at[..., 0].set(-0.0), params)
    grads["dense"]["bias"] = grads["dense"]["bias"].at[1].set(jnp.inf)
    grads["embed"] = grads["embed"].at[2, 1].set(jnp.nan)
    for make in (OPTIMIZERS["adamw"], OPTIMIZERS["skip_nonfinite_adamw"]):
        results = []
        for opt in (make(), oc.single_pass(make())):
            state = opt.init(params)
            results.append(jax.jit(opt.update)(grads, state, params))
        _assert_same_to_rounding(*results)


def test_works_under_vmap_and_without_params():
    opt = oc.single_pass(oc.adamw(1e-2, weight_decay=0.1))
    params = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), _params(jnp.float32))
    state = jax.vmap(opt.init)(params)
    updates, _ = jax.vmap(opt.update)(params, state, params)
    expected, _ = jax.vmap(oc.adamw(1e-2, weight_decay=0.1).update)(params, state, params)
    _assert_same_to_rounding(updates, expected)
    # a transform that needs no params: the plain run alone
    sgd = oc.single_pass(oc.sgd(0.1))
    out, _ = sgd.update({"w": jnp.ones(3)}, sgd.init({"w": jnp.ones(3)}))
    np.testing.assert_array_equal(out["w"], -0.1 * np.ones(3))


def _counting(inner):
    """``inner`` with a count of the Python runs (traces or eager calls) of its ``update``."""
    runs = []

    def update(updates, state, params=None, **extra):
        runs.append(1)
        return inner.update(updates, state, params, **extra)

    return optax.GradientTransformationExtraArgs(inner.init, update), runs


def test_traces_the_inner_transform_once_for_all_groups():
    inner, runs = _counting(oc.adamw(1e-2, weight_decay=0.1))  # three groups: update, m, v
    opt = oc.single_pass(inner)
    params = _params(jnp.float32)
    step = jax.jit(opt.update)
    state = opt.init(params)
    updates, state = step(params, state, params)
    assert len(runs) == 1
    step(params, state, params)  # the same shapes: no new trace
    assert len(runs) == 1
    expected, _ = jax.jit(oc.adamw(1e-2, weight_decay=0.1).update)(params, opt.init(params), params)
    _assert_same_to_rounding(updates, expected)


def test_python_values_among_the_inputs_run_as_they_are():
    """A leaf that is not an array would turn into a tracer under jit: each run is then plain."""
    inner = oc.adamw(1e-2, weight_decay=0.1)

    def update(updates, state, params=None, *, halve=False):
        if halve:  # Python control flow on a Python bool
            updates = jax.tree.map(lambda g: g / 2, updates)
        return inner.update(updates, state, params)

    opt = oc.single_pass(optax.GradientTransformationExtraArgs(inner.init, update))
    params = _params(jnp.float32)
    got, _ = jax.jit(lambda p, s: opt.update(p, s, p, halve=True))(params, opt.init(params))
    halved = jax.tree.map(lambda g: g / 2, params)
    expected, _ = jax.jit(inner.update)(halved, inner.init(params), params)
    _assert_same_to_rounding(got, expected)


def test_is_a_transform_with_its_inner_part():
    inner = oc.adamw(1e-3, weight_decay=0.1)
    opt = oc.single_pass(inner)
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    assert opt.name == "single_pass" and opt.parts == (inner,)
    assert repr(opt).startswith("single_pass(\n  adamw(")


def test_rejects_what_is_not_a_transformation():
    with pytest.raises(TypeError, match="single_pass takes a gradient transformation"):
        oc.single_pass(0.1)


def test_warns_on_cpu_without_multi_output_fusion(monkeypatch):
    params = {"w": jnp.ones(3)}
    monkeypatch.setenv("XLA_FLAGS", "")
    opt = oc.single_pass(oc.adam(1e-3))  # building it does not start or query the backend
    with pytest.warns(UserWarning, match="xla_cpu_use_multi_output_fusion"):
        opt.init(params)
    monkeypatch.setenv("XLA_FLAGS", oc.MULTI_OUTPUT_FUSION_FLAG)
    assert oc.multi_output_fusion_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.init(params)


_CHILD = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    import optim_chain as oc
    from optim_chain import _hlo

    def structure(opt, params):
        def step(params, grads, state):
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state
        compiled = jax.jit(step, donate_argnums=(0, 2)).lower(params, params, opt.init(params)).compile()
        shape = _hlo.structure(compiled.as_text(), sum(x.size for x in jax.tree.leaves(params)))
        return [shape.array_loops, shape.bytes_per_element]

    leaf = {"w": jnp.linspace(-1.0, 1.0, 1 << 16, dtype=jnp.float32)}
    tree = {f"layer{i}": {"kernel": jnp.ones((64, 32)) * i, "bias": jnp.ones(32)} for i in range(6)}
    presets = {
        "adamw": oc.adamw(1e-3, weight_decay=0.1),
        "adam_l2": oc.adam_l2(1e-3, weight_decay=0.1),
        "adam": oc.adam(1e-3),
        "amsgrad": oc.adamw(1e-3, weight_decay=0.1, amsgrad=True),
        "sgdw": oc.sgdw(1e-2, weight_decay=0.1, momentum=0.9),
        "nesterov_sgd_l2": oc.sgd_l2(1e-2, weight_decay=0.1, momentum=0.9, nesterov=True),
        "rmsprop": oc.rmsprop(1e-3, centered=True, momentum=0.9),
        "adagrad": oc.adagrad(1e-2),
    }
    found = {}
    for name, opt in presets.items():
        found[name] = {"plain": structure(opt, leaf), "single_pass": structure(oc.single_pass(opt), leaf)}
    found["tree_adamw"] = structure(oc.single_pass(presets["adamw"]), tree)
    # the same numbers under this compiler option too: the largest difference in roundings
    worst = 0.0
    for opt in presets.values():
        fused = oc.single_pass(opt)
        a = jax.jit(opt.update)(leaf, opt.init(leaf), leaf)
        b = jax.jit(fused.update)(leaf, fused.init(leaf), leaf)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            if jnp.issubdtype(x.dtype, jnp.floating):
                scale = float(jnp.max(jnp.abs(x))) * float(jnp.finfo(x.dtype).eps)
                worst = max(worst, float(jnp.max(jnp.abs(x - y))) / max(scale, 1e-300))
    found["roundings"] = worst
    print(json.dumps(found))
    """
)


def test_one_loop_per_array_with_multi_output_fusion():
    env = cpu_devices_env(1)
    env["XLA_FLAGS"] = oc.MULTI_OUTPUT_FUSION_FLAG
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    # bytes per float32 parameter: every array read once and written once
    minimum = {"adamw": 28, "adam_l2": 28, "adam": 28, "amsgrad": 36, "sgdw": 20, "nesterov_sgd_l2": 20}
    minimum.update({"rmsprop": 36, "adagrad": 20})  # centered with momentum: v, mean, buffer
    for name, least in minimum.items():
        loops, moved = found[name]["single_pass"]
        assert (loops, moved) == (1, least), (name, found[name])
        plain_loops, plain_moved = found[name]["plain"]
        assert plain_loops > 1 and plain_moved > least, (name, found[name])
    assert found["tree_adamw"][0] == 12  # one loop per leaf
    assert found["roundings"] <= 2.0


def test_flax_nnx_optimizer_takes_it():
    from flax import nnx

    from optim_chain import masks
    from optim_chain.lab import models

    def train(tx):
        model = models.NNXMLP(8, hidden=(6,), rngs=nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        x = jnp.linspace(-1.0, 1.0, 32).reshape(4, 8)

        @nnx.jit
        def step(model, optimizer):
            grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
            optimizer.update(model, grads)

        for _ in range(3):
            step(model, optimizer)
        return nnx.state(model, nnx.Param), nnx.state(optimizer)

    make = lambda: oc.adamw(1e-2, 0.1, mask=masks.DEFAULT_DECAY)  # noqa: E731
    plain, fused = train(make()), train(oc.single_pass(make()))
    _assert_same_to_rounding(jax.tree.map(jnp.asarray, plain), jax.tree.map(jnp.asarray, fused))
