"""Runs optax's own tests against optim_chain's presets and counts the ones that exercise them.

Usage (from the repository root)::

    python tests/optax_suite/run.py [--min-passed N] [--modules alias,transform,...] [pytest args]

The test modules are the ones optax ships in its wheel, run from where optax is installed;
nothing is copied into this repository. Before any of them is imported, :mod:`shim` replaces
optax's aliases ``adagrad, adam, adamw, amsgrad, nadam, nadamw, rmsprop, sgd`` by functions that
build our presets with optax's arguments and defaults.

The selection: a test counts when, while it runs, it calls one of the rebuilt aliases or
initializes or updates an optimizer one of them built (the sharding tests build theirs when their
module is imported, and hand them to the tests as parameters). A counted test passes when its
outcome is "passed"; failed, errored and skipped counted tests do not pass. Tests that never touch
a rebuilt alias (optax's own transforms, other aliases) are run too but not counted.

Tests that cannot reach a rebuilt alias are left out before they run, to save time (``--all`` runs
them too; they are never counted): absl cases whose ``opt_name`` parameter names another
optimizer, and alias_test's L-BFGS class. This does not change the count.

Exit status: 0 when at least ``--min-passed`` counted tests pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

#: The optax test modules run, by short name (paths inside the installed optax package).
MODULES = {
    "alias": "_src/alias_test.py",
    "transform": "_src/transform_test.py",
    "combine": "_src/combine_test.py",
    "combining": "transforms/_combining_test.py",
    "masking": "transforms/_masking_test.py",
    "float64": "_src/float64_test.py",
    "sharding": "_src/sharding_test.py",
}


#: alias_test's classes for one algorithm that is not rebuilt.
OTHER_ALGORITHMS = ("LBFGSTest",)


def _cannot_exercise(item) -> bool:
    """Whether a test is for another optimizer: an absl case whose ``opt_name`` is not rebuilt, or
    a class of :data:`OTHER_ALGORITHMS`."""
    from shim import REBUILT

    if getattr(item, "cls", None) is not None and item.cls.__name__ in OTHER_ALGORITHMS:
        return True
    params = getattr(getattr(item, "obj", None), "__x_params_repr__", "")
    match = re.search(r"\bopt_name='(\w+)'", params)
    return bool(match) and match.group(1) not in (*REBUILT, "sgd_mom")


class CountExercised:
    """A pytest plugin: records, per test, whether it exercised a rebuilt alias, and its outcome."""

    def __init__(self, run_all: bool = False) -> None:
        self.run_all = run_all
        self.outcomes: dict[str, str] = {}
        self.counted: set[str] = set()
        self._calls_before = 0

    def pytest_runtest_logstart(self, nodeid, location):
        del location
        from shim import EXERCISED

        self._calls_before = EXERCISED.calls
        self.outcomes[nodeid] = "passed"

    def pytest_runtest_logreport(self, report):
        from shim import EXERCISED

        if EXERCISED.calls > self._calls_before:
            self.counted.add(report.nodeid)
        if report.failed:
            self.outcomes[report.nodeid] = "failed"
        elif report.skipped and self.outcomes.get(report.nodeid) == "passed":
            self.outcomes[report.nodeid] = "skipped"

    def pytest_collection_modifyitems(self, config, items):
        """Leaves out, unless ``--all``, the tests that cannot reach a rebuilt alias (they only cost time)."""
        if self.run_all:
            return
        kept, left_out = [], []
        for item in items:
            (left_out if _cannot_exercise(item) else kept).append(item)
        items[:] = kept
        config.hook.pytest_deselected(items=left_out)

    def summary(self) -> tuple[int, int, list[str], dict[str, tuple[int, int]]]:
        passed = sorted(n for n in self.counted if self.outcomes.get(n) == "passed")
        not_passed = sorted(n for n in self.counted if self.outcomes.get(n) != "passed")
        per_module: dict[str, tuple[int, int]] = {}
        for node in self.counted:
            module = node.split("::")[0].rsplit("/", 1)[-1]
            ok, total = per_module.get(module, (0, 0))
            per_module[module] = (ok + (self.outcomes.get(node) == "passed"), total + 1)
        return len(passed), len(self.counted), not_passed, per_module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-passed", type=int, default=0, help="fail below this many counted passes")
    parser.add_argument("--modules", default=",".join(MODULES), help="comma-separated short names")
    parser.add_argument("--all", action="store_true", help="also run the tests for other optimizers")
    parser.add_argument("--list", action="store_true", help="print every counted test and its outcome")
    args, pytest_args = parser.parse_known_args(argv)

    # the sharding tests need eight host devices, set before JAX starts its backend
    flag = "--xla_force_host_platform_device_count=8"
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's optim_chain first

    import optax
    import pytest
    import shim

    shim.install()
    root = Path(optax.__file__).parent
    paths = [str(root / MODULES.get(name, name)) for name in args.modules.split(",")]
    plugin = CountExercised(run_all=args.all)
    pytest.main(
        ["-q", "-p", "no:cacheprovider", "--rootdir", str(root), "-c", os.devnull, *pytest_args, *paths],
        plugins=[plugin],
    )
    passed, total, not_passed, per_module = plugin.summary()
    for module, (ok, n) in sorted(per_module.items()):
        print(f"  {module}: {ok} of {n}")
    listed = sorted(plugin.counted) if args.list else not_passed
    for node in listed:
        print(f"  {plugin.outcomes.get(node)}: {node}")
    print(f"optax suite against optim_chain presets: {passed} of {total} counted tests pass")
    if passed < args.min_passed:
        print(f"FAILED: fewer than {args.min_passed} counted tests pass")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
