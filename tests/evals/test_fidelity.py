"""The fidelity eval: its harness on a stand-in checkout (what it imports, shims and cleans up,
and how it hands the published noise to our pipeline), and, where work trees of the published
repositories are named by ``STREAM_FIDELITY_LONGLIVE`` / ``STREAM_FIDELITY_ROLLING_FORCING``,
the comparisons themselves (docs/evals.md has the commands and the last record)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from framestream.evals.fidelity.cli import main
from framestream.evals.fidelity.published import checkout, float32_attention
from framestream.evals.fidelity.rolling_forcing import BLOCK, _Replay
from framestream.evals.fidelity.wan import NoiseTape, difference


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def test_a_checkout_imports_with_cpu_shims_and_leaves_no_module_behind(tmp_path) -> None:
    tree = write_tree(
        tmp_path / "published",
        {
            "utils/memory.py": (
                "import torch\ngpu = torch.device(f'cuda:{torch.cuda.current_device()}')\n"
            ),
            "wan/__init__.py": "from .image2video import WanI2V\n",
            "wan/image2video.py": (
                "import torchvision_stand_in.transforms.functional as TF\nclass WanI2V: pass\n"
            ),
            "wan/modules/__init__.py": "",
            "wan/modules/attention.py": (
                "from vendor.constants import FPS\n"
                "def attention(q, k, v):\n    raise RuntimeError\n"
            ),
        },
    )
    modules = ["utils.memory", "wan.modules.attention"]
    fixed = {"vendor": {}, "vendor.constants": {"FPS": 2.0}}
    with checkout(tree, modules, stubs=["torchvision_stand_in"], fixed=fixed) as imported:
        memory, attention = imported
        assert str(memory.gpu) == "cuda:0" and attention.FPS == 2.0
        assert "wan" in sys.modules and "torchvision_stand_in" in sys.modules
        with pytest.raises(RuntimeError, match="is a stub"):
            sys.modules["wan.image2video"].TF.resize(None)
    left = {"utils", "utils.memory", "wan", "wan.modules", "torchvision_stand_in", "vendor"}
    assert not left & set(sys.modules)
    assert str(tree) not in sys.path
    with pytest.raises(FileNotFoundError):
        with checkout(tmp_path / "missing", []):
            pass


def test_the_attention_shim_is_full_float32_attention() -> None:
    q, k, v = (torch.randn(1, 7, 3, 16, dtype=torch.float32) for _ in range(3))
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    assert torch.equal(float32_attention(q, k, v), want.transpose(1, 2))
    with pytest.raises(ValueError, match="no lengths"):
        float32_attention(q, k, v, k_lens=torch.tensor([5]))


def test_the_published_rolling_noise_reaches_each_block() -> None:
    """A fresh block takes its slice of the upfront noise; a re-noise takes, for each staying
    block, that block's slice of the full-window draw the published loop made for it."""
    noise = torch.arange(4 * 3 * 2, dtype=torch.float32).reshape(1, 12, 2, 1, 1)  # 4 blocks
    tape = NoiseTape(0)
    window = 3  # a published pass over 3 blocks whose oldest exits: 2 draws of 3 blocks each
    tape.draws = [torch.full((window * BLOCK, 2, 1, 1), float(i)) for i in range(2)]
    for index, draw in enumerate(tape.draws):
        draw[BLOCK * (index + 1) : BLOCK * (index + 2)] += 100  # the slice each block takes
    replay = _Replay(noise, tape)
    replay.begin_pass(blocks=2, window_blocks=5)  # ramping: a block enters
    fresh = replay.draw(BLOCK)
    assert torch.equal(fresh, noise[:, :BLOCK].permute(0, 2, 1, 3, 4))
    renoised = replay.draw(2 * BLOCK)  # the oldest exited; blocks 1 and 2 stay
    assert renoised.shape == (1, 2, 2 * BLOCK, 1, 1)
    assert renoised[:, :, :BLOCK].eq(100).all() and renoised[:, :, BLOCK:].eq(101).all()


def test_differences_and_the_verdict() -> None:
    theirs = torch.tensor([1.0, -2.0, 4.0])
    same = difference(theirs + 1e-7, theirs)
    assert same["equal"] and same["max_rel"] < 1e-6
    off = difference(theirs + torch.tensor([0.0, 0.0, 0.01]), theirs)
    assert not off["equal"] and off["max_abs"] == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(ValueError, match="shapes differ"):
        difference(theirs[:2], theirs)


def test_the_command_asks_for_a_checkout(tmp_path, capsys) -> None:
    assert main(["--out", str(tmp_path / "f.json")]) == 2
    assert main(["--rolling-forcing", str(tmp_path / "none")]) == 2
    assert "no checkout" in capsys.readouterr().out


PUBLISHED = {
    "longlive": os.environ.get("STREAM_FIDELITY_LONGLIVE"),
    "rolling-forcing": os.environ.get("STREAM_FIDELITY_ROLLING_FORCING"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_equal_to_the_published_loop(name: str, tmp_path) -> None:
    if not PUBLISHED[name]:
        pytest.skip(f"set STREAM_FIDELITY_{name.upper().replace('-', '_')} to a work tree")
    out = tmp_path / "fidelity.json"
    assert main([f"--{name}", PUBLISHED[name], "--out", str(out)]) == 0
