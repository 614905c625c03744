"""evals/inf_streams: reading the published layout, its quirks included; the answers format;
planning chunks; sampling a video as a feed; bad input reported in one line, not a traceback."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from framestream.evals.inf_streams.answers import (
    AnswerItem,
    VideoAnswers,
    read_answers,
    write_answers,
)
from framestream.evals.inf_streams.cli import add_inf_streams_arguments, run_inf_streams
from framestream.evals.inf_streams.dataset import (
    DatasetError,
    VideoRecord,
    Word,
    find_score_windows,
    missing_videos,
    previous_text,
    read_card,
    read_metadata,
    read_score_windows,
    reference_seconds,
)
from framestream.evals.inf_streams.runner import (
    PRIMING_KEEP_WORDS,
    PlanOptions,
    plan_chunks,
    priming_text,
)
from framestream.evals.inf_streams.store import ChunkKey, ChunkStore, SettingsMismatchError
from framestream.evals.inf_streams.video import VideoReadError, sample_frames
from framestream.stream.media import Mp4Writer


def write_lines(path: Path, *lines: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


PUBLISHED_LINE = {
    "video": "nba/game_01.mp4",
    "content": [[998.2, 998.6, "tip"], [999.1, 999.5, " off "], [1000.4, 1000.2, "and"],
                [1000.5, 1001.0, "he"], [1001.2, 1001.9, "scores"]],
    "duration": 7200, "source": "youtube",
}  # fmt: skip


def test_reads_the_published_metadata_with_its_quirks(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "eval_all_metadata.jsonl", PUBLISHED_LINE, "", "   ")
    (record,) = read_metadata(path)
    assert record.video == "nba/game_01.mp4" and record.name == "game_01.mp4"
    assert record.title == "" and record.end_time == 1001
    assert record.words[1] == Word(999.1, 999.5, "off")  # stripped
    assert record.reversed_words == 1  # [1000.4, 1000.2] is kept as published
    assert previous_text(record.words, 1000) == "tip off"
    # each word belongs to the second it ends in: "and" ends at 1000.2 -> second 1000
    assert reference_seconds(record.words, 999, 1002) == ["off", "and he", "scores"]


def test_malformed_lines_name_the_file_and_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "m.jsonl", PUBLISHED_LINE, "", '{"video": "b.mp4", "content": [')
    with pytest.raises(DatasetError, match=r"m\.jsonl:3: not valid JSON"):
        read_metadata(path)
    cases = [
        ('["a list"]', "expected a JSON object"),
        ('{"content": []}', "'video' must be a non-empty string"),
        ('{"video": "a.mp4", "content": "words"}', "'content' must be a list"),
        ('{"video": "a.mp4", "content": [[1, "2", "w"]]}', r"content\[0\] must be \[start, end"),
        ('{"video": "a.mp4", "content": [[1, 2]]}', r"content\[0\]"),
        ('{"video": "a.mp4", "content": [], "title": 3}', "'title' must be a non-empty string"),
    ]
    for line, message in cases:
        with pytest.raises(DatasetError, match=message):
            read_metadata(write_lines(tmp_path / "bad.jsonl", line))
    twice = write_lines(
        tmp_path / "twice.jsonl", PUBLISHED_LINE, PUBLISHED_LINE | {"video": "x/game_01.mp4"}
    )
    with pytest.raises(DatasetError, match="already listed on line 1"):
        read_metadata(twice)
    with pytest.raises(DatasetError, match="no such file"):
        read_metadata(tmp_path / "absent.jsonl")
    with pytest.raises(DatasetError, match="no videos"):
        read_metadata(write_lines(tmp_path / "empty.jsonl", ""))


def test_score_windows_under_either_published_name(tmp_path: Path) -> None:
    assert find_score_windows(tmp_path) is None
    gpt_name = write_lines(
        tmp_path / "score_all_clips.jsonl",
        {"video": "nba/game_01.mp4", "content": [[1000.7, 1003.2, "a"], [1010, 1020.9, "b"]]},
    )
    assert find_score_windows(tmp_path) == gpt_name
    judge_name = write_lines(
        tmp_path / "temp_score_clips.jsonl",
        {"video": "nba/game_01.mp4", "title": "Finals", "preasr": "before",
         "content": [[1000.7, 1003.2, "first line"], [1010, 1020.9, "second line"]]},
    )  # fmt: skip
    assert find_score_windows(tmp_path) == judge_name  # the judge's file wins
    (window,) = read_score_windows(judge_name)
    assert (window.video, window.title, window.start, window.end) == (
        "game_01.mp4",
        "Finals",
        1000,
        1020,
    )
    assert window.reference == "first line\nsecond line" and window.preasr == "before"
    (plain,) = read_score_windows(gpt_name)
    assert plain.title == "" and plain.preasr == ""
    with pytest.raises(DatasetError, match="at least one line"):
        read_score_windows(write_lines(tmp_path / "w.jsonl", {"video": "a.mp4", "content": []}))


def test_the_dataset_card_is_optional(tmp_path: Path) -> None:
    assert read_card(tmp_path) is None
    (tmp_path / "dataset.json").write_text('{"name": "toy", "start_time": 8}')
    assert read_card(tmp_path).start_time == 8
    (tmp_path / "dataset.json").write_text('{"start_time": -1}')
    with pytest.raises(DatasetError, match="dataset.json"):
        read_card(tmp_path)


def test_unusable_videos_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").touch()
    (tmp_path / "folder.mp4").mkdir()
    records = [VideoRecord(name, ()) for name in ("absent.mp4", "empty.mp4", "folder.mp4")]
    problems = missing_videos(tmp_path, records)
    assert [p.split(": ")[1] for p in problems] == ["no such file", "empty (0 bytes)", "not a file"]


# -- answers --------------------------------------------------------------------------------


def test_answers_round_trip_and_published_baseline_layout(tmp_path: Path) -> None:
    ours = VideoAnswers(
        "a.mp4", 10, 13, (AnswerItem("x", 11, 10), AnswerItem("", 12, 11), AnswerItem("y", 13, 12))
    )
    write_answers(tmp_path / "merged_result.jsonl", [ours])
    line = json.loads((tmp_path / "merged_result.jsonl").read_text())
    assert line == {
        "video": "a.mp4", "chunk_start": 10, "chunk_end": 13,
        "items": [{"response": "x", "start_time": 10, "end_time": 11},
                  {"response": "", "start_time": 11, "end_time": 12},
                  {"response": "y", "start_time": 12, "end_time": 13}],
    }  # fmt: skip
    assert read_answers(tmp_path / "merged_result.jsonl") == {"a.mp4": ours}
    assert ours.per_second() == {10: "x", 11: "", 12: "y"}
    # the published scorer's rule: items with start < int(end_time) <= end
    assert ours.text_between(10, 12) == "x" and ours.text_between(11, 13) == "y"
    baseline = write_lines(
        tmp_path / "gpt.jsonl",
        {"video": "dir/a.mp4", "items": [{"end_time": 20, "response": "whole window"}]},
        {"video": "dir/a.mp4", "items": [{"end_time": 30.0, "response": None}]},
    )
    answers = read_answers(baseline)["a.mp4"]
    assert answers.per_second() is None and answers.text_between(10, 20) == "whole window"
    assert [i.start_time for i in answers.items] == [None, None]
    with pytest.raises(
        DatasetError, match=r"gpt2\.jsonl:1: items\[0\] 'end_time' must be a number"
    ):
        read_answers(
            write_lines(tmp_path / "gpt2.jsonl", {"video": "a", "items": [{"response": "x"}]})
        )


def test_chunks_merge_in_time_order(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "shards.jsonl",
        {"video": "a.mp4", "chunk_start": 12, "chunk_end": 13,
         "items": [{"response": "c", "start_time": 12, "end_time": 13}]},
        {"video": "a.mp4", "chunk_start": 10, "chunk_end": 12,
         "items": [{"response": "a", "start_time": 10, "end_time": 11},
                   {"response": "b", "start_time": 11, "end_time": 12}]},
    )  # fmt: skip
    merged = read_answers(path)["a.mp4"]
    assert (merged.chunk_start, merged.chunk_end) == (10, 13)
    assert [i.response for i in merged.items] == ["a", "b", "c"]


# -- planning and the output folder ---------------------------------------------------------


def test_priming_keeps_what_the_pipeline_keeps() -> None:
    many = tuple(Word(k, k + 0.5, f"w{k}") for k in range(3000))
    text = priming_text(VideoRecord("a.mp4", many), 2999)
    kept = text.split()
    assert len(kept) == 2 * PRIMING_KEEP_WORDS
    assert kept[0] == "w0" and kept[-1] == "w2998" and len(text) <= 20000
    assert priming_text(VideoRecord("a.mp4", many[:5]), 3) == "w0 w1 w2"


def test_plans_follow_the_commentary_the_file_and_the_options(tmp_path: Path) -> None:
    write_video(tmp_path / "v.mp4", seconds=6)
    record = VideoRecord("v.mp4", tuple(Word(k, k + 1, f"w{k}") for k in range(9)))  # ends at 9
    jobs, skipped = plan_chunks(tmp_path, [record], PlanOptions(start_time=2))
    assert [(j.key.start, j.key.end) for j in jobs] == [(2, 6)]  # the file is 6 s long
    assert jobs[0].previous_text == "w0 w1" and skipped == []
    jobs, _ = plan_chunks(tmp_path, [record], PlanOptions(2, chunk_seconds=3, prime=False))
    assert [(j.key.start, j.key.end, j.previous_text) for j in jobs] == [(2, 5, ""), (5, 6, "")]
    jobs, _ = plan_chunks(tmp_path, [record], PlanOptions(1, max_seconds=2))
    assert [(j.key.start, j.key.end) for j in jobs] == [(1, 3)]
    jobs, skipped = plan_chunks(tmp_path, [record], PlanOptions(start_time=1000))
    assert jobs == [] and "nothing after the start time (1000 s" in skipped[0]


def test_the_output_folder_refuses_other_settings(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path / "out")
    store.check_settings({"fps": 2, "instruction": None})
    store.check_settings({"fps": 2, "instruction": None})
    with pytest.raises(SettingsMismatchError, match="fps: 2 there, 4 now"):
        store.check_settings({"fps": 4, "instruction": None})
    key = ChunkKey("odd name/with:colon.mp4", 10, 20)
    assert "/" not in key.file_name() and ":" not in key.file_name()
    assert key.file_name() != ChunkKey("odd name_with_colon.mp4", 10, 20).file_name()


# -- video ------------------------------------------------------------------------------------


def write_video(path: Path, seconds: int, fps: float = 10.0) -> None:
    """Frame n is a flat grey of level 4 * n, so a sampled frame tells its own index."""
    with Mp4Writer(path, fps) as writer:
        for n in range(round(seconds * fps)):
            writer.write(np.full((32, 48, 3), 4 * n, np.uint8))


def frame_index(frame: np.ndarray) -> int:
    return round(float(frame.mean()) / 4)


def test_sampling_takes_the_last_frame_at_or_before_each_slot(tmp_path: Path) -> None:
    write_video(tmp_path / "v.mp4", seconds=5)
    samples = list(sample_frames(tmp_path / "v.mp4", 2, 4, fps=2))
    assert [t for t, _ in samples] == [0.0, 0.5, 1.0, 1.5, 2.0]  # 2 s at 2 fps, plus the closer
    assert [frame_index(f) for _, f in samples] == [20, 25, 30, 35, 40]
    assert samples[0][1].shape == (32, 48, 3)
    past_the_end = list(sample_frames(tmp_path / "v.mp4", 4, 6, fps=2))
    assert [frame_index(f) for _, f in past_the_end] == [40, 45, 49, 49, 49]  # the last repeats
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(VideoReadError, match="junk.mp4"):
        next(sample_frames(tmp_path / "junk.mp4", 0, 1, fps=2))


# -- the command on bad input -----------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_inf_streams_arguments(parser)
    return parser.parse_args(list(argv))


def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    out = str(tmp_path / "out")
    assert run_inf_streams(parse("--data", str(data), "--out", out)) == 2
    assert "eval_all_metadata.jsonl: no such file" in capsys.readouterr().err
    write_lines(data / "eval_all_metadata.jsonl", PUBLISHED_LINE, "{oops")
    assert run_inf_streams(parse("--data", str(data), "--out", out)) == 2
    err = capsys.readouterr().err
    assert "eval_all_metadata.jsonl:2: not valid JSON" in err and "Traceback" not in err
    write_lines(data / "eval_all_metadata.jsonl", PUBLISHED_LINE)
    assert run_inf_streams(parse("--data", str(data), "--out", out)) == 2
    assert "unusable videos: " in capsys.readouterr().err
    assert run_inf_streams(parse("--data", str(data), "--out", out, "--only", "other.mp4")) == 2
    assert "--only names videos not in the metadata: other.mp4" in capsys.readouterr().err
    answers = write_lines(tmp_path / "answers.jsonl", {"video": "game_01.mp4", "items": []})
    argv = ("--data", str(data), "--out", out, "--answers", str(answers), "--against", "reference")
    assert run_inf_streams(parse(*argv, "--judge-url", "http://127.0.0.1:9/v1")) == 2
    assert "judging needs score windows" in capsys.readouterr().err
