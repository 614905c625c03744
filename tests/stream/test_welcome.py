"""The welcome's optional fields (stream/welcome.py): which understanding models are the
embedded toy ones, and that pipelines the server cannot see into are left out."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from framestream.models.toyworld.embedded import VLM_DIR
from framestream.stream.protocol import PipelineInfo
from framestream.stream.scheduler import SchedulerConfig
from framestream.stream.welcome import model_sources, realtime_sizes


def understanding(folder: str) -> SimpleNamespace:
    hf = SimpleNamespace(name_or_path=folder)
    return SimpleNamespace(kind="understanding", model=SimpleNamespace(hf=hf))


def test_model_sources_tell_the_embedded_model_from_a_checkpoint(tmp_path: Path):
    pipelines = {
        "embedded": understanding(str(VLM_DIR)),
        "checkpoint": understanding(str(tmp_path)),
        "unknown": understanding(""),  # built in memory: no folder to tell by
        "generation": SimpleNamespace(kind="generation"),
    }
    assert model_sources(pipelines) == {"embedded": "embedded", "checkpoint": "checkpoint"}


def test_the_embedded_vlm_is_reported_embedded():
    from framestream.models.toyworld.embedded import load_vlm

    pipeline = SimpleNamespace(kind="understanding", model=load_vlm())
    assert model_sources({"streaming_vlm": pipeline}) == {"streaming_vlm": "embedded"}


def test_remote_pipelines_have_no_estimates_nor_sources():
    """A cluster's pipelines are descriptions: nothing to estimate from, nothing to tell."""
    pipelines = {
        "longlive": PipelineInfo("generation", 16.0, (64, 64)),
        "streaming_vlm": PipelineInfo("understanding", 2.0),
    }
    assert realtime_sizes(pipelines, SchedulerConfig(), 1920 * 1080) == {}
    assert model_sources(pipelines) == {}
