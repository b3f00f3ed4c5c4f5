"""Small image files that stand for big or broken ones: made in milliseconds, no decoding."""

from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path

import cv2
import numpy as np


def _chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, body, CRC."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def big_png(path: Path, width: int, height: int) -> Path:
    """A valid, all-black 1-bit greyscale PNG of ``width`` x ``height`` (kilobytes on disk).

    OpenCV decodes it to ``width * height * 3`` bytes, which is what a reader must
    refuse before decoding.
    """
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def jpeg_bytes(size: int = 64) -> bytes:
    """A noisy JPEG (noise: so that its entropy-coded data is long enough to cut)."""
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def truncated_jpeg(path: Path) -> Path:
    """A JPEG cut short in the middle of its image data (as a half-copied file is)."""
    data = jpeg_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) * 3 // 4])
    return path


def unblock_fifo(fifo: Path, reader: threading.Thread) -> None:
    """Lets a thread stuck opening ``fifo`` for reading go (opens and closes its write end)."""
    if not reader.is_alive():
        return
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # no reader after all
        pass
    reader.join(10)
