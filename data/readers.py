"""Readers for real datasets, each returning an :class:`ImageTextData` at one image size.

Accepted sources:
    * a folder of class folders: ``root/<class>/*.{jpg,jpeg,png,bmp,webp}`` (single-label);
    * a manifest: ``.csv`` with an ``image`` (or ``path``) column, a ``tags`` column whose
      tags are separated by ``;`` and an optional ``caption`` column, or ``.jsonl`` with
      one ``{"image": ..., "tags": [...], "caption": "..."}`` object per line;
    * a COCO ``.json`` (captions and/or instances annotations);
    * the Fashion-MNIST IDX files that ``apt-get install dataset-fashion-mnist`` installs.

Images are read through :func:`fuselite.images.read_image` (regular files only, at most
``MAX_IMAGE_PIXELS`` = 50 megapixels by their header, JPEGs with their end marker), then
converted to RGB (greyscale replicated to three channels) and resized to a square
``image_size`` with ``cv2.INTER_AREA`` (no crop: the aspect ratio is not kept). An
unusable item (missing, corrupt, oversized or unreadable image, a FIFO, no tags and no
caption, a line that is not UTF-8 or not parseable or nested too deeply, a malformed CSV
record such as an unterminated quote, tags that are not texts) is skipped and recorded
in ``ImageTextData.skipped``; a source with nothing usable raises :class:`UserError`.
Nothing is ever unpickled.

Where image paths may point (``own_file``):
    * A dataset the user names on a command line (``fuselite train --data``, ``fuselite
      bench --data``) is the user's own file: :func:`read_dataset` reads it with
      ``own_file=True``, and its paths are taken as written.  A JSONL or CSV ``image``
      may be relative to the manifest's folder (``images/a.jpg``, ``../photos/a.jpg``),
      absolute (``/data/photos/a.jpg``) or start with ``~``; a COCO ``file_name`` is
      resolved the same way against the images folder (beside the JSON); a class folder's
      entries may be symlinks to files anywhere.
    * Every other caller (the readers' default, ``own_file=False``), meant for data that
      came out of an archive or a bundle (anything extracted from a zip or tar), keeps each
      path inside the dataset's folder: ``..``, absolute paths and symlinks that lead out
      are skipped with "path escapes the dataset folder", so an archive cannot pull in
      files from elsewhere on the machine.

:func:`survey_dataset` lists a source's items without decoding them and reads the image
sizes from the headers of a sample (what the trainer picks the input size from).
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fuselite.data.dataset import TASKS, ImageTextData
from fuselite.errors import UserError
from fuselite.images import header_size, read_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MANIFEST_TAG_SEPARATOR = ";"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
# Split name -> file prefix of the IDX files.
FASHION_MNIST_SPLITS = {"train": "train", "test": "t10k", "t10k": "t10k"}
ACCEPTED_SOURCES = (
    "a folder of class folders (root/<class>/*.jpg)",
    "a .csv or .jsonl manifest",
    "a COCO .json annotation file",
    "a folder with Fashion-MNIST IDX files (train-images-idx3-ubyte.gz ...)",
)
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_ESCAPES_REASON = "path escapes the dataset folder"
# Malformed CSV records tolerated before the file is refused: each one is parsed again
# from its next line, so this also bounds the work a broken file costs.
MAX_CSV_ERRORS = 100


def load_image(path: Path, image_size: int) -> np.ndarray | str:
    """uint8 ``[image_size, image_size, 3]`` RGB, or the reason the file is unusable.

    The file is checked by :func:`fuselite.images.read_image` first: a regular file, a
    known format, at most ``MAX_IMAGE_PIXELS`` pixels, a JPEG with its end marker.
    """
    bgr = read_image(path)
    if isinstance(bgr, str):
        return bgr
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (image_size, image_size), interpolation=cv2.INTER_AREA)


@dataclass
class _Collector:
    """Gathers usable items and skip reasons, then builds the dataset or explains why not."""

    image_size: int
    own_file: bool = False
    images: list[np.ndarray] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def add(self, item_id: str, image_path: Path | str, tags: list[str], caption: str) -> None:
        """Loads the image and keeps the item, or records why it was skipped."""
        if not tags and not caption:
            self.skip(item_id, "no tags and no caption")
            return
        if isinstance(image_path, str):  # a path already rejected, with its reason
            self.skip(item_id, image_path)
            return
        image = load_image(image_path, self.image_size)
        if isinstance(image, str):
            self.skip(item_id, image)
            return
        self.images.append(image)
        self.tags.append(tags)
        self.captions.append(caption)
        self.ids.append(item_id)

    def resolve(self, folder: Path, written: str) -> Path | str:
        """A path written in a manifest or COCO file, under this source's rule (``own_file``)."""
        return resolve_image_path(folder, written, confined=not self.own_file)

    def inside(self, root: Path, file: Path) -> Path | str:
        """A file found in a class folder: confined to ``root`` unless it is the user's own."""
        return Path(file) if self.own_file else path_inside(root, file)

    def skip(self, item: str, reason: str) -> None:
        """Records an unusable item."""
        self.skipped.append((item, reason))

    def finish(self, source: Path, task: str, name: str, fix: str) -> ImageTextData:
        """The dataset; UserError naming ``source`` and ``fix`` when nothing was usable."""
        if not self.images:
            why = (
                f" ({len(self.skipped)} item(s) skipped, e.g. {self.skipped[0][1]})"
                if self.skipped
                else ""
            )
            raise UserError(f"{source}: no usable items{why}; {fix}")
        data = ImageTextData(
            images=np.stack(self.images),
            tags=self.tags,
            captions=self.captions,
            ids=self.ids,
            task=task,
            name=name,
            skipped=self.skipped,
        )
        data.log_skipped(str(source))
        return data


