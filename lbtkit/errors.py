"""Errors that end a command with one line on stderr instead of a traceback.

``UserError`` (and its subclasses) means "the user asked for something we cannot do": the CLI
exits ``EXIT_USER_ERROR`` (2). ``EnvironmentFault`` means the request was fine but the machine
cannot carry it out (a full disk, a read-only file system): the CLI exits 1. Anything else is
a bug and keeps its traceback.

This module is also the one home of every exit code and run status: 75, "interrupted, rerun
me", is the number the job scripts (lbtkit/slurm/jobs/*.sh) and Python must agree on. It imports
nothing, so the earliest code of a process (lbtkit.signals, before torch) can use it.
"""

from __future__ import annotations

# Exit codes of every lbtkit command (the README's exit-code table).
EXIT_OK = 0
EXIT_ENVIRONMENT = 1  # the machine refused (full or read-only disk), or a run failed
EXIT_USER_ERROR = 2  # a user mistake: one line naming the bad value
EXIT_DIVERGED = 3  # the run's loss became NaN/inf (recorded: a result, not a crash)
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped by a signal with a checkpoint, rerun to resume
EXIT_SIGNAL_BASE = 128  # a process killed by signal N exits 128 + N (the shell's convention)

# A run's results.json "status".
STATUS_COMPLETED = "completed"
STATUS_DIVERGED = "diverged"
STATUS_INTERRUPTED = "interrupted"
STATUS_FAILED = "failed"  # an exception stopped a sweep entry (recorded by sweep.run_all)


def exit_code(status: str) -> int:
    """The exit code of a run that ended with results.json ``status``."""
    return {
        STATUS_COMPLETED: EXIT_OK,
        STATUS_DIVERGED: EXIT_DIVERGED,
        STATUS_INTERRUPTED: EXIT_INTERRUPTED,
    }.get(status, EXIT_ENVIRONMENT)


class UserError(Exception):
    """A mistake in the user's input (config, paths, data). The message names the bad value."""


class ConfigError(UserError):
    """A configuration value that is invalid or inconsistent."""


class DataNotFoundError(UserError):
    """A dataset is not where the config says; the message says where we looked, how to fetch."""


class CheckpointError(UserError):
    """A checkpoint or run directory that cannot be read."""


class RunDirBusyError(UserError):
    """Another live process holds the run directory's lock (two runs on one directory)."""


class EnvironmentFault(Exception):
    """The machine cannot do what a valid request needs; the message names the file."""


class WriteFailed(EnvironmentFault):
    """A run file could not be written (disk full, read-only file system, permissions)."""

    def __init__(self, path: object, reason: str, note: str = "") -> None:
        self.path, self.reason, self.note = path, reason, note
        super().__init__(f"cannot write {path}: {reason}{note}")

    def __reduce__(self):  # pickled whole (sent to the other processes of a run), not by args
        return WriteFailed, (self.path, self.reason, self.note)

    def noting(self, note: str) -> WriteFailed:
        """The same failure with ``note`` appended (e.g. where the last checkpoint is)."""
        return WriteFailed(self.path, self.reason, self.note + note)
