"""BENCHMARKS.md is generated: it must be exactly what evals/report_template.md renders over
evals/results/*.json, so a hand edit, or a result committed without regenerating, fails here.
Fix with ``stream bench report``. README.md is written by hand, so the figures it quotes are
checked against their records here, and the targets table against the anchors record."""

from __future__ import annotations

import json

import pytest

from framestream.evals.bench.record import BenchRecord
from framestream.evals.report import OUTPUT, RESULTS, ROOT, check_report, render_report
from framestream.evals.report_targets import targets_table


def test_benchmarks_md_is_regenerated_from_the_results() -> None:
    assert check_report() == 0, f"{OUTPUT.name} is stale: run `stream bench report`"


def test_every_results_file_is_read_by_the_report(tmp_path) -> None:
    read = render_report()
    unused = [p.name for p in RESULTS.glob("*.json") if p.name not in read]
    assert not unused, f"results not shown in BENCHMARKS.md: {unused}"


def test_a_template_naming_a_missing_result_or_figure_fails(tmp_path) -> None:
    template = tmp_path / "t.md"
    template.write_text('{{ result("no_such_run").x }}\n')
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        render_report(template, RESULTS)
    template.write_text('{{ result("anchors_h200_2026-11-28").no_such_figure }}\n')
    with pytest.raises(Exception, match="no_such_figure"):
        render_report(template, RESULTS)


def _result(stem: str) -> dict:
    return json.loads((RESULTS / f"{stem}.json").read_text())


def _figure(record: dict, suite: str, workload: str, figure: str, variant: str = "ours") -> float:
    return record["suites"][suite][workload]["variants"][variant]["figures"][figure]["value"]


def _span(pair: list[float]) -> str:
    return f"{pair[0]:.1f}–{pair[1]:.1f}"


PIPELINES = ("longlive", "rolling_forcing")


