"""Training manifests from Debian's ``openclipart-png`` clip art (real data, no download).

``apt-get install openclipart-png`` puts ~8,000 PNGs under ``/usr/share/openclipart/png``
in a category tree (``animals/mammals/bears/...``, ``food/fruit/...``). This recipe turns
it into the JSONL manifests :func:`fuselite.data.readers.read_manifest` reads::

    python -m fuselite.data.openclipart --out DIR [--root ...] [--per-category N]
        [--seed S] [--heldout-subfolders K]

Every kept image is tagged with its CATEGORY (top folder, ``"signs and symbols"``) and,
when it has one, its SUB-CATEGORY (second folder, ``"fruit"``); its caption is made from
the file name with numbers, generic words and the author names openclipart appended
(``heart-arrow_benji_park_01.png`` -> ``"heart arrow"``) removed.

Clip art is RGBA with transparent backgrounds, and the trainer's ``load_image`` decodes
with ``cv2.IMREAD_COLOR``, which drops alpha (transparent areas show whatever colour is
stored under them, usually black). So every kept image is composited on white, shrunk
to at most :data:`MAX_SIDE` px and written as an RGB JPEG into ``DIR/images/``: any
reader then sees the same picture. Left out: symlinked copies (the real file's folder
wins), the ``unsorted`` and ``special`` folders, categories with fewer than 40 pictures,
images under 32 px, over 50 Mpx, unreadable or blank once flattened.

Written into ``DIR``:
    * ``seen.jsonl`` (every kept image), ``seen-train.jsonl`` / ``seen-test.jsonl``
      (a seeded 80/20 split stratified by sub-category);
    * ``heldout-train.jsonl`` / ``heldout-test.jsonl``: whole sub-categories held out,
      their images only in ``heldout-test`` (category top-1 on never-seen kinds of items;
      they keep their sub-category tag, a label ``heldout-train`` never shows);
    * ``summary.json``: counts, held-out sub-categories, seed and root.

The output depends only on the tree and the options: the same seed gives the same files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fuselite.errors import UserError
from fuselite.files import write_atomic

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/usr/share/openclipart/png")
INSTALL_HINT = "install Debian's openclipart-png: apt-get install openclipart-png"
DEFAULT_PER_CATEGORY = 100  # ~2,900 images from the Debian tree
DEFAULT_SEED = 0
DEFAULT_HELDOUT_SUBFOLDERS = 8
MIN_CATEGORY_IMAGES = 40  # categories with fewer pictures in the tree are dropped
MIN_HELDOUT_IMAGES = 10  # a held-out sub-category needs enough images to score
MIN_SIDE = 32  # smaller images (either side) are icons too small to learn from
MAX_SIDE = 256  # longer side of the written copies
# A few Debian files are 100-600 Mpx posters (9 s and 1.4 GB to decode one): skipped.
MAX_PIXELS = 50_000_000
# Some files are fully transparent: on white they are one flat colour, nothing to learn.
BLANK_STD = 2.0
TEST_FRACTION = 0.2
JPEG_QUALITY = 90
IMAGES_DIR = "images"
TOP_LEVEL = ""  # sub-category of images that sit directly in a category folder
# Not kinds of things: a dump of unsorted files, and gradients/patterns/page examples.
EXCLUDED_CATEGORIES = frozenset({"unsorted", "special"})
# Words that say nothing about the picture. "pt"/"step" come from shapes/stars
# ("star_95pt06step"), "bw"/"bwh" mean black-and-white versions.
_GENERIC_WORDS = "clipart clip openclipart png svg image pic bw bwh pt step none version ver remix"
GENERIC_WORDS = frozenset(_GENERIC_WORDS.split())
# openclipart appended "_<author>" to titles, truncated to 24 characters
# ("canguro_architetto_franc_01"): a trailing prefix of one of these names is removed.
_AUTHOR_NAMES = """
    architetto francesco rollandin, benji park, nicu buculei, gerald g, yves guillou,
    jon phillips, jean victor balin, sergio luiz araujo, luiz araujo, jonathan dietrich,
    dan gerhards, matthew gates, enrique meza c, frederic moser, susan park, linda kim,
    jonadab, jarno vasamaa, fudriot omic ch, petri lummemaki, patricia fidi, roman bertle,
    james kilfiger, erich schubert, charles mccolm, christoph brill, mauro olivo, nicolas cle,
    lumen design studio, stepan kliment, aj ashton, a j ashton, yen cheng, wolfram esser,
    stuart moore, stefan bazelkov, saurabh nanda, richard torkar, philippe colin,
    michael breuer, matt todd, hans deragon, gino rivera, dennis bourne, dave pena,
    cedric bosdonnat, brice boyer, anthony liekens, angelo gelmi, vladimir hernandez,
    steffen gluckselig, seth yastrov, ruud steltenpool, ralf stephan, nathan eady,
    mirjam meijer, mike honeychurch, omar abo namous, domas jonaitis, theerud law,
    daniel steele, kevin cowtan, marcelo staudt, jakob chaosi, ganson, peterm, zazou,
    mimooh, mateya, snuatautisticido, nurbl, romus, jorkon, mo, juliane krug, leigh purdie,
    graig ryan smith
