"""What a ``stream bench`` run writes: one JSON record per run.

::

    BenchRecord
      schema, command (the exact command line), run (RunInfo: date, git, machine, versions),
      config (every setting of the run)
      suites: {suite name: {workload name: Workload}}
        Workload: title, config, ours (the variant the others are compared with)
          variants: {name: Variant}            the first one is ours, the rest baselines
            Variant: description, figures {name: Figure}, series {name: Series}
          ratios: {baseline: {figure: ours / baseline}}   (written, derived from the figures)

A figure is one number (a median, a percentile, a count); a series is what it summarises
(``y`` against ``x``: milliseconds per chunk against the chunk index). Every ratio is ours
divided by the baseline, for every numeric figure both variants have, whatever its unit: below
1 means fewer milliseconds or bytes, above 1 more frames per second. A figure that is a
difference of two measurements (a stall, an overhead) keeps their spread and ``within_noise``;
one within noise gets no ratio.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # timing imports torch; a record is read without it
    from framestream.evals.bench.timing import Difference

__all__ = ["SCHEMA", "BenchRecord", "Figure", "RunInfo", "Series", "Variant", "Workload"]

SCHEMA = "stream-bench/1"


@dataclass(slots=True)
class Series:
    """``y`` measured at each ``x``: the raw values behind figures, and what plots draw."""

    label: str  # what y is, e.g. "DiT + decode per chunk"
    unit: str  # of y: "ms", "bytes", "fps", ...
    x_label: str  # e.g. "chunk", "second of video", "clients"
    x: list[float]
    y: list[float]

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"series {self.label!r}: {len(self.x)} x values for {len(self.y)} y")


@dataclass(slots=True)
class Figure:
    """One reported number. A figure that is the difference of two measurements also keeps
    the spread of those measurements, and whether it is within it (then it says nothing: it is
    printed as "within noise", and no ratio is taken of it)."""

    label: str  # e.g. "DiT ms per chunk, median of the steady chunks"
    unit: str
    value: float | int | bool | None  # None: not measurable in this run (said in the label)
    spread: float | None = None  # a difference's: the larger interquartile range of its samples
    within_noise: bool | None = None  # a difference's: |value| <= spread; None: not a difference


@dataclass(slots=True)
class Variant:
    """One way of running a workload: ours, or a baseline run beside it in the same process."""

    description: str
    figures: dict[str, Figure] = field(default_factory=dict)
    series: dict[str, Series] = field(default_factory=dict)

    def add_figure(self, name: str, value: float | bool | None, unit: str, label: str) -> None:
        self.figures[name] = Figure(label, unit, value)

    def add_difference(self, name: str, difference: Difference, unit: str, label: str) -> None:
        """A figure that is one measurement minus another (see :class:`Figure`)."""
        self.figures[name] = Figure(
            label, unit, difference.value, difference.spread, difference.within_noise
        )

    def value(self, name: str) -> float | bool | None:
        figure = self.figures.get(name)
        return None if figure is None else figure.value


@dataclass(slots=True)
class Workload:
    """One measured thing (a pipeline, a kernel case, the server) under several variants."""

    title: str
    config: dict[str, Any]
    variants: dict[str, Variant]
    ours: str

    def __post_init__(self) -> None:
        if self.ours not in self.variants:
            raise ValueError(f"workload {self.title!r}: ours={self.ours!r} is not a variant")

    @property
    def baselines(self) -> list[str]:
        return [name for name in self.variants if name != self.ours]

    def ratios(self) -> dict[str, dict[str, float]]:
        """``ours / baseline`` for every finite, non-zero numeric figure both have, unless
        either is a difference within noise."""
        ours = self.variants[self.ours]
        out = {}
        for name in self.baselines:
            baseline = self.variants[name]
            out[name] = {
                key: mine / theirs
                for key, figure in ours.figures.items()
                if _number(mine := figure.value)
                and _number(theirs := baseline.value(key))
                and theirs != 0
                and not figure.within_noise
                and not baseline.figures[key].within_noise
            }
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "config": self.config,
            "ours": self.ours,
            "variants": {name: asdict(variant) for name, variant in self.variants.items()},
            "ratios": self.ratios(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workload:
        variants = {
            name: Variant(
                v["description"],
                {k: Figure(**f) for k, f in v["figures"].items()},
                {k: Series(**s) for k, s in v["series"].items()},
            )
            for name, v in data["variants"].items()
        }
        return cls(data["title"], data["config"], variants, data["ours"])


@dataclass(slots=True)
class RunInfo:
    """Where and when a run happened, and with what."""

    date: str  # ISO 8601, UTC
    git_revision: str | None  # the commit checked out; None outside a git checkout
    git_dirty: bool | None  # uncommitted changes to tracked files
    machine: str  # e.g. "2-core Intel Xeon ..." or "NVIDIA H200 (139.8 GiB), 16-core host"
    device: str  # the torch device name: "cpu" or the GPU's name
    platform: str
    python: str
    versions: dict[str, str]  # torch, cuda, cudnn, triton, transformers, diffusers


@dataclass(slots=True)
class BenchRecord:
    """A whole run; written after every workload, so a run cut short keeps what it measured."""

    command: str
    run: RunInfo
    config: dict[str, Any]
    suites: dict[str, dict[str, Workload]] = field(default_factory=dict)
    schema: str = SCHEMA

    def add(self, suite: str, name: str, workload: Workload) -> None:
        self.suites.setdefault(suite, {})[name] = workload

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "command": self.command,
            "run": asdict(self.run),
            "config": self.config,
            "suites": {
                suite: {name: w.to_json() for name, w in workloads.items()}
                for suite, workloads in self.suites.items()
            },
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_json(), indent=1, default=_plain)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(path)  # a reader (or a kill mid-write) never sees half a file

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchRecord:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} record (schema {data.get('schema')!r})")
        return cls(
            command=data["command"],
            run=RunInfo(**data["run"]),
            config=data["config"],
            suites={
                suite: {name: Workload.from_json(w) for name, w in workloads.items()}
                for suite, workloads in data["suites"].items()
            },
        )

    @classmethod
    def read(cls, path: Path) -> BenchRecord:
        return cls.from_json(json.loads(Path(path).read_text()))


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _plain(value: object) -> object:
    """JSON for what ``json`` does not know: numpy scalars, paths, tuples in configs."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
