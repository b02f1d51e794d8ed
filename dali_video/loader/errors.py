"""The reader's own message, out of the error text DALI and TensorFlow wrap around it; and the error of a
TensorFlow function where TensorFlow is not installed."""
from __future__ import annotations

import contextlib

# DALI puts an operator's exception after this line and its own context after it (DALI 2.x's executor).
_OPENS = "encountered:\n\n"
_CLOSES = ("C++ context:", "Current pipeline object is no longer valid", "Stacktrace")


class ReaderError(RuntimeError):
    """A clip could not be read (a damaged frame, a shard gone): the message is the reader's (shard,
    video, frame, byte offset); ``details`` keeps the full text of DALI's and TensorFlow's error."""

    def __init__(self, message: str, details: str):
        super().__init__(message)
        self.details = details


def reader_message(error) -> str | None:
    """The failing operator's own message inside a DALI pipeline error (as TensorFlow or DALI raise it),
    or None when ``error`` is no such error."""
    _, found, rest = str(error).partition(_OPENS)
    if not found:
        return None
    lines = []
    for line in rest.splitlines():
        if line.startswith(_CLOSES):
            break
        lines.append(line)
    return "\n".join(lines).strip() or None


@contextlib.contextmanager
def reader_errors():
    """Inside, an error of a dali-video pipeline (a damaged frame with ``on_corrupt="raise"``, say) is
    raised as a :class:`ReaderError` whose message is the reader's, instead of TensorFlow's error with
    the message deep in ~20 lines of DALI context. Wrap what iterates the dataset: ``model.fit`` (which
    iterates it inside a ``tf.function``, where the dataset cannot catch the error) or a loop."""
    try:
        yield
    except Exception as e:  # TensorFlow's OpError or DALI's RuntimeError; others pass unchanged
        message = reader_message(e)
        if message is None or isinstance(e, ReaderError):
            raise
        raise ReaderError(message, str(e)) from None


def tensorflow(what: str):
    """TensorFlow, imported for ``dali_video.<what>``; where it is not installed (a DALI-only install,
    docs/install.md), an ImportError that says so and names the way without it."""
    try:
        import tensorflow as tf
    except ModuleNotFoundError as e:
        if e.name != "tensorflow":
            raise
        raise ImportError(f"dali_video.{what} needs TensorFlow, which is not installed here: pip install dali-video "
                          f"with its dependencies (TensorFlow among them), or read clips without TensorFlow with "
                          f"dali_video.clip_pipeline (docs/install.md, \"Without TensorFlow\")") from None
    return tf