"""
AUTHORS = tuple(tuple(name.split()) for name in _AUTHOR_NAMES.split(","))
MIN_TRUNCATED_AUTHOR_CHARS = 3  # shorter fragments ("a", "fr") may be real words
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_WORD = re.compile(r"[^\W\d_]+")  # letters only: digits, "_", "-", "." separate words
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ClipArt:
    """One source picture and the labels its place in the tree gives it.

    Attributes:
        source: The PNG file (a symlink is read through).
        relative: Its path below the root, ``"animals/mammals/bears/bear_01.png"``.
        category: Top folder in human words, ``"animals"``.
        subcategory: Second folder in human words, or ``""`` for a file directly in
            the category folder.
        caption: Words from the file name, ``"polar bear"``.
    """

    source: Path
    relative: str
    category: str
    subcategory: str
    caption: str

    @property
    def group(self) -> tuple[str, str]:
        """``(category, subcategory)``: the unit of capping, splitting and holding out."""
        return self.category, self.subcategory

    @property
    def tags(self) -> list[str]:
        """The category, then the sub-category when there is one."""
        return [self.category, self.subcategory] if self.subcategory else [self.category]

    @property
    def image_name(self) -> str:
        """File name of the flattened copy: the relative path made flat, ``.jpg``."""
        stem = Path(self.relative).with_suffix("").as_posix().replace("/", "__")
        return _UNSAFE_NAME_CHARS.sub("_", stem) + ".jpg"

    def manifest_entry(self) -> dict:
        """The JSONL object the trainer reads, image path relative to the manifest."""
        return {
            "image": f"{IMAGES_DIR}/{self.image_name}",
            "tags": self.tags,
            "caption": self.caption,
        }


@dataclass
class Summary:
    """What :func:`build_manifests` kept and wrote.

    Attributes:
        root: The clip-art tree read.
        out: The folder written.
        seed: Seed of the caps, the split and the held-out choice.
        per_category: Cap per (category, sub-category).
        min_category_images: Categories with fewer pictures in the tree were left out.
        counts: Kept images per category, then per sub-category (``""``: top level).
        heldout: Held-out ``(category, subcategory)`` pairs, sorted.
        manifests: Lines per manifest file name.
        dropped: Images left out, per reason.
        seconds: Wall time of the build.
    """

    root: Path
    out: Path
    seed: int
    per_category: int
    min_category_images: int
    counts: dict[str, dict[str, int]]
    heldout: list[tuple[str, str]]
    manifests: dict[str, int]
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        """Kept images."""
        return sum(sum(subs.values()) for subs in self.counts.values())

    def to_json(self) -> dict:
        """``summary.json`` content (no timing, so equal seeds give equal files)."""
        return {
            "root": str(self.root),
            "seed": self.seed,
            "per_category": self.per_category,
            "min_category_images": self.min_category_images,
            "max_side": MAX_SIDE,
            "images": self.total,
            "categories": {
                category: {
                    "images": sum(subs.values()),
                    "subcategories": {sub or "(top level)": n for sub, n in subs.items()},
                }
                for category, subs in self.counts.items()
            },
            "heldout_subfolders": [f"{c}/{s}" for c, s in self.heldout],
            "manifests": self.manifests,
            "dropped": self.dropped,
        }

    def table(self) -> str:
        """A short plain-text table: one row per category."""
        held = defaultdict(list)
        for category, sub in self.heldout:
            held[category].append(sub)
        rows = [f"{'category':<20} {'subcats':>7} {'images':>6}  held out"]
        for category, subs in self.counts.items():
            named = sum(1 for s in subs if s)
            rows.append(
                f"{category:<20} {named:>7} {sum(subs.values()):>6}  {', '.join(held[category])}"
            )
        rows.append(f"{'total':<20} {'':>7} {self.total:>6}")
        return "\n".join(rows)


def human_words(folder_name: str) -> str:
    """Folder name in human words: ``"signs_and_symbols"`` -> ``"signs and symbols"``."""
    return " ".join(folder_name.replace("_", " ").replace("-", " ").lower().split())


def name_words(stem: str) -> list[str]:
    """Lower-case words of a file name: camel case, ``_``, ``-``, ``.`` and digits split."""
    return [w.lower() for w in _WORD.findall(_CAMEL_BOUNDARY.sub(" ", stem))]


def _is_author_tail(tail: Sequence[str], author: Sequence[str]) -> bool:
    """True when ``tail`` is the start of ``author``, its last word possibly truncated."""
    if len(tail) > len(author) or list(tail[:-1]) != list(author[: len(tail) - 1]):
        return False
    last, full = tail[-1], author[len(tail) - 1]
    if last == full:
        return True
    return full.startswith(last) and sum(map(len, tail)) >= MIN_TRUNCATED_AUTHOR_CHARS


def strip_author(words: list[str]) -> list[str]:
    """``words`` without a trailing author name; at least one word is always kept."""
    for start in range(1, len(words)):  # earliest start first: the longest author match
        tail = words[start:]
        if any(_is_author_tail(tail, author) for author in AUTHORS):
            return words[:start]
    return words


def caption_from_name(stem: str, fallback: str = "") -> str:
    """A caption from a file name, or ``fallback`` when no descriptive word is left.

    ``"heart-arrow_benji_park_01"`` -> ``"heart arrow"``; ``"star_95pt06step"`` -> ``"star"``.
    """
    words = strip_author(name_words(stem))
    kept = [w for w in words if len(w) > 1 and w not in GENERIC_WORDS]
    return " ".join(kept) or fallback


def _clipart_from_path(root: Path, path: Path) -> ClipArt | None:
    """The :class:`ClipArt` for ``path``, or None for a file outside any category folder."""
    parts = path.relative_to(root).parts
    if len(parts) < 2:
        return None
    subcategory = human_words(parts[1]) if len(parts) >= 3 else TOP_LEVEL
    fallback = human_words(parts[-2])  # deepest folder, when the name says nothing
    return ClipArt(
        source=path,
        relative=Path(*parts).as_posix(),
        category=human_words(parts[0]),
        subcategory=subcategory,
        caption=caption_from_name(path.stem, fallback),
    )


def _png_files(root: Path) -> list[Path]:
    """Every ``.png`` below ``root`` (symlinks included), real files first, then by path."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder, f) for f in files if f.lower().endswith(".png")]
    return sorted(found, key=lambda p: (p.is_symlink(), p.as_posix()))


