"""``optim-chain map``: the same sweep in several regimes, and where each claim holds.

A *regime* is a model and an amount of data (:class:`optim_chain.lab.config.Regime`). Each
regime runs the full sweep (:func:`optim_chain.lab.experiments.sweep`: two-stage tuning on the
tuning draws, then every optimizer at its tuned cell on the test draws), into
``runs/<map>/<regime>/``. The map then writes, in ``runs/<map>/``:

* ``summary.md``: one table with a row per regime: the test accuracy of every optimizer and the
  paired differences ``adamw - adam_l2``, ``adamw - adam``, ``adam_l2 - adam``, ``sgdw - sgd_l2``
  and ``best decayed - adam`` ("does decay matter here"), each with its 95% interval over the
  test draws and a verdict;
* ``metrics.json``: the same as data, regime by regime;
* ``tuned.json``: the tuned cells of every regime, with what they were found with; the copy in
  ``optim_chain/lab/results/`` is what the default ``optim-chain compare`` reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from optim_chain.lab import experiments, reports
from optim_chain.lab.config import Regime

#: The columns of the map's table, in order: the paired differences it reports.
COLUMNS = ("adamw - adam_l2", "adamw - adam", "adam_l2 - adam", "sgdw - sgd_l2", experiments.DECAY_MATTERS)


def run_map(
    name: str,
    regimes: Sequence[Regime],
    out_dir: str | Path = "runs",
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs every regime's sweep and writes the map (see the module docstring); returns its metrics."""
    start = time.perf_counter()
    path = reports.output_dir(out_dir, name)
    outer = reports.progress_bar(len(regimes), progress, name)
    outer.unit = "regime"
    per_regime: dict[str, Any] = {}
    for regime in regimes:
        outer.set_description(f"{name}: {regime.name}")
        metrics = experiments.sweep(regime.sweep, path, progress=progress, echo=lambda _: None)
        per_regime[regime.name] = _regime_result(regime, metrics)
        outer.update(1)
    outer.close()
    wall = time.perf_counter() - start
    tuned = {"source": f"optim-chain map ({name})", "regimes": {k: r["tuned"] for k, r in per_regime.items()}}
    reports.write_json(path / "tuned.json", tuned)
    table = map_table(per_regime)
    metrics = {
        "kind": "map",
        "name": name,
        "environment": reports.environment(),
        "wall_seconds": wall,
        "regimes": per_regime,
    }
    reports.write_json(path / "metrics.json", metrics)
    (path / "summary.md").write_text(_summary(name, regimes, per_regime, table, wall))
    echo(table)
    echo(f"\nwrote {path}/: summary.md, metrics.json, tuned.json, and one sweep folder per regime")
    echo(f"wall time {wall:.1f} s")
    return metrics


def _regime_result(regime: Regime, metrics: dict[str, Any]) -> dict[str, Any]:
    sweep = regime.sweep
    optimizers = metrics["optimizers"]
    cells = {
        label: {
            "learning_rate": r["best"]["learning_rate"],
            "weight_decay": r["best"]["weight_decay"],
            "validation_error": r["best"]["test_error"],
            "rule": r["best"]["rule"],
        }
        for label, r in optimizers.items()
    }
    data = {k: v for k, v in sweep.data.items() if k != "evaluation_split"}
    return {
        "description": regime.description,
        "seconds": metrics["wall_seconds"],
        "data_draws": metrics["data_draws"],
        "summary": metrics["summary"],
        "paired_differences": metrics["paired_differences"],
        "diverged_test_runs": {k: r["final"]["diverged_runs"] for k, r in optimizers.items() if "final" in r},
        "tuned": {
            "description": regime.description,
            "model": {k: list(v) if isinstance(v, tuple) else v for k, v in sweep.model.items()},
            "data": data,
            "training": vars(sweep.training),
            "optimizers": cells,
            "best_decayed": experiments.best_decayed(optimizers),
        },
    }


def _cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "n/a"
    low, high = entry["ci95"]
    mark = "**" if low > 0 or high < 0 else ""
    return f"{mark}{entry['mean']:+.2f} [{low:+.2f}, {high:+.2f}]{mark}"


def map_table(per_regime: dict[str, Any]) -> str:
    """Two markdown tables: test accuracy per optimizer and regime, then the paired differences
    (points, 95% interval; bold where the interval excludes 0)."""
    labels: list[str] = []
    for r in per_regime.values():
        labels += [label for label in r["summary"] if label not in labels]
    rows = []
    for name, r in per_regime.items():
        row = [name]
        for label in labels:
            entry = r["summary"].get(label, {}).get("test_accuracy")
            row.append(
                "n/a"
                if entry is None
                else f"{100 * entry['mean']:.1f} [{100 * entry['ci95'][0]:.1f}, {100 * entry['ci95'][1]:.1f}]"
            )
        rows.append(row)
    accuracy = reports.markdown_table(["regime", *labels], rows)
    rows = []
    for name, r in per_regime.items():
        d = r["paired_differences"]
        decayed = d.get(experiments.DECAY_MATTERS, {}).get("optimizer")
        rows.append(
            [
                name,
                *(_cell(d.get(column)) for column in COLUMNS[:-1]),
                _cell(d.get(experiments.DECAY_MATTERS)) + (f" ({decayed})" if decayed else ""),
            ]
        )
    header = ["regime", *COLUMNS[:-1], "best decayed - adam"]
    return accuracy + "\n\n" + reports.markdown_table(header, rows)


def _summary(
    name: str, regimes: Sequence[Regime], per_regime: dict[str, Any], table: str, wall: float
) -> str:
    first = regimes[0].sweep
    t = first.training
    lines = [
        reports.title("map", name),
        "",
        f"{len(regimes)} regimes, each the sweep of `{first.source}` ({t.steps} steps of batch "
        f"{t.batch_size}, {t.schedule} learning rate; tuning on {t.seeds} draws, testing on "
        f"{t.final_seeds} new draws). Wall time {wall / 60:.1f} min.",
        "",
        "Test accuracy in percent (mean [95% CI] over the test draws), then paired differences in",
        "points of test accuracy (same draws; bold: the interval excludes 0). *best decayed - adam*",
        "compares Adam with the decayed Adam (L2, AdamW in either form) that tuning found best: does",
        "decay matter here?",
        "",
        table,
        "",
        "## Regimes",
        "",
    ]
    for regime in regimes:
        r = per_regime[regime.name]
        diverged = {k: v for k, v in r["diverged_test_runs"].items() if v}
        lines.append(
            f"- `{regime.name}`: {regime.description}; {r['seconds'] / 60:.1f} min; tuned cells "
            + ", ".join(
                f"{label} {c['learning_rate']:.2g}/{c['weight_decay']:.2g}"
                for label, c in r["tuned"]["optimizers"].items()
            )
            + (f"; test runs that diverged: {diverged}" if diverged else "")
            + f" ([heatmaps]({regime.name}/heatmaps.png))"
        )
    return "\n".join(lines) + "\n"
