"""A real two-node SLURM on this machine for the integration tests (Debian's slurm-wlm +
munge, no mock).

``SlurmCluster(state_dir).start()`` writes a slurm.conf into ``state_dir``, starts munged
(unless one already answers), slurmctld and one ``slurmd -N NAME`` per node (Debian builds
slurmd with MULTIPLE_SLURMD: each has its own port, spool and pid file; the node names resolve
to 127.0.0.1, added to /etc/hosts if missing), and waits until both nodes are idle. Every
client command needs ``SLURM_CONF``: use ``cluster.env`` (or ``cluster.run``).
``stop()`` cancels what is left and stops the daemons it started, by their pid files.

The daemons are not installed here: ``tests/install-slurm.sh`` does that (CI runs it). The
session fixture ``slurm`` below (import it into a test module) skips when the binaries are
missing or we are not root, and fails instead when ``LBTKIT_REQUIRE_SLURM=1``.

By hand (for debugging the job scripts)::

    python tests/slurm_cluster.py start /tmp/slurm   # prints the SLURM_CONF to export
    python tests/slurm_cluster.py stop /tmp/slurm
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import scaled_timeout

DAEMONS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld",
           "slurmd": "/usr/sbin/slurmd"}
CLIENTS = ("sbatch", "scontrol", "sinfo", "squeue", "scancel", "srun", "munge", "unmunge")
MUNGE_RUN_DIR = Path("/run/munge")
MUNGE_PID_FILE = MUNGE_RUN_DIR / "munged.pid"

# Job states after which a job will not run again by itself.
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "PREEMPTED", "BOOT_FAIL", "DEADLINE"}

SLURM_CONF = """\
ClusterName=lbtkit-ci
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Short credential lifetime + a fast scheduler: a requeued job restarts in seconds, not minutes.
AuthInfo=cred_expire=5
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
# Finished jobs stay in `scontrol show job` for 24 s (not 300): `sbatch --wait` polls every
# min(MinJobAge/3, 32) s after its first 2 s, so this caps its latency at 8 s. Read a finished
# job's record promptly (wait_final does).
MinJobAge=24
StateSaveLocation={state}/state
SlurmdSpoolDir={state}/spool/%n
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd-%n.pid
SlurmctldLogFile={state}/log/slurmctld.log
SlurmdLogFile={state}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
{nodes}
PartitionName=debug Nodes={node_names} Default=YES MaxTime=INFINITE State=UP
"""
NODE_LINE = ("NodeName={name} NodeAddr=127.0.0.1 Port={port} CPUs={cpus} RealMemory=2000 "
             "State=UNKNOWN")
NODES = ("lbt1", "lbt2")
HOSTS_FILE = Path("/etc/hosts")


def ensure_hosts(names=NODES, hosts_file: Path = HOSTS_FILE) -> None:
    """Make the node names resolve to 127.0.0.1 (idempotent: adds one line if any is missing)."""
    missing = []
    for name in names:
        try:
            if socket.gethostbyname(name) == "127.0.0.1":
                continue
        except OSError:
            pass
        missing.append(name)
    if missing:
        with open(hosts_file, "a") as handle:
            handle.write(f"127.0.0.1 {' '.join(missing)}  # lbtkit test SLURM nodes\n")


def missing_binaries() -> list[str]:
    """The SLURM/munge programs this harness needs that are not installed."""
    missing = [name for name, path in DAEMONS.items() if not os.access(path, os.X_OK)]
    return missing + [name for name in CLIENTS if shutil.which(name) is None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_records(text: str) -> list[dict[str, str]]:
    """``scontrol show -o`` output: one record per line of ``Key=value`` pairs.

    Values may contain spaces (``Command=/path/script arg``): a pair starts only where a
    ``Key=`` does.
    """
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        pairs = re.split(r"\s+(?=[A-Za-z][A-Za-z0-9_:/]*=)", line.strip())
        record = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            record[key] = value
        records.append(record)
    return records


class SlurmCluster:
    """One slurmctld + one slurmd per node (all on this machine), configured under ``state``."""

    def __init__(self, state: str | Path, *, cpus: int | None = None) -> None:
        self.state = Path(state).absolute()
        self.conf = self.state / "slurm.conf"
        self.cpus = cpus or os.cpu_count() or 1
        self.started_munge = False
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # --- lifecycle -------------------------------------------------------------------------

    def write_config(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        nodes = "\n".join(NODE_LINE.format(name=name, port=free_port(), cpus=self.cpus)
                          for name in NODES)
        self.conf.write_text(SLURM_CONF.format(
            state=self.state, ctld_port=free_port(), nodes=nodes, node_names=",".join(NODES),
        ))

    def start(self, timeout: float = 60) -> SlurmCluster:
        missing = missing_binaries()
        if missing:
            raise RuntimeError(f"SLURM is not installed (missing: {', '.join(missing)}); "
                               f"run tests/install-slurm.sh")
        ensure_hosts()
        self.write_config()
        self._start_munge()
        try:
            self._daemon("/usr/sbin/slurmctld")
            for name in NODES:
                (self.state / "spool" / name).mkdir(parents=True, exist_ok=True)
                self._daemon("/usr/sbin/slurmd", "-N", name)
            self._wait_idle(scaled_timeout(timeout))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel leftover jobs, then stop slurmd, slurmctld and (if we started it) munged."""
        if (self.state / "slurmctld.pid").exists():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["scancel", "--user", str(os.getuid())], env=self.env,
                               capture_output=True, timeout=10)
        for name in [*(f"slurmd-{node}.pid" for node in NODES), "slurmctld.pid"]:
            _stop_pid_file(self.state / name)
        if self.started_munge:
            _stop_pid_file(MUNGE_PID_FILE)
            self.started_munge = False

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_munge(self) -> None:
        if self._munge_works():
            return  # a munged already serves this machine: share it, and leave it running
        MUNGE_RUN_DIR.mkdir(parents=True, exist_ok=True)
        shutil.chown(MUNGE_RUN_DIR, "munge", "munge")
        MUNGE_RUN_DIR.chmod(0o755)
        subprocess.run(["runuser", "-u", "munge", "--", DAEMONS["munged"]], check=True,
                       capture_output=True, timeout=30)
        self.started_munge = True
        deadline = time.monotonic() + 15
        while not self._munge_works():
            if time.monotonic() > deadline:
                raise RuntimeError("munged started but `munge -n | unmunge` keeps failing")
            time.sleep(0.2)

    @staticmethod
    def _munge_works() -> bool:
        try:
            token = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
            if token.returncode != 0:
                return False
            check = subprocess.run(["unmunge"], input=token.stdout, capture_output=True,
                                   timeout=10)
        except (OSError, subprocess.SubprocessError):
            return False
        return check.returncode == 0

    def _daemon(self, *command: str) -> None:
        result = subprocess.run(list(command), env=self.env, capture_output=True, text=True,
                                timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed to start: {result.stderr}\n{self.logs()}")

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%T %D"], env=self.env,
                                 capture_output=True, text=True, timeout=10)
            state = out.stdout.strip()
            if out.returncode == 0 and state == f"idle {len(NODES)}":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the nodes did not become idle in {timeout:.0f} s "
                           f"(state {state!r})\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for name in ["slurmctld.log", *(f"slurmd-{node}.log" for node in NODES)]:
            path = self.state / "log" / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-40:]
                parts.append(f"--- {path} (last lines)\n" + "\n".join(tail))
        return "\n".join(parts)

    # --- client commands -------------------------------------------------------------------

    def run(self, *args: str, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 60, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run a client command (sbatch, scontrol, ...) against this cluster."""
        full_env = {**(env if env is not None else os.environ), "SLURM_CONF": str(self.conf)}
        result = subprocess.run(list(map(str, args)), env=full_env, capture_output=True,
                                text=True, timeout=scaled_timeout(timeout), cwd=cwd)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}\n"
                                 f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
        return result

    def sbatch(self, *args: str, env: dict[str, str] | None = None,
               cwd: str | Path | None = None) -> str:
        """Submit with ``--parsable``; return the job id (the array job id for an array)."""
        out = self.run("sbatch", "--parsable", *args, env=env, cwd=cwd).stdout.strip()
        return out.split(";")[0]

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job`` records of a job (every task of an array job); [] if gone."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        if out.returncode != 0:
            return []
        return parse_records(out.stdout)

    def wait_final(self, job_id: str, *, timeout: float = 180, poll: float = 1.0,
                   outputs: tuple[Path, ...] = ()) -> list[dict[str, str]]:
        """Wait until every record of ``job_id`` is in a final state; return the records.

        ``timeout`` is scaled (``scaled_timeout``); a timeout fails with the job's records,
        the daemons' logs and the job's output files (``outputs``)."""
        deadline = time.monotonic() + scaled_timeout(timeout)
        records: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            records = self.jobs(job_id)
            if records and all(r.get("JobState") in FINAL_STATES for r in records):
                return records
            time.sleep(poll)
        raise AssertionError(f"job {job_id} not finished after {scaled_timeout(timeout):.0f} s"
                             f"\n{self.diagnostics(job_id, outputs)}")

    def diagnostics(self, job_id: str | None = None, outputs: tuple[Path, ...] = ()) -> str:
        """What to read when a job test fails: scontrol's record, the logs, the job output."""
        parts = []
        if job_id:
            shown = self.run("scontrol", "show", "job", str(job_id), check=False)
            parts.append(f"--- scontrol show job {job_id}\n{shown.stdout}{shown.stderr}")
        parts.append(self.logs())
        for path in outputs:
            text = path.read_text(errors="replace") if path.exists() else "(missing)"
            parts.append(f"--- {path}\n{text[-6000:]}")
        return "\n".join(parts)


def _stop_pid_file(pid_file: Path, timeout: float = 15) -> None:
    """SIGTERM the process named in ``pid_file`` and wait for it to go (SIGKILL at timeout)."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running single-node SLURM for the session (see the module docstring)."""
    missing = missing_binaries()
    reason = None
    if missing:
        reason = (f"SLURM is not installed (missing: {', '.join(missing)}); "
                  f"run tests/install-slurm.sh")
    elif os.geteuid() != 0:
        reason = "starting slurmd and munged needs root"
    if reason:
        if os.environ.get("LBTKIT_REQUIRE_SLURM") == "1":
            pytest.fail(f"LBTKIT_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python tests/slurm_cluster.py start|stop STATE_DIR", file=sys.stderr)
        return 2
    cluster = SlurmCluster(argv[1])
    if argv[0] == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        # A cluster started by another process: munged is left alone (it may be shared).
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