def find_clipart(root: Path, dropped: Counter | None = None) -> list[ClipArt]:
    """The pictures of the tree at ``root``, one per real file, sorted by path.

    openclipart-png links one picture into several folders; the real file's place wins.
    Left-out files are counted in ``dropped`` by reason.
    """
    dropped = Counter() if dropped is None else dropped
    root, seen, found = Path(root), set(), []
    for path in _png_files(root):
        real = os.path.realpath(path)
        if real in seen:
            dropped["duplicate (symlink)"] += 1
            continue
        seen.add(real)
        item = _clipart_from_path(root, path)
        if item is None:
            dropped["outside a category folder"] += 1
        elif item.category in EXCLUDED_CATEGORIES:
            dropped["excluded category"] += 1
        else:
            found.append(item)
    return sorted(found, key=lambda item: item.relative)


def flatten_on_white(image: np.ndarray) -> np.ndarray:
    """uint8 BGR from an OpenCV grey/BGR/BGRA array, 8 or 16 bit, alpha composited on white."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 3:
        return image
    if image.shape[2] == 2:  # grey + alpha
        grey = cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2BGR)
        image = np.concatenate([grey, image[..., 1:]], axis=2)
    # colour*a + 255*(255-a) <= 65025: exact in uint16, a third of float32's memory.
    alpha = image[..., 3:4].astype(np.uint16)
    mixed = image[..., :3].astype(np.uint16) * alpha + (255 - alpha) * 255 + 127
    return (mixed // 255).astype(np.uint8)


def shrink(image: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """``image`` scaled down (INTER_AREA) so its longer side is at most ``max_side``."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def png_size(encoded: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG header, or None when ``encoded`` is not a PNG."""
    if len(encoded) < 24 or not encoded.startswith(_PNG_SIGNATURE):
        return None
    return int.from_bytes(encoded[16:20], "big"), int.from_bytes(encoded[20:24], "big")


