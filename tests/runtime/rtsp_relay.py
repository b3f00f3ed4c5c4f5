"""A minimal RTSP server for tests: ffmpeg makes and paces the RTP, Python speaks RTSP.

Debian's ffmpeg (5.1) cannot serve RTSP itself: ``-rtsp_flags listen`` is an option of
the RTSP *demuxer* only, so ``ffmpeg ... -f rtsp -rtsp_flags listen rtsp://...``
tries to connect to a server and fails with "Connection refused".  Here ffmpeg
streams the clip as RTP to a loopback UDP port (``-re -stream_loop -1 -c copy -f
rtp``), and this relay answers OPTIONS/DESCRIBE/SETUP/PLAY and forwards the packets
to each client interleaved on its RTSP TCP connection (``RTP/AVP/TCP``).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

FFMPEG = shutil.which("ffmpeg")


class RtspRelay:
    """``rtsp://127.0.0.1:PORT/cam`` playing ``clip`` in a loop; :meth:`kill` drops it hard."""

    def __init__(self, clip: Path, port: int, workdir: Path) -> None:
        self.clip, self.port, self.workdir = Path(clip), port, Path(workdir)
        self.url = f"rtsp://127.0.0.1:{port}/cam"
        self._ffmpeg: subprocess.Popen | None = None
        self._sockets: list[socket.socket] = []
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        """Starts ffmpeg and the RTSP listener; returns once the SDP is known."""
        self._udp = self._track(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        self._udp.bind(("127.0.0.1", 0))
        sdp_file = self.workdir / f"stream-{self.port}.sdp"
        sdp_file.unlink(missing_ok=True)
        rtp_port = self._udp.getsockname()[1]
        self._ffmpeg = subprocess.Popen(
            [
                FFMPEG,
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-stream_loop",
                "-1",
                "-i",
                str(self.clip),
                "-an",
                "-c",
                "copy",
                "-f",
                "rtp",
                "-sdp_file",
                str(sdp_file),
                f"rtp://127.0.0.1:{rtp_port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.sdp = _wait_for_sdp(sdp_file)
        listener = self._track(socket.socket())
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._clients = []
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        threading.Thread(target=self._forward, args=(self._udp,), daemon=True).start()

    def kill(self) -> None:
        """Kills ffmpeg and drops every connection, like a camera losing power."""
        if self._ffmpeg is not None:
            self._ffmpeg.kill()
            self._ffmpeg.wait(10)
            self._ffmpeg = None
        with self._lock:
            sockets, self._sockets, self._clients = self._sockets, [], []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
        return sock

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _forward(self, udp: socket.socket) -> None:
        while True:
            try:
                packet = udp.recv(65536)
            except OSError:
                return
            frame = b"$\x00" + len(packet).to_bytes(2, "big") + packet
            with self._lock:
                clients = list(self._clients)
            for client in clients:
                try:
                    client.sendall(frame)
                except OSError:
                    pass

    def _serve(self, client: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                chunk = client.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                buffer = self._handle_requests(client, buffer)
        except OSError:
            return

    def _handle_requests(self, client: socket.socket, buffer: bytes) -> bytes:
        while buffer:
            if buffer[:1] == b"$":  # the client's interleaved RTCP: read and ignore
                if len(buffer) < 4 or len(buffer) < 4 + int.from_bytes(buffer[2:4], "big"):
                    return buffer
                buffer = buffer[4 + int.from_bytes(buffer[2:4], "big") :]
                continue
            if b"\r\n\r\n" not in buffer:
                return buffer
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            self._respond(client, head.decode(errors="replace"))
        return buffer

    def _respond(self, client: socket.socket, request: str) -> None:
        lines = request.split("\r\n")
        method = lines[0].split(" ")[0]
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }
        extra, body = [], b""
        if method == "OPTIONS":
            extra.append("Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER")
        elif method == "DESCRIBE":
            body = self._describe().encode()
            extra += [f"Content-Base: {self.url}/", "Content-Type: application/sdp"]
        elif method == "SETUP":
            if "tcp" not in headers.get("transport", "").lower():
                self._reply(client, headers, "461 Unsupported Transport")
                return
            extra += [
                "Transport: RTP/AVP/TCP;unicast;interleaved=0-1",
                f"Session: {random.randrange(10**8)}",
            ]
        elif method == "PLAY":
            with self._lock:
                self._clients.append(client)
        self._reply(client, headers, "200 OK", extra, body)

    def _reply(self, client, headers, status, extra=(), body=b"") -> None:
        lines = [f"RTSP/1.0 {status}", f"CSeq: {headers.get('cseq', '0')}", *extra]
        if "session" in headers and not any(e.startswith("Session") for e in extra):
            lines.append(f"Session: {headers['session'].split(';')[0]}")
        lines.append(f"Content-Length: {len(body)}")
        client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def _describe(self) -> str:
        lines = []
        for line in self.sdp.splitlines():
            if line.startswith("c="):
                line = "c=IN IP4 0.0.0.0"
            elif line.startswith("m="):
                parts = line.split(" ")
                line = " ".join([parts[0], "0", *parts[2:]])
            lines.append(line)
            if line.startswith("m="):
                lines.append("a=control:streamid=0")
        return "\r\n".join(lines) + "\r\n"


def _wait_for_sdp(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text()
            if "a=rtpmap" in text:
                return text
        time.sleep(0.05)
    raise RuntimeError("ffmpeg wrote no SDP")
