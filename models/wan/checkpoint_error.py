"""The one exception of the Wan checkpoint loader, :class:`CheckpointError` (a ``ValueError``).

Every module of the loader (:mod:`models.wan.loader` and the ``checkpoint_*`` modules it reads
through) raises it for checkpoint content that does not fit the model or the requested layout,
naming the file and the first few offending keys (:func:`first_keys`). A missing path is a
``FileNotFoundError``; an unknown layout or dtype a plain ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["SHOWN_KEYS", "CheckpointError", "first_keys"]

SHOWN_KEYS = 5  # how many keys of each kind an error message names


class CheckpointError(ValueError):
    """A checkpoint whose content does not fit the model or the requested layout.

    Attributes:
        missing: keys the model expects that the checkpoint lacks.
        unexpected: keys the checkpoint has that the model does not.
        mismatched: ``(key, expected_shape, found_shape)`` for keys of the wrong shape.
    """

    def __init__(
        self,
        message: str,
        *,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        mismatched: Iterable[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
    ) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


def first_keys(keys: list[str]) -> str:
    """The first ``SHOWN_KEYS`` of ``keys``, and how many more there are."""
    more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more
