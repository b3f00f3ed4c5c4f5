"""File helpers every floor shares."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Writes ``data`` to a temporary file beside ``path`` and renames it into place.

    An interrupted write never leaves a truncated file at ``path``.  The file gets
    ``mode`` (e.g. ``0o755`` for a script, set before the rename so it is executable
    the moment it appears), else the usual ``0o666`` less the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    if mode is None:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_root() -> Path | None:
    """fuselite's cache folder: ``$FUSELITE_CACHE_DIR``, else ``$XDG_CACHE_HOME/fuselite``,
    else ``~/.cache/fuselite``; None when there is no home to put it in.
    """
    if os.environ.get("FUSELITE_CACHE_DIR"):
        return Path(os.environ["FUSELITE_CACHE_DIR"])
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no HOME and no passwd entry
        return None
    return base / "fuselite"
