"""What a session starts from: the domain requests the protocol parses ``session.start`` into
and the engine and pipelines take (no tensors here; sans-I/O code imports this module)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_INSTRUCTION", "GenerationRequest", "RestyleRequest", "UnderstandingRequest"]

DEFAULT_INSTRUCTION = "Commentate on this video."


@dataclass(frozen=True, slots=True)
class RestyleRequest:
    """A generation session whose input is a feed: its frames, encoded and noised to
    ``strength``, are denoised under the prompt (video-to-video)."""

    strength: float = 0.6  # 0 < strength <= 1; 1.0 = the input is ignored (plain generation)

    def __post_init__(self) -> None:
        if not 0.0 < self.strength <= 1.0:  # NaN fails too
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What a generation session starts from."""

    prompt: str
    seed: int = 0
    height: int | None = None  # pixels; the preset's default when None
    width: int | None = None
    restyle: RestyleRequest | None = None  # set: the session restyles input frames

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError("prompt must not be empty")


@dataclass(frozen=True, slots=True)
class UnderstandingRequest:
    """What an understanding session starts from; a sampler field left None takes the
    pipeline's default for its model."""

    instruction: str = DEFAULT_INSTRUCTION
    previous_text: str = ""
    temperature: float | None = None
    repetition_penalty: float | None = None
    top_k: int | None = None
    seed: int | None = None
