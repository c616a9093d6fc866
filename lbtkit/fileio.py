"""File I/O every layer of lbtkit shares: atomic writes, JSON, and the one-live-run lock.

Every file written here is written atomically (temporary name, fsync, rename), so a kill at
any instant leaves either the old or the new file, never a torn one; files get the mode the
umask allows, like any other file the user creates. A write the machine refuses (full disk,
read-only file system) is one ``WriteFailed`` naming the file; a path that cannot be a
directory is a ``UserError``. This module imports nothing of lbtkit but ``lbtkit.errors``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lbtkit.errors import CheckpointError, RunDirBusyError, UserError, WriteFailed

LOCK_FILE = ".lock"  # in a run directory: the advisory lock its live run holds


# Far beyond any file lbtkit writes (sweep.json nests 4 deep): deeper is hand-made or hostile,
# and would exhaust the recursion of whatever walks it next (repr, json.dumps, deepcopy).
MAX_JSON_DEPTH = 64
_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", int: "a number",
               float: "a number", bool: "true or false", type(None): "null"}


def read_json(path: str | Path, *, kind: type = object,
              error: type[UserError] = CheckpointError) -> Any:
    """The JSON value in ``path``: the one reader of every JSON file a user hands over or may
    have edited (a sweep plan, a run's config or results, a checkpoint's state). Whatever is
    wrong with it raises ``error`` (a UserError: one line, exit 2) naming the file: missing,
    not a regular file (a FIFO would block), unreadable, not UTF-8, empty, not JSON, nested
    more than MAX_JSON_DEPTH deep, or its top level not a ``kind`` (e.g. ``dict``)."""
    path = Path(path)
    try:
        text = read_regular_file(path).decode("utf-8")
    except FileNotFoundError:
        raise error(f"file not found: {path}") from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise error(f"cannot read {path}: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise error(f"{path} is empty")
    try:
        value = json.loads(text)
        deep = _deeper_than(value, MAX_JSON_DEPTH)
    except RecursionError:
        deep = True
    except ValueError as exc:  # JSONDecodeError, and numbers too long to convert
        raise error(f"{path} is not valid JSON: {_first_line(exc)}") from None
    if deep:
        raise error(f"{path} nests more than {MAX_JSON_DEPTH} levels deep: not a file lbtkit "
                    f"wrote")
    if not isinstance(value, kind):
        raise error(f"{path} holds {_JSON_NAMES.get(type(value), 'a value')} where "
                    f"{_JSON_NAMES.get(kind, kind.__name__)} belongs")
    return value


def read_regular_file(path: Path) -> bytes:
    """The bytes of ``path``; OSError unless it is a regular file (opened without blocking:
    a FIFO named like a run file would wait forever for a writer)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return handle.read()


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays/objects more than ``limit`` levels (without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack += [(child, depth + 1)
                      for child in (item.values() if isinstance(item, dict) else item)]
    return False


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def append_json_line(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` as one JSON line and fsync (not atomic: a kill mid-append can leave a
    torn last line, which the readers of run files drop)."""
    try:
        with open(path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise WriteFailed(path, os_reason(exc)) from None


# --- writing ----------------------------------------------------------------------------------


def ensure_directory(path: Path) -> None:
    """``mkdir -p path``; a path that is a file is a user mistake, a refusal by the system an
    environment fault, each one line naming the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise UserError(f"{path} cannot be a directory: {blocker} is a file; "
                        f"choose another --output") from None
    except OSError as exc:
        raise WriteFailed(path, os_reason(exc)) from None


def file_mode() -> int:
    """The mode a new file gets under the current umask (what ``open`` would give)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read the umask by setting it, then put it back
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` via a temporary file and a rename; OSError becomes WriteFailed."""
    path = Path(path)
    ensure_directory(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise WriteFailed(path, os_reason(exc)) from None
    try:
        with contextlib.suppress(OSError):  # a file system without modes keeps mkstemp's
            os.fchmod(fd, file_mode())  # mkstemp makes 0600; a run's group should read it
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise WriteFailed(path, os_reason(exc)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def os_reason(exc: OSError) -> str:
    """The system's reason for a failed write, for a WriteFailed line."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason += " (disk full)"
    return reason


# --- one live run per directory ---------------------------------------------------------------


@contextlib.contextmanager
def run_lock(root: str | Path) -> Iterator[None]:
    """Hold ``root/.lock`` (flock, exclusive) while the block runs; refuse when another live
    process holds it. The kernel drops the lock when its holder dies, so the file a killed
    run leaves behind never blocks a resume."""
    root = Path(root)
    lock_path = root / LOCK_FILE
    ensure_directory(root)
    try:  # never through a symbolic link: the file it names would be truncated and written
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, file_mode())
    except OSError as exc:
        _refuse_a_linked_lock(lock_path, exc)
        raise WriteFailed(lock_path, os_reason(exc)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirBusyError(_busy_message(root, fd)) from None
        with contextlib.suppress(OSError):  # who holds it: for the refusal message only
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def check_not_locked(root: str | Path) -> None:
    """Raise RunDirBusyError when a live run holds ``root``'s lock (a check before launching
    processes; the run itself takes the lock)."""
    root = Path(root)
    lock_path = root / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        _refuse_a_linked_lock(lock_path, exc)
        return  # no lock file (or none we can open): nobody to wait for
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunDirBusyError(_busy_message(root, fd)) from None
    finally:
        os.close(fd)


def _refuse_a_linked_lock(lock_path: Path, exc: OSError) -> None:
    if exc.errno == errno.ELOOP or lock_path.is_symlink():
        raise UserError(f"{lock_path} is a symbolic link; lbtkit does not follow it (it "
                        f"would overwrite what it points to): remove it and rerun") from None


def _busy_message(root: Path, fd: int) -> str:
    try:
        holder = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        holder = []
    who = f" (pid {holder[0]} on {holder[1]})" if len(holder) == 2 else ""
    return (f"{root} is in use by another live run{who}; wait for it to end or choose "
            f"another --output")
