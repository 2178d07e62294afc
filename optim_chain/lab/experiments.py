"""Two experiments behind the command line: ``compare`` and ``sweep``
(:mod:`optim_chain.lab.timescale_study` is the third).

* :func:`compare` trains one model with several optimizers (by default every optimizer at its
  tuned point on MNIST-1D) over several seeds, all seeds of an optimizer as one vmapped
  program, and writes ``runs/<name>/``: ``summary.md``, ``metrics.json`` (95% intervals and the
  paired differences decoupled minus coupled), ``curves.png`` and ``effective_decay.png``.
* :func:`sweep` trains a learning-rate x weight-decay grid per optimizer, the whole grid as one
  vmapped program, tunes each optimizer on the evaluation split (validation, in the default),
  tests the tuned cell on new seeds, draws the heatmaps side by side (Loshchilov & Hutter,
  Figure 2), computes separability numbers (:func:`optim_chain.lab.diagnostics.separability`)
  with bootstrap intervals and a verdict per claim of the paper, and can time the same grid
  trained one run at a time. It writes ``summary.md``, ``metrics.json`` and ``heatmaps.png``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from optim_chain.lab import build, diagnostics, plots, reports, statistics
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
    dataset = build.load_data(experiment)
    model = build.model(experiment, dataset)
    training = experiment.training
    seeds = training.first_seed + np.arange(training.seeds)
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
        run = trainer.run(hyperparams, seeds, training.steps, progress=bar.update)
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
    summary, differences = _intervals(results)
    table = _compare_table(results, summary, differences)
    metrics = {
        "kind": "compare",
        "experiment": reports.describe(experiment),
        "environment": reports.environment(),
        "wall_seconds": wall,
        "seeds": seeds,
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


#: The pairs whose paired difference is reported: decoupled minus coupled decay (AdamW in the
#: paper's form and in torch's, ``adamw_torch``, where an experiment has both).
DECOUPLED_PAIRS = (("adamw", "adam_l2"), ("adamw_torch", "adam_l2"), ("sgdw", "sgd_l2"))


def _intervals(results: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """95% intervals over seeds of each optimizer's final test accuracy and loss, and the paired
    differences decoupled minus coupled (same seeds: same initial weights and batches)."""
    summary: dict[str, Any] = {}
    for label, r in results.items():
        if len(r["test_accuracy"]) < 2:
            continue
        summary[label] = {
            "test_accuracy": statistics.mean_interval(r["test_accuracy"]).as_dict(),
            "test_loss": statistics.mean_interval(r["test_loss"]).as_dict()
            if np.all(np.isfinite(r["test_loss"]))
            else None,
        }
    differences: dict[str, Any] = {}
    for a, b in DECOUPLED_PAIRS:
        if a in summary and b in summary:
            d = statistics.paired_difference(results[a]["test_accuracy"], results[b]["test_accuracy"])
            differences[f"{a} - {b}"] = {"test_accuracy": d.as_dict()}
    return summary, differences


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
    for name, d in differences.items():
        interval = d["test_accuracy"]
        verdict = "excludes 0" if interval["ci95"][0] > 0 or interval["ci95"][1] < 0 else "includes 0"
        lines.append(
            f"\npaired difference {name} in test accuracy (same seeds): "
            f"{100 * interval['mean']:+.2f} points, 95% CI {_ci_text(interval)} ({verdict}, "
            f"{interval['seeds']} seeds)"
        )
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
        f"(each seed: same initialisation and batch order for every optimizer). Wall time {wall:.1f} s.",
        "",
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


def sweep(
    experiment: Experiment,
    out_dir: str | Path = "runs",
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs a ``sweep`` experiment and writes ``<out_dir>/<name>/``; returns the metrics.

    Each optimizer's grid (``learning rates x weight decays x seeds``) trains as one
    ``jax.jit(jax.vmap(...))`` program. Then ``baseline_runs`` cells per optimizer are trained one
    at a time with one compiled single-run program (hyperparameters passed as arguments, so it
    compiles once); the sequential time of the whole grid is estimated as
    ``compile + cells x time per run`` (measured exactly when ``baseline_runs`` covers the grid),
    and the time of a loop that compiles every run afresh (hyperparameters baked in as Python
    floats) as ``cells x (compile + time per run)``.
    """
    start = time.perf_counter()
    dataset = build.load_data(experiment)
    model = build.model(experiment, dataset)
    training = experiment.training
    worst = 1.0 - 1.0 / dataset.num_classes  # the error of a uniform guess
    seeds = training.first_seed + np.arange(training.seeds)
    runs = sum(
        len(g.learning_rate) * len(g.weight_decay) * len(seeds) + training.final_seeds
        for g in experiment.grids.values()
    )  # every grid, then each tuned cell on the test split: the bar counts steps of single runs
    bar = reports.progress_bar(runs * training.steps, progress, "sweep")
    results: dict[str, Any] = {}
    panels: dict[str, dict[str, Any]] = {}
    timing: dict[str, Any] = {}
    test_dataset = None
    for label, spec in experiment.optimizers.items():
        grid = experiment.grids[label]
        lrs, wds = np.asarray(grid.learning_rate), np.asarray(grid.weight_decay)
        lr_flat, wd_flat, seed_flat = (a.ravel() for a in np.meshgrid(lrs, wds, seeds, indexing="ij"))
        hyperparams = {
            "learning_rate": lr_flat.astype(np.float32),
            "weight_decay": wd_flat.astype(np.float32),
        }
        cells = len(lr_flat)
        bar.set_description(f"sweep: {label} ({cells} runs at once)")
        optimizer = build.run_optimizer(spec, training)
        trainer = Trainer(model, dataset, optimizer, training.batch_size, training.eval_every)
        run = trainer.run(
            hyperparams, seed_flat, training.steps, progress=lambda n, cells=cells: bar.update(n * cells)
        )
        shape = (len(lrs), len(wds), len(seeds))
        loss = run.test_loss[:, -1].reshape(shape)
        error = 1.0 - run.test_accuracy[:, -1].reshape(shape)
        mean_loss, mean_error = loss.mean(-1), error.mean(-1)
        sep = diagnostics.separability(mean_error, lrs, wds, worst)
        panels[label] = {
            "label": label,
            "learning_rates": lrs,
            "weight_decays": wds,
            "metric": mean_error,
            "error": mean_error,
            "separability": sep,
        }
        best = np.unravel_index(
            np.argmin(np.where(np.isfinite(mean_error), mean_error, np.inf)), mean_error.shape
        )
        results[label] = {
            "chain": str(
                build.scheduled_optimizer(
                    spec,
                    training.schedule,
                    training.steps,
                    {"learning_rate": float(lrs[0]), "weight_decay": float(wds[0])},
                )
            ),
            "learning_rates": lrs,
            "weight_decays": wds,
            "test_loss": loss,
            "test_error": error,
            "best": {
                "learning_rate": lrs[best[0]],
                "weight_decay": wds[best[1]],
                "test_error": mean_error[best],
                "test_loss": mean_loss[best],
            },
            "separability": sep._asdict(),
            "vmapped_seconds": run.seconds,
            "vmapped_first_chunk_seconds": run.compile_seconds,
            "runs": cells,
        }
        per_seed = np.moveaxis(error, -1, 0)  # [seed, lr, wd]
        if len(seeds) >= 2:
            results[label]["separability_ci95"] = {
                name: statistics.bootstrap(
                    lambda sample, name=name, lrs=lrs, wds=wds: getattr(
                        diagnostics.separability(sample.mean(0), lrs, wds, worst), name
                    ),
                    per_seed,
                ).as_dict()
                for name in ("slope", "interaction")
            }
            panels[label]["separability_ci95"] = results[label]["separability_ci95"]
            panels[label]["error_half_width"] = np.array(
                [[_half_width(error[i, j]) for j in range(len(wds))] for i in range(len(lrs))]
            )
        results[label]["per_seed_error"] = per_seed
        if training.final_seeds:
            bar.set_description(f"sweep: {label} at its tuned cell, on the test split")
            if test_dataset is None:  # loaded once, after the first grid has been tuned
                test_dataset = build.load_test_data(experiment)
            results[label]["final"] = _final_test(
                experiment,
                model,
                test_dataset,
                spec,
                float(lrs[best[0]]),
                float(wds[best[1]]),
                lambda n: bar.update(n * training.final_seeds),
            )
        timing[label] = {"vmapped_seconds": run.seconds, "runs": cells}
        if experiment.baseline_runs:
            bar.set_description(f"sweep: {label} one run at a time")
            timing[label].update(
                _sequential_timing(trainer, hyperparams, seed_flat, experiment.baseline_runs, training.steps)
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
    metrics = {
        "kind": "sweep",
        "experiment": reports.describe(experiment),
        "environment": reports.environment(),
        "wall_seconds": wall,
        "metric": f"final {split} error, mean over seeds",
        "optimizers": results,
        "timing": {"per_optimizer": timing, **speed},
    }
    claims = _claims(results, worst)
    metrics["claims"] = claims
    reports.write_json(path / "metrics.json", metrics)
    table = _sweep_table(results, split)
    timing_text = _timing_text(speed)
    (path / "summary.md").write_text(
        _sweep_summary(experiment, results, table, timing_text, wall, claims, split)
    )
    echo(table)
    if timing_text:
        echo("\n" + timing_text)
    echo(f"\nwrote {path}/: summary.md, metrics.json, heatmaps.png")
    echo(f"wall time {wall:.1f} s")
    return metrics


def _half_width(values: np.ndarray) -> float:
    """Half the width of the 95% t interval of the mean of ``values`` (NaN where a run diverged)."""
    if not np.all(np.isfinite(values)):
        return float("nan")
    interval = statistics.mean_interval(values)
    return (interval.high - interval.low) / 2


#: Seeds of the runs at the tuned cells start here: none of them was used for tuning.
FINAL_SEED_OFFSET = 1000


def _final_test(
    experiment: Experiment,
    model: Any,
    dataset: Any,
    spec: OptimizerSpec,
    lr: float,
    wd: float,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """``final_seeds`` runs at ``(lr, wd)``, evaluated once on ``dataset``'s test split.

    The tuning grid read the data set's validation split (``evaluation_split: validation``);
    these runs train on the same training set and are the only ones that read the test split.
    Every optimizer uses the same seeds, so differences between optimizers are paired.
    """
    training = experiment.training
    seeds = training.first_seed + FINAL_SEED_OFFSET + np.arange(training.final_seeds)
    optimizer = build.run_optimizer(spec, training)
    trainer = Trainer(model, dataset, optimizer, training.batch_size, training.eval_every)
    hyperparams = {
        "learning_rate": np.full(len(seeds), lr, np.float32),
        "weight_decay": np.full(len(seeds), wd, np.float32),
    }
    run = trainer.run(hyperparams, seeds, training.steps, progress=progress)
    accuracy = run.test_accuracy[:, -1]
    return {
        "learning_rate": lr,
        "weight_decay": wd,
        "seeds": seeds,
        "test_accuracy": accuracy,
        "test_loss": run.test_loss[:, -1],
        "test_accuracy_ci95": statistics.mean_interval(accuracy).as_dict(),
    }


def _verdict(interval: statistics.Interval, claim_holds_when_positive: bool = True) -> str:
    if not np.isfinite(interval.low) or not np.isfinite(interval.high):
        return "inconclusive"
    if not interval.excludes_zero():
        return "inconclusive"
    return "reproduced" if (interval.low > 0) == claim_holds_when_positive else "not reproduced"


def _claims(results: dict[str, Any], worst: float) -> list[dict[str, Any]]:
    """The paper's claims, each decided by a 95% interval that must exclude zero."""
    claims = []
    for decoupled, coupled in DECOUPLED_PAIRS:
        if decoupled not in results or coupled not in results:
            continue
        a, b = results[coupled], results[decoupled]
        if a["per_seed_error"].shape[0] == b["per_seed_error"].shape[0] >= 2:

            def interaction_gap(index: np.ndarray, a: dict = a, b: dict = b) -> float:
                sa = diagnostics.separability(
                    a["per_seed_error"][index].mean(0), a["learning_rates"], a["weight_decays"], worst
                )
                sb = diagnostics.separability(
                    b["per_seed_error"][index].mean(0), b["learning_rates"], b["weight_decays"], worst
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
        if "final" in a and "final" in b:
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
    trainer: Trainer, hyperparams: dict[str, np.ndarray], seeds: np.ndarray, runs: int, steps: int
) -> dict[str, Any]:
    """Times ``runs`` grid cells trained one at a time with one compiled single-run program."""
    cells = len(seeds)
    runs = min(runs, cells)
    indices = np.unique(np.linspace(0, cells - 1, runs).round().astype(int))
    compiled = trainer.compiled(batched=False)
    times = []
    for index in indices:
        one = {k: v[index] for k, v in hyperparams.items()}
        times.append(trainer.run(one, [seeds[index]], steps, batched=False, compiled=compiled).seconds)
    out: dict[str, Any] = {"sequential_runs_timed": len(times), "sequential_run_seconds": times}
    if len(times) >= 2:
        per_run = float(np.mean(times[1:]))
        compile_seconds = max(times[0] - per_run, 0.0)
        out.update(
            per_run_seconds=per_run,
            compile_seconds=compile_seconds,
            sequential_seconds=sum(times) if len(times) == cells else compile_seconds + cells * per_run,
            sequential_measured=len(times) == cells,
            recompiling_seconds=cells * (compile_seconds + per_run),
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
        return f"grid trained vmapped in {speed['vmapped_seconds']:.1f} s (no one-at-a-time baseline)"
    how = "measured" if speed["sequential_measured"] else "estimated from the timed runs"
    return (
        "whole grid, vmapped (one program per optimizer, compilation included): "
        f"{speed['vmapped_seconds']:.1f} s\n"
        f"one run at a time, one compiled program reused ({how}): {speed['sequential_seconds']:.1f} s "
        f"-> speed-up x{speed['speedup_vs_sequential']:.2f}\n"
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
        rows.append(
            [
                label,
                f"{best['learning_rate']:.1e}",
                f"{best['weight_decay']:.1e}",
                f"{100 * best['test_error']:.2f} %",
                f"{sep['slope']:+.2f}{reports.bracket(ci.get('slope'), 2)} ({used} lrs)",
                f"{sep['spread_decades']:.1f}",
                f"{sep['interaction']:.3f}{reports.bracket(ci.get('interaction'), 3)}",
            ]
        )
    header = [
        "optimizer",
        "best lr",
        "best wd",
        f"{split} error",
        "best-wd slope [95% CI]",
        "spread (decades)",
        "interaction [95% CI]",
    ]
    return reports.markdown_table(header, rows)


def _sweep_summary(
    experiment: Experiment,
    results: dict[str, Any],
    table: str,
    timing: str,
    wall: float,
    claims: list[dict[str, Any]],
    split: str,
) -> str:
    t = experiment.training
    lines = [
        reports.title("sweep", experiment.name),
        "",
        f"Config: `{experiment.source}`. Data: {experiment.data}. Model: {experiment.model}.",
        f"{t.steps} steps of batch {t.batch_size} per run, {t.seeds} seed(s) per cell (every cell sees the",
        f"same initialisation and batches). Wall time {wall:.1f} s.",
        "",
        f"Metric: final {split} error, mean over seeds; the tuned cell of each optimizer is its lowest.",
        "For each learning rate the weight decay with the lowest error is its *best wd*. *best-wd",
        "slope* is the least-squares slope of log10(best wd) against log10(lr) over the learning rates",
        "whose best error is within 2x of the grid's best: about -1 is the diagonal of coupled",
        "hyperparameters, about 0 a best weight decay that does not move. *spread* is the range of",
        "those best weight decays in decades. *interaction* is the share of the variance of the error",
        "(diverged runs count as a uniform guess) that an additive model a(lr) + b(wd) leaves",
        "unexplained (0: perfectly separable). Intervals: percentile bootstrap over the seeds.",
        "",
        table,
        "",
    ]
    if timing:
        lines += ["## Timing", "", "```", timing, "```", ""]
    lines += ["![heatmaps](heatmaps.png)", "", "## Best weight decay per learning rate", ""]
    for label, r in results.items():
        pairs = ", ".join(
            f"{lr:.0e}->{wd:.0e}"
            for lr, wd in zip(r["learning_rates"], r["separability"]["best_weight_decay"])
        )
        lines.append(f"- {label}: {pairs}")
    lines += ["", *_chain_listing("Chains (shown at the first grid point)", results)]
    finals = {label: r["final"] for label, r in results.items() if "final" in r}
    if finals:
        lines += ["## At the tuned cells, on the test split", ""]
        rows = [
            [
                label,
                f"{f['learning_rate']:.1e}",
                f"{f['weight_decay']:.1e}",
                f"{100 * f['test_accuracy_ci95']['mean']:.2f} %",
                _ci_text(f["test_accuracy_ci95"]),
                str(f["test_accuracy_ci95"]["seeds"]),
            ]
            for label, f in finals.items()
        ]
        header = ["optimizer", "lr", "wd", "test accuracy", "95% CI", "seeds"]
        lines += [reports.markdown_table(header, rows), ""]
    if claims:
        lines += ["## Verdicts", "", "Each decided by a 95% interval over seeds that must exclude 0.", ""]
        rows = []
        for c in claims:
            scale, unit = (100.0, " points") if c["unit"].startswith("accuracy") else (1.0, "")
            mean, (low, high) = scale * c["statistic"]["mean"], c["statistic"]["ci95"]
            rows.append(
                [c["claim"], f"{mean:+.3f}{unit}", f"[{scale * low:+.3f}, {scale * high:+.3f}]", c["verdict"]]
            )
        lines += [reports.markdown_table(["claim", "estimate", "95% CI", "verdict"], rows), ""]
    return "\n".join(lines)
