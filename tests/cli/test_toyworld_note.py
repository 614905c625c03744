"""``stream serve``, ``stream generate`` and ``stream caption`` say in one line when they run the
embedded toy-world models (the page shows the same warning), naming the flag that loads real
checkpoints; given real checkpoints they say nothing. The models' loading is replaced by a
failure, so each command stops right after the line (nothing loads, nothing serves)."""

from __future__ import annotations

from pathlib import Path

import pytest

from framestream.cli.main import main
from framestream.cli.options import TOYWORLD_NOTE, toyworld_note, unknown_words_note

HEAD = TOYWORLD_NOTE.split("{")[0]


class _Stop(Exception):
    """The stand-in loader's failure."""


def _no_loading(*args, **kwargs):
    raise _Stop("not loading models in this test")


@pytest.fixture
def no_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("framestream.models.registry.load_wan_models", _no_loading)
    monkeypatch.setattr("framestream.stream.service.build_pipelines", _no_loading)


def _notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(HEAD)]


def test_the_note_names_the_flags_of_the_embedded_models_in_use() -> None:
    assert toyworld_note(False, False) is None
    assert toyworld_note(True, False) == (
        "toy-world models: they know coloured shapes, not the real world; "
        "load real checkpoints with --model-dir"
    )
    assert toyworld_note(False, True).endswith("load real checkpoints with --vlm-dir")
    assert toyworld_note(True, True).endswith("with --model-dir and --vlm-dir")


def test_generate_notes_the_embedded_generator(tmp_path: Path, capsys, no_models) -> None:
    argv = ["generate", "--prompt", "a red circle", "--out", str(tmp_path / "v.mp4")]
    assert main(argv) == 2
    assert _notes(capsys.readouterr().err) == [toyworld_note(True, False)]
    assert main([*argv, "--model-dir", str(tmp_path)]) == 2
    assert _notes(capsys.readouterr().err) == []
    assert main([*argv, "--preset", "tiny"]) == 2  # random weights, not the toy world's
    assert _notes(capsys.readouterr().err) == []


def test_generate_names_the_words_the_embedded_generator_skips(
    tmp_path: Path, capsys, no_models
) -> None:
    """The shipped generator reads a closed vocabulary: words outside it are named, once."""
    argv = ["generate", "--prompt", "a red dog moves right on a black beach", "--seconds", "2"]
    argv += ["--switch", "t=1s:a Dog is still", "--out", str(tmp_path / "v.mp4")]
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "does not know" in line]
    assert lines == [unknown_words_note(["dog beach"])]
    assert lines[0].startswith("the toy-world generator does not know the words dog, beach,")
    assert "circle" in lines[0].split("it knows: ")[1]
    assert unknown_words_note(["a red circle moves right on a black background"]) is None
    assert main([*argv, "--model-dir", str(tmp_path)]) == 2  # another model: no such line
    assert "does not know" not in capsys.readouterr().err


def test_serve_notes_the_embedded_models_it_serves(tmp_path: Path, capsys, no_models) -> None:
    argv = ["serve", "--port", "0", "--device", "cpu"]
    assert main(argv) == 2
    assert _notes(capsys.readouterr().err) == [toyworld_note(True, True)]
    assert main([*argv, "--pipelines", "streaming_vlm"]) == 2
    assert _notes(capsys.readouterr().err) == [toyworld_note(False, True)]
    assert main([*argv, "--vlm-dir", str(tmp_path), "--model-dir", str(tmp_path)]) == 2
    assert _notes(capsys.readouterr().err) == []


def test_caption_notes_the_embedded_vlm(tmp_path: Path, capsys, no_models) -> None:
    with pytest.raises(_Stop):
        main(["caption", "--camera", "0", "--device", "cpu"])
    assert _notes(capsys.readouterr().err) == [toyworld_note(False, True)]
    with pytest.raises(_Stop):
        main(["caption", "--camera", "0", "--device", "cpu", "--vlm-dir", str(tmp_path)])
    assert _notes(capsys.readouterr().err) == []