def test_the_readme_quotes_its_records() -> None:
    """README.md is written by hand, so nothing renders its figures: each one it quotes must be
    what its record holds (the published ones as transcribed into the anchors record, or derived
    from them as BENCHMARKS.md derives them)."""
    readme = (ROOT / "README.md").read_text()
    shipped = _result("toyworld_attempt23_generator_h100_2026-12-08")["run24"]
    before = _result("toyworld_attempt21_generator_h200_2026-12-07")["run21"]  # the run before
    codec = _result("toyworld_codec_shapes_cpu_2026-12-07")
    drawn = _result("toyworld_shapes_drawn_cpu_2026-12-08")
    grid = [f"{row['adherence']:.2f}" for row in _result("toyworld_grid_cpu_2026-12-08")["rows"]]
    grid_shapes = ", ".join(grid[:-1]) + f" and {grid[-1]}"
    quality, earlier = shipped["prompts24"], before["prompts24"]
    r3 = _result("bench_h200_round3_2026-11-29")
    round4 = _result("bench_h100_round4_2026-12-06")
    service = _result("service_h100_2026-12-06")
    cluster = _result("cluster_h200x2_2026-11-29")

    qa = _result("toyworld_qa_cpu_2026-12-06")
    vlm, answers = qa["after"]["streaming_vlm"], qa["after"]["streaming_vlm_qa"]

    def span(stream: dict) -> str:
        per_minute = stream["adherence_per_minute"]
        low, high = f"{min(per_minute):.2f}", f"{max(per_minute):.2f}"
        return low if low == high else f"{low}-{high}"

    seeds = ("10000", "10001", "10002")
    for seed in seeds:  # "every minute keeps the prompt's background"
        for pipeline in PIPELINES:
            assert (
                min(shipped["drift"][seed][pipeline]["drift"]["background_adherence_per_minute"])
                == 1.0
            )
    switches = shipped["switches24"]
    lowest_colour = min(
        min(shipped["drift"][seed][pipeline]["drift"]["color_adherence_per_minute"])
        for seed in seeds
        for pipeline in PIPELINES
    )

    def streams(pipeline: str) -> list[str]:
        return [span(shipped["drift"][seed][pipeline]["drift"]) for seed in seeds]

    def both(run: dict, part: str, figure: str) -> str:
        return " / ".join(f"{run[p][part][figure]:.2f}" for p in PIPELINES)

    def gen(pipeline: str, figure: str, variant: str = "ours") -> float:
        return _figure(r3, "generation", pipeline, figure, variant)

    def r4(pipeline: str, figure: str, variant: str = "ours") -> float:
        return _figure(round4, "generation", pipeline, figure, variant)

    def tiny(variant: str, figure: str) -> float:
        record = _result("vae_tiny_toyworld_cpu_2026-12-06")
        return _figure(record, "vae", "vae_stream_decode", figure, variant)

    restyle = _result("restyle_h100_2026-12-06")
    latency = {p["pipeline"]: p for p in _result("restyle_latency_cpu_2026-12-06")["pipelines"]}

    def rs(pipeline: str, figure: str, variant: str = "ours") -> float:
        return _figure(restyle, "generation", pipeline, figure, variant)

    def commentary(figure: str) -> float:
        return _figure(service, "service", "commentary_websocket", figure, "websocket")

    def engines(figure: str, variant: str) -> float:
        return _figure(cluster, "cluster", "longlive_engines", figure, variant)

    expected = [
        f"precision {vlm['pair_precision']:.2f} and recall {vlm['pair_recall']:.2f}",
        f"{answers['accuracy']:.2f} of held-out\nquestions right, up from "
        f"{qa['before']['streaming_vlm_qa']['accuracy']:.2f} before it learnt them",
        f"On {len(quality['longlive']['adherence']['per_prompt'])} held-out prompts its "
        f"background is the prompt's in\n{both(quality, 'adherence', 'background_mean')} of frames",
        f"colours in {both(quality, 'adherence', 'color_mean')} of frames",
        f"shapes as\nwell in {both(quality, 'adherence', 'mean')}",
        " / ".join(
            f"{square['irregular'] / sum(square.values()):.2f}"
            for square in (drawn[p]["adherence"]["shape_verdicts"]["square"] for p in PIPELINES)
        )
        + " of the square sightings irregular",
        f"The codec alone carries held-out clips' shapes\nin {codec['recon_adherence']:.2f} "
        "of frames",
        f"Over {switches['longlive']['switch']['switches']} switches, each watched for 5 s, "
        f"LongLive follows {switches['longlive']['switch']['followed']} and Rolling Forcing "
        f"{switches['rolling_forcing']['switch']['followed']}.",
        f"the sprite's colour in\nat least {lowest_colour:.2f} of its frames",
        "colour and shape in {} of a minute's\nframes, and on two more prompts in {} (a white "
        "triangle) and {} (a red circle".format(*streams("longlive")),
        "through Rolling Forcing in {}, {} and\n{}.".format(*streams("rolling_forcing")),
        f"Run 21 drew the same prompts' colours in\n{both(earlier, 'adherence', 'color_mean')} "
        f"of frames and their shapes in {both(earlier, 'adherence', 'mean')}, and "
        f"followed {before['switches24']['longlive']['switch']['followed']} / "
        f"{before['switches24']['rolling_forcing']['switch']['followed']} of the switches",
        "Read by the template, the rows show the prompt's colours and shapes in "
        + grid_shapes
        + " of their frames",
        f"| LongLive DiT alone | {r4('longlive', 'fps_dit'):.1f} FPS | "
        f"{r4('longlive', 'fps_dit', 'published'):.1f} FPS |",
        f"| Rolling Forcing DiT alone | {r4('rolling_forcing', 'fps_dit'):.1f} FPS | "
        f"{r4('rolling_forcing', 'fps_dit', 'published'):.1f} FPS |",
        f"| LongLive end to end | {r4('longlive', 'fps'):.1f} FPS; "
        f"{r4('longlive', 'fps', 'tinyvae'):.1f} FPS with `--vae tiny` | "
        f"{r4('longlive', 'fps', 'published'):.1f} FPS |",
        f"| Rolling Forcing end to end | {r4('rolling_forcing', 'fps'):.1f} FPS; "
        f"{r4('rolling_forcing', 'fps', 'tinyvae'):.1f} FPS with `--vae tiny` | "
        f"{r4('rolling_forcing', 'fps', 'published'):.1f} FPS |",
        f"| Wan VAE decode of 12 frames | "
        f"{_figure(round4, 'vae', 'vae_stream_decode', 'chunk_ms'):.0f} ms; "
        f"{_figure(round4, 'vae', 'vae_stream_decode', 'chunk_ms', 'tiny'):.1f} ms with "
        f"`--vae tiny` | {r4('longlive', 'decode_ms', 'published'):.0f} ms |",
        f"| LongLive prompt switch: stall | {r4('longlive', 'switch_stall_ms'):.0f} ms | "
        f"{r4('longlive', 'switch_stall_ms', 'published'):.0f} ms |",
        f"| LongLive new session to first frame | {r4('longlive', 'first_frame_ms'):.0f} ms; "
        f"{r4('longlive', 'first_frame_ms', 'tinyvae'):.0f} ms with `--vae tiny` | "
        f"{r4('longlive', 'first_frame_ms', 'published'):.0f} ms |",
        f"one StreamingVLM stream "
        f"{_figure(round4, 'understanding', 'streaming_vlm', 'second_ms_p50'):.0f} ms",
        f"and {_figure(round4, 'understanding', 'streaming_vlm_concurrency', 'real_time_streams')}"
        " streams run in real",
        f"also as {commentary('real_time_clients')} commentary clients",
        f"a chunk in {tiny('tiny', 'chunk_ms'):.0f} ms against its full VAE's "
        f"{tiny('ours', 'chunk_ms'):.0f} ms on one CPU thread, at\n"
        f"{tiny('tiny', 'psnr_vs_wan_db'):.1f} dB PSNR",
        f"KV cache is {gen('longlive', 'cache_bytes') / 1e9:.2f} GB",
        f"({gen('longlive', 'cache_bytes', 'fp8kv') / 1e9:.2f} GB with the FP8 KV",
        f"holds {gen('longlive', 'cache_bytes', 'fp8kv') / 1e9:.2f} GB instead\n"
        f"of {gen('longlive', 'cache_bytes') / 1e9:.2f} GB",
        f"leaves {gen('longlive', 'switch_to_frame_ms'):.0f} ms after the prompt",
        f"{_figure(r3, 'understanding', 'streaming_vlm_concurrency', 'real_time_streams'):.0f} "
        "StreamingVLM\nstreams run in real time",
        f"deliver {engines('fps_2', 'ray_2') / engines('fps_2', 'ray_1'):.2f}× one with 2 clients "
        f"and {engines('fps_4', 'ray_2') / engines('fps_4', 'ray_1'):.2f}× with 4",
        f"LongLive restyles at {rs('longlive', 'fps', 'restyle'):.1f} FPS at strength 1.0",
        f"the encoder adds "
        f"{rs('longlive', 'dit_ms', 'restyle') - rs('longlive', 'dit_ms'):.0f} ms a chunk",
        f"{rs('longlive', 'fps', 'restyle0.9'):.1f} FPS at 0.9, beside "
        f"{rs('longlive', 'fps'):.1f} FPS generating only",
        f"a LongLive frame arrives a median\n{latency['longlive']['latency_ms']['p50']:.0f} ms "
        f"after its input was sent, {latency['longlive']['within_bound']:.2f} of frames within",
        f"{latency['rolling_forcing']['latency_ms']['p50']:.0f} ms at "
        f"{latency['rolling_forcing']['strength']}",
        f"takes {_result('generator_speed_cpu_2026-12-06')['after_over_before']:.2f} times "
        "as long\na frame",
        f"Rolling Forcing at {rs('rolling_forcing', 'fps', 'restyle'):.1f} and\n"
        f"{rs('rolling_forcing', 'fps', 'restyle0.9'):.1f} FPS beside "
        f"{rs('rolling_forcing', 'fps'):.1f}",
    ]
    assert gen("longlive", "fps") == pytest.approx(gen("longlive", "fps_overlap"), abs=0.05)
    flat = " ".join(readme.split())  # a figure reflowed onto the next line still counts
    missing = [e for e in expected if " ".join(e.split()) not in flat]
    assert not missing, f"README.md does not quote its records as they are: {missing}"


