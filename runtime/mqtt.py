"""Annotation events to an MQTT broker, and Home Assistant discovery of every camera x label.

One :class:`MqttPublisher` serves every camera of a process (it is thread-safe).  It
publishes, under the topic prefix (``fuselite`` by default):

* ``<prefix>/<camera>/events``: each annotation event, the JSONL record plus ``camera``
  (with ``events="changes"``, only the frames where a label came or went, plus
  ``changed``); QoS 1 by default, or 0 with ``events_qos=0``;
* ``<prefix>/<camera>/<label>/state``: ``ON``/``OFF``, retained, following the labels the
  runtime reports (after its smoothing and hysteresis), published on change and again
  after every (re)connection;
* ``<prefix>/status/<client id>``: ``online``/``offline``, retained; ``offline`` is also the
  connection's last will, so a board that loses power shows as unavailable;
* with discovery on, ``<discovery prefix>/binary_sensor/<client id>/<camera>_<label>/config``
  (retained): Home Assistant then shows every camera x label as a ``binary_sensor``.

The broker going away never blocks the caller: :meth:`MqttPublisher.publish_event` only
appends to a bounded queue that a thread of the publisher drains while the broker is
connected.  When the queue is full the oldest events are dropped and counted.  States and
discovery configs are not queued: the publisher keeps the latest state of each label and
sends it when it can, so a stale ``ON`` never overwrites a newer ``OFF``.

What publishing costs the annotating loop is the interpreter lock the publishing threads
take at every wake-up and system call.  paho-mqtt spends about three of those on every
message, so events and label states go over a second connection of the publisher's own
(:class:`~fuselite.runtime.mqtt_wire.BatchLink`, client id + ``-events``): the sender
writes a batch in one ``sendall``, reads the broker's acknowledgements in one ``recv``
and, unless a backlog waits, pauses :data:`SEND_LINGER_S` after each batch (up to 50 ms
more latency, 20 wake-ups a second).  paho keeps what is rare: the discovery configs, the
availability topic with its last will, and Home Assistant's birth message.  Measured
(docs/mqtt.md): the publisher's CPU per event halved, and a ``fuselite run`` beside
1,000 events/s went from 0.73x to 0.99x of its FPS.

paho-mqtt is imported only when a publisher is made: a board without it gets one line
saying to install ``fuselite[mqtt]``.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fuselite import __version__
from fuselite.runtime.mqtt_wire import BatchLink, LinkError, Message

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
DEFAULT_QUEUE_SIZE = 10_000  # events waiting for the broker (about 400 bytes each)
PASSWORD_ENV = "FUSELITE_MQTT_PASSWORD"
PAYLOAD_ON, PAYLOAD_OFF = "ON", "OFF"
ONLINE, OFFLINE = "online", "offline"
# Messages written and not yet acknowledged by the broker, on each connection: the link
# gives its events back to the queue when lost, paho keeps its configs and sends them again.
MAX_UNACKED = 200
SEND_BATCH = 100  # configs handed to paho at a time; a queue this long skips the pause
# Pause after a batch, so events gather: 20 wake-ups a second instead of 100 took the
# ratio of a 1,500-frames/s loop publishing 1,000 events/s from 0.731-0.848x to 0.879-0.904x
# (docs/mqtt.md).  A backlog (a full batch waiting, e.g. after an outage) goes out
# without the pause.
SEND_LINGER_S = 0.05
ACK_GATHER_S = 0.01
KEEPALIVE_S = 30
# The events go over a second connection (mqtt_wire.BatchLink) under this client id + suffix.
EVENTS_CLIENT_SUFFIX = "-events"
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 10  # a restarted broker is found within 10 s
CLOSE_FLUSH_S = 2.0  # at the end of a run, how long queued events may take to go out (within
# the 3 s a signalled run has to finish, see watchdog.STOP_GRACE_S)
_TOPIC_WORD = re.compile(r"^[^#+/\x00]+$")
EVENT_MODES = ("all", "changes")


class MqttError(ValueError):
    """MQTT cannot be used as configured (a bad setting, or paho-mqtt is missing)."""


@dataclass(frozen=True)
class MqttSettings:
    """Where and how events are published.

    Attributes:
        url: The broker, ``mqtt://host[:port]`` (1883) or ``mqtts://host[:port]`` (TLS, 8883).
            Credentials do not belong in it (a command line is visible to every user).
        username: User name for the broker, or ``None``.
        password: Password for the broker, or ``None`` (read it from a file or the
            ``FUSELITE_MQTT_PASSWORD`` environment variable; see
            :func:`mqtt_settings_from_args`).
        tls_ca: CA certificate file that signs the broker's certificate (``mqtts``); ``None``
            uses the system's trusted CAs.
        tls_cert: Client certificate file, for brokers that ask for one.
        tls_key: The client certificate's key file.
        tls_insecure: Do not check the broker's host name against its certificate.
        client_id: MQTT client id, also the node id of the discovery topics and the last
            part of the availability topic; default ``fuselite-<host name>``.
        topic_prefix: First level of every topic fuselite publishes.
        discovery: Publish Home Assistant discovery configs.
        discovery_prefix: Home Assistant's discovery prefix.
        queue_size: Events kept while the broker is away; beyond it the oldest are dropped.
        events: ``"all"``: an event for every annotated frame; ``"changes"``: only for the
            frames where a reported label came or went (as Frigate publishes), each with
            ``changed = {"on": [...], "off": [...]}``.  Label states follow every frame
            either way.
        events_qos: MQTT QoS of the events, 1 (at least once: what the broker has not
            acknowledged is sent again after a reconnection) or 0 (no acknowledgement:
            cheaper; an event written to a connection that then dies is lost).  States,
            availability and discovery always use QoS 1.
    """

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False
    client_id: str = field(default_factory=lambda: default_client_id())
    topic_prefix: str = "fuselite"
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    queue_size: int = DEFAULT_QUEUE_SIZE
    events: str = "all"
    events_qos: int = 1

    def __post_init__(self) -> None:
        self._check_url()
        for name in ("topic_prefix", "discovery_prefix"):
            value = getattr(self, name)
            if not isinstance(value, str) or not all(map(_TOPIC_WORD.match, value.split("/"))):
                raise MqttError(
                    f"mqtt {name} {value!r} must be topic levels without '+', '#' or empty levels"
                )
        if not isinstance(self.client_id, str) or not slugify(self.client_id, ""):
            raise MqttError(f"mqtt client_id {self.client_id!r} needs a letter or digit")
        if (
            isinstance(self.queue_size, bool)
            or not isinstance(self.queue_size, int)
            or self.queue_size < 1
        ):
            raise MqttError(
                f"mqtt queue_size must be a whole number of at least 1, not {self.queue_size!r}"
            )
        if self.events not in EVENT_MODES:
            raise MqttError(f"mqtt events must be 'all' or 'changes', not {self.events!r}")
        if isinstance(self.events_qos, bool) or self.events_qos not in (0, 1):
            raise MqttError(f"mqtt events_qos must be 0 or 1, not {self.events_qos!r}")
        for name in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise MqttError(f"mqtt {name}: no such file {path}")
        if self.tls_key is not None and self.tls_cert is None:
            raise MqttError("mqtt tls_key needs tls_cert (the client certificate)")

    def _check_url(self) -> None:
        parts = urlsplit(str(self.url))
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise MqttError(
                f"mqtt url {self.url!r} must look like mqtt://host:1883 or mqtts://host:8883"
            )
        if parts.username is not None or parts.password is not None:
            raise MqttError(
                "put no user or password in the mqtt url (others can read it): use "
                f"--mqtt-user and --mqtt-password-file or {PASSWORD_ENV} (config: username, "
                "password_file)"
            )
        try:
            parts.port  # noqa: B018 - raises ValueError when out of range or not a number
        except ValueError:
            raise MqttError(f"mqtt url {self.url!r} has a bad port") from None
        if parts.path not in ("", "/") or parts.query:
            raise MqttError(f"mqtt url {self.url!r} must have no path: mqtt://host:port")

    @property
    def host(self) -> str:
        """The broker's host name or address."""
        return urlsplit(self.url).hostname

    @property
    def port(self) -> int:
        """The broker's port (1883 for ``mqtt``, 8883 for ``mqtts`` unless the URL says)."""
        parts = urlsplit(self.url)
        return parts.port or DEFAULT_PORTS[parts.scheme]

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS (``mqtts://``)."""
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def node_id(self) -> str:
        """The client id made safe for topic levels and discovery ids."""
        return slugify(self.client_id, "fuselite")

    @property
    def availability_topic(self) -> str:
        """Where ``online``/``offline`` (and the last will) go."""
        return f"{self.topic_prefix}/status/{self.node_id}"

    def describe(self) -> str:
        """The broker as a user would name it, e.g. ``mqtt://127.0.0.1:1883``."""
        return f"{urlsplit(self.url).scheme}://{self.host}:{self.port}"


def default_client_id() -> str:
    """``fuselite-<host name>``: unique per board, stable across restarts."""
    return f"fuselite-{socket.gethostname() or 'board'}"


def slugify(text: str, fallback: str = "label") -> str:
    """``text`` as an id Home Assistant accepts (``[a-z0-9_]``) and as one topic level.

    Runs of other characters become one ``_``; letters with accents lose them only as far
    as ASCII allows (others are dropped).  Empty results become ``fallback``.

    Example:
        >>> slugify("Red car / left!")
        'red_car_left'
    """
    ascii_text = str(text).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_text).strip("_")
    return slug or fallback


