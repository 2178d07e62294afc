"""Wang & Aitchison's timescale claim, measured: does the best AdamW timescale in epochs stay put
as the training set grows?

AdamW shrinks a decayed weight by ``eta * lambda`` per step, so its weights are an exponential
moving average of the updates over ``tau_iter = 1 / (eta * lambda)`` steps, or
``tau_epoch = tau_iter / (iterations per epoch)`` epochs (Wang & Aitchison 2024). Their finding
is that the best ``tau_epoch`` hardly moves when the data set grows at a fixed number of epochs.
If instead the best ``lambda`` stayed fixed (so ``tau_iter`` did), the best ``tau_epoch`` would
halve each time the data set doubles.

:func:`timescale` trains the experiment's optimizer on training subsets of each size in
``study.train_sizes`` for ``study.epochs`` epochs, with ``lambda`` set from each timescale of
``study.timescales`` by :func:`optim_chain.weight_decay_from_timescale`, every (size, timescale)
over ``training.seeds`` seeds as one vmapped program per size, and reads the validation split.
For each size the best ``log2 tau_epoch`` is the vertex of the parabola through the grid's best
point and its two neighbours (validation error, and separately validation loss, each a mean over
seeds); the slope of that against
``log2(train size)`` is 0 under the claim and -1 under a fixed ``lambda``. Its 95% interval is a
bootstrap over seeds, and the verdict is *reproduced* when the interval holds 0 and excludes -1,
*not reproduced* when it excludes 0, *inconclusive* otherwise.

Example::

    >>> import numpy as np
    >>> from optim_chain.lab import timescale_study
    >>> log_taus = np.log2([1.0, 2.0, 4.0, 8.0])
    >>> round(timescale_study.best_log_timescale(np.array([0.3, 0.2, 0.2, 0.3]), log_taus), 3)
    1.5
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import optim_chain as oc
from optim_chain.lab import build, plots, reports, statistics
from optim_chain.lab.config import Experiment, OptimizerSpec, Where, numbers_in_text
from optim_chain.lab.training import Trainer

#: What each run is scored by on the validation split: the error, and the cross-entropy loss.
METRICS = ("error", "loss")

#: The slope of log2(best tau_epoch) against log2(train size) under each hypothesis.
SLOPE_IF_EPOCHS_FIXED, SLOPE_IF_LAMBDA_FIXED = 0.0, -1.0


def best_log_timescale(errors: np.ndarray, log_timescales: np.ndarray) -> float:
    """The ``log2 tau`` where ``errors`` (one per timescale) is lowest, between grid points.

    The vertex of the parabola through the lowest point and its two neighbours; at an edge of
    the grid, or where the three points do not curve upward, the grid point itself.
    """
    errors, x = np.asarray(errors, np.float64), np.asarray(log_timescales, np.float64)
    finite = np.where(np.isfinite(errors), errors, np.inf)
    i = int(np.argmin(finite))
    if i == 0 or i == len(x) - 1 or not np.all(np.isfinite(finite[i - 1 : i + 2])):
        return float(x[i])
    (x0, x1, x2), (y0, y1, y2) = x[i - 1 : i + 2], finite[i - 1 : i + 2]
    numerator = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    denominator = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    if denominator >= 0:  # flat or curving downward: no interior minimum
        return float(x1)
    return float(np.clip(x1 - 0.5 * numerator / denominator, x0, x2))


def slope(log_sizes: np.ndarray, log_best: np.ndarray) -> float:
    """Least-squares slope of ``log_best`` against ``log_sizes``."""
    return float(np.polyfit(np.asarray(log_sizes, np.float64), np.asarray(log_best, np.float64), 1)[0])


def verdict(low: float, high: float) -> str:
    """The claim's verdict from the slope's 95% interval ``[low, high]``."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if low > SLOPE_IF_EPOCHS_FIXED or high < SLOPE_IF_EPOCHS_FIXED:
        return "not reproduced"
    if low > SLOPE_IF_LAMBDA_FIXED:
        return "reproduced"
    return "inconclusive"


def best_per_size(per_seed: np.ndarray, log_timescales: np.ndarray) -> np.ndarray:
    """``float[sizes]``: the best ``log2 tau_epoch`` of each size from ``metric[seed, size, tau]``."""
    mean = np.asarray(per_seed, np.float64).mean(0)
    return np.array([best_log_timescale(row, log_timescales) for row in mean])


