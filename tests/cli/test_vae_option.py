"""``--vae``: ``tiny`` streams the toy world through its shipped tiny decoder end to end
(``stream generate`` to an MP4), and a wrong file or path is one line on stderr (a file of the
tiny layout is recognised by its keys: tests/models/test_registry_decoders.py)."""

from __future__ import annotations

from pathlib import Path

import av
import torch

from framestream.cli.main import main
from framestream.models.vae_tiny import TinyDecoderConfig, random_tiny_decoder, save_tiny_decoder


def _frames(path: Path) -> tuple[int, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)), stream.width, stream.height


def _generate(tmp_path: Path, *extra: str) -> int:
    argv = ["generate", "--prompt", "a red circle moves right on a black background"]
    return main([*argv, "--seconds", "1", "--out", str(tmp_path / "v.mp4"), *extra])


def test_vae_tiny_generates_the_toy_world(tmp_path: Path) -> None:
    """A second of LongLive (a 9-frame chunk, then 12s) through the shipped tiny decoder."""
    assert _generate(tmp_path, "--vae", "tiny") == 0
    assert _frames(tmp_path / "v.mp4") == (16, 64, 64)


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_wrong_vae_files_are_one_line(tmp_path: Path, capsys) -> None:
    assert _generate(tmp_path, "--vae", str(tmp_path / "nowhere.pth")) == 2
    assert "--vae" in _one_line(capsys)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    assert _generate(tmp_path, "--vae", str(garbage)) == 2
    assert "cannot load the models" in _one_line(capsys)
    broken = tmp_path / "broken.pth"  # the tiny layout with a wrong shape
    save_tiny_decoder(random_tiny_decoder(TinyDecoderConfig(widths=(8, 8, 4, 4))), broken)
    published = torch.load(broken, weights_only=True)
    published["decoder.3.conv.0.weight"] = torch.zeros(8, 8, 3, 3)
    torch.save(published, broken)
    assert _generate(tmp_path, "--vae", str(broken)) == 2
    line = _one_line(capsys)
    assert "decoder.3.conv.0.weight has shape (8, 8, 3, 3)" in line
