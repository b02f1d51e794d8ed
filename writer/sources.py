"""Turn a dataset description (folder, path/label CSV, Kinetics CSVs) into a list of videos to write."""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..index_tools.format import Head


@dataclass(frozen=True)
class Segment:
    """An annotated part of a video: its annotation row (0-based, header excluded), its bounds and its
    class ids per label head. ``unit`` "seconds": frames whose time ``k / fps`` lies in
    ``[start, end)``; "frames": stored frames ``start`` .. ``end - 1``; "video": the whole video."""

    id: int
    start: float
    end: float
    unit: str
    labels: tuple  # per head, a tuple of class ids


@dataclass(frozen=True)
class VideoSpec:
    """One video to write: where it is, its label, and the segment to keep (seconds, or None); with
    label heads or segments, the annotated segments of the video (written once, its segments in the
    shard's segment table)."""

    path: str
    filename: str  # stored in the record: the path relative to the dataset root
    label: int
    class_text: str
    split: str
    start: float | None = None
    end: float | None = None
    segments: tuple = ()  # Segment per annotation row of this video


@dataclass(frozen=True)
class Failure:
    filename: str
    reason: str
    split: str = ""  # empty: the failure concerns every split written


class InputError(ValueError):
    """The dataset description itself is unusable (not a single video)."""


def _inside(root: Path, path: Path, follow_symlinks: bool) -> bool:
    """No ``..`` escape in the name; and unless asked, no symlink that leads out of root."""
    if not Path(os.path.normpath(os.path.abspath(path))).is_relative_to(os.path.abspath(root)):
        return False
    return follow_symlinks or Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def _resolve(root: Path, name: str, follow_symlinks: bool) -> Path | None:
    """``root/name`` when it stays inside root (no ``..`` escape, no symlink out unless asked)."""
    path = root / name
    return path if _inside(root, path, follow_symlinks) else None


def _class_ids(names, classes: list[str] | None) -> dict[str, int]:
    return {c: i for i, c in enumerate(classes if classes is not None else sorted(set(names)))}


def from_folder(root, split: str, classes: list[str] | None = None, follow_symlinks: bool = False):
    """``ROOT/<class>/<video>``; class ids follow the sorted class names (or ``classes``)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise InputError(f"{root}: no class folders (expected ROOT/<class name>/<video file>)")
    ids = _class_ids(dirs, classes)
    specs, failures = [], []
    for name in dirs:
        for f in sorted((root / name).iterdir()):
            if f.name.startswith(".") or f.is_dir():
                continue
            rel = f"{name}/{f.name}"
            if not _inside(root, f, follow_symlinks):
                failures.append(Failure(rel, "symlink points outside the dataset root (pass --follow-symlinks)"))
            elif name not in ids:
                failures.append(Failure(rel, f"class {name!r} is not in the class list"))
            else:
                specs.append(VideoSpec(str(f), rel, ids[name], name, split))
    return specs, failures


def _rows(csv_path, columns: tuple[str, ...]):
    """Rows of a CSV as dicts; a header row naming ``columns`` is optional."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if rows and [c.strip() for c in rows[0][: len(columns)]] == list(columns):
        header, rows, first = [c.strip() for c in rows[0]], rows[1:], 2
    else:
        header, first = list(columns), 1
    for number, row in enumerate(rows, start=first):
        if not row or not "".join(row).strip():
            continue
        if len(row) < len(columns):
            raise InputError(f"{csv_path}: line {number}: expected columns {','.join(columns)}, got {row}")
        yield number, dict(zip(header, (c.strip() for c in row)))


def _cells(value: str) -> list[str]:
    """A cell's labels: ``;``-separated values (several labels of one head), blanks dropped."""
    return [v.strip() for v in value.split(";") if v.strip()]


