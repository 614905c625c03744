"""Protocol fuzzing of a real loopback server (evals/fuzz_target.py): random and mutated
messages, each answered by a valid error or a valid response, no exception in the server, and
a LongLive and a StreamingVLM control session streaming correctly throughout.

CI runs a fixed (derandomized) 400 connections, and the atheris harness for 100 inputs where
atheris is installed (``pip install -e '.[fuzz]'``); the long forms are the commands
``python -m framestream.evals.fuzz hypothesis --examples 5000`` and
``python -m framestream.evals.fuzz atheris`` (docs/reliability.md has their last results)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from framestream.evals.fuzz_grammar import HypothesisChooser
from framestream.evals.fuzz_target import FuzzTarget
from tests.admission import ANY_COMPUTE

from .wire import (
    connect,
    expect_error,
    feed_seconds,
    frames,
    hello,
    input_frame,
    noise,
    recv,
    run,
    served,
    start,
)

EXAMPLES = 400


def _fuzz(pipelines, examples: int, derandomize: bool, mixed: bool = False):
    with FuzzTarget(pipelines=pipelines, mixed=mixed, engine_settings=ANY_COMPUTE) as target:

        @settings(
            max_examples=examples,
            derandomize=derandomize,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate, Phase.shrink],
        )
        @given(st.data())
        def fuzz(data: st.DataObject) -> None:
            target.run_example(HypothesisChooser(data))

        fuzz()
        report = target.finish()
    assert target.findings == []
    return report


def test_fuzzed_messages_get_valid_replies_and_disturb_no_one(pipelines):
    report = _fuzz(pipelines, EXAMPLES, derandomize=True)
    print(json.dumps(report.to_json()))
    assert report.examples >= EXAMPLES and report.inputs > 2 * EXAMPLES
    assert report.sessions_started > 0 and report.replies["welcome"] > 0
    for control in report.control.values():
        assert control["received"] > 0 and control["problems"] == []


def test_fuzzing_beside_a_mixed_load_disturbs_no_one(pipelines):
    """A large background session and feed clients beside the fuzzer and the controls."""
    report = _fuzz(pipelines, EXAMPLES // 8, derandomize=True, mixed=True)
    print(json.dumps(report.to_json()))
    assert set(report.control) == {"longlive", "streaming_vlm", "longlive-large"}
    for control in report.control.values():
        assert control["received"] > 0 and control["problems"] == []
    assert "lateness_ms" in report.control["longlive"]  # measured, not judged here
    assert report.feeds.get("200", 0) > 0 and set(report.feeds) <= {"200", "503"}


def test_the_coverage_guided_harness_runs(tmp_path):
    pytest.importorskip("atheris", reason="pip install -e '.[fuzz]' (coverage-guided fuzzing)")
    out = tmp_path / "atheris.json"
    command = [
        sys.executable,
        "-m",
        "framestream.evals.fuzz",
        "atheris",
        "--runs",
        "100",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["examples"] >= 100 and record["findings"] == []


def test_what_fuzzing_found_stays_fixed(pipelines):
    """Each of these crashed a connection, failed a session or left a client waiting."""

    async def main():
        async with served(pipelines) as server, connect(server.url) as ws:
            await hello(ws)
            await ws.send('{"type": "pause", "session": ' + "1" * 5000 + "}")
            await expect_error(ws, "bad_json")  # was: ValueError out of json.loads, close 1011
            video = await start(ws)
            await ws.send(
                json.dumps({"type": "prompt.update", "session": video, "prompt": "\ud800"})
            )
            await expect_error(ws, "invalid_message")  # was: the next step failed on it
            start_ = {"type": "session.start", "pipeline": "streaming_vlm"}
            await ws.send(json.dumps({**start_, "params": {"previous_text": "a \udfff"}}))
            await expect_error(ws, "invalid_message")  # was: no reply for session_open_timeout
            feed = await start(ws, "streaming_vlm")
            await ws.send(input_frame(feed, 0, 1e308, noise()))
            await expect_error(ws, "bad_frame")  # was: an overflow in the feed, frame lost
            await ws.send(input_frame(feed, 0, 0.0, noise(48, 48)))
            await ws.send(input_frame(feed, 1, 0.25, noise(20, 90)))
            assert "48x48" in (await expect_error(ws, "bad_frame"))["message"]  # was: the
            await feed_seconds(ws, feed, 2)  # whole session failed at its next prefill
            assert (await recv(ws, "caption"))["session"] == feed
            await frames(ws, video, 3)  # and the generation session never noticed

    run(main())
