"""The large bundle fuzz: every family of damage, each case loaded by ``fuselite run`` in its
own subprocess.

    python tests/reliability/fuzz_bundles.py --bundle bundles/int8.tflite --json fuzz.json

Random families get ``--per-family`` cases each; catalogues (manifest fields, zip members,
oversize parts, embeddings, tokenizer, junk, crafted flatbuffers) are run whole.  Each
case runs with its own working folder, HOME and TMPDIR inside a sandbox; afterwards the
sandbox, /tmp and the folders above it are checked for anything written outside the
run's folder.  Prints a Markdown table per family and every finding; exit code 1 when
any case crashed, hung, ended unclearly or wrote elsewhere.  Without ``--bundle`` it
builds the int8 colour test bundle (``tests/support/bundles.py``, needs TensorFlow).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from bundle_fuzz import (
    FAMILIES,
    Case,
    Sandbox,
    Seed,
    findings,
    fingerprint,
    make_cases,
    run_cases,
    summary_table,
)
from reliability_support import machine_description, write_colour_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="the good bundle to damage")
    parser.add_argument("--seed", type=int, default=1, help="seeds the random families")
    parser.add_argument("--per-family", type=int, default=40)
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a hang")
    parser.add_argument("--keep", type=Path, help="keep the sandbox in this (new) folder")
    parser.add_argument("--json", type=Path, help="write every outcome here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        root = args.keep or Path(tmp)
        bundle = args.bundle or _build_bundle(Path(tmp))
        started = time.monotonic()
        outcomes, strays, new_tmp = fuzz(bundle, root, args)
        seconds = time.monotonic() - started
    print(summary_table(outcomes))
    print(f"\n{len(outcomes)} cases in {seconds:.0f} s; written outside a run's folder: "
          f"{strays or 'nothing'}; new entries in /tmp during the run (any process): "
          f"{len(new_tmp)}")
    bad = findings(outcomes)
    for kind, names in _grouped(bad).items():
        print(f"\n{len(names)} x {kind}\n    e.g. " + ", ".join(names[:6]))
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine_description(), "date": time.strftime("%Y-%m-%d"),
            "bundle": str(args.bundle or "int8 colour test bundle"), "seed": args.seed,
            "per_family": args.per_family, "seconds": round(seconds), "strays": strays,
            "table": summary_table(outcomes), "outcomes": [o.__dict__ for o in outcomes],
        }, indent=1, default=list))
    return 1 if bad or strays else 0


def fuzz(bundle: Path, root: Path, args) -> tuple[list, list[str], list[str]]:
    """Makes the cases, checks the seed itself, runs everything; returns outcomes and strays."""
    seed = Seed.read(bundle)
    cases = make_cases(seed, args.seed, args.per_family, families=args.families,
                       sample_catalogues=False)
    sandbox = Sandbox(root / "sandbox", write_colour_folder(root / "source"))
    (reference,) = run_cases([Case("seed", "seed", seed.data)], sandbox, 1, args.timeout)
    if reference.verdict != "loaded":
        raise SystemExit(f"the seed bundle itself does not run: {reference.message}")
    sandbox.reference = (fingerprint(seed.bundle), reference.answers)
    print(f"{len(cases)} cases from {bundle} ({len(seed.data)} bytes)", file=sys.stderr)
    outcomes = run_cases(cases, sandbox, args.workers, args.timeout)
    return outcomes, sandbox.strays(), sandbox.new_tmp_entries()


def _grouped(outcomes) -> dict[str, list[str]]:
    """Findings grouped by verdict and message, numbers and addresses blanked out."""
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for o in outcomes:
        message = re.sub(r"0x[0-9a-f]+|\d+", "N", o.message)[:140]
        groups[f"{o.verdict}: {message}" + (" [wrote outside]" if o.strays else "")].append(o.case)
    return dict(sorted(groups.items(), key=lambda item: -len(item[1])))


def _build_bundle(folder: Path) -> Path:
    from support.bundles import build_colour_bundles

    return build_colour_bundles(folder / "bundles")["int8"]


if __name__ == "__main__":
    sys.exit(main())
