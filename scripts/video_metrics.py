"""Fidelity of cached videos against their full-compute references: per-frame PSNR and SSIM, LPIPS and FID if possible.

Command line of :mod:`profilingdit.metrics.video` (the metrics' definitions are in its docstring). ``--json`` and
``--md`` are checked (extension, writable folder) before any video is read, and written atomically; Ctrl-C or
SIGTERM ends the run with exit code 130 or 143 and no file.

Usage (files are paired by name when two folders are given):

    python scripts/video_metrics.py --ref outputs/full --test outputs/tea0.1 --json m.json --md m.md
    python scripts/video_metrics.py --ref full.mp4 --test cached.mp4 [--lpips-weights alexnet-owt-7be5be79.pth]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile

from profilingdit.metrics.video import (
    OptionalMetrics,
    compare,
    finite_json,
    markdown,
    pair_files,
    read_video,
    summarise,
)


def _write(path: str, text: str) -> None:
    """Writes ``text`` under a hidden temporary name in the same folder, then renames it (never a partial file)."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.partial")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_output(flag: str, path: str | None, extension: str) -> None:
    """``--json``/``--md`` before any work: the extension, and a folder that exists and accepts new files.

    Raises:
        ValueError: naming the flag, the value and what is allowed.
    """
    if path is None:
        return
    if os.path.isdir(path) or path.endswith(os.sep):
        raise ValueError(f"{flag} {path!r} is a folder: expected a file name ending in {extension}")
    if os.path.splitext(path)[1].lower() != extension:
        raise ValueError(f"{flag} {path!r} is not allowed: expected a file name ending in {extension}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path!r}: the folder {folder} does not exist (create it first)")
    try:  # a real probe: os.access says yes to root on read-only mounts and /proc
        handle, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    except OSError:
        raise ValueError(f"{flag} {path!r}: the folder {folder} is not writable") from None
    os.close(handle)
    os.remove(probe)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="Full-compute video file or folder.")
    parser.add_argument("--test", required=True, help="Cached video file or folder (paired by file name).")
    parser.add_argument("--json", default=None, help="Write the results as JSON here.")
    parser.add_argument("--md", default=None, help="Write the markdown table here.")
    parser.add_argument("--lpips-weights", default=None, help="torchvision AlexNet weights (enables LPIPS).")
    parser.add_argument("--lpips-heads", default=None, help="LPIPS v0.1 alex heads (default: the shipped ones).")
    parser.add_argument("--fid", action="store_true", help="Per-video FID (needs a working pytorch-fid).")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # like Ctrl-C: the temporary file is removed on the way out
    try:
        check_output("--json", args.json, ".json")
        check_output("--md", args.md, ".md")
        optional = OptionalMetrics(args.lpips_weights, args.lpips_heads, args.fid)
        rows = [compare(read_video(r), read_video(t), name, optional) for name, r, t in pair_files(args.ref, args.test)]
        result = summarise(rows, optional.skipped)
        table = markdown(result)
        print(table, end="")
        if args.json:
            _write(args.json, json.dumps(finite_json(result), indent=2, allow_nan=False))
        if args.md:
            _write(args.md, table)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        signum = err.args[0] if err.args and isinstance(err.args[0], int) else signal.SIGINT
        print(f"error: interrupted by {signal.Signals(signum).name}: no file was written", file=sys.stderr)
        return 128 + signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
