"""Every fault a user meets ends in one line on stderr and the documented exit code.

The table holds the bad inputs: each case builds its setup in a fresh directory and gives the
command line, the exit code (2 a user mistake, 1 an environment fault) and a needle that the
single stderr line must contain. The integration tests below it kill, signal and starve real
runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
import torch

from lbtkit.checkpoint import latest_checkpoint, save_weights
from lbtkit.config import FLOAT_RANGES, RunConfig
from lbtkit.errors import RunDirBusyError, UserError, WriteFailed
from lbtkit.fileio import atomic_write_text, run_lock, write_json
from lbtkit.rundir import RunDir, guard_run

from helpers import alive, cli_env, invoke_cli, scaled_timeout, train_smoke

SMOKE = ["run", "--preset", "smoke", "--epochs", "2", "--no-progress"]


def lbtkit(*args, tmp_path: Path, env: dict | None = None, timeout: float = 300,
           fresh: bool = False) -> subprocess.CompletedProcess:
    """The CLI in this process (invoke_cli), or with ``fresh`` in a fresh interpreter as a
    user starts it (kept for some cases of each kind: the entry point's own handling)."""
    if not fresh:
        return invoke_cli(*args, tmp_path=tmp_path, env=env)
    return subprocess.run(
        [sys.executable, "-m", "lbtkit", *map(str, args)], capture_output=True, text=True,
        timeout=scaled_timeout(timeout), env={**cli_env(tmp_path), **(env or {})},
    )


def assert_one_line(result: subprocess.CompletedProcess, code: int, needle: str) -> str:
    """Exit ``code``, no traceback, exactly one line on stderr, containing ``needle``."""
    shown = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == code, shown
    assert "Traceback" not in result.stderr + result.stdout, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, shown
    assert needle in lines[0], shown
    return lines[0]


def _interrupted_copy(checkpointed: Path, tmp_path: Path) -> tuple[Path, Path]:
    run_dir = tmp_path / "run"
    shutil.copytree(checkpointed, run_dir)
    return run_dir, latest_checkpoint(run_dir / "checkpoints")


# --- the table -------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    setup: Callable[[Path, Path], list]  # (tmp_path, checkpointed run) -> argv
    code: int
    needle: str
    env: Callable[[Path], dict] | None = None
    fresh: bool = False  # in a fresh interpreter (python -m lbtkit), not in this process


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a directory\n")
    return path


def _list_config(tmp_path: Path, _) -> list:
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"batch_size": 64}]))
    return ["run", "--config", path, "--dry-run"]


def _incomplete_state(tmp_path: Path, checkpointed: Path) -> list:
    run_dir, checkpoint = _interrupted_copy(checkpointed, tmp_path)
    state = json.loads((checkpoint / "state.json").read_text())
    del state["state"]["global_step"]
    (checkpoint / "state.json").write_text(json.dumps(state))
    return [*SMOKE, "--output", run_dir]


