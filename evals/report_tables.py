"""Markdown tables of ``stream bench`` records, as BENCHMARKS.md shows them.

Every table reads one workload of one record (:mod:`evals.bench.record`): a row per variant,
ours first; a baseline's cells carry ``(n×)`` = ours ÷ that row, and an optional published
anchor row (``{"label": ..., "figures": {name: [low, high]}}``) carries the same ratio as a
range. A column is shown when some row has its figure, so older records with fewer figures
render with fewer columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from framestream.evals.bench.record import SCHEMA, BenchRecord, Variant, Workload

__all__ = [
    "cluster_table",
    "fidelity_table",
    "generation_table",
    "kernels_table",
    "link",
    "provenance",
    "service_table",
    "vae_table",
    "vlm_concurrency_table",
    "vlm_stream_table",
]

RATIO_NOTE = "(n×) = ours ÷ that row: under 1, ours takes fewer ms or bytes; over 1, more frames/s."


@dataclass(frozen=True)
class _Column:
    figure: str
    header: str
    format: Callable[[float], str]


def _ms(v: float) -> str:
    return f"{v:,.1f}" if abs(v) >= 100 else f"{v:#.3g}"  # 505.0, 1,146.5, 13.2, 3.80, 0.284


def _signed_ms(v: float) -> str:
    return f"{v:+,.0f}" if abs(v) >= 10 else f"{v:+.1f}"


def _rate(v: float) -> str:
    return f"{v:,.1f}"


def _ratio(v: float) -> str:
    return f"{v:.2f}"


def _bytes(v: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= size:
            return f"{v / size:.3g} {unit}"
    return f"{v:.0f} B"


_GENERATION = (
    _Column("dit_ms", "DiT ms / step", _ms),
    _Column("decode_ms", "decode ms / step", _ms),
    _Column("fps_dit", "FPS, DiT only", _rate),
    _Column("fps", "FPS, decode in series", _rate),
    _Column("fps_overlap", "FPS, decode overlapped", _rate),
    _Column("step_ms_p95", "p95 ms / step", _ms),
    _Column("first_frame_ms", "first frame ms", _ms),
    _Column("switch_stall_ms", "switch stall ms", _signed_ms),
    _Column("switch_to_frame_ms", "switch → frame ms", _ms),
    _Column("cache_bytes", "KV cache / session", _bytes),
    _Column("late_over_early", "late ÷ early", _ratio),
)
_VLM_STREAM = (
    _Column("second_ms_p50", "ms per second of video, p50", _ms),
    _Column("second_ms_p95", "p95", _ms),
    _Column("cache_bytes", "KV cache", _bytes),
    _Column("cache_tokens", "tokens cached", lambda v: f"{v:,.0f}"),
    _Column("late_over_early", "late ÷ early", _ratio),
)
_VAE = (
    _Column("chunk_ms", "ms per chunk", _ms),
    _Column("chunk_ms_p90", "p90", _ms),
    _Column("fps", "FPS, decode alone", _rate),
)


def provenance(stem: str, data: dict[str, Any]) -> str:
    """``command → file · date · machine · versions · commit`` of any results JSON."""
    if data.get("schema") == SCHEMA or isinstance(data.get("run"), dict):
        run = data["run"]
        date, machine, versions = run["date"], run["machine"], run["versions"]
        commit = "commit not recorded"
        if run["git_revision"]:
            dirty = " + local changes" if run["git_dirty"] else ""
            commit = f"commit {run['git_revision'][:10]}{dirty}"
    else:
        date = data.get("date", "date not recorded")
        machine = data.get("device") or data.get("machine", "")
        versions = {k: data[k] for k in ("torch",) if k in data}
        commit = None
    parts = [link(stem), date[:10], machine]
    if versions:
        parts.append(", ".join(f"{k} {v}" for k, v in versions.items()))
    if commit:
        parts.append(commit)
    command = data.get("command")
    head = f"`{command}` → " if command else ""
    return head + " · ".join(p for p in parts if p)


def link(stem: str) -> str:
    return f"[`evals/results/{stem}.json`](evals/results/{stem}.json)"


def generation_table(record: BenchRecord, workload: str, anchor: dict | None = None) -> str:
    return _variant_table(record.suites["generation"][workload], _GENERATION, anchor)


def vlm_stream_table(record: BenchRecord) -> str:
    return _variant_table(record.suites["understanding"]["streaming_vlm"], _VLM_STREAM, None)


def vae_table(record: BenchRecord, anchor: dict | None = None) -> str:
    return _variant_table(record.suites["vae"]["vae_stream_decode"], _VAE, anchor)


def vlm_concurrency_table(record: BenchRecord, anchor: dict | None = None) -> str:
    """A row per stream count: ours' p50 and p95 per second of video, whether that is real
    time, and each baseline's p50 with its ratio."""
    w = record.suites["understanding"]["streaming_vlm_concurrency"]
    ours = w.variants[w.ours]
    counts = sorted({int(k.rsplit("_", 1)[1]) for k in ours.figures if k.startswith("second_ms_p")})
    header = ["concurrent streams", f"`{w.ours}` p50 ms per second of video", "p95", "real time"]
    header += [f"`{b}` p50" for b in w.baselines]
    ratios = w.ratios()
    rows = []
    for n in counts:
        p50, p95 = ours.value(f"second_ms_p50_{n}"), ours.value(f"second_ms_p95_{n}")
        row = [str(n), _ms(p50), _ms(p95), "yes" if p95 < 1000 else "no"]
        for b in w.baselines:
            theirs = w.variants[b].value(f"second_ms_p50_{n}")
            ratio = ratios[b].get(f"second_ms_p50_{n}")
            row.append("—" if theirs is None else f"{_ms(theirs)} ({ratio:.2f}×)")
        rows.append(row)
    if anchor:
        low, high = anchor["figures"]["second_ms_p50_1"]
        mine = ours.value("second_ms_p50_1")
        span = f"{_ms(low)}–{_ms(high)} ({mine / high:.2f}–{mine / low:.2f}×)"
        rows.append([f"1: {anchor['label']}", span, "", "yes"] + [""] * len(w.baselines))
    best = ", ".join(f"`{name}` {v.value('real_time_streams')}" for name, v in w.variants.items())
    table = _markdown(header, rows)
    return f"{table}\n\nMost streams in real time (p95 < 1 s), of those tried: {best}."


