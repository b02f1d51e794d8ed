"""Resume a training run at the exact clip: a Keras callback that stores the clip position next to the
model's checkpoint, and the reader of what it stored.

The clip sequence is a pure function of the seed (see :mod:`dali_video.loader.sampling`), so a position is
one number: the clips the run has consumed, ``steps x global batch size``. Pass it back as
``clip_dataset(..., initial_clip=position["clip"], seed=position["seed"])`` with
``model.fit(..., initial_epoch=position["epoch"])``: the run continues with exactly the batches an
uninterrupted run would have seen, on any number of readers. The position also records what the run
reads (``run``: its data, clip options, batch size, seed; see :func:`check_run`), so that a restart
with other options is refused rather than continued on other clips.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..index_tools import format as fmt
from ..index_tools import storage

from .errors import tensorflow

POSITION_FILE = "dali_video_position.json"


def read_position(directory) -> dict | None:
    """What :class:`ClipPosition` last saved in ``directory``: ``{"epoch", "clip", "seed",
    "global_batch_size", "model", "run"}`` (``model``: the saved model's path, stored relative to
    ``directory`` so the folder may be reached from anywhere, or None; ``run``: what the run reads, or
    None), or None before the first save."""
    path = Path(directory) / POSITION_FILE
    if not path.exists():
        return None
    try:
        position = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a dali-video position file ({e})") from None
    missing = {"epoch", "clip", "seed", "global_batch_size"} - set(position)
    if missing:
        raise ValueError(f"{path}: lacks {sorted(missing)}")
    if position.get("model"):
        position["model"] = str(Path(directory) / position["model"])
    return position


def dataset_fingerprint(table) -> str:
    """A short hash of a video table's shards: their names and sizes (cheap: no shard is read)."""
    shards = [(storage.name(fmt.shard_of(ix.path)), ix.shard_size) for ix in table.shards]  # sizes checked at load
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()[:16]


def check_run(directory, saved: dict | None, run: dict, flags: dict | None = None) -> None:
    """Raises ``ValueError`` naming the first field in which ``run`` differs from the ``saved`` one
    (a position's ``run``) and the way out; ``flags`` maps a field to the option that sets it. ``data``
    (where the dataset lies) is not compared: a moved dataset keeps its ``dataset`` fingerprint."""
    if saved is None:  # a position written before runs were recorded
        return
    run = json.loads(json.dumps(run))  # tuples as lists, as the saved one came back from JSON
    for key in (k for k in run if k != "data"):
        old, new, name = saved.get(key), run[key], key
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):  # name the option inside, not the whole dict
            inner = next(k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k))
            old, new, name = old.get(inner), new.get(inner), f"{key}.{inner}"
        read = f" (it read {saved.get('data')})" if key == "dataset" else ""
        raise ValueError(f"{directory} holds another run: its {name} was {old!r}{read}, this run's is {new!r}; "
                         f"resume it with the same {(flags or {}).get(key, key)}, or pass another checkpoint "
                         f"folder to start a new run")


def _callback_base():
    tf = tensorflow("InputMonitor (a Keras callback)")

    return tf.keras.callbacks.Callback


class ClipPosition(_callback_base()):
    """Saves, at the end of every epoch, the model (``save_model=True``: weights and optimizer state,
    ``model-EPOCH.keras``) and then the clip position naming it, each atomically: the position on disk
    always belongs to the model it names, whenever the run is killed. Older models are then removed.

    With ``keras.callbacks.BackupAndRestore`` (its default ``save_freq="epoch"``) pass
    ``save_model=False``: Keras restores the model and the epoch, and the position saved here at the
    same epoch ends gives the data its place.

    Across hosts (MultiWorkerMirroredStrategy) every worker must save the model (it is a collective
    step) and ``directory`` must be one that all of them see. Pass ``chief=False`` on all but the
    chief and a ``task`` name unique to each worker: they save into scratch folders and write no
    position. ``run`` (JSON values) describes what the run reads, for :func:`check_run` on a restart.
    Steps are counted from the optimizer, so ``steps_per_execution`` does not matter.
    """

    def __init__(self, directory, *, seed: int, global_batch_size: int, initial_clip: int = 0,
                 save_model: bool = True, chief: bool = True, task: str = "0", run: dict | None = None):
        super().__init__()
        self.chief, self.run = chief, run
        self.directory = Path(directory) if chief else Path(directory) / ".worker-scratch" / task
        self.seed, self.global_batch_size, self.save_model = seed, global_batch_size, save_model
        self.initial_clip = initial_clip
        self.start_step = None

    def on_train_batch_begin(self, batch, logs=None):
        if self.start_step is None:  # after every on_train_begin: BackupAndRestore has restored the optimizer
            self.start_step = int(self.model.optimizer.iterations)

    def on_epoch_end(self, epoch, logs=None):
        clip = self.initial_clip + (int(self.model.optimizer.iterations) - self.start_step) * self.global_batch_size
        self.directory.mkdir(parents=True, exist_ok=True)
        model = None
        if self.save_model:
            model = self.directory / f"model-{epoch + 1:05d}.keras"
            tmp = self.directory / f".tmp.{model.name}"  # Keras wants the .keras suffix
            self.model.save(tmp)
            tmp.replace(model)
        position = {"epoch": epoch + 1, "clip": clip, "seed": self.seed,
                    "global_batch_size": self.global_batch_size, "model": model.name if model else None,
                    "run": self.run}
        if self.chief:
            fmt.atomic_write(self.directory / POSITION_FILE, json.dumps(position).encode())
        for old in self.directory.glob("model-*.keras"):  # only after the position names the new one
            if old != model:
                old.unlink()
