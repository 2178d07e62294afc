"""Two experiments behind the command line: ``compare`` and ``sweep``
(:mod:`optim_chain.lab.regime_map` runs the sweep in several regimes,
:mod:`optim_chain.lab.timescale_study` is the third).

Run ``i`` of a group has seed ``first_seed + i`` and, for generated data (MNIST-1D), its own
data set at ``data.seed + first_seed + i`` (:func:`optim_chain.lab.build.load_draws`); every
optimizer sees the same draws, so differences are paired and intervals cover the data and the
initialisation together.

* :func:`compare` trains one model with several optimizers (by default every optimizer at its
  tuned cell in one regime of the map) over several draws, all draws of an optimizer as one
  vmapped program, and writes ``runs/<name>/``: ``summary.md``, ``metrics.json`` (95% intervals
  and the paired differences of :data:`PAIRS`), ``curves.png`` and ``effective_decay.png``.
* :func:`sweep` trains a coarse learning-rate x weight-decay grid per optimizer as one vmapped
  program, then a fine stage around its best cell, chooses the tuned cell by the rule of
  :mod:`optim_chain.lab.tuning` on the evaluation split (validation, in the default), tests it
  on new draws, draws the heatmaps side by side (Loshchilov & Hutter, Figure 2), computes
  separability numbers over the cells that trained
  (:func:`optim_chain.lab.diagnostics.separability`) with bootstrap intervals and a verdict per
  claim of the paper, and can time grid cells trained one at a time. It writes ``summary.md``,
  ``metrics.json`` and ``heatmaps.png``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from optim_chain.lab import build, diagnostics, plots, reports, statistics, tuning
from optim_chain.lab.config import Experiment, OptimizerSpec, numbers_in_text
from optim_chain.lab.training import Trainer, unstack


def _mean_std(values: np.ndarray, scale: float = 1.0, digits: int = 3) -> str:
    values = np.asarray(values, np.float64) * scale
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


# ----------------------------------------------------------------------------------- compare


def compare(
    experiment: Experiment,
    out_dir: str | Path = "runs",
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs a ``compare`` experiment and writes ``<out_dir>/<name>/``; returns the metrics.

    Args:
      experiment: from :func:`optim_chain.lab.config.load_experiment` with ``kind="compare"``,
        checked by :func:`optim_chain.lab.build.check`.
      out_dir: the parent of the run directory.
      progress: show a progress bar on stderr.
      echo: where the result table is printed.
    """
    start = time.perf_counter()
    training = experiment.training
    seeds = training.first_seed + np.arange(training.seeds)
    draws = build.load_draws(experiment, seeds)
    dataset = draws[0] if draws else build.load_data(experiment)
    model = build.model(experiment, dataset)
    if experiment.tuned is not None:
        echo(
            f"regime {experiment.tuned['regime']}: {experiment.tuned['description']}; tuned cells from "
            f"{experiment.tuned['file']}"
        )
    bar = reports.progress_bar(training.steps * len(experiment.optimizers), progress, "compare")
    results: dict[str, Any] = {}
    curves: dict[str, dict[str, np.ndarray]] = {}
    coupled: dict[str, np.ndarray] = {}
    single: dict[str, float] = {}
    for label, spec in experiment.optimizers.items():
        bar.set_description(f"compare: {label}")
        hyperparams = _as_arrays(spec, len(seeds))
        optimizer = build.run_optimizer(spec, training)
        trainer = Trainer(model, dataset, optimizer, training.batch_size, training.eval_every)
        run = trainer.run(hyperparams, seeds, training.steps, progress=bar.update, datasets=draws)
        transform = build.scheduled_optimizer(spec, training.schedule, training.steps)
        params0 = unstack(run.final.params, 0)
        decayed, total = diagnostics.decayed_parameters(transform, params0)
        norms = [diagnostics.weight_norm(unstack(run.final.params, i)) for i in range(len(seeds))]
        peak = 0 if training.schedule == "cosine" else None  # a cosine decays nothing at its end
        decay = diagnostics.effective_decay(transform, unstack(run.final.opt_state, 0), params0, peak)
        decay_summary = None
        if decay is not None:
            values = decay.values
            decay_summary = {
                "kind": decay.kind,
                "quantiles": dict(zip(("p05", "p50", "p95"), np.quantile(values, [0.05, 0.5, 0.95]))),
                "min": values.min(),
                "max": values.max(),
            }
            if decay.kind == "coupled":
                coupled[label] = values
            else:
                single[label] = float(values[0])
        curves[label] = {
            "step": run.steps,
            "train_loss": run.train_loss,
            "test_loss": run.test_loss,
            "test_accuracy": run.test_accuracy,
        }
        results[label] = {
            "chain": str(transform),
            "test_accuracy": run.test_accuracy[:, -1],
            "test_loss": run.test_loss[:, -1],
            "weight_norm": norms,
            "decayed_parameters": decayed,
            "total_parameters": total,
            "effective_decay": decay_summary,
            "seconds": run.seconds,
            "curves": curves[label],
        }
    bar.close()
    path = reports.output_dir(out_dir, experiment.name)
    plots.training_curves(path / "curves.png", curves)
    if coupled or single:
        when = "peak learning rate, vhat at the end" if training.schedule == "cosine" else "end of training"
        title = f"effective weight decay of each decayed weight ({when})"
        plots.effective_decay(path / "effective_decay.png", coupled, single, title)
    wall = time.perf_counter() - start
    summary = _intervals(results, len(seeds) if draws else 0)
    decayed = experiment.tuned.get("best_decayed") if experiment.tuned else None
    differences = paired_differences({k: r["test_accuracy"] for k, r in results.items()}, decayed)
    table = _compare_table(results, summary, differences)
    metrics = {
        "kind": "compare",
        "experiment": reports.describe(experiment),
        "environment": reports.environment(),
        "wall_seconds": wall,
        "seeds": seeds,
        "data_draws": len(seeds) if draws else 0,
        "data_seeds": [build.data_seed(experiment, s) for s in seeds] if draws else None,
        "regime": experiment.tuned,
        "summary": summary,
        "paired_differences": differences,
        "optimizers": results,
    }
    reports.write_json(path / "metrics.json", metrics)
    (path / "summary.md").write_text(_compare_summary(experiment, results, table, wall, path))
    echo(table)
    echo(
        f"\nwrote {path}/: summary.md, metrics.json, curves.png"
        + (", effective_decay.png" if coupled or single else "")
    )
    echo(
        f"wall time {wall:.1f} s ({len(seeds)} seeds x {len(results)} optimizers, "
        f"{training.steps} steps each)"
    )
    return metrics


