"""``stream bench --baselines published``: the published loops measured in the run, beside ours.

The harness (the paused worker, the checks on the command line, the checkout export) is tested
on its own; the loops themselves run where checkouts of the published repositories are found:
``STREAM_FIDELITY_LONGLIVE`` / ``STREAM_FIDELITY_ROLLING_FORCING`` (as for the fidelity eval),
else ``.ref/LongLive`` / ``.ref/RollingForcing`` in the repository root (where
``evals/devtools/export_checkouts.py`` writes them). Nothing here asserts a timing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan

from framestream.evals.bench.cli import main
from framestream.evals.bench.pausing import PausingRun
from framestream.evals.bench.published_models import copy_vae_weights
from framestream.evals.bench.record import BenchRecord
from framestream.evals.devtools.export_checkouts import main as export
from framestream.evals.fidelity.published import checkout, commit_of
from framestream.evals.fidelity.wan import WAN_STUBS
from framestream.models.vae import tiny_wan_vae

ROOT = Path(__file__).resolve().parents[2]


def _checkout(variable: str, name: str) -> Path | None:
    given = os.environ.get(variable)
    path = Path(given) if given else ROOT / ".ref" / name
    return path if path.is_dir() else None


LONGLIVE = _checkout("STREAM_FIDELITY_LONGLIVE", "LongLive")
ROLLING_FORCING = _checkout("STREAM_FIDELITY_ROLLING_FORCING", "RollingForcing")
needs_checkouts = pytest.mark.skipif(
    LONGLIVE is None or ROLLING_FORCING is None,
    reason="no LongLive / RollingForcing checkouts (STREAM_FIDELITY_* or .ref/)",
)


def test_a_paused_run_stops_where_it_asks_and_hands_back_its_result_or_error() -> None:
    log = []

    def loop(run: list[PausingRun], fail: bool) -> int:
        for label in ("first", "second"):
            log.append(label)
            run[0].pause(label)
        if fail:
            raise ValueError("their loop failed")
        return 7

    holder: list[PausingRun] = []
    holder.append(PausingRun(lambda: loop(holder, fail=False)))
    assert holder[0].start() == "first" and log == ["first"]
    assert holder[0].resume() == "second" and log == ["first", "second"]
    assert holder[0].resume() is None and holder[0].done and holder[0].result == 7

    aborted: list[PausingRun] = []
    aborted.append(PausingRun(lambda: loop(aborted, fail=False)))
    aborted[0].start()
    aborted[0].abort()
    assert aborted[0].done and aborted[0].result is None

    failing: list[PausingRun] = []
    failing.append(PausingRun(lambda: loop(failing, fail=True)))
    failing[0].start()
    failing[0].resume()
    with pytest.raises(ValueError, match="their loop failed"):
        failing[0].resume()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--baselines", "published"], "needs --published-longlive PATH"),
        (
            ["--baselines", "published", "--published-longlive", "/no/such/checkout"],
            "--published-longlive: no checkout at /no/such/checkout",
        ),
        (["--published-rolling-forcing", "."], "given without --baselines published"),
        (
            ["--suite", "understanding", "--baselines", "published"],
            "in the generation suite only",
        ),
    ],
)
def test_the_command_refuses_a_missing_or_wrong_checkout(argv, message) -> None:
    with pytest.raises(SystemExit, match=message):
        main(["--preset", "tiny", "--quick", "--pipelines", "longlive", *argv])


def test_a_checkout_of_another_repository_is_refused(tmp_path) -> None:
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "rolling_forcing_inference.py").write_text("")
    argv = ["--baselines", "published", "--published-longlive", str(tmp_path)]
    with pytest.raises(SystemExit, match="has no pipeline/interactive_causal_inference.py"):
        main(["--preset", "tiny", "--quick", "--pipelines", "longlive", *argv])


def test_an_export_keeps_the_loops_code_and_its_commit(tmp_path) -> None:
    source = tmp_path / "Published"
    files = {
        "pipeline/loop.py": "x = 1\n",
        "configs/inference.yaml": "steps: 4\n",
        "LICENSE": "licence\n",
        "assets/teaser.png": "not code",
        "README.md": "readme",
    }
    for name, text in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    git = ["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(source)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "published"], check=True)
    head = commit_of(source)
    assert head and len(head) == 40

    assert export([str(source), str(tmp_path / "ref")]) == 0
    exported = tmp_path / "ref" / "Published"
    kept = sorted(str(f.relative_to(exported)) for f in exported.rglob("*") if f.is_file())
    assert kept == ["COMMIT", "LICENSE", "configs/inference.yaml", "pipeline/loop.py"]
    assert commit_of(exported) == head  # no .git: the COMMIT file
    assert export([str(tmp_path / "ref"), str(tmp_path / "again")]) == 2  # not a git checkout


@needs_checkouts
def test_their_vae_holds_our_weights_where_the_renaming_covers_the_layout() -> None:
    """At Wan2.1's layout their ``WanVAE_`` decodes as our diffusers VAE does, on the same
    latents; a smaller layout is left with their own weights."""
    torch.manual_seed(0)
    ours = AutoencoderKLWan().eval()
    with checkout(LONGLIVE, ["wan.modules.vae"], WAN_STUBS) as (vae_module,), torch.no_grad():
        c = ours.config
        theirs = vae_module.WanVAE_(
            dim=c.base_dim,
            z_dim=c.z_dim,
            dim_mult=list(c.dim_mult),
            num_res_blocks=c.num_res_blocks,
            attn_scales=list(c.attn_scales),
            temperal_downsample=list(c.temperal_downsample),
        ).eval()
        assert copy_vae_weights(theirs, ours)
        mean = torch.tensor(c.latents_mean)
        std = torch.tensor(c.latents_std)
        z = torch.randn(1, 16, 2, 2, 2)
        want = ours.decode(z * std.view(1, 16, 1, 1, 1) + mean.view(1, 16, 1, 1, 1)).sample
        got = theirs.decode(z, [mean, 1.0 / std]).clamp(-1, 1)
        assert got.shape == want.shape == (1, 3, 5, 16, 16)
        assert torch.allclose(got, want, atol=1e-4)

        small = tiny_wan_vae().vae
        c = small.config
        other = vae_module.WanVAE_(
            dim=c.base_dim,
            z_dim=c.z_dim,
            dim_mult=list(c.dim_mult),
            num_res_blocks=c.num_res_blocks,
            temperal_downsample=list(c.temperal_downsample),
        )
        before = {k: v.clone() for k, v in other.state_dict().items()}
        assert not copy_vae_weights(other, small)
        assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> BenchRecord:
    out = tmp_path_factory.mktemp("bench") / "published.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = ["--preset", "tiny", "--size", "16x16", "--quick", "--suite", "generation"]
        argv += ["--baselines", "published", "--published-longlive", str(LONGLIVE)]
        argv += ["--published-rolling-forcing", str(ROLLING_FORCING), "--no-plots"]
        assert main([*argv, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return BenchRecord.read(out)


@needs_checkouts
def test_both_published_loops_are_measured_beside_ours(record: BenchRecord) -> None:
    checkouts = {"longlive": LONGLIVE, "rolling_forcing": ROLLING_FORCING}
    for kind, workload in record.suites["generation"].items():
        assert list(workload.variants) == ["ours", "published"]
        theirs = workload.variants["published"]
        commit = commit_of(checkouts[kind])
        assert workload.config["published_commit"] == commit
        assert commit in theirs.description and "SDPA fallback" in theirs.description
        for name in ("dit_ms", "decode_ms", "first_frame_ms"):
            assert theirs.value(name) > 0, (kind, name)
        dit, decode = theirs.value("dit_ms"), theirs.value("decode_ms")
        assert theirs.value("frames_per_step") == 12
        assert theirs.value("fps_dit") == pytest.approx(12e3 / dit)
        assert theirs.value("fps") == pytest.approx(12e3 / (dit + decode))
        assert theirs.value("cache_bytes") > 0
        # their loop has no decode beside the next chunk and no per-step decode
        assert "fps_overlap" not in theirs.figures and "step_ms_p50" not in theirs.figures
        steps = record.config["chunks"]
        assert len(theirs.series["dit_ms"].y) == steps
        assert {"dit_ms", "fps_dit", "fps", "decode_ms"} <= set(workload.ratios()["published"])
    longlive = record.suites["generation"]["longlive"].variants["published"]
    assert longlive.figures["switch_stall_ms"].spread is not None  # their recache + chunk
    rolling = record.suites["generation"]["rolling_forcing"].variants["published"]
    assert "switch_stall_ms" not in rolling.figures  # one prompt a video
    # tiny heads: their KV buffers are sized for this model (2 heads of 32, 1 token a frame)
    # LongLive: 12 frames a layer; Rolling Forcing: 24; k and v, 2 layers, float32
    frames = {"longlive": 12, "rolling_forcing": 24}
    for kind, held in frames.items():
        variant = record.suites["generation"][kind].variants["published"]
        assert variant.value("cache_bytes") == 2 * 2 * held * 2 * 32 * 4