def _decode(path: Path) -> np.ndarray | str:
    """The picture with its alpha channel, or why it is unusable (checked before decoding)."""
    try:
        encoded = Path(path).read_bytes()
    except OSError:
        return "unreadable"
    width, height = png_size(encoded) or (0, 0)
    if width * height > MAX_PIXELS:
        return f"larger than {MAX_PIXELS // 1_000_000} Mpx"
    try:
        image = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    return "unreadable" if image is None else image


def flattened_jpeg(path: Path) -> bytes | str:
    """JPEG bytes of the picture flattened on white and shrunk, or why it is unusable."""
    image = _decode(path)
    if isinstance(image, str):
        return image
    if min(image.shape[:2]) < MIN_SIDE:
        return f"smaller than {MIN_SIDE} px"
    bgr = shrink(flatten_on_white(image))
    if float(bgr.std()) < BLANK_STD:
        return "blank (fully transparent or one colour)"
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return jpeg.tobytes() if ok else "unreadable"


def _seeded(seed: int, *key: str) -> random.Random:
    """A generator for one purpose and group: groups do not disturb each other's draws."""
    return random.Random("/".join([str(seed), *key]))


def _by_group(items: Iterable[ClipArt]) -> dict[tuple[str, str], list[ClipArt]]:
    """Items per ``(category, subcategory)``, groups sorted, items in the given order."""
    groups = defaultdict(list)
    for item in items:
        groups[item.group].append(item)
    return dict(sorted(groups.items()))


def _take_group(items: list[ClipArt], cap: int, seed: int, dropped: Counter) -> dict:
    """Up to ``cap`` usable items of one group in seeded order: item -> JPEG bytes."""
    order = sorted(items, key=lambda item: item.relative)
    _seeded(seed, "cap", *items[0].group).shuffle(order)
    taken = {}
    for item in order:
        if len(taken) == cap:
            dropped["over the per-category cap"] += 1
            continue
        jpeg = flattened_jpeg(item.source)
        if isinstance(jpeg, str):
            dropped[jpeg] += 1
        else:
            taken[item] = jpeg
    return taken