class _Payload:
    """Unpickling this would create the file ``marker``: the refusal must come first."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_optimizer(tmp_path: Path, checkpointed: Path) -> list:
    run_dir, checkpoint = _interrupted_copy(checkpointed, tmp_path)
    torch.save({"state": {}, "param_groups": [], "x": _Payload(tmp_path / "pwned")},
               checkpoint / "optimizer.pt")
    return [*SMOKE, "--output", run_dir]


def _corrupt_init(tmp_path: Path, _) -> list:
    study = tmp_path / "study"
    study.mkdir()
    (study / "init.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    return ["study", "keskar", "--preset", "smoke", "--sb", "32", "--lb", "256", "--epochs", "1",
            "--no-progress", "--output", study]


def _missing_cifar_four_processes(tmp_path: Path, _) -> list:
    return ["run", "--preset", "seed-mobilenetv2-finetune", "--batch-size", "256",
            "--num-processes", "4", "--data-dir", tmp_path / "no-data", "--output", tmp_path / "r"]


def _fake_cifar(tmp_path: Path) -> Path:
    """Empty files where CIFAR-10 belongs: enough for the presence checks before a run."""
    from lbtkit.data import dataset_files

    data = tmp_path / "data"
    for path in dataset_files("cifar10", data):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return data


def _missing_imagenet_weights(tmp_path: Path, _) -> list:
    return ["run", "--preset", "seed-mobilenetv2-finetune", "--batch-size", "256",
            "--num-processes", "2", "--data-dir", _fake_cifar(tmp_path),
            "--output", tmp_path / "r"]


def _sweep_without_data(tmp_path: Path, _) -> list:
    sweep = tmp_path / "sweep"
    planned = lbtkit("sweep", "plan", "--model", "c1", "--dataset", "cifar10", "--epochs", "1",
                     "--data-dir", tmp_path / "no-data", "--batch-sizes", "32,64",
                     "--seeds", "0,1,2", "--output", sweep, tmp_path=tmp_path)
    assert planned.returncode == 0, planned.stderr
    return ["sweep", "run", sweep, "--no-progress"]


def _held_lock(tmp_path: Path, _) -> list:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = (run_dir / ".lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.write("4242 somehost\n")
    lock.flush()
    _HELD.append(lock)  # released when the test ends
    return [*SMOKE, "--output", run_dir]


_HELD: list = []


CASES = [
    Case("weight decay nan", lambda t, c: ["run", "--weight-decay", "nan", "--dry-run"], 2,
         "weight_decay must be a finite number in [0, inf), got nan", fresh=True),
    Case("weight decay inf", lambda t, c: ["run", "--weight-decay", "inf", "--dry-run"], 2,
         "got inf"),
    Case("warm-up nan", lambda t, c: ["run", "--warmup-epochs", "nan", "--dry-run"], 2,
         "warmup_epochs"),
    Case("momentum nan", lambda t, c: ["run", "--momentum", "nan", "--dry-run"], 2, "momentum"),
    Case("step gamma inf", lambda t, c: ["run", "--step-gamma", "inf", "--dry-run"], 2,
         "step_gamma"),
    Case("sam rho nan", lambda t, c: ["run", "--sam-rho", "nan", "--dry-run"], 2, "sam_rho"),
    Case("seed beyond 64 bits",
         lambda t, c: ["run", "--seed", str(2**64), "--dry-run"], 2, str(2**64)),
    Case("negative seed", lambda t, c: ["run", "--seed", "-1", "--dry-run"], 2, "seed"),
    Case("config is a JSON list", _list_config, 2, "list.json"),
    Case("output is a file",
         lambda t, c: [*SMOKE, "--output", _file(t)], 2, "a-file is a file", fresh=True),
    Case("output below a file",
         lambda t, c: [*SMOKE, "--output", _file(t) / "run"], 2, "a-file is a file"),
    Case("demo output is a file",
         lambda t, c: ["demo", "--quick", "--no-progress", "--output", _file(t)], 2,
         "a-file is a file"),
    Case("checkpoint state incomplete", _incomplete_state, 2, "no 'global_step'"),
    Case("malicious optimizer.pt", _malicious_optimizer, 2, "optimizer.pt", fresh=True),
    Case("corrupt init.safetensors in study", _corrupt_init, 2, "init.safetensors"),
    Case("4 processes, no data", _missing_cifar_four_processes, 2, "not found", fresh=True),
    Case("no ImageNet weights", _missing_imagenet_weights, 2, "lbtkit fetch weights",
         env=lambda t: {"TORCH_HOME": str(t / "torch-home")}, fresh=True),  # would launch
    Case("sweep run, no data", _sweep_without_data, 2, "not found"),
    Case("second live run", _held_lock, 2, "in use by another live run (pid 4242 on somehost)",
         fresh=True),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_fault_ends_in_one_line(case, tmp_path, checkpointed):
    argv = case.setup(tmp_path, checkpointed)
    try:
        result = lbtkit(*argv, tmp_path=tmp_path, env=case.env(tmp_path) if case.env else None,
                        fresh=case.fresh)
    finally:
        while _HELD:
            _HELD.pop().close()
    line = assert_one_line(result, case.code, case.needle)
    assert "weights_only" not in line  # never suggest turning the protection off


def test_malicious_optimizer_state_never_runs(tmp_path, checkpointed):
    argv = _malicious_optimizer(tmp_path, checkpointed)
    line = assert_one_line(lbtkit(*argv, tmp_path=tmp_path), 2, "refused")
    assert "posix.system" in line and "could run code" in line
    assert not (tmp_path / "pwned").exists()


def test_sweep_without_data_fails_before_any_entry(tmp_path, checkpointed):
    argv = _sweep_without_data(tmp_path, checkpointed)
    assert_one_line(lbtkit(*argv, tmp_path=tmp_path), 2, "dataset 'cifar10' not found")
    status = lbtkit("sweep", "status", argv[2], tmp_path=tmp_path)
    assert status.returncode == 0
    assert "failed" not in status.stdout and status.stdout.count("pending") == 6


# --- class 10: Click's usage errors are one line too ---------------------------------------------

# (command line, what the one line says). Click prints its usage block, a hint and the message.
USAGE_MISTAKES = [
    (["run", "--batch-size", "1.5", "--dry-run"],
     "invalid value for '--batch-size': '1.5' is not a whole number"),
    (["run", "--batch-size", "abc", "--dry-run"], "'--batch-size': 'abc' is not a whole number"),
    (["run", "--lr", "abc", "--dry-run"], "invalid value for '--lr': 'abc' is not a number"),
    (["run", "--lr", "1e-3x", "--dry-run"], "'--lr': '1e-3x' is not a number"),
    (["run", "--num-processes", "two", "--dry-run"], "'--num-processes': 'two'"),
    (["run", "--no-such-flag"], "no such option: --no-such-flag"),
    (["run", "--lr"], "option '--lr' requires an argument"),
    (["run", "--preset", "smoke", "extra"], "unexpected extra argument(s) (extra)"),
    (["sweep", "run-task", "sweeps/s"], "missing option '--index'"),
    (["sweep", "run-task", "sweeps/s", "--index=one"], "got 'one'"),
    (["sweep", "run-task", "sweeps/s", "--index", "one"], "got 'one'"),
    (["report"], "missing argument"),
    (["bogus"], "no such command 'bogus'"),
    (["sweep", "bogus"], "no such command 'bogus'"),
]


@pytest.mark.parametrize(("argv", "needle"), USAGE_MISTAKES,
                         ids=[" ".join(argv) for argv, _ in USAGE_MISTAKES])
def test_a_usage_mistake_is_one_line_naming_the_value(tmp_path, argv, needle):
    fresh = argv[:3] == ["run", "--batch-size", "1.5"]  # one as a user starts it
    line = assert_one_line(lbtkit(*argv, tmp_path=tmp_path, fresh=fresh), 2, needle)
    assert line.startswith("error: ")


def test_no_arguments_still_show_the_help(tmp_path):
    for argv in ([], ["sweep"]):
        result = lbtkit(*argv, tmp_path=tmp_path)
        assert "Usage:" in result.stdout + result.stderr and "Commands:" in \
            result.stdout + result.stderr


# --- the library side of the same promises ---------------------------------------------------


def test_every_float_field_has_a_range():
    floats = {f.name for f in fields(RunConfig) if "float" in str(f.type)}
    assert floats == set(FLOAT_RANGES)


@pytest.mark.parametrize("name", sorted(FLOAT_RANGES))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_float_field_refuses_non_finite_values(name, value):
    from lbtkit.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{name} must be a finite number"):
        RunConfig().updated({name: value}).validate()


def test_a_torn_last_metrics_line_is_dropped_and_logged(tmp_path, caplog):
    run = RunDir(tmp_path)
    run.append_metrics({"epoch": 1, "val_acc": 0.5})
    with run.metrics_path.open("a") as handle:
        handle.write('{"epoch": 2, "val_')
    with caplog.at_level(logging.WARNING, logger="lbtkit.rundir"):
        assert run.read_metrics() == [{"epoch": 1, "val_acc": 0.5}]
    assert "line 2 is torn" in caplog.text and '{"epoch": 2, "val_' in caplog.text
    run.keep_metrics_before(5)  # what a resumed run does first: the repair
    assert run.metrics_path.read_text() == '{"epoch": 1, "val_acc": 0.5}\n'


@pytest.mark.parametrize("text", ['{"status": "comp', "[1, 2]", '{"no_status": 1}', "\xff"])
def test_unreadable_results_are_none_and_logged(tmp_path, caplog, text):
    run = RunDir(tmp_path)
    run.results_path.write_text(text, errors="surrogateescape")
    with caplog.at_level(logging.WARNING, logger="lbtkit.rundir"):
        assert run.read_results() is None
    assert str(run.results_path) in caplog.text


def test_sweep_and_report_read_runs_through_rundir(tmp_path):
    from lbtkit.sweep import STATE_UNREADABLE, read_run

    run = RunDir(tmp_path / "run")
    run.create()
    run.config_path.write_text("{}")
    run.append_metrics({"epoch": 1, "val_acc": 0.25})
    with run.metrics_path.open("a") as handle:
        handle.write('{"epo')
    record = read_run({"run_dir": str(run.root), "config": {}})
    assert [row["epoch"] for row in record.metrics] == [1]
    run.results_path.write_text("{torn")
    assert read_run({"run_dir": str(run.root), "config": {}}).state == STATE_UNREADABLE


def _fail_fsync(fd):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    write_json(path, {"status": "interrupted"})
    monkeypatch.setattr(os, "fsync", _fail_fsync)
    with pytest.raises(WriteFailed, match=r"cannot write .*results\.json: .*disk full"):
        write_json(path, {"status": "completed"})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"status": "interrupted"}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left


def test_a_failed_write_in_a_run_names_the_last_checkpoint(tmp_path, checkpointed):
    run_dir, checkpoint = _interrupted_copy(checkpointed, tmp_path)
    with pytest.raises(WriteFailed) as caught, guard_run(run_dir, main=True):
        raise WriteFailed(run_dir / "results.json", "No space left on device (disk full)")
    assert str(checkpoint) in str(caught.value) and "still there" in str(caught.value)


def test_a_refused_directory_is_an_environment_fault(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(WriteFailed, match="Permission denied"):
        write_json(tmp_path / "new" / "results.json", {})


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_run_files_respect_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "config.json", "{}")
        save_weights(torch.nn.Linear(2, 2), tmp_path / "model.safetensors")
    finally:
        os.umask(previous)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_the_lock_refuses_a_second_holder_and_a_dead_ones_file_does_not_block(tmp_path):
    (tmp_path / ".lock").write_text("999999 deadhost\n")  # left by a killed run
    busy = pytest.raises(RunDirBusyError, match=f"pid {os.getpid()}")
    with run_lock(tmp_path), busy, run_lock(tmp_path):
        pass
    with run_lock(tmp_path):  # released on exit
        pass


def test_every_process_of_a_run_refuses_a_directory_the_main_one_refused(tmp_path):
    """The main process's refusal reaches the others (through ``from_main``, a broadcast in
    a launch), pickled whole: they end with the same line and code, not as bystanders."""
    import pickle

    sent: list[object] = []

    def broadcast(value):
        sent.append(value)
        return pickle.loads(pickle.dumps(value))

    busy = pytest.raises(RunDirBusyError, match=f"pid {os.getpid()}")
    with run_lock(tmp_path), busy, guard_run(tmp_path, main=True, from_main=broadcast):
        pass
    full = WriteFailed(tmp_path / ".lock", "No space left on device")
    for refusal, kind in [(sent[0], RunDirBusyError), (full, WriteFailed)]:
        with pytest.raises(kind, match=re.escape(str(refusal))), \
                guard_run(tmp_path, main=False, from_main=lambda _, sent=refusal: broadcast(sent)):
            pass
    with guard_run(tmp_path, main=True, from_main=broadcast):  # free: nothing to share
        assert sent[-1] is None


def test_an_output_that_is_a_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="is a file"), run_lock(_file(tmp_path)):
        pass


# --- integration: real runs, signals, a full disk ----------------------------------------------


def _start(*args, tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    # SIGINT as a shell gives it: a test runner's worker (pytest-xdist) may ignore SIGINT,
    # and an ignored disposition is inherited and kept by Python and by lbtkit.
    return subprocess.Popen([sys.executable, "-m", "lbtkit", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**cli_env(tmp_path), **(env or {})},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (SigCgt in /proc/PID/status)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_starting_exits_75(tmp_path, signum):
    run_dir = tmp_path / "run"
    proc = _start(*SMOKE, "--output", run_dir, tmp_path=tmp_path)
    deadline = time.monotonic() + scaled_timeout(30)
    # Python catches SIGINT from its own start; lbtkit's handlers are in once SIGTERM is.
    while not _catches(proc.pid, signal.SIGTERM):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the handler was never installed"
        time.sleep(0.001)
    proc.send_signal(signum)  # still importing: torch, the data and the model are far ahead
    out, err = proc.communicate(timeout=scaled_timeout(60))
    assert proc.returncode == 75, (out, err)
    assert "Traceback" not in err
    assert "rerun the same command" in err
    assert not (run_dir / "metrics.jsonl").exists()  # it was stopped before training


@pytest.mark.slow
def test_a_second_run_on_a_live_directory_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    args = ["run", "--preset", "smoke", "--epochs", "500", "--no-progress", "--output", run_dir]
    first = _start(*args, tmp_path=tmp_path)
    try:
        deadline = time.monotonic() + scaled_timeout(240)
        while not RunDir(run_dir).read_metrics():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never logged an epoch"
            time.sleep(0.05)
        second = lbtkit(*args, tmp_path=tmp_path)
        assert first.poll() is None, "the first run ended before the second was refused"
        assert_one_line(second, 2, f"in use by another live run (pid {first.pid} on")
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=scaled_timeout(120))
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 75, (out, err)  # it went on undisturbed until stopped
    epochs = [row["epoch"] for row in RunDir(run_dir).read_metrics()]
    assert epochs == list(range(1, len(epochs) + 1))  # each epoch once


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MiB tmpfs: room for one smoke checkpoint (8.4 MiB), not for the next."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_line_and_the_last_checkpoint_stays(
        tmp_path, small_disk):
    run_dir = small_disk / "run"
    result = lbtkit("run", "--preset", "smoke", "--epochs", "3", "--no-progress",
                    "--output", run_dir, tmp_path=tmp_path)
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    line = assert_one_line(result, 1, "No space left on device")
    assert f"the last complete checkpoint {checkpoint} is still there" in line
    assert checkpoint.name == "step-000000022"  # epoch 1's, complete
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "model.safetensors", "optimizer.pt", "rng-rank0.safetensors", "state.json"]


@pytest.mark.slow
def test_an_output_on_a_read_only_file_system_is_an_environment_fault(tmp_path, small_disk):
    remounted = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)],
                               capture_output=True)
    if remounted.returncode != 0:
        pytest.skip(f"cannot remount read-only: {remounted.stderr.decode().strip()}")
    result = lbtkit(*SMOKE, "--output", small_disk / "run", tmp_path=tmp_path, fresh=True)
    assert_one_line(result, 1, "Read-only file system")


# --- exit codes: one home ----------------------------------------------------------------------


def test_every_exit_code_and_status_is_defined_in_errors_only():
    import lbtkit
    from lbtkit import errors

    package = Path(lbtkit.__file__).parent
    defined = re.compile(r"^(EXIT_\w+|STATUS_\w+|_EXIT_\w+)\s*=", re.MULTILINE)
    elsewhere = [f"{path.relative_to(package)}: {match.group(1)}"
                 for path in package.rglob("*.py") if path.name != "errors.py"
                 for match in defined.finditer(path.read_text())]
    assert elsewhere == []
    # The job scripts' literal codes are errors' numbers (the shell cannot import them).
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    shell = (package / "slurm" / "jobs" / "common.sh").read_text()
    literal = {int(n) for n in re.findall(r"\bexit (\d+)", shell)}
    assert literal and literal <= codes, literal - codes


# --- class 1: a stop request at a boundary is never lost ----------------------------------------


@pytest.fixture
def startup_handlers():
    """The handlers ``python -m lbtkit`` installs first (exit 75 outside the loop), undone after."""
    from lbtkit.signals import exit_interrupted_during_startup

    names = ("SIGINT", "SIGUSR1", "SIGTERM")
    saved = {name: signal.getsignal(getattr(signal, name)) for name in names}
    for name in names:  # as a shell starts it (a test worker may ignore SIGINT)
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    exit_interrupted_during_startup()
    yield
    for name, handler in saved.items():
        signal.signal(getattr(signal, name), handler)


def _two_entry_sweep(tmp_path: Path, **values) -> Path:
    from lbtkit.config import preset_values
    from lbtkit.sweep import plan_sweep

    base = RunConfig().updated(preset_values("smoke")).updated({"epochs": 1, **values})
    plan_sweep(base, {"batch_size": [256, 512]}, tmp_path / "sweep")
    return tmp_path / "sweep"


def _signal_on_first_call(monkeypatch, target: str, signum: int = signal.SIGTERM) -> None:
    """Deliver ``signum`` to this process as ``target`` is first called: a deterministic point
    (after the loop's last check for ``lbtkit.train._finish``; between entries for run)."""
    import importlib

    module_name, name = target.rsplit(".", 1)
    module = importlib.import_module(module_name)
    real = getattr(module, name)
    sent: list[int] = []

    def wrapper(*args, **kwargs):
        if not sent:
            sent.append(signum)
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


# Where the request lands: after the loop's last check (the results being written), and in the
# epoch where a stop rule ends the run early ("stopping early" used to win over the request).
LATE_STOPS = {
    "SIGTERM while finishing": ("_finish", signal.SIGTERM, {}),
    "SIGUSR1 while finishing": ("_finish", signal.SIGUSR1, {}),
    "SIGTERM as the stop rule fires": ("_metrics_row", signal.SIGTERM,
                                       {"epochs": 3, "stop_train_acc": 0.01}),
}


@pytest.mark.parametrize("where", LATE_STOPS)
def test_a_stop_after_the_last_check_ends_a_sweep_before_the_next_entry(
        tmp_path, monkeypatch, capfd, startup_handlers, where):
    from lbtkit.sweep import sweep_status

    hook, signum, values = LATE_STOPS[where]
    sweep = _two_entry_sweep(tmp_path, **values)
    _signal_on_first_call(monkeypatch, f"lbtkit.train.{hook}", signum)
    result = invoke_cli("sweep", "run", sweep, "--no-progress", tmp_path=tmp_path)
    assert result.returncode == 75, (result.stdout, result.stderr)
    assert [row["state"] for row in sweep_status(sweep)] == ["completed", "pending"]
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"interrupted by {signal.Signals(signum).name} outside the training loop "
                     "(starting or finishing: nothing to checkpoint); rerun the same command"]