def service_table(record: BenchRecord) -> str:
    """A row per variant and client count: frames/s delivered, ms per frame, and the server's
    overhead per frame over stepping the pipeline directly."""
    w = record.suites["service"]["longlive_websocket"]
    header = ["variant", "clients", "frames/s delivered", "ms per frame", "overhead per frame"]
    rows = []
    for name, variant in w.variants.items():
        counts = sorted(int(k.rsplit("_", 1)[1]) for k in variant.figures if k.startswith("fps_"))
        for n in counts:
            overhead = variant.figures.get(f"overhead_ms_{n}")
            fraction = variant.value(f"overhead_fraction_{n}")
            if overhead is None:
                cell = "—"
            elif overhead.within_noise:
                cell = f"within noise (±{_ms(overhead.spread)} ms)"
            else:
                cell = f"{_signed_ms(overhead.value)} ms ({fraction:+.0%})"
            rows.append(
                [
                    _label(w, name),
                    str(n),
                    _rate(variant.value(f"fps_{n}")),
                    _ms(variant.value(f"ms_per_frame_{n}")),
                    cell,
                ]
            )
    return _markdown(header, rows)


def cluster_table(record: BenchRecord, workload: str) -> str:
    """A row per variant of a ``cluster`` workload: frames/s delivered to each client count,
    and the Ray hop per frame where measured."""
    w = record.suites["cluster"][workload]
    clients = w.config["clients"]
    columns = [_Column(f"fps_{n}", f"frames/s, {n} clients", _rate) for n in clients]
    columns += [
        _Column(f"hop_ms_{n}", f"Ray hop, ms a frame, {n} clients", _signed_ms) for n in clients
    ]
    return _variant_table(w, columns, None)


