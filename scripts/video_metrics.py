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
import signal
import sys

from profilingdit.files import (
    atomic_path,
    check_output_file,
    handle_interrupts,
    interrupt_exit_code,
    write_json_atomic,
)
from profilingdit.metrics.video import (
    OptionalMetrics,
    compare,
    markdown,
    pair_files,
    read_video,
    summarise,
)


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
    with handle_interrupts():  # SIGTERM like Ctrl-C: the temporary file is removed on the way out
        try:
            for flag, path, extension in (("--json", args.json, ".json"), ("--md", args.md, ".md")):
                if path is not None:
                    check_output_file(flag, path, (extension,))
            optional = OptionalMetrics(args.lpips_weights, args.lpips_heads, args.fid)
            rows = [compare(read_video(r), read_video(t), name, optional) for name, r, t in pair_files(args.ref, args.test)]
            result = summarise(rows, optional.skipped)
            table = markdown(result)
            print(table, end="")
            if args.json:
                write_json_atomic(args.json, result)
            if args.md:
                with atomic_path(args.md) as temp, open(temp, "w", encoding="utf-8") as handle:
                    handle.write(table)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as err:
            code = interrupt_exit_code(err)
            print(f"error: interrupted by {signal.Signals(code - 128).name}: no file was written", file=sys.stderr)
            return code
        return 0


if __name__ == "__main__":
    sys.exit(main())
