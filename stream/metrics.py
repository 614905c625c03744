"""Prometheus text exposition (format 0.0.4) of the service's counters, without a dependency.

:class:`Exposition` writes families (``# HELP``, ``# TYPE``, samples); :class:`ServiceCounters`
holds what the server counts itself; :func:`render_metrics` joins them with the engine's stats
and the cache pools' books::

    stream_sessions{pipeline="longlive"} 2
    stream_step_seconds{quantile="0.5"} 0.041
    stream_step_seconds_count 118
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["CONTENT_TYPE", "Exposition", "ServiceCounters", "quantile", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = Mapping[str, str]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Exposition:
    """Accumulates metric families and renders them as Prometheus text."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def _family(self, name: str, kind: str, help_: str) -> None:
        self._lines.append(f"# HELP {name} {help_}")
        self._lines.append(f"# TYPE {name} {kind}")

    def _sample(self, name: str, value: float, labels: Labels | None = None) -> None:
        if labels:
            text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
            self._lines.append(f"{name}{{{text}}} {_number(value)}")
        else:
            self._lines.append(f"{name} {_number(value)}")

    def counter(self, name: str, help_: str, value: float | Iterable[tuple[Labels, float]]) -> None:
        """A counter; ``value`` is one number or ``(labels, number)`` pairs."""
        self._metric(name, "counter", help_, value)

    def gauge(self, name: str, help_: str, value: float | Iterable[tuple[Labels, float]]) -> None:
        """A gauge; ``value`` is one number or ``(labels, number)`` pairs."""
        self._metric(name, "gauge", help_, value)

    def summary(
        self,
        name: str,
        help_: str,
        values: Sequence[float],
        count: int,
        quantiles: Sequence[float] = (0.5, 0.9, 0.99),
    ) -> None:
        """Quantiles over ``values`` (a recent window) and the all-time observation ``count``."""
        self._family(name, "summary", help_)
        for q in quantiles:
            self._sample(name, quantile(values, q), {"quantile": repr(q)})
        self._sample(f"{name}_count", count)

    def render(self) -> str:
        return "\n".join(self._lines) + "\n"

    def _metric(
        self, name: str, kind: str, help_: str, value: float | Iterable[tuple[Labels, float]]
    ) -> None:
        self._family(name, kind, help_)
        if isinstance(value, int | float):
            self._sample(name, value)
        else:
            for labels, number in value:
                self._sample(name, number, labels)


@dataclass
class ServiceCounters:
    """What the server counts itself (touched only on the event loop)."""

    connections: int = 0  # open WebSocket connections
    unauthenticated: int = 0  # of them, those that have not said hello yet
    frames_sent: int = 0
    messages_received: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)  # code -> sent


def render_metrics(
    counters: ServiceCounters,
    stats: object,
    pools: Iterable[object] = (),
    pipelines: Iterable[str] = (),
) -> str:
    """The service's metrics as Prometheus text.

    Args:
        counters: the server's own counters.
        stats: the engine's :class:`~stream.engine.EngineStats`.
        pools: the cache pools' :class:`~stream.kvcache.PoolStats`.
        pipelines: every pipeline name, so idle ones report 0 sessions.
    """
    out = Exposition()
    sessions = dict.fromkeys(pipelines, 0) | dict(stats.sessions)
    out.gauge(
        "stream_sessions",
        "Live sessions per pipeline.",
        [({"pipeline": name}, n) for name, n in sorted(sessions.items())],
    )
    out.gauge("stream_connections", "Open WebSocket connections.", counters.connections)
    out.gauge(
        "stream_connections_before_hello",
        "Open connections that have not said hello yet.",
        counters.unauthenticated,
    )
    out.gauge(
        "stream_degraded",
        "1 while realtime sessions miss their deadlines (the engine's health), else 0.",
        int(stats.health != "ok"),
    )
    out.counter("stream_late_steps_total", "Realtime steps that came late.", stats.late_steps)
    out.gauge(
        "stream_realtime_load",
        "Share of the device's time the admitted realtime sessions claim (by calibration).",
        stats.load,
    )
    out.counter("stream_frames_generated_total", "Frames generated.", stats.frames_generated)
    out.counter("stream_frames_sent_total", "Frames sent to clients.", counters.frames_sent)
    out.counter("stream_frames_dropped_total", "Frames slow clients lost.", stats.frames_dropped)
    out.summary(
        "stream_step_seconds", "Duration of engine steps (recent).", stats.step_seconds, stats.steps
    )
    pools = list(pools)
    used = sum(p.used_blocks * p.bytes_per_block for p in pools)
    capacity = sum(p.num_blocks * p.bytes_per_block for p in pools)
    out.gauge("stream_cache_bytes_used", "KV-cache bytes allocated to sessions.", used)
    out.gauge("stream_cache_bytes_capacity", "KV-cache bytes in the pools.", capacity)
    errors = collections.Counter(counters.errors)
    errors.update(stats.errors)
    out.counter(
        "stream_errors_total",
        "Errors sent to clients and sessions ended by engine errors, per code.",
        [({"code": code}, n) for code, n in sorted(errors.items())],
    )
    out.counter(
        "stream_messages_received_total",
        "WebSocket messages received from clients.",
        counters.messages_received,
    )
    return out.render()