def label_heads(csv_path, rows, names, classes: list[str] | None = None, multi_label=()) -> tuple[tuple, list]:
    """The label heads of columns ``names`` over ``rows`` (dicts), and each row's class ids per head.

    A head is multi-label when a cell holds several ``;``-separated labels (or it is in ``multi_label``).
    Class ids: integers as they are when every value of the head is one (classes ``"0"`` .. ``"max"``), else the sorted
    names (or ``classes``, for a single head); every row of every split counts, so ids agree across
    splits. Raises InputError naming the row of a bad cell."""
    if classes is not None and len(names) > 1:
        raise InputError(f"{csv_path}: --classes fixes one head's class ids; this CSV has heads {', '.join(names)} "
                         f"(use integer class ids in the CSV instead)")
    heads, ids = [], []
    for name in names:
        cells = [(number, _cells(r[name])) for number, r in rows]
        multi = name in multi_label or any(len(values) > 1 for _, values in cells)
        for number, values in cells:
            if not multi and len(values) != 1:
                raise InputError(f"{csv_path}: line {number}: column {name!r} is empty; a single-label head needs "
                                 f"one label per row")
        values = {v for _, vs in cells for v in vs}
        if classes is None and all(v.isdigit() for v in values):
            top = max(map(int, values), default=-1)
            heads.append(Head(name, tuple(str(i) for i in range(top + 1)), multi))
            ids.append([tuple(int(v) for v in vs) for _, vs in cells])
            continue
        names_by_id = list(classes) if classes is not None else sorted(values)
        known = {c: i for i, c in enumerate(names_by_id)}
        for number, vs in cells:
            if unknown := [v for v in vs if v not in known]:
                raise InputError(f"{csv_path}: line {number}: {name} label {unknown[0]!r} is not in the class list")
        heads.append(Head(name, tuple(names_by_id), multi))
        ids.append([tuple(known[v] for v in vs) for _, vs in cells])
    return tuple(heads), [tuple(per_head) for per_head in zip(*ids)] if ids else [() for _ in rows]