def _intervals(results: dict[str, Any], draws: int) -> dict[str, Any]:
    """95% intervals over runs (seeds and data draws) of each optimizer's final test accuracy
    and loss."""
    summary: dict[str, Any] = {}
    for label, r in results.items():
        if len(r["test_accuracy"]) < 2:
            continue
        summary[label] = {
            "test_accuracy": statistics.mean_interval(r["test_accuracy"]).as_dict(),
            "test_loss": statistics.mean_interval(r["test_loss"]).as_dict()
            if np.all(np.isfinite(r["test_loss"]))
            else None,
            "data_draws": draws,
        }
    return summary


#: The preset arguments that runs receive as arrays, in compare as in the sweep.
PASSED_IN = ("learning_rate", "weight_decay")


def _as_arrays(spec: OptimizerSpec, runs: int) -> dict[str, np.ndarray]:
    """A preset's numeric learning rate and weight decay, one float32 entry per run.

    Compare hands them to the compiled program as arguments (see
    :func:`optim_chain.lab.build.run_optimizer`), as the sweep does with its grid,
    rather than folding them in as constants: the two programs then round alike, and a compare
    at a sweep's tuned cell on the sweep's test seeds repeats the sweep's test runs exactly.
    """
    if "preset" not in spec.spec:
        return {}
    values = {key: numbers_in_text(spec.spec[key]) for key in PASSED_IN if key in spec.spec}
    return {
        key: np.full(runs, value, np.float32)
        for key, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _ci_text(interval: dict[str, Any] | None, scale: float = 100.0, digits: int = 2) -> str:
    if interval is None:
        return "n/a"
    low, high = interval["ci95"]
    return f"[{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def _compare_table(results: dict[str, Any], summary: dict[str, Any], differences: dict[str, Any]) -> str:
    rows = []
    for label, r in results.items():
        rows.append(
            [
                label,
                _mean_std(r["test_accuracy"], 100, 2) + " %",
                _mean_std(r["test_loss"], 1, 4),
                _mean_std(r["weight_norm"], 1, 2),
                f"{r['decayed_parameters']:,} of {r['total_parameters']:,}",
                _ci_text(summary.get(label, {}).get("test_accuracy")),
            ]
        )
    header = ["optimizer", "test accuracy", "test loss", "weight norm", "decayed params", "accuracy 95% CI"]
    lines = [reports.markdown_table(header, rows)]
    if differences:
        lines += [
            "",
            "Paired differences in test accuracy (same seeds and data draws):",
            "",
            differences_table(differences),
        ]
    return "\n".join(lines)


def _chain_listing(title: str, results: dict[str, Any]) -> list[str]:
    """A markdown section that prints every optimizer's chain."""
    lines = [f"## {title}", ""]
    for label, r in results.items():
        lines += [f"**{label}**", "", "```", r["chain"], "```", ""]
    return lines


def _compare_summary(
    experiment: Experiment, results: dict[str, Any], table: str, wall: float, path: Path
) -> str:
    t = experiment.training
    lines = [
        reports.title("compare", experiment.name),
        "",
        f"Config: `{experiment.source}`. Data: {experiment.data}. Model: {experiment.model}.",
        f"{t.steps} steps of batch {t.batch_size}, seeds {t.first_seed}..{t.first_seed + t.seeds - 1} "
        "(each seed: the same initialisation, batch order and, for generated data, data draw at "
        f"data.seed + seed, for every optimizer). Wall time {wall:.1f} s.",
        "",
        *(
            [
                f"Regime `{experiment.tuned['regime']}` ({experiment.tuned['description']}); tuned cells "
                f"read from `{experiment.tuned['file']}`.",
                "",
            ]
            if experiment.tuned
            else []
        ),
        "Mean ± standard deviation over seeds, at the end of training. *Weight norm* is the L2 norm of",
        "the kernels and embeddings (the leaves the default mask decays), for every optimizer alike;",
        "*decayed params* counts the parameters this optimizer's weight decay acts on.",
        "",
        table,
        "",
        "## Effective weight decay per step (seed 0; schedules at their peak under a cosine)",
        "",
    ]
    for label, r in results.items():
        d = r["effective_decay"]
        if d is None:
            lines.append(f"- {label}: no weight decay")
        elif d["kind"] == "coupled":
            q = d["quantiles"]
            lines.append(
                f"- {label}: lr*lambda/(sqrt(vhat)+eps) differs per weight: 5% {q['p05']:.2e}, "
                f"median {q['p50']:.2e}, 95% {q['p95']:.2e} "
                f"(x{q['p95'] / max(q['p05'], 1e-300):.0f} between them)"
            )
        else:
            lines.append(f"- {label}: {d['min']:.2e} for every decayed weight ({d['kind']})")
    lines += ["", "![training curves](curves.png)", ""]
    if (path / "effective_decay.png").exists():
        lines += ["![effective decay](effective_decay.png)", ""]
    lines += _chain_listing("Chains", results)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- sweep


#: Seeds of the runs at the tuned cells start here: none of them (and none of their data draws)
#: was used for tuning.
FINAL_SEED_OFFSET = 1000


def sweep(
    experiment: Experiment,
    out_dir: str | Path = "runs",
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs a ``sweep`` experiment and writes ``<out_dir>/<name>/``; returns the metrics.

    For each optimizer: its coarse grid (``learning rates x weight decays x tuning draws``)
    trains as one ``jax.jit(jax.vmap(...))`` program, then (``refine: true``) the fine stage
    around the best coarse cell (:mod:`optim_chain.lab.tuning`), and the tuned cell, chosen by
    the stability rule over both stages, trains on ``final_seeds`` new draws evaluated once on
    the test split. Tuning run ``i`` uses seed ``first_seed + i`` and data seed ``data.seed +
    first_seed + i``; final run ``j`` seed and data seed ``1000`` higher; every optimizer sees
    the same draws. ``baseline_runs`` coarse cells per optimizer are also timed one at a time.
    """
    start = time.perf_counter()
    training = experiment.training
    tuning_seeds = training.first_seed + np.arange(training.seeds)
    final_seeds = training.first_seed + FINAL_SEED_OFFSET + np.arange(training.final_seeds)
    tuning_data = build.load_draws(experiment, tuning_seeds)
    dataset = tuning_data[0] if tuning_data else build.load_data(experiment)
    model = build.model(experiment, dataset)
    worst = 1.0 - 1.0 / dataset.num_classes  # the error of a uniform guess
    bar = reports.progress_bar(_sweep_steps(experiment), progress, experiment.name)
    results: dict[str, Any] = {}
    panels: dict[str, dict[str, Any]] = {}
    timing: dict[str, Any] = {}
    for label, spec in experiment.optimizers.items():
        grid = experiment.grids[label]
        lrs, wds = grid.learning_rate, grid.weight_decay
        trainer = Trainer(
            model, dataset, build.run_optimizer(spec, training), training.batch_size, training.eval_every
        )

        def train(
            cells: list[tuple[float, float]], stage: str, trainer: Trainer = trainer, label: str = label
        ):
            bar.set_description(
                f"{experiment.name}: {label}, {stage} ({len(cells) * len(tuning_seeds)} runs)"
            )
            return _train_cells(trainer, cells, tuning_seeds, tuning_data, training.steps, bar.update)

        started = time.perf_counter()
        evaluated = train([(lr, wd) for lr in lrs for wd in wds], "coarse grid")
        tuned, rule, allowed = _tuned(evaluated)
        if experiment.refine and tuned is not None:
            fine = [c for c in tuning.fine_cells(lrs, wds, tuned) if c not in evaluated]
            if fine:
                evaluated.update(train(fine, "fine grid"))
            tuned, rule, allowed = _tuned(evaluated)
        tuned = tuned or (lrs[0], wds[0])
        result, panels[label] = _grid_result(
            label, spec, experiment, evaluated, (tuned, rule, allowed), worst
        )
        result["tuning_seconds"] = time.perf_counter() - started
        if training.final_seeds:
            bar.set_description(f"{experiment.name}: {label} at its tuned cell, on the test split")
            result["final"] = _final_test(experiment, model, dataset, spec, tuned, final_seeds, bar.update)
        results[label] = result
        timing[label] = {
            "vmapped_seconds": result["tuning_seconds"],
            "runs": len(evaluated) * len(tuning_seeds),
        }
        if experiment.baseline_runs:
            bar.set_description(f"{experiment.name}: {label} one run at a time")
            timing[label].update(
                _sequential_timing(
                    trainer, lrs, wds, tuning_seeds, tuning_data, experiment.baseline_runs, training.steps
                )
            )
    bar.close()
    path = reports.output_dir(out_dir, experiment.name)
    rows = [[panels[a], panels[b]] for a, b in experiment.pairs]
    paired = {label for pair in experiment.pairs for label in pair}
    rows += [[panels[label]] for label in panels if label not in paired]
    split = "validation" if experiment.data.get("evaluation_split") == "validation" else "test"
    plots.heatmaps(path / "heatmaps.png", rows, f"{split} error", worst)
    wall = time.perf_counter() - start
    speed = _speedup(timing)
    finals = {label: r["final"] for label, r in results.items() if "final" in r}
    summary = _intervals(finals, len(final_seeds) if tuning_data else 0)
    accuracies = {label: f["test_accuracy"] for label, f in finals.items()}
    differences = paired_differences(accuracies, best_decayed(results))
    metrics = {
        "kind": "sweep",
        "experiment": reports.describe(experiment),
        "environment": reports.environment(),
        "wall_seconds": wall,
        "metric": f"final {split} error, mean over tuning draws",
        "tuning_rule": tuning.RULE,
        "data_draws": len(final_seeds) if tuning_data else 0,
        "summary": summary,
        "paired_differences": differences,
        "optimizers": results,
        "timing": {"per_optimizer": timing, **speed},
    }
    metrics["claims"] = _claims(results, worst)
    reports.write_json(path / "metrics.json", metrics)
    table = _sweep_table(results, split)
    timing_text = _timing_text(speed)
    (path / "summary.md").write_text(
        _sweep_summary(experiment, results, table, timing_text, wall, metrics, split)
    )
    echo(table)
    if differences:
        echo("\n" + differences_table(differences))
    if timing_text:
        echo("\n" + timing_text)
    echo(f"\nwrote {path}/: summary.md, metrics.json, heatmaps.png")
    echo(f"wall time {wall:.1f} s")
    return metrics


def _sweep_steps(experiment: Experiment) -> int:
    """Training steps of single runs in the whole sweep (the progress bar's total)."""
    training = experiment.training
    cells = 0
    for grid in experiment.grids.values():
        cells += len(grid.learning_rate) * len(grid.weight_decay)
        if experiment.refine:
            lr_best, wd_best = grid.learning_rate[0], grid.weight_decay[-1]
            cells += (
                len(tuning.refine(grid.learning_rate, lr_best))
                * len(tuning.refine(grid.weight_decay, wd_best))
                - 1
            )
    return (cells * training.seeds + len(experiment.grids) * training.final_seeds) * training.steps


def _train_cells(
    trainer: Trainer,
    cells: list[tuple[float, float]],
    seeds: np.ndarray,
    datasets: list[Any] | None,
    steps: int,
    progress: Callable[[int], None],
) -> dict[tuple[float, float], dict[str, np.ndarray]]:
    """Trains every cell once per tuning seed (and draw) as one program; per cell its runs'
    final evaluation error and loss, and which runs diverged."""
    runs = len(cells) * len(seeds)
    hyperparams = {
        "learning_rate": np.repeat([c[0] for c in cells], len(seeds)).astype(np.float32),
        "weight_decay": np.repeat([c[1] for c in cells], len(seeds)).astype(np.float32),
    }
    run = trainer.run(
        hyperparams,
        np.tile(seeds, len(cells)),
        steps,
        progress=lambda n: progress(n * runs),
        datasets=None if datasets is None else list(datasets) * len(cells),
    )
    loss = run.test_loss[:, -1]
    error = 1.0 - run.test_accuracy[:, -1]
    bad = tuning.diverged(run.train_loss, loss, run.test_accuracy[:, -1], trainer.dataset.num_classes)
    shape = (len(cells), len(seeds))
    error, loss, bad = error.reshape(shape), loss.reshape(shape), bad.reshape(shape)
    return {cell: {"error": error[k], "loss": loss[k], "diverged": bad[k]} for k, cell in enumerate(cells)}


def _tuned(
    evaluated: dict[tuple[float, float], dict[str, np.ndarray]],
) -> tuple[tuple[float, float] | None, str, np.ndarray]:
    """The tuned cell under the stability rule, which part of the rule chose it, and which of
    ``evaluated``'s cells (in its order) the rule allows."""
    cells = list(evaluated)
    scores = np.array([evaluated[c]["error"].mean() for c in cells])
    stable = np.array([not evaluated[c]["diverged"].any() for c in cells])
    allowed = tuning.may_choose(cells, stable)
    index = tuning.choose(scores, allowed)
    if index is not None:
        return cells[index], "stable, with a stable larger learning rate beside it", allowed
    index = tuning.choose(scores, stable)
    if index is not None:
        return cells[index], "stable, but every stable cell sits at the edge of stability", allowed
    index = tuning.choose(scores, np.ones(len(cells), bool))
    return (cells[index] if index is not None else None), "no cell trained on every draw", allowed


def _grid_result(
    label: str,
    spec: OptimizerSpec,
    experiment: Experiment,
    evaluated: dict[tuple[float, float], dict[str, np.ndarray]],
    choice: tuple[tuple[float, float], str, np.ndarray],
    worst: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The coarse grid as arrays, its separability numbers over the cells that trained (with
    bootstrap intervals over the tuning draws), every cell of both stages, and the heatmap panel.

    ``choice`` is :func:`_tuned`'s: the tuned cell, the rule's reason and the allowed cells."""
    tuned, rule, allowed = choice
    grid = experiment.grids[label]
    lrs, wds = np.asarray(grid.learning_rate), np.asarray(grid.weight_decay)
    error = np.array(
        [[evaluated[(lr, wd)]["error"] for wd in grid.weight_decay] for lr in grid.learning_rate]
    )
    loss = np.array([[evaluated[(lr, wd)]["loss"] for wd in grid.weight_decay] for lr in grid.learning_rate])
    trained = np.array(
        [[not evaluated[(lr, wd)]["diverged"].any() for wd in grid.weight_decay] for lr in grid.learning_rate]
    )
    mean_error = error.mean(-1)
    sep = diagnostics.separability(mean_error, lrs, wds, worst, trained=trained)
    cells = list(evaluated)
    tuned_score = evaluated[tuned]["error"]
    result: dict[str, Any] = {
        "chain": str(
            build.scheduled_optimizer(
                spec,
                experiment.training.schedule,
                experiment.training.steps,
                {"learning_rate": float(lrs[0]), "weight_decay": float(wds[0])},
            )
        ),
        "learning_rates": lrs,
        "weight_decays": wds,
        "test_loss": loss,
        "test_error": error,
        "trained": trained,
        "cells": [
            {
                "learning_rate": c[0],
                "weight_decay": c[1],
                "error": float(evaluated[c]["error"].mean()),
                "error_per_draw": evaluated[c]["error"],
                "diverged_runs": int(evaluated[c]["diverged"].sum()),
                "may_choose": bool(allowed[k]),
            }
            for k, c in enumerate(cells)
        ],
        "best": {
            "learning_rate": tuned[0],
            "weight_decay": tuned[1],
            "test_error": float(tuned_score.mean()),
            "test_error_ci95": statistics.mean_interval(tuned_score).as_dict()
            if len(tuned_score) >= 2
            else None,
            "rule": rule,
        },
        "separability": sep._asdict(),
    }
    panel: dict[str, Any] = {
        "label": label,
        "learning_rates": lrs,
        "weight_decays": wds,
        "metric": np.where(trained, mean_error, np.nan),
        "error": mean_error,
        "trained": trained,
        "separability": sep,
    }
    panel["best_cell"] = (_position(tuned[0], lrs), _position(tuned[1], wds))
    per_draw = np.moveaxis(error, -1, 0)  # [draw, lr, wd]
    if per_draw.shape[0] >= 2:
        result["separability_ci95"] = {
            name: statistics.bootstrap(
                lambda sample, name=name: getattr(
                    diagnostics.separability(sample.mean(0), lrs, wds, worst, trained=trained), name
                ),
                per_draw,
            ).as_dict()
            for name in ("slope", "interaction")
        }
        panel["separability_ci95"] = result["separability_ci95"]
        panel["error_half_width"] = np.array(
            [[_half_width(error[i, j]) for j in range(len(wds))] for i in range(len(lrs))]
        )
    result["per_seed_error"] = per_draw
    return result, panel


def _position(value: float, axis: np.ndarray) -> float:
    """Where ``value`` sits on a heatmap axis of cells ``0 .. len(axis) - 1`` (log scale): a
    tuned cell of the fine stage falls between the coarse cells."""
    if len(axis) == 1 or value <= 0 or np.any(axis <= 0):
        return float(np.argmin(np.abs(axis - value)))
    order = np.argsort(axis)
    return float(np.interp(np.log10(value), np.log10(axis[order]), order))


def _half_width(values: np.ndarray) -> float:
    """Half the width of the 95% t interval of the mean of ``values`` (NaN where a run diverged)."""
    if not np.all(np.isfinite(values)):
        return float("nan")
    interval = statistics.mean_interval(values)
    return (interval.high - interval.low) / 2


def _final_test(
    experiment: Experiment,
    model: Any,
    dataset: Any,
    spec: OptimizerSpec,
    cell: tuple[float, float],
    seeds: np.ndarray,
    progress: Callable[[int], None],
) -> dict:
    """Runs at the tuned ``cell`` on new seeds and new draws, evaluated once on the test split.

    The tuning read each draw's validation split (``evaluation_split: validation``); these runs
    are the only ones that read a test split. Every optimizer uses the same seeds and draws, so
    differences between optimizers are paired.
    """
    training = experiment.training
    draws = build.load_draws(experiment, seeds, "test")
    dataset = draws[0] if draws else build.load_test_data(experiment)
    optimizer = build.run_optimizer(spec, training)
    trainer = Trainer(model, dataset, optimizer, training.batch_size, training.eval_every)
    hyperparams = {
        "learning_rate": np.full(len(seeds), cell[0], np.float32),
        "weight_decay": np.full(len(seeds), cell[1], np.float32),
    }
    run = trainer.run(
        hyperparams, seeds, training.steps, progress=lambda n: progress(n * len(seeds)), datasets=draws
    )
    accuracy = run.test_accuracy[:, -1]
    bad = tuning.diverged(run.train_loss, run.test_loss[:, -1], accuracy, dataset.num_classes)
    return {
        "learning_rate": cell[0],
        "weight_decay": cell[1],
        "seeds": seeds,
        "data_seeds": [build.data_seed(experiment, s) for s in seeds] if draws else None,
        "test_accuracy": accuracy,
        "test_loss": run.test_loss[:, -1],
        "diverged_runs": int(bad.sum()),
        "test_accuracy_ci95": statistics.mean_interval(accuracy).as_dict() if len(seeds) >= 2 else None,
    }


# ------------------------------------------------------------------------- paired differences


#: The paired differences every result reports, ``a - b`` in points of test accuracy.
PAIRS = (
    ("adamw", "adam_l2"),
    ("adamw", "adam"),
    ("adam_l2", "adam"),
    ("sgdw", "sgd_l2"),
    ("adamw_torch", "adam_l2"),
    ("adamw_torch", "adam"),
)
#: The Adam variants with decay, among which "does decay matter here" picks the best.
DECAYED_ADAMS = ("adam_l2", "adamw", "adamw_torch")
#: The key of "does decay matter here": the best decayed Adam minus Adam.
DECAY_MATTERS = "best decayed - adam"


def best_decayed(results: dict[str, Any]) -> str | None:
    """The decayed Adam with the lowest tuning (validation) error at its tuned cell: chosen on
    the tuning draws, so the test draws that judge it did not pick it."""
    candidates = [label for label in DECAYED_ADAMS if label in results]
    if not candidates:
        return None
    return min(candidates, key=lambda label: results[label]["best"]["test_error"])


def verdict(a: str, b: str, interval: statistics.Interval) -> str:
    """Which side a 95% interval of ``a - b`` supports, or that it holds 0."""
    if interval.low > 0:
        return f"{a} better"
    if interval.high < 0:
        return f"{b} better"
    return "no difference detected"


def paired_differences(accuracies: dict[str, np.ndarray], decayed: str | None = None) -> dict[str, Any]:
    """The paired differences of :data:`PAIRS` present in ``accuracies`` (``label -> [draw]``), in
    points of test accuracy, each ``{"mean", "ci95", "seeds", "verdict"}``; with ``decayed``,
    also :data:`DECAY_MATTERS`, ``decayed - adam`` (``"optimizer"`` names it)."""
    pairs = list(PAIRS)
    if decayed is not None and "adam" in accuracies and decayed in accuracies:
        pairs.append((decayed, "adam"))
    out: dict[str, Any] = {}
    for k, (a, b) in enumerate(pairs):
        if a not in accuracies or b not in accuracies or len(accuracies[a]) < 2:
            continue
        d = statistics.paired_difference(100 * np.asarray(accuracies[a]), 100 * np.asarray(accuracies[b]))
        entry = {**d.as_dict(), "verdict": verdict(a, b, d)}
        if k < len(PAIRS):
            out[f"{a} - {b}"] = entry
        else:
            out[DECAY_MATTERS] = {**entry, "optimizer": a, "verdict": verdict("decay", "no decay", d)}
    return out


def differences_table(differences: dict[str, Any]) -> str:
    """The paired differences as a markdown table."""
    rows = [
        [
            name + (f" ({d['optimizer']})" if "optimizer" in d else ""),
            f"{d['mean']:+.2f}",
            f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]",
            str(d["seeds"]),
            d["verdict"],
        ]
        for name, d in differences.items()
    ]
    header = ["paired difference", "points", "95% CI", "draws", "verdict"]
    return reports.markdown_table(header, rows)


def _verdict(interval: statistics.Interval, claim_holds_when_positive: bool = True) -> str:
    if not np.isfinite(interval.low) or not np.isfinite(interval.high):
        return "inconclusive"
    if not interval.excludes_zero():
        return "inconclusive"
    return "reproduced" if (interval.low > 0) == claim_holds_when_positive else "not reproduced"


#: The paper's pairs: decoupled against coupled decay.
DECOUPLED_PAIRS = (("adamw", "adam_l2"), ("adamw_torch", "adam_l2"), ("sgdw", "sgd_l2"))


def _claims(results: dict[str, Any], worst: float) -> list[dict[str, Any]]:
    """The paper's claims, each decided by a 95% interval that must exclude zero: the
    separability gap (bootstrap over the tuning draws, cells that trained only) and the test
    accuracy at the tuned cells (paired t over the final draws)."""
    claims = []
    for decoupled, coupled in DECOUPLED_PAIRS:
        if decoupled not in results or coupled not in results:
            continue
        a, b = results[coupled], results[decoupled]
        if a["per_seed_error"].shape[0] == b["per_seed_error"].shape[0] >= 2:

            def interaction_gap(index: np.ndarray, a: dict = a, b: dict = b) -> float:
                sa, sb = (
                    diagnostics.separability(
                        r["per_seed_error"][index].mean(0),
                        r["learning_rates"],
                        r["weight_decays"],
                        worst,
                        trained=r["trained"],
                    )
                    for r in (a, b)
                )
                return sa.interaction - sb.interaction

            gap = statistics.bootstrap(interaction_gap, np.arange(a["per_seed_error"].shape[0]))
            claims.append(
                {
                    "claim": f"{decoupled}'s lr x wd surface is more separable than {coupled}'s "
                    f"(interaction {coupled} - {decoupled} > 0)",
                    "statistic": gap.as_dict(),
                    "unit": "share of variance",
                    "verdict": _verdict(gap),
                }
            )
        if "final" in a and "final" in b and len(a["final"]["test_accuracy"]) >= 2:
            difference = statistics.paired_difference(
                b["final"]["test_accuracy"], a["final"]["test_accuracy"]
            )
            claims.append(
                {
                    "claim": f"at tuned hyperparameters {decoupled} reaches a higher test accuracy "
                    f"than {coupled} ({decoupled} - {coupled} > 0)",
                    "statistic": difference.as_dict(),
                    "unit": "accuracy (x100: points)",
                    "verdict": _verdict(difference),
                }
            )
    return claims


def _sequential_timing(
    trainer: Trainer,
    lrs: tuple[float, ...],
    wds: tuple[float, ...],
    seeds: np.ndarray,
    datasets: list[Any] | None,
    runs: int,
    steps: int,
) -> dict[str, Any]:
    """Times ``runs`` coarse cells trained one at a time (first tuning draw) with one compiled
    single-run program."""
    cells = [(lr, wd) for lr in lrs for wd in wds]
    runs = min(runs, len(cells))
    indices = np.unique(np.linspace(0, len(cells) - 1, runs).round().astype(int))
    compiled = trainer.compiled(batched=False)
    times = []
    for index in indices:
        one = {"learning_rate": np.float32(cells[index][0]), "weight_decay": np.float32(cells[index][1])}
        draw = None if datasets is None else datasets[:1]
        times.append(
            trainer.run(one, seeds[:1], steps, batched=False, compiled=compiled, datasets=draw).seconds
        )
    out: dict[str, Any] = {"sequential_runs_timed": len(times), "sequential_run_seconds": times}
    total = len(cells) * len(seeds)
    if len(times) >= 2:
        per_run = float(np.mean(times[1:]))
        compile_seconds = max(times[0] - per_run, 0.0)
        out.update(
            per_run_seconds=per_run,
            compile_seconds=compile_seconds,
            sequential_seconds=compile_seconds + total * per_run,
            sequential_measured=False,
            recompiling_seconds=total * (compile_seconds + per_run),
        )
    return out


def _speedup(timing: dict[str, Any]) -> dict[str, Any]:
    vmapped = sum(t["vmapped_seconds"] for t in timing.values())
    if not all("sequential_seconds" in t for t in timing.values()):
        return {"vmapped_seconds": vmapped}
    sequential = sum(t["sequential_seconds"] for t in timing.values())
    recompiling = sum(t["recompiling_seconds"] for t in timing.values())
    return {
        "vmapped_seconds": vmapped,
        "sequential_seconds": sequential,
        "sequential_measured": all(t["sequential_measured"] for t in timing.values()),
        "recompiling_seconds": recompiling,
        "speedup_vs_sequential": sequential / vmapped,
        "speedup_vs_recompiling": recompiling / vmapped,
    }


def _timing_text(speed: dict[str, Any]) -> str:
    if "sequential_seconds" not in speed:
        return ""
    return (
        "tuning grids, vmapped (one program per optimizer and stage, compilation included): "
        f"{speed['vmapped_seconds']:.1f} s\n"
        f"one run at a time, one compiled program reused (estimated from the timed runs): "
        f"{speed['sequential_seconds']:.1f} s -> speed-up x{speed['speedup_vs_sequential']:.2f}\n"
        f"one run at a time, compiling every run (estimated): {speed['recompiling_seconds']:.1f} s "
        f"-> speed-up x{speed['speedup_vs_recompiling']:.1f}"
    )


def _sweep_table(results: dict[str, Any], split: str) -> str:
    rows = []
    for label, r in results.items():
        sep = r["separability"]
        best = r["best"]
        ci = r.get("separability_ci95", {})
        used = int(np.sum(sep["rows_used"]))
        final = r.get("final", {}).get("test_accuracy_ci95")
        rows.append(
            [
                label,
                f"{best['learning_rate']:.2g}",
                f"{best['weight_decay']:.2g}",
                f"{100 * best['test_error']:.2f} %",
                f"{sep['slope']:+.2f}{reports.bracket(ci.get('slope'), 2)} ({used} lrs)",
                f"{sep['interaction']:.3f}{reports.bracket(ci.get('interaction'), 3)}",
                "" if final is None else f"{100 * final['mean']:.2f} % {_ci_text(final)}",
            ]
        )
    header = [
        "optimizer",
        "tuned lr",
        "tuned wd",
        f"{split} error",
        "best-wd slope [95% CI]",
        "interaction [95% CI]",
        "test accuracy [95% CI]",
    ]
    return reports.markdown_table(header, rows)


def _sweep_summary(
    experiment: Experiment,
    results: dict[str, Any],
    table: str,
    timing: str,
    wall: float,
    metrics: dict[str, Any],
    split: str,
) -> str:
    t = experiment.training
    lines = [
        reports.title("sweep", experiment.name),
        "",
        f"Config: `{experiment.source}`. Data: {experiment.data}. Model: {experiment.model}.",
        f"{t.steps} steps of batch {t.batch_size} per run; {t.seeds} tuning draws per cell (run i: seed "
        f"{t.first_seed} + i, its own data set at data seed data.seed + {t.first_seed} + i), "
        f"{t.final_seeds} test draws at each tuned cell (1000 higher). Wall time {wall:.1f} s.",
        "",
        f"Metric: final {split} error, mean over the tuning draws. Tuning rule: {tuning.RULE}",
        "",
        "The separability numbers are computed over the coarse grid's cells that trained: *best-wd",
        "slope* is the least-squares slope of log10(best wd) against log10(lr) (about -1: the diagonal",
        "of coupled hyperparameters; 0: a best decay that does not move); *interaction* is the share",
        "of the variance of the error that a least-squares a(lr) + b(wd) leaves (0: separable).",
        "Intervals: percentile bootstrap over the tuning draws; test accuracies: t intervals over",
        "the test draws.",
        "",
        table,
        "",
    ]
    if metrics["paired_differences"]:
        lines += [
            "## Paired differences in test accuracy (same draws)",
            "",
            differences_table(metrics["paired_differences"]),
            "",
        ]
    if timing:
        lines += ["## Timing", "", "```", timing, "```", ""]
    lines += ["![heatmaps](heatmaps.png)", "", "## Every cell trained (both stages)", ""]
    for label, r in results.items():
        cells = ", ".join(
            f"{c['learning_rate']:.2g}/{c['weight_decay']:.2g}: {100 * c['error']:.1f}%"
            + (f" ({c['diverged_runs']} diverged)" if c["diverged_runs"] else "")
            + ("" if c["may_choose"] else " x")
            for c in r["cells"]
        )
        lines.append(f"- {label} (lr/wd: error; x = may not be chosen): {cells}")
    lines += ["", *_chain_listing("Chains (shown at the first grid point)", results)]
    claims = metrics["claims"]
    if claims:
        lines += ["## Verdicts", "", "Each decided by a 95% interval that must exclude 0.", ""]
        rows = []
        for c in claims:
            scale, unit = (100.0, " points") if c["unit"].startswith("accuracy") else (1.0, "")
            mean, (low, high) = scale * c["statistic"]["mean"], c["statistic"]["ci95"]
            rows.append(
                [c["claim"], f"{mean:+.3f}{unit}", f"[{scale * low:+.3f}, {scale * high:+.3f}]", c["verdict"]]
            )
        lines += [reports.markdown_table(["claim", "estimate", "95% CI", "verdict"], rows), ""]
    return "\n".join(lines)
