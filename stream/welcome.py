"""What ``welcome`` tells a client about this device beyond the limits: which frame sizes each
generation pipeline runs in real time, and which pipelines run the embedded toy-world
models. Both are read off the pipelines the server was built with (calibrated at warm-up); a
backend whose pipelines are remote descriptions (a cluster) has neither, and the fields are
left out.

The estimates are arithmetic on the calibration (``step_cost``), no tensor work, and assume an
otherwise idle device: a session may still be refused ``compute_full`` beside others.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from framestream.models.toyworld.embedded import GENERATOR_DIR, VLM_DIR
from framestream.stream.backend import describe_pipeline
from framestream.stream.requests import GenerationRequest
from framestream.stream.scheduler import Scheduler, SchedulerConfig

__all__ = ["OFFERED_SIZES", "model_sources", "realtime_sizes"]

# (height, width) sizes estimated besides each pipeline's default: the ones the browser page
# offers (stream/static/index.html), from the toy world's own up to Wan's, both orientations
OFFERED_SIZES = ((64, 64), (128, 128), (256, 256), (480, 832), (832, 480))


def realtime_sizes(
    pipelines: Mapping[str, Any], scheduler: SchedulerConfig, max_frame_pixels: int
) -> dict[str, list[dict[str, Any]]]:
    """Generation pipeline name -> its default size, then the :data:`OFFERED_SIZES` it takes,
    each ``{"height", "width", "fps", "realtime"}``: ``fps`` the frames a second it would be
    made at alone on the device (capped at the pipeline's own rate), ``realtime`` whether a
    realtime ``session.start`` of that size is admitted on an idle device. Sizes over
    ``max_frame_pixels`` are left out (``frame_too_large`` says why), and so are pipelines
    without a calibrated ``step_cost``."""
    out = {}
    for name, pipeline in pipelines.items():
        if getattr(pipeline, "kind", None) != "generation" or not hasattr(pipeline, "step_cost"):
            continue
        default = describe_pipeline(pipeline).default_size
        sizes = [default, *(s for s in OFFERED_SIZES if s != default)]
        entries = [
            entry
            for height, width in sizes
            if 0 < height * width <= max_frame_pixels
            and (entry := _estimate(pipeline, scheduler, height, width)) is not None
        ]
        if entries:
            out[name] = entries
    return out


def _estimate(
    pipeline: Any, scheduler: SchedulerConfig, height: int, width: int
) -> dict[str, Any] | None:
    try:
        cost = pipeline.step_cost(GenerationRequest("estimate", height=height, width=width))
    except ValueError:  # a size the model cannot make (not a multiple of its patch)
        return None
    if cost is None:
        return None
    nominal = float(pipeline.config.fps)
    fps = min(nominal, nominal / cost.load)
    admitted = Scheduler(scheduler).admit(cost, realtime=True) is None
    return {"height": height, "width": width, "fps": round(fps, 2), "realtime": admitted}


def model_sources(pipelines: Mapping[str, Any]) -> dict[str, str]:
    """Pipeline name -> ``"embedded"`` when it runs a shipped toy-world model (the generator
    draws coloured shapes; the understanding model names them and answers simple questions
    about them, not free ones), ``"checkpoint"`` when it runs a model loaded from elsewhere;
    pipelines whose model came from no file (random weights), or that run elsewhere, are left
    out."""
    out = {}
    for name, pipeline in pipelines.items():
        kind = getattr(pipeline, "kind", None)
        if kind == "understanding":
            hf = getattr(getattr(pipeline, "model", None), "hf", None)
            source, shipped = getattr(hf, "name_or_path", ""), VLM_DIR
        elif kind == "generation":
            source = getattr(getattr(pipeline, "models", None), "dit_path", None)
            shipped = GENERATOR_DIR
        else:
            continue
        if source:
            embedded = Path(source).resolve().is_relative_to(shipped.resolve())
            out[name] = "embedded" if embedded else "checkpoint"
    return out