def _header_rows(csv_path, required: tuple[str, ...]):
    """A CSV whose first row names its columns (``required`` among them): ``(header, rows)``, rows as
    ``(line number, dict)``, blank lines left out."""
    with open(csv_path, newline="", encoding="utf-8") as f:
        lines = list(csv.reader(f))
    header = [c.strip() for c in lines[0]] if lines else []
    if missing := [c for c in required if c not in header]:
        raise InputError(f"{csv_path}: the first row must name the columns ({', '.join(required)}, ...); "
                         f"it lacks {', '.join(missing)}: {header}")
    rows = []
    for number, row in enumerate(lines[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != len(header):
            raise InputError(f"{csv_path}: line {number}: {len(row)} columns, the header names {len(header)}")
        rows.append((number, dict(zip(header, (c.strip() for c in row)))))
    return header, rows


def from_csv(csv_path, root, split: str, classes: list[str] | None = None, follow_symlinks: bool = False):
    """A CSV of ``path,label`` rows; paths are relative to ``root``. Integer labels are used as they are.

    With a header row naming other columns than ``path,label`` (``path,verb,noun``), or a label cell
    holding several ``;``-separated labels, every column but ``path`` is a label head: returns
    ``(specs, failures, heads)``, each video one whole-video segment with its class ids per head."""
    root = Path(root)
    with open(csv_path, newline="", encoding="utf-8") as f:
        first = next(csv.reader(f), [])
    if first and first[0].strip() == "path" and [c.strip() for c in first] != ["path", "label"]:
        return _from_csv_heads(csv_path, root, split, classes, follow_symlinks)
    rows = list(_rows(csv_path, ("path", "label")))
    if any(len(_cells(r["label"])) > 1 for _, r in rows):
        return _from_csv_heads(csv_path, root, split, classes, follow_symlinks)
    labels = [r["label"] for _, r in rows]
    numeric = classes is None and all(lbl.lstrip("-").isdigit() for lbl in labels)
    ids = {} if numeric else _class_ids(labels, classes)
    specs, failures, seen = [], [], {}
    for number, row in rows:
        name, label = row["path"], row["label"]
        path = _resolve(root, name, follow_symlinks)
        if path is None:
            failures.append(Failure(name, f"{csv_path}:{number}: path escapes the dataset root {root}"))
        elif name in seen:
            failures.append(Failure(name, f"{csv_path}:{number}: duplicate of line {seen[name]}"))
        elif not numeric and label not in ids:
            failures.append(Failure(name, f"{csv_path}:{number}: label {label!r} is not in the class list"))
        else:
            seen[name] = number
            specs.append(VideoSpec(str(path), name, int(label) if numeric else ids[label], label, split))
    return specs, failures, ()


def _first_label(heads, labels) -> tuple[int, str]:
    """The record's label and class text: the first head's class when it is single-label, else none (-1)."""
    if heads and not heads[0].multi_label:
        return labels[0][0], heads[0].classes[labels[0][0]]
    return -1, ""


def _from_csv_heads(csv_path, root: Path, split: str, classes, follow_symlinks: bool):
    header, rows = _header_rows(csv_path, ("path",))
    heads, ids = label_heads(csv_path, rows, [c for c in header if c != "path"], classes)
    specs, failures, seen = [], [], {}
    for row_id, ((number, row), labels) in enumerate(zip(rows, ids)):
        name = row["path"]
        path = _resolve(root, name, follow_symlinks)
        if path is None:
            failures.append(Failure(name, f"{csv_path}:{number}: path escapes the dataset root {root}"))
        elif name in seen:
            failures.append(Failure(name, f"{csv_path}:{number}: duplicate of line {seen[name]}"))
        else:
            seen[name] = number
            specs.append(VideoSpec(str(path), name, *_first_label(heads, labels), split,
                                   segments=(Segment(row_id, 0.0, math.inf, "video", labels),)))
    return specs, failures, heads


SEGMENT_UNITS = {("start", "end"): "seconds", ("start_frame", "end_frame"): "frames"}


def from_segments(csv_path, root, split: str | None = None, classes: list[str] | None = None,
                  follow_symlinks: bool = False, segments_format: str = "csv"):
    """Annotated segments of untrimmed videos: a CSV with a header naming ``path`` (relative to ``root``),
    ``start,end`` (seconds) or ``start_frame,end_frame`` (stored frames, the end excluded), an optional
    ``split``, and label heads (every other column; see :func:`label_heads`). Each video is written
    once per split, its segments beside it. Returns ``(specs, failures, heads)``.

    ``segments_format`` reads a dataset's own annotation file instead (:data:`SEGMENT_FORMATS`), its
    videos found anywhere below ``root`` by file name without extension: "epic" (EPIC-Kitchens-100's
    ``EPIC_100_train.csv``: ``video_id``, ``start_timestamp``, ``stop_timestamp``, heads ``verb`` and
    ``noun`` from ``verb_class``, ``noun_class``), "charades" (``Charades_v1_train.csv``: one whole-video
    segment per ``id``, multi-label head ``action`` from the ``actions`` column's classes ``cNNN``),
    "activitynet" (the ActivityNet JSON: each annotation's ``segment`` in seconds, head ``label``, split
    from ``subset``; videos ``v_<id>.*`` or ``<id>.*``)."""
    if segments_format not in SEGMENT_FORMATS:
        raise InputError(f"segments format {segments_format!r} is not one of {', '.join(SEGMENT_FORMATS)}")
    root = Path(root)
    multi = ()
    if segments_format != "csv":
        header, rows, multi = CONVERTERS[segments_format](csv_path)
        found = _files_by_stem(root, follow_symlinks)
        rows = [(n, {**r, "path": found.get(r["path"]) or found.get(r["path"].removeprefix("v_")) or r["path"]})
                for n, r in rows]
    else:
        header, rows = _header_rows(csv_path, ("path",))
    bounds = [b for b in SEGMENT_UNITS if set(b) <= set(header)]
    if len(bounds) != 1:
        raise InputError(f"{csv_path}: the header must name start,end (seconds) or start_frame,end_frame (frames), "
                         f"one pair: {header}")
    (lo, hi), unit = bounds[0], SEGMENT_UNITS[bounds[0]]
    names = [c for c in header if c not in ("path", "split", lo, hi)]
    if not names:
        raise InputError(f"{csv_path}: no label column (every column but path, {lo}, {hi} and split is a label head)")
    heads, ids = label_heads(csv_path, rows, names, classes, multi)
    videos: dict = {}  # (path, split) -> [segments]
    failures = []
    for row_id, ((number, row), labels) in enumerate(zip(rows, ids)):
        name, where = row["path"], f"{csv_path}:{number}"
        where_split = split or row.get("split") or "train"
        try:
            start, end = float(row[lo]), float(row[hi])
        except ValueError:
            failures.append(Failure(name, f"{where}: {lo}/{hi} are not numbers", where_split))
            continue
        if not (0 <= start < end < math.inf) or unit == "frames" and not (start.is_integer() and end.is_integer()):
            failures.append(Failure(name, f"{where}: segment [{row[lo]}, {row[hi]}) is empty, negative or not whole "
                                          f"{unit}", where_split))
            continue
        videos.setdefault((name, where_split), (where, []))[1].append(Segment(row_id, start, end, unit, labels))
    specs = []
    for (name, where_split), (where, segments) in videos.items():
        path = _resolve(root, name, follow_symlinks)
        if path is None:
            failures.append(Failure(name, f"{where}: path escapes the dataset root {root}", where_split))
        elif not path.is_file():
            failures.append(Failure(name, f"{where}: no such video under {root} ({len(segments)} segments)",
                                    where_split))
        else:
            specs.append(VideoSpec(str(path), name, -1, "", where_split, segments=tuple(segments)))
    return specs, failures, heads


KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


def from_kinetics(csv_paths, root, split: str | None = None, classes: list[str] | None = None,
                  follow_symlinks: bool = False):
    """Kinetics annotation CSVs plus a video folder holding trimmed clips
    (``<youtube_id>_<start:06d>_<end:06d>.mp4``, anywhere below root) or full videos
    (``<youtube_id>.*``) that the writer trims to ``[time_start, time_end)``."""
    root = Path(root)
    found: dict[str, Path] = {}
    for dirpath, _, names in os.walk(root, followlinks=follow_symlinks):
        for n in names:
            found.setdefault(n, Path(dirpath) / n)
            found.setdefault(Path(n).stem, Path(dirpath) / n)
    rows = [(p, number, r) for p in csv_paths for number, r in _rows(p, KINETICS_COLUMNS)]
    ids = _class_ids([r["label"] for _, _, r in rows], classes)
    specs, failures, seen = [], [], {}
    for csv_path, number, r in rows:
        where = f"{csv_path}:{number}"
        try:
            start, end = int(float(r["time_start"])), int(float(r["time_end"]))
        except ValueError:
            failures.append(Failure(r["youtube_id"], f"{where}: time_start/time_end are not numbers", r["split"]))
            continue
        clip = f"{r['youtube_id']}_{start:06d}_{end:06d}"
        path = found.get(clip)
        segment = (None, None) if path else (float(start), float(end))
        path = path or found.get(r["youtube_id"])
        key = (clip, r["split"])
        if key in seen:
            failures.append(Failure(clip, f"{where}: duplicate of {seen[key]}", split or r["split"]))
        elif r["label"] not in ids:
            failures.append(Failure(clip, f"{where}: label {r['label']!r} is not in the class list", split or r["split"]))
        elif end <= start:
            failures.append(Failure(clip, f"{where}: empty segment [{start}, {end})", split or r["split"]))
        elif path is None:
            failures.append(Failure(clip, f"{where}: no video {clip}.mp4 or {r['youtube_id']}.* under {root}", split or r["split"]))
        elif not _inside(root, path, follow_symlinks):
            failures.append(Failure(clip, f"{where}: {path} is a symlink out of {root} (pass --follow-symlinks)", split or r["split"]))
        else:
            seen[key] = where
            specs.append(VideoSpec(str(path), f"{clip}.mp4", ids[r["label"]], r["label"],
                                   split or r["split"], *segment))
    return specs, failures


def _files_by_stem(root: Path, follow_symlinks: bool) -> dict:
    """Every file below root by its name without extension (the first found), as a path relative to root."""
    found: dict = {}
    for dirpath, _, names in sorted(os.walk(root, followlinks=follow_symlinks)):
        for n in sorted(names):
            found.setdefault(Path(n).stem, os.path.relpath(Path(dirpath) / n, root))
    return found


def _timestamp(text: str) -> float:
    """Seconds of ``HH:MM:SS.ff`` (EPIC-Kitchens' timestamps) or of a plain number."""
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def _epic(path):
    _, rows = _header_rows(path, ("video_id", "start_timestamp", "stop_timestamp", "verb_class", "noun_class"))
    return ["path", "start", "end", "verb", "noun"], [
        (n, {"path": r["video_id"], "start": str(_timestamp(r["start_timestamp"])),
             "end": str(_timestamp(r["stop_timestamp"])), "verb": r["verb_class"], "noun": r["noun_class"]})
        for n, r in rows], ()


def _charades(path):
    _, rows = _header_rows(path, ("id", "actions", "length"))
    return ["path", "start", "end", "action"], [
        (n, {"path": r["id"], "start": "0", "end": r["length"],
             "action": ";".join(str(int(a.split()[0][1:])) for a in r["actions"].split(";") if a.strip())})
        for n, r in rows], ("action",)


def _activitynet(path):
    import json

    with open(path, encoding="utf-8") as f:
        database = json.load(f)["database"]
    splits = {"training": "train", "validation": "val", "testing": "test"}
    rows = []
    for vid, entry in database.items():
        for a in entry.get("annotations", []):
            rows.append((len(rows) + 1, {"path": f"v_{vid}", "start": str(a["segment"][0]),
                                         "end": str(a["segment"][1]), "label": a["label"],
                                         "split": splits.get(entry.get("subset"), entry.get("subset", "train"))}))
    return ["path", "start", "end", "label", "split"], rows, ()


CONVERTERS = {"epic": _epic, "charades": _charades, "activitynet": _activitynet}
SEGMENT_FORMATS = ("csv", *CONVERTERS)
