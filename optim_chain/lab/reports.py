"""What every experiment writes: a fresh run folder, ``metrics.json``, markdown tables and the
record of the machine and the versions that produced the numbers."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from optim_chain.lab.config import Experiment


def environment() -> dict[str, Any]:
    """Versions, device and machine load, recorded with every run."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in load],
        "platform": platform.platform(),
    }


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar on stderr counting training steps (disabled: it draws nothing)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="step", file=sys.stderr, leave=False)


def describe(experiment: Experiment) -> dict[str, Any]:
    """The experiment as plain data, for ``metrics.json``."""
    described: dict[str, Any] = {
        "source": experiment.source,
        "name": experiment.name,
        "data": experiment.data,
        "model": {k: list(v) if isinstance(v, tuple) else v for k, v in experiment.model.items()},
        "training": vars(experiment.training),
        "optimizers": {label: spec.spec for label, spec in experiment.optimizers.items()},
    }
    if experiment.kind == "sweep":
        described["grids"] = {label: vars(grid) for label, grid in experiment.grids.items()}
        described["pairs"] = [list(p) for p in experiment.pairs]
        described["baseline_runs"] = experiment.baseline_runs
        described["refine"] = experiment.refine
    if experiment.study is not None:
        described["study"] = vars(experiment.study)
    return described


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table of text cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def output_dir(out_dir: str | Path, name: str) -> Path:
    """A new, empty folder for the run: ``<out_dir>/<name>``, or ``<name>-2``, ``-3``, ... when
    that one already holds an earlier run (a result is never overwritten)."""
    base = Path(out_dir)
    path, number = base / name, 1
    while path.exists() and (not path.is_dir() or any(path.iterdir())):
        number += 1
        path = base / f"{name}-{number}"
    path.mkdir(parents=True, exist_ok=True)
    if number > 1:
        print(f"{base / name} holds an earlier run; writing to {path}", file=sys.stderr)
    return path


def json_ready(value: Any) -> Any:
    """``value`` with NumPy arrays and scalars as lists and numbers, non-finite floats as ``None``."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Writes ``payload`` (see :func:`json_ready`) as indented JSON."""
    path.write_text(json.dumps(json_ready(payload), indent=1) + "\n")


def title(kind: str, name: str) -> str:
    """The summary's heading: the command, and the run's name where it says more."""
    return f"# optim-chain {kind}" if name == kind else f"# optim-chain {kind}: {name}"


def bracket(interval: dict[str, Any] | None, digits: int) -> str:
    """`` [low, high]`` of a 95% interval (signed, ``digits`` decimals), or nothing where there is none."""
    if not interval or not all(np.isfinite(interval["ci95"])):
        return ""
    low, high = interval["ci95"]
    return f" [{low:+.{digits}f}, {high:+.{digits}f}]"
