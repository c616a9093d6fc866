"""The run-directory format, and ``load_run``: the public way back to a trained model.

    RUN/config.json        the resolved RunConfig (``--config RUN/config.json`` repeats the run)
    RUN/metrics.jsonl      one JSON line per epoch
    RUN/results.json       status, final and best metrics, batch plan, versions
    RUN/model.safetensors  final weights (written when the run completes)
    RUN/checkpoints/       resume state (see lbtkit.checkpoint)
    RUN/.lock              the advisory lock a live run holds (flock; empty of meaning otherwise)
    RUN/launch.log         the stderr of ``--num-processes N`` launches (lbtkit.launch_output)

Every file but metrics.jsonl is written atomically (temporary name, fsync, rename), so a kill
at any instant leaves either the old or the new file, never a torn one; files get the mode
the umask allows, like any other file the user creates. metrics.jsonl is appended to, so a
kill mid-append can leave a torn last line: this module is the one reader of run files, and
it drops (and logs) what it cannot parse; a resumed run rewrites the file without it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import platform
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lbtkit.config import RunConfig
from lbtkit.errors import (  # noqa: F401 (STATUS_*: importable from here, as before)
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    STATUS_INTERRUPTED,
    CheckpointError,
    RunDirBusyError,
    UserError,
    WriteFailed,
)

log = logging.getLogger(__name__)

class RunDir:
    """Paths and readers/writers of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config_path = self.root / "config.json"
        self.metrics_path = self.root / "metrics.jsonl"
        self.results_path = self.root / "results.json"
        self.model_path = self.root / "model.safetensors"
        self.evals_path = self.root / "evals.jsonl"  # runs with targets: by optimizer step
        self.checkpoints = self.root / "checkpoints"
        self.snapshots = self.root / "snapshots"  # weights kept for analysis (targets met)
        self.lock_path = self.root / ".lock"

    def create(self) -> None:
        ensure_directory(self.root)
        ensure_directory(self.checkpoints)

    def read_config(self) -> RunConfig | None:
        """The stored config; None when there is none. Unreadable raises CheckpointError:
        without it we cannot tell whether the checkpoints belong to this run."""
        if not self.config_path.exists():
            return None
        values = read_json(self.config_path, kind=dict)
        return RunConfig.from_dict(values, source=str(self.config_path))

    def read_results(self) -> dict[str, Any] | None:
        """The stored results (a dict with a string ``status``); None when absent or
        unreadable (logged). A run rewrites the file when it ends, so nothing depends on a
        damaged one; ``results_path.exists()`` tells the two cases apart."""
        if not self.results_path.exists():
            return None
        try:
            results = read_json(self.results_path, kind=dict)
        except UserError as exc:
            log.warning("ignoring an unreadable results file: %s", exc)
            return None
        if not isinstance(results, dict) or not isinstance(results.get("status"), str):
            log.warning("ignoring %s: not a results table with a status", self.results_path)
            return None
        return results

    def read_metrics(self) -> list[dict[str, Any]]:
        """The epoch rows (dicts with a numeric ``epoch``). A line torn by a kill mid-append,
        or otherwise unparseable, is dropped and logged; the file is not changed here (a live
        run may be appending): ``keep_metrics_before`` rewrites it on resume."""
        try:
            text = read_regular_file(self.metrics_path).decode(errors="replace")
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("ignoring unreadable %s: %s", self.metrics_path, exc)
            return []
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            row = _metrics_row(line)
            if row is None:
                log.warning("%s line %d is torn or not an epoch row; dropped: %.200r",
                            self.metrics_path, number, line)
                continue
            rows.append(row)
        return rows

    def append_metrics(self, row: dict[str, Any]) -> None:
        _append_line(self.metrics_path, row)

    def read_evals(self) -> list[dict[str, Any]]:
        """The evaluation rows of a run with targets (dicts with an integer ``step``); torn
        or unparseable lines are dropped, as in ``read_metrics``."""
        try:
            text = read_regular_file(self.evals_path).decode(errors="replace")
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("ignoring unreadable %s: %s", self.evals_path, exc)
            return []
        rows = [_row_with(line, "step") for line in text.splitlines() if line.strip()]
        return [row for row in rows if row is not None]

    def append_evals(self, row: dict[str, Any]) -> None:
        _append_line(self.evals_path, row)

    def keep_evals_through(self, step: int) -> None:
        """Drop evaluation rows after ``step`` (a resumed run redoes them)."""
        if self.evals_path.exists():
            rows = [r for r in self.read_evals() if r["step"] <= step]
            atomic_write_text(self.evals_path, "".join(json.dumps(r) + "\n" for r in rows))

    def keep_metrics_before(self, epochs_completed: int) -> None:
        """Drop epoch lines a resumed run is about to redo (they came after its checkpoint),
        and any torn line a kill left behind."""
        rows = [r for r in self.read_metrics() if r["epoch"] <= epochs_completed]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))


