"""Where the commentary comes from: a server given by URL, a server started here on a free
loopback port (the default), or the pipeline in this process without a server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from framestream.evals.inf_streams.captioners import (
    InProcessCaptioner,
    ServerCaptioner,
    StreamOptions,
)
from framestream.evals.inf_streams.runner import Captioner

__all__ = ["BackendSpec", "open_captioner"]

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class BackendSpec:
    server_url: str | None = None  # a running server; None: start one here (or in process)
    token: str | None = None  # that server's token
    in_process: bool = False  # no server: the pipeline in this process
    vlm_dir: Path | None = None  # a Qwen2.5-VL / StreamingVLM folder; None: the embedded model
    device: str | None = None  # None: cuda when present
    dtype: str | None = None  # bf16, fp16 or fp32; None: bf16 on cuda, fp32 on cpu
    cache_gb: float | None = None  # the KV pool; None: 4 on cuda, 0.25 on cpu

    def __post_init__(self) -> None:
        if self.server_url is not None and self.in_process:
            raise ValueError("a server URL and in_process exclude each other")
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")

    @property
    def backend(self) -> str:
        return "in-process" if self.in_process else "server"

    @property
    def model(self) -> str:
        """What answers: recorded with them, so a resumed run uses the same model."""
        if self.server_url is not None:
            return "the model of a running server"
        return str(self.vlm_dir.resolve()) if self.vlm_dir else "toyworld (embedded)"


def _pipeline(spec: BackendSpec, fps: int):
    import torch

    from framestream.models.qwen_vl import load_qwen_vl
    from framestream.models.toyworld.embedded import load_vlm
    from framestream.stream.kvcache import KVCacheManager
    from framestream.stream.pipelines.sampling import GREEDY, published_sampling
    from framestream.stream.pipelines.streaming_vlm import StreamingVLMPipeline, UnderstandingConfig

    device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, _DTYPES[spec.dtype or ("bf16" if device == "cuda" else "fp32")])
    if spec.vlm_dir is None:
        model = load_vlm(dtype, device)
    else:
        model = load_qwen_vl(spec.vlm_dir, dtype=dtype, device=device)
    cache_gb = spec.cache_gb if spec.cache_gb is not None else (4.0 if device == "cuda" else 0.25)
    # as the service: a checkpoint folder samples as published, the embedded model is greedy
    sampling = GREEDY if spec.vlm_dir is None else published_sampling(spec.vlm_dir)
    config = UnderstandingConfig(fps=fps, sampling=sampling)
    return StreamingVLMPipeline(model, KVCacheManager(), int(cache_gb * (1 << 30)), config)


@contextlib.asynccontextmanager
async def open_captioner(spec: BackendSpec, options: StreamOptions) -> AsyncIterator[Captioner]:
    """The captioner of ``spec``; a server started here is stopped on exit."""
    if spec.server_url is not None:
        yield ServerCaptioner(spec.server_url, options, token=spec.token)
        return
    pipeline = _pipeline(spec, options.fps)
    if spec.in_process:
        yield InProcessCaptioner(pipeline, options)
        return
    from framestream.stream.config import ServerConfig
    from framestream.stream.engine import Engine
    from framestream.stream.server import build_server

    engine = Engine({"streaming_vlm": pipeline})
    async with build_server(ServerConfig(port=0), engine) as server:
        yield ServerCaptioner(server.url, options)