def test_the_targets_read_the_published_figures_from_the_anchors() -> None:
    r3 = BenchRecord.from_json(_result("bench_h200_round3_2026-11-29"))
    anchors = _result("anchors_h200_2026-11-28")
    table = targets_table([("r3", r3)], anchors)
    assert f"transcribed from `{anchors['transcribed_from']}`" in table
    assert "derived, note 1" in table and "Note 1: " in table  # the arithmetic is shown
    assert "KV cache" not in table  # a goal equal to what is measured is not a target
    anchors["longlive"]["figures"]["fps_dit"] = [1.0, 2.0]
    assert "| LongLive DiT alone | ≥ 55 FPS | 39.2 FPS | 1.0–2.0 | no |" in targets_table(
        [("r3", r3)], anchors
    )


def test_the_readme_retrains_the_embedded_models_as_embedded_py_says() -> None:
    """The README's retraining block is RETRAIN's commands, one a line, in order: the two
    drifted apart once (the README kept an older generator's last steps)."""
    from framestream.models.toyworld.embedded import GENERATOR_DIR, RETRAIN, VLM_DIR

    readme = (ROOT / "README.md").read_text()
    block = readme.split("Retraining from scratch", 1)[1].split("```bash\n", 1)[1].split("```")[0]
    commands = [c for folder in (GENERATOR_DIR, VLM_DIR) for c in RETRAIN[folder].split(" && ")]
    assert block.splitlines() == commands
