"""``stream generate --commentary``: the embedded toy world generates and watches itself in
process, and a WebVTT file lies beside the MP4, its cues at the captions' video seconds."""

from __future__ import annotations

import re

import av
import pytest

from framestream.cli.main import main
from framestream.clients.vtt import format_vtt, vtt_time
from framestream.stream.pipelines.streaming_vlm import Caption

_CUE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)$")


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    """The cues of a WebVTT file, checked against the format's rules as it goes."""
    blocks = text.split("\n\n")
    assert blocks[0] == "WEBVTT"
    cues = []
    for block in filter(None, (b.strip("\n") for b in blocks[1:])):
        timing, *lines = block.split("\n")
        match = _CUE.match(timing)
        assert match, timing
        start, end = _seconds(*match.groups()[:4]), _seconds(*match.groups()[4:])
        assert end > start and lines and all(lines)
        cues.append((start, end, "\n".join(lines)))
    return cues


def test_generate_with_commentary_writes_a_vtt_beside_the_mp4(tmp_path, capsys) -> None:
    out = tmp_path / "video.mp4"
    argv = ["generate", "--prompt", "a red ball", "--switch", "t=2s:a blue square"]
    argv += ["--seconds", "4", "--out", str(out), "--commentary", "--device", "cpu"]
    assert main(argv) == 0
    with av.open(str(out)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == 64
    cues = parse_vtt((tmp_path / "video.vtt").read_text())
    assert cues, "the toy VLM names what it sees"
    starts = [start for start, _, _ in cues]
    assert starts == sorted(set(starts)) and len(starts) >= 3  # silent seconds make no cue
    for start, end, text in cues:
        assert start == int(start) and end == start + 1 and end <= 4  # a second of the video
        assert text.strip()
    assert "captions" in capsys.readouterr().out


def test_vtt_times_and_text_escapes() -> None:
    assert vtt_time(3725.5) == "01:02:05.500"
    text = format_vtt([Caption(0, 1, ""), Caption(1, 2, "a --> b\n\nc")])
    assert parse_vtt(text) == [(1.0, 2.0, "a -> b\nc")]
    with pytest.raises(ValueError):
        vtt_time(-1)