def select_images(
    items: list[ClipArt],
    per_category: int,
    seed: int,
    dropped: Counter,
    min_category_images: int = MIN_CATEGORY_IMAGES,
) -> dict[ClipArt, bytes]:
    """The kept items with their flattened JPEGs, sorted by path.

    Categories with fewer than ``min_category_images`` pictures in the tree are left out;
    every (category, sub-category) of the others keeps up to ``per_category`` usable images.
    """
    pictures = Counter(item.category for item in items)
    kept = {}
    for group, members in _by_group(items).items():
        if pictures[group[0]] < min_category_images:
            dropped[f"category with fewer than {min_category_images} images"] += len(members)
            continue
        kept.update(_take_group(members, per_category, seed, dropped))
    return dict(sorted(kept.items(), key=lambda pair: pair[0].relative))


def split_seen(
    items: list[ClipArt], seed: int, test_fraction: float = TEST_FRACTION
) -> tuple[list[ClipArt], list[ClipArt]]:
    """(train, test): a seeded split of every (category, sub-category) by file."""
    train, test = [], []
    for group, members in _by_group(items).items():
        order = sorted(members, key=lambda item: item.relative)
        _seeded(seed, "split", *group).shuffle(order)
        n_test = round(len(order) * test_fraction)
        test += order[:n_test]
        train += order[n_test:]
    return train, test


def _heldout_candidates(counts: Counter) -> dict[str, list[str]]:
    """Per category with two or more sub-categories: the ones that can be held out.

    A candidate has :data:`MIN_HELDOUT_IMAGES` images and a name no other group uses as a
    tag (``games`` is under both computer and recreation: holding out one would still
    train the tag), so its items are really unseen.
    """
    tag_uses = Counter(sub for _, sub in counts) + Counter({c for c, _ in counts})
    subs = defaultdict(list)
    for category, sub in sorted(counts):
        if sub:
            subs[category].append(sub)
    return {
        category: [
            s for s in names if counts[category, s] >= MIN_HELDOUT_IMAGES and tag_uses[s] == 1
        ]
        for category, names in subs.items()
        if len(names) >= 2
    }


def choose_heldout(items: list[ClipArt], count: int, seed: int) -> list[tuple[str, str]]:
    """Up to ``count`` whole sub-categories to hold out, at most one per category, seeded."""
    candidates = {
        c: s for c, s in _heldout_candidates(Counter(i.group for i in items)).items() if s
    }
    rng = _seeded(seed, "heldout")
    categories = sorted(candidates)
    rng.shuffle(categories)
    if count > len(categories):
        log.info("only %d categories have a sub-category to hold out", len(categories))
    return sorted((c, rng.choice(candidates[c])) for c in categories[:count])


def write_manifest(path: Path, items: Iterable[ClipArt]) -> int:
    """Writes one JSONL line per item, sorted by image path; returns the line count."""
    lines = [
        json.dumps(i.manifest_entry(), ensure_ascii=False)
        for i in sorted(items, key=lambda i: i.image_name)
    ]
    write_atomic(path, "".join(f"{line}\n" for line in lines).encode("utf-8"))
    return len(lines)


def _write_images(folder: Path, kept: dict[ClipArt, bytes]) -> None:
    """Writes the JPEGs; earlier copies no longer selected are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {item.image_name for item in kept}
    stale = [p for p in folder.glob("*.jpg") if p.name not in names]
    for path in stale:
        path.unlink()
    if stale:
        log.info("removed %d images of an earlier build from %s", len(stale), folder)
    for item, jpeg in kept.items():
        write_atomic(folder / item.image_name, jpeg)


def _write_manifests(
    out: Path, items: list[ClipArt], heldout: list[tuple[str, str]], seed: int
) -> dict[str, int]:
    """Writes the five manifests; returns lines per file name."""
    seen_train, seen_test = split_seen(items, seed)
    held = set(heldout)
    parts = {
        "seen.jsonl": items,
        "seen-train.jsonl": seen_train,
        "seen-test.jsonl": seen_test,
        "heldout-train.jsonl": [i for i in items if i.group not in held],
        "heldout-test.jsonl": [i for i in items if i.group in held],
    }
    return {name: write_manifest(out / name, part) for name, part in parts.items()}


def _counts(items: Iterable[ClipArt]) -> dict[str, dict[str, int]]:
    """Kept images per category, then per sub-category, both sorted."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for item in items:
        counts[item.category][item.subcategory] += 1
    return {category: dict(sorted(subs.items())) for category, subs in sorted(counts.items())}


