"""The ``optim-chain`` command.

Subcommands (each takes ``--config FILE`` and repeated ``--set key.path=value``)::

    optim-chain compare      # each optimizer at its tuned cell in one regime, 12 data draws, 95% intervals
    optim-chain sweep        # the paper's protocol in one regime: two-stage grids tuned on validation
    optim-chain map          # the sweep in every regime (models x amounts of data): where claims hold
    optim-chain timescale    # Wang & Aitchison: the best AdamW timescale as the data set grows
    optim-chain masks        # which parameters of the experiment's model each optimizer decays
    optim-chain show --config configs/presets/adamw.yaml   # print an optimizer's chain
    optim-chain bench ...    # optimizer-step benchmarks (optim_chain.lab.bench)

A mistake in a config file is reported on one line (file, key, valid choices) with exit status 2.
A ``--config`` path that does not exist is looked up among the configs shipped with the package
(``configs/digits_compare.yaml`` works from any folder; see
:func:`optim_chain.lab.config.find_config`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optim_chain.lab.config import Experiment

# JAX, Flax and the configs load only once a command runs, so that --help answers at once.

#: What the ``lab`` extra installs, by import name: without one of them the command stops at once.
LAB_MODULES = ("yaml", "sklearn", "matplotlib", "tqdm", "scipy", "mnist1d")


def missing_lab_modules() -> list[str]:
    """The modules of the ``lab`` extra that cannot be found (none are imported)."""
    return [name for name in LAB_MODULES if importlib.util.find_spec(name) is None]


def _experiment_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument(
        "--config",
        help=f"a {kind} YAML file, or a packaged one's name (default: configs/mnist1d_{kind}.yaml)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.steps=500 (repeatable)",
    )
    parser.add_argument("--name", help="the run's name: results go to <out>/<name>/")
    parser.add_argument(
        "--out", default="runs", help="the parent directory of run directories (default: runs)"
    )
    if kind != "timescale":  # there, study.epochs and the training-set size set the steps
        parser.add_argument("--steps", type=int, help="training steps per run")
    parser.add_argument("--seeds", type=int, help="seeds per optimizer (compare) or per grid cell")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optim-chain",
        description="Adam+L2 vs AdamW, and learning rate x weight decay, on MNIST-1D and other small data.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compare = commands.add_parser(
        "compare", help="train each optimizer at its tuned point over several seeds and compare"
    )
    _experiment_arguments(compare, "compare")
    sweep = commands.add_parser("sweep", help="learning-rate x weight-decay heatmaps (the paper's Figure 2)")
    _experiment_arguments(sweep, "sweep")
    sweep.add_argument("--baseline-runs", type=int, help="runs per optimizer timed one at a time (0: none)")
    regime_map = commands.add_parser(
        "map", help="the sweep in every regime of a map: where each of the paper's claims holds"
    )
    regime_map.add_argument("--config", help="a map YAML file (default: configs/mnist1d_map.yaml)")
    regime_map.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override a value, e.g. --set sweep.data.seed=7 (repeatable)")
    regime_map.add_argument("--out", default="runs", help="the parent directory of run directories")
    regime_map.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    timescale = commands.add_parser(
        "timescale", help="does the best AdamW timescale in epochs stay put as the data grows?"
    )
    _experiment_arguments(timescale, "timescale")
    masks = commands.add_parser("masks", help="show which parameters each optimizer of an experiment decays")
    masks.add_argument("--config", help="a compare or sweep YAML file (default: the built-in compare)")
    masks.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show = commands.add_parser(
        "show", help="print the chain of an optimizer file or of an experiment's optimizers"
    )
    show.add_argument("--config", required=True, help="a YAML file with 'optimizer:' or an experiment")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    commands.add_parser(
        "bench", help="optimizer-step benchmarks; arguments go to optim_chain.lab.bench", add_help=False
    )
    return parser


def _shortcuts(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    if getattr(args, "name", None):
        overrides.append(f"name={args.name}")
    if getattr(args, "steps", None) is not None:
        overrides.append(f"training.steps={args.steps}")
    if getattr(args, "seeds", None) is not None:
        overrides.append(f"training.seeds={args.seeds}")
    if getattr(args, "baseline_runs", None) is not None:
        overrides.append(f"baseline.runs={args.baseline_runs}")
    return overrides


def _kind_of(path: str) -> str:
    from optim_chain.lab import config

    raw = config.read_yaml(config.find_config(path))
    if "optimizer" in raw:
        return "optimizer"
    optimizers = raw.get("optimizers") or {}
    has_grid = isinstance(optimizers, dict) and any(
        isinstance(o, dict) and "grid" in o for o in optimizers.values()
    )
    if "study" in raw:
        return "timescale"
    return "sweep" if has_grid or "pairs" in raw or "baseline" in raw else "compare"


def _experiment(path: str | None, kind: str, overrides: Sequence[str]) -> Experiment:
    """The checked experiment: a mistake, a value a constructor refuses included, stops here.

    :func:`~optim_chain.lab.config.load_experiment` checks keys, types and choices, then
    :func:`~optim_chain.lab.build.check` builds each optimizer once, before any data is loaded,
    ``--out`` is looked at or a run trains.
    """
    from optim_chain.lab import build, config

    experiment = config.load_experiment(path, kind, overrides)
    build.check(experiment)
    return experiment


def _show(args: argparse.Namespace) -> int:
    from optim_chain.lab import build

    kind = _kind_of(args.config)
    if kind == "optimizer":
        print(build.load_optimizer(args.config, args.overrides))
        return 0
    experiment = _experiment(args.config, kind, args.overrides)
    for label, spec in experiment.optimizers.items():
        transform = build.optimizer(spec, build.grid_point(experiment, label))
        print(f"{label} =\n{transform}\n")
    return 0


def _masks(args: argparse.Namespace) -> int:
    import jax

    from optim_chain import masks
    from optim_chain.lab import build, config, diagnostics

    kind = _kind_of(args.config) if args.config else "compare"
    if kind == "optimizer":
        raise config.Where(args.config).error(
            "holds one optimizer, not an experiment: masks needs a compare or sweep file (its model "
            f"defines the parameters); for this optimizer's chain run optim-chain show --config {args.config}"
        )
    experiment = _experiment(args.config, kind, args.overrides)
    dataset = build.load_data(experiment)
    model = build.model(experiment, dataset)
    params = jax.eval_shape(model.init, jax.random.key(0), dataset.x_train[:1])["params"]
    for label, spec in experiment.optimizers.items():
        # a sweep's largest decay, so that a zero at the grid's start cannot hide what is decayed
        transform = build.optimizer(spec, build.grid_point(experiment, label, decay_index=-1))
        decays = jax.tree.unflatten(jax.tree.structure(params), diagnostics.decayed_flags(transform, params))
        print(f"{label}:\n{masks.describe_mask(params, decays, warn=False)}\n")
    return 0


def _bench(argv: list[str]) -> int:
    try:
        bench = importlib.import_module("optim_chain.lab.bench")
    except ModuleNotFoundError as error:
        if error.name != "optim_chain.lab.bench":
            raise
        print("optim-chain bench: the module optim_chain.lab.bench is not installed", file=sys.stderr)
        return 2
    return int(bench.main(argv) or 0)


def _writable(out: str) -> str | None:
    """Why results cannot be written under ``out``, or ``None`` when they can."""
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        return f"cannot write results to --out {out!r}: {error.strerror or error}"
    return None


def _run(args: argparse.Namespace) -> int:
    from optim_chain.lab import config

    try:
        if args.command == "show":
            return _show(args)
        if args.command == "masks":
            return _masks(args)
        if args.command == "map":
            return _map(args)
        experiment = _experiment(args.config, args.command, _shortcuts(args))
        problem = _writable(args.out)
        if problem:
            print(f"optim-chain {args.command}: {problem}", file=sys.stderr)
            return 2
        from optim_chain.lab import experiments

        if args.command == "timescale":
            from optim_chain.lab.timescale_study import timescale as run
        else:
            run = experiments.compare if args.command == "compare" else experiments.sweep
        run(experiment, out_dir=args.out, progress=not args.no_progress)
        return 0
    except config.ConfigError as error:
        print(f"optim-chain {args.command}: {error}", file=sys.stderr)
        return 2


def _map(args: argparse.Namespace) -> int:
    from optim_chain.lab import build, config, regime_map

    path = args.config or str(config.MAP_FILE)
    name, regimes = config.load_map(path, args.overrides)
    for regime in regimes:
        build.check(regime.sweep)
    problem = _writable(args.out)
    if problem:
        print(f"optim-chain map: {problem}", file=sys.stderr)
        return 2
    regime_map.run_map(name, regimes, out_dir=args.out, progress=not args.no_progress)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    missing = missing_lab_modules()
    if missing:
        print(
            f"optim-chain needs the lab extra (missing: {', '.join(missing)}): "
            'pip install "optim_chain[lab]"',
            file=sys.stderr,
        )
        return 1
    if argv and argv[0] == "bench":
        return _bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        status = _run(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows at the flush
        return status
    except BrokenPipeError:
        # the reader went away (optim-chain show ... | head): stop quietly, as other tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
