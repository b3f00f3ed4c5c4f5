"""A real Mosquitto broker on 127.0.0.1 for the MQTT tests and benchmark.

Debian's ``mosquitto`` runs as a plain process with a config of a few lines; this
starts it on a free port, kills it (as a crashed broker dies) and starts it again on
the same port.  With ``persistence``, subscriptions of persistent sessions survive a
restart (the database is written on :meth:`Mosquitto.save`), so a subscriber receives
what was published while it was reconnecting.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Mosquitto:
    """One broker process on ``127.0.0.1:port``; :meth:`start` again after :meth:`kill`.

    ``listener_options`` are config lines for the listener, e.g. ``certfile ...`` for TLS,
    or ``password_file ...`` with ``allow_anonymous=False``.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        persistence: bool = False,
        listener_options: tuple[str, ...] = (),
        allow_anonymous: bool = True,
    ) -> None:
        if MOSQUITTO is None:
            raise FileNotFoundError(
                "mosquitto is not installed (Debian: apt-get install mosquitto)"
            )
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.persistence = persistence
        self.process: subprocess.Popen | None = None
        self.config = self.workdir / "mosquitto.conf"
        # Options after the listener line apply to it (e.g. cafile/certfile/keyfile for TLS).
        lines = [
            f"listener {self.port} 127.0.0.1",
            *listener_options,
            f"allow_anonymous {'true' if allow_anonymous else 'false'}",
        ]
        if os.geteuid() == 0:
            lines.append(
                "user root"
            )  # as root it would switch to `mosquitto`, who cannot write here
        if persistence:
            # Every queued message is kept for an offline persistent subscriber.
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "max_queued_messages 0",
            ]
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>``."""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Self:
        """Starts the broker and waits until it accepts connections."""
        log = open(self.workdir / "mosquitto.log", "ab")  # noqa: SIM115 - kept by the child
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start on port {self.port}: see {log.name}")
            time.sleep(0.02)
        return self

    def save(self, timeout: float = 5.0) -> None:
        """Writes the persistence database now (SIGUSR1) and waits for the file."""
        db = self.workdir / "mosquitto.db"
        before = db.stat().st_mtime_ns if db.exists() else 0
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not (db.exists() and db.stat().st_mtime_ns != before):
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not write its database")
            time.sleep(0.02)

    def kill(self) -> None:
        """Kills the broker at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.kill()
