"""Sharded training: the transformer example on a ("data", "fsdp") mesh of 8 virtual CPU devices.

* 20 AdamW steps on a 2 x 4 mesh match the same 20 steps on one device to float32 rounding.
* Every per-parameter optimizer-state leaf has its parameter's sharding after eager init, jitted
  init (with and without ``out_shardings``) and after every training step; none is replicated
  where its parameter is split.
* An orbax checkpoint written on 8 devices restores onto a 4-device mesh, and training goes on
  to the same result as the run that was never interrupted.
* The example run as 2 processes of 4 devices, joined by ``jax.distributed.initialize`` over
  localhost, trains like one process of 8 devices and writes a checkpoint that one process reads.

The device count is fixed when jax starts, so the 8-device part runs in one subprocess (jax
start-up and compilation are the slow part) without float64, as real training runs. The helpers'
argument checks run in this process.
"""

import json
import math
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import cpu_devices_env
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

import optim_chain as oc
from optim_chain import sharding

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sharded_training.py"

SCRIPT = textwrap.dedent(
    """
    import contextlib
    import importlib.util
    import io
    import json
    import math
    import pathlib
    import sys
    import time
    import traceback

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import NamedSharding

    import optim_chain as oc
    from optim_chain import sharding

    example_path, workdir, multihost_dir = sys.argv[1:4]
    spec = importlib.util.spec_from_file_location("sharded_training", example_path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    # the runs below compile the same steps more than once (a fresh jit per run of the example);
    # a private on-disk cache lets the repeats load the compiled program instead
    jax.config.update("jax_compilation_cache_dir", workdir + "/compilation_cache")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    assert len(jax.devices()) == 8, jax.devices()
    assert not jax.config.jax_enable_x64
    STEPS, INTERRUPT = 20, 10
    SMALL = ["--steps", str(STEPS), "--seq-len", "32", "--d-model", "32", "--layers", "1",
             "--batch-size", "16", "--log-every", "5"]
    # What "equal up to float32 rounding" allows. Sharding changes the order of the sums in the
    # loss mean, the gradient all-reduce and the matmuls; each moves a result by a few units of
    # float32 roundoff (1.2e-7 relative to the terms summed).
    # * Loss curve and optimizer state (linear in the gradients): 1e-5 relative to the largest
    #   entry of the leaf; the largest change seen is 8e-7.
    # * Parameters: Adam divides m by sqrt(v) per coordinate, so it turns the *relative* error of
    #   one coordinate's gradient into an error of that size times the learning rate. Where a
    #   gradient is mostly cancellation (a token seen once, behind a LayerNorm) its relative
    #   rounding error is far above 1e-7, so the bound is absolute and in units of the total
    #   step size: 1e-3 * sum_t lr_t (seen: 7e-5 of it).
    # A real sharding bug (a gradient summed over part of the batch, a shard updated from the
    # wrong data, a loss averaged twice) is off by a sizeable fraction of a step, well above both.
    RTOL = 1e-5
    SCHEDULE = next(
        p.hyperparams["learning_rate"]
        for p in example.make_optimizer(3e-3, 0.1, STEPS).parts
        if p.name == "scale_by_learning_rate"
    )
    TOTAL_STEP = sum(float(SCHEDULE(t)) for t in range(STEPS))
    PARAM_ATOL = 1e-3 * TOTAL_STEP
    # A key projection's bias adds the same q.b_k to every attention logit of a query, which the
    # softmax cancels: its exact gradient is zero and the computed one is rounding noise. Adam
    # divides that noise by its own root mean square, so this bias moves by about +-lr per step
    # in a direction set by the rounding. It is checked separately: its value cannot change the
    # model's output.
    NULL_DIRECTION = "attention/key/bias"
    results = {}


    def record(name):
        def wrap(fn):
            try:
                results[name] = {"checks": fn()}
            except Exception:
                results[name] = {"error": traceback.format_exc()[-3000:]}
            return fn
        return wrap


    def path_str(path):
        return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


    from helpers import param_shaped_subtrees as param_like_subtrees


    def check_leaf_like(leaf, param, where):
        want = param.sharding
        got = leaf.sharding
        assert isinstance(got, NamedSharding), (where, got)
        assert got.mesh == want.mesh, (where, got.mesh, want.mesh)
        assert got.is_equivalent_to(want, param.ndim), (where, got, want)
        assert got.is_fully_replicated == want.is_fully_replicated, (where, got, want)
        got_shards = sorted((s.device.id, s.data.shape) for s in leaf.addressable_shards)
        want_shards = sorted((s.device.id, s.data.shape) for s in param.addressable_shards)
        assert got_shards == want_shards, (where, got_shards, want_shards)


    def check_params_split(params, mesh, where):
        \"\"\"Every parameter with >= 1024 entries is split 1/fsdp per device; returns how many.\"\"\"
        fsdp = mesh.shape["fsdp"]
        split = 0
        for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
            assert p.sharding.mesh == mesh, (where, path_str(path))
            big = p.size >= sharding.DEFAULT_MIN_SIZE
            for shard in p.addressable_shards:
                expected = p.size // fsdp if big and fsdp > 1 else p.size
                assert shard.data.size == expected, (where, path_str(path), shard.data.shape, p.shape)
            split += big and fsdp > 1
        return split


    def check_state(state, params, where):
        \"\"\"Adam's m and v have the params' layout leaf by leaf; all else is scalar.\"\"\"
        subtrees = param_like_subtrees(state, params)
        assert len(subtrees) == 2, (where, len(subtrees))
        checked = 0
        for tree in subtrees:
            items = jax.tree_util.tree_flatten_with_path(tree)[0]
            for (path, leaf), p in zip(items, jax.tree.leaves(params)):
                check_leaf_like(leaf, p, (where, path_str(path)))
                checked += 1
        arrays = [x for x in jax.tree.leaves(state) if x.ndim > 0]
        assert len(arrays) == 2 * len(jax.tree.leaves(params)), (where, len(arrays))
        return checked


    def close(a, b, where, atol=None):
        # checks max|a - b| against RTOL * max|a| (or atol); returns it as a fraction of that
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        bound = RTOL * np.abs(a).max(initial=0.0) if atol is None else atol
        err = np.abs(a - b).max(initial=0.0)
        assert err <= bound, (where, float(err), float(bound))
        return float(err / bound) if bound else 0.0


    def compare_runs(ref, other, where):
        # loss curve, params and state agree to float32 rounding; returns the worst error in
        # each group as a fraction of its tolerance
        worst = {"losses": close(ref["losses"], other["losses"], (where, "losses")), "params": 0, "state": 0}
        skipped = 0
        for group in ("params", "opt_state"):
            items = jax.tree_util.tree_flatten_with_path(ref[group])[0]
            for (path, a), b in zip(items, jax.tree.leaves(other[group])):
                name = path_str(path)
                if name.endswith(NULL_DIRECTION):
                    skipped += 1
                    continue
                if group == "params":
                    worst["params"] = max(worst["params"], close(a, b, (where, name), PARAM_ATOL))
                else:
                    worst["state"] = max(worst["state"], close(a, b, (where, name)))
        assert skipped == 3 * 1, (where, skipped)  # the one block's key bias in params, m and v
        return worst


    def step_checker(mesh, seen):
        # checks the layouts after every step; the first failure is kept and training goes on, so
        # that the other checks still report
        def on_step(step, params, opt_state):
            seen["steps"] = seen.get("steps", 0) + 1
            try:
                seen["split"] = check_params_split(params, mesh, ("step", step))
                seen["state"] = seen.get("state", 0) + check_state(opt_state, params, ("step", step))
            except AssertionError:
                seen.setdefault("error", traceback.format_exc()[-2000:])
        return on_step


    def run(args, on_step=None):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            result = example.main(SMALL + args, on_step=on_step)
        result["stdout"] = out.getvalue()
        return result


    reference = run(["--devices", "1"])
    seen_2x4 = {}
    sharded = run(["--devices", "8"], step_checker(example.make_mesh(8), seen_2x4))


    @record("matches_single_device")
    def _():
        assert dict(reference["mesh"].shape) == {"data": 1, "fsdp": 1}
        assert dict(sharded["mesh"].shape) == {"data": 2, "fsdp": 4}
        assert len(reference["losses"]) == len(sharded["losses"]) == STEPS
        worst = compare_runs(reference, sharded, "2x4 vs 1")
        # the one leaf left out above only moves along a direction the model cannot see: swapping
        # it between the two runs leaves the loss unchanged to rounding
        ds = example.data.text(seq_len=32)
        model = example.make_model(ds.num_classes, 32, 32, 1)
        tokens, labels = example.global_batch(ds.x_train, ds.y_train, 0, 16, 0)
        ref_params = jax.device_get(reference["params"])
        swapped = jax.tree_util.tree_map_with_path(
            lambda p, a, b: b if path_str(p).endswith(NULL_DIRECTION) else a,
            ref_params, jax.device_get(sharded["params"]),
        )
        moved = max(float(np.abs(a - b).max()) for a, b in zip(
            jax.tree.leaves(ref_params), jax.tree.leaves(swapped)))
        assert moved > 0, "the key bias was expected to differ between the runs"

        @jax.jit
        def loss(params):
            logits = model.apply({"params": params}, tokens)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        a, b = float(loss(ref_params)), float(loss(swapped))
        assert abs(a - b) <= 1e-6 * abs(a), (a, b)
        return {"worst": worst, "key_bias_moved": moved}


    @record("layout_every_step")
    def _():
        assert "error" not in seen_2x4, seen_2x4["error"]
        assert seen_2x4.get("steps") == STEPS, seen_2x4
        assert seen_2x4["split"] >= 8, seen_2x4  # most of the model is split, not replicated
        return seen_2x4


    @record("layout_after_init")
    def _():
        params = sharded["params"]
        mesh = sharded["mesh"]
        opt = example.make_optimizer(3e-3, 0.1, STEPS)
        planned = sharding.state_shardings(opt, params, jax.tree.map(lambda p: p.sharding, params))
        checked = 0
        for mode, init in (
            ("eager", opt.init),
            ("jit", jax.jit(opt.init)),
            ("jit out_shardings", jax.jit(opt.init, out_shardings=planned)),
        ):
            state = init(params)
            checked += check_state(state, params, mode)
            for (path, leaf), want in zip(jax.tree_util.tree_flatten_with_path(state)[0],
                                          jax.tree.leaves(planned)):
                if mode == "eager" and leaf.ndim == 0:
                    continue  # an eager scalar lives on the default device until jit moves it
                assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (mode, path_str(path))
                checked += 1
            assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(state) if x.ndim), mode
        return checked


    @record("state_shardings_presets")
    def _():
        params = sharded["params"]
        param_sh = jax.tree.map(lambda p: p.sharding, params)
        optimizers = {
            "sgdw": oc.sgdw(0.1, 1e-2, momentum=0.9, mask=oc.default_decay_mask),
            "rmsprop": oc.rmsprop(1e-2, centered=True, momentum=0.9),
            "adam_amsgrad": oc.adam(1e-2, amsgrad=True),
            "adamw_injected": optax.inject_hyperparams(oc.adamw, static_args=("mask",))(
                learning_rate=1e-3, weight_decay=0.1, mask=oc.default_decay_mask),
            "masked_adam": optax.masked(oc.adam(1e-3), oc.default_decay_mask),
        }
        checked = 0
        for name, opt in optimizers.items():
            planned = sharding.state_shardings(opt, params, param_sh)
            actual = jax.jit(opt.init)(params)  # layouts found by sharding propagation alone
            split_state = 0
            for (path, leaf), want in zip(jax.tree_util.tree_flatten_with_path(actual)[0],
                                          jax.tree.leaves(planned)):
                assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (name, path_str(path), want)
                split_state += not want.is_fully_replicated
                checked += 1
            assert split_state > 0, name
        return checked


    def memory_rows(out):
        # the per-device rows of the example's memory table, split into words
        lines = [line.split() for line in out.splitlines() if " B (" in line]
        return [words for words in lines if words[0].isdigit()]


    def restore_onto(ckpt, mesh, like):
        # reads a checkpoint of the example into the layout that ``mesh`` gives it
        import orbax.checkpoint as ocp

        abstract_params = jax.eval_shape(lambda: like["params"])
        param_sh = sharding.fsdp_shardings(abstract_params, mesh)
        opt = example.make_optimizer(3e-3, 0.1, STEPS)
        state_sh = sharding.state_shardings(opt, abstract_params, param_sh)
        target = {
            "params": example.checkpoint_target(like["params"], param_sh),
            "opt_state": example.checkpoint_target(like["opt_state"], state_sh),
            "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh)),
        }
        return ocp.StandardCheckpointer().restore(ckpt, target)


    ckpt = workdir + "/ckpt"
    first = run(["--devices", "8", "--stop-after", str(INTERRUPT), "--save", ckpt])


    @record("restore_on_smaller_mesh")
    def _():
        assert len(first["losses"]) == INTERRUPT
        assert "optimizer state" in first["stdout"] and f"saved step {INTERRUPT}" in first["stdout"]
        close(sharded["losses"][:INTERRUPT], first["losses"], "first half")

        # restore by hand onto a 2 x 2 mesh of 4 devices: same values, the new mesh's layout
        mesh4 = sharding.data_fsdp_mesh(data=2, devices=jax.devices()[:4])
        restored = restore_onto(ckpt, mesh4, first)
        assert int(restored["step"]) == INTERRUPT
        for saved, back in zip(jax.tree.leaves((first["params"], first["opt_state"])),
                               jax.tree.leaves((restored["params"], restored["opt_state"]))):
            assert np.array_equal(np.asarray(saved), np.asarray(back))
            assert back.sharding.mesh == mesh4
        split = check_params_split(restored["params"], mesh4, "restored")
        checked = check_state(restored["opt_state"], restored["params"], "restored")

        # the example resumes from it on 4 devices; the result matches the uninterrupted run
        seen = {}
        resumed = run(["--devices", "4", "--restore", ckpt], step_checker(mesh4, seen))
        assert f"restored step {INTERRUPT}" in resumed["stdout"], resumed["stdout"]
        assert dict(resumed["mesh"].shape) == {"data": 2, "fsdp": 2}
        assert "error" not in seen, seen["error"]
        assert seen["steps"] == STEPS - INTERRUPT and seen["split"] == split
        resumed["losses"] = first["losses"] + resumed["losses"]
        worst = compare_runs(sharded, resumed, "8 then 4 vs 8")
        checked += seen["state"]
        return {"split": split, "state_checked": checked, "worst": worst}


    @record("two_processes")
    def _():
        # two processes of 4 devices each (jax.distributed over localhost) trained the first
        # INTERRUPT steps on one global 2 x 4 mesh and saved a checkpoint together
        status = pathlib.Path(multihost_dir) / "status.txt"
        for _ in range(3200):  # the processes time out after 300 s
            if status.exists():
                break
            time.sleep(0.1)
        assert status.exists() and status.read_text() == "ok", "the two-process run failed"
        with open(multihost_dir + "/process0.txt") as f:
            out = f.read()
        assert "mesh {'data': 2, 'fsdp': 4} over 8 cpu devices" in out, out
        assert len(memory_rows(out)) == 4, out  # a process sees only its own devices
        printed = [float(line.split()[3]) for line in out.splitlines() if line.startswith("step ")]
        assert len(printed) == INTERRUPT, out
        gap = np.abs(np.array(printed) - np.array(first["losses"])).max()
        assert gap <= 5.1e-5, (printed, first["losses"])  # the example prints 4 decimals
        restored = restore_onto(multihost_dir + "/ckpt", example.make_mesh(8), first)
        assert int(restored["step"]) == INTERRUPT
        restored["losses"] = first["losses"]
        worst = compare_runs(first, restored, "2 processes vs 1")
        check_state(restored["opt_state"], restored["params"], "restored from 2 processes")
        return {"worst": worst}


    @record("example_output")
    def _():
        out = sharded["stdout"]
        assert "mesh {'data': 2, 'fsdp': 4} over 8 cpu devices" in out, out
        assert f"step {STEPS:5d}  loss" in out, out
        rows = memory_rows(out)
        assert len(rows) == 8, out  # one memory row per device
        total_p = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(sharded["params"]))
        per_device = [int(r[1].replace(",", "")) for r in rows]
        assert all(total_p / 4 <= b < total_p / 2 for b in per_device), (per_device, total_p)
        one = memory_rows(reference["stdout"])
        assert len(one) == 1 and int(one[0][1].replace(",", "")) == total_p, one
        return {"per_device_params": per_device[0], "total_params": total_p}


    print("RESULT " + json.dumps(results, default=str))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_two_processes(workdir: Path) -> threading.Thread:
    """Starts the example as a command in 2 processes of 4 CPU devices joined by jax.distributed.

    It trains the first 10 of 20 steps on one global 2 x 4 mesh and saves a checkpoint. A thread
    waits for both processes and then writes ``status.txt`` ("ok" or the exit codes), which the
    8-device run checks.
    """
    port = _free_port()
    args = ["--steps", "20", "--stop-after", "10", "--seq-len", "32", "--d-model", "32", "--layers", "1"]
    args += ["--batch-size", "16", "--log-every", "1", "--save", str(workdir / "ckpt")]
    args += ["--coordinator", f"localhost:{port}", "--num-processes", "2"]
    procs, logs = [], []
    for rank in range(2):
        log = open(workdir / f"process{rank}.txt", "w")
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(EXAMPLE), *args, "--process-id", str(rank)],
                env=cpu_devices_env(4),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=EXAMPLE.parents[1],
            )
        )

    def wait() -> None:
        codes: list[int | None] = [None, None]
        try:
            codes = [p.wait(timeout=300) for p in procs]
        except subprocess.TimeoutExpired:
            pass
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for log in logs:
                log.close()
            status = "ok" if codes == [0, 0] else f"exit codes {codes}"
            (workdir / "status.partial").write_text(status)
            (workdir / "status.partial").rename(workdir / "status.txt")  # appears whole

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    return waiter


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    """Runs the 8-device checks once; returns ``{check name: {"checks": ...} or {"error": ...}}``."""
    pytest.importorskip("orbax.checkpoint")
    workdir = tmp_path_factory.mktemp("sharded")
    multihost = workdir / "two_processes"
    multihost.mkdir()
    # one after the other: on a 2-core machine, overlapping the two runs makes both slower
    _start_two_processes(multihost).join(timeout=320)
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(EXAMPLE), str(workdir), str(multihost)],
        env=cpu_devices_env(8),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=EXAMPLE.parents[1],
    )
    for line in run.stdout.splitlines():
        if line.startswith("RESULT "):
            results = json.loads(line[len("RESULT ") :])
            results["two_processes_output"] = "\n".join(
                (multihost / f"process{r}.txt").read_text()[-2000:] for r in range(2)
            )
            return results
    pytest.fail(f"the 8-device run did not finish (exit {run.returncode}):\n{run.stderr[-4000:]}")


def _passed(results, name):
    outcome = results.get(name)
    assert outcome is not None, f"check {name!r} did not run"
    assert "error" not in outcome, outcome.get("error")
    return outcome["checks"]


def test_sharded_training_matches_single_device(sharded_run):
    checks = _passed(sharded_run, "matches_single_device")
    assert set(checks["worst"]) == {"losses", "params", "state"}
    assert all(0 <= ratio <= 1 for ratio in checks["worst"].values()), checks


def test_state_keeps_param_sharding_every_step(sharded_run):
    checks = _passed(sharded_run, "layout_every_step")
    assert checks["steps"] == 20
    assert checks["state"] == 20 * 2 * 22  # m and v of all 22 parameters, every step


def test_state_keeps_param_sharding_after_init(sharded_run):
    # eager, jit and jit with out_shardings: m and v (2 x 22) plus every state leaf vs the plan
    assert _passed(sharded_run, "layout_after_init") >= 3 * 2 * 22


def test_state_shardings_agrees_with_sharding_propagation(sharded_run):
    assert _passed(sharded_run, "state_shardings_presets") >= 5 * 22


def test_checkpoint_restores_onto_a_smaller_mesh(sharded_run):
    checks = _passed(sharded_run, "restore_on_smaller_mesh")
    assert checks["split"] >= 8
    assert all(0 <= ratio <= 1 for ratio in checks["worst"].values()), checks


def test_two_processes_with_jax_distributed_match_one(sharded_run):
    outcome = sharded_run.get("two_processes", {})
    assert "error" not in outcome, f"{outcome.get('error')}\n{sharded_run['two_processes_output']}"
    assert all(0 <= ratio <= 1 for ratio in outcome["checks"]["worst"].values()), outcome


def test_example_prints_per_device_memory(sharded_run):
    checks = _passed(sharded_run, "example_output")
    assert checks["per_device_params"] < checks["total_params"] / 2


# ----------------------------------------------------------------- helpers, in this process


def _abstract_mesh(data: int, fsdp: int) -> AbstractMesh:
    return AbstractMesh((data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 48), min_size=0, max_size=4),
    fsdp=st.sampled_from([1, 2, 3, 4, 8]),
    min_size=st.sampled_from([0, 64, 1024]),
)
def test_fsdp_partition_spec_splits_the_largest_divisible_dimension(shape, fsdp, min_size):
    leaf = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
    spec = sharding.fsdp_partition_spec(leaf, _abstract_mesh(2, fsdp), min_size=min_size)
    divisible = [d for d, n in enumerate(shape) if n % fsdp == 0]
    if fsdp == 1 or math.prod(shape) < min_size or not divisible:
        assert spec == PartitionSpec()
        return
    assert len(spec) == len(shape) and list(spec).count("fsdp") == 1 and set(spec) <= {"fsdp", None}
    chosen = list(spec).index("fsdp")
    assert chosen in divisible
    assert shape[chosen] == max(shape[d] for d in divisible)
    assert chosen == min(d for d in divisible if shape[d] == shape[chosen])


def test_fsdp_partition_spec_examples():
    mesh = _abstract_mesh(2, 4)
    spec = lambda shape, **kw: sharding.fsdp_partition_spec(np.zeros(shape), mesh, **kw)
    assert spec((97, 64)) == PartitionSpec(None, "fsdp")  # vocabulary not divisible by 4
    assert spec((64, 4, 16)) == PartitionSpec("fsdp", None, None)
    assert spec((64, 256)) == PartitionSpec(None, "fsdp")
    assert spec((64,)) == PartitionSpec()  # too small to be worth splitting
    assert spec((64,), min_size=0) == PartitionSpec("fsdp")
    assert spec((63, 65), min_size=0) == PartitionSpec()  # nothing divisible
    assert spec((4, 4), min_size=0, axis="data") == PartitionSpec("data", None)


def test_fsdp_partition_spec_rejects_bad_arguments():
    mesh = _abstract_mesh(2, 4)
    expected = r"axis 'model' is not an axis of the mesh; its axes are \('data', 'fsdp'\)"
    with pytest.raises(ValueError, match=expected):
        sharding.fsdp_partition_spec(np.zeros((8, 8)), mesh, axis="model")
    with pytest.raises(ValueError, match="min_size must be an int >= 0, got -1"):
        sharding.fsdp_partition_spec(np.zeros((8, 8)), mesh, min_size=-1)
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh or jax.sharding.AbstractMesh"):
        sharding.fsdp_partition_spec(np.zeros((8, 8)), {"fsdp": 4})


def test_data_fsdp_mesh_on_one_device_and_its_errors():
    mesh = sharding.data_fsdp_mesh(devices=jax.devices()[:1])
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1}
    assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
    with pytest.raises(ValueError, match="data \\* fsdp = 1 \\* 2 = 2, but there are 1 devices"):
        sharding.data_fsdp_mesh(fsdp=2, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="data=2 does not divide the 1 devices"):
        sharding.data_fsdp_mesh(data=2, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="data must be an int >= 1, got 0"):
        sharding.data_fsdp_mesh(data=0)
    with pytest.raises(ValueError, match="batch axis 'batch' is not an axis of the mesh"):
        sharding.batch_sharding(mesh, ("batch",))


def _one_device_setup():
    mesh = sharding.data_fsdp_mesh(devices=jax.devices()[:1])
    params = {"w": jnp.ones((4, 3), jnp.float32), "b": jnp.zeros((3,), jnp.float32)}
    params, param_sh = sharding.shard_params(params, mesh)
    return mesh, params, param_sh


def test_state_shardings_on_one_device_and_per_device_bytes():
    mesh, params, param_sh = _one_device_setup()
    opt = oc.adamw(1e-3, 0.1, mask=oc.default_decay_mask)
    state_sh = sharding.state_shardings(opt, params, param_sh)
    state = jax.jit(opt.init, out_shardings=state_sh)(params)
    assert jax.tree.structure(state_sh) == jax.tree.structure(state)
    device = jax.devices()[0]
    assert sharding.per_device_bytes(params) == {device: (12 + 3) * 4}
    assert sharding.per_device_bytes(state) == {
        device: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    }
    with pytest.raises(TypeError, match="leaf 'w' is a ndarray, not a jax.Array on a device"):
        sharding.per_device_bytes({"w": np.ones(3)})


def _with_extra_buffer() -> optax.GradientTransformation:
    """A transformation whose state holds an array shaped like no parameter."""
    return optax.GradientTransformation(
        lambda params: {"buffer": jnp.zeros((7, 5))}, lambda updates, state, params=None: (updates, state)
    )


def test_state_shardings_refuses_to_guess_unmatched_leaves():
    mesh, params, param_sh = _one_device_setup()
    expected = r"optimizer state leaf 'buffer' of shape \(7, 5\) matches no parameter"
    with pytest.raises(ValueError, match=expected):
        sharding.state_shardings(_with_extra_buffer(), params, param_sh)
    shardings = sharding.state_shardings(_with_extra_buffer(), params, param_sh, unmatched="replicate")
    assert shardings["buffer"].is_fully_replicated
    with pytest.raises(ValueError, match="unmatched must be 'error' or 'replicate'"):
        sharding.state_shardings(oc.sgd(0.1), params, param_sh, unmatched="fsdp")
    with pytest.raises(ValueError, match="param_shardings must have the params' structure"):
        sharding.state_shardings(oc.sgd(0.1), params, {"w": param_sh["w"]})
    with pytest.raises(TypeError, match="opt must be a gradient transformation"):
        sharding.state_shardings(lambda p: p, params, param_sh)
    with pytest.raises(TypeError, match="param_shardings leaf 'b' must be a NamedSharding"):
        sharding.state_shardings(oc.sgd(0.1), params, {"b": "replicated", "w": param_sh["w"]})
