"""Optimizer state is laid out like the params on a device mesh, eagerly and under jit.

The checks run in a subprocess with 8 simulated CPU devices: the device count is fixed when jax
starts, so it cannot be changed inside the test process. One subprocess runs every case, because
starting jax is the slow part.
"""

import subprocess
import sys
import textwrap

import pytest
from helpers import cpu_devices_env

CHECKS = textwrap.dedent(
    """
    import math
    import sys
    import traceback

    import jax
    import jax.numpy as jnp
    import optax
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    import optim_chain as oc

    assert len(jax.devices()) == 8, jax.devices()
    assert not jax.config.jax_enable_x64

    PRESETS = {
        "sgd": lambda: oc.sgd(0.1, momentum=0.9, nesterov=True),
        "sgd_l2": lambda: oc.sgd_l2(0.1, 1e-2, momentum=0.9),
        "sgdw": lambda: oc.sgdw(0.1, 1e-2, momentum=0.9, mask=oc.default_decay_mask),
        "adagrad": lambda: oc.adagrad(0.1, initial_accumulator_value=0.1),
        "rmsprop": lambda: oc.rmsprop(1e-2, centered=True, momentum=0.9),
        "adam": lambda: oc.adam(1e-2, amsgrad=True, moment_dtype=jnp.float32),
        "adam_l2": lambda: oc.adam_l2(1e-2, 1e-2),
        "adamw": lambda: oc.adamw(
            optax.linear_schedule(1e-2, 1e-3, 10), 0.1, mask=oc.default_decay_mask,
            decay_scaling="schedule", peak_learning_rate=1e-2,
        ),
        # its runs read the inputs through a replicated scalar: the layouts must carry through
        "single_pass_adam_l2": lambda: oc.single_pass(oc.adam_l2(1e-2, 1e-2)),
    }
    SPECS = {
        "row": P("d", None),    # sharded along the first axis
        "col": P(None, "d"),    # sharded along the second axis
        "bias": P(),            # replicated
    }
    SHAPES = {"row": (16, 4), "col": (4, 8), "bias": (5,)}
    DTYPES = {"row": jnp.float32, "col": jnp.bfloat16, "bias": jnp.float32}


    from helpers import param_shaped_subtrees as param_like_subtrees


    def check_like(tree, params, where):
        for name, leaf in tree.items():
            expected = params[name].sharding
            assert isinstance(leaf.sharding, NamedSharding), (where, name, leaf.sharding)
            assert leaf.sharding.mesh == expected.mesh, (where, name, leaf.sharding)
            assert leaf.sharding.is_equivalent_to(expected, leaf.ndim), (where, name, leaf.sharding, expected)
        return len(tree)


    def check_all(mesh_name, make_params):
        checked = 0
        params = make_params()
        for name, spec in SPECS.items():
            assert params[name].sharding.spec == spec, (name, params[name].sharding)
        grads = jax.tree.map(lambda p: (p * 0.5 + 0.25).astype(p.dtype), params)
        for preset, build in PRESETS.items():
            opt = build()
            # init on abstract leaves (jax.ShapeDtypeStruct carrying the sharding) places the state too
            abstract = jax.tree.map(
                lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params
            )
            inits = (
                ("eager", opt.init), ("jit", jax.jit(opt.init)), ("abstract", lambda _: opt.init(abstract))
            )
            for mode, init in inits:
                state = init(params)
                subtrees = param_like_subtrees(state, params)
                assert subtrees, (preset, "no state shaped like the params")
                for tree in subtrees:
                    checked += check_like(tree, params, (mesh_name, preset, mode, "init"))

            @jax.jit
            def step(params, state, grads):
                updates, state = opt.update(grads, state, params)
                return updates, optax.apply_updates(params, updates), state

            for _ in range(2):
                updates, new_params, state = step(params, state, grads)
            where = (mesh_name, preset, "jit step")
            checked += check_like(updates, params, where + ("updates",))
            checked += check_like(new_params, params, where + ("params",))
            for tree in param_like_subtrees(state, params):
                checked += check_like(tree, params, where + ("state",))
            assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((updates, state)))
        return checked


    def make_params(place):
        return {
            name: jax.device_put(
                jnp.linspace(-1.0, 1.0, math.prod(SHAPES[name]))
                .reshape(SHAPES[name])
                .astype(DTYPES[name]),
                place(spec),
            )
            for name, spec in SPECS.items()
        }


    failed = False
    try:
        auto = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Auto,))
        print("auto", check_all("auto", lambda: make_params(lambda spec: NamedSharding(auto, spec))))
    except Exception:
        failed = True
        traceback.print_exc()

    # optax's own init builds its zeros with jnp.zeros_like, which under jax.jit has no data
    # dependence on the params, so XLA may put the whole state on one device (it does in jax
    # 0.10). That is optax's behaviour and is not checked here; optim_chain derives its zeros
    # from each leaf instead, and sharding propagation carries the layout over.

    # On an Explicit mesh the sharding is part of each array's type, so zeros keep it whichever
    # way they are made; what this part checks is that every chain runs under explicit sharding
    # (no op mixes layouts that would need a reshard) and hands the layouts through.
    try:
        explicit = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Explicit,))
        with jax.set_mesh(explicit):
            print("explicit", check_all("explicit", lambda: make_params(lambda spec: spec)))
    except Exception:
        failed = True
        traceback.print_exc()

    sys.exit(1 if failed else 0)
    """
)


@pytest.fixture(scope="module")
def sharding_run():
    return subprocess.run(
        [sys.executable, "-c", CHECKS], env=cpu_devices_env(8), capture_output=True, text=True, timeout=300
    )


def _count(run, part):
    """How many leaves the subprocess checked for ``part``; fails with its stderr when it did not finish."""
    for line in run.stdout.splitlines():
        words = line.split()
        if words[:1] == [part]:
            return int(words[1])
    pytest.fail(f"the {part} mesh checks did not finish:\n{run.stderr[-4000:]}")


# every preset: state checked after eager init, jitted init, init on abstract leaves and a jitted
# step, plus the updates and new params of that step, 3 leaves each
MIN_CHECKS = 8 * 3 * 6


def test_state_follows_param_sharding_on_auto_mesh(sharding_run):
    assert _count(sharding_run, "auto") >= MIN_CHECKS


def test_state_follows_param_sharding_on_explicit_mesh(sharding_run):
    assert _count(sharding_run, "explicit") >= MIN_CHECKS


def test_subprocess_exited_cleanly(sharding_run):
    assert sharding_run.returncode == 0, sharding_run.stderr[-4000:]
