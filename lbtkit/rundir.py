"""The run-directory format: the one reader of run files.

    RUN/config.json        the resolved RunConfig (``--config RUN/config.json`` repeats the run)
    RUN/metrics.jsonl      one JSON line per epoch
    RUN/results.json       status, final and best metrics, batch plan, versions
    RUN/model.safetensors  final weights (written when the run completes)
    RUN/checkpoints/       resume state (see lbtkit.checkpoint)
    RUN/.lock              the advisory lock a live run holds (flock; empty of meaning otherwise)
    RUN/launch.log         the stderr of ``--num-processes N`` launches (lbtkit.launch_output)

Every file but metrics.jsonl is written atomically (``lbtkit.fileio``), so a kill at any
instant leaves either the old or the new file, never a torn one. metrics.jsonl is appended to,
so a kill mid-append can leave a torn last line: this module is the one reader of run files,
and it drops (and logs) what it cannot parse; a resumed run rewrites the file without it.
A finished run's model comes back with ``lbtkit.run_model.load_run``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lbtkit.config import RunConfig
from lbtkit.errors import EnvironmentFault, UserError, WriteFailed
from lbtkit.fileio import (
    LOCK_FILE,
    append_json_line,
    atomic_write_text,
    ensure_directory,
    read_json,
    read_regular_file,
    run_lock,
)
from lbtkit.version import __version__

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
        self.lock_path = self.root / LOCK_FILE

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
        append_json_line(self.metrics_path, row)

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
        append_json_line(self.evals_path, row)

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


@contextlib.contextmanager
def guard_run(root: str | Path, *, main: bool,
              from_main: Callable[[Any], Any] = lambda value: value) -> Iterator[None]:
    """What ``lbtkit.train.run`` holds around training: the directory's lock (main process
    only), and a failed write that says where the last complete checkpoint is.

    ``from_main`` gives every process the main process's value (a collective: every process
    calls it once, here). Through it the main process's refusal of the directory (another live
    run holds it, a linked or unwritable lock) is raised on every process, so every process
    ends with the same line and exit code, whichever ends first. Else the others fail as
    bystanders when the main process leaves their next collective ("connection closed", exit 1),
    and the launcher, seeing one of them end first, records that and stops the main process
    before its own exit code is recorded."""
    from lbtkit.checkpoint import latest_checkpoint

    with contextlib.ExitStack() as held:
        refusal = from_main(_lock_or_refusal(root, held) if main else None)
        if refusal is not None:
            raise refusal
        try:
            yield
        except WriteFailed as exc:
            last = latest_checkpoint(RunDir(root).checkpoints)
            note = (f"; the last complete checkpoint {last} is still there: free space and "
                    f"rerun the same command to resume") if last else "; no checkpoint yet"
            raise exc.noting(note) if "checkpoint" not in exc.note else exc from None


def _lock_or_refusal(root: str | Path, held: contextlib.ExitStack) -> Exception | None:
    """Take ``root``'s lock into ``held``; the one-line error that refused it, if any."""
    try:
        held.enter_context(run_lock(root))
    except (UserError, EnvironmentFault) as exc:
        return exc
    return None


def versions() -> dict[str, str | None]:
    """What produced a result: interpreter, libraries, and the lbtkit commit when in a checkout."""
    import accelerate
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "lbtkit": __version__,
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
