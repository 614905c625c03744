"""``stream eval inf-streams`` end to end on the toy-world dataset: through a real server on
loopback (started by the command) and in process, with the judge stand-in of
tests/evals/judge_double.py; resuming after an interruption; chunk mode; the settings guard."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from framestream.cli.main import main
from framestream.evals.inf_streams.backend import BackendSpec, open_captioner
from framestream.evals.inf_streams.captioners import StreamOptions
from framestream.evals.inf_streams.dataset import read_metadata
from framestream.evals.inf_streams.runner import PlanOptions, merge_chunks, plan_chunks, run_chunks
from framestream.evals.inf_streams.store import ChunkStore
from framestream.evals.inf_streams.toy_dataset import ToyDatasetSpec, write_toy_dataset
from tests.evals.judge_double import JudgeDouble, prefer_longer

SPEC = ToyDatasetSpec(videos=2, seconds=20, start_time=8, window_seconds=6)
SECONDS = SPEC.seconds - SPEC.start_time  # streamed per video


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), SPEC)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_toy_dataset_is_in_the_published_layout(data: Path) -> None:
    records = read_metadata(data / "eval_all_metadata.jsonl")
    assert [r.video for r in records] == ["videos/toyworld_000.mp4", "videos/toyworld_001.mp4"]
    assert all(r.end_time == SPEC.seconds and r.reversed_words == 0 for r in records)
    windows = read_lines(data / "temp_score_clips.jsonl")
    assert {w["video"] for w in windows} == {r.video for r in records}
    assert all(SPEC.start_time <= line[0] < SPEC.seconds for w in windows for line in w["content"])
    assert json.loads((data / "dataset.json").read_text())["start_time"] == SPEC.start_time


def test_end_to_end_through_a_server_with_the_judge(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    with JudgeDouble(rule=prefer_longer) as double:
        argv = [
            "eval", "inf-streams", "--data", str(data), "--out", str(out),
            "--against", "reference", "--judge-url", double.base_url,
            "--judge-model", "stand-in", "--judge-backoff", "0.01",
        ]  # fmt: skip
        assert main(argv) == 0
        printed = capsys.readouterr().out
        calls = len(double.requests)
        assert main(argv) == 0  # everything is done: nothing is streamed or asked again
        assert len(double.requests) == calls
    lines = read_lines(out / "merged_result.jsonl")
    assert [line["video"] for line in lines] == ["toyworld_000.mp4", "toyworld_001.mp4"]
    for line in lines:
        assert (line["chunk_start"], line["chunk_end"]) == (SPEC.start_time, SPEC.seconds)
        spans = [(i["start_time"], i["end_time"]) for i in line["items"]]
        assert spans == [(t, t + 1) for t in range(SPEC.start_time, SPEC.seconds)]
        assert all(isinstance(i["response"], str) for i in line["items"])

    result = json.loads((out / "result.json").read_text())
    assert result["run"] == {
        "chunks_run": 0, "chunks_resumed": 2, "seconds_run": 0, "skipped_videos": [],
    }  # fmt: skip
    overall = result["metrics"]["overall"]
    assert overall["seconds"]["seconds"] == 2 * SECONDS
    assert overall["stream"]["skipped_seconds"] == 0  # lockstep: every second is answered
    # the shipped toy-world model describes its own world well (about 0.9 on this data)
    assert overall["text"]["word_f1"]["f1"] > 0.5
    judge = result["judge"]
    windows = len(read_lines(data / "temp_score_clips.jsonl"))
    assert judge["overall"]["windows"] == windows == len(read_lines(out / "score_segments.jsonl"))
    assert judge["overall"]["votes_a"] + judge["overall"]["votes_b"] == 2 * windows
    assert (judge["requests_sent"], judge["cache_hits"]) == (0, 2 * windows)
    assert calls == 2 * windows
    assert "win rate" in printed and "text overlap over" in printed
    assert "2 chunks streamed, 0 resumed" in printed


class Interrupted(Exception):
    """Stands for a Ctrl-C or a crash in the middle of a chunk."""


class InterruptingCaptioner:
    """Delegates to a real captioner, but its ``n``-th chunk breaks off after 3 seconds."""

    def __init__(self, captioner, n: int) -> None:
        self.captioner = captioner
        self.n = n
        self.calls = 0

    async def caption(self, job, progress):
        self.calls += 1
        if self.calls != self.n:
            return await self.captioner.caption(job, progress)
        seen = []

        def interrupting(count: int) -> None:
            seen.append(count)
            if len(seen) == 3:
                raise Interrupted

        return await self.captioner.caption(job, interrupting)


def run(jobs, store: ChunkStore, spec: BackendSpec, wrap=None):
    async def go():
        async with open_captioner(spec, StreamOptions(frame_format="png")) as captioner:
            wrapped = captioner if wrap is None else wrap(captioner)
            report = await run_chunks(jobs, store, wrapped, show_progress=False)
            return report, wrapped

    return asyncio.run(go())


def test_an_interrupted_run_resumes_where_it_stopped(data: Path, tmp_path: Path) -> None:
    records = read_metadata(data / "eval_all_metadata.jsonl")
    jobs, _ = plan_chunks(data, records, PlanOptions(SPEC.start_time, chunk_seconds=6))
    assert len(jobs) == 4
    in_process = BackendSpec(in_process=True)
    whole = ChunkStore(tmp_path / "whole")
    run(jobs, whole, in_process)

    store = ChunkStore(tmp_path / "resumed")
    with pytest.raises(Interrupted):
        run(jobs, store, in_process, wrap=lambda c: InterruptingCaptioner(c, n=2))
    saved = sorted(p.name for p in store.chunks.iterdir())
    assert saved == [jobs[0].key.file_name()]  # the broken chunk left nothing, not even a temp
    report, _ = run(jobs, store, in_process)
    assert (report.chunks_resumed, report.chunks_run, report.seconds_run) == (1, 3, 18)
    assert merge_chunks(store, jobs)[0] == merge_chunks(whole, jobs)[0]


def test_server_and_in_process_give_the_same_answers(data: Path, tmp_path: Path) -> None:
    records = read_metadata(data / "eval_all_metadata.jsonl")[:1]
    jobs, _ = plan_chunks(data, records, PlanOptions(SPEC.start_time))
    answers = {}
    for name, spec in (("server", BackendSpec()), ("in-process", BackendSpec(in_process=True))):
        store = ChunkStore(tmp_path / name)
        run(jobs, store, spec)
        answers[name] = merge_chunks(store, jobs)[0]
    assert answers["server"] == answers["in-process"]  # PNG frames travel losslessly


def test_chunk_mode_and_the_settings_guard(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = [
        "eval", "inf-streams", "--data", str(data), "--out", str(out), "--in-process",
        "--only", "toyworld_001.mp4", "--chunk-seconds", "4", "--max-seconds", "8",
    ]  # fmt: skip
    assert main(argv) == 0
    assert len(list((out / "chunks").iterdir())) == 2
    (line,) = read_lines(out / "merged_result.jsonl")
    assert line["video"] == "toyworld_001.mp4"
    assert [i["start_time"] for i in line["items"]] == list(range(8, 16))
    capsys.readouterr()
    assert main([*argv, "--instruction", "Describe the shapes."]) == 2
    assert "other settings (instruction: None there" in capsys.readouterr().err


def test_realtime_pace_through_the_server(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [
        "eval", "inf-streams", "--data", str(data), "--out", str(out), "--pace", "realtime",
        "--only", "toyworld_000.mp4", "--max-seconds", "2",
    ]  # fmt: skip
    assert main(argv) == 0
    (line,) = read_lines(out / "merged_result.jsonl")
    assert [(i["start_time"], i["end_time"]) for i in line["items"]] == [(8, 9), (9, 10)]
    stream = json.loads((out / "result.json").read_text())["metrics"]["overall"]["stream"]
    assert stream["lag"]["count"] + stream["skipped_seconds"] == 2