def _require_exists(path: Path, what: str) -> Path:
    """``path`` unchanged, or a UserError when it does not exist."""
    if not path.exists():
        raise UserError(f"{path}: {what} not found; check the path")
    return path


def _class_tag(folder_name: str) -> str:
    """``"ankle_boot"`` / ``"ankle-boot"`` -> ``"ankle boot"``."""
    return " ".join(folder_name.replace("_", " ").replace("-", " ").split())


def read_folder_per_class(root: Path, image_size: int, own_file: bool = False) -> ImageTextData:
    """Single-label data from ``root/<class>/*.{jpg,png,...}``; the tag is the folder name.

    With ``own_file`` an entry may be a symlink to a file anywhere; without, it must
    resolve inside ``root`` (see the module docstring).
    """
    root = _require_exists(Path(root), "dataset folder")
    collector = _Collector(image_size, own_file)
    _folder_items(root, collector)
    fix = f"put images in one sub-folder per class, with suffixes {', '.join(IMAGE_SUFFIXES)}"
    return collector.finish(root, "single", root.name, fix)


def _folder_items(root: Path, collector: _Collector) -> None:
    """Adds every image file of every class folder of ``root``."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for class_dir in class_dirs:
        tag = _class_tag(class_dir.name)
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES and not file.name.startswith("."):
                collector.add(file.relative_to(root).as_posix(), collector.inside(root, file), [tag], "")


def _utf8_lines(path: Path, skipped: list[tuple[str, str]]) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of every UTF-8 line; other lines are recorded as skipped.

    The file is decoded line by line so one bad byte costs one item, not the whole file.
    """
    try:
        raw_lines = path.read_bytes().splitlines(keepends=True)
    except OSError as error:
        raise UserError(f"{path}: cannot read the file ({error.strerror or error})") from error
    for number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            skipped.append((f"{path.name} line {number}", "line is not valid UTF-8"))
            continue
        yield number, text.lstrip("\ufeff") if number == 1 else text


