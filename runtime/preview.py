"""A headless MJPEG preview over HTTP, so a person can watch a board from a browser.

``/`` is a small page showing ``/stream.mjpg`` (``multipart/x-mixed-replace``);
``/snapshot.jpg`` is the latest frame and ``/stats.json`` the latest stats.  It
listens on 127.0.0.1 unless told otherwise, and has no password: bind it to
another address only on a network you trust.

The annotation loop only hands over a reference to the newest annotated frame; the
JPEG encoding happens on the server's threads, and only while someone watches.

Nothing a client does can stop the run.  At most ``max_clients`` connections
(:data:`DEFAULT_MAX_CLIENTS`) are served at once, each on its own thread; one over the
cap gets ``503`` and is closed at once, so file descriptors stay bounded (about 1,000
idle connections once used up the 1,024 a systemd service gets, and the run's next
video file could not be opened).  Every socket has a timeout
(:data:`SOCKET_TIMEOUT_S`), which also bounds the whole request: a client that sends
no request, dribbles it, or stops reading the stream, is dropped.  Accept errors (``EMFILE``) and client errors are logged once
and counted (:meth:`MjpegPreview.counts`); the server backs off and keeps serving.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MAX_CLIENTS = 16  # viewers served at once; a board has few watchers
SOCKET_TIMEOUT_S = 10.0  # longest wait for a client to send its request or take a frame
ACCEPT_BACKOFF_S = 0.1  # after a failed accept: the pending connection keeps the socket readable
LISTEN_BACKLOG = 64  # connections waiting to be accepted hold no descriptor of ours
BUSY_BODY = b"preview busy: too many viewers, try again later\n"
BUSY_RESPONSE = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 5\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(BUSY_BODY)).encode() + b"\r\n\r\n"
) + BUSY_BODY
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

    def __init__(
        self,
        bind: str = "127.0.0.1",
        port: int = 0,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        socket_timeout: float = SOCKET_TIMEOUT_S,
    ) -> None:
        if max_clients < 1:
            raise ValueError(f"the preview must allow at least 1 client, not {max_clients}")
        self.bind = bind
        self.requested_port = port
        self.max_clients = max_clients
        self.socket_timeout = socket_timeout
        self._counts = {"served": 0, "rejected": 0, "timeouts": 0, "errors": 0}
        self._active = 0
        self._logged: set[str] = set()
        self._count_lock = threading.Lock()
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
            self._server = _PreviewServer(address, _handler_for(self), self)
        except OSError as exc:
            raise OSError(
                exc.errno, exc.strerror, f"preview {self.bind}:{self.requested_port}"
            ) from None
        self._thread = threading.Thread(target=self._serve, name="preview", daemon=True)
        self._thread.start()
        if self.bind not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "the preview on %s has no password; anyone who can reach it sees the camera",
                self.bind,
            )
        log.info("preview: %s", self.url)
        return self

    def _serve(self) -> None:
        try:
            self._server.serve_forever()
        except Exception as exc:  # noqa: BLE001 - the run goes on without a preview
            self.problem("server", exc)

    def counts(self) -> dict[str, int]:
        """Connections so far: ``served``, ``rejected`` (over the cap), ``timeouts``
        (idle or slow clients dropped), ``errors`` (accept and client errors), and
        ``clients`` (being served now)."""
        with self._count_lock:
            return {**self._counts, "clients": self._active}

    def count(self, name: str, step: int = 1) -> None:
        """Adds ``step`` to the counter ``name`` (``"clients"`` is the active ones)."""
        with self._count_lock:
            if name == "clients":
                self._active += step
            else:
                self._counts[name] += step

    def problem(self, where: str, exc: BaseException | None) -> None:
        """Counts an error; logs the first of each kind as a warning, the rest at debug."""
        self.count("errors")
        kind = f"{where}:{type(exc).__name__}:{getattr(exc, 'errno', None)}"
        with self._count_lock:
            first = kind not in self._logged
            self._logged.add(kind)
        level = logging.WARNING if first else logging.DEBUG
        log.log(level, "preview %s error (counted; the run goes on): %s", where, exc)

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


class _PreviewServer(ThreadingHTTPServer):
    """A threading HTTP server with a cap on clients, socket timeouts, and errors that
    are counted by the preview instead of printed or raised."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address, handler, preview: MjpegPreview) -> None:
        self.preview = preview
        self._slots = threading.BoundedSemaphore(preview.max_clients)
        super().__init__(address, handler)

    def get_request(self):
        try:
            return super().get_request()
        except OSError as exc:
            # EMFILE/ENFILE/ENOBUFS: the connection stays queued and the socket readable;
            # pause so the serving thread does not spin, and try again.
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED):
                self.preview.problem("accept", exc)
                time.sleep(ACCEPT_BACKOFF_S)
            raise

    def verify_request(self, request, client_address) -> bool:
        if self._slots.acquire(blocking=False):
            return True
        self.preview.count("rejected")
        _refuse(request)
        return False  # the server then closes it

    def process_request(self, request, client_address) -> None:
        request.settimeout(self.preview.socket_timeout)
        self.preview.count("clients")
        try:
            super().process_request(request, client_address)  # starts the client's thread
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        self.preview.count("clients", -1)
        self._slots.release()

    def handle_error(self, request, client_address) -> None:
        self.preview.problem("client", sys.exc_info()[1])


