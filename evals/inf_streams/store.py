"""The output folder of a run, written so that an interrupted run leaves nothing half-written
and a rerun skips what is done::

    OUT/run.json                 the settings the answers depend on (a rerun must match them)
    OUT/chunks/<video>.<start>-<end>.json
                                 one finished chunk: its published line and its run stats
    OUT/merged_result.jsonl      the published format, one line per video (rebuilt each run)

Every file is written to a temporary name in the same folder and renamed over the target, so it
either exists whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ChunkKey",
    "ChunkStats",
    "ChunkStore",
    "SettingsMismatchError",
    "atomic_write_json",
    "atomic_write_text",
]


class SettingsMismatchError(Exception):
    """The output folder holds answers made with other settings."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that ``path`` is never seen half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


@dataclass(frozen=True, slots=True)
class ChunkKey:
    """A stretch of one video run as one stream (one session)."""

    video: str  # base name
    start: int  # seconds of the video
    end: int  # seconds, exclusive

    @property
    def seconds(self) -> int:
        return self.end - self.start

    def file_name(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.video)[:80]
        digest = hashlib.sha256(self.video.encode()).hexdigest()[:8]  # names that sanitise alike
        return f"{safe}.{digest}.{self.start}-{self.end}.json"


@dataclass(frozen=True)
class ChunkStats:
    """How the stream of one chunk went (not part of the published format)."""

    lags: tuple[float, ...]  # per captioned second: how far understanding trailed the feed, s
    latencies: tuple[float, ...]  # per captioned second: wall s from its last frame to caption
    skipped_seconds: int  # seconds the service dropped (the feed ran ahead of it)
    wall_seconds: float  # the whole chunk, wall clock

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ChunkStats:
        return cls(
            tuple(obj["lags"]),
            tuple(obj["latencies"]),
            int(obj["skipped_seconds"]),
            float(obj["wall_seconds"]),
        )


class ChunkStore:
    """Finished chunks of one output folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.chunks = folder / "chunks"
        self.merged = folder / "merged_result.jsonl"

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Record ``settings`` in ``run.json``, or check them against those recorded.

        Raises:
            SettingsMismatchError: the folder's answers were made with other settings.
        """
        path = self.folder / "run.json"
        if path.is_file():
            recorded = json.loads(path.read_text(encoding="utf-8"))
            differ = sorted(
                k for k in settings.keys() | recorded.keys() if settings.get(k) != recorded.get(k)
            )
            if differ:
                detail = "; ".join(
                    f"{k}: {recorded.get(k)!r} there, {settings.get(k)!r} now" for k in differ
                )
                raise SettingsMismatchError(
                    f"{self.folder} holds answers made with other settings ({detail}); "
                    "choose another --out, or delete it to start over"
                )
            return
        atomic_write_json(path, settings)

    def path(self, key: ChunkKey) -> Path:
        return self.chunks / key.file_name()

    def done(self, key: ChunkKey) -> bool:
        return self.path(key).is_file()

    def save(self, key: ChunkKey, line: dict[str, Any], stats: ChunkStats) -> None:
        atomic_write_json(self.path(key), {"result": line, "stats": stats.to_json()})

    def load(self, key: ChunkKey) -> tuple[dict[str, Any], ChunkStats]:
        obj = json.loads(self.path(key).read_text(encoding="utf-8"))
        return obj["result"], ChunkStats.from_json(obj["stats"])
