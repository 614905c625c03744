"""Restyle streams on LongLive and Rolling Forcing: strength 1.0 is plain generation bit for bit,
a strength under every level gives back the VAE reconstruction of the input, input slots at the
pipeline's fps (readiness, arrival, crop and resize, skipping when overfull), strength changes
from the next chunk, prompt switches, and the errors of bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from framestream.models.registry import load_wan_models
from framestream.models.schedule import FlowSchedule
from framestream.models.toyworld import prompt as toyworld_prompt
from framestream.models.toyworld import render, sample_clip
from framestream.models.vae import from_uint8, to_uint8
from framestream.stream.errors import InputError
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.feed import TimestampsBackwardsError
from framestream.stream.pipelines.longlive import LongLiveConfig, LongLivePipeline
from framestream.stream.pipelines.restyle import (
    InputSlots,
    NotRestyleError,
    fit_frame,
    levels_over,
)
from framestream.stream.pipelines.rolling_forcing import (
    RollingForcingConfig,
    RollingForcingPipeline,
)
from framestream.stream.pipelines.wan import WanCalibration
from framestream.stream.requests import GenerationRequest, RestyleRequest

SIZE = {"height": 32, "width": 32}  # 2 x 2 tokens per latent frame: one block
FPS = 16


@pytest.fixture(scope="module")
def tiny():
    return load_wan_models("tiny")


def longlive(models, **config) -> LongLivePipeline:
    return LongLivePipeline(models, KVCacheManager(), 16 << 20, LongLiveConfig(**config), 4)


def rolling(models, **config) -> RollingForcingPipeline:
    return RollingForcingPipeline(
        models, KVCacheManager(), 16 << 20, RollingForcingConfig(**config), 4
    )


PIPELINES = {"longlive": longlive, "rolling_forcing": rolling}


def feed(frames: int, seed: int = 0, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, *shape, 3), dtype=np.uint8)


class Feeder:
    """Pushes a feed's frames at 16 fps (timestamp i / 16, arrival 1000 + i) until the stream's
    next step can run."""

    def __init__(self, pipe, state, frames: np.ndarray) -> None:
        self.pipe, self.state, self.frames, self.next = pipe, state, frames, 0

    def fill(self) -> None:
        while not self.pipe.input_ready(self.state):
            self.push()

    def push(self) -> None:
        i = self.next
        self.pipe.push_frame(self.state, i / FPS, self.frames[i], arrival=1000.0 + i)
        self.next += 1

    def step(self):
        self.fill()
        return self.pipe.step(self.state)


def restyle_request(strength: float, prompt: str = "a red ball", seed: int = 3):
    return GenerationRequest(prompt, seed=seed, restyle=RestyleRequest(strength), **SIZE)


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_strength_one_is_plain_generation_bit_for_bit(tiny, name: str) -> None:
    """Same seed, same prompt switch: the restyle stream at 1.0 makes the plain stream's frames,
    and its frames carry the input slots' indices and arrivals."""
    pipe = PIPELINES[name](tiny)
    plain = pipe.open(GenerationRequest("a red ball", seed=3, **SIZE))
    restyle = pipe.open(restyle_request(1.0))
    feeder = Feeder(pipe, restyle, feed(120))
    for chunk in range(5):
        if chunk == 3:
            for state in (plain, restyle):
                pipe.switch_prompt(state, "a blue cube")
        expected, got = pipe.step(plain), feeder.step()
        np.testing.assert_array_equal(got.frames, expected.frames)
        assert got.first_index == expected.first_index
        np.testing.assert_array_equal(
            got.input_arrivals, 1000.0 + np.arange(got.first_index, got.first_index + len(got))
        )
    assert expected.input_arrivals is None


