"""Rotating event files, and the keeper that deletes the oldest closed recordings.

A camera's video segments (``<stem>-0001.mp4``...) and rotated event files
(``<stem>-0001.jsonl``...) form *series*: files in one folder whose names fuselite
chose.  :func:`sweep` deletes, oldest first, the closed files of some series until
they fit a cap (``keep_gb``) and none is older than ``keep_days``.  It never deletes:

* a file whose name is not ``<stem>-<number><suffix>`` of a series in that series'
  folder (another program's files, or a user's, even in the same folder);
* the newest file of a series, which may be the one being written (a video being
  written also has a hidden ``.partial`` name, which matches no series);
* a path it is told is open.

:class:`RetentionKeeper` runs :func:`sweep` on a thread every ``interval`` seconds.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuselite.runtime.outputs import JsonlWriter

log = logging.getLogger(__name__)

GB = 1e9
DAY_S = 86400.0


@dataclass(frozen=True)
class Series:
    """Numbered files fuselite writes: ``folder/<stem>-NNNN<suffix>``.

    Attributes:
        folder: Where the files are.
        stem: The name before ``-NNNN``.
        suffix: The extension, with its dot (``.mp4``, ``.jsonl``).
    """

    folder: Path
    stem: str
    suffix: str

    @classmethod
    def beside(cls, path: str | Path) -> Series:
        """The series of numbered files written for ``path`` (``out.mp4`` -> ``out-NNNN.mp4``)."""
        path = Path(path)
        return cls(path.parent, path.stem, path.suffix)

    def path(self, number: int) -> Path:
        """The file of ``number`` (from 1)."""
        return self.folder / f"{self.stem}-{number:04d}{self.suffix}"

    def files(self) -> list[tuple[int, Path]]:
        """``(number, path)`` of every file of the series, by number."""
        pattern = re.compile(rf"{re.escape(self.stem)}-(\d{{4,}}){re.escape(self.suffix)}")
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return []
        found = [
            (int(match[1]), Path(entry.path))
            for entry in entries
            if (match := pattern.fullmatch(entry.name)) and entry.is_file(follow_symlinks=False)
        ]
        return sorted(found)


@dataclass(frozen=True)
class OwnedFile:
    """A closed file of a series that a cap may delete."""

    path: Path
    size: int
    mtime: float


def closed_files(
    series: Iterable[Series], open_paths: Iterable[Path] = ()
) -> tuple[list[OwnedFile], int]:
    """``(the closed files, oldest first; the bytes of the files that stay whatever happens)``.

    The newest file of each series and every path in ``open_paths`` count as open.
    """
    open_set = {Path(p).resolve() for p in open_paths}
    closed, kept_bytes = [], 0
    for one in series:
        numbered = one.files()
        for index, (_number, path) in enumerate(numbered):
            try:
                info = path.stat()
            except OSError:
                continue  # gone meanwhile
            if index == len(numbered) - 1 or path.resolve() in open_set:
                kept_bytes += info.st_size
            else:
                closed.append(OwnedFile(path, info.st_size, info.st_mtime))
    closed.sort(key=lambda f: (f.mtime, f.path.name))
    return closed, kept_bytes


def sweep(
    series: Iterable[Series],
    keep_gb: float | None,
    keep_days: float | None,
    open_paths: Iterable[Path] = (),
    now: float | None = None,
) -> list[Path]:
    """Deletes the oldest closed files of ``series`` over the caps; returns what it deleted."""
    closed, kept_bytes = closed_files(series, open_paths)
    now = time.time() if now is None else now
    deleted: list[Path] = []
    remaining = []
    for owned in closed:
        expired = keep_days is not None and now - owned.mtime > keep_days * DAY_S
        if expired and _delete(owned.path):
            deleted.append(owned.path)
            continue
        remaining.append(owned)
    if keep_gb is not None:
        total = kept_bytes + sum(f.size for f in remaining)
        for owned in remaining:  # oldest first
            if total <= keep_gb * GB:
                break
            if _delete(owned.path):
                deleted.append(owned.path)
                total -= owned.size
    return deleted


def _delete(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return True
    except OSError as exc:
        log.warning("retention: cannot delete %s: %s", path, exc.strerror or exc)
        return False
    log.info("retention: deleted %s", path)
    return True


@dataclass(frozen=True)
class RetentionRule:
    """One cap over some series: a camera's own, or the global one over every camera.

    Attributes:
        name: Who the cap belongs to (``camera 'door'``, ``all cameras``), for the log.
        series: The series it covers.
        keep_gb: Size cap in GB, or ``None``.
        keep_days: Age cap in days, or ``None``.
    """

    name: str
    series: tuple[Series, ...]
    keep_gb: float | None
    keep_days: float | None


class RetentionKeeper:
    """Applies retention rules on a thread, every ``interval`` seconds and once at close.

    ``open_paths()`` returns the files being written right now (never deleted).
    """

    def __init__(
        self,
        rules: Iterable[RetentionRule],
        interval: float,
        open_paths: Callable[[], Iterable[Path]] = tuple,
    ) -> None:
        self.rules = tuple(rules)
        self.interval = interval
        self.open_paths = open_paths
        self.deleted = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RetentionKeeper:
        """Starts the thread (nothing happens without rules)."""
        if self.rules:
            self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
            self._thread.start()
        return self

    def sweep_once(self) -> list[Path]:
        """Applies every rule now; returns the files deleted."""
        deleted: list[Path] = []
        for rule in self.rules:
            try:
                deleted += sweep(rule.series, rule.keep_gb, rule.keep_days, self.open_paths())
            except Exception:  # retention must never end the run
                log.exception("retention of %s failed; trying again later", rule.name)
        self.deleted += len(deleted)
        return deleted

    def close(self) -> None:
        """Stops the thread, then sweeps a last time (the files just closed count)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self.sweep_once()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sweep_once()


