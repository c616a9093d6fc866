"""A child of ``lbtkit.local_pool`` that runs one slot's ``lbtkit`` commands one after another
in a single process: ``python -m lbtkit.pool_worker``.

A fresh ``python -m lbtkit`` per task pays for its imports (torch, accelerate: about 2 s on a
2-core Xeon) and its first data read again; with a study's many short runs that was a tenth
of the wall time (issue 22). Here they are paid once per slot.

Each line on stdin is a task: ``{"args": [...], "log": PATH, "env": {...}}``. The task runs as
``lbtkit ARGS`` would (the same CLI, exit codes and signal handling) with its stdout and
stderr appended to PATH and ``env`` added to the environment for its duration; its exit code
goes back as one line on the worker's original stdout. The worker ends at the end of its input
or after a task that did not exit 0, so a failed or interrupted task leaves nothing behind
for the next one: the pool starts a fresh worker for it.

Signals behave as for a process per task: SIGTERM during a run checkpoints it and the task
exits 75; between tasks the worker itself ends with 75
(``exit_interrupted_during_startup``). The pool gives the worker the parent-death signal.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence

from lbtkit.signals import exit_interrupted_during_startup


def main() -> int:
    exit_interrupted_during_startup()
    from lbtkit.cli import configure_logging

    configure_logging()
    results = os.dup(1)
    requests = os.fdopen(os.dup(0), "r")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the tasks' stdin, as a process per task has it
    os.close(devnull)
    for line in requests:
        request = json.loads(line)
        code = run_task(request["args"], request["log"], request.get("env", {}))
        os.write(results, f"{code}\n".encode())
        if code != 0:
            return code
    # The end of the input: every task's files are written and closed. Skip the interpreter's
    # teardown (about 1 s after training here), which the pool would wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_task(args: Sequence[str], log: str, env: Mapping[str, str]) -> int:
    """``lbtkit ARGS`` in this process, its output appended to ``log``; its exit code."""
    from lbtkit.cpu import record_user_threads

    saved = dict(os.environ)
    os.environ.update(env)
    record_user_threads()
    try:
        with _output_to(log):
            return _exit_code_of(args)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _exit_code_of(args: Sequence[str]) -> int:
    from lbtkit.cli import app

    try:
        app(args=list(args), prog_name="lbtkit")
    except SystemExit as exc:  # how Click ends every command, 0 included
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:  # a bug: its traceback in the task's log, exit 1 as a process's
        traceback.print_exc()
        return 1
    return 0


@contextlib.contextmanager
def _output_to(path: str) -> Iterator[None]:
    """File descriptors 1 and 2 (so ``sys.stdout``, ``sys.stderr`` and what the task's own
    children inherit) appended to ``path``; the next task redirects them again."""
    sys.stdout.flush()
    sys.stderr.flush()
    target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(target, 1)
    os.dup2(target, 2)
    os.close(target)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