def test_a_stop_between_two_entries_ends_the_sweep(tmp_path, monkeypatch, startup_handlers):
    from lbtkit.sweep import sweep_status

    sweep = _two_entry_sweep(tmp_path)
    calls: list[int] = []
    import lbtkit.train

    real_run = lbtkit.train.run

    def run(config, **kwargs):
        calls.append(config.batch_size)
        if len(calls) == 2:  # entry 0 is done and recorded: the gap between the two
            os.kill(os.getpid(), signal.SIGTERM)
        return real_run(config, **kwargs)

    monkeypatch.setattr(lbtkit.train, "run", run)
    result = invoke_cli("sweep", "run", sweep, "--no-progress", tmp_path=tmp_path)
    assert result.returncode == 75, (result.stdout, result.stderr)
    assert [row["state"] for row in sweep_status(sweep)] == ["completed", "pending"]


def test_graceful_stop_passes_on_a_request_it_did_not_act_on():
    from lbtkit.signals import GracefulStop

    seen: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    try:
        with GracefulStop() as stop:  # acted on: spent
            os.kill(os.getpid(), signal.SIGUSR1)
            stop.acted_on()
        assert stop.requested == "SIGUSR1" and seen == []
        with GracefulStop() as stop:  # arrived after the last check: passed on
            os.kill(os.getpid(), signal.SIGUSR1)
        assert seen == [signal.SIGUSR1]
        with contextlib.suppress(RuntimeError), GracefulStop():  # failing anyway: not passed on
            os.kill(os.getpid(), signal.SIGUSR1)
            raise RuntimeError
        assert seen == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in map(int, task.read_text().split()):
                found += [child, *_descendants(child)]
    return found


