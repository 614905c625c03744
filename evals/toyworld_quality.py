"""Quality of the embedded models on the toy world, measured on pixels and words, not by eye.

    python -m framestream.evals.toyworld_quality --out quality.json [--drift-minutes 10]
        [--parts switch] [--dtype bf16] [--kv-cache-dtype fp8_e4m3]
        [--parts drift --longlive-positions contiguous --longlive-max-position 65536]
        [--parts drift --drift-pipelines longlive,rolling_forcing]
        [--parts captions,questions --vlm-dir DIR] [--generator-dir RUN]

- **Prompt adherence** of generated clips (LongLive and Rolling Forcing): the fraction of frames
  whose measured colour and shape match the prompt (:func:`models.toyworld.adherence`), over
  held-out prompts; the fraction whose sprites have the prompt's colours, shapes aside
  (:func:`models.toyworld.color_adherence`, chance about 1/8 a sprite); and the fraction whose
  background is the prompt's (:func:`models.toyworld.background_adherence`, chance 1/4); and
  per named shape, what the frames drew instead
  (:func:`~models.toyworld.measure.shape_verdicts`: a square rounded into a circle, a lump).
- **Prompt switch**: adherence to the old prompt before and to the new one after a switch, and
  how many frames after the switch it takes until a one-second window shows the new prompt's
  colours (the switch scenarios change a sprite's colour and shape, not the background).
- **Drift**: adherence and frame statistics per minute over a long stream: they must not decay
  (LongLive's by default; ``--drift-pipelines`` names the generators that stream).
- **Caption accuracy** of the understanding model on a held-out feed: per second, precision and
  recall of the (colour, shape) pairs its caption names against the ground truth caption, and
  whether both agree on silence.
- **Question answering** of the understanding model on held-out feeds: questions asked mid-stream
  as a client asks them (``question`` messages join the next second's round), about that second:
  a named shape's colour, a named colour's shape, how many shapes, which way a shape moves
  (:mod:`models.toyworld.questions`); an answer is right when it names the true value and no
  other of its kind. Accuracy per kind and overall.

Everything runs through the real pipelines on the shipped toy-world models, on the CPU.
``--kv-cache-dtype fp8_e4m3`` runs every pipeline on the FP8 KV cache; against a run without it
(same seeds, same prompts) that is the cache's quality delta. ``--dtype bf16`` runs the models
(and an ``auto`` cache) in bfloat16, as the service does on a GPU. ``--longlive-positions`` and
``--longlive-max-position`` set LongLive's cache positions (``LongLiveConfig``): a long stream's
quality against the layout its sink and window are given.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from framestream.models.toyworld import (
    COLORS,
    SHAPES,
    Feed,
    adherence,
    background_adherence,
    color_adherence,
    measure,
    prompt,
    sample_clip,
    switch_clip,
)
from framestream.models.toyworld.measure import shape_verdicts, verdict_table
from framestream.models.toyworld.questions import KINDS, Question, answer_is_right, ask
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.longlive import LongLiveConfig, LongLivePipeline
from framestream.stream.pipelines.rolling_forcing import (
    RollingForcingConfig,
    RollingForcingPipeline,
)
from framestream.stream.pipelines.streaming_vlm import StreamingVLMPipeline, UnderstandingConfig
from framestream.stream.requests import GenerationRequest, UnderstandingRequest

SIZE = 64
FPS = 16
_PAIR = re.compile(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b")


def generate(pipe, text: str, seconds: float, seed: int, switches=()) -> np.ndarray:
    """``seconds`` of frames ``[T, H, W, 3]`` for ``text``, switching at ``(t, prompt)``."""
    state = pipe.open(GenerationRequest(text, seed, SIZE, SIZE))
    pending, frames = sorted(switches), []
    try:
        while sum(len(f) for f in frames) < seconds * FPS:
            while pending and pending[0][0] * FPS <= state.frames_emitted:
                pipe.switch_prompt(state, pending.pop(0)[1])
            frames.append(pipe.step(state).frames)
    finally:
        pipe.close(state)
    return np.concatenate(frames)[: round(seconds * FPS)]


def prompt_adherence(pipe, n: int, seconds: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    scores, colors, backgrounds, verdicts = [], [], [], Counter()
    for i in range(n):
        text = prompt(sample_clip(rng, seconds=seconds, fps=FPS, size=(SIZE, SIZE)))
        measured = [measure(f) for f in generate(pipe, text, seconds, seed + i)]  # scored 4 ways
        scores.append(adherence(measured, text))
        colors.append(color_adherence(measured, text))
        backgrounds.append(background_adherence(measured, text))
        verdicts += shape_verdicts(measured, text)
    return {
        "mean": float(np.mean(scores)),
        "per_prompt": scores,
        "color_mean": float(np.mean(colors)),
        "color_per_prompt": colors,
        "background_mean": float(np.mean(backgrounds)),
        "background_per_prompt": backgrounds,
        "shape_verdicts": verdict_table(verdicts),
    }


def switch_behaviour(pipe, n: int, seed: int, switch_at: float = 2.0, seconds: float = 5.0) -> dict:
    rng = np.random.default_rng(seed)
    before, after, delays, bg_before, bg_after = [], [], [], [], []
    color_before, color_after = [], []
    for i in range(n):
        scenario = switch_clip(
            rng, seconds=seconds, switch_at=switch_at, fps=FPS, size=(SIZE, SIZE)
        )
        frames = generate(pipe, scenario.before, seconds, seed + i, [(switch_at, scenario.after)])
        measured = [measure(f) for f in frames]  # each frame is scored several ways
        cut = round(switch_at * FPS)
        before.append(adherence(measured[:cut], scenario.before))
        after.append(adherence(measured[cut + FPS :], scenario.after))
        color_before.append(color_adherence(measured[:cut], scenario.before))
        color_after.append(color_adherence(measured[cut + FPS :], scenario.after))
        bg_before.append(background_adherence(measured[:cut], scenario.before))
        bg_after.append(background_adherence(measured[cut + FPS :], scenario.after))
        per_frame = np.array([color_adherence([m], scenario.after) for m in measured[cut:]])
        window = np.convolve(per_frame, np.ones(FPS) / FPS, mode="valid")
        hits = np.flatnonzero(window >= 0.5)
        delays.append(int(hits[0]) if len(hits) else None)
    shown = [d for d in delays if d is not None]
    return {
        "before_mean": float(np.mean(before)),
        "after_mean": float(np.mean(after)),
        "color_before_mean": float(np.mean(color_before)),
        "color_after_mean": float(np.mean(color_after)),
        "background_before_mean": float(np.mean(bg_before)),
        "background_after_mean": float(np.mean(bg_after)),
        "frames_until_followed_median": float(statistics.median(shown)) if shown else None,
        "followed": len(shown),
        "switches": n,
    }


def drift(pipe, minutes: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    text = prompt(sample_clip(rng, seconds=4, fps=FPS, size=(SIZE, SIZE)))
    state = pipe.open(GenerationRequest(text, seed, SIZE, SIZE))
    per_minute, colors, backgrounds, stats, buffer = [], [], [], [], []
    total = round(minutes * 60 * FPS)

    def score_minute() -> None:
        frames = np.concatenate(buffer)
        measured = [measure(f) for f in frames]  # scored 3 ways
        per_minute.append(adherence(measured, text))
        colors.append(color_adherence(measured, text))
        backgrounds.append(background_adherence(measured, text))
        stats.append((float(frames.mean()), float(frames.std())))
        buffer.clear()

    try:
        with tqdm(total=total, desc="drift", unit="frame") as bar:
            while state.frames_emitted < total:
                chunk = pipe.step(state).frames
                buffer.append(chunk)
                bar.update(len(chunk))
                if sum(len(b) for b in buffer) >= 60 * FPS:
                    score_minute()
        if not per_minute:  # a stream shorter than a minute is scored as one
            score_minute()
    finally:
        pipe.close(state)
    return {
        "prompt": text,
        "adherence_per_minute": per_minute,
        "color_adherence_per_minute": colors,
        "background_adherence_per_minute": backgrounds,
        "mean_std_per_minute": stats,
    }


def caption_accuracy(pipe: StreamingVLMPipeline, seconds: int, seed: int, size) -> dict:
    feed = Feed(seed, size, fps=8)
    state = pipe.open(UnderstandingRequest())
    rows = []
    try:
        for t, frame in feed.frames():
            if t > seconds + 1:
                break
            pipe.push_frame(state, t, frame)
            while pipe.ready(state):
                pipe.prefill(state)
                while state.decoding:
                    for caption in pipe.decode([state]):
                        if caption is not None:
                            truth = feed.caption(int(caption.start)).text
                            rows.append((truth, caption.text))
    finally:
        pipe.close(state)
    precision, recall, silence = [], [], []
    for truth, said in rows:
        want, got = set(_PAIR.findall(truth)), set(_PAIR.findall(said))
        if got:
            precision.append(len(want & got) / len(got))
        if want:
            recall.append(len(want & got) / len(want))
        silence.append((not truth.strip()) == (not said.strip()))
    return {
        "seconds": len(rows),
        "pair_precision": float(np.mean(precision)) if precision else 0.0,
        "pair_recall": float(np.mean(recall)) if recall else 0.0,
        "silence_agreement": float(np.mean(silence)) if silence else 0.0,
        "examples": rows[:8],
    }


def _next_question(clip, rng: random.Random, turn: int) -> Question | None:
    """A question about ``clip``, of the kind whose turn it is (the next one that has one), so
    that the kinds come about equally often."""
    for j in range(len(KINDS)):
        question = ask(clip, rng, KINDS[(turn + j) % len(KINDS)])
        if question is not None:
            return question
    return None


def question_accuracy(
    pipe: StreamingVLMPipeline, seconds: int, seeds: list[int], size, every: int = 2
) -> dict:
    """Ask a question every ``every`` seconds of held-out feeds ``seeds``, through the pipeline
    as a session does (``ask`` before the round of the second it is about); score each answer
    against the world's ground truth of that second."""
    rows: list[tuple[Question, str, int, int]] = []  # question, reply, seed, second
    for seed in seeds:
        frames, truth = Feed(seed, size, fps=8), Feed(seed, size, fps=2)  # 2 fps: the model's
        rng, turn = random.Random(seed), seed
        asked: dict[int, Question] = {}
        state = pipe.open(UnderstandingRequest())
        try:
            for t, frame in frames.frames():
                if t > seconds + 1:
                    break
                pipe.push_frame(state, t, frame)
                while pipe.ready(state):
                    second = state.feed.next_second
                    if second >= 1 and second % every == 0:  # round 0 carries the instruction
                        question = _next_question(truth.second(second), rng, turn)
                        if question is not None:
                            pipe.ask(state, question.text)
                            asked[second] = question
                            turn += 1
                    pipe.prefill(state)
                    while state.decoding:
                        for caption in pipe.decode([state]):
                            if caption is not None and int(caption.start) in asked:
                                k = int(caption.start)
                                rows.append((asked.pop(k), caption.text, seed, k))
        finally:
            pipe.close(state)
    right = [answer_is_right(q, reply) for q, reply, _, _ in rows]
    per_kind = {}
    for kind in KINDS:
        got = [r for r, (q, _, _, _) in zip(right, rows, strict=True) if q.kind == kind]
        per_kind[kind] = {"accuracy": float(np.mean(got)) if got else None, "asked": len(got)}
    return {
        "accuracy": float(np.mean(right)) if right else 0.0,
        "asked": len(rows),
        "per_kind": per_kind,
        "seeds": list(seeds),
        "seconds": seconds,
        "every": every,
        "examples": [
            {"seed": s, "second": k, "question": q.text, "truth": q.truth, "answer": a, "right": r}
            for (q, a, s, k), r in list(zip(rows, right, strict=True))[:16]
        ],
    }


