"""``stream eval inf-streams`` and ``stream eval toy-inf-streams``: arguments and the run.

    stream eval toy-inf-streams --out data/toy             # a tiny dataset, published layout
    stream eval inf-streams --data data/toy                # run, score, print, result.json
    stream eval inf-streams --data data/toy --against reference --judge-url http://...

A run goes: read the dataset -> stream every chunk not done yet -> merge the answers ->
judge-free metrics -> (with ``--against``) pairwise judging -> ``OUT/result.json`` and a
printed summary. Exit codes: 0 done, 1 the run or the judge failed, 2 bad input, 130
interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from framestream.evals.inf_streams.answers import VideoAnswers, read_answers
from framestream.evals.inf_streams.backend import BackendSpec, open_captioner
from framestream.evals.inf_streams.captioners import RunFailedError, StreamOptions
from framestream.evals.inf_streams.dataset import (
    METADATA_FILE,
    DatasetError,
    ScoreWindow,
    VideoRecord,
    find_score_windows,
    missing_videos,
    read_card,
    read_metadata,
    read_score_windows,
)
from framestream.evals.inf_streams.judge import (
    REFERENCE,
    judge_windows,
    score_segment,
    win_rate,
    win_rates_per_video,
)
from framestream.evals.inf_streams.judge_client import (
    ChatClient,
    JudgeEndpoint,
    JudgeError,
    RetryPolicy,
)
from framestream.evals.inf_streams.report import MetricsReport, compute_metrics
from framestream.evals.inf_streams.runner import (
    PlanOptions,
    RunReport,
    merge_chunks,
    plan_chunks,
    run_chunks,
)
from framestream.evals.inf_streams.store import (
    ChunkStats,
    ChunkStore,
    SettingsMismatchError,
    atomic_write_json,
    atomic_write_text,
)
from framestream.evals.inf_streams.toy_dataset import ToyDatasetSpec, write_toy_dataset
from framestream.evals.inf_streams.video import VideoReadError

__all__ = [
    "add_inf_streams_arguments",
    "add_toy_arguments",
    "run_inf_streams",
    "run_toy",
]

PUBLISHED_START_TIME = 1000  # seconds (generate.sh START_TIME)
_PROG = "stream eval inf-streams"


class _UsageError(Exception):
    """Bad arguments or input; reported in one line, exit code 2."""


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value!r}")
    return int(value)


def _seconds(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected whole seconds >= 0, got {value!r}")
    return int(value)


def add_inf_streams_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``inf-streams``' arguments to ``parser`` (run it with :func:`run_inf_streams`)."""
    data = parser.add_argument_group("dataset (the published layout)")
    data.add_argument(
        "--data", type=Path, required=True, help=f"the dataset folder: {METADATA_FILE}, videos"
    )
    data.add_argument("--metadata", type=Path, help=f"default: DATA/{METADATA_FILE}")
    data.add_argument(
        "--score-windows",
        type=Path,
        help="default: DATA/temp_score_clips.jsonl, else DATA/score_all_clips.jsonl",
    )
    data.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="VIDEO",
        help="run only this video (base name; repeatable)",
    )
    run = parser.add_argument_group("the run")
    run.add_argument("--out", type=Path, help="output folder (default: results/inf-streams/SYSTEM)")
    run.add_argument("--system", default="streaming_vlm", help="the name of the system run")
    run.add_argument(
        "--answers",
        type=Path,
        help="score these answers (published format) instead of running a system",
    )
    run.add_argument(
        "--start",
        type=_seconds,
        help=f"start time, s (default: DATA/dataset.json's, else {PUBLISHED_START_TIME})",
    )
    run.add_argument(
        "--no-prime",
        action="store_true",
        help="do not give the ground truth said before the start as previous text",
    )
    run.add_argument("--instruction", help="the first round's instruction (server default)")
    run.add_argument("--fps", type=int, choices=(2, 4), default=2, help="frames a second (2)")
    run.add_argument(
        "--chunk-seconds",
        type=_positive_int,
        help="restart the stream every N s (the baselines' chunk mode); default: one stream",
    )
    run.add_argument("--max-seconds", type=_positive_int, help="at most N s per video")
    run.add_argument(
        "--pace",
        choices=("lockstep", "realtime"),
        default="lockstep",
        help="lockstep: every second is answered (default); realtime: frames at their times, "
        "seconds the service cannot keep up with are dropped",
    )
    run.add_argument("--concurrency", type=_positive_int, default=1, help="streams at once")
    run.add_argument("--frame-format", choices=("jpeg", "png", "raw"), default="jpeg")
    run.add_argument("--quality", type=int, default=90, help="JPEG quality (90)")
    run.add_argument(
        "--max-pixels", type=_positive_int, default=768 * 28 * 28, help="per frame (602112)"
    )
    run.add_argument(
        "--timeout", type=float, default=120.0, help="seconds without a caption before failing"
    )
    service = parser.add_argument_group("where the commentary comes from")
    service.add_argument(
        "--server",
        metavar="URL",
        help="a running server (ws://HOST:PORT/ws); default: one is "
        "started here on a free loopback port",
    )
    service.add_argument(
        "--token", default=os.environ.get("STREAM_TOKEN"), help="the server's token ($STREAM_TOKEN)"
    )
    service.add_argument(
        "--in-process", action="store_true", help="run the pipeline here, without a server"
    )
    service.add_argument("--vlm-dir", type=Path, help="a local Qwen2.5-VL / StreamingVLM folder")
    service.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    service.add_argument("--dtype", choices=("bf16", "fp16", "fp32"))
    service.add_argument("--cache-gb", type=float, help="KV-cache pool (4 on cuda, 0.25 on cpu)")
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument(
        "--tolerance", type=_seconds, default=1, help="seconds of slack in speech timing (1)"
    )
    scoring.add_argument(
        "--against",
        metavar="ANSWERS|reference",
        help="judge pairwise against another system's answers (a merged_result.jsonl), or "
        "against the reference commentary itself",
    )
    scoring.add_argument("--against-name", help="the opponent's name (default: from its path)")
    scoring.add_argument(
        "--judge-url",
        default=os.environ.get("OPENAI_BASE_URL"),
        help="an OpenAI-compatible base URL, e.g. https://api.openai.com/v1 ($OPENAI_BASE_URL)",
    )
    scoring.add_argument(
        "--judge-model",
        default=os.environ.get("STREAM_JUDGE_MODEL", "gpt-5"),
        help="($STREAM_JUDGE_MODEL; default gpt-5, the published judge)",
    )
    scoring.add_argument(
        "--judge-key",
        default=os.environ.get("OPENAI_API_KEY"),
        help="the endpoint's API key (default $OPENAI_API_KEY; prefer the variable)",
    )
    scoring.add_argument("--judge-workers", type=_positive_int, default=4, help="calls at once")
    scoring.add_argument("--judge-retries", type=_positive_int, default=6, help="tries per call")
    scoring.add_argument(
        "--judge-backoff", type=float, default=1.0, help="first retry's delay, s; doubles"
    )
    scoring.add_argument("--judge-cache", type=Path, help="default: OUT/judge_cache")