def _check_options(root: Path, per_category: int, heldout_subfolders: int) -> None:
    """UserError naming the option to change, or the package to install."""
    if not root.is_dir():
        raise UserError(f"{root} not found; {INSTALL_HINT}")
    if per_category < 1:
        raise UserError(f"--per-category must be at least 1, not {per_category}")
    if heldout_subfolders < 0:
        raise UserError(f"--heldout-subfolders must be 0 or more, not {heldout_subfolders}")


def build_manifests(
    root: Path,
    out: Path,
    per_category: int = DEFAULT_PER_CATEGORY,
    seed: int = DEFAULT_SEED,
    heldout_subfolders: int = DEFAULT_HELDOUT_SUBFOLDERS,
    *,
    min_category_images: int = MIN_CATEGORY_IMAGES,
) -> Summary:
    """Reads the clip-art tree at ``root`` and writes images, manifests and summary to ``out``.

    Example::

        summary = build_manifests(DEFAULT_ROOT, Path("data/openclipart"), seed=0)
        data = read_dataset("data/openclipart/seen-train.jsonl", 96)
    """
    started = time.perf_counter()
    root, out = Path(root), Path(out)
    _check_options(root, per_category, heldout_subfolders)
    dropped: Counter = Counter()
    pictures = find_clipart(root, dropped)
    kept = select_images(pictures, per_category, seed, dropped, min_category_images)
    if not kept:
        raise UserError(f"{root}: no usable clip art (need category folders with PNGs)")
    items = list(kept)
    heldout = choose_heldout(items, heldout_subfolders, seed)
    out.mkdir(parents=True, exist_ok=True)
    _write_images(out / IMAGES_DIR, kept)
    manifests = _write_manifests(out, items, heldout, seed)
    summary = Summary(
        root=root,
        out=out,
        seed=seed,
        per_category=per_category,
        min_category_images=min_category_images,
        counts=_counts(items),
        heldout=heldout,
        manifests=manifests,
        dropped=dict(sorted(dropped.items())),
    )
    summary_text = json.dumps(summary.to_json(), indent=2, ensure_ascii=False) + "\n"
    write_atomic(out / "summary.json", summary_text.encode("utf-8"))
    summary.seconds = time.perf_counter() - started
    log.info(
        "kept %d images in %d categories (%.1f s)",
        summary.total,
        len(summary.counts),
        summary.seconds,
    )
    return summary


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = _Parser(
        prog="python -m fuselite.data.openclipart", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the clip-art tree")
    parser.add_argument(
        "--per-category",
        type=int,
        default=DEFAULT_PER_CATEGORY,
        help="cap per (category, sub-category)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--heldout-subfolders",
        type=int,
        default=DEFAULT_HELDOUT_SUBFOLDERS,
        help="whole sub-categories held out (at most one per category)",
    )
    parser.add_argument(
        "--min-category-images",
        type=int,
        default=MIN_CATEGORY_IMAGES,
        help="leave out categories with fewer pictures in the tree",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Builds the manifests and prints a summary table; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = build_manifests(
            args.root,
            args.out,
            args.per_category,
            args.seed,
            args.heldout_subfolders,
            min_category_images=args.min_category_images,
        )
    except UserError as error:
        print(f"openclipart: error: {error}", file=sys.stderr)
        return 2
    print(summary.table())
    print("manifests: " + ", ".join(f"{k} {v}" for k, v in summary.manifests.items()))
    print("dropped: " + ", ".join(f"{k} {v}" for k, v in summary.dropped.items()))
    print(f"wrote {summary.out} in {summary.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
