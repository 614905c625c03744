"""``stream bench`` on the tiny preset on the CPU: one quick run of the default suites writes a
valid record with every series and a PNG per suite, each variant beside ours with its ratios.
Nothing here asserts a timing: only structure and sanity (positive times, a cache that stays
flat while the growing baseline's grows)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from framestream.cli.main import build_parser
from framestream.evals.bench.cli import main
from framestream.evals.bench.plot import plot_path
from framestream.evals.bench.record import SCHEMA, BenchRecord
from framestream.evals.bench.timing import Clock
from framestream.evals.bench.understanding import _Feed, _run_second, _Stream
from framestream.evals.report_tables import (
    generation_table,
    provenance,
    service_table,
    vlm_concurrency_table,
    vlm_stream_table,
)
from framestream.models.qwen_vl_tiny import tiny_qwen_vl
from framestream.stream.kvcache import KVCacheManager
from framestream.stream.pipelines.streaming_vlm import StreamingVLMPipeline
from framestream.stream.requests import UnderstandingRequest

SUITES = ("generation", "understanding", "service")
BASELINES = "sdpa,growing,fp8kv,tinyvae,restyle0.9"  # tinyvae, restyle: generation only
GENERATION_SERIES = {
    "step_ms",
    "dit_ms",
    "decode_ms",
    "cache_bytes",
    "switch_to_frame_ms",
    "first_frame_ms",
}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny shapes gain nothing from a second intra-op thread, and on a shared two-core
    machine its spinning costs more than it gives: the run's wall time halves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    argv = ["--preset", "tiny", "--size", "16x16", "--quick", "--out", str(out)]
    assert main([*argv, "--suite", ",".join(SUITES), "--baselines", BASELINES]) == 0
    return out, BenchRecord.read(out)


def test_the_record_holds_the_run(run) -> None:
    out, record = run
    data = json.loads(out.read_text())
    assert data["schema"] == SCHEMA
    assert record.command.startswith("stream bench ") and "--chunks 6" in record.command
    assert record.run.date and record.run.versions["torch"] and record.run.device == "cpu"
    assert record.run.machine.split("-core")[0].isdigit()
    assert set(record.suites) == set(SUITES)
    assert set(record.suites["generation"]) == {"longlive", "rolling_forcing"}
    assert set(record.suites["understanding"]) == {"streaming_vlm", "streaming_vlm_concurrency"}
    assert set(record.suites["service"]) == {
        "longlive_websocket",
        "commentary_websocket",
        "mixed_load",
    }
    assert "--commentary-clients 1 " in record.command and "--mixed-clients 0,1 " in record.command
    for suite in SUITES:
        png = plot_path(out, suite)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        png.unlink()
    assert main(["plot", str(out)]) == 0  # the PNGs come back from the JSON alone
    assert all(plot_path(out, suite).is_file() for suite in SUITES)


def test_generation_series_and_figures(run) -> None:
    _, record = run
    for workload in record.suites["generation"].values():
        assert list(workload.variants) == [
            "ours",
            "sdpa",
            "growing",
            "fp8kv",
            "tinyvae",
            "restyle0.9",
        ]
        for variant in workload.variants.values():
            assert set(variant.series) == GENERATION_SERIES
            assert len(variant.series["step_ms"].y) == 6
            assert all(y > 0 for y in variant.series["step_ms"].y)
            for name in ("dit_ms", "decode_ms", "fps", "fps_dit", "first_frame_ms", "step_ms_p95"):
                assert variant.value(name) > 0, name
            assert variant.value("frames_per_step") == 12
            assert variant.value("step_ms_p50") <= variant.value("step_ms_p99")
        assert workload.variants["ours"].value("first_frame_cold_ms") > 0


def test_our_cache_stays_flat_and_the_growing_one_grows(run) -> None:
    _, record = run
    longlive = record.suites["generation"]["longlive"].variants
    ours = longlive["ours"].series["cache_bytes"].y
    growing = longlive["growing"].series["cache_bytes"].y
    assert ours[-1] == ours[-2] == ours[-3] > 0  # sink + window full from the fourth chunk
    assert growing[-1] > growing[-2] > growing[-3]
    assert growing[-1] > ours[-1]


def test_the_fp8_cache_holds_one_byte_a_value(run) -> None:
    """fp8kv: the same blocks as ours, each value in one byte instead of the model dtype's."""
    _, record = run
    for workload in record.suites["generation"].values():
        itemsize = getattr(torch, workload.config["dtype"]).itemsize
        ours = workload.variants["ours"].series["cache_bytes"].y
        fp8 = workload.variants["fp8kv"].series["cache_bytes"].y
        assert [b * itemsize for b in fp8] == ours
        assert workload.ratios()["fp8kv"]["cache_bytes"] == itemsize