def resolve_image_path(folder: Path, written: str, confined: bool = True) -> Path | str:
    """``written`` resolved against ``folder``, or a reason if it is empty or (``confined``) escapes it.

    ``confined`` (archives, bundles): the path is resolved with symlinks followed and
    must stay inside ``folder`` whether it was written relative (``../x.png``), absolute
    (``/home/u/x.png``) or reaches outside through a symlink.  Not ``confined`` (the
    user's own manifest): relative paths are joined to ``folder``, absolute ones and a
    leading ``~`` are taken as written.
    """
    written = written.strip()
    if not written:
        return "empty image path"
    if "\x00" in written:  # no file system allows it, and os.path raises on it
        return "image path contains a NUL character"
    if not confined:
        return Path(folder) / os.path.expanduser(written)  # an absolute path replaces folder
    return path_inside(folder, Path(folder) / written)


def path_inside(folder: Path, path: Path) -> Path | str:
    """``path`` with symlinks resolved if it stays inside ``folder``, else the reason it does not."""
    base = os.path.realpath(folder)
    try:
        resolved = os.path.realpath(path)
    except (OSError, ValueError) as error:  # a symlink loop, a NUL character
        return f"cannot resolve the image path ({error})"
    if os.path.commonpath([resolved, base]) != base:
        return _ESCAPES_REASON
    return Path(resolved)


def _split_tags(value: object) -> list[str]:
    """Tags from a ``;``-separated string; blanks are dropped."""
    return [t for t in (p.strip() for p in str(value or "").split(MANIFEST_TAG_SEPARATOR)) if t]


def _jsonl_tags(value: object) -> list[str] | str:
    """Tags from a JSONL ``tags`` value (a list of texts or a ``;``-separated text), or why not.

    Anything else (``null`` in the list, numbers, objects) would turn into labels such as
    ``"None"`` or ``"3"``; the item is skipped instead of guessed at.
    """
    if value is None or isinstance(value, str):
        return _split_tags(value)
    if isinstance(value, list) and all(isinstance(tag, str) for tag in value):
        return [t for t in (tag.strip() for tag in value) if t]
    found = value if not isinstance(value, list) else next(t for t in value if not isinstance(t, str))
    return f"'tags' must be a list of texts (found {_json_kind(found)})"


