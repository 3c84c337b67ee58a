"""A real single-node SLURM cluster on loopback, for tests (Debian slurm-wlm and munge).

Everything lives in one folder: a private munge key and socket, ``slurm.conf`` (free
ports on 127.0.0.1, this host as controller and only node), state and spool folders, and
the daemons' logs. Clients find it through ``SLURM_CONF`` in :meth:`SlurmCluster.env`.
Needs root (slurmd runs jobs as their submitter).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurm-wlm", "munge"]
COMMANDS = ["slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SlurmCluster:
    """Start with :meth:`start`, stop with :meth:`stop` (also on failure)."""

    def __init__(self, folder: Path, cpus: int | None = None) -> None:
        self.folder = Path(folder)
        self.cpus = cpus or os.cpu_count() or 1
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.folder / "slurm.conf"
        self.procs: list[subprocess.Popen] = []

    def env(self) -> dict[str, str]:
        """The environment for SLURM clients (sbatch, squeue) of this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        f = self.folder
        for sub in ("state", "spool", "munge"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(f / "munge", 0o700)
        key = f / "munge" / "munge.key"
        key.write_bytes(os.urandom(128))
        os.chmod(key, 0o400)
        mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        self.conf.write_text(f"""\
ClusterName=bidsqctest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={f / 'munge' / 'munge.socket'}
CredType=cred/munge
StateSaveLocation={f / 'state'}
SlurmdSpoolDir={f / 'spool'}
SlurmctldPidFile={f / 'slurmctld.pid'}
SlurmdPidFile={f / 'slurmd.pid'}
SlurmctldLogFile={f / 'slurmctld.log'}
SlurmdLogFile={f / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MinJobAge=600
SchedulerParameters=sched_interval=1
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem_mb // 2} State=UNKNOWN
PartitionName=test Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, timeout: float = 60) -> None:
        """Start munged, slurmctld and slurmd; wait until the node is idle."""
        self._write_config()
        f = self.folder
        munge = f / "munge"
        self._spawn(["munged", "--foreground", "--force", f"--socket={munge / 'munge.socket'}",
                     f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
                     f"--log-file={f / 'munged.log'}", f"--seed-file={munge / 'seed'}"])
        self._wait(lambda: (munge / "munge.socket").exists(), 15, "munged")
        self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn(["slurmd", "-D", "-f", str(self.conf), "-N", self.host])
        self._wait(self._node_ready, timeout, "the SLURM node")

    def _spawn(self, cmd: list[str]) -> None:
        log = open(self.folder / f"{cmd[0]}.stdout", "w")  # noqa: SIM115 - closed by the child
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                           env=self.env(), start_new_session=True))

    def _node_ready(self) -> bool:
        done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                              env=self.env())
        return done.returncode == 0 and done.stdout.strip() in ("idle", "mix", "alloc")

    def _wait(self, ready, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ready():
                return
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                break
            time.sleep(0.5)
        raise RuntimeError(f"{what} did not start; logs:\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for path in sorted(self.folder.glob("*.log")) + sorted(self.folder.glob("*.stdout")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    def job_state(self, job_id: str) -> str:
        """``JobState`` from ``scontrol show job`` (an array: every task's, space-joined)."""
        done = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                              text=True, env=self.env())
        return " ".join(re.findall(r"JobState=(\S+)", done.stdout)) or "UNKNOWN"

    def wait_job(self, job_id: str, timeout: float = 600) -> str:
        """Wait until every task of ``job_id`` ended; returns the states (COMPLETED ...)."""
        end = time.monotonic() + timeout
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
        while time.monotonic() < end:
            states = self.job_state(job_id)
            if states != "UNKNOWN" and set(states.split()) <= final:
                return states
            time.sleep(1)
        raise TimeoutError(f"job {job_id} still {self.job_state(job_id)} after {timeout} s")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
