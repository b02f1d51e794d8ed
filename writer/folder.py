"""The dataset an output folder holds: what it was written from, how a new run differs, its removal.

A folder holds one dataset. A run may resume it (the same plan) or add a split to it (the same
options, class ids that agree); any other run would leave splits of two datasets side by side, label
0 naming two classes, so it stops before touching a file unless it asks to replace the dataset.
"""
from __future__ import annotations

import collections
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..index_tools import FormatError, FrameIndex, read_frame_index
from ..index_tools import format as fmt
from ..index_tools import storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitState:
    """One split of a dataset, as a folder holds it or as a run plans it."""

    options: dict | None  # EncodeOptions as a dict; None: not recorded
    classes: dict  # label -> class text
    shards: dict  # shard file name -> plan digest ("": not the writer's; None: not complete)
    seed: int | None = None  # None: not recorded
    heads: dict | None = None  # label head name -> {"classes", "multi_label"}, as the manifest has them; None: unknown


def complete_index(shard: Path | str, listed: set | None = None) -> FrameIndex | None:
    """The frame index of a complete shard (its .idx is there, its frame index too and fits it), else
    None. ``listed``: the names in the shard's folder, when the caller has listed it (no request then)."""
    idx = fmt.idx_path(shard)
    if not (storage.name(idx) in listed if listed is not None else storage.exists(idx)):
        return None
    try:
        index = read_frame_index(fmt.fidx_path(shard))
        fmt.check_fresh(shard, index)
    except (FormatError, OSError):
        return None
    if "segments" in index.notes and not storage.exists(fmt.segments_path(shard)):
        return None  # written with a segment table, which is gone
    return index


def writer_split(name: str) -> str | None:
    """The split of a file the writer names (shard, index, manifest, or a temp file of one), else None."""
    if name.startswith(".") and name.endswith(".tmp"):  # ".<name>.<pid or random>.tmp"
        name = name[1:-4].rpartition(".")[0]
    if name.endswith(fmt.MANIFEST_SUFFIX):
        return name[:-len(fmt.MANIFEST_SUFFIX)] or None
    parsed = fmt.parse_shard_name(name.removesuffix(fmt.IDX_SUFFIX).removesuffix(fmt.FIDX_SUFFIX)
                                  .removesuffix(fmt.SEGMENTS_SUFFIX))
    return parsed[0] if parsed else None


def _manifest(path: Path | str) -> dict:
    try:
        manifest = json.loads(storage.read(path))
    except ValueError as e:
        raise FormatError(f"{path}: not a dali-video manifest ({e}); pass --replace (replace=True) to write "
                          f"the dataset anew, or write to another folder") from None
    manifest["classes"] = fmt.manifest_classes(manifest)
    return manifest


def read_folder(out: Path | str) -> tuple[dict[str, SplitState], dict[str, FrameIndex]]:
    """Every split that the writer's manifests and shards in ``out`` (a folder or a bucket prefix) hold,
    and the frame index of each complete shard by file name (each read once: a resumed run reuses them)."""
    manifests, shards = {}, collections.defaultdict(dict)
    paths = storage.glob(out, "*")
    listed = {storage.name(path) for path in paths}
    for path in paths:
        name = storage.name(path)
        if name.endswith(fmt.MANIFEST_SUFFIX) and (split := writer_split(name)):
            manifests[split] = _manifest(path)
        elif parsed := fmt.parse_shard_name(name):
            shards[parsed[0]][name] = complete_index(path, listed)
    states = {}
    for split in sorted(manifests.keys() | shards.keys()):
        manifest, indexes = manifests.get(split, {}), shards[split]
        complete = [ix for ix in indexes.values() if ix is not None]
        classes = dict(manifest.get("classes", {}))
        for ix in complete:
            classes.update((k, v) for k, v in zip(ix.videos["label"], ix.videos["class_text"]) if k >= 0)
        options = manifest.get("options") or next((ix.notes["options"] for ix in complete if "options" in ix.notes),
                                                  None)
        states[split] = SplitState(options, classes, {name: ix.notes.get("plan", "") if ix else None
                                                      for name, ix in indexes.items()}, manifest.get("seed"),
                                   manifest.get("heads", {}) if manifest else None)
    return states, {name: ix for split in shards.values() for name, ix in split.items() if ix is not None}


def _class_clash(was: dict, now: dict) -> str | None:
    """The first class id or name that ``was`` and ``now`` map differently, and how many do."""
    ids = [k for k in sorted(was.keys() & now.keys()) if was[k] != now[k]]
    if ids:
        more = f" ({len(ids)} class ids differ)" if len(ids) > 1 else ""
        return f"class {ids[0]} was {was[ids[0]]!r}, now {now[ids[0]]!r}{more}"
    was_id, now_id = ({v: k for k, v in m.items()} for m in (was, now))
    names = [n for n in sorted(was_id.keys() & now_id.keys()) if was_id[n] != now_id[n]]
    if names:
        return f"class {names[0]!r} was id {was_id[names[0]]}, now {now_id[names[0]]}"
    return None


