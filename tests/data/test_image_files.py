"""Image files read by training and by ``fuselite run``'s folder source (``fuselite.images``).

Both go through one check: a regular file, a known header, a pixel count under the cap,
a JPEG with its end marker; only then is the image decoded.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from image_files import big_png, jpeg_bytes, truncated_jpeg, unblock_fifo

from fuselite.images import MAX_IMAGE_PIXELS, header_size, read_image
from fuselite.runtime.sources import FolderCapture


def encoded(suffix: str, width: int = 30, height: int = 20) -> bytes:
    """A flat image of ``width`` x ``height`` encoded by OpenCV as ``suffix``."""
    channels = () if suffix == ".pgm" else (3,)  # PGM is greyscale only
    return cv2.imencode(suffix, np.full((height, width, *channels), 90, np.uint8))[1].tobytes()


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".webp", ".tiff", ".ppm", ".pgm"])
def test_the_size_is_read_from_every_format_the_sources_accept(suffix):
    assert header_size(encoded(suffix, 30, 20)) == (30, 20)


def test_a_huge_png_header_is_read_without_decoding(tmp_path):
    path = big_png(tmp_path / "huge.png", 20000, 20000)
    assert path.stat().st_size < 200_000
    assert header_size(path.read_bytes()) == (20000, 20000)
    reason = read_image(path)
    assert isinstance(reason, str) and "400.0 megapixels" in reason


def test_a_jpeg_header_that_claims_a_huge_size_is_refused():
    data = bytearray(jpeg_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    assert header_size(bytes(data)) == (60000, 60000)


def test_unknown_formats_are_refused_rather_than_decoded_blind(tmp_path):
    (tmp_path / "x.png").write_bytes(b"GIF89a" + bytes(100))
    assert read_image(tmp_path / "x.png") == "not a decodable image"


def test_a_good_image_decodes_to_bgr(tmp_path):
    (tmp_path / "a.png").write_bytes(encoded(".png", 30, 20))
    image = read_image(tmp_path / "a.png")
    assert isinstance(image, np.ndarray) and image.shape == (20, 30, 3)


def test_the_cap_is_fifty_megapixels():
    assert MAX_IMAGE_PIXELS == 50_000_000


def folder_frames(folder: Path) -> list:
    """Every ``(ok, image, media_ms, name)`` a folder source gives, in order."""
    capture = FolderCapture(folder)
    capture.open()
    frames = []
    while (frame := capture.read())[0]:
        frames.append(frame)
    return frames


def test_the_folder_source_skips_an_image_over_the_pixel_cap(tmp_path, caplog):
    (tmp_path / "a.png").write_bytes(encoded(".png"))
    big_png(tmp_path / "b.png", 8000, 8000)
    with caplog.at_level(logging.WARNING):
        frames = folder_frames(tmp_path)
    assert [(name, image is None) for _ok, image, _ms, name in frames] == [
        ("a.png", False), ("b.png", True)]
    assert "b.png" in caplog.text and "50-megapixel cap" in caplog.text


def test_the_folder_source_skips_a_truncated_jpeg_like_the_training_reader(tmp_path, caplog):
    truncated_jpeg(tmp_path / "a.jpg")
    with caplog.at_level(logging.WARNING):
        [(_ok, image, _ms, name)] = folder_frames(tmp_path)
    assert image is None and name == "a.jpg"
    assert "JPEG cut short" in caplog.text


def test_a_jpeg_with_bytes_after_its_end_marker_still_decodes(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes() + b"trailer written by a camera")
    assert isinstance(read_image(tmp_path / "a.jpg"), np.ndarray)


def test_the_folder_source_does_not_wait_on_a_fifo(tmp_path):
    (tmp_path / "a.png").write_bytes(encoded(".png"))
    os.mkfifo(tmp_path / "b.png")
    result = {}
    reader = threading.Thread(target=lambda: result.update(frames=folder_frames(tmp_path)))
    reader.start()
    reader.join(10)
    hung = reader.is_alive()
    unblock_fifo(tmp_path / "b.png", reader)
    assert not hung, "the folder source waited on the FIFO"
    assert [name for _ok, _image, _ms, name in result["frames"]] == ["a.png", "b.png"]
    assert result["frames"][1][1] is None