def _metrics_row(line: str) -> dict[str, Any] | None:
    return _row_with(line, "epoch")


def _row_with(line: str, key: str) -> dict[str, Any] | None:
    """The JSON object on ``line`` when it has an integer ``key``; else None."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return None
    value = row.get(key) if isinstance(row, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return row


def _append_line(path: Path, row: dict[str, Any]) -> None:
    try:
        with open(path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise WriteFailed(path, _reason(exc)) from None


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
        raise WriteFailed(path, _reason(exc)) from None


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
        raise WriteFailed(path, _reason(exc)) from None
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
        raise WriteFailed(path, _reason(exc)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _reason(exc: OSError) -> str:
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
    run = RunDir(root)
    ensure_directory(run.root)
    try:  # never through a symbolic link: the file it names would be truncated and written
        fd = os.open(run.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, file_mode())
    except OSError as exc:
        _refuse_a_linked_lock(run, exc)
        raise WriteFailed(run.lock_path, _reason(exc)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirBusyError(_busy_message(run, fd)) from None
        with contextlib.suppress(OSError):  # who holds it: for the refusal message only
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def check_not_locked(root: str | Path) -> None:
    """Raise RunDirBusyError when a live run holds ``root``'s lock (a check before launching
    processes; the run itself takes the lock)."""
    run = RunDir(root)
    try:
        fd = os.open(run.lock_path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        _refuse_a_linked_lock(run, exc)
        return  # no lock file (or none we can open): nobody to wait for
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunDirBusyError(_busy_message(run, fd)) from None
    finally:
        os.close(fd)


def _refuse_a_linked_lock(run: RunDir, exc: OSError) -> None:
    if exc.errno == errno.ELOOP or run.lock_path.is_symlink():
        raise UserError(f"{run.lock_path} is a symbolic link; lbtkit does not follow it (it "
                        f"would overwrite what it points to): remove it and rerun") from None


def _busy_message(run: RunDir, fd: int) -> str:
    try:
        holder = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        holder = []
    who = f" (pid {holder[0]} on {holder[1]})" if len(holder) == 2 else ""
    return (f"{run.root} is in use by another live run{who}; wait for it to end or choose "
            f"another --output")


@contextlib.contextmanager
def guard_run(root: str | Path, *, main: bool) -> Iterator[None]:
    """What ``lbtkit.train.run`` holds around training: the directory's lock (main process
    only), and a failed write that says where the last complete checkpoint is."""
    from lbtkit.checkpoint import latest_checkpoint

    with run_lock(root) if main else contextlib.nullcontext():
        try:
            yield
        except WriteFailed as exc:
            last = latest_checkpoint(RunDir(root).checkpoints)
            note = (f"; the last complete checkpoint {last} is still there: free space and "
                    f"rerun the same command to resume") if last else "; no checkpoint yet"
            raise exc.noting(note) if "checkpoint" not in exc.note else exc from None


def versions() -> dict[str, str | None]:
    """What produced a result: interpreter, libraries, and the lbtkit commit when in a checkout."""
    import accelerate
    import torch

    import lbtkit

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "lbtkit": lbtkit.__version__,
        "git_commit": _git_commit(),
    }


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def load_run(path: str | Path, *, device: str = "cpu"):  # -> tuple[nn.Module, RunConfig]
    """Return ``(model, config)`` of a completed run, its final weights loaded, in eval mode."""
    from lbtkit.checkpoint import load_weights
    from lbtkit.models import build_model_for

    run = RunDir(path)
    if not run.root.is_dir():
        raise CheckpointError(f"run directory not found: {run.root}")
    config = run.read_config()
    if config is None:
        raise CheckpointError(f"{run.root} is not a run directory (no config.json)")
    if not run.model_path.exists():
        status = (run.read_results() or {}).get("status", "not finished")
        raise CheckpointError(f"{run.root} has no final weights (run status: {status})")
    model = build_model_for(config, initial_weights=False)
    load_weights(model, run.model_path)
    return model.to(device).eval(), config