PARTS = ("adherence", "switch", "drift", "captions", "questions")
GENERATORS = {"longlive": LongLivePipeline, "rolling_forcing": RollingForcingPipeline}
_TITLES = {"longlive": "LongLive", "rolling_forcing": "Rolling Forcing"}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    from framestream.models.qwen_vl_tiny import load_toy_qwen_vl
    from framestream.models.registry import WanPaths, load_wan_models
    from framestream.models.toyworld.embedded import load_vlm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"a subset of {','.join(PARTS)} (default: all)"
    )
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--switches", type=int, default=6)
    parser.add_argument(
        "--switch-seconds",
        type=float,
        default=5.0,
        help="length of a switch clip; the switch comes at 2 s, the rest is watched",
    )
    parser.add_argument("--drift-minutes", type=float, default=10.0)
    parser.add_argument(
        "--drift-pipelines",
        default="longlive",
        help=f"the generators a drift run streams, a subset of {','.join(GENERATORS)}",
    )
    parser.add_argument("--caption-seconds", type=int, default=120)
    parser.add_argument("--qa-seconds", type=int, default=40, help="per question feed")
    parser.add_argument("--qa-feeds", type=int, default=8, help="held-out feeds asked about")
    parser.add_argument(
        "--vlm-dir", type=Path, default=None, help="understanding model (default: the embedded)"
    )
    parser.add_argument(
        "--generator-dir",
        type=Path,
        default=None,
        help="a generator training run's folder (default: the embedded generator)",
    )
    parser.add_argument("--seed", type=int, default=10_000, help="held out from training seeds")
    parser.add_argument(
        "--dtype",
        choices=sorted(_DTYPES),
        default="fp32",
        help="the models' weights and activations (default fp32, the CPU service's)",
    )
    parser.add_argument(
        "--kv-cache-dtype",
        default="auto",
        help="every pipeline's KV cache: auto (the models' dtype) or fp8_e4m3",
    )
    parser.add_argument(
        "--longlive-positions",
        choices=("absolute", "contiguous"),
        default=LongLiveConfig.positions,
        help="LongLive's cache positions (default: the service's)",
    )
    parser.add_argument(
        "--longlive-max-position",
        type=int,
        default=LongLiveConfig.max_position,
        help="with absolute positions, where the window stops counting on (default: the service's)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if not parts or parts - set(PARTS):
        parser.error(f"--parts must be a subset of {','.join(PARTS)}, got {args.parts!r}")
    streamed = args.drift_pipelines.split(",")
    if not streamed or set(streamed) - set(GENERATORS):
        parser.error(
            f"--drift-pipelines must be a subset of {','.join(GENERATORS)}, "
            f"got {args.drift_pipelines!r}"
        )
    kv = args.kv_cache_dtype
    try:
        configs = {
            "longlive": LongLiveConfig(
                kv_cache_dtype=kv,
                positions=args.longlive_positions,
                max_position=args.longlive_max_position,
            ),
            "rolling_forcing": RollingForcingConfig(kv_cache_dtype=kv),
            "streaming_vlm": UnderstandingConfig(kv_cache_dtype=kv),
        }
    except ValueError as exc:
        parser.error(str(exc))
    dtype = _DTYPES[args.dtype]
    generation = parts & {"adherence", "switch", "drift"}
    paths = None
    if args.generator_dir is not None:
        run = args.generator_dir
        paths = WanPaths(dit=run / "dit.safetensors", dit_layout="wan", vae=run / "vae")
    wan = load_wan_models(paths=paths, dtype=dtype) if generation else None
    manager = KVCacheManager()
    results = {
        "benchmark": "toyworld_quality",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "size": f"{SIZE}x{SIZE}",
        "dtype": args.dtype,
        "kv_cache_dtype": kv,
        "longlive_positions": args.longlive_positions,
        "longlive_max_position": args.longlive_max_position,
        "command": " ".join(["python -m framestream.evals.toyworld_quality", *sys.argv[1:]]),
        "generator_dir": str(args.generator_dir) if args.generator_dir else "embedded",
    }
    for name, cls in GENERATORS.items() if generation else ():
        pipe = cls(wan, manager, 256 << 20, configs[name])
        results[name] = {}
        if "adherence" in parts:
            results[name]["adherence"] = prompt_adherence(pipe, args.prompts, 4.0, args.seed)
            a = results[name]["adherence"]
            print(
                f"{name}: adherence {a['mean']:.2f} (colours {a['color_mean']:.2f}, "
                f"background {a['background_mean']:.2f})"
            )
        if "switch" in parts:
            results[name]["switch"] = s = switch_behaviour(
                pipe, args.switches, args.seed + 100, seconds=args.switch_seconds
            )
            print(
                f"{name}: switch colours: before {s['color_before_mean']:.2f}, after "
                f"{s['color_after_mean']:.2f}, followed in {s['followed']} of {s['switches']}, "
                f"after {s['frames_until_followed_median']} frames"
            )
        if "drift" in parts and name in streamed:
            results[name]["drift"] = d = drift(pipe, args.drift_minutes, args.seed + 200)
            print(f"{name}: drift, adherence per minute: {d['adherence_per_minute']}")
            print(f"{name}: drift, colours per minute: {d['color_adherence_per_minute']}")
            print(f"{name}: drift, background per minute: {d['background_adherence_per_minute']}")
    if parts & {"captions", "questions"}:
        model = load_toy_qwen_vl(args.vlm_dir, dtype, "cpu") if args.vlm_dir else load_vlm(dtype)
        vlm = StreamingVLMPipeline(model, manager, 128 << 20, configs["streaming_vlm"])
        results["vlm_dir"] = str(args.vlm_dir) if args.vlm_dir else "embedded"
    if "captions" in parts:
        results["streaming_vlm"] = c = caption_accuracy(
            vlm, args.caption_seconds, args.seed + 300, (SIZE, SIZE)
        )
        print(
            f"captions: pair precision {c['pair_precision']:.2f}, recall {c['pair_recall']:.2f}, "
            f"silence agreement {c['silence_agreement']:.2f} over {c['seconds']} s"
        )
    if "questions" in parts:
        seeds = [args.seed + 400 + i for i in range(args.qa_feeds)]
        results["streaming_vlm_qa"] = q = question_accuracy(
            vlm, args.qa_seconds, seeds, (SIZE, SIZE)
        )
        kinds = ", ".join(
            f"{k} {v['accuracy']:.2f} ({v['asked']})"
            for k, v in q["per_kind"].items()
            if v["asked"]
        )
        print(f"questions: accuracy {q['accuracy']:.2f} over {q['asked']}: {kinds}")
    args.out.write_text(json.dumps(results, indent=2))
    if "drift" in parts:
        _plot(results, args.out.with_suffix(".png"))


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streams = {n: results[n]["drift"] for n in GENERATORS if "drift" in results.get(n, {})}
    fig, axes = plt.subplots(
        1, len(streams), figsize=(6 * len(streams), 3.6), squeeze=False, sharey=True
    )
    for ax, (name, stream) in zip(axes[0], streams.items(), strict=True):
        for key, label in (
            ("adherence_per_minute", "sprites (colour and shape)"),
            ("color_adherence_per_minute", "sprites' colours"),
            ("background_adherence_per_minute", "background"),
        ):
            values = stream[key]
            ax.plot(range(1, len(values) + 1), values, marker="o", label=label)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("minute of the stream")
        ax.set_title(f'{_TITLES[name]}: "{stream["prompt"]}"', fontsize=9)
    axes[0, 0].set_ylabel("share of frames following the prompt")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
