"""Sessions spread over GPUs and hosts, on Ray (``pip install -e '.[cluster]'``).

* :mod:`~stream.cluster.actor` -- :class:`EngineActor`: one engine on one device, as an actor.
* :mod:`~stream.cluster.front` -- :class:`ClusterEngine`: the front's backend over the engines.
* :mod:`~stream.cluster.router` -- where a new session goes (least loaded, up, with room).
* :mod:`~stream.cluster.messages` -- what crosses between them.
* :mod:`~stream.cluster.launch` -- joining a cluster, starting its named engines.
* :mod:`~stream.cluster.config` -- :class:`ClusterConfig`.

See docs/scaling.md.
"""

from framestream.stream.cluster.actor import EngineActor
from framestream.stream.cluster.config import ClusterConfig
from framestream.stream.cluster.front import ClusterEngine, EngineStatus
from framestream.stream.cluster.launch import engine_count, join_cluster, start_engines

__all__ = [
    "ClusterConfig",
    "ClusterEngine",
    "EngineActor",
    "EngineStatus",
    "engine_count",
    "join_cluster",
    "start_engines",
]