def _reconstruction(vae, frames: np.ndarray) -> np.ndarray:
    """The VAE's streamed reconstruction of ``frames`` (uint8 [T, H, W, 3], 9 then 12 a
    chunk): encode, then decode the normalised latents."""
    encoded, decoded = vae.new_encode_state(), vae.new_decode_state()
    out = []
    for part in np.split(frames, range(9, len(frames), 12)):
        z = vae.encode_chunk(from_uint8(torch.from_numpy(part)[None]), encoded)
        out.append(to_uint8(vae.decode_chunk(z, decoded))[0].numpy())
    return np.concatenate(out)


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_strength_under_every_level_gives_the_input_back(tiny, name: str) -> None:
    """At a strength under every sigma no DiT forward makes x0: the frames are the input's
    streamed VAE reconstruction, exactly."""
    pipe = PIPELINES[name](tiny)
    state = pipe.open(restyle_request(0.2))
    frames = feed(33, seed=1, shape=(32, 32))
    feeder = Feeder(pipe, state, frames)
    out = np.concatenate([feeder.step().frames for _ in range(3)])
    np.testing.assert_array_equal(out, _reconstruction(tiny.vae, frames))


@pytest.fixture(scope="module")
def toyworld():
    return load_wan_models("toyworld")


def test_toyworld_low_strength_stays_near_the_input(toyworld) -> None:
    """The trained toy-world generator (unshifted levels 1, 0.75, 0.5, 0.25): at 0.2 the frames
    are the VAE reconstruction of the toy-world clip; at 0.5 the two lowest levels run and the
    frames stay far nearer the reconstruction than plain generation under the same prompt.
    The prompt is the clip's own, so what 0.5 keeps is the input's layout: under another
    background's prompt the generator repaints the background even at 0.5, as a restyle
    should."""
    clip = sample_clip(np.random.default_rng(4), seconds=33 / FPS, fps=FPS)
    frames = render(clip)[:33]
    reconstruction = _reconstruction(toyworld.vae, frames).astype(np.float64)
    pipe = longlive(toyworld)
    prompt = toyworld_prompt(clip)
    errors = {}
    for strength in (0.2, 0.5, 1.0):
        state = pipe.open(GenerationRequest(prompt, seed=2, restyle=RestyleRequest(strength)))
        feeder = Feeder(pipe, state, frames)
        out = np.concatenate([feeder.step().frames for _ in range(3)]).astype(np.float64)
        errors[strength] = np.sqrt(np.mean((out - reconstruction) ** 2))
        pipe.close(state)
    assert errors[0.2] == 0.0
    assert errors[0.5] < 0.5 * errors[1.0]


def test_input_ready_and_arrival_follow_the_chunks_slots(tiny) -> None:
    pipe = longlive(tiny)
    plain = pipe.open(GenerationRequest("a red ball", **SIZE))
    assert pipe.input_ready(plain) and pipe.input_arrival(plain) is None
    state = pipe.open(restyle_request(0.6))
    assert not pipe.input_ready(state) and pipe.input_arrival(state) is None
    feeder = Feeder(pipe, state, feed(40))
    for _ in range(8):
        feeder.push()
    assert not pipe.input_ready(state)  # slots 0..7 of the first chunk's 9
    feeder.push()
    assert pipe.input_ready(state) and pipe.input_arrival(state) == 1008.0
    first = pipe.step(state)
    assert (first.first_index, len(first)) == (0, 9)
    assert not pipe.input_ready(state) and pipe.input_arrival(state) is None
    for _ in range(12):
        feeder.push()
    assert pipe.input_ready(state) and pipe.input_arrival(state) == 1020.0
    second = pipe.step(state)
    assert (second.first_index, len(second)) == (9, 12)