def add_toy_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``toy-inf-streams``' arguments to ``parser`` (run it with :func:`run_toy`)."""
    defaults = ToyDatasetSpec()
    parser.add_argument("--out", type=Path, required=True, help="the dataset folder to write")
    parser.add_argument("--videos", type=_positive_int, default=defaults.videos)
    parser.add_argument("--seconds", type=_positive_int, default=defaults.seconds)
    parser.add_argument("--start", type=_seconds, default=defaults.start_time)
    parser.add_argument("--window-seconds", type=_positive_int, default=defaults.window_seconds)
    parser.add_argument("--seed", type=_seconds, default=defaults.seed)


def run_toy(args: argparse.Namespace) -> int:
    try:
        spec = ToyDatasetSpec(args.videos, args.seconds, args.start, args.window_seconds, args.seed)
    except ValueError as exc:
        print(f"stream eval toy-inf-streams: {exc}", file=sys.stderr)
        return 2
    write_toy_dataset(args.out, spec)
    print(f"wrote {spec.videos} videos of {spec.seconds} s to {args.out}")
    return 0


# -- the run -------------------------------------------------------------------------------


def _load_dataset(args: argparse.Namespace) -> tuple[list[VideoRecord], list[ScoreWindow] | None]:
    records = read_metadata(args.metadata or args.data / METADATA_FILE)
    if args.only:
        names = {r.name for r in records}
        unknown = sorted(set(args.only) - names)
        if unknown:
            raise _UsageError(f"--only names videos not in the metadata: {', '.join(unknown)}")
        records = [r for r in records if r.name in set(args.only)]
    windows_path = args.score_windows or find_score_windows(args.data)
    windows = read_score_windows(windows_path) if windows_path is not None else None
    return records, windows


