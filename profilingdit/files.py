"""File helpers shared by both command lines: atomic outputs, output paths checked before any work, safe default
names, clear errors for damaged inputs, and signals that end a run without leaving a partial file."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` on success, deletes it on any error.

    The temporary file lives in the same folder (so ``os.replace`` is an atomic rename), is hidden, and keeps the
    real extension (ffmpeg picks the container from it). A failed run therefore never leaves a partial output.
    A signal caught by :func:`handle_interrupts` while the file was written cancels the rename even if a library
    swallowed the exception it raised: an interrupted run never leaves an output.
    """
    folder, name = os.path.split(os.path.abspath(path))
    stem, extension = os.path.splitext(name)
    temp = os.path.join(folder, f".{stem}.{uuid.uuid4().hex}.partial{extension}")
    signals_before = len(_signals_received)
    try:
        yield temp
        if len(_signals_received) > signals_before:
            raise Interrupted(_signals_received[-1])
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def finite_json(value):
    """``value`` with every NaN or infinite float replaced by None (strict JSON parsers reject NaN and Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def write_json_atomic(path: str, data: dict) -> None:
    """Writes ``data`` as indented, strict JSON (non-finite floats as null, :func:`finite_json`) through
    :func:`atomic_path`."""
    with atomic_path(path) as temp, open(temp, "w", encoding="utf-8") as handle:
        json.dump(finite_json(data), handle, indent=2, allow_nan=False)


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


# ----------------------------------------------------------------------------------------------------------------
# Output paths, checked before any work


def _probe_writable(folder: str) -> bool:
    """Creates and removes a hidden file in ``folder``: the only test that also holds for root, read-only mounts and
    pseudo file systems such as /proc (``os.access`` answers yes there)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    except OSError:
        return False
    os.close(handle)
    os.remove(probe)
    return True


def check_output_file(flag: str, path: str, extensions: tuple[str, ...] = ()) -> str:
    """Checks, before any work, that ``path`` can be written as an output file: not a folder, an allowed extension,
    an existing folder that accepts new files. Writes nothing (a probe file is created and removed).

    Args:
        flag: the command-line flag that gave ``path``, named in the messages (e.g. ``"--save_file"``).
        path: the output file.
        extensions: allowed extensions, lower-case with the dot (``(".mp4",)``); empty: any.

    Returns:
        ``path``.

    Raises:
        ValueError: naming the flag, the value and what is allowed.
    """
    allowed = f"a file name ending in {' or '.join(extensions)}" if extensions else "a file name"
    if not path:
        raise ValueError(f"{flag} is empty: expected {allowed}")
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a folder: expected {allowed}")
    if extensions and os.path.splitext(path)[1].lower() not in extensions:
        raise ValueError(f"{flag} {path!r} is not allowed: expected {allowed}")
    check_output_folder(flag, os.path.dirname(os.path.abspath(path)), path, create=False)
    return path


def check_output_folder(flag: str, folder: str, value: str | None = None, create: bool = False) -> str:
    """Checks that output files can be written into ``folder``.

    Args:
        flag: the flag named in the messages.
        folder: the folder.
        value: the flag's value as given (default ``folder``), shown in the messages.
        create: the folder is created later when missing: then its nearest existing parent must be writable.

    Returns:
        ``folder``.

    Raises:
        ValueError: the folder (or, with ``create``, its nearest existing parent) is missing, not a folder, or not
            writable.
    """
    value = folder if value is None else value
    target = os.path.abspath(folder)
    if create:
        while not os.path.exists(target) and os.path.dirname(target) != target:
            target = os.path.dirname(target)
    if not os.path.exists(target):
        raise ValueError(f"{flag} {value!r}: the folder {target} does not exist (create it first)")
    if not os.path.isdir(target):
        raise ValueError(f"{flag} {value!r}: {target} is a file, not a folder")
    if not _probe_writable(target):
        raise ValueError(f"{flag} {value!r}: the folder {target} is not writable")
    return folder


_UNSAFE_NAME_CHARACTERS = re.compile(r'[\x00-\x1f\x7f/\\:*?"\'<>|]|[^\S ]')  # [^\S ]: whitespace but ' '


def safe_name_part(text: str, max_chars: int, max_bytes: int) -> str:
    """The part of an output file name taken from user text (a prompt): control characters and whitespace other than
    the plain space (newlines, tabs), path separators and the characters Windows or shells treat specially
    (``: * ? " ' < > |``) become ``_``; then at most ``max_chars`` characters and ``max_bytes`` UTF-8 bytes (a
    prompt of emoji or CJK would otherwise exceed the 255-byte name limit). Plain spaces are kept: each command line
    decides about them as its upstream does."""
    part = _UNSAFE_NAME_CHARACTERS.sub("_", text)[:max_chars]
    while len(part.encode("utf-8")) > max_bytes:
        part = part[:-1]
    return part


# ----------------------------------------------------------------------------------------------------------------
# Signals


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM, raised in the main thread by the handlers of :func:`handle_interrupts`.

    A subclass of KeyboardInterrupt, so that code that already cleans up on Ctrl-C does the same on SIGTERM.
    ``exit_code`` is the shell convention, 128 + the signal number (130, 143).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


_signals_received: list[int] = []


def _raise_interrupted(signum: int, frame) -> None:
    _signals_received.append(signum)
    raise Interrupted(signum)


@contextlib.contextmanager
def handle_interrupts() -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, so that every ``finally``
    runs and :func:`atomic_path` removes its temporary file (the default SIGTERM action kills the process on the
    spot, which left a hidden ``.partial`` file behind). The previous handlers come back on exit; outside the main
    thread (where Python cannot install handlers) the block runs unchanged.

    Usage, around the whole run of a command line: ``with handle_interrupts(): ...``; catch ``KeyboardInterrupt``
    and return :func:`interrupt_exit_code`.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def interrupt_exit_code(err: KeyboardInterrupt) -> int:
    """The exit status of a run ended by ``err``: 128 + the signal number (130 for a plain KeyboardInterrupt)."""
    return getattr(err, "exit_code", 128 + signal.SIGINT)
