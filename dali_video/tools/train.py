"""dali-video-train: train a small Keras video model with model.fit on clips from dali-video.

With no --data it builds a small sample dataset (cached) and trains on it. With a TF_CONFIG naming
several workers it trains across them (MultiWorkerMirroredStrategy, Keras 2 through tf-keras: Keras 3's
fit does not run under that strategy); every worker runs the same command.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time

# The options that set each field of a run's record, for the way out when a restart differs.
RUN_FLAGS = {"dataset": "--data", "split": "--split", "global_batch_size": "--batch-size", "seed": "--seed",
             "recipe": "--recipe", "mix": "--mix (datasets, recipes and weights)",
             "clips": "clip options (--recipe, --clip-len, --stride, --crop-size, --resize-shorter, --mean, --std)"}


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment, not the one of the first ``main()`` (tests and
    notebooks run it more than once in a process, with stderr replaced in between)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def small_video_model(num_classes: int, clip_len: int, crop_size: int, heads=()):
    """Logits of ``num_classes`` or, with ``heads`` (the dataset's label heads, ``VideoTable.heads``'
    Head objects), a dict of them by head name, one output per head on the same trunk."""
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = layers.Input((clip_len, crop_size, crop_size, 3))
    trunk = [layers.Conv3D(16, 3, strides=(1, 2, 2), padding="same", activation="relu"),
             layers.Conv3D(32, 3, strides=2, padding="same", activation="relu"),
             layers.GlobalAveragePooling3D()]
    if not heads:
        return tf.keras.Sequential([inputs, *trunk, layers.Dense(num_classes)])
    features = inputs
    for layer in trunk:
        features = layer(features)
    return tf.keras.Model(inputs, {h.name: layers.Dense(len(h.classes), name=h.name)(features) for h in heads})


def _metric(head) -> str:
    """A head's metric in the logs: accuracy, or for a multi-label head mAP (Keras' AUC of the
    precision-recall curve of each class, averaged over the classes: close to, not exactly, the average
    precision Charades reports)."""
    return "mAP" if head.multi_label else "accuracy"


def _logged(logs: dict, head: str, name: str):
    """A head's loss or metric in Keras' logs: HEAD_NAME, or NAME with one output; tf-keras names the
    metric objects of a reloaded model of several outputs HEAD_HEAD_NAME."""
    return next(logs[k] for k in (f"{head}_{name}", f"{head}_{head}_{name}", name) if k in logs)


def _model(tf, position, num_classes: int, config, heads=()):
    """The saved model (weights and optimizer state) when resuming, else a new compiled one."""
    if position and position["model"]:
        return tf.keras.models.load_model(position["model"])
    model = small_video_model(num_classes, config.clip_len, config.crop_size, heads)
    sparse = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if not heads:
        model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss=sparse, metrics=["accuracy"])
        return model
    # A multi-label head's labels are multi-hot float32 [B, classes]: a sigmoid per class.
    binary = tf.keras.losses.BinaryCrossentropy(from_logits=True)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
                  loss={h.name: binary if h.multi_label else sparse for h in heads},
                  metrics={h.name: [tf.keras.metrics.AUC(curve="PR", multi_label=True, num_labels=len(h.classes),
                                                         from_logits=True, name="mAP") if h.multi_label
                                    else "accuracy"] for h in heads})
    return model


def _int_or_range(text: str):
    """"4" -> 4, "4:6" -> (4, 6)."""
    low, _, high = text.partition(":")
    return (int(low), int(high)) if high else int(low)


def _channels(text: str) -> tuple[float, float, float]:
    """"114.75,114.75,114.75" -> the three values (pixel units, 0-255)."""
    values = tuple(float(v) for v in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"takes R,G,B (three numbers, pixel units 0-255), got {text!r}")
    return values


def _where(data: str) -> str:
    from ..index_tools import storage

    return data if storage.is_url(data) else os.path.abspath(data)


def _mix_part(text: str, default):
    """"DATA:RECIPE:WEIGHT" -> (DATA, recipe, weight); RECIPE "default" is the default clips."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        raise ValueError(f"--mix takes DATA:RECIPE:WEIGHT (a preset's name or 'default', an integer weight), "
                         f"got {text!r}")
    return parts[0], default if parts[1] == "default" else parts[1], int(parts[2])


