"""Which TFLite runtimes can load a model: its operator list against measured op tables.

A ``.tflite`` file names every operator it uses in ``Model.operator_codes``: a
builtin code with a version, or a custom op name.  An interpreter refuses the
whole model if it lacks one of them ("Didn't find op for builtin opcode
'FULLY_CONNECTED' version '12'"), so the op list decides where a bundle runs.

This module reads that list straight from the flatbuffer with the one reader of
``core/flatbuffer.py`` (:func:`fuselite.flatbuffer.read_operator_codes`), without
TensorFlow or the ``flatbuffers`` package, and checks it against the
largest op versions each runtime loads.  Those tables live in ``optables/*.json``;
their numbers were measured by ``devices/tools/probe_op_versions.py`` on the real
interpreters, and the tflite-runtime 2.14 numbers agree with TensorFlow v2.14.0's
``register.cc``.

Example:
    >>> ops = read_ops(Path("model.tflite").read_bytes())
    >>> check_ops(ops, "tflite-runtime-2.14")
    ["FULLY_CONNECTED v12 needs a newer runtime than tflite-runtime 2.14 (max v10); ..."]
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fuselite.errors import UserError
from fuselite.flatbuffer import ModelFormatError, builtin_name, read_operator_codes

OPTABLES_DIR = Path(__file__).resolve().parent / "optables"
FALLBACK_VARIANTS = "fp32 or int8"  # variants whose op versions older runtimes load


@dataclass(frozen=True, order=True)
class OpCode:
    """One entry of a model's operator list.

    Attributes:
        name: Builtin operator name (``"FULLY_CONNECTED"``), or the custom op's name.
        version: Operator version the model asks for.
        custom: True for a custom op (resolved by name, not by builtin code).
    """

    name: str
    version: int = 1
    custom: bool = False

    def __str__(self) -> str:
        if self.custom:
            return f"custom op {self.name!r}"
        return f"{self.name} v{self.version}"

    @classmethod
    def parse(cls, text: str) -> OpCode:
        """Parses the ``str()`` form back (``"CONV_2D v3"`` or ``"custom op 'X'"``)."""
        if text.startswith("custom op "):
            return cls(text[len("custom op ") :].strip("'\""), 1, custom=True)
        name, _, version = text.rpartition(" v")
        if not name or not version.isdigit():
            raise ValueError(f"not an op description: {text!r} (expected e.g. 'CONV_2D v3')")
        return cls(name, int(version))


@dataclass(frozen=True)
class RuntimeSpec:
    """A TFLite interpreter package and the op versions it loads.

    Attributes:
        key: Registry key that profiles refer to (``"tflite-runtime-2.14"``).
        name: Human name used in messages (``"tflite-runtime 2.14"``).
        package: PyPI distribution name.
        requirements: pip requirement strings a board installs for it.
        module: Import path of the module holding ``Interpreter``.
        python: Python versions its wheels exist for (a specifier).
        architectures: ``platform.machine()`` values with wheels.
        max_versions: Largest loadable version of each builtin op it has.
        min_versions: Smallest loadable version where that is not 1.
        probed: Which package build, Python and machine the table was measured on.
        note: One line on why one would pick it.
    """

    key: str
    name: str
    package: str
    requirements: tuple[str, ...]
    module: str
    python: str
    architectures: tuple[str, ...]
    max_versions: dict[str, int]
    min_versions: dict[str, int]
    probed: str
    note: str = ""


# --- reading the operator list -----------------------------------------------------


def read_ops(data: bytes) -> tuple[OpCode, ...]:
    """Returns the sorted operator list of a TFLite flatbuffer (trailing bytes are ignored).

    Raises :class:`ModelFormatError` when ``data`` is not a TFLite model.
    """
    ops = {
        OpCode(code.custom_name or "?", 1, custom=True) if code.custom
        else OpCode(builtin_name(code.code), code.version)
        for code in read_operator_codes(data)
    }
    return tuple(sorted(ops))


def read_model_ops(path: Path) -> tuple[OpCode, ...]:
    """The operator list of a ``.tflite`` file or bundle (its image model)."""
    try:
        return read_ops(Path(path).read_bytes())
    except ModelFormatError as exc:
        raise ModelFormatError(f"{path}: {exc}") from None


def bundle_ops(bundle) -> tuple[OpCode, ...]:
    """The union of the image model's and the text encoder's operator lists.

    ``bundle`` is a :class:`fuselite.bundle.Bundle`; a board loads both models (a
    zero-shot bundle has no text encoder).
    """
    text_ops = read_ops(bundle.text_encoder_bytes) if bundle.text_encoder_bytes else ()
    return tuple(sorted(set(read_ops(bundle.model_bytes)) | set(text_ops)))


# --- the runtime registry ----------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _runtimes() -> dict[str, RuntimeSpec]:
    specs = {}
    for path in sorted(OPTABLES_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        specs[data["key"]] = RuntimeSpec(
            key=data["key"],
            name=data["name"],
            package=data["package"],
            requirements=tuple(data["requirements"]),
            module=data["module"],
            python=data["python"],
            architectures=tuple(data["architectures"]),
            max_versions=dict(data["max_versions"]),
            min_versions=dict(data.get("min_versions", {})),
            probed=data["probed"],
            note=data.get("note", ""),
        )
    return specs


def list_runtimes() -> list[str]:
    """Keys of every runtime with a measured op table."""
    return sorted(_runtimes())


def get_runtime(key: str) -> RuntimeSpec:
    """The runtime named ``key``; an unknown key raises UserError (a ValueError) listing the known ones."""
    try:
        return _runtimes()[key]
    except KeyError:
        raise UserError(f"unknown runtime {key!r}; known: {', '.join(list_runtimes())}") from None


# --- checks ------------------------------------------------------------------------


def _problem(op: OpCode, spec: RuntimeSpec) -> str | None:
    """Why ``spec`` cannot load ``op``, or None when it can."""
    if op.custom:
        return f"{op} is not built into {spec.name} (it registers no custom ops)"
    top = spec.max_versions.get(op.name)
    if top is None:
        return f"{op.name} is not in {spec.name}"
    low = spec.min_versions.get(op.name, 1)
    if op.version > top:
        return f"{op} needs a newer runtime than {spec.name} (max v{top})"
    if op.version < low:
        return f"{op} is older than {spec.name} loads (v{low} to v{top})"
    return None


def check_ops(ops: Iterable[OpCode], runtime: str | RuntimeSpec) -> list[str]:
    """Problems that stop ``runtime`` loading a model with ``ops``; empty when it loads.

    Each problem is one line saying what to do instead, e.g. "FULLY_CONNECTED v12
    needs a newer runtime than tflite-runtime 2.14 (max v10); use the fp32 or int8
    variant, or ai-edge-litert 2.x".
    """
    spec = runtime if isinstance(runtime, RuntimeSpec) else get_runtime(runtime)
    problems = []
    for op in sorted(set(ops)):
        problem = _problem(op, spec)
        if problem is None:
            continue
        others = [s.name for s in _runtimes().values() if s.key != spec.key and _problem(op, s) is None]
        # A too-new version usually comes from the quantization variant; a missing op does not.
        newer = not op.custom and op.version > spec.max_versions.get(op.name, op.version)
        remedy = f"use the {FALLBACK_VARIANTS} variant" if newer else "convert without it"
        if others:
            remedy += f", or {' or '.join(others)}"
        problems.append(f"{problem}; {remedy}")
    return problems


def loadable_runtimes(ops: Iterable[OpCode]) -> dict[str, bool]:
    """Maps every runtime key to whether it loads a model with ``ops``."""
    ops = tuple(ops)
    return {key: not check_ops(ops, key) for key in list_runtimes()}


def ops_to_strings(ops: Iterable[OpCode]) -> list[str]:
    """The op list as short strings (``["CONV_2D v3", ...]``), e.g. for a manifest."""
    return [str(op) for op in sorted(set(ops))]
