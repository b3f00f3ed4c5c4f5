"""``devices verify``: run a bundle on an emulated board and compare with the host.

How it works (the recipe measured in ../shared/GUIDE.md):

1. The bundle's op list is checked against the profile's runtime
   (:mod:`fuselite.devices.compat`); a bundle the board cannot load fails here.
2. A Debian userland of the board's architecture is unpacked by the *first stage*
   of ``debootstrap --foreign --variant=minbase --include=python3`` (~25 s; the
   second stage is not needed: the downloaded python3 packages are unpacked from
   the host) and cached under ``CACHE/<arch>-<suite>/root``.
3. The board's wheels (the profile's runtime plus fuselite's base dependencies)
   are installed from the host with ``pip install --target --only-binary=:all:
   --python-version 3.11`` naming every ``manylinux_2_17`` ... ``manylinux_2_36``
   platform tag (with fewer, pip silently picks an old ai-edge-litert), cached too.
4. fuselite itself (pure Python: the contract, the runtime, devices) is copied
   from the installed source tree, fresh on every run.
5. An ARM ``/proc/cpuinfo`` is written to ``ROOT/proc/cpuinfo``: qemu's ``-L ROOT``
   makes the emulated process read it there, and the x86 host's one crashes
   LiteRT's CPU detection under qemu.
6. :mod:`fuselite.devices.probe` runs natively and under ``qemu-<arch>-static``;
   the outputs must agree: integer outputs bit-exact, float within 1e-5.

Every subprocess has a timeout; missing tools and an unreachable mirror are
:class:`~fuselite.errors.UserError` messages saying what to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from fuselite.bundle import read_bundle
from fuselite.devices import probe
from fuselite.devices.compat import bundle_ops, check_ops
from fuselite.devices.profiles import Profile
from fuselite.errors import UserError
from fuselite.files import cache_root

log = logging.getLogger(__name__)

FLOAT_TOLERANCE = 1e-5
DEFAULT_MIRROR = "http://deb.debian.org/debian"
APT_HINT = "install them with: apt-get install qemu-user-static debootstrap"
ROOTFS_OK = ".fuselite-rootfs-ok"
SITE_OK = ".fuselite-site-ok"
PIP_QUIET = ("--timeout", "20", "--retries", "2", "--no-input", "--disable-pip-version-check", "--quiet")
MANYLINUX_MINORS = range(17, 37)  # manylinux_2_17 ... manylinux_2_36 (bookworm's glibc)


@dataclass(frozen=True)
class Emulation:
    """How one board architecture is emulated.

    Attributes:
        debian_arch: Debian's name for it (``arm64``).
        qemu: The qemu-user binary (``qemu-aarch64-static``).
        wheel_arch: The architecture in wheel platform tags (``aarch64``).
        debian_packages: Packages debootstrap adds to the userland.
        wheels_with_deps: Whether pip installs dependencies and fuselite's base
            requirements too.  armv7 has no numpy<2 or OpenCV wheels on PyPI: there
            numpy comes from Debian and only the runtime's wheel from PyPI.
    """

    debian_arch: str
    qemu: str
    wheel_arch: str
    debian_packages: tuple[str, ...] = ("python3",)
    wheels_with_deps: bool = True

    def pip_platforms(self) -> list[str]:
        """Every manylinux platform tag a bookworm userland accepts."""
        return [f"manylinux_2_{minor}_{self.wheel_arch}" for minor in MANYLINUX_MINORS]


EMULATIONS = {
    "aarch64": Emulation("arm64", "qemu-aarch64-static", "aarch64"),
    "armv7l": Emulation(
        "armhf", "qemu-arm-static", "armv7l", ("python3", "python3-numpy"), wheels_with_deps=False
    ),
}


@dataclass(frozen=True)
class CpuModel:
    """What an ARM core reports in /proc/cpuinfo (only the fields CPU detection reads)."""

    features: str
    architecture: str
    variant: str
    part: str
    revision: int
    model_name: str = ""


CPU_MODELS = {
    "cortex-a76": CpuModel(
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
        "8", "0x4", "0xd0b", 1,
    ),
    "cortex-a72": CpuModel("fp asimd evtstrm crc32 cpuid", "8", "0x0", "0xd08", 3),
    "cortex-a53": CpuModel("fp asimd evtstrm crc32 cpuid", "8", "0x0", "0xd03", 4),
    "cortex-a7": CpuModel(
        "half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm",
        "7", "0x0", "0xc07", 5, "ARMv7 Processor rev 5 (v7l)",
    ),
}


@dataclass(frozen=True)
class VerifyOptions:
    """Options of one verification.

    Attributes:
        bundle: The bundle to verify.
        cache_dir: Where root filesystems and wheels are cached.
        frames: Number of deterministic frames to compare.
        seed: Seed of the frame generator.
        mirror: Debian mirror for debootstrap; ``None`` reads the host's apt sources.
        timeout: Seconds allowed for each step (debootstrap, pip, each probe).
        threads: Interpreter threads in both probes.
    """

    bundle: Path
    cache_dir: Path
    frames: int = 8
    seed: int = 0
    mirror: str | None = None
    timeout: float = 900.0
    threads: int = 1


@dataclass(frozen=True)
class Comparison:
    """How one output of the emulated run compares with the host's.

    Attributes:
        name: Output file name.
        dtype: Output dtype.
        shape: Output shape (frames first).
        max_abs_diff: Largest absolute difference.
        tolerance: 0 for integer outputs, 1e-5 for float ones.
        passed: Whether the difference is within the tolerance.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    max_abs_diff: float
    tolerance: float
    passed: bool


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of ``devices verify``.

    Attributes:
        profile: Profile name.
        bundle: Bundle path.
        passed: True when the ops load and every output agrees.
        op_problems: Why the profile's runtime cannot load the bundle (empty if it can).
        comparisons: One row per output; empty when the op check failed.
        timings: Seconds per step (rootfs, wheels, host probe, board probe, total).
        host: The host probe's info.json.
        board: The emulated probe's info.json.
        cached: Whether the root filesystem and wheels came from the cache.
    """

    profile: str
    bundle: Path
    passed: bool
    op_problems: tuple[str, ...] = ()
    comparisons: tuple[Comparison, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    host: dict = field(default_factory=dict)
    board: dict = field(default_factory=dict)
    cached: bool = False


def default_cache_dir() -> Path:
    """fuselite's cache folder (:func:`fuselite.files.cache_root`), else the temp folder's."""
    return cache_root() or Path(tempfile.gettempdir()) / "fuselite"


def rootfs_dir(profile: Profile, cache_dir: Path) -> Path:
    """Where the emulated root filesystem of ``profile`` is cached."""
    return cache_dir / f"{EMULATIONS[profile.architecture].debian_arch}-{profile.debian_suite}" / "root"


def rootfs_ready(profile: Profile, cache_dir: Path) -> bool:
    """True when a complete cached root filesystem exists for ``profile``."""
    return (rootfs_dir(profile, cache_dir) / ROOTFS_OK).exists()


def cache_ready(profile: Profile, cache_dir: Path) -> bool:
    """True when the rootfs, the board's wheels and the host's reference wheels are all cached.

    Then a verify needs no network and takes seconds.
    """
    emulation = EMULATIONS.get(profile.architecture)
    if emulation is None or not rootfs_ready(profile, cache_dir):
        return False
    options = VerifyOptions(bundle=Path(), cache_dir=cache_dir)
    board_site = site_dir(profile, emulation, options)
    if not (board_site / SITE_OK).exists():
        return False
    return (host_site_dir(profile, board_site, cache_dir) / SITE_OK).exists()


def verify(profile: Profile, options: VerifyOptions) -> VerifyResult:
    """Verifies ``options.bundle`` on ``profile``'s emulated userland; see the module doc."""
    start = time.monotonic()
    bundle = read_bundle(options.bundle)
    problems = tuple(check_ops(bundle_ops(bundle), profile.runtime))
    if problems:
        return VerifyResult(profile.name, options.bundle, False, op_problems=problems)
    emulation = emulation_for(profile)
    require_tools(emulation)
    timings = {}
    cached = rootfs_ready(profile, options.cache_dir) and (site_dir(profile, emulation, options) / SITE_OK).exists()
    root = _timed(timings, "rootfs", ensure_rootfs, profile, emulation, options)
    site = _timed(timings, "wheels", ensure_site, profile, emulation, options)
    host_site = _timed(timings, "host_wheels", ensure_host_site, profile, site, options)
    source = copy_fuselite(options.cache_dir / "fuselite-src")
    write_cpuinfo(root, profile)
    with tempfile.TemporaryDirectory(prefix="fuselite-verify-") as tmp:
        host_dir, board_dir = Path(tmp) / "host", Path(tmp) / "board"
        _timed(timings, "host_probe", run_host_probe, options, source, host_site, host_dir)
        _timed(timings, "board_probe", run_board_probe, profile, emulation, root, site, source, options, board_dir)
        comparisons = tuple(compare_outputs(host_dir, board_dir))
        host_info, board_info = _read_info(host_dir), _read_info(board_dir)
    timings["total"] = round(time.monotonic() - start, 1)
    return VerifyResult(
        profile=profile.name,
        bundle=options.bundle,
        passed=all(c.passed for c in comparisons),
        comparisons=comparisons,
        timings=timings,
        host=host_info,
        board=board_info,
        cached=cached,
    )


