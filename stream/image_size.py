"""The pixel size a JPEG or PNG file declares, read from its header without decoding it.

A decoder allocates the whole picture its header declares before it reads a pixel: a small PNG
of zeros can declare 12000x12000 and make it allocate 12000 * 12000 * 3 bytes. The server reads
the declared size first and refuses oversized frames before anything is allocated::

    PNG   89 50 4E 47 0D 0A 1A 0A | length | "IHDR" | width u32 BE | height u32 BE | ...
    JPEG  FF D8 | segments FF xx [length u16 BE, body] ... | FF C0..CF (a SOF) length precision
          height u16 BE | width u16 BE    (C4 DHT, C8 JPG, CC DAC are not frame headers)
"""

from __future__ import annotations

import struct

from framestream.stream.errors import InputError

__all__ = ["ImageHeaderError", "jpeg_size", "png_size"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IHDR = struct.Struct(">I4sII")  # chunk length, type, width, height
# start-of-frame markers: every C0..CF but DHT (C4), JPG (C8) and DAC (CC)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# markers without a length field: TEM and the restart markers
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_START_OF_SCAN = 0xDA


class ImageHeaderError(InputError):
    """The bytes are not a JPEG or PNG header this reader understands."""


def png_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from a PNG's IHDR chunk, which must come first."""
    if not data.startswith(_PNG_SIGNATURE) or len(data) < len(_PNG_SIGNATURE) + _PNG_IHDR.size:
        raise ImageHeaderError("not a PNG file (no signature and IHDR chunk)")
    length, kind, width, height = _PNG_IHDR.unpack_from(data, len(_PNG_SIGNATURE))
    if kind != b"IHDR" or length != 13:
        raise ImageHeaderError("a PNG file must start with its IHDR chunk")
    return width, height


def jpeg_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from a JPEG's first start-of-frame segment."""
    if not data.startswith(b"\xff\xd8"):
        raise ImageHeaderError("not a JPEG file (no start-of-image marker)")
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            raise ImageHeaderError(f"JPEG: expected a marker at byte {at}")
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        if marker == _START_OF_SCAN:
            break
        (length,) = struct.unpack_from(">H", data, at + 2)
        if length < 2:
            raise ImageHeaderError(f"JPEG: segment length {length} at byte {at}")
        if marker in _SOF:
            if at + 9 > len(data):
                break
            height, width = struct.unpack_from(">HH", data, at + 5)
            return width, height
        at += 2 + length
    raise ImageHeaderError("JPEG: no frame header before the image data")
