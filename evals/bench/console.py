"""What a run prints: progress bars, and each workload's figures as a table (ours, then each
baseline with ours / baseline)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

from framestream.evals.bench.record import Figure, Workload

__all__ = ["format_figure", "format_value", "progress", "workload_table"]

T = TypeVar("T")


def progress(items: Iterable[T], desc: str) -> Iterable[T]:
    """A progress bar on a terminal; nothing in a log (a redirected run prints its tables)."""
    return tqdm(items, desc=desc, leave=False, disable=None)


def format_value(value: float | bool | None, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if unit == "bytes":
        power = min(max(int(math.log(max(value, 1), 1024)), 1), 3)
        return f"{value / 1024**power:.3g} {('KiB', 'MiB', 'GiB')[power - 1]}"
    if isinstance(value, int):
        return f"{value}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


def format_figure(figure: Figure) -> str:
    """A figure's value; a difference smaller than its measurements' spread reads "within
    noise" (with the spread), since neither its size nor its sign can be told."""
    if figure.within_noise:
        return f"within noise (±{format_value(figure.spread, figure.unit)})"
    return format_value(figure.value, figure.unit)


def workload_table(workload: Workload) -> str:
    ours = workload.variants[workload.ours]
    ratios = workload.ratios()
    header = ["figure", "unit", workload.ours] + [f"{b} (ours/it)" for b in workload.baselines]
    rows = [header]
    for name, figure in ours.figures.items():
        row = [name, figure.unit, format_figure(figure)]
        for baseline in workload.baselines:
            theirs = workload.variants[baseline].figures.get(name)
            cell = "-" if theirs is None else format_figure(theirs)
            if name in ratios[baseline]:
                cell += f" ({ratios[baseline][name]:.2f}x)"
            row.append(cell)
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [workload.title]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
