"""A procedural toy world: coloured shapes moving over solid backgrounds, with ground truth.

It feeds the tiny models on the fly (clips, prompts, per-second captions) and grades any frames,
generated ones included (:func:`measure`, :func:`adherence`). Modules, one job each:

- :mod:`.world`: vocabulary constants, the :class:`Sprite` / :class:`Clip` spec, closed-form
  motion and the :class:`Event` list (appear, disappear, bounce) that all text derives from.
- :mod:`.render`: ``render(clip) -> [T, H, W, 3]`` uint8 RGB with OpenCV.
- :mod:`.text`: ``prompt``, ``captions``, ``parse_prompt`` and the word list ``VOCABULARY``.
- :mod:`.measure`: colour, centroid and shape read back from pixels.
- :mod:`.scenarios`: ``sample_clip``, ``switch_clip`` and the endless :class:`Feed`.
"""

from framestream.models.toyworld.measure import (
    FIT_IOU,
    IRREGULAR,
    Blob,
    Measurement,
    adherence,
    background_adherence,
    color_adherence,
    measure,
)
from framestream.models.toyworld.render import render
from framestream.models.toyworld.scenarios import Feed, Switch, feed, sample_clip, switch_clip
from framestream.models.toyworld.text import (
    VOCABULARY,
    Caption,
    ParsedPrompt,
    PromptObject,
    captions,
    parse_prompt,
    prompt,
)
from framestream.models.toyworld.world import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    EDGES,
    SHAPES,
    Clip,
    Event,
    EventKind,
    Sprite,
    frame_of,
    second_of,
)

__all__ = [
    "FIT_IOU",
    "IRREGULAR",
    "BACKGROUNDS",
    "COLORS",
    "DIRECTIONS",
    "EDGES",
    "SHAPES",
    "VOCABULARY",
    "Blob",
    "Caption",
    "Clip",
    "Event",
    "EventKind",
    "Feed",
    "Measurement",
    "ParsedPrompt",
    "PromptObject",
    "Sprite",
    "Switch",
    "adherence",
    "background_adherence",
    "color_adherence",
    "captions",
    "feed",
    "frame_of",
    "measure",
    "parse_prompt",
    "prompt",
    "render",
    "sample_clip",
    "second_of",
    "switch_clip",
]