def _wait_for(condition: Callable[[], bool], seconds: float, what: str,
              proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + scaled_timeout(seconds)
    while not condition():
        if proc is not None:
            assert proc.poll() is None, (what, proc.communicate())
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(0.01)


TWO_PROCESSES = ["run", "--preset", "smoke", "--model", "c1", "--num-processes", "2",
                 "--no-progress"]


@pytest.mark.slow
def test_a_signal_as_a_two_process_run_starts_its_launcher_exits_75(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(*TWO_PROCESSES, "--epochs", "2", "--output", run_dir, tmp_path=tmp_path)
    try:
        # The point: the launcher runs (its Python is importing), and handles no SIGTERM yet:
        # the relayed signal kills it (128 + 15 = 143, as it used to end).
        def launcher_starting() -> bool:
            return any(b"accelerate.commands.launch" in _cmdline(pid)
                       for pid in _descendants(proc.pid))

        _wait_for(launcher_starting, 120, "the launcher to start", proc)
        (launcher,) = _descendants(proc.pid)
        assert not _catches(launcher, signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=scaled_timeout(120))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, (out, err)
    assert "rerun the same command" in out + err
    assert not run_dir.joinpath("results.json").exists()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.slow
def test_kill_9_of_lbtkit_stops_its_launcher_and_workers(tmp_path):
    from lbtkit.fileio import check_not_locked

    run_dir = tmp_path / "run"
    proc = _start(*TWO_PROCESSES, "--epochs", "40", "--output", run_dir, tmp_path=tmp_path)
    family: list[int] = []
    try:
        _wait_for(lambda: (run_dir / "metrics.jsonl").exists(), 300, "an epoch", proc)
        family += _descendants(proc.pid)
        assert len(family) >= 3, family  # the launcher and its two workers
        proc.kill()
        proc.wait(timeout=scaled_timeout(30))
        # They checkpoint and stop (SIGTERM from the kernel as their parent dies).
        _wait_for(lambda: not any(map(alive, family)), 120, f"{family} to end")
    finally:
        proc.kill()
        for pid in filter(alive, family):
            os.kill(pid, signal.SIGKILL)
    check_not_locked(run_dir)  # the lock is free
    # The workers' stdout is still ours (their stderr went to the killed lbtkit): what they
    # said, and what they left, if they stopped without recording it.
    said = proc.communicate(timeout=scaled_timeout(30))[0]
    assert (run_dir / "results.json").exists(), (said, sorted(map(str, run_dir.rglob("*"))))
    assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted", said


# --- class 2: the job step always says what to do ------------------------------------------------


def _job_sweep(tmp_path: Path) -> Path:
    from lbtkit.config import preset_values
    from lbtkit.sweep import plan_sweep

    base = RunConfig().updated(preset_values("smoke")).updated({"epochs": 1})
    plan_sweep(base, {"batch_size": [32, 64]}, tmp_path / "sweep")
    return tmp_path / "sweep"


def _edited_plan(tmp_path: Path, **changes) -> Path:
    sweep = _job_sweep(tmp_path)
    plan = json.loads((sweep / "sweep.json").read_text())
    plan.update(changes)
    (sweep / "sweep.json").write_text(json.dumps(plan))
    return sweep


# (name, argv after `lbtkit job`, environment, needle of the one error line)
JOB_MISTAKES = [
    ("finish: array index beyond the plan",
     lambda t: ["finish", "--exit-status", "75", "sweep", "--", _job_sweep(t)],
     {"SLURM_ARRAY_TASK_ID": "99"}, "array index 99 is out of range"),
    ("finish: no sweep directory", lambda t: ["finish", "--exit-status", "75", "sweep"], {},
     "usage: lbtkit job finish sweep -- SWEEP_DIR"),
    ("finish: a non-ASCII digit as the task id",
     lambda t: ["finish", "sweep", "--", _job_sweep(t)], {"SLURM_ARRAY_TASK_ID": "²"},
     "SLURM_ARRAY_TASK_ID must be a number, got '²'"),
    ("finish: an unknown kind", lambda t: ["finish", "bogus", "--", "x"], {},
     "unknown job kind 'bogus'"),
    ("plan: a port beyond 65535",
     lambda t: ["plan", "run", "--", "--output", t / "r"],
     {"LBT_PORT": "99999", "LBT_GPUS_PER_NODE": "2"}, "LBT_PORT must be a port number"),
    ("plan: world_size 'two' in sweep.json",
     lambda t: ["plan", "sweep", "--", _edited_plan(t, world_size="two")],
     {"SLURM_ARRAY_TASK_ID": "0", "LBT_GPUS_PER_NODE": "0"}, "world_size must be a whole"),
]


@pytest.mark.parametrize("case", JOB_MISTAKES, ids=[case[0] for case in JOB_MISTAKES])
def test_a_job_step_mistake_is_one_line_and_finish_still_says_what_to_do(tmp_path, case):
    _, make_argv, env, needle = case
    argv = make_argv(tmp_path)
    clean = {k: "" for k in os.environ if k.startswith(("SLURM_", "LBT_"))}
    result = invoke_cli("job", *argv, tmp_path=tmp_path, env={**clean, **env})
    assert_one_line(result, 2, needle)
    if argv[0] == "finish":
        assert result.stdout.split() == ["exit", "2"]  # what common.sh reads


# --- class 9: a requeue ends, and signals before the start are kept ----------------------------


def _finish(run_dir: Path, *, exit_status: int, signals: list[str], restart: int = 0,
            since: float = 0.0) -> tuple[str, str, list[str]]:
    from lbtkit.slurm.requeue import finish_job

    env = {"SLURM_JOB_ID": "41", "SLURM_RESTART_COUNT": str(restart)}
    return finish_job("run", ["--output", str(run_dir)], exit_status=exit_status,
                      signals=signals, since=since, environ=env)


def test_restarts_that_make_no_progress_stop_requeueing(tmp_path):
    from lbtkit.slurm.requeue import MAX_IDLE_RESTARTS

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    actions = [_finish(run_dir, exit_status=75, signals=["USR1"], restart=n)[0]
               for n in range(MAX_IDLE_RESTARTS)]
    assert actions == ["requeue"] * (MAX_IDLE_RESTARTS - 1) + ["exit"]
    action, value, notes = _finish(run_dir, exit_status=75, signals=["USR1"], restart=500)
    assert (action, value) == ("exit", "75")
    assert "made no progress" in notes[-1] and "LBT_SIGNAL_MARGIN" in notes[-1]
    assert "before its first checkpoint" in notes[0]  # not "with a checkpoint": there is none
    # Progress (a newer checkpoint) starts the count again: a long run may requeue many times.
    (run_dir / "checkpoints" / "step-000000010").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-000000010" / "state.json").write_text("{}")
    action, _, notes = _finish(run_dir, exit_status=75, signals=["USR1"], restart=501)
    assert action == "requeue", notes
    assert "with a checkpoint in" in notes[0]


@pytest.mark.parametrize(("status", "code", "signals", "expected"), [
    (None, 143, ["USR1"], ("requeue", "41")),  # launcher killed as it started: interrupted
    (None, 143, [], ("exit", "143")),  # nobody told it to stop: a failure
    ("completed", 75, ["USR1"], ("exit", "0")),  # a signal as it completed: nothing to redo
])
def test_the_outcome_of_a_run_told_to_stop(tmp_path, status, code, signals, expected):
    from lbtkit.slurm.env import SlurmEnv
    from lbtkit.slurm.requeue import outcome

    action, value, notes = outcome(status=status, exit_status=code, signals=signals,
                                   diverged_exit=3, slurm=SlurmEnv(job_id="41"), run_dir="r")
    assert (action, value) == expected, notes


JOBS_DIR = Path(__file__).resolve().parent.parent / "lbtkit" / "slurm" / "jobs"


def test_usr1_before_the_run_starts_is_kept_and_requeues(tmp_path):
    """The time-limit signal reaches the batch shell while it plans: the run must not start
    (it would be killed at the limit: TIMEOUT, no requeue); the job ends as interrupted."""
    run_dir, marker = tmp_path / "run", tmp_path / "started"
    fake_scontrol = tmp_path / "bin" / "scontrol"
    fake_scontrol.parent.mkdir()
    fake_scontrol.write_text('#!/bin/bash\n[ "$1" = show ] && echo "JobState=RUNNING"\n'
                             f'[ "$1" = requeue ] && echo "requeued $2" >> {tmp_path}/log\n'
                             'exit 0\n')
    fake_scontrol.chmod(0o755)
    script = (f'set -euo pipefail\n. "{JOBS_DIR}/common.sh"\n'
              f"LBT_CMD=(touch {marker}) LBT_FINISH=({sys.executable} -m lbtkit job finish) "
              f"LBT_RELAY=pid\nkill -USR1 $$\nlbt_run\nlbt_finish run --output {run_dir}\n")
    env = {k: v for k, v in cli_env(tmp_path).items() if not k.startswith(("SLURM_", "LBT_"))}
    env.update(SLURM_JOB_ID="41", PATH=f"{fake_scontrol.parent}:{env['PATH']}")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                            timeout=scaled_timeout(120))
    assert result.returncode == 0, result.stdout + result.stderr
    assert not marker.exists()  # never started
    assert "not starting the run" in result.stdout
    assert (tmp_path / "log").read_text() == "requeued 41\n"


@pytest.mark.parametrize(("flags", "seconds"), [
    (["-t", "1"], 60), (["--time=2:30"], 150), (["-t", "1:00:00"], 3600),
    (["--time", "1-2"], 93600), (["-t", "0-0:1:5"], 65), (["-t", "UNLIMITED"], None), ([], None),
])
def test_sbatch_time_limits_are_read(flags, seconds):
    from lbtkit.slurm.submit import time_limit_seconds

    assert time_limit_seconds(["-p", "gpu", *flags]) == seconds


def test_sweep_submit_warns_when_the_time_limit_is_within_the_signal_margin(tmp_path):
    sweep = _job_sweep(tmp_path)
    result = invoke_cli("sweep", "submit", sweep, "--dry-run", "--", "-t", "1",
                        tmp_path=tmp_path, env={"LBT_SIGNAL_MARGIN": "120"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("warning: the time limit (60 s) is not longer than the "
                                    "signal margin (120 s"), result.stderr
    fine = invoke_cli("sweep", "submit", sweep, "--dry-run", "--", "-t", "10",
                      tmp_path=tmp_path, env={"LBT_SIGNAL_MARGIN": "120"})
    assert fine.returncode == 0 and "warning" not in fine.stderr


# --- class 3: an external model is checked once, on one batch, before training ------------------

# Every way a user's builder module can fail: (module source, needle of the one line).
BUILDER_FAILURES = {
    "raises at import": ("raise RuntimeError('boom at import')\n", "RuntimeError: boom at import"),
    "syntax error": ("def build(:\n", "SyntaxError"),
    "returns a non-module": ("def build(**kw):\n    return 3\n", "returned a int, not a torch"),
    "raises": ("def build(**kw):\n    raise ValueError('no such width')\n",
               "the builder failed: ValueError: no such width"),
    "takes no keyword arguments": ("def build():\n    return nn.Linear(1, 1)\n",
                                   "the builder failed: TypeError"),
    "wrong input size": ("def build(*, num_classes, **kw):\n"
                         "    return nn.Sequential(nn.Flatten(), nn.Linear(5, num_classes))\n",
                         "fails on a batch of shape (2, 1, 8, 8)"),
    "wrong number of outputs": ("def build(*, in_channels, image_size, **kw):\n"
                                "    width = in_channels * image_size ** 2\n"
                                "    return nn.Sequential(nn.Flatten(), nn.Linear(width, 3))\n",
                                "gives (2, 3) for a batch of 2 images"),
    "outputs a tuple": ("class Two(nn.Module):\n    def forward(self, x):\n"
                        "        return x, x\n\ndef build(**kw):\n    return Two()\n",
                        "gives tuple for a batch"),
}


def _builder_module(tmp_path: Path, case: str) -> str:
    name = "builder_" + "".join(c if c.isalnum() else "_" for c in case)
    (tmp_path / "modules").mkdir(exist_ok=True)
    (tmp_path / "modules" / f"{name}.py").write_text(
        "from torch import nn\n\n" + BUILDER_FAILURES[case][0])
    return f"{name}:build"


@pytest.mark.parametrize("case", BUILDER_FAILURES)
def test_a_failing_external_model_is_one_line_naming_the_builder(tmp_path, monkeypatch, case):
    model = _builder_module(tmp_path, case)
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    run_dir = tmp_path / "run"
    result = invoke_cli("run", "--preset", "smoke", "--model", model, "--no-progress",
                        "--output", run_dir, tmp_path=tmp_path)
    line = assert_one_line(result, 2, BUILDER_FAILURES[case][1])
    assert model.split(":")[0] in line
    assert not (run_dir / "metrics.jsonl").exists()  # refused before training


@pytest.mark.slow
def test_a_failing_external_model_is_refused_once_before_launching(tmp_path):
    model = _builder_module(tmp_path, "wrong number of outputs")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "modules"),
                                          os.environ.get("PYTHONPATH", "")])}
    result = lbtkit("run", "--preset", "smoke", "--model", model, "--num-processes", "2",
                    "--output", tmp_path / "run", tmp_path=tmp_path, env=env, fresh=True)
    assert_one_line(result, 2, "gives (2, 3) for a batch of 2 images")


