"""The scheduler alone, in pure Python on a fake clock: the order of work, fairness, pacing,
background sessions, admission by compute and the device's health."""

from __future__ import annotations

import subprocess
import sys

import pytest

from framestream.stream.scheduler import (
    Entry,
    Health,
    Scheduler,
    SchedulerConfig,
    StepCost,
    Understanding,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scheduler(**config) -> tuple[Scheduler, Clock]:
    clock = Clock()
    return Scheduler(SchedulerConfig(**config), clock), clock


def generation(id_: int, realtime: bool = True, cost: StepCost | None = None, **kw) -> Entry:
    return Entry(id_, "generation", 0, 16.0, realtime, cost, **kw)


def understanding(id_: int, group: int = 1) -> Entry:
    return Entry(id_, "understanding", group, 2.0, True)


READY = Understanding(ready=True, decoding=False, prefill_tokens=100, max_prefill_tokens=250)
DECODING = Understanding(ready=False, decoding=True, prefill_tokens=0, max_prefill_tokens=250)


def test_the_scheduler_imports_no_tensor_library() -> None:
    code = (
        "import sys, framestream.stream.scheduler; "
        "print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_new_session_runs_at_once_then_by_its_deadline() -> None:
    s, clock = scheduler(lookahead_seconds=1.0)
    entry = generation(1)
    s.add(entry)
    assert s.schedule({}).generation is entry  # no frame yet: due now
    s.launched(entry, 12)
    s.collected(entry, 12)  # t0 = now; 12 frames = 0.75 s of playback made
    assert s.schedule({}).generation is entry  # 0.75 s ahead, within the lookahead
    s.collected(entry, 12)  # 1.5 s ahead
    plan = s.schedule({})
    assert plan.generation is None and 0 < plan.sleep <= 0.05
    clock.now += 0.6  # 0.9 s ahead again
    assert s.schedule({}).generation is entry


def test_earliest_deadline_first() -> None:
    s, clock = scheduler()
    a, b = generation(1), generation(2)
    for entry in (a, b):
        s.add(entry)
        s.collected(entry, 12)
    s.collected(a, 12)  # a is further ahead
    assert s.schedule({}).generation is b


def test_overdue_generation_yields_to_waiting_understanding_every_other_turn() -> None:
    s, clock = scheduler()
    video, feed = generation(1), understanding(2)
    s.add(video)
    s.add(feed)
    s.collected(video, 12)
    clock.now += 5.0  # far behind
    turns = [s.schedule({2: READY}) for _ in range(4)]
    kinds = ["generation" if p.generation else "prefill" if p.prefill else "-" for p in turns]
    assert kinds == ["generation", "prefill", "generation", "prefill"]


def test_a_reply_under_way_keeps_the_device_for_its_slice_before_an_overdue_chunk() -> None:
    s, clock = scheduler(reply_slice_seconds=0.5)
    video, feed = generation(1), understanding(2)
    s.add(video)
    s.add(feed)
    s.collected(video, 12)
    clock.now += 5.0  # far behind, and a reply is under way

    def turn() -> str:
        plan = s.schedule({2: DECODING})
        clock.now += 0.15  # each decode step or chunk takes this long here
        return "generation" if plan.generation else "decode" if plan.decode else "-"

    kinds = [turn() for _ in range(10)]
    # reply tokens for 0.5 s (steps starting at 0, 0.15, 0.3, 0.45), one chunk, the next slice
    assert kinds == ["decode"] * 4 + ["generation"] + ["decode"] * 4 + ["generation"]


def test_prefill_batches_one_group_within_its_token_budget_then_decode_per_group() -> None:
    s, _ = scheduler()
    entries = [understanding(1), understanding(2), understanding(3), understanding(4, group=2)]
    for entry in entries:
        s.add(entry)
    plan = s.schedule({e.id: READY for e in entries})
    assert [e.id for e in plan.prefill] == [1, 2]  # 100 + 100 of 250; group 2 waits its turn
    plan = s.schedule({1: DECODING, 2: DECODING, 4: DECODING})
    assert sorted([e.id for e in group] for group in plan.decode) == [[1, 2], [4]]


def test_a_paused_session_waits_and_its_clock_stands_still() -> None:
    s, clock = scheduler(lookahead_seconds=1.0)
    entry = generation(1)
    s.add(entry)
    s.collected(entry, 12)
    deadline = entry.deadline()
    s.pause(entry)
    clock.now += 10.0
    assert s.schedule({}).generation is None
    s.resume(entry)
    assert entry.deadline() == deadline + 10.0


def test_background_sessions_run_only_when_nothing_realtime_is_due() -> None:
    s, clock = scheduler(lookahead_seconds=1.0, output_queue_frames=30)
    live, offline = generation(1), generation(2, realtime=False)
    queued = [0]
    offline.queued_frames = lambda: queued[0]
    s.add(live)
    s.add(offline)
    assert s.schedule({}).generation is live  # due now
    s.collected(live, 12)
    s.collected(live, 12)  # 1.5 s ahead: the device has slack
    assert s.schedule({}).generation is offline
    queued[0] = 20  # its consumer is behind: 20 + 1 > 30 - ... waits rather than drops
    offline.chunk_frames = 12
    plan = s.schedule({})
    assert plan.generation is None and plan.sleep > 0


def test_admission_by_compute() -> None:
    s, _ = scheduler(max_load=0.9, max_step_seconds=2.0)
    heavy = StepCost(step_seconds=0.6, media_seconds=0.75)  # 80 % of the device
    assert s.admit(heavy, realtime=True) is None
    s.add(generation(1, cost=heavy))
    refused = s.admit(StepCost(0.2, 0.75), realtime=True)  # 27 % more: over 90 %
    assert refused is not None and refused.reason == "compute_full"
    assert "27%" in refused.message and "10% is free" in refused.message
    assert s.admit(StepCost(0.2, 0.75), realtime=False) is None  # background: no claim
    huge = s.admit(StepCost(150.0, 0.75), realtime=False)  # one step would stall the rest
    assert huge is not None and "150.0 s" in huge.message and "max_step_seconds" in huge.message
    assert s.admit(None, realtime=True) is None  # not calibrated: no claim
    s.remove(1)
    assert s.load() == 0.0


def test_batched_sessions_claim_their_share_beside_the_first() -> None:
    s, _ = scheduler(max_load=0.9)
    stream = StepCost(step_seconds=0.4, media_seconds=1.0, batched_seconds=0.1)
    assert s.admit(stream, realtime=True, group=1) is None
    s.add(Entry(1, "understanding", 1, 2.0, True, stream))
    for id_ in range(2, 7):  # 0.4 + 5 x 0.1
        assert s.admit(stream, realtime=True, group=1) is None
        s.add(Entry(id_, "understanding", 1, 2.0, True, stream))
    assert s.load() == pytest.approx(0.9)
    refused = s.admit(stream, realtime=True, group=1)
    assert refused is not None and "10% of the device" in refused.message
    other = s.admit(stream, realtime=True, group=2)  # another pipeline: no batch to share
    assert other is not None and "40% of the device" in other.message


def test_late_realtime_steps_degrade_the_health_for_a_while() -> None:
    s, clock = scheduler(late_seconds=0.5, health_window_seconds=10.0)
    entry = generation(1)
    s.add(entry)
    s.collected(entry, 12)
    assert s.health() is Health.OK
    clock.now += 3.0  # its next chunk lands 2.25 s after it was due
    s.collected(entry, 12)
    assert s.health() is Health.DEGRADED and s.late_steps() == 1
    clock.now += 11.0
    assert s.health() is Health.OK
    offline = generation(2, realtime=False)
    s.add(offline)
    s.collected(offline, 12)
    clock.now += 30.0
    s.collected(offline, 12)  # background sessions have no deadline to miss
    assert s.health() is Health.OK


def restyle(id_: int, cost: StepCost | None = None, realtime: bool = True) -> Entry:
    return Entry(id_, "generation", 0, 16.0, realtime, cost, input_paced=True)


def test_a_restyle_session_waits_for_its_input_then_is_due_at_once() -> None:
    s, clock = scheduler(lookahead_seconds=1.0)
    entry = restyle(1)
    s.add(entry)
    plan = s.schedule({})  # no input yet: nothing to do, however long it has been
    assert plan.generation is None and 0 < plan.sleep <= 0.05
    clock.now += 30.0
    assert s.schedule({}, {}).generation is None
    assert s.schedule({}, {1: clock.now - 0.1}).generation is entry
    s.launched(entry, 9)
    s.collected(entry, 9)
    # no playback clock: with its next chunk's input in, it runs again at once, never "ahead"
    assert s.schedule({}, {1: clock.now}).generation is entry
    s.pause(entry)
    assert s.schedule({}, {1: clock.now}).generation is None


def test_restyle_and_realtime_sessions_are_ordered_by_how_long_their_input_waited() -> None:
    s, clock = scheduler(lookahead_seconds=1.0)
    plain, early, late = generation(1), restyle(2), restyle(3)
    for entry in (plain, early, late):
        s.add(entry)
    s.collected(plain, 12)  # t0 = now: its next frame is due 0.75 s from now
    assert s.schedule({}, {2: clock.now - 0.2, 3: clock.now - 0.1}).generation is early
    assert s.schedule({}, {3: clock.now - 0.1}).generation is late
    assert s.schedule({}, {}).generation is plain  # within its lookahead: the device is free
    clock.now += 2.0  # the plain session is 1.25 s overdue; an input complete since 0.5 s
    assert s.schedule({}, {3: clock.now - 0.5}).generation is plain


def test_a_restyle_session_yields_to_waiting_understanding_as_overdue_generation_does() -> None:
    s, clock = scheduler()
    entry, watcher = restyle(1), understanding(2)
    s.add(entry)
    s.add(watcher)
    inputs = {1: clock.now}
    assert s.schedule({2: READY}, inputs).generation is entry
    assert s.schedule({2: READY}, inputs).prefill == [watcher]
    assert s.schedule({2: READY}, inputs).generation is entry


def test_a_background_restyle_session_waits_for_room_and_for_realtime_work() -> None:
    s, clock = scheduler(output_queue_frames=30)
    live, offline = restyle(1), restyle(2, realtime=False)
    queued = [0]
    offline.queued_frames = lambda: queued[0]
    s.add(live)
    s.add(offline)
    both = {1: clock.now - 1.0, 2: clock.now - 5.0}
    assert s.schedule({}, both).generation is live  # realtime first, whatever waited longer
    assert s.schedule({}, {2: clock.now}).generation is offline
    queued[0] = 20
    offline.chunk_frames = 12
    assert s.schedule({}, {2: clock.now}).generation is None  # its consumer is behind


def test_a_restyle_chunk_is_late_a_step_past_its_input() -> None:
    s, clock = scheduler(late_seconds=0.5)
    entry = restyle(1, StepCost(step_seconds=0.4, media_seconds=0.75))
    s.add(entry)
    s.schedule({}, {1: clock.now})
    s.launched(entry, 12)
    clock.now += 0.8  # a step (0.4 s) and 0.4 s more: within late_seconds
    s.collected(entry, 12)
    assert s.health() is Health.OK
    s.schedule({}, {1: clock.now})
    s.launched(entry, 12)
    clock.now += 1.0  # 0.6 s past a step
    s.collected(entry, 12)
    assert s.health() is Health.DEGRADED and s.late_steps() == 1


def test_a_restyle_chunk_held_by_a_pause_is_due_from_the_resume() -> None:
    s, clock = scheduler(late_seconds=0.5)
    entry = restyle(1, StepCost(step_seconds=0.4, media_seconds=0.75))
    s.add(entry)
    s.pause(entry)
    complete = clock.now  # its input was all in as it paused
    assert s.schedule({}, {1: complete}).generation is None
    clock.now += 10.0
    s.resume(entry)
    assert s.schedule({}, {1: complete}).generation is entry
    assert entry.deadline() == clock.now
    s.launched(entry, 12)
    clock.now += 0.4  # a step after the resume: on time, however long the pause was
    s.collected(entry, 12)
    assert s.health() is Health.OK and s.late_steps() == 0
    assert s.schedule({}, {1: clock.now + 1.0}).generation is entry  # later input: its own time
    assert entry.deadline() == clock.now + 1.0


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_load"):
        SchedulerConfig(max_load=0)
