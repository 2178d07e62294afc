"""The benchmark's own pieces: size parsing, the transformer-like tree, and a tiny end-to-end run.

Nothing here asserts a time: the run uses a few thousand parameters and one repeat only to
check that every case runs and that the report has what BENCHMARKS.md shows.
"""

import argparse
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import cpu_devices_env

from optim_chain.lab import bench


@pytest.mark.parametrize(
    ("text", "size"), [("1M", 10**6), ("50M", 5 * 10**7), ("250k", 250_000), ("1e6", 10**6), ("1234", 1234)]
)
def test_parse_size(text, size):
    assert bench.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "1.5", "-2M", "abc"])
def test_parse_size_refuses_bad_sizes(text):
    with pytest.raises(argparse.ArgumentTypeError):
        bench.parse_size(text)


@pytest.mark.parametrize("size", [10**6, 2 * 10**7, 5 * 10**7])
@pytest.mark.parametrize(("layout", "count"), [("tree", 160), ("deep", 1024)])
def test_transformer_trees_have_their_leaf_count_and_the_requested_size(size, layout, count):
    shapes = bench.transformer_shapes(size, layers=bench.LAYERS[layout])
    leaves = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple))
    total = sum(int(np.prod(s)) for s in leaves)
    width = shapes["ln_f"]["scale"][0]
    assert len(leaves) == count
    assert size - width < total <= size
    if layout == "deep":  # the many-leaves case: two thirds of the leaves are vectors
        assert sum(len(s) == 1 for s in leaves) == 2 + 8 * 85


def test_bad_arguments_exit_with_a_message(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--optimizers", "lion"])
    assert "choose from adamw, adam_l2, adam, sgd; got 'lion'" in capsys.readouterr().err


def test_a_model_layout_has_its_own_size(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--layouts", "leaf,hf-bert", "--sizes", "1M"])
    assert "--sizes cannot be given with hf-bert: a model layout has its own size" in capsys.readouterr().err


def test_floor_bytes_per_optimizer():
    # Adam: p, g, m, v read and p, m, v written; SGD with momentum: p, g, m read and p, m written
    assert bench.floor_bytes("float32") == bench.floor_bytes("float32", "adam_l2") == 28
    assert bench.floor_bytes("float32", "sgd") == 20 and bench.floor_bytes("bfloat16", "sgd") == 14


def test_tiny_run_writes_json_and_markdown(tmp_path):
    argv = ["--sizes", "3k", "--optimizers", "adam_l2", "--repeats", "1", "--warmup", "0"]
    argv += ["--compiles", "1", "--no-torch", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    cases = {(r["layout"], r["optimizer"], r["impl"], r["donated"]) for r in report["results"]}
    for layout in ("leaf", "tree"):
        for impl in ("optax", "optim_chain"):
            assert {(layout, "adam_l2", impl, True), (layout, "adam_l2", impl, False)} <= cases
    tree = next(r for r in report["results"] if r["layout"] == "tree")
    assert tree["leaves"] >= 150 and tree["x_one_leaf"] > 0
    for r in report["results"]:
        assert r["ms"] > 0 and r["floor_ms"] > 0 and r["array_loops"] >= 3
        assert r["x_optax"] == pytest.approx(
            r["ms"]
            / next(
                o["ms"]
                for o in report["results"]
                if (o["layout"], o["optimizer"], o["impl"], o["donated"])
                == (r["layout"], r["optimizer"], "optax", r["donated"])
            )
        )
    table = (tmp_path / "bench.md").read_text()
    assert "| size | layout | optimizer |" in table and "Key ratios at 3k parameters" in table


def test_bfloat16_params_run_with_float32_moments(tmp_path):
    argv = ["--sizes", "3k", "--optimizers", "adamw", "--layouts", "leaf", "--donate", "yes"]
    argv += ["--repeats", "1", "--warmup", "0", "--compiles", "1", "--dtype", "bfloat16"]
    argv += ["--out", str(tmp_path)]
    assert bench.main(argv) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["settings"]["dtype"] == "bfloat16" and report["settings"]["bytes_floor"] == 22
    impls = {r["impl"] for r in report["results"]}
    assert {"optax", "optim_chain"} <= impls
    # the HLO's bytes: ours reads p, g (2 bytes each) and both float32 moments in each of its three
    # loops as in float32; optax keeps its second moment in bfloat16
    hlo = {r["impl"]: r["hlo_bytes_per_param"] for r in report["results"] if "hlo_bytes_per_param" in r}
    assert hlo["optim_chain"] > hlo["optax"]
    assert "| params | bfloat16, moments float32 |" in (tmp_path / "bench.md").read_text()
    params, _ = bench.make_params(3000, "leaf", jax.devices("cpu")[0], "bfloat16")
    state = bench.optim_chain_optimizer("adamw", dtype="bfloat16").init(params)
    assert {x.dtype for x in jax.tree.leaves(state) if x.ndim} == {np.dtype("float32")}


def test_single_pass_run_turns_on_multi_output_fusion(tmp_path):
    # a child process: the compiler option only takes effect before jax starts its backend
    argv = ["--sizes", "3k", "--optimizers", "adamw", "--layouts", "leaf", "--donate", "yes"]
    argv += ["--repeats", "1", "--warmup", "0", "--compiles", "1", "--no-torch", "--single-pass"]
    command = [sys.executable, "-m", "optim_chain.lab.bench", *argv, "--out", str(tmp_path)]
    done = subprocess.run(command, env=cpu_devices_env(1), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert "xla_cpu_use_multi_output_fusion" in report["machine"]["xla_flags"]
    loops = {r["impl"]: r["array_loops"] for r in report["results"]}
    assert loops == {"optax": 2, "optim_chain": 2, "optim_chain single_pass": 1}
    assert "| leaf | adamw | optim_chain single_pass |" in (tmp_path / "bench.md").read_text()