def test_side_by_side_gives_every_figure_a_ratio(run) -> None:
    _, record = run
    for suite in ("generation", "understanding"):
        for workload in record.suites[suite].values():
            ratios = workload.ratios()
            ours = workload.variants[workload.ours]
            for baseline in workload.baselines:
                theirs = workload.variants[baseline]
                # a difference within its spread gets no ratio (evals/bench/record.py): a CPU
                # run's switch stall can land there on either side
                shared = [
                    k
                    for k, f in ours.figures.items()
                    if _positive(f.value)
                    and _positive(theirs.value(k))
                    and not f.within_noise
                    and not theirs.figures[k].within_noise
                ]
                assert shared and set(shared) <= set(ratios[baseline])
                for name in shared:
                    assert math.isclose(
                        ratios[baseline][name], ours.value(name) / theirs.value(name)
                    )
    written = json.loads(run[0].read_text())["suites"]["generation"]["longlive"]["ratios"]
    assert set(written) == {"sdpa", "growing", "fp8kv", "tinyvae", "restyle0.9"}
    assert written["sdpa"]["dit_ms"] > 0 and written["tinyvae"]["decode_ms"] > 0
    assert written["restyle0.9"]["fps"] > 0  # a restyle stream's steps: encode + DiT + decode


def test_understanding_and_service(run) -> None:
    _, record = run
    stream = record.suites["understanding"]["streaming_vlm"]
    assert list(stream.variants) == ["ours", "sdpa", "growing", "fp8kv"]  # no decoder here
    for variant in stream.variants.values():
        assert len(variant.series["second_ms"].y) == 6
        assert variant.value("second_ms_p50") > 0 and variant.value("cache_bytes") > 0
    concurrency = record.suites["understanding"]["streaming_vlm_concurrency"]
    # a growing or FP8 cache is another cache: it cannot take over ours' streams
    assert list(concurrency.variants) == ["ours", "sdpa"]
    for variant in concurrency.variants.values():
        tried = variant.series["second_ms_p95_by_streams"].x  # 2 is skipped if 1 is too slow
        assert tried in ([1], [1, 2]) and variant.value("second_ms_p95_1") > 0
        assert variant.value("real_time_streams") in (0, *tried)
    service = record.suites["service"]["longlive_websocket"]
    assert list(service.variants) == ["jpeg", "direct"] and service.ours == "jpeg"
    for n in (1, 2):
        assert service.variants["jpeg"].value(f"fps_{n}") > 0
        assert service.variants["direct"].value(f"fps_{n}") > 0
        assert f"fps_{n}" in service.ratios()["direct"]
    commentary = record.suites["service"]["commentary_websocket"].variants["websocket"]
    assert commentary.value("caption_ms_p95_1") > 0  # the rest: tests/evals/test_bench_served_load
    mixed = record.suites["service"]["mixed_load"].variants["websocket"]
    assert mixed.value("generation_fps_0") > 0 and mixed.value("caption_ms_p95_1") > 0