def unique_slugs(labels: list[str]) -> dict[str, str]:
    """``{label: slug}`` with every slug distinct: labels that slugify alike, or to
    nothing (e.g. in another script), get a short hash of their text appended."""
    plain = {label: slugify(label) for label in labels}
    counts = collections.Counter(plain.values())
    out = {}
    for label, slug in plain.items():
        if counts[slug] > 1 or slug == "label":
            slug = f"{slug}_{hashlib.sha1(label.encode()).hexdigest()[:6]}"
        out[label] = slug
    return out


# -- settings from a config table or the command line ---------------------------------------

_TABLE_KEYS = {
    "url": str,
    "username": str,
    "password": str,
    "password_file": str,
    "tls_ca": str,
    "tls_cert": str,
    "tls_key": str,
    "tls_insecure": bool,
    "client_id": str,
    "topic_prefix": str,
    "discovery": bool,
    "discovery_prefix": str,
    "queue_size": int,
    "events": str,
    "events_qos": int,
}


def mqtt_settings_from_table(table: dict, where: str = "[mqtt]") -> MqttSettings:
    """Settings from a TOML ``[mqtt]`` table (as :mod:`tomllib` reads it).

    Keys: ``url`` (required), ``username``, ``password`` or ``password_file``, ``tls_ca``,
    ``tls_cert``, ``tls_key``, ``tls_insecure``, ``client_id``, ``topic_prefix``,
    ``discovery``, ``discovery_prefix``, ``queue_size``, ``events``, ``events_qos``.

    Raises:
        MqttError: one line naming the key (and ``where``) that is wrong.
    """
    if not isinstance(table, dict):
        raise MqttError(f"{where} must be a table of settings, not {type(table).__name__}")
    for key, value in table.items():
        expected = _TABLE_KEYS.get(key)
        if expected is None:
            raise MqttError(f"{where}: unknown key {key!r}; known keys: {', '.join(_TABLE_KEYS)}")
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise MqttError(f"{where}: {key} must be a {expected.__name__}, not {value!r}")
    if "url" not in table:
        raise MqttError(f'{where}: url is missing, e.g. url = "mqtt://192.168.1.10:1883"')
    values = dict(table)
    if "password_file" in values:
        if "password" in values:
            raise MqttError(f"{where}: give password or password_file, not both")
        values["password"] = read_password_file(values.pop("password_file"))
    try:
        return MqttSettings(**values)
    except MqttError as exc:
        raise MqttError(f"{where}: {exc}") from None


