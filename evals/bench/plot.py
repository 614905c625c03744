"""One PNG per suite of a record, next to its JSON: a panel per series, a line per variant."""

from __future__ import annotations

import math
from pathlib import Path

from framestream.evals.bench.record import BenchRecord, Workload

__all__ = ["plot_path", "plot_suite"]

_COLUMNS = 3


def plot_path(json_path: Path, suite: str) -> Path:
    """``bench.json`` -> ``bench.generation.png``."""
    return json_path.with_name(f"{json_path.stem}.{suite}.png")


def plot_suite(record: BenchRecord, suite: str, json_path: Path) -> Path:
    """Draw every series of ``suite``; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels = [
        (workload, name)
        for workload in record.suites[suite].values()
        for name in _series_names(workload) or _figure_names(workload)
    ]
    rows = math.ceil(len(panels) / _COLUMNS)
    columns = min(_COLUMNS, len(panels))
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.4 * rows), squeeze=False)
    for ax, (workload, name) in zip(axes.flat, panels, strict=False):
        if _series_names(workload):
            _draw(ax, workload, name)
        else:
            _bars(ax, workload, name)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    run = record.run
    fig.suptitle(f"stream bench {suite}: {run.machine}, {run.date[:10]}", fontsize=10)
    fig.tight_layout()
    path = plot_path(json_path, suite)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _series_names(workload: Workload) -> list[str]:
    names: dict[str, None] = {}
    for variant in workload.variants.values():
        names.update(dict.fromkeys(variant.series))
    return list(names)


def _figure_names(workload: Workload) -> list[str]:
    """A workload without series (a kernel case) is drawn as bars, one panel per figure."""
    return list(workload.variants[workload.ours].figures)


def _bars(ax, workload: Workload, name: str) -> None:
    names = [v for v, variant in workload.variants.items() if name in variant.figures]
    figure = workload.variants[workload.ours].figures[name]
    ax.bar(names, [workload.variants[v].figures[name].value for v in names])
    ax.set_title(f"{workload.title}\n{figure.label}", fontsize=8)
    ax.set_ylabel(figure.unit, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, axis="y")


def _draw(ax, workload: Workload, name: str) -> None:
    from matplotlib.ticker import MaxNLocator

    drawn = [
        (v, variant.series[name])
        for v, variant in workload.variants.items()
        if name in variant.series
    ]
    first = drawn[0][1]
    scale, unit = (2**-20, "MiB") if first.unit == "bytes" else (1.0, first.unit)
    for variant_name, series in drawn:
        ax.plot(series.x, [y * scale for y in series.y], marker=".", label=variant_name)
    ax.set_title(f"{workload.title}\n{first.label}", fontsize=8)
    ax.set_xlabel(first.x_label, fontsize=8)
    ax.set_ylabel(unit, fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