def kernels_table(record: BenchRecord) -> str:
    """A row per attention case: Triton (ours), gathered SDPA, the fused gather + SDPA where the
    record has it, the dense floor, the twin; Triton ÷ dense."""
    cases = [w for w in record.suites["kernels"].values() if "triton" in w.variants]
    fused = any("sdpa_fused" in w.variants for w in cases)
    header = [
        "case",
        "Triton (gather + RoPE in kernel)",
        "gathered SDPA",
        *(["fused gather + SDPA"] if fused else []),
        "dense SDPA (floor)",
        "torch twin (fp32)",
        "Triton ÷ dense",
        "rel. error",
    ]
    rows = []
    for w in cases:
        rows.append(
            [
                w.title,
                _kernel_time(w.variants["triton"], flops=True),
                _kernel_time(w.variants["sdpa_paged"]),
                *([_kernel_time(w.variants["sdpa_fused"], flops=True)] if fused else []),
                _kernel_time(w.variants["dense"], flops=True),
                _kernel_time(w.variants["twin"]),
                f"{w.ratios()['dense']['ms']:.1f}×",
                f"{w.config['rel_err_vs_twin']:.1e}",
            ]
        )
    return _markdown(header, rows)


def _kernel_time(variant: Variant, flops: bool = False) -> str:
    cell = f"{_ms(variant.value('ms'))} ms"
    return f"{cell} ({variant.value('tflops'):.0f} TFLOP/s)" if flops else cell


def _variant_table(w: Workload, columns: Sequence[_Column], anchor: dict | None) -> str:
    ratios = w.ratios()
    shown = [c for c in columns if any(v.value(c.figure) is not None for v in w.variants.values())]
    rows = []
    for name, variant in w.variants.items():
        row = [_label(w, name)]
        for c in shown:
            row.append(_cell(variant, c, ratios.get(name, {}).get(c.figure)))
        rows.append(row)
    if anchor:
        ours = w.variants[w.ours]
        row = [anchor["label"]]
        for c in shown:
            span = anchor["figures"].get(c.figure)
            mine = ours.value(c.figure)
            if span is None:
                row.append("—")
                continue
            low, high = span
            cell = f"{c.format(low)}–{c.format(high)}"
            if mine is not None:
                cell += f" ({mine / high:.2f}–{mine / low:.2f}×)"
            row.append(cell)
        rows.append(row)
    return _markdown(["", *(c.header for c in shown)], rows) + f"\n\n{RATIO_NOTE}"


def _cell(variant: Variant, column: _Column, ratio: float | None) -> str:
    figure = variant.figures.get(column.figure)
    if figure is None or figure.value is None:
        return "—"
    if figure.within_noise:  # a difference smaller than its spread: neither size nor sign
        return f"within noise (±{column.format(figure.spread).lstrip('+')})"
    return column.format(figure.value) + ("" if ratio is None else f" ({ratio:.2f}×)")


def _label(w: Workload, name: str) -> str:
    mark = " (ours)" if name == w.ours and name != "ours" else ""
    return f"`{name}`{mark}: {w.variants[name].description}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fidelity_table(data: dict[str, Any]) -> str:
    """One row per comparison of a ``stream eval fidelity`` record."""
    rows = [
        "| loop | compared | worst difference | equal | published commit |",
        "|---|---|---|---|---|",
    ]
    for result in data["results"]:
        name = result["pipeline"]
        if "global_sink" in result:
            name += f", `global_sink` {str(result['global_sink']).lower()}"
        unit, items = next(
            (key, result[key]) for key in ("chunks", "blocks", "rounds") if key in result
        )
        if unit == "rounds":  # token bookkeeping: equal or not, no magnitude
            worst = "kept ids, K/V rows and positions identical" if result["all_equal"] else "-"
        else:
            worst = f"{max(row['max_rel'] for row in items):.1e} relative (latents)"
        verdict = "yes" if result["all_equal"] else "**no**"
        commit = (result.get("commit") or "not recorded")[:10]
        rows.append(f"| {name} | {len(items)} {unit} | {worst} | {verdict} | `{commit}` |")
    return "\n".join(rows)
