"""Issue 10's full-size targets, each read from one ``stream bench`` record of the H200.

A row per target: the goal, what the record measured for ``ours``, the published figure it is
set against, and whether it is met. The causes of the gaps are prose in BENCHMARKS.md's
template, next to the table, because they are analysis rather than figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from framestream.evals.bench.record import BenchRecord

__all__ = ["TARGETS", "targets_table"]

Reader = Callable[[BenchRecord], float | None]


@dataclass(frozen=True)
class FigureTarget:
    label: str
    read: Reader
    goal: float
    at_most: bool  # True: met when measured <= goal; False: when measured >= goal
    unit: str
    published: str  # the published loop's figure, as text ("" when none)


def _ours(suite: str, workload: str, figure: str) -> Reader:
    return _variant(suite, workload, None, figure)


def _variant(suite: str, workload: str, variant: str | None, figure: str) -> Reader:
    """``figure`` of ``variant`` (None: ours) in ``suite``/``workload``, if the record has it."""

    def read(record: BenchRecord) -> float | None:
        w = record.suites.get(suite, {}).get(workload)
        if w is None or (variant or w.ours) not in w.variants:
            return None
        return w.variants[variant or w.ours].value(figure)

    return read


def _kernel_ratio(workload: str, variant: str, floor: str) -> Reader:
    def read(record: BenchRecord) -> float | None:
        w = record.suites.get("kernels", {}).get(workload)
        if w is None or variant not in w.variants:
            return None
        return w.variants[variant].value("ms") / w.variants[floor].value("ms")

    return read


# the published cache: 12 frames x 1,560 tokens x 30 layers x (K, V) x 1,536 x 2 bytes (bf16)
_LONGLIVE_KV_BYTES = 12 * 1560 * 30 * 2 * 1536 * 2

TARGETS = (
    FigureTarget(
        "LongLive end to end, decode overlapped",
        _ours("generation", "longlive", "fps_overlap"),
        40,
        False,
        "FPS",
        "18 (decode in series)",
    ),
    FigureTarget(
        "LongLive DiT alone",
        _ours("generation", "longlive", "fps_dit"),
        55,
        False,
        "FPS",
        "28.5",
    ),
    FigureTarget(
        "Wan VAE streaming decode of a 3-latent-frame chunk",
        _ours("vae", "vae_stream_decode", "chunk_ms"),
        100,
        True,
        "ms",
        "245–250",
    ),
    FigureTarget(
        "Rolling Forcing end to end, decode overlapped",
        _ours("generation", "rolling_forcing", "fps_overlap"),
        30,
        False,
        "FPS",
        "≈ 14 (20.8 DiT alone)",
    ),
    FigureTarget(
        "LongLive prompt switch: recache stall",
        _ours("generation", "longlive", "switch_stall_ms"),
        150,
        True,
        "ms",
        "297–301",
    ),
    FigureTarget(
        "LongLive prompt switch → first frame under the new prompt",
        _ours("generation", "longlive", "switch_to_frame_ms"),
        750,
        True,
        "ms",
        "",
    ),
    FigureTarget(
        "new LongLive session → first frame (models loaded)",
        _ours("generation", "longlive", "first_frame_ms"),
        500,
        True,
        "ms",
        "",
    ),
    FigureTarget(
        "new Rolling Forcing session → first frame",
        _ours("generation", "rolling_forcing", "first_frame_ms"),
        500,
        True,
        "ms",
        "",
    ),
    FigureTarget(
        "StreamingVLM streams in real time (p95 < 1 s a second)",
        _ours("understanding", "streaming_vlm_concurrency", "real_time_streams"),
        16,
        False,
        "streams",
        "",
    ),
    FigureTarget(
        "StreamingVLM one stream, ms per second of video (p50)",
        _ours("understanding", "streaming_vlm", "second_ms_p50"),
        300,
        True,
        "ms",
        "616–635",
    ),
    FigureTarget(
        "LongLive step cost, last third ÷ first third of the stream",
        _ours("generation", "longlive", "late_over_early"),
        1.05,
        True,
        "×",
        "",
    ),
    FigureTarget(
        "paged attention with fused RoPE ÷ cuDNN SDPA on contiguous keys (LongLive chunk)",
        _kernel_ratio("wan_chunk", "sdpa_fused", "dense"),
        1.15,
        True,
        "×",
        "",
    ),
    FigureTarget(
        "KV cache of a LongLive session at 832×480",
        lambda record: _gb(_ours("generation", "longlive", "cache_bytes")(record)),
        _LONGLIVE_KV_BYTES / 1e9,
        True,
        "GB",
        "3.45",
    ),
    FigureTarget(
        "the same with the FP8 KV cache (`fp8kv`)",
        lambda record: _gb(_variant("generation", "longlive", "fp8kv", "cache_bytes")(record)),
        _LONGLIVE_KV_BYTES / 2 / 1e9,
        True,
        "GB",
        "",
    ),
)


def _gb(value: float | None) -> float | None:
    return None if value is None else value / 1e9


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def targets_table(records: Sequence[tuple[str, BenchRecord]]) -> str:
    """The :data:`TARGETS` against ``records`` (``(stem, record)``, newest first): each target
    reads the newest record that has its figure, and names an older one it came from."""
    lines = ["| target | goal | measured | published | met |", "|---|---|---|---|---|"]
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
        lines.append(f"| {t.label} | {goal} | {measured} | {t.published or '—'} | {met} |")
    return "\n".join(lines)
