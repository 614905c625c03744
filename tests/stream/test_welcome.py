"""The welcome's optional fields (stream/welcome.py): which pipelines run the
embedded toy-world models, and that pipelines the server cannot see into are left out."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from framestream.models.toyworld.embedded import GENERATOR_DIR, VLM_DIR
from framestream.stream.protocol import PipelineInfo
from framestream.stream.scheduler import SchedulerConfig
from framestream.stream.welcome import model_sources, realtime_sizes


def understanding(folder: str) -> SimpleNamespace:
    hf = SimpleNamespace(name_or_path=folder)
    return SimpleNamespace(kind="understanding", model=SimpleNamespace(hf=hf))


def generation(dit_path: Path | None) -> SimpleNamespace:
    return SimpleNamespace(kind="generation", models=SimpleNamespace(dit_path=dit_path))


def test_model_sources_tell_the_embedded_models_from_checkpoints(tmp_path: Path):
    pipelines = {
        "embedded": understanding(str(VLM_DIR)),
        "checkpoint": understanding(str(tmp_path)),
        "unknown": understanding(""),  # built in memory: no folder to tell by
        "generator": generation(GENERATOR_DIR / "dit.safetensors"),
        "generator_checkpoint": generation(tmp_path / "dit.safetensors"),
        "generator_random": generation(None),
        "other": SimpleNamespace(kind="restyle"),
    }
    assert model_sources(pipelines) == {
        "embedded": "embedded",
        "checkpoint": "checkpoint",
        "generator": "embedded",
        "generator_checkpoint": "checkpoint",
    }


def test_the_embedded_generator_is_reported_embedded_and_random_weights_not_at_all():
    from framestream.models.registry import load_wan_models

    shipped = SimpleNamespace(kind="generation", models=load_wan_models())
    random = SimpleNamespace(kind="generation", models=load_wan_models("tiny"))
    assert model_sources({"longlive": shipped, "tiny": random}) == {"longlive": "embedded"}


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
