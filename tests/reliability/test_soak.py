"""Soak (evals/soak.py): sessions of every pipeline one after another, some clients vanishing,
every other generation session recording; memory flat, queues bounded, nothing leaked.

CI runs about 10 seconds; the long form is the command
``python -m framestream.evals.soak --seconds 600 --sessions 2`` (docs/reliability.md has its
last result)."""

from __future__ import annotations

import asyncio
import json

from framestream.evals.soak import SoakConfig, run_soak
from tests.admission import ANY_COMPUTE


def _soak(pipelines, config: SoakConfig) -> dict:
    record = asyncio.run(run_soak(config, pipelines, ANY_COMPUTE))
    print(json.dumps({k: v for k, v in record.items() if k != "samples"}))
    assert record["failures"] == [] and record["leaks"] == {
        "blocks": 0,
        "tasks": 0,
        "threads": [],
        "open_files": 0,
    }
    assert record["ok"], record["checks"]
    return record


def test_a_short_soak_stays_flat_and_leaks_nothing(pipelines):
    # 2-second sessions: each worker still opens and closes 4 of them (the second recording,
    # the third vanishing), as 4-second ones did over 15 seconds
    config = SoakConfig(seconds=10, session_seconds=2, warmup_seconds=4, sample_seconds=0.5)
    record = _soak(pipelines, config)
    assert set(record["sessions_run"]) == {"longlive", "rolling_forcing", "streaming_vlm"}
    assert min(record["sessions_run"].values()) >= 2 and record["frames"] > 0
    assert record["vanished"] > 0
