"""Errors that end a command with one line on stderr instead of a traceback.

``UserError`` (and its subclasses) means "the user asked for something we cannot do": the CLI
exits ``EXIT_USER_ERROR`` (2). ``EnvironmentFault`` means the request was fine but the machine
cannot carry it out (a full disk, a read-only file system): the CLI exits 1. Anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations


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

    def noting(self, note: str) -> WriteFailed:
        """The same failure with ``note`` appended (e.g. where the last checkpoint is)."""
        return WriteFailed(self.path, self.reason, self.note + note)
