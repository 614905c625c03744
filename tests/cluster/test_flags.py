"""``stream serve --cluster``: every setting of the cluster is a flag of ``stream serve`` and a
``STREAM_*`` variable, and reaches the ClusterConfig the front runs with."""

from __future__ import annotations

import contextlib
import dataclasses
import io

import pytest

pytest.importorskip("ray")

from framestream.cli.main import build_parser
from framestream.cli.serve import _cluster_config
from framestream.stream.cluster import ClusterConfig


def help_text() -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    return " ".join(out.getvalue().split())


def test_every_cluster_setting_is_a_flag_and_a_variable() -> None:
    text = help_text()
    assert "--cluster ADDRESS STREAM_CLUSTER;" in text
    for field in dataclasses.fields(ClusterConfig):
        if field.name != "address":
            assert f"{field.name.upper()} STREAM_" in text, field.name  # metavar, then env


def test_flags_and_variables_make_the_config(monkeypatch) -> None:
    assert _cluster_config(build_parser().parse_args(["serve"])) is None
    argv = ["serve", "--cluster", "ray://head:10001", "--engines", "3", "--gpus-per-engine", "2"]
    config = _cluster_config(build_parser().parse_args([*argv, "--engine-restarts", "0"]))
    assert config == ClusterConfig("ray://head:10001", engines=3, gpus_per_engine=2, max_restarts=0)
    monkeypatch.setenv("STREAM_CLUSTER", "auto")
    monkeypatch.setenv("STREAM_FRONT_LEASE_SECONDS", "12.5")
    monkeypatch.setenv("STREAM_ENGINE_NAMESPACE", "blue")
    config = _cluster_config(build_parser().parse_args(["serve"]))
    assert (config.address, config.lease_seconds, config.namespace) == ("auto", 12.5, "blue")
    with pytest.raises(ValueError, match="lease_seconds"):
        ClusterConfig(lease_seconds=0.1, poll_seconds=0.05)