def test_kernels_and_vae_suites(tmp_path, one_thread) -> None:
    out = tmp_path / "kv.json"
    argv = ["--preset", "tiny", "--size", "16x16", "--quick", "--suite", "kernels,vae"]
    cases = ["--kernel-cases", "qwen_decode,wan_norms"]
    assert main([*argv, *cases, "--out", str(out), "--no-plots"]) == 0
    record = BenchRecord.read(out)
    case = record.suites["kernels"]["qwen_decode"]
    assert set(case.variants) == {
        "triton",
        "sdpa_paged",
        "sdpa_fused",
        "dense",
        "twin",
        "triton_fp8kv",
        "sdpa_fused_fp8kv",
    }
    assert case.config["rel_err_vs_twin"] < 1e-2 and case.ratios()["dense"]["ms"] > 0
    assert case.config["rel_err_sdpa_fused_vs_twin"] < 1e-2
    assert case.config["rel_err_fp8kv_vs_twin"] < 1e-2
    assert 0 < case.config["fp8kv_rel_diff"] < 0.1  # e4m3 rounding of random keys and values
    norms = record.suites["kernels"]["wan_norms"]
    assert set(norms.variants) == {"fused", "torch"} and norms.ratios()["torch"]["ms"] > 0
    vae = record.suites["vae"]["vae_stream_decode"]
    assert vae.config["first_chunk_max_abs_diff"] < 1e-3  # the walk decodes what the loop does
    assert len(vae.variants["ours"].series["chunk_ms"].y) == 6
    assert len(vae.variants["tiny"].series["chunk_ms"].y) == 6
    # random weights: the tiny decoder's speed only, no PSNR against the Wan VAE
    assert vae.config["tiny_psnr_over"].startswith("none")
    assert "psnr_vs_wan_db" not in vae.variants["tiny"].figures
    assert not plot_path(out, "vae").exists()


def test_the_toy_worlds_tiny_decoder_is_graded_against_its_vae(tmp_path, one_thread) -> None:
    """Trained weights on both sides (the toy world ships both): a PSNR, and a decent one."""
    out = tmp_path / "vae.json"
    argv = ["--preset", "toyworld", "--quick", "--suite", "vae", "--chunks", "3", "--no-plots"]
    assert main([*argv, "--out", str(out)]) == 0
    vae = BenchRecord.read(out).suites["vae"]["vae_stream_decode"]
    assert vae.config["tiny_psnr_over"].startswith("4 toy-world clip(s)")
    assert vae.variants["tiny"].value("psnr_vs_wan_db") > 20.0


def test_the_stream_command_has_bench() -> None:
    parser = build_parser()
    args = parser.parse_args(["bench", "--preset", "tiny", "--quick"])
    assert args.action is None and args.quick
    assert parser.parse_args(["bench", "report", "--check"]).check
    with pytest.raises(SystemExit):
        main(["--suite", "nonsense"])


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def test_report_tables_render_a_fresh_record(run) -> None:
    out, record = run
    generation = generation_table(record, "longlive")
    assert "`ours`" in generation and "`growing`" in generation and "×)" in generation
    assert "first frame ms" in generation and "late ÷ early" in generation
    assert "`sdpa` p50" in vlm_concurrency_table(record)
    assert "late ÷ early" in vlm_stream_table(record)
    assert "`direct`" in service_table(record)
    line = provenance("quick", json.loads(out.read_text()))
    assert line.startswith("`stream bench ") and record.run.date[:10] in line


def test_a_second_of_n_streams_is_one_batched_prefill(monkeypatch, one_thread) -> None:
    """The concurrency workload prefills its streams as the engine does: all in one call."""
    calls = []
    original = StreamingVLMPipeline.prefill

    def prefill(self, states):
        calls.append(len(states))
        return original(self, states)

    monkeypatch.setattr(StreamingVLMPipeline, "prefill", prefill)
    model = tiny_qwen_vl()
    pipe = StreamingVLMPipeline(model, KVCacheManager(), 16 << 20)
    streams = [_Stream(pipe.open(UnderstandingRequest())) for _ in range(3)]
    feed = _Feed((56, 84))
    for _ in range(2):
        assert _run_second(pipe, streams, feed.second(), Clock(model.device)) > 0
    assert calls == [3, 3]
    assert all(s.state.rounds == 2 and not s.state.decoding for s in streams)
