"""A real SLURM cluster on this one machine, for tests: munge, slurmctld and several slurmd.

The Debian build of Slurm allows several `slurmd` on one host (MULTIPLE_SLURMD): each node
`n1..nN` is a slurmd of its own with its own port, spool, pid and log file, and every node name
resolves to 127.0.0.1 through /etc/hosts. Everything else (config, state, spool, logs, munge
socket) lives under one fresh temporary root, so a run never reuses stale state ("Duplicate
jobid" drains nodes after an unclean stop) and never touches the system's own Slurm or munge.
Every daemon is started in the foreground by this module, so its PID is the Popen's, and `stop()`
ends exactly those PIDs (after cancelling the jobs, whose steps the slurmd own).

The system packages come from `.ci/slurm_setup.sh` (idempotent), which `ensure_installed` runs
when a program is missing. The facts behind the settings are in docs/cluster.md ("Testing").
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from megatron_sip.net import free_ports

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUP_SCRIPT = REPO_ROOT / ".ci" / "slurm_setup.sh"
HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARKER = "# megatron-sip local SLURM test cluster"
_PROGRAMS = ("slurmctld", "slurmd", "sbatch", "munged")
_SBIN_PATH = "/usr/sbin:/sbin"
_MUNGE_USER = "munge"
_TERMINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                    "BOOT_FAIL", "DEADLINE", "PREEMPTED")


class SlurmUnavailable(RuntimeError):
    """This machine cannot run the local cluster; the message says why (tests skip with it)."""


def _which(program: str) -> Optional[str]:
    return shutil.which(program) or shutil.which(program, path=_SBIN_PATH)


def ensure_installed() -> None:
    """Install Slurm and munge through .ci/slurm_setup.sh when missing; SlurmUnavailable if not possible."""
    if os.geteuid() != 0:
        raise SlurmUnavailable("the local SLURM cluster needs root (munged runs as the munge user, "
                               "slurmd as root)")
    if all(_which(program) for program in _PROGRAMS):
        return
    if not shutil.which("apt-get"):
        raise SlurmUnavailable(f"{', '.join(p for p in _PROGRAMS if not _which(p))} missing and no apt-get "
                               f"to install them; run {SETUP_SCRIPT.relative_to(REPO_ROOT)}")
    done = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not all(_which(program) for program in _PROGRAMS):
        raise SlurmUnavailable(f"{SETUP_SCRIPT.name} failed ({done.returncode}): {done.stderr.strip()[-500:]}")


def ensure_hosts(names: Sequence[str]) -> None:
    """Map every node name to 127.0.0.1 in /etc/hosts, once: an existing mapping is left alone
    and our line (tagged with HOSTS_MARKER) is only added when some name does not resolve."""
    if all(_resolves_to_loopback(name) for name in names):
        return
    with HOSTS_FILE.open("a", encoding="utf-8") as hosts:
        hosts.write(f"127.0.0.1 {' '.join(names)}  {HOSTS_MARKER}\n")
    unresolved = [name for name in names if not _resolves_to_loopback(name)]
    if unresolved:
        raise SlurmUnavailable(f"{', '.join(unresolved)} still do not resolve to 127.0.0.1 after editing /etc/hosts")


def _resolves_to_loopback(name: str) -> bool:
    try:
        return socket.gethostbyname(name).startswith("127.")
    except OSError:
        return False


@dataclass
class JobInfo:
    """What `scontrol show job` says about one job (or one het-job component)."""

    job_id: str
    state: str
    exit_code: str
    restarts: int
    fields: Dict[str, str]


@dataclass
class LocalSlurm:
    """A running cluster: `submit`, `wait`, `job_info`, `stop`. Create it with `start_cluster`."""

    root: Path
    nodes: List[str]
    env: Dict[str, str]
    """Environment for client commands (SLURM_CONF exported, sbin on PATH)."""
    processes: Dict[str, subprocess.Popen] = field(default_factory=dict)
    """Daemon name -> the process this module started."""

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        done = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def submit(self, *args: str, env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None) -> str:
        """`sbatch --parsable ARGS`; returns the job id (the het-job leader's id for het jobs)."""
        done = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})},
                              cwd=cwd or REPO_ROOT, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip().split(";")[0]

    def job_info(self, job_id: str) -> JobInfo:
        """The job's (het leader's) record from scontrol: state, exit code, restart count."""
        text = self.run("scontrol", "show", "job", "-o", job_id).stdout.splitlines()[0]
        fields = dict(re.findall(r"(\w+)=(\S*)", text))
        return JobInfo(job_id, fields.get("JobState", "UNKNOWN"), fields.get("ExitCode", ""),
                       int(fields.get("Restarts", "0")), fields)

    def wait(self, job_id: str, *, timeout_s: float, states: Sequence[str] = _TERMINAL_STATES) -> JobInfo:
        """Poll until the job reaches one of `states`; TimeoutError (with the slurmctld log tail) if not."""
        deadline = time.monotonic() + timeout_s
        info = self.job_info(job_id)
        while info.state not in states:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {info.state} after {timeout_s:.0f} s (reason "
                                   f"{info.fields.get('Reason')}); slurmctld log:\n{self.log_tail('slurmctld')}")
            self._nudge_if_requeued(info)
            time.sleep(0.5)
            info = self.job_info(job_id)
        return info

    def _nudge_if_requeued(self, info: JobInfo) -> None:
        """Het jobs start only by backfill, and backfill runs only after a job, node or partition
        change. A requeued job becoming eligible (cred_expire after the requeue) is no change, so
        on an idle test cluster it would wait for an unrelated event (a minute or more). Touching
        the job is one; busy real clusters have plenty."""
        if info.state != "PENDING" or info.restarts == 0:
            return
        try:
            eligible = datetime.datetime.fromisoformat(info.fields.get("EligibleTime", ""))
        except ValueError:  # "Unknown" until the controller has set it
            return
        if eligible <= datetime.datetime.now():
            self.run("scontrol", "update", f"JobId={info.job_id}", f"Comment=requeued-{info.restarts}", check=False)

    def log_tail(self, daemon: str, num_chars: int = 3000) -> str:
        path = self.root / "log" / f"{daemon}.log"
        return path.read_text(errors="replace")[-num_chars:] if path.is_file() else f"(no {path})"

    def stop(self) -> None:
        """Cancel every job, then end each daemon this module started, by PID (TERM, then KILL)."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--quiet", *self._job_ids(), check=False)
            self._wait_no_jobs(timeout_s=20)
        # Node daemons first: they talk to the controller while shutting down, and munge last.
        order = [n for n in self.processes if n.startswith("slurmd")] + ["slurmctld", "munged"]
        for name in order:
            process = self.processes.pop(name, None)
            if process is not None:
                _terminate(process)

    def _job_ids(self) -> List[str]:
        done = self.run("squeue", "--noheader", "--format=%A", check=False)
        return sorted(set(done.stdout.split()))

    def _wait_no_jobs(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._job_ids() and time.monotonic() < deadline:
            time.sleep(0.5)


def _terminate(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace_s)


def start_cluster(*, num_nodes: int = 3, cpus_per_node: int = 2, memory_mb: int = 4000) -> LocalSlurm:
    """Install if needed, then start munged, slurmctld and `num_nodes` slurmd; returns when
    every node is idle. Stops whatever it started if any step fails."""
    ensure_installed()
    nodes = [f"n{i}" for i in range(1, num_nodes + 1)]
    ensure_hosts(nodes)
    root = Path(tempfile.mkdtemp(prefix="sip-slurm-"))
    root.chmod(0o755)  # munged runs as the munge user and must reach its own folder below
    env = {**os.environ, "SLURM_CONF": str(root / "etc" / "slurm.conf"),
           "PATH": f"{os.environ.get('PATH', '')}:{_SBIN_PATH}"}
    cluster = LocalSlurm(root=root, nodes=nodes, env=env)
    try:
        munge_socket = _start_munge(cluster)
        _write_config(cluster, munge_socket=munge_socket, cpus_per_node=cpus_per_node, memory_mb=memory_mb)
        _start_daemon(cluster, "slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(cluster.conf)])
        for node in nodes:
            _start_daemon(cluster, f"slurmd-{node}", [_which("slurmd"), "-D", "-N", node, "-f", str(cluster.conf)])
        _wait_idle(cluster, timeout_s=30)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_munge(cluster: LocalSlurm) -> Path:
    """munged as the munge user with its socket, pid, seed and log under the cluster root."""
    import pwd

    munge = pwd.getpwnam(_MUNGE_USER)
    folder = cluster.root / "munge"
    folder.mkdir()
    folder.chmod(0o755)  # clients need to reach the socket; the key itself is 0400
    key = folder / "munge.key"
    shutil.copyfile("/etc/munge/munge.key", key)
    key.chmod(0o400)
    for path in (folder, key):
        os.chown(path, munge.pw_uid, munge.pw_gid)
    socket_path = folder / "munge.socket"
    command = [_which("munged"), "--foreground", f"--socket={socket_path}", f"--key-file={key}",
               f"--pid-file={folder / 'munged.pid'}", f"--seed-file={folder / 'munged.seed'}",
               f"--log-file={folder / 'munged.log'}"]
    log = (cluster.root / "munged.out").open("w")
    cluster.processes["munged"] = subprocess.Popen(command, user=munge.pw_uid, group=munge.pw_gid, extra_groups=[],
                                                   stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not socket_path.exists():
        if cluster.processes["munged"].poll() is not None or time.monotonic() > deadline:
            raise SlurmUnavailable(f"munged did not start: {(cluster.root / 'munged.out').read_text()[-500:]}")
        time.sleep(0.05)
    return socket_path


def _write_config(cluster: LocalSlurm, *, munge_socket: Path, cpus_per_node: int, memory_mb: int) -> None:
    root = cluster.root
    for sub in ("etc", "state", "spool", "log", "run"):
        (root / sub).mkdir()
    ctld_port, *node_ports = free_ports(1 + len(cluster.nodes))
    host = socket.gethostname().split(".")[0]
    nodes = "\n".join(f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} "
                      f"CPUs={cpus_per_node} RealMemory={memory_mb} State=UNKNOWN"
                      for name, port in zip(cluster.nodes, node_ports, strict=True))
    cluster.conf.write_text(f"""\
ClusterName=sip-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
MpiDefault=none
KillWait=10
MinJobAge=600
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
{nodes}
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")


def _start_daemon(cluster: LocalSlurm, name: str, command: List[str]) -> None:
    log = (cluster.root / "log" / f"{name}.out").open("w")
    cluster.processes[name] = subprocess.Popen(command, env=cluster.env, stdout=log, stderr=subprocess.STDOUT)


def _wait_idle(cluster: LocalSlurm, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        for name, process in cluster.processes.items():
            if process.poll() is not None:
                raise SlurmUnavailable(f"{name} exited ({process.returncode}):\n{cluster.log_tail(name)}")
        done = cluster.run("sinfo", "--noheader", "--Node", "--format=%N %t", check=False)
        states = dict(line.split() for line in done.stdout.splitlines() if line.strip())
        if done.returncode == 0 and len(states) == len(cluster.nodes) and set(states.values()) == {"idle"}:
            return
        if time.monotonic() > deadline:
            raise SlurmUnavailable(f"nodes not idle after {timeout_s:.0f} s ({states or done.stderr.strip()}):\n"
                                   f"{cluster.log_tail('slurmctld')}")
        time.sleep(0.2)