def _start_time(args: argparse.Namespace) -> int:
    if args.start is not None:
        return args.start
    card = read_card(args.data)
    if card is not None and card.start_time is not None:
        return card.start_time
    return PUBLISHED_START_TIME


async def _run_system(
    args: argparse.Namespace, records: list[VideoRecord], out: Path
) -> tuple[dict[str, VideoAnswers], dict[str, list[ChunkStats]], RunReport]:
    problems = missing_videos(args.data, records)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise _UsageError("unusable videos: " + "; ".join(problems[:5]) + more)
    if args.in_process and (args.pace == "realtime" or args.concurrency > 1):
        raise _UsageError("--in-process runs one stream in lockstep: drop --pace / --concurrency")
    try:
        plan = PlanOptions(
            _start_time(args),
            not args.no_prime,
            args.instruction,
            args.chunk_seconds,
            args.max_seconds,
        )
        options = StreamOptions(
            args.fps,
            args.pace,
            frame_format=args.frame_format,
            quality=args.quality,
            max_pixels=args.max_pixels,
            timeout=args.timeout,
        )
        spec = BackendSpec(
            args.server, args.token, args.in_process, args.vlm_dir, args.device, args.dtype,
            args.cache_gb,
        )  # fmt: skip
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    jobs, skipped = plan_chunks(args.data, records, plan)
    for reason in skipped:
        print(f"{_PROG}: skipping {reason}", file=sys.stderr)
    if not jobs:
        raise _UsageError(f"nothing to run from {plan.start_time} s (see --start)")
    store = ChunkStore(out)
    settings = {
        "system": args.system,
        "model": spec.model,
        "backend": spec.backend,
        **asdict(plan),
        **asdict(options),
    }
    del settings["timeout"]  # how long to wait changes no answer
    store.check_settings(settings)
    async with open_captioner(spec, options) as captioner:
        report = await run_chunks(jobs, store, captioner, concurrency=args.concurrency)
    report.skipped_videos = tuple(skipped)
    answers, stats = merge_chunks(store, jobs)
    return {a.video: a for a in answers}, stats, report


@dataclass(frozen=True)
class _Judging:
    """What ``--against`` asks for, checked before anything runs."""

    client: ChatClient
    windows: list[ScoreWindow]
    opponent: dict[str, VideoAnswers] | str  # answers, or REFERENCE
    names: tuple[str, str]  # (system, opponent)


def _prepare_judging(
    args: argparse.Namespace, out: Path, windows: list[ScoreWindow] | None
) -> _Judging:
    if windows is None:
        raise _UsageError(f"judging needs score windows: none in {args.data} (--score-windows)")
    if not args.judge_url:
        raise _UsageError("judging needs an endpoint: --judge-url or $OPENAI_BASE_URL")
    if args.against == REFERENCE:
        opponent: dict[str, VideoAnswers] | str = REFERENCE
        name = args.against_name or REFERENCE
    else:
        against = Path(args.against)
        opponent = read_answers(against)
        name = args.against_name or (against.parent.name or against.stem)
    try:
        endpoint = JudgeEndpoint(args.judge_url, args.judge_model, args.judge_key)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    client = ChatClient(
        endpoint,
        args.judge_cache or out / "judge_cache",
        RetryPolicy(args.judge_retries, args.judge_backoff),
    )
    return _Judging(client, windows, opponent, (args.system, name))


