"""A minimal MQTT 3.1.1 connection that publishes many messages with one system call.

paho-mqtt writes every packet with its own ``send`` on its network thread, and wakes that
thread with one more ``send`` per ``publish()``: at 1,000 events/s that is ~2,000 system
calls and as many turns of the interpreter lock, taken from the annotating loop
(docs/mqtt.md, "What publishing costs").  :class:`BatchLink` is what the event stream
needs and nothing more: it connects (user name, password, TLS), sends a batch of PUBLISH
packets in one ``sendall``, reads the broker's PUBACKs in one ``recv``, pings when idle
and says when the connection is gone.  One thread owns a link; it is not thread-safe.

The packet layout follows the MQTT 3.1.1 standard (OASIS, 2014), sections 2.2 (fixed
header and remaining length), 3.1-3.4 (CONNECT, CONNACK, PUBLISH, PUBACK), 3.8-3.9
(SUBSCRIBE, SUBACK) and 3.12-3.14 (PINGREQ, PINGRESP, DISCONNECT).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

# Packet types (the fixed header's high nibble).
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
PINGREQ_PACKET, DISCONNECT_PACKET = b"\xc0\x00", b"\xe0\x00"
MAX_PACKET_ID = 65_535
SEND_TIMEOUT_S = 10.0
CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class Message(NamedTuple):
    """One message to publish; ``owner`` is what :meth:`BatchLink.poll` gives back when
    the broker acknowledges it (QoS 1)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    owner: Any = None


class LinkError(ConnectionError):
    """The connection failed or is gone; the message says why, in a few words."""


def remaining_length(size: int) -> bytes:
    """The variable-length encoding of a packet's remaining length (7 bits a byte)."""
    out = bytearray()
    while True:
        size, digit = size >> 7, size & 0x7F
        out.append(digit | 0x80 if size else digit)
        if not size:
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(data)) + data


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + remaining_length(len(body)) + body


def connect_packet(
    client_id: str,
    keepalive: int,
    username: str | None = None,
    password: str | None = None,
    clean_session: bool = True,
) -> bytes:
    """A CONNECT packet (protocol level 4, MQTT 3.1.1; no will)."""
    flags = 0x02 if clean_session else 0
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    header = _string("MQTT") + struct.pack("!BBH", 4, flags, keepalive)
    return _packet(CONNECT << 4, header + payload)