def test_rolling_forcing_waits_for_the_blocks_its_step_enters(tiny) -> None:
    """Strength 0.6 keeps one level (555.6): a step enters and exits one block, so it waits
    for its own input only; 0.9 keeps three, so the first step enters three blocks."""
    pipe = rolling(tiny)
    for strength, first_step_frames in ((0.6, 9), (0.9, 33), (1.0, 57)):
        state = pipe.open(restyle_request(strength))
        feeder = Feeder(pipe, state, feed(80))
        feeder.fill()
        assert feeder.next == first_step_frames
        assert pipe.input_arrival(state) == 1000.0 + first_step_frames - 1
        assert pipe.step(state).first_index == 0
        for _ in range(12):
            assert not pipe.input_ready(state)
            feeder.push()
        assert pipe.input_ready(state)
        assert pipe.step(state).first_index == 9
        pipe.close(state)


def test_slots_take_the_last_frame_at_or_before_their_time() -> None:
    """Frames at an irregular rate: each 16 fps slot takes the last frame at or before
    t0 + i / 16, complete once a frame at or after its time is in."""
    slots = InputSlots(FPS, 8, 8, max_frames=24, first_chunk=9, chunk=12)
    times = [10.0, 10.05, 10.3, 10.3, 10.52, 10.9]
    for i, t in enumerate(times):
        slots.push(t, np.full((8, 8, 3), i, np.uint8), arrival=float(i))
    # slot i at 10 + i / 16: 0 -> f0 (10.0), 1..4 -> f1 (10.05 <= 10.0625 .. 10.25),
    # 5..8 -> f3 (the later of the two at 10.3; 10.5 < 10.52), 9..14 -> f4 (10.52)
    taken = slots.take()
    assert taken.first_index == 0
    np.testing.assert_array_equal(taken.frames[:, 0, 0, 0], [0, 1, 1, 1, 1, 3, 3, 3, 3])
    np.testing.assert_array_equal(taken.arrivals, [0, 1, 1, 1, 1, 3, 3, 3, 3])
    assert not slots.ready()  # slots 9..20 wait for a frame at or after 10 + 20 / 16
    assert slots.completed_at() is None
    slots.push(11.25, np.full((8, 8, 3), 9, np.uint8), arrival=9.0)  # slot 20 exactly
    assert slots.ready() and slots.completed_at() == 9.0
    np.testing.assert_array_equal(slots.take().frames[:, 0, 0, 0], [4] * 6 + [5] * 5 + [9])


def test_a_timestamp_far_ahead_skips_whole_chunks_in_one_go() -> None:
    slots = InputSlots(FPS, 8, 8, max_frames=24, first_chunk=9, chunk=12)
    slots.push(0.0, np.zeros((8, 8, 3), np.uint8), arrival=0.0)
    slots.push(1e6, np.full((8, 8, 3), 7, np.uint8), arrival=1.0)  # slot 16e6
    # 16e6 + 1 slots complete; the oldest whole 9-slot chunks go until at most 24 are left
    assert slots.skipped_frames == 15_999_984 == slots.next_index
    np.testing.assert_array_equal(slots.take().frames[:, 0, 0, 0], [0] * 9)
    assert not slots.ready()  # 8 slots of the next 12
    slots.push(1e6 + 11 / FPS, np.full((8, 8, 3), 9, np.uint8), arrival=2.0)
    np.testing.assert_array_equal(slots.take().frames[:, 0, 0, 0], [0] * 7 + [7] * 5)