def analyse(
    per_seed: np.ndarray, train_sizes: np.ndarray, timescales: np.ndarray
) -> dict[str, Any]:
    """Best timescale per size, the slope against size and the verdict, with bootstrap intervals.

    Args:
      per_seed: ``float[seeds, sizes, timescales]`` validation errors or losses (lower is better).
      train_sizes: the training-set sizes.
      timescales: the ``tau_epoch`` values.
    """
    log_sizes, log_taus = np.log2(train_sizes), np.log2(timescales)
    per_size = [
        statistics.bootstrap(lambda sample, k=k: best_per_size(sample, log_taus)[k], per_seed).as_dict()
        for k in range(len(train_sizes))
    ]
    fitted = statistics.bootstrap(
        lambda sample: slope(log_sizes, best_per_size(sample, log_taus)), per_seed
    )
    return {
        "best_log2_tau_epoch": per_size,
        "best_tau_epoch": [2.0 ** d["mean"] for d in per_size],
        "slope": fitted.as_dict(),
        "verdict": verdict(fitted.low, fitted.high),
    }


def weight_decays(spec: OptimizerSpec, timescales: np.ndarray, iterations_per_epoch: float) -> np.ndarray:
    """The ``lambda`` of each ``tau_epoch`` for ``spec``'s learning rate and decay convention."""
    lr = float(numbers_in_text(spec.spec["learning_rate"]))
    scaling = spec.spec.get("decay_scaling", "learning_rate")
    return np.array(
        [
            oc.weight_decay_from_timescale(
                float(tau) * iterations_per_epoch, lr, decay_scaling=scaling, peak_learning_rate=lr
            )
            for tau in timescales
        ]
    )