def _json_kind(value: object) -> str:
    """What a JSON value is, in JSON's words (never the value: it may be nested 900 deep)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    kinds = {int: "a number", float: "a number", list: "a list", dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


class _LineCounter:
    """Feeds numbered lines to ``csv.reader`` from ``start`` on, counting the lines handed out."""

    def __init__(self, numbered: list[tuple[int, str]], start: int) -> None:
        self._numbered = numbered
        self.position = start  # index of the next line to hand out

    def __iter__(self) -> Iterator[str]:
        while self.position < len(self._numbered):
            self.position += 1
            yield self._numbered[self.position - 1][1]


def _csv_reason(error: csv.Error, lines_read: int) -> str:
    """The skip reason for a CSV record that ``csv`` refused after reading ``lines_read`` lines."""
    message = str(error)
    if message.startswith("field larger than field limit"):
        return f"a field is longer than {csv.field_size_limit()} characters"
    # A quote left open swallows the next lines until EOF or a quote that ends wrongly.
    if message.startswith("unexpected end of data") or (lines_read > 1 and "expected after" in message):
        return 'a quoted field is never closed (unterminated ")'
    return f"not a valid CSV row ({message})"


def _csv_records(path: Path, skipped: list[tuple[str, str]]) -> Iterator[tuple[int, list[str]]]:
    """(line the record starts on, fields) of every well-formed, non-blank CSV record.

    A malformed record (an unterminated quote, a field over ``csv.field_size_limit()``,
    text after a closing quote) is skipped by the line it starts on, and reading
    starts again on the next line: an unterminated quote costs its own row, never
    the rows after it.  More than :data:`MAX_CSV_ERRORS` is one clear error.
    """
    numbered = list(_utf8_lines(path, skipped))
    errors, start = 0, 0
    while start < len(numbered):
        counter = _LineCounter(numbered, start)
        reader = csv.reader(counter, strict=True)  # strict: an open quote at EOF is an error
        while True:
            first = counter.position
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                errors += 1
                reason = _csv_reason(error, counter.position - first)
                if errors > MAX_CSV_ERRORS:
                    raise UserError(f"{path}: more than {MAX_CSV_ERRORS} malformed CSV rows "
                                    f"({skipped[-1][0]}: {skipped[-1][1]}); fix the file") from None
                skipped.append((f"{path.name} line {numbered[first][0]}", reason))
                start = first + 1
                break
            if fields:
                yield numbered[first][0], fields


def _read_csv_items(path: Path, collector: _Collector) -> None:
    """Adds every row of a CSV manifest (header: image|path, tags, optional caption)."""
    records = _csv_records(path, collector.skipped)
    _line, header = next(records, (0, []))
    columns = [c.strip().lower() for c in header]
    image_column = "image" if "image" in columns else "path" if "path" in columns else None
    if image_column is None or not {"tags", "caption"} & set(columns):
        raise UserError(
            f"{path}: the CSV header must name an 'image' (or 'path') column and a 'tags'"
            f" and/or 'caption' column; found {columns}"
        )
    for line, fields in records:
        item = f"{path.name} line {line}"
        if len(fields) > len(columns):  # more fields than the header: a broken row, not a guess
            collector.skip(item, "row has more fields than the header")
            continue
        row = dict(zip(columns, fields))
        written = row.get(image_column) or ""
        tags = _split_tags(row.get("tags"))
        caption = (row.get("caption") or "").strip()
        collector.add(
            written.strip() or item, collector.resolve(path.parent, written), tags, caption
        )


GROUPS_LINE = "a tag-groups line"  # {"groups": {...}} alone on a line: read by fuselite bench


def _jsonl_entry(text: str) -> tuple[str, list[str], str] | str:
    """(image path as written, tags, caption) from one JSONL line, or why it is unusable."""
    try:
        entry = json.loads(text)
    except json.JSONDecodeError:
        return "line is not valid JSON"
    except RecursionError:
        return "line is nested too deeply"
    if not isinstance(entry, dict):
        return "line is not a JSON object"
    if set(entry) == {"groups"}:
        return GROUPS_LINE
    written = entry.get("image", entry.get("path"))
    if not isinstance(written, str):
        return "no 'image' path"
    caption = entry.get("caption") or ""
    if not isinstance(caption, str):
        return "'caption' is not a string"
    tags = _jsonl_tags(entry.get("tags"))
    if isinstance(tags, str):
        return tags
    return written, tags, caption.strip()


def _read_jsonl_items(path: Path, collector: _Collector) -> None:
    """Adds every object line of a JSONL manifest; blank lines are ignored."""
    for number, text in _utf8_lines(path, collector.skipped):
        if not text.strip():
            continue
        item = f"{path.name} line {number}"
        entry = _jsonl_entry(text)
        if entry == GROUPS_LINE:
            continue  # `fuselite bench`'s tag groups, not an item (docs/bench.md)
        if isinstance(entry, str):
            collector.skip(item, entry)
            continue
        written, tags, caption = entry
        collector.add(
            written.strip() or item, collector.resolve(path.parent, written), tags, caption
        )


def read_manifest(path: Path, image_size: int, task: str = "multi", own_file: bool = False) -> ImageTextData:
    """Images listed in a ``.csv`` or ``.jsonl`` manifest, paths relative to its folder.

    CSV tags are separated by ``;`` (commas would clash with the CSV itself). An item needs
    at least one tag or a caption. ``task`` is ``"multi"`` unless the caller knows better.
    With ``own_file`` (the user's manifest) image paths may also be absolute or lead out
    of the manifest's folder with ``..``; without, they must stay inside it.
    """
    path = _require_exists(Path(path), "manifest")
    if task not in TASKS:
        raise UserError(f"task must be one of {TASKS}, not {task!r}")
    collector = _Collector(image_size, own_file)
    _manifest_items(path, collector)
    where = "relative to the manifest, or absolute" if own_file else "inside the manifest's folder"
    fix = f"list existing images ({where}) with at least one tag or a caption"
    return collector.finish(path, task, path.stem, fix)


def _manifest_items(path: Path, collector: _Collector) -> None:
    """Adds the items of a ``.csv`` or ``.jsonl`` manifest; another suffix is a UserError."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        _read_csv_items(path, collector)
    elif suffix == ".jsonl":
        _read_jsonl_items(path, collector)
    else:
        raise UserError(f"{path}: a manifest must end in .csv or .jsonl")


def _load_json_document(path: Path) -> dict:
    """A JSON object from ``path``, or a UserError saying what is wrong with the file."""
    try:
        document = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a valid UTF-8 JSON file ({error})") from error
    except RecursionError:
        raise UserError(f"{path}: the JSON is nested too deeply to be a COCO file") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read the file ({error.strerror or error})") from error
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise UserError(f"{path}: not a COCO annotation file (needs an 'images' list)")
    return document


def _coco_list(path: Path, document: dict, key: str) -> list:
    """``document[key]`` as a list (missing or null: empty), or a UserError."""
    value = document.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise UserError(f"{path}: '{key}' must be a list, not {type(value).__name__}")
    return value


def _coco_id(value: object) -> bool:
    """True for a usable COCO id: a number or a text (lists and objects cannot be looked up)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _coco_categories(path: Path, document: dict) -> dict[object, str]:
    """Category id -> name; entries without a text name and a number or text id are ignored."""
    names: dict[object, str] = {}
    ignored = 0
    for category in _coco_list(path, document, "categories"):
        name = category.get("name") if isinstance(category, dict) else None
        if isinstance(name, str) and name.strip() and _coco_id(category.get("id")):
            names[category["id"]] = name.strip()
        else:
            ignored += 1
    if ignored:
        log.warning("%s: ignored %d categories without a text 'name' and a number or text 'id'",
                    path, ignored)
    return names


def _coco_labels(path: Path, document: dict) -> tuple[dict[object, set[str]], dict[object, str]]:
    """Per image id: the category names, and the first caption in file order.

    Annotations whose ``image_id`` or ``category_id`` is not a number or text are left out.
    """
    names = _coco_categories(path, document)
    tags: dict[object, set[str]] = {}
    captions: dict[object, str] = {}
    for annotation in _coco_list(path, document, "annotations"):
        if not isinstance(annotation, dict) or not _coco_id(image_id := annotation.get("image_id")):
            continue
        caption = annotation.get("caption")
        if isinstance(caption, str) and caption.strip() and image_id not in captions:
            captions[image_id] = caption.strip()
        category = annotation.get("category_id")
        name = names.get(category) if _coco_id(category) else None
        if name:
            tags.setdefault(image_id, set()).add(name)
    return tags, captions


def read_coco(path: Path, image_size: int, images_dir: Path | None = None,
              own_file: bool = False) -> ImageTextData:
    """COCO captions and/or instances JSON: tags are category names, the caption the first one.

    Image files (``file_name``) are looked up in ``images_dir``, or beside the JSON; with
    ``own_file`` a ``file_name`` may also be absolute or lead out of that folder.
    """
    path = _require_exists(Path(path), "COCO annotation file")
    folder = _require_exists(Path(images_dir), "COCO images folder") if images_dir else path.parent
    collector = _Collector(image_size, own_file)
    _coco_items(path, folder, collector)
    fix = "check that the images are in the folder given (file_name) and have annotations"
    return collector.finish(path, "multi", path.stem, fix)


def _coco_items(path: Path, folder: Path, collector: _Collector) -> None:
    """Adds every entry of a COCO file's ``images`` list, with its tags and first caption."""
    document = _load_json_document(path)
    tags, captions = _coco_labels(path, document)
    for index, image in enumerate(document["images"]):
        item = f"images[{index}]"  # never str(image): a deeply nested entry would recurse
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str):
            collector.skip(item, "image entry has no 'file_name'")
            continue
        image_id, written = image.get("id"), image["file_name"]
        if not _coco_id(image_id):
            collector.skip(written, "image 'id' is not a number or text")
            continue
        image_tags = sorted(tags.get(image_id, ()))
        collector.add(
            written, collector.resolve(folder, written), image_tags, captions.get(image_id, "")
        )