def read_password_file(path: str | Path) -> str:
    """The first line of a password file (a trailing newline is not part of the password)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise MqttError(f"cannot read the mqtt password file {path}: {exc.strerror}") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise MqttError(f"the mqtt password file {path} is empty")
    return password


def mqtt_settings_from_args(
    args: Any, environ: dict[str, str] | None = None
) -> MqttSettings | None:
    """Settings from ``fuselite run``'s ``--mqtt*`` flags, or ``None`` without ``--mqtt``.

    The password never comes from the command line (``ps`` shows it to every user): it
    is read from ``--mqtt-password-file`` or the ``FUSELITE_MQTT_PASSWORD`` variable.
    """
    if getattr(args, "mqtt", None) is None:
        return None
    environ = os.environ if environ is None else environ
    password = None
    if args.mqtt_password_file is not None:
        password = read_password_file(args.mqtt_password_file)
    elif environ.get(PASSWORD_ENV):
        password = environ[PASSWORD_ENV]
    values = {
        "url": args.mqtt,
        "username": args.mqtt_user,
        "password": password,
        "tls_ca": args.mqtt_tls_ca,
        "tls_cert": args.mqtt_tls_cert,
        "tls_key": args.mqtt_tls_key,
        "tls_insecure": args.mqtt_tls_insecure,
        "topic_prefix": args.mqtt_topic_prefix,
        "discovery": not args.no_ha_discovery,
        "discovery_prefix": args.ha_discovery_prefix,
        "queue_size": args.mqtt_queue,
        "events": getattr(args, "mqtt_events", "all"),
        "events_qos": getattr(args, "mqtt_events_qos", 1),
    }
    if args.mqtt_client_id is not None:
        values["client_id"] = args.mqtt_client_id
    known = {f.name for f in fields(MqttSettings)}
    return MqttSettings(**{k: v for k, v in values.items() if k in known})


def import_paho():
    """The ``paho.mqtt.client`` module, or an :class:`MqttError` saying how to install it."""
    try:
        import paho.mqtt.client as paho
    except ImportError:
        raise MqttError(
            "MQTT needs paho-mqtt 2: pip install 'fuselite[mqtt]' "
            "(or pip install 'paho-mqtt>=2,<3')"
        ) from None
    if not hasattr(paho, "CallbackAPIVersion"):
        raise MqttError("MQTT needs paho-mqtt 2 (1.x is installed): pip install 'paho-mqtt>=2,<3'")
    return paho


# -- the publisher ---------------------------------------------------------------------------


@dataclass
class _Camera:
    """What the publisher knows of one camera: its topic level, labels and their states."""

    name: str
    slug: str
    labels: dict[str, str] = field(default_factory=dict)  # label -> slug
    states: dict[str, bool] = field(default_factory=dict)  # label -> on
    bundle: str | None = None


class MqttPublisher:
    """One connection to the broker, shared by every camera of the process.

    Example:
        >>> publisher = MqttPublisher(MqttSettings("mqtt://127.0.0.1:1883")).start()
        >>> publisher.set_labels("porch", ["person", "cat"])
        >>> publisher.publish_event("porch", {"type": "annotation", "labels": []})
        >>> publisher.close()
    """

    def __init__(self, settings: MqttSettings) -> None:
        self.settings = s = settings
        self._paho = import_paho()
        self._lock = threading.Condition()
        self._queue: collections.deque[tuple[str, str, bytes]] = (
            collections.deque()
        )  # camera, topic, payload
        self._queued = collections.Counter()  # camera -> its events in the queue
        # Events of the batch the sender is writing (neither queued nor unacknowledged).
        self._in_hand: collections.Counter = collections.Counter()
        self._in_flight = collections.Counter()  # camera -> its events awaiting a PUBACK
        self._cameras: dict[str, _Camera] = {}
        self._dirty_states: set[tuple[str, str]] = set()
        self._dirty_configs: set[tuple[str, str]] = set()
        self._unacked: dict[int, str] = {}  # paho's mid -> "config" (discovery)
        self._early_acks: set[int] = set()
        self._counts = collections.Counter()  # published, dropped, dropped_outage, reconnects
        self._camera_counts: dict[str, collections.Counter] = {}  # camera -> published, dropped
        self._connected = False
        self._ever_connected = False
        self._lost_at: float | None = None
        self._closing = False
        self._connect_failures = 0
        self._client = self._make_client()
        self._link = BatchLink(
            s.host,
            s.port,
            f"{s.client_id}{EVENTS_CLIENT_SUFFIX}",
            keepalive=KEEPALIVE_S,
            username=s.username,
            password=s.password,
            tls=tls_context(s) if s.tls else None,
        )
        self._link_retry_at = self._link_opened_at = 0.0
        self._link_failures = 0
        self._thread = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)

    def _make_client(self):
        paho, s = self._paho, self.settings
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=s.client_id)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            try:
                client.tls_set(ca_certs=s.tls_ca, certfile=s.tls_cert, keyfile=s.tls_key)
            except (OSError, ValueError) as exc:
                raise MqttError(f"mqtt TLS files cannot be used: {exc}") from None
            client.tls_insecure_set(s.tls_insecure)
        client.will_set(s.availability_topic, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_inflight_messages_set(MAX_UNACKED)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def start(self) -> MqttPublisher:
        """Starts connecting (in the background: an unreachable broker is tried again and
        again, the run goes on) and the sender thread; returns ``self``."""
        s = self.settings
        try:
            self._client.connect_async(s.host, s.port, keepalive=KEEPALIVE_S)
        except ValueError as exc:
            raise MqttError(f"mqtt url {s.url!r}: {exc}") from None
        self._client.loop_start()
        self._thread.start()
        log.info(
            "MQTT: publishing to %s under %s/<camera>/ (Home Assistant discovery %s)",
            s.describe(),
            s.topic_prefix,
            "on" if s.discovery else "off",
        )
        return self

    # -- what cameras call ------------------------------------------------------------------

    def set_labels(
        self, camera: str, labels: list[str] | tuple[str, ...], bundle: str | None = None
    ) -> None:
        """Declares a camera's labels: each gets a retained ``OFF`` state and, with discovery
        on, a ``binary_sensor`` config.  Call again when the labels change."""
        with self._lock:
            entry = self._camera(camera)
            entry.labels = unique_slugs(list(dict.fromkeys(labels)))
            entry.states = {label: entry.states.get(label, False) for label in entry.labels}
            entry.bundle = bundle or entry.bundle
            keys = {(camera, label) for label in entry.labels}
            self._dirty_states |= keys
            if self.settings.discovery:
                self._dirty_configs |= keys
            self._lock.notify_all()

    def update_states(
        self, camera: str, present: list[str] | tuple[str, ...] | set[str]
    ) -> dict[str, list[str]]:
        """Sets the camera's labels in ``present`` ON and the others OFF; only the labels
        that changed are published.  Returns them: ``{"on": [...], "off": [...]}``."""
        present = set(present)
        changed: dict[str, list[str]] = {"on": [], "off": []}
        with self._lock:
            entry = self._camera(camera)
            for label in entry.labels:
                on = label in present
                if entry.states.get(label) != on:
                    entry.states[label] = on
                    self._dirty_states.add((camera, label))
                    changed["on" if on else "off"].append(label)
            if changed["on"] or changed["off"]:
                self._lock.notify_all()
        return changed

    def publish_event(self, camera: str, record: dict[str, Any]) -> None:
        """Queues one event for ``<prefix>/<camera>/events`` (never blocks; when the queue
        is full the oldest event is dropped and counted)."""
        payload = _json_bytes({**record, "camera": camera})
        with self._lock:
            topic = f"{self.settings.topic_prefix}/{self._camera(camera).slug}/events"
            if len(self._queue) >= self.settings.queue_size:
                dropped_camera = self._queue.popleft()[0]
                self._queued[dropped_camera] -= 1
                self._count_drop(dropped_camera)
            self._queue.append((camera, topic, payload))
            self._queued[camera] += 1
            self._lock.notify_all()

    def publish_record(self, camera: str, record: dict[str, Any]) -> None:
        """Updates the label states from a camera's event (``labels`` names the reported
        labels) and sends the event, or with ``events="changes"`` only when a label came
        or went (with ``changed``): what an annotated frame needs."""
        changed = self.update_states(camera, [item["label"] for item in record.get("labels", ())])
        if self.settings.events == "all":
            self.publish_event(camera, record)
        elif changed["on"] or changed["off"]:
            self.publish_event(camera, {**record, "changed": changed})

    def stats(self, camera: str | None = None) -> dict[str, Any]:
        """``{"published", "queued", "dropped", "connected", "reconnects"}``: events
        acknowledged by the broker, waiting (queued or unacknowledged), dropped because the
        queue was full, whether the broker is connected, and reconnections; the events of
        one ``camera``, or of all."""
        with self._lock:
            if camera is None:
                counts = self._counts
                waiting = (
                    len(self._queue)
                    + sum(self._in_flight.values())
                    + sum(self._in_hand.values())
                )
            else:
                counts = self._camera_counts.get(camera, collections.Counter())
                waiting = self._queued[camera] + self._in_flight[camera] + self._in_hand[camera]
            return {
                "published": counts["published"],
                "queued": waiting,
                "dropped": counts["dropped"],
                "connected": self._connected,
                "reconnects": self._counts["reconnects"],
            }

    def delivered(self) -> bool:
        """Whether everything handed over so far (events, label states, discovery configs)
        has been acknowledged by the broker: nothing queued, nothing in flight."""
        with self._lock:
            return not self._has_work()

    def close(self, timeout: float = CLOSE_FLUSH_S) -> dict[str, Any]:
        """Delivers what is queued (up to ``timeout`` seconds, while connected), marks the
        node ``offline`` and disconnects; returns the final :meth:`stats`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._connected and self._has_work() and time.monotonic() < deadline:
                self._lock.wait(0.05)
            self._closing = True
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        final = self.stats()
        if final["connected"]:
            info = self._client.publish(
                self.settings.availability_topic, OFFLINE, qos=1, retain=True
            )
            with contextlib.suppress(RuntimeError, ValueError):  # the broker left meanwhile
                info.wait_for_publish(timeout=1.0)
        self._client.disconnect()
        self._client.loop_stop()
        if final["queued"]:
            log.warning(
                "MQTT: %d events were not delivered (broker %s unreachable at the end)",
                final["queued"],
                self.settings.describe(),
            )
        log.info("MQTT: %d events published, %d dropped", final["published"], final["dropped"])
        return final

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- internals (the lock is never held while paho is called) ----------------------------

    def _camera(self, name: str) -> _Camera:
        entry = self._cameras.get(name)
        if entry is None:
            slug = slugify(name, "camera")
            taken = {c.slug for c in self._cameras.values()}
            if slug in taken:
                slug = f"{slug}_{hashlib.sha1(name.encode()).hexdigest()[:6]}"
            entry = self._cameras[name] = _Camera(name, slug)
        return entry

    def _count_drop(self, camera: str) -> None:
        self._counts["dropped"] += 1
        self._camera_counts.setdefault(camera, collections.Counter())["dropped"] += 1
        if not self._connected:
            self._counts["dropped_outage"] += 1
            if self._counts["dropped_outage"] == 1:
                log.warning(
                    "MQTT: the queue of %d events is full; dropping the oldest until "
                    "the broker is back (counted)",
                    self.settings.queue_size,
                )

    def _has_work(self) -> bool:
        return bool(
            self._queue
            or self._dirty_states
            or self._dirty_configs
            or self._unacked
            or self._link.unacked
            or +self._in_hand
        )

    def _next_configs(self) -> list[tuple[str, bytes]]:
        """Up to :data:`SEND_BATCH` discovery configs ``(topic, payload)`` for paho, as
        many as its bound allows."""
        room = min(SEND_BATCH, MAX_UNACKED - len(self._unacked), len(self._dirty_configs))
        batch = []
        for _ in range(room):
            camera, label = self._dirty_configs.pop()
            topic, config = discovery_config(self.settings, self._cameras[camera], label)
            batch.append((topic, _json_bytes(config)))
        return batch

    def _next_link_messages(self) -> list[Message]:
        """The label states (retained, QoS 1) and events the link may write now, as many
        as its unacknowledged bound allows: states first, the present before the past."""
        room = MAX_UNACKED - len(self._link.unacked)
        batch = []
        while self._dirty_states and len(batch) < room:
            camera, label = self._dirty_states.pop()
            entry = self._cameras[camera]
            state = PAYLOAD_ON if entry.states.get(label) else PAYLOAD_OFF
            topic = state_topic(self.settings, entry.slug, entry.labels[label])
            batch.append(Message(topic, state.encode(), 1, True, ("state", camera, label)))
        qos = self.settings.events_qos
        while self._queue and len(batch) < room:
            camera, topic, payload = self._queue.popleft()
            self._queued[camera] -= 1
            self._in_hand[camera] += 1
            batch.append(Message(topic, payload, qos, False, ("event", camera, topic, payload)))
        return batch

    def _wait_for_work(self) -> None:
        """Waits (lock held) until something can be sent, the link awaits acknowledgements
        or a ping (an idle link is closed by the broker after 1.5 keep-alives), or the
        publisher closes."""
        while not self._closing and not (self._link.due() or self._connected and self._work()):
            self._lock.wait(0.5)

    def _work(self) -> bool:
        """Whether a connected sender has something to do (lock held)."""
        configs = self._dirty_configs and len(self._unacked) < MAX_UNACKED
        link_room = len(self._link.unacked) < MAX_UNACKED
        return bool(configs or self._link.unacked or link_room and (self._queue or self._dirty_states))

    def _send_loop(self) -> None:
        """Hands discovery configs to paho, writes states and events on the link in
        batches, reads the link's acknowledgements, then lingers a moment: one wake-up per
        batch instead of one per event leaves the interpreter lock to the inference."""
        try:
            while True:
                with self._lock:
                    self._wait_for_work()
                    if self._closing:
                        return
                    configs = self._next_configs()
                for topic, payload in configs:
                    self._hand_over(self._client.publish(topic, payload, 1, True))
                # Reading first finds a connection the broker closed (a write into it
                # would succeed, and QoS-0 events would be lost).
                self._read_acks(0.0)
                with self._lock:
                    messages = self._next_link_messages() if self._link_ready() else []
                self._write(messages)
                with self._lock:
                    backlog = len(self._queue) >= SEND_BATCH and self._link.connected
                if not backlog:
                    self._linger()
        finally:
            self._link.close()

    def _hand_over(self, info) -> None:
        with self._lock:
            if info.mid in self._early_acks:
                self._early_acks.discard(info.mid)
                self._lock.notify_all()
            else:
                self._unacked[info.mid] = "config"  # paho sends it (again) when connected

    def _link_ready(self) -> bool:
        """Whether states and events can be written: the link is open, or was opened now
        (at most one attempt a second; lock held, released while connecting)."""
        if self._link.connected:
            return True
        now = time.monotonic()
        if now < self._link_retry_at:
            return False
        self._link_retry_at = now + RECONNECT_MIN_S
        self._lock.release()
        try:
            self._link.open()
            problem = None
        except LinkError as exc:
            problem = str(exc)
        finally:
            self._lock.acquire()
        if problem is None:
            self._link_failures = 0
            self._link_opened_at = time.monotonic()
            # A restarted broker may have lost the retained states: send them all again.
            for name, entry in self._cameras.items():
                self._dirty_states |= {(name, label) for label in entry.labels}
            return True
        self._link_failures += 1
        if self._connected and self._link_failures == 1:
            log.warning(
                "MQTT: the events connection (client id %s) to %s failed: %s; events wait "
                "in the queue and it is tried again every %d s",
                self._link.client_id,
                self.settings.describe(),
                problem,
                RECONNECT_MIN_S,
            )
        return False

    def _write(self, messages: list[Message]) -> None:
        """Writes ``messages`` in one batch; QoS-0 events count as published once written,
        the rest when acknowledged (a lost link gives those back, see :meth:`_link_lost`)."""
        if not messages:
            return
        try:
            self._link.publish(messages)
        except LinkError as exc:
            self._link_lost(str(exc), [m.owner for m in messages if not m.qos])
            return
        with self._lock:
            self._in_hand = collections.Counter()
            self._count_published([m.owner for m in messages if not m.qos])
            self._in_flight.update(m.owner[1] for m in messages if m.qos and m.owner[0] == "event")

    def _read_acks(self, wait: float) -> None:
        """Counts what the broker acknowledged (waiting up to ``wait`` s for it)."""
        if not self._link.connected:
            return
        acked = self._link.poll(wait)
        with self._lock:
            self._count_published(acked)
            self._in_flight.subtract(owner[1] for owner in acked if owner[0] == "event")
        if not self._link.connected:
            self._link_lost(self._link.error, [])

    def _count_published(self, owners: list[tuple]) -> None:
        for owner in owners:
            if owner[0] == "event":
                self._counts["published"] += 1
                self._camera_counts.setdefault(owner[1], collections.Counter())["published"] += 1
        if owners:
            self._lock.notify_all()

    def _linger(self) -> None:
        """Pauses :data:`SEND_LINGER_S` so events gather, reading the link's
        acknowledgements (and its pings when it idles).  It reads after a first
        :data:`ACK_GATHER_S`, when the broker has acknowledged most of a batch: one read
        instead of one per segment of acknowledgements (3.9 reads a batch before)."""
        deadline = time.monotonic() + SEND_LINGER_S
        if self._link.unacked:
            time.sleep(ACK_GATHER_S)
        while self._link.connected and (left := deadline - time.monotonic()) > 0:
            if not self._link.unacked:
                self._read_acks(0.0)
                break
            self._read_acks(left)
        time.sleep(max(0.0, deadline - time.monotonic()))

    def _link_lost(self, why: str, unsent: list[tuple]) -> None:
        """Puts the events the link did not have acknowledged (and ``unsent``) back at the
        queue's head, in order, and its unacknowledged states back among the ones to send."""
        owners = self._link.drop() + unsent
        with self._lock:
            self._in_hand = collections.Counter()
            self._in_flight = collections.Counter()
            self._requeue([owner[1:] for owner in owners if owner[0] == "event"])
            self._dirty_states |= {owner[1:] for owner in owners if owner[0] == "state"}
            # In an outage paho's connection has said it ("lost the broker").
            outage = self._lost_at is not None and self._lost_at >= self._link_opened_at
            if self._connected and not outage and not self._closing:
                log.warning(
                    "MQTT: the events connection to %s was lost (%s); %d events wait in "
                    "the queue",
                    self.settings.describe(),
                    why,
                    len(self._queue),
                )
            self._lock.notify_all()

    def _requeue(self, events: list[tuple[str, str, bytes]]) -> None:
        """Puts events back at the head of the queue, in their order (nothing is dropped
        for them: they were in the queue's bound before)."""
        for event in reversed(events):
            self._queue.appendleft(event)
            self._queued[event[0]] += 1

    # -- paho callbacks (paho's network thread) ---------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            self._log_connect_problem(
                f"the broker refused the connection: {reason_code}"
                " (check the user name and password)"
            )
            return
        client.publish(self.settings.availability_topic, ONLINE, qos=1, retain=True)
        if self.settings.discovery:
            client.subscribe(f"{self.settings.discovery_prefix}/status", qos=1)
        with self._lock:
            self._connected = True
            self._connect_failures = 0
            self._mark_all_dirty()
            self._log_connected()
            self._lock.notify_all()

    def _log_connected(self) -> None:
        where = self.settings.describe()
        if not self._ever_connected:
            self._ever_connected = True
            log.info("MQTT: connected to %s", where)
            return
        self._counts["reconnects"] += 1
        away = time.monotonic() - self._lost_at if self._lost_at else 0.0
        log.info(
            "MQTT: broker %s is back after %.1f s; %d events dropped while it was away, "
            "%d queued events now being delivered",
            where,
            away,
            self._counts["dropped_outage"],
            len(self._queue),
        )
        self._counts["dropped_outage"] = 0

    def _mark_all_dirty(self) -> None:
        """After a (re)connection: a restarted broker may have lost the retained messages."""
        for name, entry in self._cameras.items():
            keys = {(name, label) for label in entry.labels}
            self._dirty_states |= keys
            if self.settings.discovery:
                self._dirty_configs |= keys

    def _on_connect_fail(self, client, userdata) -> None:
        with self._lock:
            first = self._connect_failures == 0
        # paho does not say why; on the first failure only (it is logged), find out.
        self._log_connect_problem(connect_problem(self.settings) if first else "cannot reach it")

    def _log_connect_problem(self, reason: str) -> None:
        with self._lock:
            self._connect_failures += 1
            first = self._connect_failures == 1
        message = (
            "MQTT: broker %s: %s; events wait in a queue of %d (oldest dropped beyond) "
            "and it is tried again every %d-%d s"
        )
        args = (
            self.settings.describe(),
            reason,
            self.settings.queue_size,
            RECONNECT_MIN_S,
            RECONNECT_MAX_S,
        )
        if first:
            log.warning(message, *args)
        else:
            log.debug(message, *args)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        with self._lock:
            was_connected, self._connected = self._connected, False
            if was_connected and not self._closing:
                self._lost_at = time.monotonic()
                self._connect_failures = 1  # this line says it: failed retries log at debug
                # paho reports a dropped connection as "Unspecified error".
                why = (
                    ""
                    if reason_code.is_failure and reason_code.value == 128
                    else f" ({reason_code})"
                )
                log.warning(
                    "MQTT: lost the broker %s%s; events wait in a queue of %d and it is "
                    "tried again every %d-%d s",
                    self.settings.describe(),
                    why,
                    self.settings.queue_size,
                    RECONNECT_MIN_S,
                    RECONNECT_MAX_S,
                )
            self._lock.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        with self._lock:
            if self._unacked.pop(mid, None) is None:  # acknowledged before the sender stored it
                self._early_acks.add(mid)
            else:
                self._lock.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        # Home Assistant's birth message: it (re)started and needs the configs and states.
        if message.payload == ONLINE.encode():
            with self._lock:
                self._mark_all_dirty()
                self._lock.notify_all()


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """The TLS context of the events connection, checked as paho checks the other: against
    ``tls_ca`` (or the system's CAs), with the client certificate when given, and the host
    name unless ``tls_insecure``."""
    try:
        context = ssl.create_default_context(cafile=settings.tls_ca)
        if settings.tls_cert is not None:
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise MqttError(f"mqtt TLS files cannot be used: {exc}") from None
    context.check_hostname = not settings.tls_insecure
    return context


