"""Fixtures of the reliability tests: every pipeline of the embedded default, loaded once and
served by real loopback servers; the helpers that talk to them live in ``wire.py``."""

from __future__ import annotations

import pytest

from framestream.stream.kvcache import KVCacheManager
from framestream.stream.service import ServiceModels, build_pipelines


@pytest.fixture(scope="package")
def pipelines():
    """longlive, rolling_forcing and streaming_vlm on small pools (64 MiB each)."""
    models = ServiceModels(cache_bytes=64 << 20, vlm_cache_bytes=64 << 20)
    return build_pipelines(models, KVCacheManager())