def _read_idx(path: Path, magic: int, limit: int | None) -> tuple[np.ndarray, int]:
    """(uint8 array shaped by the IDX header, total item count) from a gzip IDX file."""
    dims = magic & 0xFF
    try:
        with gzip.open(path, "rb") as stream:
            header = stream.read(4 + 4 * dims)
            if len(header) < 4 + 4 * dims or int.from_bytes(header[:4], "big") != magic:
                raise UserError(
                    f"{path}: not a Fashion-MNIST IDX file (magic number must be {magic})"
                )
            shape = [int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
            total = shape[0]
            shape[0] = total if limit is None else min(limit, total)
            body = stream.read(int(np.prod(shape)))
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{path}: cannot read the gzip IDX file ({error}); reinstall it") from error
    if len(body) != int(np.prod(shape)):
        raise UserError(f"{path}: the file is truncated; reinstall dataset-fashion-mnist")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape), total


def _resize_grey(images: np.ndarray, image_size: int) -> np.ndarray:
    """``[N, h, w]`` grey -> ``[N, image_size, image_size, 3]`` RGB with INTER_AREA."""
    # Written straight into the 3-channel array: 60k images at 64 px are 737 MB already.
    out = np.empty((len(images), image_size, image_size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = cv2.resize(image, (image_size, image_size), interpolation=cv2.INTER_AREA)[
            ..., None
        ]
    return out


def _fashion_mnist_arrays(
    root: Path, split: str, limit: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``[N, 28, 28]`` images and ``[N]`` labels of one split, validated."""
    if not root.is_dir():
        raise UserError(
            f"{root}: Fashion-MNIST not found; run `apt-get install dataset-fashion-mnist`"
        )
    if split not in FASHION_MNIST_SPLITS:
        raise UserError(
            f"Fashion-MNIST split must be one of {sorted(FASHION_MNIST_SPLITS)}, not {split!r}"
        )
    prefix = FASHION_MNIST_SPLITS[split]
    images_path = _require_exists(
        root / f"{prefix}-images-idx3-ubyte.gz", "Fashion-MNIST images file"
    )
    labels_path = _require_exists(
        root / f"{prefix}-labels-idx1-ubyte.gz", "Fashion-MNIST labels file"
    )
    images, n_images = _read_idx(images_path, _IDX_IMAGES_MAGIC, limit)
    labels, n_labels = _read_idx(labels_path, _IDX_LABELS_MAGIC, limit)
    if n_images != n_labels:
        raise UserError(
            f"{root}: {n_images} images but {n_labels} labels; reinstall dataset-fashion-mnist"
        )
    if len(labels) == 0:
        raise UserError(f"{images_path}: no images read; reinstall it or raise the limit")
    if labels.max() >= len(FASHION_MNIST_CLASSES):
        raise UserError(f"{labels_path}: label {labels.max()} is not a Fashion-MNIST class (0-9)")
    return images, labels


def read_fashion_mnist(
    root: Path = FASHION_MNIST_DIR,
    image_size: int = 64,
    split: str = "train",
    limit: int | None = None,
) -> ImageTextData:
    """Fashion-MNIST from the gzip IDX files of Debian's ``dataset-fashion-mnist``.

    ``split`` is ``"train"`` (60k) or ``"test"`` (10k, alias ``"t10k"``); ``limit`` keeps the
    first items. Tags are the class names of :data:`FASHION_MNIST_CLASSES`; captions are empty.
    """
    images, labels = _fashion_mnist_arrays(Path(root), split, limit)
    name = "train" if FASHION_MNIST_SPLITS[split] == "train" else "test"
    return ImageTextData(
        images=_resize_grey(images, image_size),
        tags=[[FASHION_MNIST_CLASSES[label]] for label in labels],
        captions=[""] * len(labels),
        ids=[f"fashion-mnist-{name}-{i}" for i in range(len(labels))],
        task="single",
        name="fashion-mnist",
    )


def _has_class_folders(root: Path) -> bool:
    """True when some sub-folder of ``root`` holds an image file."""
    for sub in root.iterdir():
        if sub.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in sub.iterdir()):
            return True
    return False


def _source_kind(path: Path) -> str:
    """``"manifest"``, ``"coco"``, ``"fashion-mnist"`` or ``"folders"``; else a UserError listing the kinds."""
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".csv", ".jsonl"):
        return "manifest"
    if path.is_file() and suffix == ".json":
        return "coco"
    if path.is_dir() and (path / "train-images-idx3-ubyte.gz").is_file():
        return "fashion-mnist"
    if path.is_dir() and _has_class_folders(path):
        return "folders"
    raise UserError(f"{path}: not a dataset this tool reads; give {'; or '.join(ACCEPTED_SOURCES)}")


def read_dataset(source: str | Path, image_size: int, own_file: bool = True) -> ImageTextData:
    """Reads ``source`` with the reader its kind calls for (see :data:`ACCEPTED_SOURCES`).

    ``source`` is a dataset the user named on a command line, so by default its paths
    are taken as written (``own_file``; see the module docstring); pass
    ``own_file=False`` for data unpacked from an archive or a bundle.
    """
    path = _require_exists(Path(source), "dataset")
    kind = _source_kind(path)
    if kind == "manifest":
        return read_manifest(path, image_size, own_file=own_file)
    if kind == "coco":
        return read_coco(path, image_size, own_file=own_file)
    if kind == "fashion-mnist":
        return read_fashion_mnist(path, image_size, split="train")
    return read_folder_per_class(path, image_size, own_file=own_file)


@dataclass
class DataSurvey:
    """What a source holds, read without decoding a single image.

    Attributes:
        items: Items listed with a tag or a caption and a usable path (their images
            are not opened, so a few may still be skipped when read).
        sizes: ``(width, height)`` from the headers of up to ``SURVEY_SAMPLE`` of
            their images, spread evenly over the source (unreadable headers left out).
    """

    items: int
    sizes: list[tuple[int, int]]

    @property
    def short_side(self) -> int | None:
        """The median of the sampled images' shorter sides, in pixels (None: no header read)."""
        if not self.sizes:
            return None
        return int(np.median([min(size) for size in self.sizes]))


# Headers read to survey a source: enough for a stable median, a fraction of a second.
SURVEY_SAMPLE = 200
# Bytes read for a header: a JPEG's frame header follows its EXIF block (a thumbnail
# of up to 64 kB), so 256 kB covers cameras' files without reading whole photos.
HEADER_BYTES = 256 * 1024


class _PathLister(_Collector):
    """A collector that keeps the paths of usable entries instead of loading their images."""

    def __init__(self, own_file: bool) -> None:
        super().__init__(0, own_file)
        self.paths: list[Path] = []

    def add(self, item_id: str, image_path: Path | str, tags: list[str], caption: str) -> None:
        """Keeps ``image_path`` when the entry has a label and a usable path."""
        if (tags or caption) and not isinstance(image_path, str):
            self.paths.append(image_path)


def survey_dataset(source: str | Path, own_file: bool = True, sample: int = SURVEY_SAMPLE) -> DataSurvey:
    """How many items ``source`` lists and the sizes of a sample of its images (headers only)."""
    path = _require_exists(Path(source), "dataset")
    kind = _source_kind(path)
    if kind == "fashion-mnist":
        _images, total = _read_idx(path / "train-images-idx3-ubyte.gz", _IDX_IMAGES_MAGIC, 0)
        return DataSurvey(total, [(28, 28)])
    lister = _PathLister(own_file)
    if kind == "manifest":
        _manifest_items(path, lister)
    elif kind == "coco":
        _coco_items(path, path.parent, lister)
    else:
        _folder_items(path, lister)
    step = max(1, len(lister.paths) // max(1, sample))
    sizes = [size for file in lister.paths[::step][:sample] if (size := _header_dims(file))]
    return DataSurvey(len(lister.paths), sizes)


def _header_dims(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the first :data:`HEADER_BYTES` of a regular image file, or None."""
    try:
        if not path.is_file():  # a FIFO would block the read
            return None
        with open(path, "rb") as stream:
            size = header_size(stream.read(HEADER_BYTES))
    except (OSError, ValueError):
        return None
    return size if size and size[0] > 0 and size[1] > 0 else None
