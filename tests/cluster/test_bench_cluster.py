"""``stream bench --suite cluster`` in its small form on the CPU: two engine actors on the
package's Ray cluster, the tiny preset at 16x16. Structure only (the variants, a figure per
client count, the hop and the ratios), never a timing."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from framestream.evals.bench.cli import main
from framestream.evals.bench.record import BenchRecord


def test_the_cluster_suite_records_both_workloads(tmp_path, ray_cluster) -> None:
    out = tmp_path / "cluster.json"
    argv = ["--suite", "cluster", "--preset", "tiny", "--size", "16x16", "--quick"]
    assert main([*argv, "--threads", "1", "--engines", "2", "--out", str(out)]) == 0
    record = BenchRecord.read(out)
    assert "--engines 2" in record.command
    engines = record.suites["cluster"]["longlive_engines"]
    assert list(engines.variants) == ["ray_2", "ray_1"] and engines.ours == "ray_2"
    assert engines.config["clients"] == [1, 2] and engines.config["gpus_per_engine"] == 0
    for variant in engines.variants.values():
        assert variant.value("fps_1") > 0 and variant.value("fps_2") > 0
        assert variant.series["fps_by_clients"].x == [1, 2]
    assert engines.ratios()["ray_1"]["fps_2"] > 0  # what the second engine brings
    hop = record.suites["cluster"]["ray_hop"]
    assert list(hop.variants) == ["ray_1", "local", "direct"]
    for n in (1, 2):
        assert hop.variants["ray_1"].value(f"hop_ms_{n}") is not None
        assert hop.variants["local"].value(f"ms_per_frame_{n}") > 0
    assert out.with_name("cluster.cluster.png").is_file()
    assert ray_cluster.is_initialized()  # the suite leaves a cluster it did not start
