"""Running the real command lines as a user does (a subprocess), and what every refused input must satisfy.

Used by the bad-input matrix (tests/test_bad_inputs*.py) and the interrupt tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATE = os.path.join(ROOT, "Wan2.1", "generate.py")
SAMPLE_VIDEO = os.path.join(ROOT, "HunyuanVideo", "sample_video.py")
PROFILE_WAN = os.path.join(ROOT, "scripts", "profile_wan.py")
PROFILE_HUNYUAN = os.path.join(ROOT, "scripts", "profile_hunyuan.py")
VIDEO_METRICS = os.path.join(ROOT, "scripts", "video_metrics.py")
SWEEP_WAN = os.path.join(ROOT, "scripts", "sweep_wan.sh")

# Lines the command lines log once they start loading weights: a refused input must come before any of them.
LOADING_LINES = ("T5: loaded", "Creating WanModel", "DiT config:", "running on the CPU: every component")


@dataclass
class Run:
    returncode: int
    output: str  # stdout and stderr
    seconds: float


def run_command(command: list[str], cwd: str, env_extra: dict | None = None, timeout: float = 120) -> Run:
    """Runs ``command`` in ``cwd`` with one thread (a shared 2-core machine) and without PYTHONPATH (the packages
    come from the install, as for a user)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MODEL_BASE")}
    env.update({"OMP_NUM_THREADS": "1", **(env_extra or {})})
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return Run(result.returncode, result.stdout + result.stderr, time.perf_counter() - start)


def run_python(script: str, args: list[str], cwd: str, env_extra: dict | None = None) -> Run:
    return run_command([sys.executable, script, *args], cwd, env_extra)


def files_under(folder: str) -> set[str]:
    """Every file and folder below ``folder``, hidden ones included (relative paths)."""
    found = set()
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(parent, name), folder))
    return found


def assert_refused(run: Run, needles: list[str], folder: str, before: set[str], max_seconds: float = 60) -> None:
    """A refused input: exit code != 0, a message naming ``needles`` (the flag and the value), no traceback, no model
    loaded, nothing new in ``folder`` (hidden files included)."""
    assert run.returncode != 0, run.output[-3000:]
    for needle in needles:
        assert needle in run.output, f"{needle!r} not in:\n{run.output[-3000:]}"
    assert "Traceback" not in run.output, run.output[-3000:]
    loaded = [line for line in LOADING_LINES if line in run.output]
    assert not loaded, f"refused only after loading ({loaded}):\n{run.output[-3000:]}"
    assert files_under(folder) == before, sorted(files_under(folder) - before)
    assert run.seconds < max_seconds, run.seconds


def make_inputs(folder: str) -> None:
    """The input files the matrix cases name (each case gets its own copy in its folder): a JSON list instead of a
    profile, a profile with a block index given as a string, a folder and a plain file."""
    with open(os.path.join(folder, "list.json"), "w") as handle:
        json.dump([1, 2], handle)
    with open(os.path.join(ROOT, "Wan2.1", "wan", "cache_profiles", "t2v-tiny.json")) as handle:
        profile = json.load(handle)
    profile["groups"][0]["cached_blocks"][1] = "3"
    with open(os.path.join(folder, "string_index.json"), "w") as handle:
        json.dump(profile, handle)
    os.makedirs(os.path.join(folder, "a_folder"))
    with open(os.path.join(folder, "a_file"), "w") as handle:
        handle.write("not a folder")


@dataclass
class Case:
    """One refused input: the arguments and the words its message must contain (``{d}``: the case's folder)."""

    args: list[str]
    needles: list[str]
    env: dict | None = None


def run_cases(command: list[str], cases: dict[str, Case], root: str, make_inputs=None,
              workers: int = 2) -> dict[str, tuple[Run, str, set[str], list[str]]]:
    """Runs every case of one command line, each in its own folder (also its working directory, so that default
    outputs would land there). A Python script runs in forked children of one :class:`Zygote` (its imports done
    once); any other command (bash) as a plain subprocess, two at a time.

    Args:
        command: ``[sys.executable, SCRIPT, *fixed args]`` or another command line.
        cases: case id -> :class:`Case`.
        root: an empty folder for the case folders.
        make_inputs: called with each case folder before its run, to write the input files the case names.

    Returns:
        case id -> (the run, its folder, the folder's files before the run, the needles).
    """
    from concurrent.futures import ThreadPoolExecutor

    prepared = {}
    for index, (name, case) in enumerate(cases.items()):
        folder = os.path.join(root, f"case{index:02d}")
        os.makedirs(folder)
        if make_inputs is not None:
            make_inputs(folder)
        args = [arg.replace("{d}", folder) for arg in case.args]
        needles = [needle.replace("{d}", folder) for needle in case.needles]
        prepared[name] = (args, folder, files_under(folder), needles, case.env)
    if command[0] == sys.executable:
        with Zygote(command[1]) as zygote:
            runs = {name: zygote.run(command[2:] + args, folder, env) for name, (args, folder, _, _, env)
                    in prepared.items()}
    else:
        with ThreadPoolExecutor(workers) as pool:
            futures = {name: pool.submit(run_command, command + args, folder, env)
                       for name, (args, folder, _, _, env) in prepared.items()}
            runs = {name: future.result() for name, future in futures.items()}
    return {name: (runs[name], folder, before, needles) for name, (_, folder, before, needles, _) in prepared.items()}


ZYGOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli_zygote.py")


class Zygote:
    """Runs one Python command line many times through tests/cli_zygote.py: each run is a forked child process
    that executes the script as ``__main__`` with its own arguments, folder and output, exactly as ``python SCRIPT
    ARGS`` would, but without importing torch again (seconds of CPU per run on the test machine)."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.logs = tempfile.mkdtemp(prefix="zygote-logs-")  # outside every case folder
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MODEL_BASE")}
        env["OMP_NUM_THREADS"] = "1"
        self.process = subprocess.Popen([sys.executable, ZYGOTE, script], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.count = 0

    def run(self, args: list[str], cwd: str, env: dict | None = None, timeout: float = 120) -> Run:
        self.count += 1
        output = os.path.join(self.logs, f"run{self.count}.log")
        start = time.perf_counter()
        self.process.stdin.write(json.dumps({"args": args, "cwd": cwd, "env": env, "output": output}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote of {self.script} ended (exit code {self.process.wait()})")
        pid = json.loads(line)["pid"]
        timer = threading.Timer(timeout, os.kill, (pid, signal.SIGKILL))  # a run that hangs fails, not the suite
        timer.start()
        try:
            returncode = json.loads(self.process.stdout.readline())["returncode"]
        finally:
            timer.cancel()
        with open(output, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        return Run(returncode, text, time.perf_counter() - start)

    def __enter__(self) -> "Zygote":
        return self

    def __exit__(self, *exc) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        shutil.rmtree(self.logs, ignore_errors=True)
