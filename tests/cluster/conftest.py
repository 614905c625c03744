"""A real local Ray cluster on the CPUs, started once for the package, with two engines of the
embedded default (LongLive and StreamingVLM, small pools, two sessions each), and fronts made
per test: a ClusterEngine behind a real loopback server, talked to as the other server tests do
(``tests/reliability/wire.py``). Tests skip where Ray is not installed."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from framestream.stream.config import ServerConfig
from framestream.stream.engine import EngineConfig
from framestream.stream.server import Server, build_server
from framestream.stream.service import ServiceModels, build_pipelines
from tests.reliability.wire import until

NAMESPACE = "stream-tests"
ENGINE = EngineConfig(max_sessions=2, lookahead_seconds=0.5)


@pytest.fixture(scope="package")
def ray_cluster():
    """Ray on this machine: logical CPUs for these engines and the benchmark's, a small object
    store (frames are tiny here), engine logs kept out of the test output."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=6,
        namespace=NAMESPACE,
        include_dashboard=False,
        object_store_memory=256 << 20,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="package")
def cluster_config(ray_cluster):
    from framestream.stream.cluster import ClusterConfig

    return ClusterConfig("local", engines=2, gpus_per_engine=0, namespace=NAMESPACE)


@pytest.fixture(scope="package")
def engines(cluster_config) -> list[Any]:
    """The two engine actors (named engine-0 and engine-1), uncalibrated: these tests admit by
    session count, and an engine's timed warm-up steps (seconds on a CPU, paid again at the
    killed engine's restart) would only let a busy machine refuse a session by compute;
    calibration has tests of its own."""
    from framestream.stream.cluster import start_engines

    models = ServiceModels(
        pipelines=("longlive", "streaming_vlm"),
        cache_bytes=64 << 20,
        vlm_cache_bytes=64 << 20,
        calibrate=False,
    )
    return start_engines(functools.partial(build_pipelines, models), ENGINE, cluster_config)


@contextlib.asynccontextmanager
async def front(engines: list[Any], config: Any, **server: Any) -> AsyncIterator[Server]:
    """A front over ``engines`` behind a server on a free loopback port; it starts once every
    engine is up and holds no session (of an earlier test's front)."""
    from framestream.stream.cluster import ClusterEngine

    backend = await ClusterEngine.connect(engines, config)
    async with build_server(ServerConfig(port=0, **server), backend) as served:
        await until(lambda: all(s.up and s.sessions == 0 for s in backend.status()), 120)
        yield served