def main(argv=None) -> int:
    from ..loader.config import RECIPES, ClipConfig, resolve
    from ..loader.errors import ReaderError, reader_errors
    from ..loader.gpu import quiet_tensorflow
    from ..loader.sampling import SplitError

    p = argparse.ArgumentParser(prog="dali-video-train", description=__doc__)
    p.add_argument("--data", help="shard glob or dataset folder, local or s3://, gs:// (default: a small "
                                  "sample dataset)")
    p.add_argument("--split", help="split of a dataset folder that holds several (train.tfrecord, train-*, "
                                   "train_*, *-train-*)")
    p.add_argument("--mixed-classes", action="store_true", help="read files whose labels name different classes "
                                                                "together (refused by default)")
    p.add_argument("--cpu", action="store_true", help="CPU fallback: decode on the CPU, no GPU needed")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--recipe", choices=tuple(RECIPES), help="a published training recipe's clips (scale jitter, "
                   "random resized crop, colour and temporal jitter, repeated clips; see dali_video.loader.config); "
                   "the options below override it. Default: 16 frames, 112-pixel crops, flip")
    p.add_argument("--mix", action="append", metavar="DATA:RECIPE:WEIGHT",
                   help="instead of --data and --recipe, train on a mixture (dali_video.Mixture), one --mix per "
                   "dataset: RECIPE a preset's name or 'default'; labels follow each other, dataset after dataset")
    p.add_argument("--clip-len", type=int)
    p.add_argument("--stride", type=_int_or_range, help="frame step, or LOW:HIGH drawn per clip")
    p.add_argument("--crop-size", type=int)
    p.add_argument("--resize-shorter", type=_int_or_range,
                   help="resize frames before cropping, or LOW:HIGH drawn per clip (default: as stored)")
    p.add_argument("--mean", type=_channels, metavar="R,G,B", help="subtracted from the pixels (0-255), "
                   "overriding the recipe's (with --mix: every recipe's; they must agree)")
    p.add_argument("--std", type=_channels, metavar="R,G,B", help="the pixels are divided by it (0-255 units), "
                   "overriding the recipe's (with --mix: every recipe's)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--steps-per-epoch", type=int, help="default: one pass over the videos")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", help="save the model and the clip position here after every epoch, and "
                                            "resume from them when they exist (after a preemption, say); "
                                            "across hosts, a folder every worker sees")
    args = p.parse_args(argv)
    if args.mix and (args.data or args.recipe):
        p.error("--mix names every dataset and its recipe: pass it without --data and --recipe")
    quiet_tensorflow()
    library = logging.getLogger("dali_video")
    if not library.handlers:  # its log (the files taken, videos shorter than a clip, ...) is the user's
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("dali-video-train: %(message)s"))
        library.addHandler(handler)
        library.setLevel(logging.INFO)
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}")
    workers = len(cluster.get("cluster", {}).get("worker", []))
    if workers > 1:  # before TensorFlow is imported: tf.keras is then tf-keras (Keras 2)
        os.environ["TF_USE_LEGACY_KERAS"] = "1"

    import tensorflow as tf

    from ..loader.dataset import clip_dataset, distribute, steps_per_epoch
    from ..loader.gpu import enable_memory_growth
    from ..loader.monitor import InputMonitor
    from ..loader.resume import ClipPosition, check_run, dataset_fingerprint, read_position
    from .sample_data import sample_dataset
    from ..loader.sampling import Mixture, labels_by_head, load_table, mixture_table

    data = args.data or str(sample_dataset())
    device = "cpu" if args.cpu else "gpu"
    # Before anything uses a GPU: TensorFlow would otherwise take all its memory and leave DALI none.
    if device == "gpu" and not enable_memory_growth():
        print("dali-video-train: no GPU visible to TensorFlow; using the CPU fallback (--cpu)", file=sys.stderr)
        device = "cpu"
    options = {k: v for k, v in (("clip_len", args.clip_len), ("stride", args.stride), ("crop_size", args.crop_size),
                                 ("resize_shorter", args.resize_shorter), ("mean", args.mean), ("std", args.std))
               if v is not None}
    try:
        default = ClipConfig(clip_len=16, crop_size=112)
        if args.mix:  # the recipes travel in the mixture; the options override each
            data = Mixture([_mix_part(m, default) for m in args.mix])
            config = resolve(data.parts[0][1], True, options)
            kw = dict(batch_size=args.batch_size, split=args.split, mixed_classes=args.mixed_classes, **options)
        else:
            config = resolve(args.recipe or default, True, options)
            kw = dict(batch_size=args.batch_size, recipe=config, split=args.split,
                      mixed_classes=args.mixed_classes)
        position = read_position(args.checkpoint_dir) if args.checkpoint_dir else None
        seed, initial_clip = args.seed, position["clip"] if position else 0
        if workers > 1:  # every worker reads its share of each global batch and runs the same steps
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            batch = kw.pop("batch_size")
            ds = distribute(strategy, data, global_batch_size=batch, device=device, seed=seed,
                            initial_clip=initial_clip, **kw)
            steps = args.steps_per_epoch or steps_per_epoch(data, batch_size=batch, **kw)
            tables = [load_table(f, args.split, mixed_classes=args.mixed_classes)
                      for f, *_ in (data.parts if args.mix else [(data,)])]
            table = mixture_table(data, tables) if args.mix else tables[0]
        else:
            strategy = tf.distribute.get_strategy()
            ds = clip_dataset(data, device=device, seed=seed, initial_clip=initial_clip, **kw)
            loader = ds._dali_video_loader  # the video table it loaded: no second pass over the indexes
            steps = args.steps_per_epoch or loader.steps_per_epoch
            table = loader.table
        # Labels as a dict by head (clip_dataset) unless one single-label head: then [B], as without heads.
        heads = [h for h, _, _ in table.heads] if labels_by_head(table.heads) else []
        num_classes = int(table.label.max()) + 1
        # What the clip position means: a restart must read the same clips (see resume.check_run).
        where = [[_where(f), str(r), w] for f, r, w in data.parts] if args.mix else _where(data)
        run = {"data": where,
               "dataset": dataset_fingerprint(table), "split": args.split, "recipe": args.recipe,
               "mix": [[str(r), w] for _, r, w in data.parts] if args.mix else None,
               "clips": dataclasses.asdict(config), "global_batch_size": args.batch_size, "seed": seed}
        if position:
            check_run(args.checkpoint_dir, position.get("run"), run, RUN_FLAGS)
    except SplitError as e:
        print(f"dali-video-train: error: {e.folder} holds the splits {e.found}: pass --split to pick one",
              file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"dali-video-train: error: {e}", file=sys.stderr)
        return 1
    if position and position["epoch"] >= args.epochs:
        print(f"dali-video-train: nothing left to train: {args.checkpoint_dir} holds a run that finished epoch "
              f"{position['epoch']} and --epochs is {args.epochs}; pass --epochs above {position['epoch']} to "
              f"train further, or another --checkpoint-dir to start a new run", flush=True)
        return 0
    tf.keras.utils.set_random_seed(args.seed)
    resolver = strategy.cluster_resolver  # across hosts: the chief writes the position, all save the model
    chief = getattr(strategy.extended, "should_checkpoint", True)
    task = f"{resolver.task_type}-{resolver.task_id}" if resolver else "0"
    with strategy.scope():
        model = _model(tf, position, num_classes, config, heads)
    if position:
        print(f"resuming from {args.checkpoint_dir}: epoch {position['epoch']}, clip {initial_clip}", flush=True)
    first_epoch = position["epoch"] if position else 0

    class Speed(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.start
            clips, wait = steps * args.batch_size, logs.get("input_wait")
            scores = {f"{h.name}_{m}": _logged(logs, h.name, m) for h in heads for m in ("loss", _metric(h))}
            print(json.dumps({"epoch": epoch + 1, "loss": round(float(logs["loss"]), 4),
                              **{k: round(float(v), 4) for k, v in (scores or {"accuracy": logs["accuracy"]}).items()},
                              "clips_per_s": round(clips / seconds, 1),
                              "frames_per_s": round(clips * config.clip_len / seconds, 1),
                              "clip": initial_clip + (epoch + 1 - first_epoch) * clips,
                              "input_wait": None if wait is None else round(wait, 3)}),
                  flush=True)

    monitor = InputMonitor()  # the share of each epoch spent waiting for input, on any device
    callbacks = [monitor, Speed()]  # the monitor first: Speed prints its input_wait
    if args.checkpoint_dir:
        callbacks.append(ClipPosition(args.checkpoint_dir, seed=seed, global_batch_size=args.batch_size,
                                      initial_clip=initial_clip, chief=chief, task=task, run=run))

    print(f"training on {data} ({device}): {steps} steps/epoch, batch {args.batch_size}, clip {config.clip_len}"
          f"x{config.crop_size}x{config.crop_size}, "
          + (f"label heads {', '.join(map(str, heads))}, " if heads else f"{num_classes} classes, ")
          + (f"recipes {', '.join(m.rsplit(':', 2)[1] for m in args.mix)}" if args.mix
             else f"recipe {args.recipe or 'default'}"),
          flush=True)
    try:
        with reader_errors():
            model.fit(ds, epochs=args.epochs, initial_epoch=first_epoch, steps_per_epoch=steps,
                      callbacks=callbacks, verbose=0, shuffle=False)
    except ReaderError as e:  # a damaged frame, say: its message alone, not DALI's and TensorFlow's context
        print(f"dali-video-train: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
