"""Turn a dataset description (folder, path/label CSV, Kinetics CSVs) into a list of videos to write."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VideoSpec:
    """One video to write: where it is, its label, and the segment to keep (seconds, or None)."""

    path: str
    filename: str  # stored in the record: the path relative to the dataset root
    label: int
    class_text: str
    split: str
    start: float | None = None
    end: float | None = None


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


def from_csv(csv_path, root, split: str, classes: list[str] | None = None, follow_symlinks: bool = False):
    """A CSV of ``path,label`` rows; paths are relative to ``root``. Integer labels are used as they are."""
    root = Path(root)
    rows = list(_rows(csv_path, ("path", "label")))
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
    return specs, failures


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
