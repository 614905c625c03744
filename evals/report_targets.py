"""Issue 10's full-size targets, each read from one ``stream bench`` record of the H200.

A row per target: the goal, what the record measured for ``ours``, the published loop's figure
it is set against, and whether it is met. The published figures are read from the anchors
record (``evals/results/anchors_h200_*.json``, transcribed by hand from
``shared/reference/anchors_h200.md``): a cell shows a figure as transcribed, or one derived
from transcribed figures, and a note under the table gives each derivation's arithmetic. The
causes of the gaps are prose in BENCHMARKS.md's template, next to the table, because they are
analysis rather than figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from framestream.evals.bench.record import BenchRecord

__all__ = ["TARGETS", "rolling_forcing_published_fps", "targets_table"]

Reader = Callable[[BenchRecord], float | None]
Anchors = dict[str, Any]  # the anchors record as plain JSON


@dataclass(frozen=True)
class Published:
    """The published loop's figure for a target: a ``[low, high]`` span read from the anchors,
    as transcribed, or ``derived`` from transcribed figures (then ``derived`` gives the
    arithmetic, for the note under the table)."""

    span: Callable[[Anchors], tuple[float, float]]
    note: str = ""  # what the span is, when it is not what the target measures
    derived: Callable[[Anchors], str] | None = None


@dataclass(frozen=True)
class FigureTarget:
    label: str
    read: Reader
    goal: float
    at_most: bool  # True: met when measured <= goal; False: when measured >= goal
    unit: str
    published: Published | None = None  # None: the published loop has no such figure


def _ours(suite: str, workload: str, figure: str) -> Reader:
    def read(record: BenchRecord) -> float | None:
        w = record.suites.get(suite, {}).get(workload)
        if w is None or w.ours not in w.variants:
            return None
        return w.variants[w.ours].value(figure)

    return read


def _kernel_ratio(workload: str, variant: str, floor: str) -> Reader:
    def read(record: BenchRecord) -> float | None:
        w = record.suites.get("kernels", {}).get(workload)
        if w is None or variant not in w.variants:
            return None
        return w.variants[variant].value("ms") / w.variants[floor].value("ms")

    return read


def _anchor(section: str, figure: str) -> Callable[[Anchors], tuple[float, float]]:
    def span(anchors: Anchors) -> tuple[float, float]:
        low, high = anchors[section]["figures"][figure]
        return low, high

    return span


def rolling_forcing_published_fps(anchors: Anchors) -> tuple[float, float]:
    """Derived, not transcribed: the published Rolling Forcing loop end to end, were the
    published LongLive VAE decode run in series after each step (the reference decodes the
    whole video at the end, so it has no such figure): ``frames per step / (DiT ms + VAE ms)``,
    slowest run with slowest, fastest with fastest."""
    frames = anchors["rolling_forcing"]["frames_per_step"]
    dit_low, dit_high = anchors["rolling_forcing"]["figures"]["dit_ms"]
    vae_low, vae_high = anchors["vae"]["figures"]["chunk_ms"]
    return 1e3 * frames / (dit_high + vae_high), 1e3 * frames / (dit_low + vae_low)


_RF_DERIVATION = (
    "Rolling Forcing's published loop has no end-to-end figure (it decodes the whole video at "
    "the end), so this one is derived from transcribed figures: {frames} frames a step ÷ "
    "({dit[0]:.1f}–{dit[1]:.1f} ms of its DiT + {vae[0]:.1f}–{vae[1]:.1f} ms of the published "
    "VAE chunk) = {fps[0]:.1f}–{fps[1]:.1f} FPS"
)


def _rf_derivation(anchors: Anchors) -> str:
    return _RF_DERIVATION.format(
        frames=anchors["rolling_forcing"]["frames_per_step"],
        dit=anchors["rolling_forcing"]["figures"]["dit_ms"],
        vae=anchors["vae"]["figures"]["chunk_ms"],
        fps=rolling_forcing_published_fps(anchors),
    )


TARGETS = (
    FigureTarget(
        "LongLive end to end, decode overlapped",
        _ours("generation", "longlive", "fps_overlap"),
        40,
        False,
        "FPS",
        Published(_anchor("longlive", "fps"), "decode in series"),
    ),
    FigureTarget(
        "LongLive DiT alone",
        _ours("generation", "longlive", "fps_dit"),
        55,
        False,
        "FPS",
        Published(_anchor("longlive", "fps_dit")),
    ),
    FigureTarget(
        "Wan VAE streaming decode of a 3-latent-frame chunk",
        _ours("vae", "vae_stream_decode", "chunk_ms"),
        100,
        True,
        "ms",
        Published(_anchor("vae", "chunk_ms")),
    ),
    FigureTarget(
        "Rolling Forcing end to end, decode overlapped",
        _ours("generation", "rolling_forcing", "fps_overlap"),
        30,
        False,
        "FPS",
        Published(rolling_forcing_published_fps, "decode in series", _rf_derivation),
    ),
    FigureTarget(
        "LongLive prompt switch: recache stall",
        _ours("generation", "longlive", "switch_stall_ms"),
        150,
        True,
        "ms",
        Published(_anchor("longlive", "switch_stall_ms")),
    ),
    FigureTarget(
        "LongLive prompt switch → first frame under the new prompt",
        _ours("generation", "longlive", "switch_to_frame_ms"),
        750,
        True,
        "ms",
    ),
    FigureTarget(
        "new LongLive session → first frame (models loaded)",
        _ours("generation", "longlive", "first_frame_ms"),
        500,
        True,
        "ms",
    ),
    FigureTarget(
        "new Rolling Forcing session → first frame",
        _ours("generation", "rolling_forcing", "first_frame_ms"),
        500,
        True,
        "ms",
    ),
    FigureTarget(
        "StreamingVLM streams in real time (p95 < 1 s a second)",
        _ours("understanding", "streaming_vlm_concurrency", "real_time_streams"),
        16,
        False,
        "streams",
    ),
    FigureTarget(
        "StreamingVLM one stream, ms per second of video (p50)",
        _ours("understanding", "streaming_vlm", "second_ms_p50"),
        300,
        True,
        "ms",
        Published(_anchor("streaming_vlm", "second_ms_p50_1")),
    ),
    FigureTarget(
        "LongLive step cost, last third ÷ first third of the stream",
        _ours("generation", "longlive", "late_over_early"),
        1.05,
        True,
        "×",
    ),
    FigureTarget(
        "paged attention with fused RoPE ÷ cuDNN SDPA on contiguous keys (LongLive chunk)",
        _kernel_ratio("wan_chunk", "sdpa_fused", "dense"),
        1.15,
        True,
        "×",
    ),
)


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _published(p: Published | None, anchors: Anchors, notes: list[str]) -> str:
    if p is None:
        return "—"
    low, high = p.span(anchors)
    extras = [p.note] if p.note else []
    if p.derived is not None:
        notes.append(p.derived(anchors))
        extras.append(f"derived, note {len(notes)}")
    cell = f"{low:.1f}–{high:.1f}"
    return f"{cell} ({'; '.join(extras)})" if extras else cell


def targets_table(records: Sequence[tuple[str, BenchRecord]], anchors: Anchors) -> str:
    """The :data:`TARGETS` against ``records`` (``(stem, record)``, newest first) and the
    published figures of ``anchors`` (the anchors record as plain JSON): each target reads the
    newest record that has its figure, and names an older one it came from. Under the table,
    where the published figures come from and the arithmetic of every derived one."""
    lines = [
        "| target | goal | measured | published (transcribed) | met |",
        "|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for t in TARGETS:
        unit = t.unit if t.unit == "×" else f" {t.unit}"
        goal = f"{'≤' if t.at_most else '≥'} {t.goal:.3g}{unit}"
        found = next(((stem, v) for stem, r in records if (v := t.read(r)) is not None), None)
        if found is None:
            measured, met = "not measured", "—"
        else:
            stem, value = found
            if value == 1 and unit.endswith("s"):  # "1 stream", not "1 streams"
                unit = unit[:-1]
            measured = (f"{value:.2f}" if t.unit == "×" else _number(value)) + unit
            if stem != records[0][0]:
                measured += f" (`{stem}`)"
            met = "**yes**" if (value <= t.goal if t.at_most else value >= t.goal) else "no"
        published = _published(t.published, anchors, notes)
        lines.append(f"| {t.label} | {goal} | {measured} | {published} | {met} |")
    source = anchors.get("transcribed_from", "the anchors record")
    lines += [
        "",
        f"Published: the published loops on the same kind of H200, transcribed from `{source}` "
        "(low–high of its two runs), not measured here.",
    ]
    lines += [f"\nNote {i}: {note}." for i, note in enumerate(notes, 1)]
    return "\n".join(lines)
