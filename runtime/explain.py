"""``fuselite explain``: pictures of where a bundle sees each label.

For each image, one PNG: the picture, then one panel per label showing the label's
heatmap over the picture (red is likely, blue unlikely), outlined where it reaches
the label's threshold and marked at its peak, titled with the label and its score.
Labels may be any text the bundle's text encoder takes, trained or not ("green
star").  Drawn with OpenCV alone, so it runs on the board; every PNG is written to
a temporary file and renamed into place.

Example:
    fuselite explain --bundle int8.tflite photo.jpg --labels "red circle,green star" --out explained/
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np

from fuselite.errors import UserError
from fuselite.files import write_atomic
from fuselite.images import read_image
from fuselite.runtime.overlay import outline_above, upsample_heatmap
from fuselite.runtime.results import Category

log = logging.getLogger(__name__)

PANEL_HEIGHT = 256  # pixels of each panel's picture (small inputs are enlarged to it)
TITLE_HEIGHT = 30
GAP = 6
HEATMAP_WEIGHT = 0.55  # of the colour map against the darkened picture
DEFAULT_TOP = 3
WHITE, BLACK, BACKGROUND = (255, 255, 255), (0, 0, 0), (40, 40, 40)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``fuselite explain`` arguments."""
    parser.add_argument(
        "--bundle",
        type=Path,
        required=True,
        help="the bundle (.tflite written by fuselite convert)",
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="pictures to explain")
    parser.add_argument(
        "--labels",
        help='comma-separated label texts, trained or not ("red circle,green star"); '
        f"default: the {DEFAULT_TOP} best of the bundle's labels per image",
    )
    parser.add_argument(
        "--top",
        type=int,
        default=DEFAULT_TOP,
        help=f"without --labels, how many of the best labels to show (default {DEFAULT_TOP})",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for the PNGs (IMAGE-stem.explain.png)"
    )
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")


def run(args: argparse.Namespace) -> int:
    """Writes one PNG per readable image; returns 2 when an image could not be read."""
    from fuselite.bundle import BundleError
    from fuselite.runtime.annotator import Annotator, FrameError
    from fuselite.runtime.labels import parse_label_text
    from fuselite.runtime.options import AnnotatorOptions

    if args.top < 1:
        raise UserError(f"--top must be at least 1, not {args.top}")
    labels = parse_label_text(args.labels) if args.labels is not None else None
    try:
        annotator = Annotator.create(
            AnnotatorOptions(args.bundle, num_threads=args.threads, labels=labels)
        )
    except (BundleError, ValueError) as exc:
        raise UserError(str(exc)) from None
    with annotator:
        if annotator.map_grid is None:
            raise UserError(
                f"{args.bundle}: this bundle has no label maps (its image model pools the picture into "
                "one embedding, e.g. an imported classifier); explain needs a regional bundle "
                "(`fuselite train --scoring regional`)"
            )
        failed = 0
        for number, path in enumerate(args.images):
            image = read_image(path)
            if isinstance(image, str):
                log.error("%s: %s; skipped", path, image)
                failed += 1
                continue
            try:
                categories = annotator.explain(image)
            except FrameError as exc:
                log.error("%s: %s; skipped", path, exc)
                failed += 1
                continue
            if labels is None:
                categories = sorted(categories, key=lambda c: -c.score)[: args.top]
            target = args.out / output_name(path, number, args.images)
            write_png(target, explain_picture(image, categories))
            log.info("%s: %s", target, ", ".join(f"{c.label} {c.score:.2f}" for c in categories))
    return 2 if failed else 0


def output_name(path: Path, number: int, paths: list[Path]) -> str:
    """``<stem>.explain.png``; ``<stem>-<n>.explain.png`` when another input has the same stem."""
    clash = sum(p.stem == path.stem for p in paths) > 1
    return f"{path.stem}-{number + 1}.explain.png" if clash else f"{path.stem}.explain.png"


def write_png(path: Path, image_bgr: np.ndarray) -> None:
    """Encodes ``image_bgr`` as PNG and writes it atomically (never a partial file at ``path``)."""
    ok, encoded = cv2.imencode(".png", image_bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise UserError(f"{path}: OpenCV could not encode the picture as PNG")
    try:
        write_atomic(path, encoded.tobytes())
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


def explain_picture(
    image_bgr: np.ndarray, categories: tuple[Category, ...] | list[Category]
) -> np.ndarray:
    """The picture, then one heatmap panel per category (titled label and score), side by side."""
    picture = _panel_picture(image_bgr)
    panels = [_titled(picture, "input")]
    panels += [_titled(heatmap_panel(picture, c), f"{c.label}  {c.score:.2f}") for c in categories]
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + GAP * (len(panels) + 1)
    sheet = np.full((height + 2 * GAP, width, 3), BACKGROUND, np.uint8)
    x = GAP
    for panel in panels:
        sheet[GAP : GAP + panel.shape[0], x : x + panel.shape[1]] = panel
        x += panel.shape[1] + GAP
    return sheet


def heatmap_panel(picture: np.ndarray, category: Category) -> np.ndarray:
    """``picture`` darkened under the category's heatmap in a colour map, outlined where it
    reaches the threshold, with a cross at the peak."""
    height, width = picture.shape[:2]
    upsampled = upsample_heatmap(category.heatmap, width, height)
    colours = cv2.applyColorMap(
        (np.clip(upsampled, 0.0, 1.0) * 255).astype(np.uint8), cv2.COLORMAP_JET
    )
    grey = cv2.cvtColor(cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    panel = cv2.addWeighted(grey, 1.0 - HEATMAP_WEIGHT, colours, HEATMAP_WEIGHT, 0.0)
    outline_above(panel, upsampled, category.threshold, WHITE, 2)
    x, y = category.peak
    cv2.drawMarker(
        panel, (int(x * width), int(y * height)), WHITE, cv2.MARKER_CROSS, 16, 2, cv2.LINE_AA
    )
    return panel


def _panel_picture(image_bgr: np.ndarray) -> np.ndarray:
    """``image_bgr`` scaled to :data:`PANEL_HEIGHT` rows (aspect kept)."""
    height, width = image_bgr.shape[:2]
    new_width = max(1, round(width * PANEL_HEIGHT / height))
    interpolation = cv2.INTER_AREA if height > PANEL_HEIGHT else cv2.INTER_NEAREST
    return cv2.resize(image_bgr, (new_width, PANEL_HEIGHT), interpolation=interpolation)


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    """``panel`` under a strip holding ``title`` (shortened to fit)."""
    strip = np.full((TITLE_HEIGHT, panel.shape[1], 3), BACKGROUND, np.uint8)
    text = title
    while (
        len(text) > 4
        and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.55, 1)[0][0] > panel.shape[1] - 8
    ):
        text = text[:-2]
    if text != title:
        text = text[:-1] + "~"
    cv2.putText(
        strip, text, (4, TITLE_HEIGHT - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.55, WHITE, 1, cv2.LINE_AA
    )
    return np.vstack([strip, panel])