def emulation_for(profile: Profile) -> Emulation:
    """The emulation of ``profile``'s architecture; UserError for a native one."""
    if profile.architecture not in EMULATIONS:
        raise UserError(
            f"{profile.name} is {profile.architecture}, like this host: nothing to emulate "
            f"(`fuselite devices check {profile.name} --bundle FILE` checks its ops)"
        )
    return EMULATIONS[profile.architecture]


def require_tools(emulation: Emulation) -> None:
    """UserError naming the apt packages when qemu-user-static or debootstrap is missing."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [tool for tool in (emulation.qemu, "debootstrap") if not shutil.which(tool, path=search)]
    if missing:
        raise UserError(f"{' and '.join(missing)} not found; {APT_HINT}")


def _timed(timings: dict, name: str, step, *args):
    start = time.monotonic()
    result = step(*args)
    timings[name] = round(time.monotonic() - start, 1)
    return result


# --- the root filesystem -----------------------------------------------------------


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The first Debian mirror in the host's apt sources (not the security one)."""
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file() or path.name.endswith((".disabled", ".save")) or "disabled" in path.name:
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = line.split("#", 1)[0].split()
            urls = [w for w in words if w.startswith(("http://", "https://"))]
            is_source = urls and ("URIs:" in words or words[:1] == ["deb"])
            if is_source and "security" not in urls[0] and "/debian" in urls[0]:
                return urls[0].rstrip("/")
    return DEFAULT_MIRROR


