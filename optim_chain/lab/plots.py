"""Figures for ``optim-chain compare`` and ``optim-chain sweep`` (matplotlib, no display needed).

Figures are drawn on ``matplotlib.figure.Figure`` objects directly, which render with the Agg
backend and never open a window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from optim_chain.lab import reports
from optim_chain.lab.diagnostics import Separability

COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


def training_curves(path: Path, curves: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Train loss, test loss and test accuracy against steps: the mean over seeds with a min-max band.

    Each optimizer has its own colour, line style and marker, so that curves lying on top of
    each other (Adam and AdamW at a small decay) stay visible.

    Args:
      path: the PNG to write.
      curves: label -> ``{"step": int[E], "train_loss": float[R, E], "test_loss": ...,
        "test_accuracy": ...}``.
    """
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    for index, (label, curve) in enumerate(curves.items()):
        color = COLORS[index % len(COLORS)]
        style = {
            "color": color,
            "linestyle": LINESTYLES[index % len(LINESTYLES)],
            "marker": MARKERS[index % len(MARKERS)],
            "markevery": 0.1 + 0.03 * index,  # markers at other steps, so that none hides another
            "markersize": 5,
            "markerfacecolor": "none",
        }
        steps = np.asarray(curve["step"])
        for ax, key in zip(axes, ("train_loss", "test_loss", "test_accuracy")):
            values = np.asarray(curve[key], np.float64)
            runs = values.shape[0]
            ax.plot(steps, values.mean(0), label=f"{label} (mean of {runs} seeds)", **style)
            band = f"{label}: min to max over seeds"
            ax.fill_between(
                steps, values.min(0), values.max(0), color=color, alpha=0.15, linewidth=0, label=band
            )
    for ax, title in zip(axes, ("training loss (mean over the chunk)", "test loss", "test accuracy")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=110)