def publish_packet(
    topic: str, payload: bytes, qos: int = 0, packet_id: int = 0, retain: bool = False
) -> bytes:
    """A PUBLISH packet; ``packet_id`` only with QoS 1."""
    body = _string(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    return _packet(PUBLISH << 4 | qos << 1 | retain, body + payload)


def puback_packet(packet_id: int) -> bytes:
    """The PUBACK a QoS-1 receiver sends."""
    return struct.pack("!BBH", PUBACK << 4, 2, packet_id)


def subscribe_packet(packet_id: int, topic_filter: str, qos: int) -> bytes:
    """A SUBSCRIBE packet for one topic filter."""
    body = struct.pack("!H", packet_id) + _string(topic_filter) + bytes((qos,))
    return _packet(SUBSCRIBE << 4 | 0x02, body)


def split_packets(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Takes the whole packets off the front of ``buffer``: ``[(first byte, body), ...]``;
    an incomplete packet stays in it."""
    packets, start = [], 0
    while (header := _read_length(buffer, start + 1)) is not None:
        size, body_at = header
        if len(buffer) - body_at < size:
            break
        packets.append((buffer[start], bytes(buffer[body_at : body_at + size])))
        start = body_at + size
    del buffer[:start]
    return packets


def _read_length(buffer: bytearray, index: int) -> tuple[int, int] | None:
    """``(remaining length, where the body starts)`` of the packet whose length begins at
    ``index``, or None while its bytes have not all arrived (the inverse of
    :func:`remaining_length`)."""
    size = 0
    for shift in (0, 7, 14, 21):
        if index >= len(buffer):
            return None
        digit = buffer[index]
        size |= (digit & 0x7F) << shift
        index += 1
        if not digit & 0x80:
            return size, index
    raise LinkError("the broker sent a malformed packet")


def publish_parts(first_byte: int, body: bytes) -> tuple[str, int, bytes]:
    """``(topic, packet id or 0, payload)`` of a received PUBLISH packet."""
    (topic_size,) = struct.unpack_from("!H", body)
    topic = body[2 : 2 + topic_size].decode()
    at = 2 + topic_size
    packet_id = 0
    if first_byte & 0x06:
        (packet_id,) = struct.unpack_from("!H", body, at)
        at += 2
    return topic, packet_id, body[at:]


class BatchLink:
    """One MQTT connection owned by one thread: batches of PUBLISH out, PUBACKs in.

    Example:
        >>> link = BatchLink("127.0.0.1", 1883, "board-events").open()
        >>> link.publish([Message("fuselite/porch/events", b'{"frame":1}', 1, owner="owner")])
        >>> link.poll(wait=1.0)  # the owners the broker acknowledged (link.connected: still up?)
        ['owner']
        >>> link.close()
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        keepalive: int = 30,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.keepalive = keepalive
        self.username, self.password, self.tls = username, password, tls
        self.sock: socket.socket | None = None
        self.unacked: dict[int, Any] = {}  # packet id -> owner, in the order sent
        self.error = ""  # why the connection was lost, when it was
        self._buffer = bytearray()
        self._next_id = 0
        self._last_sent = self._ping_sent = 0.0

    @property
    def connected(self) -> bool:
        """Whether the connection is open (as far as the last send and read know)."""
        return self.sock is not None

    def open(self, timeout: float = 5.0, clean_session: bool = True) -> BatchLink:
        """Connects and waits for the broker's CONNACK; raises :class:`LinkError`."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:
            raise LinkError(f"cannot reach {self.host}:{self.port} ({_why(exc)})") from None
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            sock.sendall(
                connect_packet(
                    self.client_id, self.keepalive, self.username, self.password, clean_session
                )
            )
            self.sock, self._buffer = sock, bytearray()
            self._check_connack(self._read_one(CONNACK, timeout))
        except (OSError, LinkError) as exc:
            sock.close()
            self.sock = None
            raise LinkError(f"connecting to {self.host}:{self.port}: {_why(exc)}") from None
        sock.settimeout(SEND_TIMEOUT_S)  # a broker that stops reading fails the send
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._last_sent = time.monotonic()
        return self

    def _check_connack(self, body: bytes) -> None:
        code = body[1] if len(body) >= 2 else 255
        if code:
            raise LinkError(f"the broker refused the connection: {CONNACK_REASONS.get(code, code)}")

    def _read_one(self, kind: int, timeout: float) -> bytes:
        """Reads until a packet of ``kind`` comes (others before it are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            for first, body in split_packets(self._buffer):
                if first >> 4 == kind:
                    return body
            left = deadline - time.monotonic()
            if left <= 0:
                raise LinkError("no answer from the broker")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise LinkError("the broker closed the connection")
            self._buffer += data

    def publish(self, messages: Iterable[Message]) -> None:
        """Sends the messages in one write.  The owner of each QoS-1 message waits in
        :attr:`unacked` until :meth:`poll` returns it; raises :class:`LinkError` (the link
        is then closed; :meth:`drop` gives the unacknowledged owners back)."""
        packets = []
        for topic, payload, qos, retain, owner in messages:
            packet_id = 0
            if qos:
                packet_id = self._take_id()
                self.unacked[packet_id] = owner
            packets.append(publish_packet(topic, payload, qos, packet_id, retain))
        self._send(b"".join(packets))

    def _take_id(self) -> int:
        while True:
            self._next_id = self._next_id % MAX_PACKET_ID + 1
            if self._next_id not in self.unacked:
                return self._next_id

    def _send(self, data: bytes) -> None:
        if self.sock is None:
            raise LinkError("not connected")
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise self._lost(f"lost the connection ({_why(exc)})") from None
        self._last_sent = time.monotonic()

    def poll(self, wait: float = 0.0) -> list[Any]:
        """Reads what the broker sent (waiting up to ``wait`` seconds for it) and returns
        the owners of the messages it acknowledged; pings the broker when the connection
        has been quiet for half the keep-alive.  A connection found gone (also a ping
        unanswered for a keep-alive) is closed and :attr:`error` says why: the
        acknowledgements read before that still count."""
        acked: list[Any] = []
        with contextlib.suppress(LinkError):  # the link is closed and self.error says why
            self._keep_alive()
            while self._readable(wait):
                wait = 0.0
                self._take_packets(acked)
        return acked

    def _take_packets(self, acked: list[Any]) -> None:
        try:
            packets = split_packets(self._buffer)
        except LinkError as exc:  # a malformed stream: nothing after it can be trusted
            raise self._lost(str(exc)) from None
        for first, body in packets:
            if first >> 4 == PUBACK and len(body) >= 2:
                owner = self.unacked.pop(struct.unpack_from("!H", body)[0], None)
                if owner is not None:
                    acked.append(owner)
            elif first >> 4 == PINGRESP:
                self._ping_sent = 0.0

    def _readable(self, wait: float) -> bool:
        """Reads into the buffer whatever is waiting; False when nothing was."""
        if self.sock is None:
            raise LinkError("not connected")
        try:
            ready, _, _ = select.select([self.sock], [], [], wait)
            if not ready and not self._pending_tls():
                return False
            data = self.sock.recv(65536)
        except ssl.SSLWantReadError:
            return False
        except OSError as exc:
            raise self._lost(f"lost the connection ({_why(exc)})") from None
        if not data:
            raise self._lost("the broker closed the connection")
        self._buffer += data
        return True

    def _pending_tls(self) -> bool:
        return isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0

    def due(self) -> bool:
        """Whether the connection has been quiet for half the keep-alive: :meth:`poll` it
        now (it pings), or the broker closes it after one and a half keep-alives."""
        return self.sock is not None and time.monotonic() - self._last_sent > self.keepalive / 2

    def _keep_alive(self) -> None:
        if self._ping_sent and time.monotonic() - self._ping_sent > self.keepalive:
            raise self._lost(f"the broker did not answer a ping for {self.keepalive} s")
        if not self._ping_sent and self.due():
            self._send(PINGREQ_PACKET)
            self._ping_sent = time.monotonic()

    def drop(self) -> list[Any]:
        """The owners still unacknowledged, in the order sent, forgotten by the link
        (after a lost connection they go back to the caller's queue)."""
        owners = list(self.unacked.values())
        self.unacked.clear()
        return owners

    def close(self) -> None:
        """Says DISCONNECT (the broker then forgets the connection cleanly) and closes."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.sendall(DISCONNECT_PACKET)
            self._lost("closed")

    def _lost(self, why: str) -> LinkError:
        """Closes the socket, records ``why`` in :attr:`error`; returns the error to raise."""
        sock, self.sock = self.sock, None
        self._ping_sent = 0.0
        self.error = why
        if sock is not None:
            sock.close()
        return LinkError(why)


def _why(exc: BaseException) -> str:
    if isinstance(exc, LinkError):
        return str(exc)
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