def timescale(
    experiment: Experiment,
    out_dir: str | Path = "runs",
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs a ``timescale`` experiment and writes ``<out_dir>/<name>/``; returns the metrics.

    Writes ``summary.md`` (for each metric, the best timescale per size with intervals, the slope
    and the verdict), ``metrics.json`` and ``timescale.png`` (validation error and loss against
    ``tau_epoch``, one curve per training-set size).
    """
    start = time.perf_counter()
    study, training = experiment.study, experiment.training
    assert study is not None, "a timescale experiment has a study"
    full = build.load_data(experiment)
    if max(study.train_sizes) > len(full.x_train):
        raise Where(experiment.source, "study.train_sizes").error(
            f"asks for {max(study.train_sizes)} training examples; the data set has {len(full.x_train)} "
            "(raise data.num_samples)"
        )
    model = build.model(experiment, full)
    sizes, taus = np.asarray(study.train_sizes), np.asarray(study.timescales, np.float64)
    seeds = training.first_seed + np.arange(training.seeds)
    steps = {int(n): max(1, study.epochs * int(n) // training.batch_size) for n in sizes}
    runs = len(taus) * len(seeds)
    total = sum(steps.values()) * runs * len(experiment.optimizers)  # steps of single runs
    bar = reports.progress_bar(total, progress, "timescale")
    results: dict[str, Any] = {}
    worst_loss = float(np.log(full.num_classes))  # a diverged run counts as a uniform guess
    for label, spec in experiment.optimizers.items():
        values = {name: np.empty((len(seeds), len(sizes), len(taus))) for name in METRICS}
        decays = []
        for k, n in enumerate(sizes):
            n = int(n)
            bar.set_description(f"timescale: {label}, {n} examples ({runs} runs at once)")
            dataset = full._replace(x_train=full.x_train[:n], y_train=full.y_train[:n])
            wd = weight_decays(spec, taus, n / training.batch_size)
            decays.append(wd)
            run_training = dataclasses.replace(training, steps=steps[n])
            optimizer = build.run_optimizer(spec, run_training)
            trainer = Trainer(model, dataset, optimizer, training.batch_size, training.eval_every)
            wd_flat, seed_flat = (a.ravel() for a in np.meshgrid(wd, seeds, indexing="ij"))
            hyperparams = {"weight_decay": wd_flat.astype(np.float32)}
            run = trainer.run(hyperparams, seed_flat, steps[n], progress=lambda done: bar.update(done * runs))
            loss = np.nan_to_num(run.test_loss[:, -1], nan=worst_loss, posinf=worst_loss)
            for name, final in (("error", 1.0 - run.test_accuracy[:, -1]), ("loss", loss)):
                values[name][:, k, :] = final.reshape(len(taus), len(seeds)).T
        per_metric = {}
        for name, value in values.items():
            analysis = analyse(value, sizes, taus)
            analysis["best_weight_decay"] = [
                float(weight_decays(spec, np.array([tau]), int(n) / training.batch_size)[0])
                for n, tau in zip(sizes, analysis["best_tau_epoch"])
            ]
            per_metric[name] = {
                "values": value,
                "ci95": [
                    [statistics.mean_interval(value[:, k, j]).as_dict() for j in range(len(taus))]
                    for k in range(len(sizes))
                ],
                **analysis,
            }
        results[label] = {
            "learning_rate": float(numbers_in_text(spec.spec["learning_rate"])),
            "decay_scaling": spec.spec.get("decay_scaling", "learning_rate"),
            "steps": [steps[int(n)] for n in sizes],
            "weight_decays": decays,
            "metrics": per_metric,
        }
    bar.close()
    path = reports.output_dir(out_dir, experiment.name)
    plots.timescale_curves(path / "timescale.png", results, sizes, taus)
    wall = time.perf_counter() - start
    metrics = {
        "kind": "timescale",
        "experiment": reports.describe(experiment),
        "environment": reports.environment(),
        "wall_seconds": wall,
        "train_sizes": sizes,
        "timescales": taus,
        "epochs": study.epochs,
        "seeds": seeds,
        "optimizers": results,
    }
    reports.write_json(path / "metrics.json", metrics)
    table = _table(results, sizes)
    (path / "summary.md").write_text(_summary(experiment, results, table, wall))
    echo(table)
    echo(f"\nwrote {path}/: summary.md, metrics.json, timescale.png")
    echo(f"wall time {wall:.1f} s")
    return metrics


def _table(results: dict[str, Any], sizes: np.ndarray) -> str:
    rows = []
    for label, r in results.items():
        for metric, m in r["metrics"].items():
            for k, n in enumerate(sizes):
                best = m["best_log2_tau_epoch"][k]
                low, high = best["ci95"]
                rows.append(
                    [
                        label if k == 0 else "",
                        f"validation {metric}" if k == 0 else "",
                        f"{int(n):,}",
                        f"{2.0 ** best['mean']:.2f}",
                        f"[{2.0 ** low:.2f}, {2.0 ** high:.2f}]",
                        f"{m['best_weight_decay'][k]:.3g}",
                    ]
                )
            slope_ = m["slope"]
            low, high = slope_["ci95"]
            interval = f"[{low:+.2f}, {high:+.2f}]"
            rows.append(["", "", "slope", f"{slope_['mean']:+.2f}", interval, m["verdict"]])
    header = ["optimizer", "metric", "train size", "best tau_epoch", "95% CI", "lambda there / verdict"]
    return reports.markdown_table(header, rows)


def _summary(experiment: Experiment, results: dict[str, Any], table: str, wall: float) -> str:
    study, t = experiment.study, experiment.training
    assert study is not None
    lines = [
        reports.title("timescale", experiment.name),
        "",
        f"Config: `{experiment.source}`. Data: {experiment.data}. Model: {experiment.model}.",
        f"Training sets of {', '.join(f'{n:,}' for n in study.train_sizes)} examples, "
        f"{study.epochs} epochs of batch {t.batch_size} each ({t.schedule} learning rate), "
        f"{t.seeds} seeds per cell; "
        f"tau_epoch in {', '.join(f'{v:g}' for v in study.timescales)}. Wall time {wall:.1f} s.",
        "",
        "Metrics: final validation error and loss, each a mean over seeds, each analysed on its own.",
        "*best tau_epoch* is the vertex of the",
        "parabola through the lowest grid point and its neighbours (log2 tau); its interval and the",
        "slope's are percentile bootstraps over seeds. *slope* fits log2(best tau_epoch) against",
        "log2(train size): 0 if the best timescale in epochs stays put (Wang & Aitchison), -1 if the",
        "best lambda did instead. Verdict: reproduced when the slope's interval holds 0 and excludes",
        "-1, not reproduced when it excludes 0, inconclusive otherwise.",
        "",
        table,
        "",
        "![validation error against the timescale](timescale.png)",
        "",
    ]
    return "\n".join(lines)