def check_mirror(mirror: str, suite: str, timeout: float = 15.0) -> None:
    """UserError when the mirror does not answer for ``suite`` within ``timeout`` seconds."""
    url = f"{mirror}/dists/{suite}/Release"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read(1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"cannot reach the Debian mirror {mirror} ({reason}); debootstrap needs it once "
            "to build the cached board filesystem: check the network or pass --mirror URL"
        ) from None


def ensure_rootfs(profile: Profile, emulation: Emulation, options: VerifyOptions) -> Path:
    """Returns the cached root filesystem, building it with debootstrap's first stage if needed."""
    root = rootfs_dir(profile, options.cache_dir)
    if (root / ROOTFS_OK).exists():
        return root
    if os.geteuid() != 0:
        raise UserError("building the board filesystem runs debootstrap, which needs root: run as root once")
    mirror = options.mirror or debian_mirror()
    check_mirror(mirror, profile.debian_suite)
    partial = root.with_name("root.partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the %s %s filesystem with debootstrap (once, ~30 s)", emulation.debian_arch, profile.debian_suite)
    command = [
        "debootstrap", f"--arch={emulation.debian_arch}", "--foreign", "--variant=minbase",
        f"--include={','.join(emulation.debian_packages)}", profile.debian_suite, str(partial), mirror,
    ]
    _run(command, options.timeout, "debootstrap", env=_sbin_env())
    unpack_included(partial, options.timeout)
    link_alternatives(partial)
    python = partial / "usr" / "bin" / f"python{profile.python}"
    if not python.exists():
        raise UserError(f"debootstrap finished but {python.name} is missing from the {profile.debian_suite} userland")
    (partial / ROOTFS_OK).write_text(f"{' '.join(command)}\n")
    partial.rename(root)
    return root


