"""File helpers shared by both command lines: atomic outputs and clear errors for damaged inputs."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` on success, deletes it on any error.

    The temporary file lives in the same folder (so ``os.replace`` is an atomic rename), is hidden, and keeps the
    real extension (ffmpeg picks the container from it). A failed run therefore never leaves a partial output.
    """
    folder, name = os.path.split(os.path.abspath(path))
    stem, extension = os.path.splitext(name)
    temp = os.path.join(folder, f".{stem}.{uuid.uuid4().hex}.partial{extension}")
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def load_component(what: str, path: str, load: Callable[[], T]) -> T:
    """Runs a loader; a corrupt or truncated file surfaces as a ValueError naming the piece and the path.

    FileNotFoundError and ValueError (the loaders' own clear messages) pass through unchanged; anything else raised
    while reading (torch.load, safetensors and transformers each have their own error types for damaged files) is
    turned into one message the user can act on.
    """
    try:
        return load()
    except (FileNotFoundError, ValueError):
        raise
    except Exception as err:
        raise ValueError(f"{what} at {path} could not be read (corrupt or incomplete file?): {err}") from err
