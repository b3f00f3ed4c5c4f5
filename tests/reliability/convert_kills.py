"""``kill -9`` a conversion at random moments; no partial bundle may ever be left behind.

    python tests/reliability/convert_kills.py RUN_DIR --kills 10 --variants fp32 int8

Times one full conversion first, then starts ``fuselite convert`` again and again and
SIGKILLs it at a uniformly random moment of that duration; every other attempt starts
from an empty folder, the others over the previous bundles.  After every kill, each
``*.tflite`` in the folder must pass ``read_bundle`` (old or new, never partial) and
``convert-report.json``, if present, must be valid JSON; leftover temporary files
(hidden ``.*.part``) are counted.  A last, uninterrupted conversion must remove them and
write good bundles.  Prints a Markdown table; exit code 1 on any partial bundle.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from reliability_support import fuselite_command, machine_description, quiet_env

from fuselite.bundle import BundleError, read_bundle


def convert(run_dir: Path, out: Path, variants: list[str], kill_after: float | None = None):
    """Runs a conversion; returns (exit code, seconds). SIGKILLs it after ``kill_after`` s."""
    args = [run_dir, "--out", out, "--variants", *variants, "--eval-samples", 100,
            "--calibration-samples", 100, "--threads", 1]
    started = time.monotonic()
    process = subprocess.Popen(fuselite_command("convert", *args), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=quiet_env())
    try:
        process.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    return process.returncode, time.monotonic() - started


def inspect(out: Path, before: dict[str, int]) -> dict:
    """The output folder: good bundles (``new`` or ``old``), partial bundles, leftovers."""
    good, partial = [], []
    for path in sorted(out.glob("*.tflite")):
        try:
            read_bundle(path)
            age = "old" if before.get(path.name) == path.stat().st_mtime_ns else "new"
            good.append(f"{path.name} ({age})")
        except BundleError as exc:
            partial.append(f"{path.name}: {exc}")
    report = out / "convert-report.json"
    if report.exists():
        try:
            json.loads(report.read_text())
        except ValueError:
            partial.append("convert-report.json is not valid JSON")
    leftovers = sorted(p.name for p in out.glob(".*.part"))
    return {"good": good, "partial": partial, "leftovers": leftovers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished `fuselite train` run")
    parser.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/../kills)")
    parser.add_argument("--variants", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    out = args.out or args.run_dir.parent / "kills"
    rng = random.Random(args.seed)
    code, full = convert(args.run_dir, out, args.variants)
    if code != 0:
        raise SystemExit(f"the uninterrupted conversion failed (exit {code})")
    rows = []
    for i in range(args.kills):
        if i % 2 == 0:
            shutil.rmtree(out)
            out.mkdir()
        before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tflite")}
        at = rng.uniform(0.5, 0.95 * full)
        code, _ = convert(args.run_dir, out, args.variants, kill_after=at)
        rows.append({"kill": i + 1, "at_s": round(at, 1), "exit": code,
                     "fresh_folder": i % 2 == 0, **inspect(out, before)})
    code, _ = convert(args.run_dir, out, args.variants)
    final = {"exit": code, **inspect(out, {})}
    print(f"one conversion: {full:.1f} s\n")
    print("| kill | at (s) | folder | exit | good bundles | partial bundles | temp leftovers |")
    print("| ---: | ---: | --- | ---: | --- | --- | ---: |")
    for r in rows:
        folder = "empty" if r["fresh_folder"] else "previous bundles"
        print(f"| {r['kill']} | {r['at_s']} | {folder} | {r['exit']} | "
              f"{', '.join(r['good']) or '-'} | "
              f"{'; '.join(r['partial']) or 'none'} | {len(r['leftovers'])} |")
    print(f"\nafter a last uninterrupted conversion: exit {final['exit']}, good {final['good']}, "
          f"partial {final['partial'] or 'none'}, leftovers {final['leftovers'] or 'none'}")
    bad = any(r["partial"] for r in rows) or final["partial"] or final["leftovers"] or final["exit"]
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
            "conversion_seconds": round(full, 1), "kills": rows, "final": final}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