def unpack_included(root: Path, timeout: float) -> None:
    """Unpacks the ``--include``d packages (python3 and its libraries) into ``root``.

    The first stage unpacks only the required set; the rest it merely downloads,
    for the second stage, which needs the emulated system and minutes.  Their
    files are all the probe needs, so unpack them from the host.
    """
    debpaths = dict(
        line.split(maxsplit=1) for line in (root / "debootstrap" / "debpaths").read_text().splitlines() if line
    )
    for package in (root / "debootstrap" / "base").read_text().split():
        deb = root / debpaths[package].lstrip("/")
        # Not `dpkg-deb -x`: its tar replaces the merged-/usr links (lib -> usr/lib)
        # with real folders, and the loader is then missing from /lib.
        script = 'set -o pipefail; dpkg-deb --fsys-tarfile "$1" | tar -x --keep-directory-symlink -C "$2"'
        _run(["bash", "-c", script, "unpack", str(deb), str(root)], timeout, f"unpacking {deb.name}")


def link_alternatives(root: Path) -> None:
    """Creates the BLAS/LAPACK links that update-alternatives would (Debian's numpy needs them)."""
    for library in root.glob("usr/lib/*-linux-*/*/lib*.so.3"):
        if library.parent.name in ("blas", "lapack"):
            link = library.parent.parent / library.name
            if not link.exists() and not link.is_symlink():
                link.symlink_to(f"{library.parent.name}/{library.name}")


def write_cpuinfo(root: Path, profile: Profile) -> None:
    """Writes an ARM /proc/cpuinfo for ``profile`` into the root filesystem."""
    cpu = CPU_MODELS[profile.cpu]
    cores = []
    for index in range(4):
        lines = [f"processor\t: {index}"]
        if cpu.model_name:
            lines.append(f"model name\t: {cpu.model_name}")
        lines += [
            "BogoMIPS\t: 108.00",
            f"Features\t: {cpu.features}",
            "CPU implementer\t: 0x41",
            f"CPU architecture: {cpu.architecture}",
            f"CPU variant\t: {cpu.variant}",
            f"CPU part\t: {cpu.part}",
            f"CPU revision\t: {cpu.revision}",
        ]
        cores.append("\n".join(lines))
    footer = f"Hardware\t: BCM2835\nModel\t\t: {profile.title}\n"
    proc = root / "proc"
    if proc.is_symlink():  # debootstrap links ROOT/proc to the host's /proc in some containers
        proc.unlink()
    proc.mkdir(exist_ok=True)
    cpuinfo = proc / "cpuinfo"
    if cpuinfo.is_symlink():
        cpuinfo.unlink()
    cpuinfo.write_text("\n\n".join(cores) + "\n\n" + footer)


# --- wheels and the fuselite source ------------------------------------------------


def board_requirements(profile: Profile) -> list[str]:
    """What pip installs for the board: the runtime plus fuselite's base dependencies.

    On armv7 only the runtime's own wheel: numpy comes from Debian there.
    """
    runtime = list(profile.runtime_spec.requirements)
    if not EMULATIONS[profile.architecture].wheels_with_deps:
        return [r for r in runtime if not r.startswith("numpy")]
    return runtime + base_requirements(profile, runtime)


def base_requirements(profile: Profile, runtime: list[str]) -> list[str]:
    """fuselite's own dependencies with markers evaluated for the board, minus the runtime's."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always vendors it
        from pip._vendor.packaging.requirements import Requirement
    environment = {
        "platform_machine": profile.architecture,
        "python_version": profile.python,
        "python_full_version": f"{profile.python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    packages = {Requirement(r).name for r in runtime}
    base = []
    for text in metadata.requires("fuselite") or []:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        if requirement.name not in packages:
            base.append(str(requirement).split(";")[0].strip())
    return base


def site_dir(profile: Profile, emulation: Emulation, options: VerifyOptions) -> Path:
    """Where the board's wheels are installed; the name changes with the requirements."""
    requirements = board_requirements(profile)
    key = hashlib.sha256(json.dumps([requirements, profile.python, emulation.wheel_arch]).encode()).hexdigest()
    return rootfs_dir(profile, options.cache_dir).parent / f"site-{key[:12]}"


