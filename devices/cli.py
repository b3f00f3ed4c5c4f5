"""``fuselite devices``: list and show board profiles, check a bundle's ops, verify under
emulation, write a board's setup files.

    fuselite devices list
    fuselite devices show raspberry-pi-5
    fuselite devices check raspberry-pi-32bit --bundle model.tflite
    fuselite devices verify raspberry-pi-5 --bundle model.tflite
    fuselite devices setup-files --device raspberry-pi-5 --out raspberry-pi-5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from fuselite.bundle import BundleError, check_bundle, read_bundle
from fuselite.devices.compat import bundle_ops, check_ops, loadable_runtimes, ops_to_strings
from fuselite.devices.profiles import Profile, get_profile, list_profiles
from fuselite.devices.setup_files import SETUP_FILES, write_setup_files
from fuselite.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the list/show/check/verify/setup-files sub-subcommands."""
    sub = parser.add_subparsers(dest="devices_command", metavar="ACTION", parser_class=type(parser))
    sub.add_parser("list", help="list the board profiles")
    show = sub.add_parser("show", help="show one profile: runtime, limits, setup files")
    show.add_argument("name", metavar="NAME", help="profile name (see `fuselite devices list`)")
    check = sub.add_parser("check", help="check a bundle's op versions against a profile's runtime")
    check.add_argument("name", metavar="NAME", help="profile name")
    check.add_argument("--bundle", type=Path, required=True, help="bundle written by `fuselite convert`")
    verify = sub.add_parser("verify", help="run a bundle on the emulated board and compare with this host")
    verify.add_argument("name", metavar="NAME", help="profile name (an ARM board)")
    verify.add_argument("--bundle", type=Path, required=True, help="bundle written by `fuselite convert`")
    verify.add_argument("--frames", type=int, default=8, help="deterministic frames to compare (default 8)")
    verify.add_argument("--seed", type=int, default=0, help="seed of the frames (default 0)")
    verify.add_argument("--cache-dir", type=Path, default=None,
                        help="root filesystem and wheel cache (default ~/.cache/fuselite)")
    verify.add_argument("--mirror", default=None, help="Debian mirror URL (default: the host's apt sources)")
    verify.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per step (default 900)")
    verify.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    files = sub.add_parser("setup-files", help=f"write a board's {', '.join(SETUP_FILES)} from its profile")
    files.add_argument("--device", required=True, metavar="NAME", help="profile name (see `fuselite devices list`)")
    files.add_argument("--out", type=Path, default=None, metavar="DIR",
                       help="folder to write them to, made if missing (default: ./NAME)")


def run(args: argparse.Namespace) -> int:
    """Runs the chosen action; returns the exit code (1 when a check or verify fails)."""
    action = getattr(args, "devices_command", None)
    if action is None:
        raise UserError("choose an action: list, show NAME, check NAME --bundle FILE, "
                        "verify NAME --bundle FILE, setup-files --device NAME --out DIR")
    if action == "list":
        print(format_profile_table())
        return 0
    if action == "setup-files":
        return _setup_files(get_profile(args.device), args.out or Path(args.device))
    profile = get_profile(args.name)
    if action == "show":
        print(format_profile(profile))
        return 0
    if action == "check":
        return _check(profile, args.bundle)
    return _verify(profile, args)


