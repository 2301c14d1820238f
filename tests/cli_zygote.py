"""A pre-warmed interpreter that runs one command-line script many times, each run in a forked child process.

    python tests/cli_zygote.py SCRIPT

Imports SCRIPT's modules once (its top level runs under the name ``__zygote__``, so ``main`` does not), then reads
one JSON request per line from stdin: ``{"args": [...], "cwd": ..., "env": {...}, "output": PATH}``. For each it
forks; the child changes to ``cwd``, updates the environment, sends fd 1 and 2 to ``output`` and runs SCRIPT as
``__main__`` with ``sys.argv = [SCRIPT, *args]`` (exactly what ``python SCRIPT args`` runs, minus the imports,
which are already done; every script imports only installed packages, so its folder need not be on the import
path); an uncaught exception prints its traceback, as the interpreter would. The zygote answers
``{"pid": ...}`` when the child starts and ``{"returncode": ...}`` when it ends (negative: killed by that signal).

Why: a refused input is answered in well under a second, but a cold start imports torch (2-3 s of CPU), which
would make the bad-input matrix cost minutes on the 2-core test machine. Nothing the zygote loaded has run: no
torch operation, no logging configuration, no thread pool, so the forked child starts as a fresh process would.
"""

import json
import os
import runpy
import sys
import traceback


def run_child(script: str, request: dict) -> None:
    """In the forked child: never returns."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.update(request.get("env") or {})
        fd = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdin = open(os.devnull)
        sys.argv = [script, *request["args"]]
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exit_:
            if exit_.code is None or isinstance(exit_.code, int):
                code = exit_.code or 0
            else:
                print(exit_.code, file=sys.stderr)
        except BaseException:  # as the interpreter does for an uncaught exception
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    script = os.path.abspath(sys.argv[1])
    runpy.run_path(script, run_name="__zygote__")  # its imports come from the installed packages, as in a real run
    answer = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        answer.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            run_child(script, request)
        answer.write(json.dumps({"pid": pid}) + "\n")
        answer.flush()
        _, status = os.waitpid(pid, 0)
        answer.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        answer.flush()


if __name__ == "__main__":
    main()