def ensure_site(profile: Profile, emulation: Emulation, options: VerifyOptions) -> Path:
    """Returns the cached site-packages of the board's wheels, installing them if needed."""
    requirements = board_requirements(profile)
    site = site_dir(profile, emulation, options)
    if (site / SITE_OK).exists():
        return site
    partial = site.with_name(site.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [
        sys.executable, "-m", "pip", "install", "--target", str(partial),
        "--only-binary=:all:", "--python-version", profile.python, "--implementation", "cp",
        *[arg for tag in emulation.pip_platforms() for arg in ("--platform", tag)],
        *([] if emulation.wheels_with_deps else ["--no-deps"]),
        *PIP_QUIET, *requirements,
    ]
    log.info("installing %s wheels for Python %s: %s", emulation.wheel_arch, profile.python, " ".join(requirements))
    _run(command, options.timeout, "pip install of the board's wheels", hint="check the network to the package index")
    (partial / SITE_OK).write_text("\n".join(requirements) + "\n")
    shutil.rmtree(site, ignore_errors=True)
    partial.rename(site)
    return site


def installed_version(site: Path, package: str) -> str:
    """The version of ``package`` installed in ``site`` (a ``pip --target`` folder)."""
    for dist in metadata.distributions(path=[str(site)]):
        if dist.metadata["Name"].lower().replace("_", "-") == package.lower().replace("_", "-"):
            return dist.version
    raise UserError(f"{package} is missing from {site}; delete that folder and verify again")


def host_requirements(profile: Profile, board_site: Path) -> list[str]:
    """The board's wheels pinned to the versions it got (numpy: the runtime's range)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement
    spec = profile.runtime_spec
    pinned = [f"{spec.package}=={installed_version(board_site, spec.package)}"]
    for text in board_requirements(profile):
        name = Requirement(text).name
        if name != spec.package:
            pinned.append(f"{name}=={installed_version(board_site, name)}")
    # armv7 takes numpy from Debian, not from the wheels: keep the runtime's range.
    pinned += [r for r in spec.requirements if r.startswith("numpy") and "numpy" not in " ".join(pinned)]
    return pinned


def host_site_dir(profile: Profile, board_site: Path, cache_dir: Path) -> Path:
    """Where this host's reference wheels for ``profile`` are cached."""
    key = hashlib.sha256(json.dumps(host_requirements(profile, board_site)).encode()).hexdigest()[:12]
    return cache_dir / f"host-{platform.machine()}" / f"site-{key}"


def ensure_host_site(profile: Profile, board_site: Path, options: VerifyOptions) -> Path:
    """Installs, for this host, the very runtime version the board got; returns the folder.

    The reference must run the same interpreter build: int8 kernels of different
    releases may round differently (tflite-runtime 2.14 and ai-edge-litert 2.3
    differ by one step on some int8 outputs).
    """
    requirements = host_requirements(profile, board_site)
    machine = platform.machine()
    site = host_site_dir(profile, board_site, options.cache_dir)
    if (site / SITE_OK).exists():
        return site
    partial = site.with_name(site.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "--target", str(partial), "--only-binary=:all:",
               *PIP_QUIET, *requirements]
    log.info("installing the host's reference runtime: %s", " ".join(requirements))
    _run(command, options.timeout, f"pip install of {' '.join(requirements)} for this host ({machine})",
         hint=f"the host's Python must be one that {profile.runtime_spec.name} has wheels for "
         f"({profile.runtime_spec.python})")
    (partial / SITE_OK).write_text("\n".join(requirements) + "\n")
    shutil.rmtree(site, ignore_errors=True)
    partial.rename(site)
    return site


def copy_fuselite(target: Path) -> Path:
    """Copies the pure-Python parts a board runs (contract, runtime, devices) to ``target``."""
    import fuselite

    shutil.rmtree(target, ignore_errors=True)
    package = target / "fuselite"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "tools")
    shutil.copytree(Path(fuselite.__file__).parent, package, ignore=ignore)
    for sub in ("runtime", "devices"):
        module = __import__(f"fuselite.{sub}", fromlist=["__path__"])
        shutil.copytree(Path(next(iter(module.__path__))), package / sub, ignore=ignore, dirs_exist_ok=True)
    return target


