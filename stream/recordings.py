"""The finished recordings a server keeps and serves: one MP4 per recorded session, under an
unguessable name (its URL is its capability), the oldest deleted beyond a limit."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import secrets
import tempfile
from pathlib import Path

from framestream.stream.delivery import Recorder
from framestream.stream.session import Session

__all__ = ["Recordings"]

logger = logging.getLogger(__name__)

# <session>-<128 random bits>: a recording's URL is its capability; ids alone are guessable
_NAME = re.compile(r"[0-9]{1,10}-[0-9a-f]{32}")


class Recordings:
    """Recordings of a server, in ``folder`` (a temporary one when None).

    Args:
        folder: where MP4s are written; created when missing.
        limit: finished recordings kept; the oldest are deleted beyond it.
        max_pending_frames: frames a recording buffers while the disk lags (more are dropped).
    """

    def __init__(self, folder: Path | None, limit: int, max_pending_frames: int) -> None:
        self._tmp: tempfile.TemporaryDirectory | None = None
        if folder is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="stream-recordings-")
            folder = Path(self._tmp.name)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.limit = limit
        self.max_pending_frames = max_pending_frames
        self._finished: collections.OrderedDict[str, Path] = collections.OrderedDict()

    def open(self, session: Session) -> Recorder:
        """A recorder for ``session``; ``OSError`` (or PyAV's errors) when the folder cannot
        take it. Failures later are posted to the session."""

        def failed(reason: str) -> None:
            message = f"the recording stopped ({reason}); the session goes on without it"
            session.post(
                {
                    "type": "error",
                    "code": "recording_failed",
                    "message": message,
                    "session": session.id,
                }
            )

        name = f"{session.id}-{secrets.token_hex(16)}"
        path = self.folder / f"{name}.mp4"
        return Recorder(path, session.fps, self.max_pending_frames, failed)

    async def finish(self, recorder: Recorder) -> str | None:
        """Complete the MP4 and serve it; returns its URL path, or None if it failed (the
        partial file is deleted)."""
        await asyncio.shield(asyncio.wrap_future(recorder.close()))
        if recorder.failure is not None:
            with contextlib.suppress(OSError):  # the folder itself may be what failed
                recorder.path.unlink(missing_ok=True)
            return None
        if recorder.frames_dropped:
            logger.warning(
                "%s: recording dropped %d frames (disk too slow)",
                recorder.path.name,
                recorder.frames_dropped,
            )
        name = recorder.path.stem
        self._finished[name] = recorder.path
        while len(self._finished) > self.limit:
            _, oldest = self._finished.popitem(last=False)
            with contextlib.suppress(OSError):
                oldest.unlink(missing_ok=True)
        return f"/recordings/{name}.mp4"

    def find(self, name: str) -> Path | None:
        """The file of a finished recording by its URL name, or None."""
        return self._finished.get(name) if _NAME.fullmatch(name) else None

    def cleanup(self) -> None:
        """Delete the temporary folder, when there is one."""
        if self._tmp is not None:
            self._tmp.cleanup()