def format_profile_table() -> str:
    """One line per profile: the fields that tell boards apart."""
    header = ("profile", "arch", "python", "runtime", "RAM MB", "threads", "max bundle MB", "min FPS")
    rows = [header]
    for name in list_profiles():
        p = get_profile(name)
        rows.append((p.name, p.architecture, p.python, p.runtime, str(p.ram_mb), str(p.threads),
                     f"{p.limits.max_bundle_mb:g}", f"{p.limits.min_fps:g}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def format_profile(profile: Profile) -> str:
    """Every field of ``profile``, its runtime's requirements and its setup files."""
    spec = profile.runtime_spec
    lines = [f"{profile.name}: {profile.title}"]
    for field in dataclasses.fields(profile):
        if field.name not in ("name", "title", "limits", "notes") and getattr(profile, field.name) != "":
            lines.append(f"  {field.name:<15} {getattr(profile, field.name)}")
    limits = profile.limits
    lines.append(f"  {'limits':<15} bundle <= {limits.max_bundle_mb:g} MB, >= {limits.min_fps:g} FPS, "
                 f"memory <= {limits.max_memory_mb:g} MB")
    lines.append(f"  {'install':<15} pip install fuselite {' '.join(repr(r) for r in spec.requirements)}")
    lines.append(f"  {'op table':<15} {len(spec.max_versions)} builtin ops, measured on {spec.probed}")
    lines.append(f"  {'setup files':<15} {', '.join(SETUP_FILES)}: "
                 f"fuselite devices setup-files --device {profile.name} --out DIR")
    lines.append(f"  {'notes':<15} {profile.notes}")
    return "\n".join(lines)


def _setup_files(profile: Profile, out_dir: Path) -> int:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: is a file, not a folder")
    try:
        paths = write_setup_files(profile, out_dir)
    except OSError as exc:
        raise UserError(f"--out {out_dir}: cannot write there ({exc.strerror or exc})") from None
    for path in paths:
        print(f"wrote {path}")
    print(f"next: copy {out_dir} to the board, then there: sudo ./{out_dir.name}/install.sh [FUSELITE_WHEEL]")
    return 0


def _read(path: Path, profile: Profile | None = None):
    """The bundle; with ``profile``, also its models checked against that board's RAM."""
    try:
        return read_bundle(path) if profile is None else check_bundle(path, ram_bytes=profile.ram_mb * 2**20)
    except BundleError as exc:
        raise UserError(str(exc)) from None


def _check(profile: Profile, path: Path) -> int:
    ops = bundle_ops(_read(path, profile))
    problems = check_ops(ops, profile.runtime)
    print(f"{path}: {', '.join(ops_to_strings(ops))}")
    loadable = ", ".join(f"{key} {'yes' if ok else 'no'}" for key, ok in loadable_runtimes(ops).items())
    print(f"loadable by: {loadable}")
    for problem in problems:
        print(f"  problem: {problem}")
    print(f"{'FAIL' if problems else 'PASS'}: {profile.name} ({profile.runtime_spec.name}) "
          f"{'cannot' if problems else 'can'} load {path.name}")
    return 1 if problems else 0


def _verify(profile: Profile, args: argparse.Namespace) -> int:
    from fuselite.devices.verify import VerifyOptions, default_cache_dir, verify

    if not args.bundle.is_file():
        raise UserError(f"{args.bundle}: no such bundle file")
    if args.frames < 1:
        raise UserError("--frames must be at least 1")
    options = VerifyOptions(
        bundle=args.bundle,
        cache_dir=args.cache_dir or default_cache_dir(),
        frames=args.frames,
        seed=args.seed,
        mirror=args.mirror,
        timeout=args.timeout,
    )
    _read(args.bundle)  # a broken bundle is a user error, before anything slow starts
    result = verify(profile, options)
    print(format_result(result))
    if args.json:
        args.json.write_text(json.dumps(dataclasses.asdict(result), indent=1, default=str) + "\n")
    return 0 if result.passed else 1


def format_result(result) -> str:
    """The PASS/FAIL summary of a :class:`~fuselite.devices.verify.VerifyResult`."""
    lines = []
    for problem in result.op_problems:
        lines.append(f"  op problem: {problem}")
    for c in result.comparisons:
        rule = "bit-exact" if c.tolerance == 0 else f"<= {c.tolerance:g}"
        lines.append(f"  {c.name:<22} {c.dtype:<8} {c.shape!s:<9} max |diff| {c.max_abs_diff:.3g} "
                     f"({rule}) {'ok' if c.passed else 'MISMATCH'}")
    if result.board:
        lines.append(f"  board: {result.board.get('machine')} Python {result.board.get('python')} "
                     f"{result.board.get('interpreter')} via {result.board.get('code_path')}")
        lines.append(f"  host:  {result.host.get('machine')} Python {result.host.get('python')} "
                     f"{result.host.get('interpreter')}")
    if result.timings:
        steps = ", ".join(f"{k} {v:g} s" for k, v in result.timings.items())
        lines.append(f"  time: {steps} ({'cached' if result.cached else 'cold'} filesystem)")
    verdict = "PASS" if result.passed else "FAIL"
    worst = max((c.max_abs_diff for c in result.comparisons), default=float("nan"))
    lines.append(f"{verdict}: {result.profile} {result.bundle.name}, max abs diff {worst:.3g}")
    return "\n".join(lines)
