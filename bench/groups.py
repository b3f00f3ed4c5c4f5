"""Tag groups: one-of-N sets of tags (a category) scored as top-1 with a confusion matrix.

A multi-tag bundle's mAP and micro-F1 do not say "which category". A tag group names
the labels of one such set, from ``--group category=animals,food,vehicles`` or from a
JSONL manifest line ``{"groups": {"category": ["animals", "food", "vehicles"]}}``.  For
each group and bundle, the predicted label is the group's highest-scoring label; it is
compared with the item's one tag of that group.  Items with no tag of the group, or with
several, are left out and counted.  Numpy only.

Example:
    >>> parse_groups(["category=animals,food,vehicles"])
    {'category': ['animals', 'food', 'vehicles']}
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from fuselite.errors import UserError

GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")  # it names a file: confusion-<name>.png
MAX_GROUP_LABELS = 200  # a confusion matrix past this is no longer a table anyone reads
MAX_GROUPS = 20
NAMES_SHOWN = 5  # unseen tags named in a warning; the count covers them all
GROUP_SPEC_HELP = "give NAME=LABEL,LABEL,... (e.g. --group category=animals,food,vehicles)"


def parse_groups(specs: list[str] | None) -> dict[str, list[str]]:
    """``["name=a,b", ...]`` -> ``{"name": ["a", "b"]}``; :class:`UserError` on a bad spec."""
    groups: dict[str, list[str]] = {}
    for spec in specs or []:
        name, labels = _parse_group(spec)
        if name in groups:
            raise UserError(f"--group {name} is given twice: give each group once")
        groups[name] = labels
    return check_groups(groups, "--group")


def _parse_group(spec: str) -> tuple[str, list[str]]:
    name, sep, rest = spec.partition("=")
    if not sep:
        raise UserError(f"--group {spec!r}: no '=': {GROUP_SPEC_HELP}")
    return name.strip(), [label.strip() for label in rest.split(",")]


def check_groups(groups: dict, where: str) -> dict[str, list[str]]:
    """Validates ``{name: [labels]}`` (``where`` names its source in the error); returns it."""
    if not isinstance(groups, dict):
        raise UserError(f"{where}: groups must be an object of NAME: [LABEL, ...]")
    if len(groups) > MAX_GROUPS:
        raise UserError(f"{where}: {len(groups)} tag groups, at most {MAX_GROUPS}")
    for name, labels in groups.items():
        _check_group(name, labels, where)
    return {name: list(labels) for name, labels in groups.items()}


def _check_group(name, labels, where: str) -> None:
    if not isinstance(name, str) or not GROUP_NAME.match(name):
        raise UserError(f"{where}: group name {name!r} must be 1-40 letters, digits, '_', '-' or '.' "
                        f"(it names confusion-<name>.png); {GROUP_SPEC_HELP}")
    if not isinstance(labels, list) or not all(isinstance(label, str) and label.strip() for label in labels):
        raise UserError(f"{where}: group {name!r} needs non-empty label texts; {GROUP_SPEC_HELP}")
    if len(labels) < 2 or len(labels) > MAX_GROUP_LABELS:
        raise UserError(f"{where}: group {name!r} has {len(labels)} label(s); a group needs 2 to "
                        f"{MAX_GROUP_LABELS}")
    repeated = [label for label, n in Counter(labels).items() if n > 1]
    if repeated:
        raise UserError(f"{where}: group {name!r} lists {repeated[0]!r} twice: list each label once")


def manifest_groups(path: Path) -> dict[str, list[str]]:
    """The groups of a JSONL manifest's ``{"groups": {...}}`` lines (empty for other files)."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return {}
    groups: dict[str, list[str]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if '"groups"' not in line:
                continue  # items are never parsed here: the reader does that
            try:
                entry = json.loads(line)
            except (ValueError, RecursionError):
                continue  # the reader reports the bad line
            if isinstance(entry, dict) and set(entry) == {"groups"}:
                groups.update(check_groups(entry["groups"], f"{path} line {number}"))
    return groups


def group_metrics(scores: np.ndarray, labels, tags: list[list[str]], group: list[str]) -> dict:
    """Top-1 and confusion matrix of one group over a bundle's scores ``[N, len(labels)]``.

    Returns ``{"labels", "top1", "scored", "no_tag", "several_tags", "not_in_bundle",
    "matrix"}``; ``matrix[i][j]`` counts items tagged ``labels[i]`` predicted ``labels[j]``.
    A group label the bundle lacks is never predicted (its items count as misses).
    """
    column = {}
    for j, label in enumerate(labels):
        column.setdefault(label, j)
    known = [i for i, label in enumerate(group) if label in column]
    result = {"labels": list(group), "top1": None, "scored": 0, "no_tag": 0, "several_tags": 0,
              "not_in_bundle": [label for label in group if label not in column],
              "matrix": [[0] * len(group) for _ in group]}
    if not known:
        return result
    group_scores = scores[:, [column[group[i]] for i in known]]
    position = {label: i for i, label in enumerate(group)}
    for item, item_tags in enumerate(tags):
        truth = {position[t] for t in item_tags if t in position}
        if len(truth) != 1:
            result["no_tag" if not truth else "several_tags"] += 1
            continue
        predicted = known[int(np.argmax(group_scores[item]))]
        result["matrix"][truth.pop()][predicted] += 1
        result["scored"] += 1
    if result["scored"]:
        hits = sum(result["matrix"][i][i] for i in range(len(group)))
        result["top1"] = hits / result["scored"]
    return result


def all_group_metrics(scores: np.ndarray, labels, tags: list[list[str]], groups: dict) -> dict:
    """:func:`group_metrics` of every group, by name."""
    return {name: group_metrics(scores, labels, tags, group) for name, group in groups.items()}


def unseen_tags(tags: list[list[str]], labels) -> dict[str, int]:
    """Tags of the data that are not among ``labels`` -> how many items carry each, most first."""
    known = set(labels)
    counts = Counter(tag for item in tags for tag in set(item) if tag not in known)
    return dict(counts.most_common())


def unseen_message(unseen: dict[str, int], items: int, whose: str) -> str:
    """One line: how many tags of the test data ``whose`` labels lack, on how many items."""
    shown = ", ".join(f"{tag!r} ({n})" for tag, n in list(unseen.items())[:NAMES_SHOWN])
    more = f" and {len(unseen) - NAMES_SHOWN} more" if len(unseen) > NAMES_SHOWN else ""
    return (f"{len(unseen)} tag(s) of the test data are not among {whose} labels (training never saw "
            f"them), on {items} item(s): {shown}{more}; they score nothing: train on them, or leave "
            "them out of the test data")


def items_with_unseen(tags: list[list[str]], unseen: dict[str, int]) -> int:
    """How many items carry at least one of the ``unseen`` tags."""
    return sum(1 for item in tags if any(tag in unseen for tag in item))


def focus_row(report, name: str):
    """The row whose matrix report.md and the PNG show for group ``name``: the ``--device``
    recommendation if it has one, else the ✅ bundle with the best top-1 of the group, else
    the first row with a top-1 of it (``None`` when no row has one)."""
    rows = [r for r in report.rows if r.groups.get(name, {}).get("top1") is not None]
    recommended = [r for r in rows if r.recommended]
    ok = [r for r in rows if r.kind == "bundle" and r.status == "ok"]
    if recommended:
        return recommended[0]
    if ok:
        return max(ok, key=lambda r: r.groups[name]["top1"])  # max keeps the first of a tie
    return rows[0] if rows else None


def groups_markdown(report) -> list[str]:
    """report.md's section per tag group: every row's top-1, then one bundle's confusion matrix."""
    lines: list[str] = []
    for name, labels in report.groups.items():
        lines += ["", f"## Tag group `{name}` ({len(labels)} labels): top-1 and confusion matrix", ""]
        lines += _top1_table(report, name)
        row = focus_row(report, name)
        if row is None:
            lines += ["", ("No bundle has a top-1 for this group: no item has exactly one of its tags, "
                           "or no bundle knows its labels.")]
            continue
        lines += ["", (f"Confusion matrix of **{row.name}** (rows: the item's tag; columns: the label of the "
                       "group the bundle scores highest; counts). Every row's matrix is in report.json."), ""]
        lines += matrix_table(row.groups[name])
        missing = row.groups[name]["not_in_bundle"]
        if missing:
            lines += ["", f"Not among {row.name}'s labels, so never predicted: {', '.join(missing)}."]
    return lines


def _top1_table(report, name: str) -> list[str]:
    lines = ["| | variant | top-1 % | scored | left out: no tag | left out: several tags |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in report.rows:
        result = row.groups.get(name)
        if not result:
            continue
        top1 = "-" if result["top1"] is None else f"{100 * result['top1']:.2f}"
        title = f"{row.name} (reference)" if row.kind == "reference" else row.name
        lines.append(f"| {row.icon} | {title} | {top1} | {result['scored']} | {result['no_tag']} | "
                     f"{result['several_tags']} |")
    return lines


def matrix_table(result: dict) -> list[str]:
    """A confusion matrix as a Markdown table, with each tag's item count and recall."""
    labels = result["labels"]
    lines = ["| tag ↓ · predicted → | " + " | ".join(labels) + " | items | correct % |",
             "|" + "|".join(" --- " for _ in range(len(labels) + 3)) + "|"]
    for i, label in enumerate(labels):
        counts = result["matrix"][i]
        total = sum(counts)
        recall = f"{100 * counts[i] / total:.1f}" if total else "-"
        lines.append(f"| **{label}** | " + " | ".join(map(str, counts)) + f" | {total} | {recall} |")
    return lines
