"""A real single-node SLURM for the tests: ``munged``, ``slurmctld`` and ``slurmd`` (Debian's
``slurm-wlm`` + ``munge``) started in a temporary folder, controller and node daemon on 127.0.0.1,
configured for a container without cgroups (process tracking by /proc, no task plugin, no job
accounting). :func:`start` returns a running :class:`SingleNodeSlurm` or raises
:class:`SlurmUnavailable` with the reason (a missing program, a daemon that exited, a node that
never became idle, with the tail of its log), which the fixture turns into a visible skip.

Nothing is written outside the folder: the daemons get every path (key, socket, state, spool,
logs, PID files) and free TCP ports from the generated ``slurm.conf``; clients find it through
``SLURM_CONF``. :meth:`SingleNodeSlurm.stop` cancels the jobs and ends the three daemons.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


class SlurmUnavailable(RuntimeError):
    """The single-node SLURM cannot run here; the message says why."""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _memory_mb() -> int:
    """The node's memory for slurm.conf (jobs ask for --mem; SLURM's default is 1 MB)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return max(1024, int(line.split()[1]) // 1024 - 512)
    return 4096


def _tail(path: Path, n: int = 6) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return "(no log)"


class SingleNodeSlurm:
    def __init__(self, root: Path, cpus: int = 2):
        self.root = Path(root)
        self.cpus = cpus
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}
        self.node = "medadvnode"

    # -- set-up ----------------------------------------------------------------------------
    def _munge(self) -> None:
        r = self.root
        r.mkdir(parents=True, exist_ok=True)
        key = r / "munge.key"
        made = subprocess.run(["mungekey", "--create", "--keyfile", str(key)], capture_output=True, text=True)
        if made.returncode != 0:
            raise SlurmUnavailable(f"mungekey failed: {made.stderr.strip()}")
        key.chmod(0o600)
        (r / "munge").mkdir(mode=0o700)
        self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={r / 'munge' / 'munge.sock'}",
                               f"--key-file={key}", f"--pid-file={r / 'munge' / 'munged.pid'}",
                               f"--log-file={r / 'munged.log'}", f"--seed-file={r / 'munge' / 'munged.seed'}"])
        self._wait(lambda: (r / "munge" / "munge.sock").exists(), 10, "munged", r / "munged.log")

    def _conf(self) -> None:
        r = self.root
        ctld_port, d_port = _free_ports(2)
        host = socket.gethostname().split(".")[0]
        for d in ("state", "spool"):
            (r / d).mkdir()
        (r / "slurm.conf").write_text(f"""\
ClusterName=medadvtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r / 'munge' / 'munge.sock'}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'slurmctld.log'}
SlurmdLogFile={r / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/builtin
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName={self.node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def _wait(self, ready, timeout: float, name: str, log: Path) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if ready():
                return
            p = self.procs.get(name)
            if p is not None and p.poll() is not None:
                raise SlurmUnavailable(f"{name} exited with code {p.returncode}: {_tail(log)} "
                                       f"{_tail(self.root / f'{name}.out', 3)}")
            time.sleep(0.3)
        raise SlurmUnavailable(f"{name} not ready after {timeout:.0f} s: {_tail(log)}")

    def node_state(self) -> str:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    def start(self) -> SingleNodeSlurm:
        self._munge()
        self._conf()
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.root / "slurm.conf")])
        self._wait(lambda: self.node_state() != "", 20, "slurmctld", self.root / "slurmctld.log")
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node, "-f", str(self.root / "slurm.conf")])
        self._wait(lambda: self.node_state() == "idle", 30, "slurmd", self.root / "slurmd.log")
        return self

    # -- use -------------------------------------------------------------------------------
    def jobs(self) -> list[str]:
        r = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=self.env, capture_output=True, text=True)
        return r.stdout.split("\n") if r.stdout.strip() else []

    def stop(self) -> None:
        if "slurmctld" in self.procs:
            subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


def start(root: Path, cpus: int = 2) -> SingleNodeSlurm:
    """A running single-node SLURM in ``root``, or :class:`SlurmUnavailable` saying why not."""
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        raise SlurmUnavailable(f"not installed: {', '.join(missing)} (Debian: apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        raise SlurmUnavailable("the test SLURM runs its daemons as root (SlurmUser=root); not root here")
    s = SingleNodeSlurm(root, cpus)
    try:
        return s.start()
    except (SlurmUnavailable, OSError, subprocess.CalledProcessError) as exc:
        s.stop()
        raise SlurmUnavailable(str(exc)) from None
