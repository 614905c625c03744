"""The params of a ``session.start``, checked by the client before it sends them (the server's
limits, docs/protocol.md), so that a bad argument is a ValueError naming it, not a round trip."""

from __future__ import annotations

from typing import Any

__all__ = ["SAMPLING_LIMITS", "check_sampling", "generation_params"]


def generation_params(
    prompt: str,
    seed: int,
    height: int | None,
    width: int | None,
    format: str,
    quality: int,
    realtime: bool,
    record: bool,
) -> dict[str, Any]:
    """A generation ``session.start``'s params, checked; ValueError names a bad one."""
    if not prompt.strip() or len(prompt) > 2000:
        raise ValueError(f"prompt must be 1..2000 non-blank characters, got {prompt!r:.80}")
    if format not in ("jpeg", "png", "raw", "h264"):
        raise ValueError(f"format must be jpeg, png, raw or h264, got {format!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1..100, got {quality}")
    for name, value in (("height", height), ("width", width)):
        if value is not None and (value <= 0 or value % 16):
            raise ValueError(f"{name} must be a positive multiple of 16, got {value}")
    params: dict[str, Any] = {
        "prompt": prompt,
        "seed": seed,
        "format": format,
        "quality": quality,
        "realtime": realtime,
        "record": record,
    }
    if height is not None:
        params["height"] = height
    if width is not None:
        params["width"] = width
    return params


# the server's limits on an understanding session's sampler (docs/protocol.md, session.start)
SAMPLING_LIMITS = {
    "temperature": (0.0, 10.0),  # 0: greedy
    "repetition_penalty": (0.0, 10.0),  # the low bound excluded
    "top_k": (1, 1000),
    "seed": (0, 2**63 - 1),
}


def check_sampling(values: dict[str, Any]) -> dict[str, Any]:
    """Sampler arguments checked against :data:`SAMPLING_LIMITS`; ValueError names one."""
    for name, value in values.items():
        low, high = SAMPLING_LIMITS[name]
        integer = name in ("top_k", "seed")
        if integer:
            ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok and (value > low if name == "repetition_penalty" else value >= low)
            ok = ok and value <= high
        if not ok:
            kind = "an integer" if integer else "a number"
            raise ValueError(f"{name} must be {kind} in {low}..{high}, got {value!r}")
    return values