def test_the_one_batch_check_changes_neither_the_model_nor_the_random_draws():
    from lbtkit.models.external import check_on_one_batch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2),
                                torch.nn.Dropout(0.5), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 6 * 6, 10))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = torch.get_rng_state()
    check_on_one_batch(model, "m", num_classes=10, in_channels=1, image_size=8)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# --- class 5: a tracker that cannot start does not hide why --------------------------------------


def test_a_tracker_directory_that_is_a_file_is_one_line(tmp_path):
    blocker = _file(tmp_path)
    result = invoke_cli(*SMOKE, "--epochs", "1", "--log-with", "tensorboard", "--tracking-dir",
                        blocker / "tb", "--output", tmp_path / "run", tmp_path=tmp_path)
    assert_one_line(result, 1, "a-file")  # the system refused a path: exit 1, named


# --- class 7: nothing outside the run is touched ------------------------------------------------


def test_a_lock_that_is_a_symlink_is_refused_and_its_target_kept(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").symlink_to(target)
    result = invoke_cli(*SMOKE, "--output", run_dir, tmp_path=tmp_path)
    assert_one_line(result, 2, ".lock is a symbolic link")
    assert target.read_text() == "keep me\n"


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", ""])
def test_a_run_name_is_one_folder_name(tmp_path, name):
    result = invoke_cli("run", "--preset", "smoke", "--name", name, "--dry-run",
                        tmp_path=tmp_path)
    assert_one_line(result, 2, f"name {name!r} must be one folder name")


@pytest.mark.parametrize("field", ["run_dir", "output_dir"])
@pytest.mark.parametrize("path", ["../x", "/tmp/elsewhere", "runs/../../x"])
def test_a_sweep_plan_writes_only_inside_its_directory(tmp_path, field, path):
    sweep = _job_sweep(tmp_path)
    plan = json.loads((sweep / "sweep.json").read_text())
    entry = plan["runs"][0]
    (entry if field == "run_dir" else entry["config"])[field] = path
    (sweep / "sweep.json").write_text(json.dumps(plan))
    for argv in (["sweep", "run", sweep, "--no-progress"], ["sweep", "status", sweep]):
        assert_one_line(invoke_cli(*argv, tmp_path=tmp_path), 2, "outside the sweep directory")
    assert not (tmp_path / "x").exists()


def test_relative_paths_in_a_toml_file_are_relative_to_the_working_directory(tmp_path,
                                                                           monkeypatch):
    """Decided in issue 25: as on the command line, not relative to the file's folder. A
    run's config.json holds its paths as given, so ``--config RUN/config.json`` must read
    them from where the run was started to repeat it; one rule for every file."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "work").mkdir()
    toml = tmp_path / "configs" / "c.toml"
    toml.write_text('output_dir = "runs/x"\ndata_dir = "my-data"\n')
    monkeypatch.chdir(tmp_path / "work")
    result = invoke_cli("run", "--preset", "smoke", "--config", "../configs/c.toml",
                        "--dry-run", tmp_path=tmp_path, check=0)
    shown = json.loads(result.stdout)
    assert (shown["output_dir"], shown["data_dir"]) == ("runs/x", "my-data")
    assert Path(shown["output_dir"]).resolve() == tmp_path / "work" / "runs" / "x"


# --- class 8: a completed run needs no writable disk --------------------------------------------


@pytest.mark.slow
def test_a_completed_run_on_a_read_only_file_system_is_already_completed(tmp_path, small_disk):
    run_dir = small_disk / "run"
    train_smoke(run_dir, epochs=1)
    remounted = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)],
                               capture_output=True)
    if remounted.returncode != 0:
        pytest.skip(f"cannot remount read-only: {remounted.stderr.decode().strip()}")
    result = lbtkit(*SMOKE, "--epochs", "1", "--output", run_dir, tmp_path=tmp_path, fresh=True)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "already completed" in result.stdout and not result.stderr.strip()


# --- class 6: a multi-process run's stderr is what lbtkit says, not torch-elastic's report ------

# What a launch of two processes wrote when rank 0 found its directory locked (shortened): the
# one line, rank 1's end, then torch-elastic's report (dozens of lines).
ELASTIC_REPORT = [
    b"error: /r is in use by another live run (pid 42 on h); wait for it to end\n",
    b"W1205 23:59:59.123000 77 torch/distributed/elastic/multiprocessing/api.py:900] "
    b"Sending process 79 closing signal SIGTERM\n",
    b"interrupted by SIGTERM outside the training loop; rerun the same command\n",
    b"E1205 23:59:59.456000 77 torch/distributed/elastic/multiprocessing/api.py:874] "
    b"failed (exitcode: 2) local_rank: 0 (pid: 78) of binary: /usr/bin/python\n",
    b"Traceback (most recent call last):\n",
    b'  File "/venv/bin/accelerate", line 8, in <module>\n',
    b"torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n",
    b"============================================================\n",
]


def _through_launch_stderr(lines: list[bytes], tmp_path: Path, capsys, *,
                           explained_elsewhere: bool = False):
    import io

    from lbtkit.launch_output import LOG_NAME, LaunchStderr

    stderr = LaunchStderr(io.BytesIO(b"".join(lines)), tmp_path)
    stderr.finish(explained_elsewhere=explained_elsewhere)
    assert (tmp_path / LOG_NAME).read_bytes() == b"".join(lines)  # all of it, for a look
    return stderr, capsys.readouterr().err.splitlines()


def test_a_launch_shows_the_first_outcome_line_and_holds_the_report(tmp_path, capsys):
    stderr, shown = _through_launch_stderr(ELASTIC_REPORT, tmp_path, capsys)
    assert shown == [ELASTIC_REPORT[0].decode().rstrip("\n")]
    assert stderr.failed_exit == 2  # the worker's code: the launcher's is always 1


def test_a_launch_takes_the_code_of_the_worker_that_said_why_not_of_a_bystander(tmp_path,
                                                                              capsys):
    # rank 0 refused a locked directory (2); rank 1 lost its connection and was observed first
    lines = [ELASTIC_REPORT[0],
             b"E1206 01:46:03.988000 20501 api.py:1002] failed (exitcode: 1) local_rank: 1 "
             b"(pid: 20508) of binary: /usr/bin/python3\n",
             b"Failures:\n", b"  rank      : 0 (local_rank: 0)\n",
             b"  exitcode  : 2 (pid: 20507) \n", b"Root Cause (first observed failure):\n",
             b"  rank      : 1 (local_rank: 1)\n", b"  exitcode  : 1 (pid: 20508) \n"]
    stderr, _ = _through_launch_stderr(lines, tmp_path, capsys)
    assert stderr.failed_exit == 2
    (tmp_path / "x").mkdir()
    alone, _ = _through_launch_stderr(lines[:2], tmp_path / "x", capsys)
    assert alone.failed_exit == 1  # nothing more specific: the generic failure
    (tmp_path / "y").mkdir()
    stopped = [b"  exitcode  : 75 (pid: 2) \n", b"  exitcode  : 1 (pid: 1) \n"]
    failed, _ = _through_launch_stderr(stopped, tmp_path / "y", capsys)
    assert failed.failed_exit == 1  # a rank stopped by the launcher is not "requeue me"


def test_a_launch_that_failed_unexplained_shows_everything(tmp_path, capsys):
    """A bug in a worker: its traceback, and the launcher's report, as they came."""
    bug = [b"Traceback (most recent call last):\n", b"ZeroDivisionError: division by zero\n",
           *ELASTIC_REPORT[3:]]
    _, shown = _through_launch_stderr(bug, tmp_path, capsys)
    assert shown == [line.decode().rstrip("\n") for line in bug]
    (tmp_path / "again").mkdir()
    _, shown = _through_launch_stderr(bug, tmp_path / "again", capsys, explained_elsewhere=True)
    assert shown == []  # e.g. the run recorded its outcome (diverged)


def test_a_launch_log_that_cannot_be_written_is_skipped(tmp_path, capsys):
    import io

    from lbtkit.launch_output import LaunchStderr

    stderr = LaunchStderr(io.BytesIO(b"warning: w\n"), tmp_path / "no-such-dir")
    stderr.finish(explained_elsewhere=True)
    assert capsys.readouterr().err == "warning: w\n"


@pytest.mark.slow
def test_two_processes_on_a_full_disk_say_one_line(tmp_path, small_disk):
    run_dir = small_disk / "run"
    result = lbtkit("run", "--preset", "smoke", "--epochs", "3", "--num-processes", "2",
                    "--no-progress", "--output", run_dir, tmp_path=tmp_path, fresh=True)
    line = assert_one_line(result, 1, "No space left on device")
    assert "the last complete checkpoint" in line and "is still there" in line


# A worker of a launch (RANK as LINGER_RANK names) that lingers at its exit until its launcher
# stops it (SIGTERM, as it stops the others once one failed) and dies of that signal: the other
# rank ends first, whatever the load, and this one's exit code is lost, as a process's is when
# the SIGTERM comes during its interpreter's teardown. Test-only, through sitecustomize.
_LINGER_AT_EXIT = """
import atexit, os, signal, time

if "TORCHELASTIC_RUN_ID" in os.environ and os.environ.get("RANK") == os.environ["LINGER_RANK"]:
    def _linger():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        time.sleep(float(os.environ["LINGER_SECONDS"]))  # a limit: the SIGTERM ends it

    atexit.register(_linger)
"""


def _linger_at_exit(rank: int, tmp_path: Path) -> dict[str, str]:
    """The environment that makes ``rank`` of a launch end last (see _LINGER_AT_EXIT)."""
    hook = tmp_path / "linger-hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_LINGER_AT_EXIT)
    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH", "")]))
    return {"PYTHONPATH": path, "LINGER_RANK": str(rank),
            "LINGER_SECONDS": str(scaled_timeout(120))}


@pytest.mark.slow
def test_a_lock_taken_after_the_check_is_one_line_and_exit_2(tmp_path):
    """Between the pre-flight check and rank 0's lock: taken as the launcher starts.

    Rank 0 lingers at its exit, so rank 1 ends first: the order in which the launcher used to
    record rank 1's failure as a bystander (exit 1, "connection closed") and stop rank 0
    before its own exit 2 was recorded (seen at random under CI load)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = _start(*TWO_PROCESSES, "--epochs", "1", "--output", run_dir, tmp_path=tmp_path,
                  env=_linger_at_exit(0, tmp_path))
    lock = None
    try:
        def launcher_started() -> bool:
            return any(b"accelerate.commands.launch" in _cmdline(pid)
                       for pid in _descendants(proc.pid))

        _wait_for(launcher_started, 120, "the launcher to start", proc)
        lock = (run_dir / ".lock").open("w")  # the workers are still importing torch
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(f"{os.getpid()} testhost\n")
        lock.flush()
        out, err = proc.communicate(timeout=scaled_timeout(240))
    finally:
        if proc.poll() is None:
            proc.kill()
        if lock is not None:
            lock.close()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    launch_log = (run_dir / "launch.log").read_text()
    assert "ChildFailedError" in launch_log  # kept for a look
    assert_one_line(result, 2, f"in use by another live run (pid {os.getpid()} on testhost)")
