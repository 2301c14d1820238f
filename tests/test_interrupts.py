"""Ctrl-C (SIGINT) and SIGTERM, anywhere in a run: exit code 130 / 143, a message, no partial file (hidden or not).

Real signals to real processes: generate.py while it denoises, and the mp4 writer of both command lines
(``cache_video``, under the command lines' ``handle_interrupts``) while ffmpeg is writing a long video.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cli_runs import GENERATE, files_under
from profilingdit.files import Interrupted, atomic_path, handle_interrupts

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def test_generate_terminated_while_denoising_leaves_nothing(tmp_path):
    """SIGTERM (what a scheduler or `kill` sends); Ctrl-C goes through the same handler (tested while writing)."""
    signum = signal.SIGTERM
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, GENERATE, "--task", "t2v-tiny", "--sample_steps", "200", "--prompt", "a red circle",
               "--base_seed", "1", "--save_file", "out.mp4", "--cache_stats", "out.json"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines = []
    for line in process.stdout:  # wait until the denoising loop has started
        lines.append(line)
        if "Generating video" in line:
            break
    time.sleep(0.5)
    process.send_signal(signum)
    lines.append(process.stdout.read())
    output = "".join(lines)
    assert process.wait(timeout=60) == EXIT_CODES[signum], output[-3000:]
    assert f"interrupted by {signal.Signals(signum).name}: stopped, no partial file left" in output
    assert "Traceback" not in output
    assert files_under(str(tmp_path)) == set()


WRITER = textwrap.dedent("""
    import glob, os, signal, sys, threading, time
    import torch
    from profilingdit.files import handle_interrupts, interrupt_exit_code
    from wan.utils.utils import cache_video

    folder, signum = sys.argv[1], int(sys.argv[2])

    def fire():  # once ffmpeg is writing the hidden temporary file, and some frames in
        while not glob.glob(os.path.join(folder, ".*partial*")):
            time.sleep(0.001)
        time.sleep(0.2)
        print("signal sent while writing", glob.glob(os.path.join(folder, ".*partial*")), flush=True)
        os.kill(os.getpid(), signum)

    video = torch.rand(1, 3, 120, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1  # ~1 s to encode
    threading.Thread(target=fire, daemon=True).start()
    try:
        with handle_interrupts():  # as generate.py and sample_video.py run
            cache_video(video, save_file=os.path.join(folder, "out.mp4"), fps=8)
    except KeyboardInterrupt as err:
        print("stopped:", err, flush=True)
        sys.exit(interrupt_exit_code(err))
    print("completed", flush=True)
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_while_the_mp4_is_written_leaves_nothing(tmp_path, signum):
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", WRITER, str(out), str(int(signum))], env=env, capture_output=True,
                            text=True, timeout=120)
    assert "signal sent while writing ['" in result.stdout, result.stdout + result.stderr[-2000:]
    assert result.returncode == EXIT_CODES[signum], result.stdout + result.stderr[-2000:]
    assert f"stopped: interrupted by {signal.Signals(signum).name}" in result.stdout
    assert files_under(str(out)) == set()  # neither out.mp4 nor the hidden .out.<hex>.partial.mp4


def test_a_swallowed_interrupt_still_cancels_the_output(tmp_path):
    """A library that catches the KeyboardInterrupt raised inside it (the issue saw a Ctrl-C during the mp4 write end
    in a complete video and exit code 0) cannot make the run finish: atomic_path refuses to rename."""
    target = tmp_path / "out.json"
    with pytest.raises(Interrupted) as raised:
        with handle_interrupts(), atomic_path(str(target)) as temp:
            with open(temp, "w") as handle:
                handle.write("{}")
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)  # the handler raises in here
            except KeyboardInterrupt:
                pass  # swallowed, as a careless library would
    assert raised.value.exit_code == 130
    assert files_under(str(tmp_path)) == set()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored after the block
