"""Joining a Ray cluster and starting its engines: one named actor per GPU (or per
``gpus_per_engine`` GPUs), each with its GPUs reserved, restarted by Ray when it dies.

Engines are named ``engine-0``, ``engine-1``, ... in the cluster's ``namespace`` and detached
from the process that started them, so several fronts (and a front that restarts) share them:
the first front creates them, later ones find them by name. Stop them with ``ray stop`` on the
cluster, or ``ray.kill`` by name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import ray

from framestream.stream.cluster.actor import EngineActor
from framestream.stream.cluster.config import ClusterConfig
from framestream.stream.engine import EngineConfig, Pipeline

__all__ = ["engine_count", "join_cluster", "start_engines"]

logger = logging.getLogger(__name__)


def join_cluster(config: ClusterConfig) -> bool:
    """Connect this process to the cluster at ``config.address`` (``local``: start one here).

    Returns:
        whether this call connected (the caller then ``ray.shutdown()``s); False when the
        process was connected already.
    """
    if ray.is_initialized():
        return False
    if config.address == "local":
        ray.init(namespace=config.namespace, include_dashboard=False)
    else:
        ray.init(address=config.address, namespace=config.namespace)
    logger.info("joined Ray at %s: %s", config.address, ray.cluster_resources())
    return True


def engine_count(config: ClusterConfig, resources: Mapping[str, float]) -> int:
    """``config.engines``, or one engine per ``gpus_per_engine`` GPUs of the cluster."""
    if config.engines:
        return config.engines
    if config.gpus_per_engine == 0:
        return 1
    count = int(resources.get("GPU", 0) // config.gpus_per_engine)
    if count == 0:
        raise ValueError(
            f"the cluster has {resources.get('GPU', 0):g} GPUs, an engine needs "
            f"{config.gpus_per_engine:g}: add GPU nodes, or --gpus-per-engine 0 for CPUs"
        )
    return count


def start_engines(
    build: Callable[[], Mapping[str, Pipeline]],
    engine_config: EngineConfig,
    config: ClusterConfig,
) -> list[Any]:
    """The cluster's engines (created where they do not exist yet), as actor handles.

    Args:
        build: loads the models on the actor's device and returns its pipelines; must be
            picklable (a module-level function or a ``functools.partial`` of one).
        engine_config: each engine's limits.
        config: how many engines and what each reserves.
    """
    count = engine_count(config, ray.cluster_resources())
    remote = ray.remote(EngineActor)
    handles = []
    for index in range(count):
        options = remote.options(
            name=f"engine-{index}",
            namespace=config.namespace,
            get_if_exists=True,
            lifetime="detached",
            num_gpus=config.gpus_per_engine,
            num_cpus=config.cpus_per_engine,
            max_restarts=config.max_restarts,
            max_task_retries=0,  # a call lost with its engine is the front's to handle
        )
        handles.append(options.remote(build, engine_config, config.lease_seconds))
    logger.info(
        "%d engines in namespace %r, %g GPUs each", count, config.namespace, config.gpus_per_engine
    )
    return handles
