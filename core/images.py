"""Image files read safely, shared by the training readers and ``fuselite run``'s folder source.

A file is read only when it is a regular file (a FIFO named ``*.png`` would block the
reader forever), no larger than :data:`MAX_IMAGE_FILE_BYTES`.  Its width and height are
then read from the header (PNG IHDR, JPEG SOF, BMP, WebP, TIFF, PNM) and the image is
decoded only when it has at most :data:`MAX_IMAGE_PIXELS` pixels: a 48 kB PNG can claim
20000x20000 pixels, 1.2 GB once decoded.  A file whose header is none of those formats is
refused rather than handed to OpenCV blind.  A JPEG must have its end marker (FFD9) after
its image data, so a half-copied file is refused in training and at run time alike.

Every refusal is a short reason string, which callers count and log as a skipped item.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import cv2
import numpy as np

# 50 megapixels: a 8660x5774 photo, 150 MB as 8-bit BGR.  Cameras and datasets rarely go
# past 24 MP; a board with 1 GB of RAM still decodes one at the cap.
MAX_IMAGE_PIXELS = 50_000_000
# A 50 MP 8-bit BMP is 150 MB; nothing decodable under the pixel cap needs more.
MAX_IMAGE_FILE_BYTES = 256 * 1024 * 1024
NOT_DECODABLE = "not a decodable image"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC are not frames
_JPEG_SOS, _JPEG_EOI = 0xDA, b"\xff\xd9"


def read_image(path: Path | str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray | str:
    """The image at ``path`` as OpenCV BGR uint8 ``[H, W, 3]``, or the reason it is unusable."""
    data = read_image_bytes(path)
    if isinstance(data, str):
        return data
    reason = check_image_bytes(data, max_pixels)
    if reason:
        return reason
    try:
        # IMREAD_COLOR replicates greyscale, drops alpha and scales 16-bit to 8-bit.
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        bgr = None
    return NOT_DECODABLE if bgr is None else bgr


def read_image_bytes(path: Path | str, max_bytes: int = MAX_IMAGE_FILE_BYTES) -> bytes | str:
    """The bytes of a regular file, or why it was not read (FIFOs and devices are never read)."""
    try:
        # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return "image file not found"
    except ValueError:
        return "image path contains a NUL character"
    except OSError as error:
        return f"cannot read image file ({error.strerror or error})"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if info.st_size > max_bytes:
            return f"image file is {info.st_size} bytes, over the {max_bytes}-byte cap"
        with os.fdopen(os.dup(fd), "rb") as stream:
            return stream.read(max_bytes + 1)
    except OSError as error:
        return f"cannot read image file ({error.strerror or error})"
    finally:
        os.close(fd)


def check_image_bytes(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why an encoded image must not be decoded (size, format, truncation), or None."""
    size = header_size(data)
    if size is None:
        return NOT_DECODABLE  # not one of the formats above (or its header is broken)
    width, height = size
    if width <= 0 or height <= 0:
        return f"{NOT_DECODABLE} (the header gives {width}x{height} pixels)"
    if width * height > max_pixels:
        return (
            f"image is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels), over the "
            f"{max_pixels / 1e6:g}-megapixel cap; downscale it"
        )
    if data[:2] == b"\xff\xd8" and not _jpeg_complete(data):
        return f"{NOT_DECODABLE} (JPEG cut short: no end marker)"
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` read from the header of a PNG, JPEG, BMP, WebP, TIFF or PNM."""
    for reader in (_png_size, _jpeg_size, _bmp_size, _webp_size, _tiff_size, _pnm_size):
        try:
            size = reader(data)
        except (struct.error, IndexError, ValueError):
            return None  # a header cut short or malformed
        if size is not None:
            return size
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    if data[12:16] != b"IHDR":
        raise ValueError("PNG without IHDR first")
    return struct.unpack(">II", data[16:24])


def _jpeg_segments(data: bytes):
    """``(marker, offset of its payload)`` of every JPEG segment up to and including SOS."""
    offset = 2
    while True:
        while data[offset] == 0xFF and data[offset + 1] == 0xFF:  # fill bytes
            offset += 1
        if data[offset] != 0xFF:
            raise ValueError("JPEG segment without a marker")
        marker = data[offset + 1]
        yield marker, offset + 4
        if marker == _JPEG_SOS:
            return
        offset += 2 + struct.unpack(">H", data[offset + 2 : offset + 4])[0]


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"\xff\xd8":
        return None
    for marker, payload in _jpeg_segments(data):
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[payload + 1 : payload + 5])
            return width, height
    raise ValueError("JPEG without a frame header")


def _jpeg_complete(data: bytes) -> bool:
    """True when the end marker follows the scan data (trailers after it are allowed).

    FFD9 never occurs inside entropy-coded data (a data FF is written FF00), but an
    EXIF thumbnail carries one before the scan: only one after SOS counts.
    """
    try:
        scan = max(payload for _marker, payload in _jpeg_segments(data))
    except (struct.error, IndexError, ValueError):
        return False  # cut before its scan even starts
    return data.rfind(_JPEG_EOI) > scan


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if data[:2] != b"BM":
        return None
    if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height means rows stored top-down


def _webp_size(data: bytes) -> tuple[int, int] | None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    raise ValueError("unknown WebP chunk")


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(data[:4])
    if order is None:
        return None
    first = struct.unpack(order + "I", data[4:8])[0]
    count = struct.unpack(order + "H", data[first : first + 2])[0]
    tags = {}
    for entry in range(first + 2, first + 2 + 12 * count, 12):
        tag, kind = struct.unpack(order + "HH", data[entry : entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            value_format = order + ("H" if kind == 3 else "I")
            tags[tag] = struct.unpack_from(value_format, data, entry + 8)[0]
    if 256 not in tags or 257 not in tags:
        raise ValueError("TIFF without width and length")
    return tags[256], tags[257]


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 3 or data[0:1] != b"P" or data[1:2] not in b"123456" or not data[2:3].isspace():
        return None
    fields: list[int] = []
    for line in data[2:256].split(b"\n"):
        fields += [int(word) for word in line.split(b"#")[0].split()]
        if len(fields) >= 2:
            return fields[0], fields[1]
    raise ValueError("PNM header cut short")