def _refuse(request) -> None:
    """Answers 503 without waiting: a fresh socket's send buffer has room for it."""
    try:
        request.setblocking(False)
        request.send(BUSY_RESPONSE)
        request.recv(65536)  # unread request bytes would turn the close into a reset
    except OSError:
        pass


def _handler_for(preview: MjpegPreview) -> type[BaseHTTPRequestHandler]:
    class Handler(getattr(preview, "handler_class", _PreviewHandler)):
        pass

    Handler.preview = preview
    Handler.timeout = preview.socket_timeout
    return Handler


class _PreviewHandler(BaseHTTPRequestHandler):
    preview: MjpegPreview
    server_version = "fuselite-preview"

    def setup(self) -> None:
        super().setup()
        # The socket timeout bounds each wait; this bounds the whole request, so a client
        # dribbling a byte at a time (slowloris) cannot hold a slot forever either.
        self._expired = False
        self._deadline = threading.Timer(self.timeout, self._request_too_slow)
        self._deadline.daemon = True
        self._deadline.start()

    def _request_too_slow(self) -> None:
        self._expired = True
        self.preview.count("timeouts")
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()

    def do_GET(self) -> None:
        self._deadline.cancel()
        if self._expired:
            return  # what arrived before the deadline is not a whole request
        self.preview.count("served")
        try:
            self._route(self.path.split("?", 1)[0])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the viewer closed the tab
        except TimeoutError:
            self.preview.count("timeouts")  # a viewer that stopped reading
            log.debug("preview: dropped %s, which read nothing for %.0f s",
                      self.client_address[0], self.timeout)

    def _route(self, route: str) -> None:
        if route in ("/", "/index.html"):
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", PAGE.encode())
        elif route == "/stream.mjpg":
            self._stream()
        elif route == "/snapshot.jpg":
            self._snapshot(self.preview)
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

    def _snapshot(self, preview: MjpegPreview) -> None:
        frame = preview.wait_jpeg(-1, timeout=5.0)
        if frame is None:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"no frame yet\n")
        else:
            self._send(HTTPStatus.OK, "image/jpeg", frame[1])

    def _stream(self, preview: MjpegPreview | None = None) -> None:
        preview = preview or self.preview
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        version = -1
        while not preview.closed:
            frame = preview.wait_jpeg(version, timeout=1.0)
            if frame is None:
                continue
            version, jpeg = frame
            head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
            head += f"Content-Length: {len(jpeg)}\r\n\r\n"
            self.wfile.write(head.encode() + jpeg + b"\r\n")
            self.wfile.flush()
            time.sleep(1.0 / MAX_PREVIEW_FPS)

    def log_error(self, format: str, *args) -> None:
        if args and isinstance(args[0], TimeoutError):
            self.preview.count("timeouts")  # a client that never sent its request
        self.log_message(format, *args)

    def log_message(self, format: str, *args) -> None:
        log.debug("preview %s: " + format, self.client_address[0], *args)


