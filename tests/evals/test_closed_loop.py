"""The adherence monitor's measure (evals.closed_loop) on the toy world's own ground truth: the
rendered switch clip, and captions that name the new sprite a known second after the switch."""

from __future__ import annotations

import numpy as np

from framestream.clients.sessions import Caption
from framestream.evals.closed_loop import measure_switch, pairs, summarize
from framestream.models.toyworld import render, switch_clip

FPS = 16


def test_both_delays_on_a_rendered_switch() -> None:
    scenario = switch_clip(np.random.default_rng(3), seconds=5, switch_at=2.0, fps=FPS)
    frames = render(scenario.clip)
    (old,) = pairs(scenario.before)
    (new,) = pairs(scenario.after) - {old}
    captions = [
        Caption(0, 1, f"the {old[0]} {old[1]} moves", 0.0),
        Caption(1, 2, "silence is not a caption of the new sprite", 0.0),
        Caption(2, 3, "", 0.0),
        Caption(3, 4, f"a {new[0]} {new[1]} appears", 0.0),
    ]
    before, after = scenario.before, scenario.after
    result = measure_switch(frames, captions, before, after, scenario.switch_frame)
    assert scenario.switch_frame == 32
    assert result.named_after_seconds == 2.0  # the end of second 3, 2 s after the switch at 2 s
    assert result.colour_named_after_seconds == 2.0
    assert result.old_named_before
    # the rendered frames show the new colours from the switch on: the first window ends 1 s on
    assert result.followed_after_seconds == 1.0
    assert result.old_colour_before > 0.9
    unnamed = measure_switch(frames, captions[:3], before, after, 32)
    summary = summarize([result, unnamed])
    assert summary["commentary_named_new_pair"] == 1 and summary["pixels_followed"] == 2
    assert summary["commentary_named_new_pair_seconds_median"] == 2.0
    assert summary["both_agree"] == 1
