"""A headless MJPEG preview over HTTP, so a person can watch a board from a browser.

``/`` is a small page showing ``/stream.mjpg`` (``multipart/x-mixed-replace``);
``/snapshot.jpg`` is the latest frame and ``/stats.json`` the latest stats.  It
listens on 127.0.0.1 unless told otherwise, and has no password: bind it to
another address only on a network you trust.

The annotation loop only hands over a reference to the newest annotated frame; the
JPEG encoding happens on the server's threads, and only while someone watches.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

log = logging.getLogger(__name__)

BOUNDARY = "fuselite-frame"
JPEG_QUALITY = 80
MAX_PREVIEW_FPS = 15.0
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>fuselite preview</title>
<style>body{margin:0;background:#111;color:#ddd;font:14px sans-serif}
img{display:block;height:92vh;max-width:100vw;object-fit:contain;margin:auto}
p{margin:4px 8px}</style></head>
<body><p>fuselite live preview &middot; <a href="/stats.json" style="color:#8cf">stats</a></p>
<img src="/stream.mjpg" alt="annotated stream"></body></html>
"""


class MjpegPreview:
    """Serves the newest annotated frame as an MJPEG stream on a background thread.

    Example:
        >>> preview = MjpegPreview("127.0.0.1", 8080).start()
        >>> preview.publish(annotated_frame)
        >>> preview.close()
    """

    def __init__(self, bind: str = "127.0.0.1", port: int = 0) -> None:
        self.bind = bind
        self.requested_port = port
        self._cond = threading.Condition()
        self._image: np.ndarray | None = None
        self._version = 0
        self._jpeg: tuple[int, bytes] = (-1, b"")
        self._stats: dict = {}
        self._closed = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        return self._server.server_address[1] if self._server else self.requested_port

    @property
    def url(self) -> str:
        """Where to point a browser."""
        host = "127.0.0.1" if self.bind in ("", "0.0.0.0") else self.bind
        return f"http://{host}:{self.port}/"

    def start(self) -> MjpegPreview:
        """Binds the port and starts serving; raises ``OSError`` if the port is taken."""
        address = (self.bind, self.requested_port)
        try:
            self._server = ThreadingHTTPServer(address, _handler_for(self))
        except OSError as exc:
            raise OSError(
                exc.errno, exc.strerror, f"preview {self.bind}:{self.requested_port}"
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="preview", daemon=True
        )
        self._thread.start()
        if self.bind not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "the preview on %s has no password; anyone who can reach it sees the camera",
                self.bind,
            )
        log.info("preview: %s", self.url)
        return self

    def publish(self, image: np.ndarray) -> None:
        """Makes ``image`` (BGR, not modified afterwards) the newest frame."""
        with self._cond:
            self._image = image
            self._version += 1
            self._cond.notify_all()

    def set_stats(self, stats: dict) -> None:
        """Replaces what ``/stats.json`` shows."""
        self._stats = dict(stats)

    def close(self) -> None:
        """Stops serving and ends open streams."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_jpeg(self, after_version: int, timeout: float) -> tuple[int, bytes] | None:
        """The newest frame as ``(version, JPEG)`` once newer than ``after_version``.

        Returns ``None`` on timeout or once the preview is closed.
        """
        with self._cond:
            if not self._cond.wait_for(
                lambda: self._closed or self._version > after_version, timeout
            ):
                return None
            if self._closed or self._image is None:
                return None
            version, image = self._version, self._image
            if self._jpeg[0] == version:
                return self._jpeg
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return None
        with self._cond:
            self._jpeg = (version, encoded.tobytes())
            return self._jpeg

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def stats_json(self) -> bytes:
        """The stats as JSON bytes."""
        return json.dumps(self._stats).encode()


def _handler_for(preview: MjpegPreview) -> type[BaseHTTPRequestHandler]:
    class Handler(_PreviewHandler):
        pass

    Handler.preview = preview
    return Handler


class _PreviewHandler(BaseHTTPRequestHandler):
    preview: MjpegPreview
    server_version = "fuselite-preview"

    def do_GET(self) -> None:
        route = self.path.split("?", 1)[0]
        if route in ("/", "/index.html"):
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", PAGE.encode())
        elif route == "/stream.mjpg":
            self._stream()
        elif route == "/snapshot.jpg":
            frame = self.preview.wait_jpeg(-1, timeout=5.0)
            if frame is None:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"no frame yet\n")
            else:
                self._send(HTTPStatus.OK, "image/jpeg", frame[1])
        elif route == "/stats.json":
            self._send(HTTPStatus.OK, "application/json", self.preview.stats_json())
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        version = -1
        try:
            while not self.preview.closed:
                frame = self.preview.wait_jpeg(version, timeout=1.0)
                if frame is None:
                    continue
                version, jpeg = frame
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                head += f"Content-Length: {len(jpeg)}\r\n\r\n"
                self.wfile.write(head.encode() + jpeg + b"\r\n")
                self.wfile.flush()
                time.sleep(1.0 / MAX_PREVIEW_FPS)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the viewer closed the tab

    def log_message(self, format: str, *args) -> None:
        log.debug("preview %s: " + format, self.client_address[0], *args)
