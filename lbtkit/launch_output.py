"""What a user sees of a multi-process launch's stderr: what lbtkit's processes say, once.

``accelerate launch`` (torch-elastic) writes its workers' stderr and its own to one stream. When
a worker fails, torch-elastic stops the others and prints its report: the launcher's traceback
and a ChildFailedError table, dozens of lines after the one line that said what went wrong (and
the other workers' reactions to being stopped come in between). ``LaunchStderr`` reads that
stream and shows

- lbtkit's own lines (``warning: ``, and the first ``error: `` or ``interrupted by `` line:
  one outcome, said once however many processes say it) as they come;
- every other line (tracebacks, the launcher's report, library warnings) only when the launch
  failed and nothing lbtkit said or recorded explains why: a bug keeps its traceback, as in
  one process.

Every line also goes to ``RUN/launch.log`` (appended; skipped when it cannot be written, e.g.
on a full disk). torch-elastic's records of the failed workers give the exit code (the
launcher itself always exits 1): see ``LaunchStderr.failed_exit``.
"""

from __future__ import annotations

import collections
import contextlib
import re
import sys
import threading
from pathlib import Path
from typing import IO

from lbtkit.errors import EXIT_INTERRUPTED

LOG_NAME = "launch.log"
_OWN = re.compile(rb"^(?:warning: |error: |interrupted by )")
_OUTCOME = (b"error: ", b"interrupted by ")
# torch-elastic's records of failed workers: the log line of the first it observed, and each
# entry of its ChildFailedError report
_FAILURE = re.compile(rb"failed \(exitcode: (-?\d+)\) local_rank: \d+|^\s*exitcode\s*: (-?\d+)")
_HELD_LINES = 2000  # the end of a long run's other output, for a failure nothing explained


class LaunchStderr:
    """Reads a launcher's stderr in a thread of its own until ``finish``."""

    def __init__(self, stream: IO[bytes], run_dir: Path) -> None:
        self._failed_exits: list[int] = []  # every failed worker's, as torch-elastic records
        self.explained = False  # an outcome line (error, interrupted) was shown
        self._held: collections.deque[bytes] = collections.deque(maxlen=_HELD_LINES)
        self._log = _open_log(Path(run_dir) / LOG_NAME)
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True,
                                        name="launch-stderr")
        self._thread.start()

    @property
    def failed_exit(self) -> int | None:
        """The exit code that says why the launch failed, from the failed workers' records:
        a specific lbtkit code first (2 a user mistake, 3 diverged, ...), then 1 (a failure),
        then 75 (interrupted) or a signal, each the first of its kind. The worker torch-elastic
        observed first may be a bystander: when rank 0 alone fails with a specific code, the
        others lose their connection to it and may exit 1 first (a refused run directory is
        not such a case: every rank refuses it, see ``lbtkit.rundir.guard_run``); when rank 0
        fails (1), the others it stops may exit 75, and a failure must not read as "requeue
        me"."""
        def rank(code: int) -> int:
            return 0 if code > 1 and code != EXIT_INTERRUPTED else 1 if code == 1 else 2

        return min(self._failed_exits, key=rank, default=None)

    def _read(self, stream: IO[bytes]) -> None:
        with contextlib.suppress(OSError, ValueError):  # the pipe closed under us
            for line in iter(stream.readline, b""):
                self.take(line)

    def take(self, line: bytes) -> None:
        """Log ``line``; show it, or hold it (see the module's docstring)."""
        self._write_log(line)
        found = _FAILURE.search(line)
        if found:
            self._failed_exits.append(int(found.group(1) or found.group(2)))
        outcome = line.startswith(_OUTCOME)
        if _OWN.match(line) and not (outcome and self.explained):
            self.explained |= outcome
            _show(line)
        else:
            self._held.append(line)

    def finish(self, *, explained_elsewhere: bool, timeout: float = 30.0) -> None:
        """Wait for the stream to end (every process holding it has exited); show the held
        lines when the launch failed unexplained (``explained_elsewhere``: e.g. the run
        recorded its outcome)."""
        self._thread.join(timeout)
        if not (self.explained or explained_elsewhere):
            for line in self._held:
                _show(line)
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()

    def _write_log(self, line: bytes) -> None:
        if self._log is None:
            return
        try:
            self._log.write(line)
            self._log.flush()
        except OSError:  # a full disk: the terminal still gets what matters
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None


def _open_log(path: Path) -> IO[bytes] | None:
    try:
        return open(path, "ab")  # closed by finish
    except OSError:
        return None


def _show(line: bytes) -> None:
    stream = sys.stderr
    stream.write(line.decode(errors="replace"))
    stream.flush()


def exit_code_of(worker_exit: int) -> int:
    """A worker's exit code as a shell reports it (killed by signal N: 128 + N)."""
    from lbtkit.errors import EXIT_SIGNAL_BASE

    return worker_exit if worker_exit >= 0 else EXIT_SIGNAL_BASE - worker_exit