def effective_decay(
    path: Path, coupled: Mapping[str, np.ndarray], single: Mapping[str, float], title: str = ""
) -> None:
    """Histogram of the per-weight decay of L2 chains against the single value of decoupled ones.

    Args:
      path: the PNG to write.
      coupled: label -> ``lr * lambda / (sqrt(vhat) + eps)`` for every decayed weight (the
        coefficient of ``theta`` in the step if the L2 term moved ``vhat`` no further; above 1
        the normalised step, which Adam bounds, is what limits the actual shrinkage).
      single: label -> the one per-step decay every decayed weight gets (``eta * lambda``).
      title: the figure's title.
    """
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.subplots()
    finite = [v[np.isfinite(v) & (v > 0)] for v in coupled.values()]
    everything = np.concatenate(finite + [np.asarray(list(single.values()), np.float64)])
    everything = everything[everything > 0]
    if everything.size:
        bins = np.geomspace(everything.min() / 1.5, everything.max() * 1.5, 60)
        for (label, values), color in zip(zip(coupled, finite), COLORS):
            ax.hist(values, bins=bins, color=color, alpha=0.75, label=f"{label}: one value per weight")
            ax.axvline(np.median(values), color=color, linestyle=":", linewidth=1)
        for index, ((label, value), color) in enumerate(zip(single.items(), COLORS[len(coupled) :])):
            style = LINESTYLES[index % len(LINESTYLES)]  # equal values stay visible side by side
            label = f"{label}: every weight, {value:.1e}"
            ax.axvline(value, color=color, linewidth=2.5, linestyle=style, label=label)
        ax.set_xscale("log")
    ax.set_xlabel("decay coefficient per step: lr*lambda/(sqrt(vhat)+eps) for L2, eta*lambda decoupled")
    ax.set_ylabel("number of weights")
    ax.set_title(title or "effective weight decay of each decayed weight, at the end of training")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def heatmaps(
    path: Path,
    rows: Sequence[Sequence[dict[str, Any]]],
    metric_name: str,
    worst: float,
) -> None:
    """Learning-rate x weight-decay heatmaps in the layout of Loshchilov & Hutter's Figure 2:
    one row per pair (coupled decay on the left, decoupled on the right), the weight decay
    across and the learning rate up.

    Colour is ``metric`` (log scale, clipped at ``worst``); each cell is annotated with the
    error in percent and, under it, the half-width of its 95% interval; cells where a run
    diverged say so and take no part in the separability numbers; white dots mark the best
    weight decay of each learning rate used in the slope fit (grey ones the rows left out), a
    star the tuned cell (between the coarse cells where the fine stage found it).

    Args:
      path: the PNG to write.
      rows: for each row, panels ``{"label", "learning_rates", "weight_decays", "metric",
        "error", "separability": Separability}`` and optionally ``"trained"`` (``bool[lr,
        wd]``), ``"best_cell"`` (the tuned cell's position in cells, fractional between them),
        ``"error_half_width"`` and ``"separability_ci95"`` (``{"slope",
        "interaction"}`` intervals, in the title); the grid arrays are ``[lr, wd]``.
      metric_name: what the colour shows.
      worst: the clipping value of the colour scale.
    """
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig = Figure(figsize=(5.6 * n_cols, 4.9 * n_rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    finite = [
        np.asarray(p["metric"])[np.isfinite(p["metric"])]
        for r in rows
        for p in r
        if np.isfinite(p["metric"]).any()
    ]
    low = min([float(f.min()) for f in finite] + [worst]) if finite else 1e-3
    norm = LogNorm(vmin=max(low, 1e-6), vmax=worst)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            if c >= len(row):
                ax.axis("off")
                continue
            _heatmap_panel(fig, ax, row[c], norm, worst, metric_name, legend=r == 0 and c == 0)
    fig.suptitle(
        f"final {metric_name}, mean over draws: colour, and in percent (± its 95% interval), numbers\n"
        "titles: separability numbers over the cells that trained, bootstrap 95% intervals over draws\n"
        "white dots: best weight decay of each learning rate; grey: learning rates left out of the fit"
    )
    fig.savefig(path, dpi=100)


def _heatmap_panel(
    fig: Figure, ax: Any, panel: dict[str, Any], norm: LogNorm, worst: float, metric_name: str, legend: bool
) -> None:
    metric = np.asarray(panel["metric"], np.float64)
    trained = np.asarray(panel.get("trained", np.isfinite(metric)), bool)
    shown = np.where(np.isfinite(metric) & trained, np.minimum(metric, worst), worst)
    image = ax.imshow(shown, origin="lower", cmap="viridis_r", norm=norm, aspect="auto")
    lrs, wds = panel["learning_rates"], panel["weight_decays"]
    ax.set_xticks(range(len(wds)), [f"{v:.0e}" for v in wds], rotation=45, fontsize=7)
    ax.set_yticks(range(len(lrs)), [f"{v:.0e}" for v in lrs], fontsize=7)
    ax.set_xlabel("weight decay")
    ax.set_ylabel("learning rate")
    error = np.asarray(panel["error"], np.float64)
    half = panel.get("error_half_width")
    for i in range(len(lrs)):
        for j in range(len(wds)):
            percent = 100 * error[i, j]
            if not trained[i, j]:
                text = "diverged"
            else:
                text = f"{percent:.{1 if percent < 10 else 0}f}"
                if half is not None and np.isfinite(half[i, j]):
                    text += f"\n±{100 * half[i, j]:.1f}"
            dark = norm(shown[i, j]) > 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    sep: Separability = panel["separability"]
    best_j = np.array([list(wds).index(w) for w in sep.best_weight_decay])
    used = np.asarray(sep.rows_used)
    ys = np.arange(len(lrs))
    ax.plot(
        best_j[used],
        ys[used],
        "o-",
        color="white",
        markersize=5,
        markeredgecolor="k",
        label="best wd of each lr (in the slope fit)",
    )
    if (~used).any():
        ax.plot(
            best_j[~used],
            ys[~used],
            "o",
            color="0.6",
            markersize=4,
            label="best wd, lr left out (did not train)",
        )
    best = panel.get("best_cell")
    if best is None:
        best = np.unravel_index(np.argmin(shown), shown.shape)
    ax.plot(best[1], best[0], "*", color="red", markersize=14, markeredgecolor="k", label="tuned cell")
    if legend:
        handles, labels = ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
    slope = f"{sep.slope:+.2f}" if np.isfinite(sep.slope) else "n/a"
    ci = panel.get("separability_ci95", {})
    ax.set_title(
        f"{panel['label']}: slope {slope}{reports.bracket(ci.get('slope'), 2)}, spread "
        f"{sep.spread_decades:.1f} dec,\ninteraction {sep.interaction:.2f}"
        f"{reports.bracket(ci.get('interaction'), 2)}",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, label=metric_name, shrink=0.85)


def timescale_curves(
    path: Path, results: Mapping[str, Mapping[str, Any]], train_sizes: Sequence[int], timescales: np.ndarray
) -> None:
    """Validation error and loss against the AdamW timescale in epochs, one curve per data size.

    Each curve is the mean over seeds with its 95% interval as a band; a dashed vertical line
    marks each size's best timescale (between grid points), so that lines that stay together say
    the best ``tau_epoch`` does not move with the amount of data.

    Args:
      path: the PNG to write.
      results: label -> ``{"metrics": {metric: {"ci95": [[{"mean", "ci95"}] per timescale] per
        size, "best_tau_epoch": [...] per size, "slope": {"mean", "ci95"}, "verdict": str}}}``.
      train_sizes: the sizes, in the order of the results' lists.
      timescales: the ``tau_epoch`` grid.
    """
    panels = [(label, metric, m) for label, r in results.items() for metric, m in r["metrics"].items()]
    fig = Figure(figsize=(6.2 * len(panels), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    for ax, (label, metric, result) in zip(axes, panels):
        scale = 100.0 if metric == "error" else 1.0
        for k, n in enumerate(train_sizes):
            color, marker = COLORS[k % len(COLORS)], MARKERS[k % len(MARKERS)]
            cells = result["ci95"][k]
            mean = scale * np.array([c["mean"] for c in cells])
            low = scale * np.array([c["ci95"][0] for c in cells])
            high = scale * np.array([c["ci95"][1] for c in cells])
            ax.plot(timescales, mean, marker=marker, color=color, label=f"{n:,} training examples")
            ax.fill_between(timescales, low, high, color=color, alpha=0.15, linewidth=0)
            ax.axvline(result["best_tau_epoch"][k], color=color, linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("timescale tau_epoch = 1 / (eta * lambda * iterations per epoch)")
        ax.set_ylabel("validation error (%)" if metric == "error" else "validation loss")
        slope = result["slope"]
        ax.set_title(
            f"{label}, validation {metric}: slope of log2(best tau) vs log2(size)\n"
            f"{slope['mean']:+.2f} [{slope['ci95'][0]:+.2f}, {slope['ci95'][1]:+.2f}]: {result['verdict']}",
            fontsize=9,
        )
        ax.legend(fontsize=8, title="mean over seeds, 95% band;\ndashed: best timescale", title_fontsize=8)
    fig.savefig(path, dpi=100)
