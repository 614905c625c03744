"""Where the engines run and how a front talks to them: every setting has a flag of
``stream serve`` and a ``STREAM_*`` variable (see stream/cli.py)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClusterConfig"]


@dataclass(frozen=True)
class ClusterConfig:
    """A Ray cluster of engines behind one front.

    ``address``: ``local`` starts a Ray cluster in this process (one host, its GPUs); ``auto``
    joins the one a ``ray start`` runs on this host; ``HOST:PORT`` joins that head's GCS from a
    node of the cluster; ``ray://HOST:PORT`` goes through Ray Client (needs ``ray[client]``).
    """

    address: str = "local"
    engines: int = 0  # 0: one per `gpus_per_engine` GPUs of the cluster (1 when on CPUs)
    gpus_per_engine: float = 1.0  # 0: engines on CPUs (tests, or a GPU-less trial)
    cpus_per_engine: float = 1.0  # CPU threads reserved for an engine (torch's on CPUs)
    max_restarts: int = -1  # times Ray restarts a dead engine; -1: always
    namespace: str = "stream"  # Ray namespace of the named engines (engine-0, engine-1, ...)
    lease_seconds: float = 30.0  # an engine closes the sessions of a front silent this long
    poll_seconds: float = 0.05  # longest an engine holds a front's `take` waiting for news
    retry_seconds: float = 1.0  # between a front's calls to an engine that is down
    start_timeout: float = 600.0  # seconds for every engine to load its models

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("address must name a cluster: local, auto, HOST:PORT or ray://...")
        if self.engines < 0 or self.gpus_per_engine < 0 or self.cpus_per_engine < 0:
            raise ValueError(f"engines and resources per engine must be >= 0: {self}")
        if self.max_restarts < -1:
            raise ValueError(f"max_restarts must be -1 (always) or >= 0, got {self.max_restarts}")
        for name in ("lease_seconds", "poll_seconds", "retry_seconds", "start_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.poll_seconds * 10 > self.lease_seconds:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds}) must be at least 10x poll_seconds "
                f"({self.poll_seconds}): a front polls that often to keep its lease"
            )