def _heads_clash(was: dict, now: dict) -> str | None:
    """The first way the label heads ``was`` and ``now`` differ (names, a class id, multi-label), or None."""
    if list(was) != list(now):
        return f"label heads were {', '.join(was) or 'none'}, now {', '.join(now) or 'none'}"
    for name in was:
        a, b = was[name], now[name]
        if a.get("multi_label") != b.get("multi_label"):
            return f"label head {name!r} was {'multi' if a.get('multi_label') else 'single'}-label, now not"
        ids = [i for i in range(max(len(a["classes"]), len(b["classes"])))
               if a["classes"][i:i + 1] != b["classes"][i:i + 1]]
        if ids:
            old, new = (c["classes"][ids[0]] if ids[0] < len(c["classes"]) else None for c in (a, b))
            return (f"label head {name!r} class {ids[0]} was {old!r}, now {new!r} (write every split's rows in one "
                    f"--segments file, or give integer class ids)")
    return None


def differences(old: dict[str, SplitState], new: dict[str, SplitState]) -> list[str]:
    """What keeps the run that plans ``new`` from joining the dataset ``old``, a line per split and
    matter; empty when it resumes ``old`` or adds splits of the same options and class ids."""
    first = next(iter(new.values()))
    options, heads = first.options, first.heads
    classes = {k: v for s in new.values() for k, v in s.classes.items()}
    lines = []
    for split, was in old.items():
        here = []
        if was.options is not None:
            here += [f"{split}: {k} was {was.options.get(k)!r}, now {options.get(k)!r}"
                     for k in sorted(was.options.keys() | options.keys()) if was.options.get(k) != options.get(k)]
        if clash := _class_clash(was.classes, classes):
            here.append(f"{split}: {clash}")
        if was.heads is not None and heads is not None and (clash := _heads_clash(was.heads, heads)):
            here.append(f"{split}: {clash}")
        now = new.get(split)
        if now and not here:  # the same split again: it must be the same plan (a resumed run)
            counts = sorted({fmt.parse_shard_name(n)[2] for n in was.shards})
            other = [n for n, digest in was.shards.items() if digest is not None and digest != now.shards.get(n)]
            if set(was.shards) - set(now.shards):
                here.append(f"{split}: num_shards was {'/'.join(map(str, counts))}, now {len(now.shards)} "
                            f"({min(was.shards)}, ...)")
            elif was.seed is not None and was.seed != now.seed:
                here.append(f"{split}: seed was {was.seed}, now {now.seed}")
            elif other:
                here.append(f"{split}: {len(other)} of its {len(was.shards)} shards were written from other videos "
                            f"than this run plans ({other[0]}, ...)")
        lines += here
    return lines


def classes_hint(old: dict[str, SplitState], new: dict[str, SplitState]) -> str:
    """When the class ids of ``new`` clash with the dataset's (a split holding some of its classes, so
    numbered otherwise), the way to number them as it does: a class file; else ""."""
    was = {k: v for s in old.values() for k, v in s.classes.items()}
    if not _class_clash(was, {k: v for s in new.values() for k, v in s.classes.items()}):
        return ""
    listed = f": {', '.join(was[k] for k in sorted(was))}" if sorted(was) == list(range(len(was))) else ""
    return (f"if this is a split of the same dataset, pass --classes classes.txt, a file naming its classes "
            f"one a line in id order{listed}; else ")


def remove_dataset(out: Path | str, splits=None) -> None:
    """Delete every file of the writer in ``out`` (of ``splits`` only, when given), and no other: the
    manifests first, then each shard's frame index (which marks it complete), its index and the shard,
    so that what is left at any moment reads as an unfinished run."""
    order = (fmt.MANIFEST_SUFFIX, fmt.FIDX_SUFFIX, fmt.SEGMENTS_SUFFIX, fmt.IDX_SUFFIX, fmt.SHARD_SUFFIX)
    names = sorted((n for n in map(storage.name, storage.glob(out, "*"))
                    if (split := writer_split(n)) is not None and (splits is None or split in splits)),
                   key=lambda n: next((i for i, s in enumerate(order) if n.endswith(s)), len(order)))
    for name in names:
        storage.remove(storage.join(out, name))
    if names:
        log.info("removed %d files of %s in %s", len(names),
                 "the dataset" if splits is None else f"split {', '.join(splits)}", out)