class RotatingJsonlWriter:
    """A :class:`~fuselite.runtime.outputs.JsonlWriter` over numbered files.

    Events go to ``<stem>-NNNN.jsonl`` beside ``target``; once a file holds
    ``rotate_mb`` MB the next event starts the next number.  A restart appends to the
    highest number already there, as the one-file writer appends to its file.
    """

    def __init__(self, target: str | Path, rotate_mb: float) -> None:
        self.series = Series.beside(target)
        self.target = str(target)
        self.rotate_bytes = max(1, int(rotate_mb * 1e6))
        self.series.folder.mkdir(parents=True, exist_ok=True)
        numbers = [number for number, _path in self.series.files()]
        self._number = max(numbers, default=1)
        self._writer = JsonlWriter(self.current)
        self._lock = threading.Lock()

    @property
    def current(self) -> Path:
        """The file being written."""
        return self.series.path(self._number)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._writer.closed

    def write(self, record: dict[str, Any], hold: bool = False) -> bool:
        """Writes one record (see :meth:`JsonlWriter.write`; ``hold`` too), then rotates if
        the file is full."""
        with self._lock:
            written = self._writer.write(record, hold=hold)
            if written and self._size() >= self.rotate_bytes:
                self._writer.flush()  # the held lines belong to this file
                self._rotate()
            return written

    @property
    def holding(self) -> bool:
        """Whether lines are held back (see :attr:`JsonlWriter.holding`)."""
        return self._writer.holding

    @property
    def lines_in_last_write(self) -> int:
        """How many lines the last write carried (what it lost, if it failed)."""
        return self._writer.lines_in_last_write

    def flush(self) -> bool:
        """Writes the lines held back (see :meth:`JsonlWriter.flush`)."""
        with self._lock:
            return self._writer.flush()

    def _rotate(self) -> None:
        """Starts the next file; if it cannot be opened, the current one goes on (and the
        next write tries again), so a failed rotation loses no event."""
        following = self.series.path(self._number + 1)
        try:
            writer = JsonlWriter(following)
        except OSError as exc:
            log.warning(
                "cannot start %s (%s); events go on into %s",
                following,
                exc.strerror or exc,
                self.current,
            )
            return
        self._writer.close()
        self._writer, self._number = writer, self._number + 1

    def _size(self) -> int:
        try:
            return self.current.stat().st_size
        except OSError:
            return 0

    def close(self) -> None:
        """Closes the file being written."""
        with self._lock:
            self._writer.close()