def _judge(
    judging: _Judging, answers: dict[str, VideoAnswers], out: Path, workers: int
) -> dict[str, Any]:
    """Judge every window, write ``score_segments.jsonl``; the judge's part of result.json."""
    client, model = judging.client, judging.client.endpoint.model
    verdicts, left_out = judge_windows(
        client, judging.windows, answers, judging.opponent, workers=workers
    )
    atomic_write_text(
        out / "score_segments.jsonl",
        "".join(
            json.dumps(score_segment(v, judging.names, model), ensure_ascii=False) + "\n"
            for v in verdicts
        ),
    )
    return {
        "model": model,
        "system": judging.names[0],
        "opponent": judging.names[1],
        "overall": asdict(win_rate(verdicts)),
        "per_video": {k: asdict(v) for k, v in win_rates_per_video(verdicts).items()},
        "left_out": left_out,
        "requests_sent": client.requests_sent,
        "cache_hits": client.cache_hits,
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_lines(result: dict[str, Any], metrics: MetricsReport) -> list[str]:
    """The printed summary of a finished run."""
    lines = [f"Inf-Streams-Eval: {result['system']} on {result['data']}"]
    run = result.get("run")
    if run is not None:
        lines.append(
            f"  run: {run['chunks_run']} chunks streamed, {run['chunks_resumed']} resumed, "
            f"{run['seconds_run']} s of video streamed now"
        )
    overall = metrics.overall
    if overall.seconds is not None:
        s = overall.seconds
        lines.append(
            f"  seconds: {s.seconds}; silent {_fmt(s.silence_rate)} "
            f"(reference {_fmt(s.reference_silence_rate)})"
        )
        lines.append(
            f"  speech timing (±{metrics.tolerance} s): precision {_fmt(s.speech_timing.precision)}"
            f" recall {_fmt(s.speech_timing.recall)} F1 {_fmt(s.speech_timing.f1)}"
        )
        lines.append(
            f"  best offset {s.offset.seconds:+d} s: per-second word F1 "
            f"{_fmt(s.offset.f1_at_zero)} at 0 s, {_fmt(s.offset.f1_at_best)} at best"
        )
    if overall.text is not None:
        t = overall.text
        lines.append(
            f"  text overlap over {t.windows} windows: word F1 {_fmt(t.word_f1.f1)}, "
            f"ROUGE-L F1 {_fmt(t.rouge_l.f1)}"
        )
    if overall.stream is not None:
        st = overall.stream
        lag = st.lag.mean if st.lag else None
        latency = st.latency.mean if st.latency else None
        p95 = st.latency.p95 if st.latency else None
        lines.append(
            f"  lag mean {_fmt(lag, 2)} s; caption latency mean {_fmt(latency, 3)} s, "
            f"p95 {_fmt(p95, 3)} s; {st.skipped_seconds} s dropped"
        )
    judge = result.get("judge")
    if judge is not None:
        o = judge["overall"]
        lines.append(
            f"  judge {judge['model']}: {judge['system']} vs {judge['opponent']}: win rate "
            f"{_fmt(o['rate'])} ({o['votes_a']} of {o['votes_a'] + o['votes_b']} votes; "
            f"{o['wins']} won, {o['ties']} tied, {o['losses']} lost of {o['windows']} windows)"
        )
    return lines


async def _evaluate(args: argparse.Namespace) -> int:
    out = args.out or Path("results") / "inf-streams" / args.system
    records, windows = _load_dataset(args)
    judging = None if args.against is None else _prepare_judging(args, out, windows)
    run_report = None
    stats: dict[str, list[ChunkStats]] = {}
    if args.answers is not None:
        answers = read_answers(args.answers)
    else:
        answers, stats, run_report = await _run_system(args, records, out)
    metrics = compute_metrics(records, answers, windows, stats, args.tolerance)
    result: dict[str, Any] = {
        "system": args.system,
        "data": str(args.data),
        "answers": str(args.answers or out / "merged_result.jsonl"),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": None if run_report is None else asdict(run_report),
        "metrics": metrics.to_json(),
        "judge": None,
    }
    if judging is not None:
        result["judge"] = await asyncio.to_thread(_judge, judging, answers, out, args.judge_workers)
    atomic_write_json(out / "result.json", result)
    print("\n".join(summary_lines(result, metrics)))
    print(f"result: {out / 'result.json'}")
    return 0


def run_inf_streams(args: argparse.Namespace) -> int:
    """Run ``inf-streams`` (arguments from :func:`add_inf_streams_arguments`); returns the
    exit code, errors reported in one line on stderr."""
    try:
        return asyncio.run(_evaluate(args))
    except (_UsageError, DatasetError, SettingsMismatchError) as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 2
    except (RunFailedError, VideoReadError, JudgeError) as exc:
        print(f"{_PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"{_PROG}: interrupted; finished chunks and judge replies are kept: run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return 130