# --- running and comparing ---------------------------------------------------------


def _probe_args(options: VerifyOptions, out: Path) -> list[str]:
    return [
        "-m", "fuselite.devices.probe", "--bundle", str(Path(options.bundle).resolve()),
        "--out", str(out), "--frames", str(options.frames), "--seed", str(options.seed),
        "--threads", str(options.threads),
    ]


def run_host_probe(options: VerifyOptions, source: Path, host_site: Path, out: Path) -> None:
    """Runs the probe natively with this Python, on the reference runtime only.

    ``-S`` keeps this environment's own packages (another interpreter, numpy 2)
    out of the way; the cwd is a scratch folder because with ``-m`` Python puts
    the working folder first on sys.path.
    """
    env = {**_base_env(out), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env["PYTHONPATH"] = f"{source}{os.pathsep}{host_site}"
    command = [sys.executable, "-S", *_probe_args(options, out)]
    _run(command, options.timeout, "the host probe", env=env, cwd=out.parent)


def _base_env(out: Path) -> dict:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(out.parent),
        "LANG": "C.UTF-8",
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def run_board_probe(
    profile: Profile, emulation: Emulation, root: Path, site: Path, source: Path,
    options: VerifyOptions, out: Path,
) -> None:
    """Runs the probe with the board's Python under qemu-user."""
    qemu = shutil.which(emulation.qemu, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin"]))
    env = {**_base_env(out), "PYTHONPATH": f"{source}{os.pathsep}{site}"}
    python = root / "usr" / "bin" / f"python{profile.python}"
    command = [qemu, "-cpu", profile.cpu, "-L", str(root), str(python), *_probe_args(options, out)]
    _run(command, options.timeout, f"the probe under {emulation.qemu}", env=env, cwd=out.parent)


def compare_outputs(host_dir: Path, board_dir: Path) -> list[Comparison]:
    """Compares every output: integer dtypes bit-exact, float within 1e-5."""
    rows = []
    host_names = {p.name for p in host_dir.glob("*.npy")}
    board_names = {p.name for p in board_dir.glob("*.npy")}
    for name in sorted(host_names ^ board_names):
        side = "board" if name in host_names else "host"
        rows.append(Comparison(name, f"missing on the {side}", (), float("inf"), 0.0, False))
    for name in sorted(host_names & board_names):
        host = np.load(host_dir / name, allow_pickle=False)
        board = np.load(board_dir / name, allow_pickle=False)
        exact = np.issubdtype(host.dtype, np.integer)
        tolerance = 0.0 if exact else FLOAT_TOLERANCE
        if host.shape != board.shape or host.dtype != board.dtype:
            rows.append(Comparison(name, f"{host.dtype}/{board.dtype}", host.shape, float("inf"), tolerance, False))
            continue
        diff = float(np.max(np.abs(host.astype(np.float64) - board.astype(np.float64)))) if host.size else 0.0
        rows.append(Comparison(name, str(host.dtype), host.shape, diff, tolerance, diff <= tolerance))
    return rows


def _read_info(directory: Path) -> dict:
    return json.loads((directory / probe.INFO).read_text())


def _sbin_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([env.get("PATH", ""), "/usr/sbin", "/sbin"])
    return env


def _run(
    command: list, timeout: float, what: str, env: dict | None = None, hint: str = "", cwd: Path | None = None,
) -> None:
    """Runs ``command`` with a timeout; UserError with its last output lines on failure."""
    log.debug("running %s", " ".join(map(str, command)))
    try:
        done = subprocess.run(
            command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"{what} did not finish within {timeout:.0f} s; raise --timeout or check the network") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise UserError(f"{what} failed (exit {done.returncode}): {tail}" + (f"; {hint}" if hint else ""))
