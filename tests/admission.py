"""Engine settings under which a test server admits every session by compute.

The pipelines are timed at warm-up (stream.scheduler's admission by compute) on a machine whose
load varies while the suite runs: a test that is not about admission must not fail on how busy
the machine was at that moment. Tests of admission keep the defaults."""

from __future__ import annotations

from typing import Any

__all__ = ["ANY_COMPUTE"]

ANY_COMPUTE: dict[str, Any] = {"max_load": 1e9, "max_step_seconds": 1e9}
