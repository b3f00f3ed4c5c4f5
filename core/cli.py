"""The ``fuselite`` command line: one entry point, a subcommand per stage.

Each stage keeps its own arguments in ``<stage>/cli.py`` with two functions,
``add_arguments(parser)`` and ``run(args) -> int``.  They are imported lazily so
that ``fuselite run`` on a board never pays for (or needs) TensorFlow.

A :class:`~fuselite.errors.UserError` (or a bad option) prints one line saying
what to change and exits with code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from fuselite import __version__
from fuselite.errors import UserError

# subcommand -> (module holding add_arguments/run, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("fuselite.train.cli", "train a fused image-text model (needs the [train] extra)"),
    "convert": ("fuselite.convert.cli", "quantize/prune a trained run into TFLite bundles"),
    "import": ("fuselite.convert.importer", "wrap any TFLite image classifier as a fixed-label bundle"),
    "bench": ("fuselite.bench.cli", "measure bundles: size vs accuracy vs latency"),
    "run": ("fuselite.runtime.cli", "annotate a camera, video, stream or image folder"),
    "explain": ("fuselite.runtime.explain", "draw where a bundle sees each label in pictures (heatmap per label)"),
    "devices": ("fuselite.devices.cli", "board profiles, setup files and arm64 verification"),
    "demo": ("fuselite.demo", "run the whole chain on the embedded synthetic scenes"),
}
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str) -> None:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Builds the parser; only the ``selected`` subcommand's module is imported.

    Importing one stage only keeps ``fuselite run`` on a board free of the host
    stages (``fuselite.train``, ``fuselite.convert``) and fast to start.
    """
    parser = _Parser(prog="fuselite", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fuselite {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name != selected:
            continue
        module = _import_command(module_name)
        if module is None:
            sub.set_defaults(_missing=module_name)
            continue
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def _import_command(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("fuselite"):
            return None  # that stage is not part of this build yet
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if not hasattr(args, "_run"):
        print(f"fuselite {args.command}: not available in this install", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"fuselite {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"fuselite {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
