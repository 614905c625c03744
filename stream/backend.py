"""What the WebSocket front needs of whatever runs its sessions.

::

    server.py / connection.py ──SessionBackend──┬── engine.Engine           one device, this process
                                                └── cluster.ClusterEngine   engines on Ray actors

The front validates messages, paces, encodes and sends; a backend admits sessions and fills each
one's :class:`~stream.session.Session` (frames into its ``output``, JSON events into its
``events``, and ``finish`` at the end). Both backends hand out the same ``Session`` objects, so
the front does not know where a session runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from framestream.stream.engine import EngineConfig, EngineStats
from framestream.stream.kvcache import PoolStats
from framestream.stream.protocol import PipelineInfo
from framestream.stream.requests import GenerationRequest, UnderstandingRequest
from framestream.stream.session import Session

__all__ = ["PipelineInfo", "SessionBackend", "cache_pools", "describe_pipeline"]


def describe_pipeline(pipeline: Any) -> PipelineInfo:
    """The :class:`PipelineInfo` of a local pipeline (a description is returned as it is)."""
    if isinstance(pipeline, PipelineInfo):
        return pipeline
    models = getattr(pipeline, "models", None)  # generation pipelines: the Wan models
    height, width = getattr(models, "default_size", (0, 0))
    # restyling encodes the input with the VAE: the full Wan VAE can, a tiny decoder cannot
    restyles = hasattr(getattr(models, "vae", None), "new_encode_state")
    size = (int(height), int(width))
    return PipelineInfo(pipeline.kind, float(pipeline.config.fps), size, restyles)


class SessionBackend(Protocol):
    """Runs sessions of named pipelines for the front. Commands never block: they are queued
    and applied in order between steps; a full queue raises :class:`~stream.errors.EngineBusy`.
    """

    config: EngineConfig  # the limits each engine applies (the front reports some in welcome)

    @property
    def pipelines(self) -> Mapping[str, Any]:
        """Pipeline name -> a local pipeline or its :class:`PipelineInfo` (``.kind`` on both)."""
        ...

    def start(self) -> None:
        """Start serving (called on the front's event loop)."""
        ...

    async def shutdown(self, reason: str = "server_shutdown") -> None:
        """End every session with ``reason`` and stop (idempotent)."""
        ...

    async def open_session(
        self,
        pipeline: str,
        request: GenerationRequest | UnderstandingRequest,
        realtime: bool = True,
    ) -> Session:
        """Admit and start a session; raises :class:`~stream.errors.SessionRefused`."""
        ...

    def switch_prompt(
        self,
        session: Session,
        prompt: str,
        transition_chunks: int = 0,
        at_frame: int | None = None,
    ) -> None:
        """At the next chunk, or at the first chunk starting at or after ``at_frame``."""
        ...

    def set_strength(self, session: Session, strength: float) -> None:
        """A restyle session's strength, from its next chunk."""
        ...

    def push_frame(self, session: Session, timestamp: float, frame: Any) -> None: ...
    def ask(self, session: Session, question: str) -> None: ...
    def pause(self, session: Session) -> None: ...
    def resume(self, session: Session) -> None: ...
    def close(self, session: Session, reason: str = "stopped") -> None: ...

    def stats(self) -> EngineStats:
        """A snapshot over everything the backend runs; safe from any thread."""
        ...


def cache_pools(backend: SessionBackend) -> list[PoolStats]:
    """The KV-cache pools behind ``backend``: reported by its engines where it has remote ones
    (a ``cache_pools()`` method), else read from its local pipelines' managers."""
    remote = getattr(backend, "cache_pools", None)
    if remote is not None:
        return list(remote())
    managers = {}
    for pipeline in backend.pipelines.values():
        manager = getattr(pipeline, "manager", None)
        if manager is not None:
            managers[id(manager)] = manager
    return [pool for manager in managers.values() for pool in manager.stats().values()]
