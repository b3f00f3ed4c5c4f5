"""Damaged bundles made from a good one, and a runner that loads each through ``fuselite run``.

A bundle is a TFLite flatbuffer followed by a zip (``core/bundle.py``).  The
families of damage, each a function ``(seed, rng, count) -> [Case]``:

==================  ===============================================================
truncate            the file cut at interesting and at random offsets
flip-model          bit flips in the flatbuffer (the sha256 check must catch them)
flip-zip            bit flips anywhere in the appended zip
flip-manifest       bit flips in the manifest's compressed bytes inside the zip
manifest-text       bit flips in the manifest JSON text, re-zipped with a good CRC
manifest-field      every field missing, of a wrong type, out of range or oversize
members             zip member names with ``../`` or ``/``, missing, duplicate,
                    encrypted or unknown-compression members, symlink entries
oversize            manifest over 4 MB, zip bombs, lying sizes, 10,000+ labels
embeddings          label_embeddings.npy of wrong dtype/shape, NaN, pickled objects
tokenizer           tokenizer.json of wrong types, sizes, ids beyond the text tower
junk                files that are not bundles at all; a folder, a FIFO, /dev/zero
resigned-model      flatbuffer damage with the sha256 recomputed (``pack_bundle``),
                    so that the damaged flatbuffer reaches the interpreter
resigned-text       the same for the text encoder (typed labels load it)
crafted-model       structurally valid flatbuffers with one semantic defect each
                    (tensor indices, shapes, quantization, buffers), re-signed
crafted-text        the same defects in the text encoder
==================  ===============================================================

:func:`run_case` runs ``fuselite run --bundle CASE --source FOLDER`` in a fresh working
folder and classifies the end: ``loaded`` (exit 0, every image annotated),
``rejected`` (exit 2, one ``fuselite run: error:`` line, no traceback), or a
finding: ``crash`` (killed by a signal), ``bug`` (traceback, exit 1), ``unclear``
(exit 2 without one clear line) or ``hang``.  It also lists every file the run
created or changed outside its working folder (``strays``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import re
import signal
import struct
import subprocess
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from reliability_support import error_lines, fuselite_command, quiet_env

from fuselite.bundle import (
    EMBEDDINGS_MEMBER,
    LABEL_SOURCE_MEMBERS,
    MANIFEST_MEMBER,
    TEXT_ENCODER_MEMBER,
    TOKENIZER_MEMBER,
    Bundle,
    pack_bundle,
    read_bundle,
)

# Planted in every escaping member name, so a file written outside can be found by name.
ESCAPE_TOKEN = "fuselite-fuzz-escape"
# Typed labels that are no bundle label of either seed, so the text encoder really runs.
TYPED_LABELS = "red and blue,a large star"
OK_VERDICTS = ("loaded", "rejected")
VERDICT_NAME = re.compile(r"[0-9a-f]{64}\.json")  # the runtime's load-probe cache entries


@dataclass(frozen=True)
class Case:
    """One damaged bundle.

    Attributes:
        name: Unique, readable name (``truncate@1234``).
        family: Which family made it.
        data: The file's bytes (``None`` for a ``special`` path).
        special: A path that is not a plain file: ``directory``, ``fifo``, ``sparse``
            (600 MB of holes), ``devzero`` (symlink to /dev/zero) or ``missing``.
        labels: Typed labels for ``--labels`` (they make the runtime load the text encoder).
    """

    name: str
    family: str
    data: bytes | None = None
    special: str | None = None
    labels: str | None = None


@dataclass(frozen=True)
class Seed:
    """The good bundle every case starts from, taken apart.

    Attributes:
        data: The whole file.
        bundle: It, read and verified.
        model: The flatbuffer at the start of the file.
        members: The zip members, in their order.
        manifest: The manifest as a plain JSON document.
    """

    data: bytes
    bundle: Bundle
    model: bytes
    members: dict[str, bytes]
    manifest: dict

    @classmethod
    def read(cls, path: Path) -> Seed:
        """Reads a good bundle (``read_bundle`` must accept it)."""
        bundle = read_bundle(Path(path))
        data = Path(path).read_bytes()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = {info.filename: zf.read(info) for info in zf.infolist()}
        manifest = json.loads(members[MANIFEST_MEMBER])
        return cls(data, bundle, bundle.model_bytes, members, manifest)

    @property
    def zip_offset(self) -> int:
        """Where the zip starts (the flatbuffer's length)."""
        return len(self.model)

    def repack(self, replace: dict[str, bytes] | None = None, *, model: bytes | None = None,
               drop: Iterable[str] = (), extra: Iterable[tuple[str, bytes]] = (),
               compression: int = zipfile.ZIP_DEFLATED) -> bytes:
        """The flatbuffer then a zip of the members, some replaced, dropped or added."""
        replace, drop = replace or {}, set(drop)
        members = [(n, replace.get(n, d)) for n, d in self.members.items() if n not in drop]
        return (self.model if model is None else model) + zip_bytes([*members, *extra], compression)

    def with_manifest(self, document) -> bytes:
        """The bundle with another manifest document (any JSON value, NaN allowed)."""
        return self.repack({MANIFEST_MEMBER: json.dumps(document).encode()})

    def resigned(self, model: bytes | None = None, text_encoder: bytes | None = None) -> bytes:
        """Re-packed by :func:`fuselite.bundle.pack_bundle`, so the checksums match the new parts."""
        b = self.bundle
        return pack_bundle(
            model_bytes=b.model_bytes if model is None else model, manifest=b.manifest,
            tokenizer=b.tokenizer, label_embeddings=b.label_embeddings,
            text_encoder_bytes=b.text_encoder_bytes if text_encoder is None else text_encoder,
        )


def fingerprint(bundle: Bundle) -> str:
    """A digest of everything that decides a bundle's answers (not provenance or numerics)."""
    m = bundle.manifest
    decisive = (m.task, m.labels, m.thresholds, m.default_threshold, m.embedding_dim,
                m.logit_scale, m.logit_bias, m.preprocessing, bundle.tokenizer.to_dict())
    digest = hashlib.sha256(repr(decisive).encode())
    for part in (bundle.model_bytes, bundle.label_embeddings.tobytes(), bundle.text_encoder_bytes):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def zip_bytes(members: Iterable[tuple[str | zipfile.ZipInfo, bytes]],
              compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive of ``members`` (duplicate names are kept, as an attacker could)."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=compression) as zf:
        for name, data in members:
            with _quiet_duplicates():
                zf.writestr(name, data)
    return archive.getvalue()


@contextlib.contextmanager
def _quiet_duplicates():
    """Silences zipfile's "Duplicate name" warning: duplicates are made on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def flip_bits(data: bytes, rng: random.Random, start: int, end: int, flips: int) -> bytes:
    """``data`` with ``flips`` random bits flipped in ``[start, end)``."""
    out = bytearray(data)
    for _ in range(flips):
        position = rng.randrange(start, end)
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out)


# --- random families -------------------------------------------------------------------


def truncations(seed: Seed, rng: random.Random, count: int) -> list[Case]:
    """The file cut at the edges of its parts, then at random offsets."""
    size, zip_at = len(seed.data), seed.zip_offset
    edges = [0, 1, 4, 8, 16, 64, zip_at - 1, zip_at, zip_at + 1, zip_at + 30, size - 22, size - 1]
    offsets = sorted(set(edges) | {rng.randrange(1, size) for _ in range(count)})
    return [Case(f"truncate@{n}", "truncate", seed.data[:n]) for n in offsets[: max(count, 1)]]


def model_flips(seed: Seed, rng: random.Random, count: int) -> list[Case]:
    """Bit flips inside the flatbuffer: the sha256 in the manifest no longer matches."""
    return [
        Case(f"flip-model#{i}", "flip-model",
             flip_bits(seed.data, rng, 0, seed.zip_offset, rng.randint(1, 8)))
        for i in range(count)
    ]


def zip_flips(seed: Seed, rng: random.Random, count: int) -> list[Case]:
    """Bit flips anywhere in the zip: headers, compressed members, the central directory."""
    return [
        Case(f"flip-zip#{i}", "flip-zip",
             flip_bits(seed.data, rng, seed.zip_offset, len(seed.data), rng.randint(1, 8)))
        for i in range(count)
    ]


def manifest_flips(seed: Seed, rng: random.Random, count: int) -> list[Case]:
    """Bit flips in the manifest's compressed bytes (a broken deflate stream or a bad CRC)."""
    start, end = _member_data_span(seed.data, MANIFEST_MEMBER)
    return [
        Case(f"flip-manifest#{i}", "flip-manifest",
             flip_bits(seed.data, rng, start, end, rng.randint(1, 4)))
        for i in range(count)
    ]


def _member_data_span(data: bytes, name: str) -> tuple[int, int]:
    """``[start, end)`` of one member's compressed bytes inside ``data``."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(name)  # header_offset already counts the flatbuffer before the zip
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_length + extra_length
    return start, start + info.compress_size


def _central_entry(data: bytes, name: str) -> int:
    """Offset of ``name``'s entry in the central directory."""
    end = data.rfind(b"PK\x05\x06")
    size, _offset = struct.unpack_from("<II", data, end + 12)
    position = end - size
    while position < end:
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, position + 28)
        if data[position + 46 : position + 46 + name_length] == name.encode():
            return position
        position += 46 + name_length + extra_length + comment_length
    raise KeyError(name)


def manifest_text_flips(seed: Seed, rng: random.Random, count: int) -> list[Case]:
    """Bit flips in the manifest's JSON text, re-zipped so the zip itself is sound."""
    text = seed.members[MANIFEST_MEMBER]
    return [
        Case(f"manifest-text#{i}", "manifest-text",
             seed.repack({MANIFEST_MEMBER: flip_bits(text, rng, 0, len(text), rng.randint(1, 3))}))
        for i in range(count)
    ]


def damaged_flatbuffer(model: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random kind of damage to a flatbuffer: ``(kind, damaged bytes)``."""
    data = bytearray(model)
    kind = rng.choice(("flip", "byte", "int32", "zeros", "random", "cut"))
    position = rng.randrange(8, len(data) - 4)
    if kind == "flip":
        return kind, flip_bits(model, rng, 8, len(model), rng.randint(1, 4))
    if kind == "byte":
        data[position] = rng.randrange(256)
    elif kind == "int32":
        value = rng.choice((0, 1, 0x7F, 0x80, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF))
        data[position & ~3 : (position & ~3) + 4] = value.to_bytes(4, "little")
    elif kind in ("zeros", "random"):
        length = min(rng.randint(4, 64), len(data) - position)
        data[position : position + length] = (
            bytes(length) if kind == "zeros" else rng.randbytes(length)
        )
    else:
        del data[rng.randrange(16, len(data)) :]
    return kind, bytes(data)


def resigned_models(seed: Seed, rng: random.Random, count: int) -> list[Case]:
    """Flatbuffer damage with the sha256 recomputed: the interpreter gets the damaged model."""
    cases = []
    for i in range(count):
        kind, model = damaged_flatbuffer(seed.model, rng)
        cases.append(Case(f"resigned-model#{i}:{kind}", "resigned-model", seed.resigned(model=model)))
    return cases


def resigned_text_encoders(seed: Seed, rng: random.Random, count: int) -> list[Case]:
    """The same for the text encoder, with typed labels so that the runtime loads it."""
    cases = []
    for i in range(count):
        kind, model = damaged_flatbuffer(seed.bundle.text_encoder_bytes, rng)
        cases.append(Case(f"resigned-text#{i}:{kind}", "resigned-text",
                          seed.resigned(text_encoder=model), labels=TYPED_LABELS))
    return cases


# --- catalogues: every listed defect, sampled when a count is given ----------------------

WRONG_VALUES = (
    ("null", None), ("true", True), ("text", "x"), ("-1", -1), ("0", 0), ("1e30", 10**30),
    ("nan", math.nan), ("inf", math.inf), ("list", [1, 2]), ("object", {"a": 1}),
)


def manifest_field_cases(seed: Seed) -> list[Case]:
    """Every manifest field missing or of each wrong kind, then targeted ranges and sizes."""
    cases = []

    def add(name: str, change: Callable[[dict], object]) -> None:
        document = copy.deepcopy(seed.manifest)
        change(document)
        cases.append(Case(f"manifest:{name}", "manifest-field", seed.with_manifest(document)))

    for key in sorted(seed.manifest):
        add(f"missing-{key}", lambda d, k=key: d.pop(k))
        for label, value in WRONG_VALUES:
            add(f"{key}={label}", lambda d, k=key, v=value: d.__setitem__(k, v))
    for key in sorted(seed.manifest["preprocessing"]):
        add(f"missing-preprocessing.{key}", lambda d, k=key: d["preprocessing"].pop(k))
        for label, value in WRONG_VALUES:
            add(f"preprocessing.{key}={label}",
                lambda d, k=key, v=value: d["preprocessing"].__setitem__(k, v))
    for name, change in _targeted_manifest_changes(seed).items():
        add(name, change)
    for name, document in _other_manifest_documents(seed).items():
        data = document if isinstance(document, bytes) else json.dumps(document).encode()
        cases.append(Case(f"manifest:{name}", "manifest-field", seed.repack({MANIFEST_MEMBER: data})))
    return cases


def _set(path: str, value) -> Callable[[dict], None]:
    """A change that sets ``a.b`` to ``value``."""
    *parents, last = path.split(".")

    def change(document: dict) -> None:
        for part in parents:
            document = document[part]
        document[last] = value

    return change


def _targeted_manifest_changes(seed: Seed) -> dict[str, Callable[[dict], None]]:
    m = seed.manifest
    n, size = len(m["labels"]), m["model_size"]
    return {
        "labels-empty": _set("labels", []),
        "labels-10001": lambda d: d.update(labels=[f"l{i}" for i in range(10001)],
                                           thresholds=[0.5] * 10001),
        "label-empty-text": _set("labels", [""] + m["labels"][1:]),
        "label-201-chars": _set("labels", ["x" * 201] + m["labels"][1:]),
        "label-not-text": _set("labels", [7] + m["labels"][1:]),
        "labels-duplicate": _set("labels", [m["labels"][0]] * n),
        "thresholds-one-short": _set("thresholds", m["thresholds"][:-1]),
        "threshold-1.5": _set("thresholds", [1.5] * n),
        "threshold-negative": _set("thresholds", [-0.1] * n),
        "threshold-text": _set("thresholds", ["0.5"] * n),
        "default_threshold-2": _set("default_threshold", 2),
        "embedding_dim-4097": _set("embedding_dim", 4097),
        "embedding_dim-mismatch": _set("embedding_dim", m["embedding_dim"] - 1),
        "logit_scale-huge": _set("logit_scale", 1e308),
        "logit_bias-tiny": _set("logit_bias", -1e308),
        "model_size-minus-1": _set("model_size", size - 1),
        "model_size-plus-1": _set("model_size", size + 1),
        "model_size-whole-file": _set("model_size", len(seed.data)),
        "model_size-2^63": _set("model_size", 2**63),
        "model_sha256-of-nothing": _set("model_sha256", hashlib.sha256(b"").hexdigest()),
        "model_sha256-empty-and-size-0": lambda d: d.update(
            model_size=0, model_sha256=hashlib.sha256(b"").hexdigest()),
        "schema_version-2": _set("schema_version", 2),
        "schema_version-text": _set("schema_version", "1"),
        "schema_version-float": _set("schema_version", 1.0),
        "task-other": _set("task", "both"),
        "variant-1MB": _set("variant", "v" * 1_000_000),
        "unknown-field": _set("future_field", {"x": 1}),
        "input_size-0": _set("preprocessing.input_size", [0, 0]),
        "input_size-7": _set("preprocessing.input_size", [7, 7]),
        "input_size-1025": _set("preprocessing.input_size", [1025, 1025]),
        "input_size-16-mismatch": _set("preprocessing.input_size", [16, 16]),
        "input_size-one-number": _set("preprocessing.input_size", [32]),
        "input_size-three-numbers": _set("preprocessing.input_size", [32, 32, 3]),
        "input_size-floats": _set("preprocessing.input_size", [32.0, 32.0]),
        "input_size-texts": _set("preprocessing.input_size", ["32", "32"]),
        "color_order-BGR": _set("preprocessing.color_order", "BGR"),
        "color_order-lowercase": _set("preprocessing.color_order", "rgb"),
        "resize-cubic": _set("preprocessing.resize", "cubic"),
        "input_dtype-float16": _set("preprocessing.input_dtype", "float16"),
        "input_dtype-float32": _set("preprocessing.input_dtype", "float32"),
        "normalization-inf": _set("preprocessing.normalization", [math.inf, 0]),
        "normalization-one": _set("preprocessing.normalization", [1]),
        "input_quant-zero-scale": _set("preprocessing.input_quant", [0, 0]),
        "input_quant-negative-scale": _set("preprocessing.input_quant", [-1, 0]),
        "input_quant-fraction-zero-point": _set("preprocessing.input_quant", [1, 0.5]),
        "input_quant-tiny-scale": _set("preprocessing.input_quant", [1e-45, 0]),
        "input_quant-huge-zero-point": _set("preprocessing.input_quant", [1, 10**20]),
        "output_quant-null": _set("preprocessing.output_quant", None),
        "output_quant-tiny-scale": _set("preprocessing.output_quant", [1e-45, 0]),
        "output_quant-huge-zero-point": _set("preprocessing.output_quant", [1, 10**20]),
    }


def _with_raw(manifest: dict, key: str, raw: bytes) -> bytes:
    """The manifest's JSON with the value of ``key`` replaced by raw JSON text ``raw``
    (for values ``json.dumps`` refuses to write: 5,000-digit numbers, 100,000-deep lists)."""
    document = dict(manifest, **{key: "@@RAW@@"})
    return json.dumps(document).encode().replace(b'"@@RAW@@"', raw)


def _other_manifest_documents(seed: Seed) -> dict[str, object]:
    text = seed.members[MANIFEST_MEMBER]
    duplicate = text.replace(b'"task": "multi"', b'"task": "multi", "task": "both"')
    return {
        "top-level-list": [seed.manifest], "top-level-null": None, "top-level-number": 3,
        "empty": b"", "not-json": b"{labels: [red]}", "not-utf8": b"\xff\xfe{}",
        "utf8-bom": b"\xef\xbb\xbf" + text, "duplicate-keys": duplicate,
        "nested-list-1M-deep": b"[" * 1_000_000 + b"]" * 1_000_000,
        "model_size-5000-digits": _with_raw(seed.manifest, "model_size", b"9" * 5000),
        "provenance-nested-100k": _with_raw(seed.manifest, "provenance",
                                            b"[" * 100_000 + b"]" * 100_000),
        "numerics-nested-100k": _with_raw(seed.manifest, "numerics",
                                          b"{\"a\":" * 100_000 + b"1" + b"}" * 100_000),
    }


def member_cases(seed: Seed) -> list[Case]:
    """Zip member names that try to leave the folder, and members missing, doubled or odd."""
    cases = []
    escaping = (f"../{ESCAPE_TOKEN}", f"../../{ESCAPE_TOKEN}", f"/tmp/{ESCAPE_TOKEN}",
                f"a/../../{ESCAPE_TOKEN}", f"..\\{ESCAPE_TOKEN}", f"./../{ESCAPE_TOKEN}")
    for i, name in enumerate(escaping):
        cases.append(Case(f"members:extra-{i}:{name}", "members",
                          seed.repack(extra=[(name, b"escaped")])))
    for required in (MANIFEST_MEMBER, *LABEL_SOURCE_MEMBERS["text_encoder"]):
        cases.append(Case(f"members:missing-{required}", "members", seed.repack(drop=[required])))
        renamed = {n: d for n, d in seed.members.items() if n != required}
        renamed[f"../{required}"] = seed.members[required]
        cases.append(Case(f"members:dotdot-{required}", "members",
                          seed.model + zip_bytes(renamed.items())))
        cases.append(Case(f"members:second-{required}-garbage", "members",
                          seed.repack(extra=[(required, b"\x00garbage")])))
    cases += [
        Case("members:unknown-extra", "members", seed.repack(extra=[("README.txt", b"hello")])),
        Case("members:stored", "members", seed.repack(compression=zipfile.ZIP_STORED)),
        Case("members:bzip2", "members", seed.repack(compression=zipfile.ZIP_BZIP2)),
        Case("members:lzma", "members", seed.repack(compression=zipfile.ZIP_LZMA)),
        Case("members:manifest-is-a-directory", "members",
             seed.repack(drop=[MANIFEST_MEMBER], extra=[(MANIFEST_MEMBER + "/", b"")])),
        Case("members:manifest-symlink-to-etc-passwd", "members", _symlink_manifest(seed)),
        Case("members:manifest-encrypted-flag", "members",
             _patched_member(seed, MANIFEST_MEMBER, flag_bits=0x1)),
        Case("members:manifest-unknown-compression", "members",
             _patched_member(seed, MANIFEST_MEMBER, method=99)),
        Case("members:manifest-broken-deflate", "members", _broken_deflate(seed)),
    ]
    return cases


def _symlink_manifest(seed: Seed) -> bytes:
    info = zipfile.ZipInfo(MANIFEST_MEMBER)
    info.external_attr = (0o120777 << 16)  # a symlink entry, as `zip --symlinks` writes it
    members = [(n, d) for n, d in seed.members.items() if n != MANIFEST_MEMBER]
    return seed.model + zip_bytes([(info, b"/etc/passwd"), *members])


def _patched_member(seed: Seed, name: str, flag_bits: int | None = None,
                    method: int | None = None) -> bytes:
    """The bundle with one member's flags or compression method changed in both headers."""
    data = bytearray(seed.data)
    with zipfile.ZipFile(io.BytesIO(seed.data)) as zf:
        local = zf.getinfo(name).header_offset
    # Local header: flags at +6, method at +8; central entry: flags at +8, method at +10.
    for offset in (local + 6, _central_entry(seed.data, name) + 8):
        if flag_bits is not None:
            struct.pack_into("<H", data, offset, flag_bits)
        if method is not None:
            struct.pack_into("<H", data, offset + 2, method)
    return bytes(data)


def _broken_deflate(seed: Seed) -> bytes:
    """The manifest's deflate stream with a block of an invalid type (zlib refuses it)."""
    start, _ = _member_data_span(seed.data, MANIFEST_MEMBER)
    data = bytearray(seed.data)
    data[start] = 0x07  # BFINAL=1, BTYPE=11: "invalid block type"
    return bytes(data)


def oversize_cases(seed: Seed) -> list[Case]:
    """Members too big to read, bombs, sizes that lie, the most labels allowed and one more."""
    padded = seed.members[MANIFEST_MEMBER][:-1] + b" " * (5 * 2**20) + b"}"
    bomb = np.zeros((70 * 2**20 // 4,), np.float32)
    return [
        Case("oversize:manifest-5MB-deflated", "oversize", seed.repack({MANIFEST_MEMBER: padded})),
        Case("oversize:manifest-5MB-stored", "oversize",
             seed.repack({MANIFEST_MEMBER: padded}, compression=zipfile.ZIP_STORED)),
        Case("oversize:manifest-lies-about-size", "oversize", _lying_size(seed, padded)),
        Case("oversize:embeddings-70MB-bomb", "oversize",
             seed.repack({EMBEDDINGS_MEMBER: _npy(bomb)})),
        Case("oversize:text-encoder-70MB-bomb", "oversize",
             seed.repack({TEXT_ENCODER_MEMBER: bytes(70 * 2**20)})),
        Case("oversize:labels-10000", "oversize", _many_labels(seed, 10_000)),
        Case("oversize:labels-10001", "oversize", _many_labels(seed, 10_001)),
        Case("oversize:tokenizer-200k-words", "oversize", _big_vocabulary(seed, 200_000),
             labels=TYPED_LABELS),
    ]


def _lying_size(seed: Seed, manifest: bytes) -> bytes:
    """A 5 MB manifest whose central directory entry claims 100 bytes."""
    data = seed.repack({MANIFEST_MEMBER: manifest}, compression=zipfile.ZIP_STORED)
    patched = bytearray(data)
    struct.pack_into("<I", patched, _central_entry(data, MANIFEST_MEMBER) + 24, 100)
    return bytes(patched)


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=allow_pickle)
    return out.getvalue()


def _many_labels(seed: Seed, count: int) -> bytes:
    """A bundle with ``count`` labels (and embeddings to match): the most allowed is 10,000."""
    b = seed.bundle
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(count, b.manifest.embedding_dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    manifest = dataclasses.replace(
        b.manifest, labels=tuple(f"label {i}" for i in range(count)), thresholds=(0.5,) * count
    )
    return pack_bundle(model_bytes=b.model_bytes, manifest=manifest, tokenizer=b.tokenizer,
                       label_embeddings=embeddings, text_encoder_bytes=b.text_encoder_bytes)


def _big_vocabulary(seed: Seed, words: int) -> bytes:
    tokenizer = json.loads(seed.members[TOKENIZER_MEMBER])
    tokenizer["vocab"] = tokenizer["vocab"][:2] + [f"w{i:06d}" for i in range(words)] + \
        tokenizer["vocab"][2:]
    return seed.repack({TOKENIZER_MEMBER: json.dumps(tokenizer).encode()})


class _Payload:
    """Unpickling this creates ``path``: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickled_embeddings(seed: Seed, marker: Path) -> bytes:
    """A bundle whose label_embeddings.npy is a pickled object array that creates ``marker``."""
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(str(marker))
    return seed.repack({EMBEDDINGS_MEMBER: _npy(payload, allow_pickle=True)})


def embeddings_cases(seed: Seed) -> list[Case]:
    """label_embeddings.npy of the wrong dtype, shape, byte order or content."""
    e = seed.bundle.label_embeddings
    header_garbage = bytearray(_npy(e))
    header_garbage[10:20] = b"garbage!!!"
    variants = {
        "float64": e.astype(np.float64), "float16": e.astype(np.float16),
        "big-endian": e.astype(">f4"), "int32": e.astype(np.int32), "nan": e * np.nan,
        "inf": np.full_like(e, np.inf), "one-row-short": e[:-1],
        "transposed": np.ascontiguousarray(e.T), "flat": e.reshape(-1), "scalar": np.float32(1),
        "fortran-order": np.asfortranarray(e), "structured": np.zeros(len(e), "f4,f4"),
    }
    cases = [Case(f"embeddings:{k}", "embeddings", seed.repack({EMBEDDINGS_MEMBER: _npy(v)}))
             for k, v in variants.items()]
    raw = {"garbage-header": bytes(header_garbage), "empty": b"", "not-npy": b"\x93NUMPY",
           "huge-shape": _npy(e)[:8] + _huge_shape_header(), "pickled-object":
           pickled_embeddings(seed, Path(f"/tmp/{ESCAPE_TOKEN}-unpickled"))}
    for name, value in raw.items():
        data = value if name == "pickled-object" else seed.repack({EMBEDDINGS_MEMBER: value})
        cases.append(Case(f"embeddings:{name}", "embeddings", data))
    return cases


def _huge_shape_header() -> bytes:
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 8), }"
    header += b" " * (63 - len(header) % 64) + b"\n"
    return struct.pack("<H", len(header)) + header + bytes(16)


def tokenizer_cases(seed: Seed) -> list[Case]:
    """tokenizer.json broken in type, size or content; some with typed labels to use it."""
    good = json.loads(seed.members[TOKENIZER_MEMBER])
    vocab = good["vocab"]
    documents = {
        "not-json": b"{", "list": [], "type-bpe": {**good, "type": "bpe"},
        "no-vocab": {k: v for k, v in good.items() if k != "vocab"},
        "vocab-numbers": {**good, "vocab": list(range(len(vocab)))},
        "vocab-without-pad": {**good, "vocab": vocab[2:]},
        "max_length-0": {**good, "max_length": 0}, "max_length-257": {**good, "max_length": 257},
        "max_length-text": {**good, "max_length": "4"},
        "max_length-true": {**good, "max_length": True},
        "max_length-mismatch": {**good, "max_length": good["max_length"] + 1},
        "ids-beyond-the-text-tower": {**good, "vocab": vocab[:2] + [f"w{i}" for i in range(100)]
                                      + vocab[2:]},
    }
    cases = []
    for name, document in documents.items():
        data = document if isinstance(document, bytes) else json.dumps(document).encode()
        cases.append(Case(f"tokenizer:{name}", "tokenizer", seed.repack({TOKENIZER_MEMBER: data}),
                          labels=TYPED_LABELS))
    return cases


def junk_cases(seed: Seed) -> list[Case]:
    """Files that are not bundles, and paths that are not regular files."""
    rng = random.Random(0)
    zip_part = seed.data[seed.zip_offset :]
    cases = [
        Case("junk:empty", "junk", b""), Case("junk:one-byte", "junk", b"\x00"),
        Case("junk:random-4k", "junk", rng.randbytes(4096)),
        Case("junk:tfl3-header-only", "junk", b"\x1c\x00\x00\x00TFL3" + bytes(8)),
        Case("junk:zip-without-model", "junk", zip_part),
        Case("junk:garbage-then-zip", "junk", rng.randbytes(len(seed.model)) + zip_part),
        Case("junk:bundle-twice", "junk", seed.data + seed.data),
        Case("junk:bundle-then-garbage", "junk", seed.data + rng.randbytes(100)),
        Case("junk:plain-zip", "junk", zip_bytes([("a.txt", b"a")])),
    ]
    for special in ("directory", "fifo", "sparse", "devzero", "missing"):
        cases.append(Case(f"junk:{special}", "junk", special=special))
    return cases


def crafted_model_cases(seed: Seed) -> list[Case]:
    """One semantic defect per case in an otherwise valid image model, re-signed."""
    from flatbuffer_defects import defects

    return [Case(f"crafted:{name}", "crafted-model", seed.resigned(model=model))
            for name, model in defects(seed.model)]


def crafted_text_cases(seed: Seed) -> list[Case]:
    """The same for the text encoder, with typed labels so that the runtime loads it."""
    from flatbuffer_defects import defects

    return [Case(f"crafted-text:{name}", "crafted-text", seed.resigned(text_encoder=model),
                 labels=TYPED_LABELS)
            for name, model in defects(seed.bundle.text_encoder_bytes)]


RANDOM_FAMILIES: dict[str, Callable[[Seed, random.Random, int], list[Case]]] = {
    "truncate": truncations,
    "flip-model": model_flips,
    "flip-zip": zip_flips,
    "flip-manifest": manifest_flips,
    "manifest-text": manifest_text_flips,
    "resigned-model": resigned_models,
    "resigned-text": resigned_text_encoders,
}
CATALOGUES: dict[str, Callable[[Seed], list[Case]]] = {
    "manifest-field": manifest_field_cases,
    "members": member_cases,
    "oversize": oversize_cases,
    "embeddings": embeddings_cases,
    "tokenizer": tokenizer_cases,
    "junk": junk_cases,
    "crafted-model": crafted_model_cases,
    "crafted-text": crafted_text_cases,
}
FAMILIES = (*RANDOM_FAMILIES, *CATALOGUES)
# Families whose damage never reaches the interpreter: read_bundle must refuse it.
BEFORE_INTERPRETER = tuple(f for f in FAMILIES if f not in
                           ("resigned-model", "resigned-text", "crafted-model", "crafted-text"))


# One case of every defect class found so far (see docs/reliability.md): always part of a
# sample, so that a sampled run meets each of them whatever the seed.
REGRESSION_CASES = (
    "members:manifest-broken-deflate",
    "members:manifest-encrypted-flag",
    "members:manifest-unknown-compression",
    "manifest:provenance-nested-100k",
    "embeddings:empty",
    "embeddings:huge-shape",
    "embeddings:garbage-header",
    "tokenizer:ids-beyond-the-text-tower",
    "crafted:tensor0:scale-zero",
    "crafted:tensor6:zero-point-out-of-range",
    "crafted:buffer2:no-data",
)


def make_cases(seed: Seed, rng_seed: int, per_family: int,
               families: Iterable[str] = FAMILIES, sample_catalogues: bool = True,
               always: Iterable[str] = REGRESSION_CASES) -> list[Case]:
    """``per_family`` cases of each random family, and of each catalogue (all of them when
    ``sample_catalogues`` is false) plus the catalogue cases named in ``always``.

    The same ``rng_seed`` gives the same cases.
    """
    rng = random.Random(rng_seed)
    always = set(always)
    cases: list[Case] = []
    for family in families:
        if family in RANDOM_FAMILIES:
            cases += RANDOM_FAMILIES[family](seed, rng, per_family)
            continue
        catalogue = CATALOGUES[family](seed)
        if sample_catalogues and per_family < len(catalogue):
            kept = [c for c in catalogue if c.name in always]
            rest = [c for c in catalogue if c.name not in always]
            catalogue = kept + rng.sample(rest, max(0, per_family - len(kept)))
        cases += catalogue
    return cases


# --- running a case ----------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How one case ended.

    Attributes:
        case: The case's name.
        family: Its family.
        verdict: ``loaded``, ``rejected``, ``crash``, ``bug``, ``unclear``, ``hang``, or
            ``wrong`` (it loaded a bundle that decides exactly like the seed, yet
            answered differently).
        returncode: The exit code (negative: the signal), ``None`` after a hang.
        message: The error line, or the last line of a traceback.
        seconds: Wall time of the subprocess.
        strays: Files created or changed outside the run's folder.
        answers: The labels reported for each frame, when it loaded.
    """

    case: str
    family: str
    verdict: str
    returncode: int | None
    message: str
    seconds: float
    strays: tuple[str, ...] = ()
    answers: tuple[tuple[str, ...], ...] = ()

    @property
    def ok(self) -> bool:
        """A clear error or a correct load, and nothing written elsewhere."""
        return self.verdict in OK_VERDICTS and not self.strays


class Sandbox:
    """Folders for a fuzz run: one per case (bundle + working folder), a source, HOME, TMPDIR.

    Every case runs with its working folder as cwd, and HOME and TMPDIR inside the sandbox;
    :meth:`strays` then lists whatever appeared or changed anywhere else in the sandbox.
    The one place the runtime may write is its load-probe verdict cache
    (``HOME/.cache/fuselite/load-probe``, shared by the cases as a board's runs share it),
    and only verdict files named by a sha256 digest.
    """

    def __init__(self, root: Path, source: Path) -> None:
        self.root = Path(root)
        self.source = Path(source)
        self.cases = self.root / "cases"
        self.home, self.tmp = self.root / "home", self.root / "tmp"
        self.verdicts = self.home / ".cache" / "fuselite" / "load-probe"
        self.expected_frames = sum(1 for p in self.source.iterdir() if p.is_file())
        for folder in (self.cases, self.home, self.tmp, self.verdicts.parent):
            folder.mkdir(parents=True, exist_ok=True)
        self._known_cases: set[str] = set()
        # (fingerprint, answers) of the seed: a case that decides the same must answer the same.
        self.reference: tuple[str, tuple] | None = None
        self._before = self._outside_listing()
        self._tmp_before = set(os.listdir("/tmp"))

    def _outside_listing(self) -> dict[str, tuple[int, int]]:
        listing = {}
        for folder in (self.root, self.source):
            for path in _walk(folder, skip=self.cases):
                if not path.is_relative_to(self.verdicts):
                    listing[str(path)] = _signature(path)
        return listing

    def odd_verdicts(self) -> list[str]:
        """Entries of the verdict cache that are not a whole verdict file (a leftover
        temporary file, a folder, anything named otherwise)."""
        if not self.verdicts.is_dir():
            return []
        return [str(p) for p in self.verdicts.iterdir()
                if not (p.is_file() and VERDICT_NAME.fullmatch(p.name))]

    def prepare(self, case: Case) -> tuple[Path, Path]:
        """Writes the case's bundle; returns ``(bundle path, working folder)``."""
        slug = _slug(case.name)
        self._known_cases.add(slug)
        folder = self.cases / slug
        work = folder / "run"
        work.mkdir(parents=True)
        bundle = folder / "bundle.fuselite"
        write_case(case, bundle)
        return bundle, work

    def case_strays(self, bundle: Path, work: Path, before: dict) -> list[str]:
        """Changes in the case's folder besides ``run/events.jsonl``."""
        strays = [p for p, sig in _listing(bundle.parent, skip=work).items()
                  if before.get(p) != sig]
        strays += [p for p in before if not os.path.lexists(p)]
        strays += [str(p) for p in work.iterdir() if p.name != "events.jsonl"]
        return sorted(set(strays))

    def strays(self) -> list[str]:
        """Anything new or changed in the sandbox outside the case folders, or named like an
        escaping zip member in /tmp or above the sandbox."""
        after = self._outside_listing()
        found = [p for p, sig in after.items() if self._before.get(p) != sig]
        found += self.odd_verdicts()
        found += [str(p) for p in self.cases.iterdir() if p.name not in self._known_cases]
        for folder in (Path("/tmp"), self.root.parent, self.root.parent.parent):
            found += [str(p) for p in folder.glob(f"*{ESCAPE_TOKEN}*")]
        return sorted(set(found))

    def new_tmp_entries(self) -> list[str]:
        """Entries added to /tmp since the sandbox was made (other processes may add some)."""
        return sorted(set(os.listdir("/tmp")) - self._tmp_before)


def _walk(folder: Path, skip: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        if Path(dirpath) == skip:
            dirnames[:] = []
            continue
        yield Path(dirpath)
        for name in filenames:
            yield Path(dirpath) / name


def _listing(folder: Path, skip: Path) -> dict[str, tuple[int, int]]:
    return {str(p): _signature(p) for p in _walk(folder, skip)}


def _signature(path: Path) -> tuple[int, int]:
    stat = path.lstat()
    return (stat.st_size, stat.st_mtime_ns) if not path.is_dir() else (0, 0)


def _slug(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_.#@" else "_" for c in name)[:80]
    return f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def write_case(case: Case, path: Path) -> None:
    """Puts the case at ``path``: its bytes, or the special kind of path it names."""
    if case.special is None:
        path.write_bytes(case.data)
    elif case.special == "directory":
        path.mkdir()
    elif case.special == "fifo":
        os.mkfifo(path)
    elif case.special == "sparse":
        with open(path, "wb") as f:
            f.truncate(600 * 2**20)
    elif case.special == "devzero":
        path.symlink_to("/dev/zero")
    elif case.special != "missing":
        raise ValueError(f"unknown special case {case.special!r}")


def run_case(case: Case, sandbox: Sandbox, timeout: float = 60.0) -> Outcome:
    """Runs ``fuselite run`` on the case in a subprocess and classifies how it ended."""
    bundle, work = sandbox.prepare(case)
    before = _listing(bundle.parent, skip=work)
    args = ["--bundle", bundle, "--source", sandbox.source, "--jsonl", "events.jsonl",
            "--threads", 1, "--stats-interval", 0]
    if case.labels:
        args += ["--labels", case.labels]
    env = quiet_env(HOME=str(sandbox.home), TMPDIR=str(sandbox.tmp),
                    XDG_CACHE_HOME=str(sandbox.home / ".cache"))
    for name in ("FUSELITE_CACHE_DIR", "FUSELITE_LOAD_PROBE"):  # the probe runs, in the sandbox
        env.pop(name, None)
    started = time.monotonic()
    answers: tuple = ()
    try:
        done = subprocess.run(fuselite_command("run", *args), cwd=work, env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        verdict, code, message = "hang", None, f"no exit after {timeout:.0f} s"
    else:
        verdict, message = classify(done.returncode, done.stderr, work / "events.jsonl")
        code = done.returncode
        answers = _answers(work / "events.jsonl") if verdict == "loaded" else ()
        if verdict == "loaded" and len(answers) != sandbox.expected_frames:
            verdict = "bug"
            message = f"{len(answers)} of {sandbox.expected_frames} frames reached the events"
        elif (verdict == "loaded" and case.labels is None
              and _decides_like(sandbox.reference, bundle, answers) is False):
            verdict, message = "wrong", f"answered {answers}, the seed {sandbox.reference[1]}"
    seconds = round(time.monotonic() - started, 2)
    strays = tuple(sandbox.case_strays(bundle, work, before))
    return Outcome(case.name, case.family, verdict, code, message, seconds, strays, answers)


def _decides_like(reference: tuple[str, tuple] | None, bundle: Path, answers: tuple) -> bool | None:
    """Whether a bundle that decides like the seed answered like it (None: not comparable)."""
    if reference is None or _fingerprint_of(bundle) != reference[0]:
        return None
    return answers == reference[1]


def _fingerprint_of(path: Path) -> str | None:
    try:
        return fingerprint(read_bundle(path))
    except Exception:  # noqa: BLE001 - not comparable; the subprocess verdict stands
        return None


def classify(returncode: int, stderr: str, events: Path) -> tuple[str, str]:
    """``(verdict, message)`` for a finished ``fuselite run``."""
    lines = error_lines(stderr)
    last = lines[-1] if lines else ""
    if returncode < 0:
        return "crash", f"killed by {signal.Signals(-returncode).name}"
    if "Traceback" in stderr:
        return "bug", last
    if returncode == 2:
        clear = last.startswith("fuselite run: error: ")
        return ("rejected" if clear else "unclear"), last
    if returncode == 0:
        annotated = len(_answers(events))
        return ("loaded", f"{annotated} frames annotated") if annotated else ("bug", "no events")
    return "bug", f"exit {returncode}: {last}"


def _answers(events: Path) -> tuple[tuple[str, ...], ...]:
    if not events.exists():
        return ()
    records = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    return tuple(tuple(label["label"] for label in r["labels"])
                 for r in records if r.get("type") == "annotation")


def run_cases(cases: list[Case], sandbox: Sandbox, workers: int = 2,
              timeout: float = 60.0) -> list[Outcome]:
    """Runs every case, ``workers`` subprocesses at a time; outcomes in case order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: run_case(c, sandbox, timeout), cases))


def in_process_verdict(case: Case, path: Path) -> tuple[str, str]:
    """``read_bundle`` alone, in this process: ``("loaded"|"rejected"|"bug", message)``."""
    from fuselite.bundle import BundleError

    write_case(case, path)
    try:
        read_bundle(path)
    except BundleError as exc:
        return "rejected", str(exc).splitlines()[0][:200]
    except Exception as exc:  # noqa: BLE001 - anything else is the finding
        return "bug", f"{type(exc).__name__}: {str(exc)[:200]}"
    return "loaded", ""


def summary_table(outcomes: list[Outcome]) -> str:
    """Markdown: one row per family with the count of each verdict."""
    verdicts = ("loaded", "rejected", "crash", "bug", "unclear", "hang", "wrong")
    rows = ["| family | cases | " + " | ".join(verdicts) + " | strays |",
            "| --- | ---: | " + " | ".join("---:" for _ in verdicts) + " | ---: |"]
    families = sorted({o.family for o in outcomes}, key=FAMILIES.index)
    for family in [*families, "all"]:
        group = [o for o in outcomes if family in ("all", o.family)]
        counts = [sum(o.verdict == v for o in group) for v in verdicts]
        strays = sum(bool(o.strays) for o in group)
        rows.append(f"| {family} | {len(group)} | " + " | ".join(map(str, counts))
                    + f" | {strays} |")
    return "\n".join(rows)


def findings(outcomes: list[Outcome]) -> list[Outcome]:
    """The outcomes that are not a clear error or a correct load."""
    return [o for o in outcomes if not o.ok]