CAMERAS_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>fuselite cameras</title>
<style>body{margin:0;background:#111;color:#ddd;font:14px sans-serif}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:8px;padding:8px}
figure{margin:0}img{width:100%;background:#000}figcaption{padding:2px 0}a{color:#8cf}
p{margin:4px 8px}</style></head>
<body><p>fuselite &middot; every camera &middot; <a href="/stats.json">stats</a></p>
<main>@{figures}</main>
<script>
// Snapshots one after another: a browser opens at most 6 connections to a host, fewer
// than the MJPEG streams of a board's cameras.
const names = @{names};
async function refresh() {
  for (const name of names) {
    const img = document.getElementById("img-" + name);
    await new Promise(done => { img.onload = img.onerror = done;
      img.src = "/camera/" + name + "/snapshot.jpg?" + Date.now(); });
  }
  setTimeout(refresh, 200);
}
async function stats() {
  try {
    const all = await (await fetch("/stats.json")).json();
    for (const name of names) {
      const s = all[name] || {}, p50 = s.latency_p50_ms;
      document.getElementById("stats-" + name).textContent = s.type ? `${name}: ` +
        `${s.inference_fps} fps | dropped ${s.dropped} | reconnects ${s.reconnects} | ` +
        `latency p50 ${p50 == null ? "-" : p50.toFixed(1) + " ms"}` : `${name}: no stats yet`;
    }
  } catch (e) {}
  setTimeout(stats, 2000);
}
refresh(); stats();
</script></body></html>
"""
CAMERA_FIGURE = (
    '<figure><a href="/camera/@{name}/stream.mjpg"><img id="img-@{name}" alt="@{name}"></a>'
    '<figcaption id="stats-@{name}">@{name}</figcaption></figure>'
)


class CameraPreviews(MjpegPreview):
    """One preview server for several cameras: a page showing them all, and each camera's
    ``/camera/<name>/stream.mjpg``, ``/camera/<name>/snapshot.jpg``; ``/stats.json``
    maps each camera's name to its latest stats record.

    Each camera's outputs publish to :meth:`channel` (a preview without a server of its
    own), so the limits on clients and sockets are those of this one server.

    Example:
        >>> previews = CameraPreviews(["door", "yard"], "127.0.0.1", 8080).start()
        >>> previews.channel("door").publish(annotated_frame)
    """

    def __init__(self, names, bind: str = "127.0.0.1", port: int = 0,
                 max_clients: int = DEFAULT_MAX_CLIENTS,
                 socket_timeout: float = SOCKET_TIMEOUT_S) -> None:
        super().__init__(bind, port, max_clients, socket_timeout)
        self.channels = {name: MjpegPreview(bind, port, max_clients, socket_timeout)
                         for name in names}

    def channel(self, name: str) -> MjpegPreview:
        """Where camera ``name`` publishes its frames and stats."""
        return self.channels[name]

    def page(self) -> bytes:
        """The page showing every camera."""
        figures = "".join(CAMERA_FIGURE.replace("@{name}", name) for name in self.channels)
        page = CAMERAS_PAGE.replace("@{figures}", figures)
        return page.replace("@{names}", json.dumps(list(self.channels))).encode()

    def stats_json(self) -> bytes:
        """Every camera's latest stats, by name."""
        return json.dumps({name: channel._stats for name, channel in self.channels.items()}).encode()

    def close(self) -> None:
        """Ends every camera's streams and stops serving."""
        for channel in self.channels.values():
            channel.close()
        super().close()


class _CamerasHandler(_PreviewHandler):
    preview: CameraPreviews

    def _route(self, route: str) -> None:
        parts = route.strip("/").split("/")
        if route in ("/", "/index.html"):
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", self.preview.page())
        elif route == "/stats.json":
            self._send(HTTPStatus.OK, "application/json", self.preview.stats_json())
        elif len(parts) == 3 and parts[0] == "camera" and parts[1] in self.preview.channels:
            channel = self.preview.channels[parts[1]]
            if parts[2] == "stream.mjpg":
                self._stream(channel)
            elif parts[2] == "snapshot.jpg":
                self._snapshot(channel)
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")


CameraPreviews.handler_class = _CamerasHandler
