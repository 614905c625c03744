"""Quality floors of the shipped toy-world models, measured on pixels and words on fixed,
held-out seeds through the real pipelines (``evals.toyworld_quality`` reports them at length).

Chance levels, for reading the floors: a frame's background is one of 4; a caption naming a
random (colour, shape) pair is right about 1/32 of the time (the trained model's held-out
chance level, another feed's true captions, scores 0.06 pair-F1).

The shipped generator (run 24, BENCHMARKS.md) draws the prompt's background in 1.00 / 1.00 of
the frames of the eval's 24 prompts and its sprites in the prompt's colours in 0.96 / 0.98
(LongLive / Rolling Forcing; a single random sprite would score about 0.12), in its shapes too
in 0.52 / 0.56 (a region must fit its shape's template, models/toyworld/measure.py); the floors
below hold on this file's seeds.
The understanding model answers questions about the live feed (colour, shape, count, which
way), asked as a client asks them; a model that only commentates scores about 0.1.
"""

from __future__ import annotations

import pytest

from framestream.evals.toyworld_quality import (
    caption_accuracy,
    prompt_adherence,
    question_accuracy,
    switch_behaviour,
)
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.longlive import LongLivePipeline
from framestream.stream.pipelines.rolling_forcing import RollingForcingPipeline
from framestream.stream.pipelines.streaming_vlm import StreamingVLMPipeline

SEED = 20_000  # held out: training uses seeds < 10_000 and its evaluations 10_000 + k

BACKGROUND_FLOOR = 0.9  # measured 1.00 (LongLive) and 1.00 (Rolling Forcing) on these seeds
COLOR_FLOOR = 0.9  # sprites in the prompt's colours: measured 1.00 and 1.00 (chance ~0.12)
# in the prompt's colours and shapes, read by template: measured 0.35 and 0.41 (run 21: 0.27 and
# 0.24; on 4 prompts a prompt moves the mean by a quarter)
STRICT_FLOOR = 0.25
# after a switch, the new prompt's colours: measured 0.78 and 0.45; followed within 5 s, of 8:
# measured 7 and 6 (run 21: 0.85 and 0.42, 7 and 7). On the eval's 24 switches Rolling Forcing
# shows the new colours in 0.56 of frames (run 21: 0.49) and follows 23 (run 21: 22)
SWITCH_COLOR_FLOOR = 0.4
SWITCHES_FOLLOWED_FLOOR = 6
CAPTION_FLOOR = 0.6  # measured pair precision 0.83, recall 0.80 on this feed
QA_FLOOR = 0.8  # questions answered right on two feeds: measured 0.97 of 29 (0.14 untrained)
QA_KIND_FLOOR = 0.5  # each kind: measured 0.83 (colour, 6 asked) to 1.0


@pytest.fixture(scope="module")
def wan():
    from framestream.models.registry import load_wan_models

    return load_wan_models()  # the default: the shipped toy-world generator


@pytest.mark.parametrize("pipeline", [LongLivePipeline, RollingForcingPipeline])
def test_generated_clips_follow_the_prompt(wan, pipeline) -> None:
    pipe = pipeline(wan, KVCacheManager(), 64 << 20)
    result = prompt_adherence(pipe, n=4, seconds=3.0, seed=SEED)
    assert result["background_mean"] >= BACKGROUND_FLOOR, result
    assert result["color_mean"] >= COLOR_FLOOR, result
    assert result["mean"] >= STRICT_FLOOR, result


@pytest.mark.parametrize("pipeline", [LongLivePipeline, RollingForcingPipeline])
def test_generated_clips_follow_a_prompt_switch(wan, pipeline) -> None:
    pipe = pipeline(wan, KVCacheManager(), 64 << 20)
    result = switch_behaviour(pipe, n=8, seed=SEED + 1, seconds=7.0)  # 5 s after the switch
    assert result["color_after_mean"] >= SWITCH_COLOR_FLOOR, result
    assert result["followed"] >= SWITCHES_FOLLOWED_FLOOR, result


def test_commentary_names_what_the_feed_shows() -> None:
    from framestream.models.toyworld.embedded import load_vlm

    pipe = StreamingVLMPipeline(load_vlm(), KVCacheManager(), 32 << 20)
    result = caption_accuracy(pipe, seconds=30, seed=SEED + 2, size=(64, 64))
    assert result["seconds"] >= 28, result
    assert result["pair_recall"] >= CAPTION_FLOOR, result
    assert result["pair_precision"] >= CAPTION_FLOOR, result
    assert result["silence_agreement"] >= CAPTION_FLOOR, result


def test_questions_about_the_feed_are_answered() -> None:
    from framestream.models.toyworld.embedded import load_vlm

    pipe = StreamingVLMPipeline(load_vlm(), KVCacheManager(), 32 << 20)
    result = question_accuracy(pipe, 30, [SEED + 3, SEED + 4], (64, 64))
    assert result["asked"] >= 24, result
    assert result["accuracy"] >= QA_FLOOR, result
    for kind, got in result["per_kind"].items():
        assert got["asked"] >= 4 and got["accuracy"] >= QA_KIND_FLOOR, (kind, result)