def connect_problem(settings: MqttSettings, timeout: float = 2.0) -> str:
    """Why a connection failed, as far as a plain TCP connection tells: the name, the port,
    or (when TCP gets through to an ``mqtts`` broker) the TLS handshake."""
    try:
        with socket.create_connection((settings.host, settings.port), timeout=timeout):
            pass
    except socket.gaierror:
        return f"cannot reach it (no such host {settings.host!r})"
    except TimeoutError:
        return f"cannot reach it (no answer within {timeout:g} s)"
    except OSError as exc:
        return f"cannot reach it ({exc.strerror or type(exc).__name__})"
    if settings.tls:
        return (
            "cannot reach it: the TLS handshake failed (check the broker's certificate "
            "against tls_ca / --mqtt-tls-ca)"
        )
    return "cannot reach it (the port answers, the MQTT connection failed)"


def state_topic(settings: MqttSettings, camera_slug: str, label_slug: str) -> str:
    """The retained ON/OFF topic of one camera's label."""
    return f"{settings.topic_prefix}/{camera_slug}/{label_slug}/state"


def discovery_config(settings: MqttSettings, camera: _Camera, label: str) -> tuple[str, dict]:
    """``(config topic, payload)`` making one camera's label a Home Assistant ``binary_sensor``."""
    node, label_slug = settings.node_id, camera.labels[label]
    object_id = f"{camera.slug}_{label_slug}"
    unique_id = f"{node}_{object_id}"
    payload = {
        "name": label,
        "unique_id": unique_id,
        "state_topic": state_topic(settings, camera.slug, label_slug),
        "payload_on": PAYLOAD_ON,
        "payload_off": PAYLOAD_OFF,
        "availability_topic": settings.availability_topic,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "qos": 1,
        "device": {
            "identifiers": [f"{node}_{camera.slug}"],
            "name": camera.name,
            "manufacturer": "fuselite",
            "model": camera.bundle or "fuselite camera",
            "sw_version": __version__,
        },
        "origin": {"name": "fuselite", "sw_version": __version__},
    }
    topic = f"{settings.discovery_prefix}/binary_sensor/{node}/{object_id}/config"
    return topic, payload


def _json_bytes(record: dict[str, Any]) -> bytes:
    """:func:`compact_json` as UTF-8 bytes, an MQTT payload."""
    return compact_json(record).encode()


def compact_json(record: dict[str, Any]) -> str:
    """Compact JSON text; a non-finite number anywhere (JSON has none) becomes ``null``.

    Shared by the JSONL writer (:func:`fuselite.runtime.outputs.to_json_line`) and the
    MQTT payloads, so an event reads the same in both.
    """
    try:
        return _COMPACT.encode(record)
    except ValueError:
        return json.dumps(_finite(record), separators=(",", ":"))


# Made once: json.dumps with options builds an encoder per call (1.7 of its 8.4 us here).
_COMPACT = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
