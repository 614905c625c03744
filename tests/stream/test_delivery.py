"""stream/delivery.py's InputLatency: a restyle session's input-to-output latency percentiles
(pure Python, times of our own)."""

from __future__ import annotations

import pytest

from framestream.stream.delivery import InputLatency


def test_percentiles_over_the_recent_frames() -> None:
    latency = InputLatency(window=20)
    assert latency.percentiles() is None
    latency.sent(None, 5.0)  # a frame without an input arrival (plain generation) counts not
    assert latency.percentiles() is None
    for k in range(40):  # latencies 0.01 .. 0.40 s; the window keeps the last 20
        latency.sent(100.0, 100.0 + (k + 1) / 100)
    assert latency.percentiles() == {"p50": 310.0, "p95": 390.0}


def test_the_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window"):
        InputLatency(window=0)