def test_fit_frame_crops_the_centre_then_resizes() -> None:
    frame = np.zeros((40, 80, 3), np.uint8)
    frame[:, 20:60] = 200  # the centre square; the sides are cropped off
    out = fit_frame(frame, 16, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert (out == 200).all()
    tall = np.zeros((80, 40, 3), np.uint8)
    tall[20:60] = 100
    assert (fit_frame(tall, 8, 8) == 100).all()
    assert fit_frame(frame, 40, 80) is frame


def test_an_overfull_feed_skips_its_oldest_whole_chunks(tiny) -> None:
    """max_input_frames 24 (two chunks): 60 frames pushed without a step keep the newest
    chunks; the first chunk taken is still a first chunk (9 slots) and the frames carry the
    slots' indices."""
    pipe = longlive(tiny, max_input_frames=24)
    state = pipe.open(restyle_request(0.6))
    feeder = Feeder(pipe, state, feed(60))
    for _ in range(60):
        feeder.push()
    # 60 slots: 9 skipped (the unencoded first chunk keeps size 9), then 9 more twice ...
    assert state.restyle.skipped_frames == 36 and state.restyle.slots.next_index == 36
    chunk = pipe.step(state)
    assert (chunk.first_index, len(chunk)) == (36, 9)
    np.testing.assert_array_equal(chunk.input_arrivals, 1000.0 + np.arange(36, 45))
    chunk = pipe.step(state)
    assert (chunk.first_index, len(chunk)) == (45, 12)
    assert state.restyle.frames_taken == 21
    with pytest.raises(ValueError, match="max_input_frames=12 must hold 2 chunks"):
        longlive(tiny, max_input_frames=12)


def test_input_errors(tiny) -> None:
    pipe = longlive(tiny)
    plain = pipe.open(GenerationRequest("a red ball", **SIZE))
    frame = feed(1)[0]
    with pytest.raises(NotRestyleError, match="takes no input frames"):
        pipe.push_frame(plain, 0.0, frame)
    with pytest.raises(NotRestyleError, match="not a restyle session"):
        pipe.set_strength(plain, 0.5)
    assert issubclass(NotRestyleError, InputError)
    state = pipe.open(restyle_request(0.6))
    for bad in (frame[..., :2], frame.astype(np.float32), frame[:0], frame[0]):
        with pytest.raises(InputError, match=r"uint8 \[H, W, 3\]"):
            pipe.push_frame(state, 0.0, bad)
    for bad_time in (-1.0, math.inf, math.nan):
        with pytest.raises(InputError, match="finite number"):
            pipe.push_frame(state, bad_time, frame)
    pipe.push_frame(state, 1.0, frame)
    with pytest.raises(TimestampsBackwardsError, match="older than the previous one"):
        pipe.push_frame(state, 0.5, frame)
    for bad_strength in (0.0, 1.5, math.nan):
        with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
            pipe.set_strength(state, bad_strength)
        with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
            RestyleRequest(bad_strength)
    tiny_decoder = load_wan_models("tiny", decoder="tiny")
    with pytest.raises(ValueError, match="restyle needs the Wan VAE's encoder"):
        longlive(tiny_decoder).open(restyle_request(0.6))


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_set_strength_applies_from_the_next_chunk(tiny, name: str) -> None:
    """Two streams at 1.0 on the same feed; one drops to 0.2 after two chunks: those two
    chunks are alike, the next differs."""
    pipe = PIPELINES[name](tiny)
    frames = feed(120)
    states = [pipe.open(restyle_request(1.0)) for _ in range(2)]
    feeders = [Feeder(pipe, s, frames) for s in states]
    for _ in range(2):
        a, b = (f.step() for f in feeders)
        np.testing.assert_array_equal(a.frames, b.frames)
    pipe.set_strength(states[1], 0.2)
    assert states[1].restyle.strength == 0.2
    a, b = (f.step() for f in feeders)
    assert a.first_index == b.first_index and not np.array_equal(a.frames, b.frames)


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_prompt_switch_on_a_restyle_stream(tiny, name: str) -> None:
    """At 0.7 (one level runs) a switch takes the new prompt's text and changes the frames
    from the chunk it applies to, the chunks before it untouched."""
    pipe = PIPELINES[name](tiny)
    frames = feed(80)
    states = [pipe.open(restyle_request(0.7)) for _ in range(2)]
    feeders = [Feeder(pipe, s, frames) for s in states]
    for _ in range(2):
        a, b = (f.step() for f in feeders)
        np.testing.assert_array_equal(a.frames, b.frames)
    pipe.switch_prompt(states[1], "a blue cube")
    a, b = (f.step() for f in feeders)
    assert not np.array_equal(a.frames, b.frames)
    new_text = tiny.dit.encode_text(tiny.encode_prompt("a blue cube"))
    torch.testing.assert_close(states[1].text.k, new_text.k)


def test_step_cost_adds_the_input_encode(tiny) -> None:
    pipe = longlive(tiny)
    encode = pipe._time_encode(1)
    assert encode is not None and encode > 0
    pipe.calibration = WanCalibration(0.2, 0.1, 12, 0.05)
    plain = pipe.step_cost(GenerationRequest("a red ball"))
    restyle = pipe.step_cost(GenerationRequest("a red ball", restyle=RestyleRequest()))
    assert restyle.step_seconds == pytest.approx(plain.step_seconds + 0.05)
    half = GenerationRequest("a red ball", height=64, width=128, restyle=RestyleRequest())
    half_plain = GenerationRequest("a red ball", height=64, width=128)
    assert pipe.step_cost(half).step_seconds == pytest.approx(
        pipe.step_cost(half_plain).step_seconds + 0.05 * 0.5
    )
    assert longlive(load_wan_models("tiny", decoder="tiny"))._time_encode(1) is None


def test_rolling_forcing_blocks_over_a_dropped_strength_take_their_input(tiny) -> None:
    """From 1.0 to 0.8 (levels 555.6 and 769.2 stay): the window's blocks at 882.4 and 952.4
    take their input as x0 in the next joint pass (re-noised one level down from it), no new
    block enters until the window drains to the new entry level, and no input is waited for
    meanwhile."""
    pipe = rolling(tiny)
    state = pipe.open(restyle_request(1.0))
    feeder = Feeder(pipe, state, feed(120))
    for _ in range(2):
        feeder.step()
    assert state.levels == [0, 1, 2, 3]
    pipe.set_strength(state, 0.8)
    assert pipe.input_ready(state)  # the next step enters no block
    inputs = state.inputs[:, :, 3:].clone()  # the blocks left after the oldest exits
    generator = torch.Generator().set_state(state.generator.get_state())
    pipe.step(state)
    assert state.levels == [0, 1, 2] and feeder.next == 69
    noise = torch.randn(inputs.shape, generator=generator)
    sigmas = pipe._sigmas
    for block, level in ((1, 1), (2, 2)):  # were at 2 and 3: over 0.8
        part = slice(3 * block, 3 * block + 3)
        expected = (1 - sigmas[level]) * inputs[:, :, part] + sigmas[level] * noise[:, :, part]
        torch.testing.assert_close(state.window[:, :, part], expected)
    for _ in range(2):
        assert pipe.input_ready(state)
        pipe.step(state)
    assert state.levels == [0] and not pipe.input_ready(state)  # now one block a step enters
    feeder.step()
    assert state.levels == [0]


def test_a_strength_at_a_level_runs_that_level() -> None:
    """The float32 table holds 0.8 as 0.800000012: a strength of 0.8 still runs it."""
    sigmas = FlowSchedule((1000, 800, 600, 400, 200), shift=1.0).sigmas
    assert sigmas[1] > 0.8
    assert [levels_over(sigmas, s) for s in (1.0, 0.8, 0.79, 0.6, 0.2, 0.1)] == [0, 1, 2, 2, 4, 5]


def test_input_lead_is_a_chunk_a_level_held(tiny) -> None:
    """What a client must keep ahead of what it received: LongLive restyles the chunk it takes;
    a Rolling Forcing block stays a pass per window level at or under the strength."""
    assert longlive(tiny).input_lead_frames(1.0) == 12
    pipe = rolling(tiny)
    held = {s: sum(sigma <= s for sigma in pipe._sigmas) for s in (0.3, 0.6, 0.9, 1.0)}
    assert held[1.0] == 5 and held[0.3] == 0
    for strength, levels in held.items():
        assert pipe.input_lead_frames(strength) == max(1, levels) * 12
