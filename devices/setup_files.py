"""A board's setup files, rendered from its profile: install script, systemd unit, settings.

Every board gets the same files (two of them for several cameras); only names and values from its profile JSON
differ.  So there is one template per file in ``templates/`` (``install.sh.in``,
``fuselite.service.in``, ``fuselite.env.in``) and :func:`render` fills it in from the
profile.  Adding a board is one JSON file in ``profiles/``.

The templates use ``@{name}`` placeholders (:class:`string.Template` with ``@`` as
the delimiter) because ``$`` belongs to bash and systemd in these files.  What each
placeholder becomes is :func:`template_values`; the values not read straight from
the profile come from one table each: the default video source per camera backend
(:data:`SOURCES`), the Python range from the runtime's op table, and ``MemoryMax``
at twice ``limits.max_memory_mb``.

Example:
    >>> print(render(get_profile("raspberry-pi-5"), "fuselite.env"))
    # fuselite settings for the raspberry-pi-5 profile, read by fuselite.service.
    ...
    >>> write_setup_files(get_profile("raspberry-pi-5"), Path("raspberry-pi-5"))
    [PosixPath('raspberry-pi-5/install.sh'), PosixPath('raspberry-pi-5/fuselite.service'), ...]
"""

from __future__ import annotations

import string
import textwrap
from pathlib import Path

from fuselite.devices.profiles import Profile, python_clauses
from fuselite.files import write_atomic
from fuselite.runtime.watchdog import FLUSH_BOUND_S, STOP_GRACE_S

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
# Setup file name -> its permission bits; the template is templates/<name>.in.
SETUP_FILES = {
    "install.sh": 0o755,
    "fuselite.service": 0o644,
    "fuselite.env": 0o644,
    # Several cameras in one process (docs/cameras.md): the unit and an example file.
    "fuselite-cameras.service": 0o644,
    "cameras.toml": 0o644,
}
COMMENT_WIDTH = 100
# After SIGTERM, fuselite run ends within its grace period plus its bounded flush, even
# mid-invoke; the unit's TimeoutStopSec leaves a margin above that before systemd's SIGKILL.
STOP_BOUND_S = STOP_GRACE_S + FLUSH_BOUND_S
STOP_MARGIN_S = 7.0

# camera_backend -> (comment above FUSELITE_SOURCE in fuselite.env, the default source)
SOURCES = {
    "libcamera": (
        (
            "'camera' = the Pi camera through picamera2 when the venv can import it, else camera 0\n"
            "(a USB webcam). For the camera module without picamera2, stream it with\n"
            "  rpicam-vid -t 0 --inline --listen -o tcp://127.0.0.1:8888\n"
            "and set FUSELITE_SOURCE=tcp://127.0.0.1:8888"
        ),
        "camera",
    ),
    "v4l2": ("camera index (0 = /dev/video0), a video file, an rtsp:// or http:// URL, or an image folder", "0"),
}


class SetupTemplate(string.Template):
    """A template with ``@{name}`` placeholders (and ``@@`` for a literal ``@{``).

    A bare ``@`` is left alone, so ``"${ARRAY[@]}"`` needs no escaping.
    """

    delimiter = "@"
    pattern = r"@(?:(?P<escaped>@)|(?P<named>(?!))|\{(?P<braced>[a-z_]+)\}|(?P<invalid>(?!)))"


def render(profile: Profile, kind: str) -> str:
    """The text of the setup file ``kind`` (a key of :data:`SETUP_FILES`) for ``profile``."""
    if kind not in SETUP_FILES:
        raise ValueError(f"unknown setup file {kind!r}; known: {', '.join(SETUP_FILES)}")
    template = SetupTemplate((TEMPLATES_DIR / f"{kind}.in").read_text())
    return template.substitute(template_values(profile))


def template_values(profile: Profile) -> dict[str, str]:
    """Every placeholder of the templates, filled in from ``profile`` (texts made safe for their spot)."""
    spec = profile.runtime_spec
    source_help, source = SOURCES[profile.camera_backend]
    python_condition = " and ".join(f"v {op} {bound}" for op, bound in python_clauses(spec.python))
    return {
        "name": profile.name,
        "title": _one_line(profile.title),
        "notes": _comment(f"Board notes: {profile.notes or 'none.'}"),
        "runtime_name": _bash_escaped(spec.name),
        "runtime_requirements": " ".join(f'"{_bash_escaped(r)}"' for r in spec.requirements),
        "architecture": profile.architecture,
        "debian_architecture": profile.debian_architecture,
        "kernel_hint": f": {_bash_escaped(profile.kernel_hint)}" if profile.kernel_hint else "",
        "python_condition": python_condition,
        "python_range": spec.python,
        "threads": str(profile.threads),
        "ram_mb": str(profile.ram_mb),
        "max_memory_mb": f"{profile.limits.max_memory_mb:g}",
        "memory_max_mb": str(round(2 * profile.limits.max_memory_mb)),
        "source_help": _comment(source_help),
        "source": source,
        "stop_bound_s": f"{STOP_BOUND_S:g}",
        "timeout_stop_s": f"{STOP_BOUND_S + STOP_MARGIN_S:g}",
    }


def write_setup_files(profile: Profile, out_dir: Path) -> list[Path]:
    """Writes the setup files of ``profile`` into ``out_dir``; returns their paths.

    Each file is written under a temporary name beside its target and renamed into
    place, so an interrupted run never leaves half a script.  All are rendered
    before the first is written.
    """
    texts = {kind: render(profile, kind) for kind in SETUP_FILES}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, text in texts.items():
        paths.append(out_dir / kind)
        # The mode is set before the rename: install.sh is executable the moment it appears.
        write_atomic(paths[-1], text.encode(), mode=SETUP_FILES[kind])
    return paths


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _comment(text: str) -> str:
    """``text`` as ``#`` comment lines (kept line breaks, long lines wrapped), valid in every one of the files."""
    lines = []
    for line in text.splitlines():
        lines += textwrap.wrap(line, COMMENT_WIDTH, initial_indent="# ", subsequent_indent="# ") or ["#"]
    return "\n".join(lines)


def _bash_escaped(text: str) -> str:
    """``text`` made safe inside a bash double-quoted string, on one line."""
    for char in ("\\", '"', "$", "`"):
        text = text.replace(char, "\\" + char)
    return _one_line(text)
