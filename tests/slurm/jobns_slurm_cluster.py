"""A real Slurm (Debian's slurmctld/slurmd/munge) on localhost, for the tests.

Everything lives under one root directory (default /var/tmp/jobns-slurm-test): config,
munge key and socket, state, spool, logs, the SPANK plugin, jobns' base_path and runtime
dir. Daemons carry JOBNS_SLURM_TEST_TAG=<root> in their environment; `stop()` only signals
processes whose pid file names them *and* that carry the tag (slurmstepd overwrites its
environment, so ours are recognised by an open file under the root instead). Nothing is
ever killed by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib

TAG = "JOBNS_SLURM_TEST_TAG"
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "libslurm-dev", "gcc")
USERS = ("jobns-alice", "jobns-bob")
MUNGED = "/usr/sbin/munged"
SLURMCTLD = "/usr/sbin/slurmctld"
SLURMD = "/usr/sbin/slurmd"
SLURMSTEPD = "/usr/sbin/slurmstepd"
APT_STAMP = "/var/tmp/jobns-slurm-test-apt-updated"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"


# ------------------------------------------------------------------ small process helpers

def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return None


def _environ_has(pid: int, entry: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return entry.encode() in f.read().split(b"\0")
    except OSError:
        return False


def _has_fd_under(pid: int, root: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(root + "/"):
                return True
    return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    return kids


def _descendants(pid: int) -> list[int]:
    kids = _children()
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def mounts_under(path: str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points at or below `path` in this mount namespace (or `mountinfo`'s),
    deepest first."""
    path = path.rstrip("/")
    found = []
    with open(mountinfo) as f:
        for n, line in enumerate(f):
            mp = line.split()[4].replace("\\040", " ")
            if mp == path or mp.startswith(path + "/"):
                found.append((len(mp), n, mp))
    return [mp for _, _, mp in sorted(found, reverse=True)]


def _port_free(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# ------------------------------------------------------------------ installation

def missing_packages() -> list[str]:
    missing = []
    for p in PACKAGES:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                           text=True)
        if "install ok installed" not in r.stdout:
            missing.append(p)
    return missing


def install_packages() -> str | None:
    """Install what is missing; returns a reason to skip when that is impossible."""
    missing = missing_packages()
    if not missing:
        return None
    if not shutil.which("apt-get"):
        return f"Slurm packages missing ({' '.join(missing)}) and no apt-get on this machine"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    fresh = os.path.exists(APT_STAMP) and time.time() - os.path.getmtime(APT_STAMP) < 86400
    if not fresh:
        r = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True,
                           env=env, timeout=600)
        if r.returncode != 0:
            return f"apt-get update failed (no package registry reachable?): {r.stderr[-500:]}"
        with open(APT_STAMP, "w"):
            pass
    # Debian's postinst scripts would start the system munge/slurm services; a policy-rc.d
    # that says "no" keeps them off (we run our own instances).
    added_policy = False
    if not os.path.exists("/usr/sbin/policy-rc.d"):
        with open("/usr/sbin/policy-rc.d", "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod("/usr/sbin/policy-rc.d", 0o755)
        added_policy = True
    try:
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                            *missing], capture_output=True, text=True, env=env, timeout=1200)
    finally:
        if added_policy:
            os.unlink("/usr/sbin/policy-rc.d")
    if r.returncode != 0:
        return f"apt-get install {' '.join(missing)} failed: {r.stderr[-500:]}"
    return None


def ensure_users() -> dict[str, pwd.struct_passwd]:
    out = {}
    for user in USERS:
        try:
            out[user] = pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "-m", "-U", "-s", "/bin/bash", user], check=True)
            out[user] = pwd.getpwnam(user)
    return out


# ------------------------------------------------------------------ the cluster

class Cluster:
    def __init__(self, root: str, jobns: str):
        self.root = root.rstrip("/")
        self.jobns = jobns
        self.etc = f"{self.root}/etc"
        self.run_dir = f"{self.root}/run"
        self.log_dir = f"{self.root}/log"
        self.state = f"{self.root}/state"
        self.spool = f"{self.root}/spool"
        self.lib = f"{self.root}/lib"
        self.base = f"{self.root}/base"
        self.runtime = f"{self.root}/runtime"
        self.scripts = f"{self.root}/scripts"
        self.munge_dir = f"{self.root}/munge"
        self.munge_socket = f"{self.munge_dir}/munge.socket.2"
        self.munge_key = f"{self.etc}/munge.key"
        self.conf = f"{self.etc}/slurm.conf"
        self.ns_yaml = f"{self.etc}/namespace.yaml"
        self.plugstack = f"{self.etc}/plugstack.conf"
        self.plugin = f"{self.lib}/jobns_spank.so"
        self.pidfiles = {"munged": f"{self.munge_dir}/munged.pid",
                         "slurmctld": f"{self.run_dir}/slurmctld.pid",
                         "slurmd": f"{self.run_dir}/slurmd-%n.pid"}
        # Debian installs some of them as alternatives symlinks (slurmctld -> slurmctld-wlm)
        self.exes = {n: os.path.realpath(p) for n, p in
                     (("munged", MUNGED), ("slurmctld", SLURMCTLD), ("slurmd", SLURMD),
                      ("slurmstepd", SLURMSTEPD))}
        # Three slurmd's share this host, as Debian's multiple-slurmd build allows: n1 (the
        # default partition's node, started without -N as Debian's slurmd.service does, so
        # it must find its NodeName, which is not the hostname, in slurm.conf), n2 and n3.
        self.host = socket.gethostname().split(".", 1)[0]
        self.nodes = ("n1", "n2", "n3")
        self.node = self.nodes[0]
        self.ctld_port = 0
        self.slurmd_ports: dict[str, int] = {}
        self.loopback = True
        self.users: dict[str, pwd.struct_passwd] = {}
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        self.env.pop("JOBNS_CONFIG", None)
        self.started = False
        # What the node runs besides the jobns SPANK plugin: "none", or "slurm" for Slurm's
        # own plugin (job_container/tmpfs before 25.11, namespace/linux from 25.11 on, both
        # reading the same namespace.yaml / job_container.conf directory). `spank` False
        # leaves plugstack.conf empty. Takes effect at the next start().
        self.container = "none"
        self.spank = True
        self.version: tuple[int, ...] = ()

    # ------------------------------------------------------------- where the node runs
    # The node's commands run on this host. jobns_slurm_box.BoxCluster runs them inside a
    # Debian tree's private mount namespace instead, by overriding these four.
    def node_argv(self, argv: list[str]) -> list[str]:
        return list(argv)

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        """Run argv on the node (capture_output and text unless given)."""
        kw.setdefault("capture_output", "stdout" not in kw)
        kw.setdefault("text", True)
        return subprocess.run(self.node_argv(argv), **kw)

    def mounts_under(self, path: str) -> list[str]:
        """Mount points at or below `path` in the node's mount namespace, deepest first."""
        return mounts_under(path)

    def node_path(self, path: str) -> str:
        """Where the node's file `path` is seen from this host."""
        return path

    def slurm_version(self) -> tuple[int, ...]:
        out = self.run([SLURMD, "-V"]).stdout.split()
        nums = out[-1].split(".") if out else []
        return tuple(int(n) for n in nums if n.isdigit())[:3]

    # ------------------------------------------------------------- config files
    def namespace_yaml(self, **options) -> str:
        opts = {"base_path": self.base, "auto_base_path": True, "dirs": "/tmp,/dev/shm"}
        opts.update(options)
        lines = ["defaults:"]
        for key, value in opts.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, (list, tuple)):
                value = "[" + ", ".join(value) + "]"
            else:
                value = json.dumps(str(value))
            lines.append(f"  {key}: {value}")
        return "\n".join(lines) + "\n"

    def set_namespace_config(self, text: str | None = None, **options) -> None:
        """(Re)write namespace.yaml from `options` (under `defaults:`) or as `text`;
        `jobns slurm prolog` reads it for every new job."""
        tmp = self.ns_yaml + ".tmp"
        with open(tmp, "w") as f:
            f.write(text if text is not None else self.namespace_yaml(**options))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.ns_yaml)

    def _hardware(self) -> dict[str, str]:
        out = self.run([SLURMD, "-C"], check=True).stdout
        hw = dict(tok.split("=", 1) for tok in out.split() if "=" in tok)
        return hw

    def _pick_ports(self) -> None:
        # start where this root's hash points, so that clusters of different roots
        # starting at the same moment on one machine do not race for the same pair
        n = 1 + len(self.nodes)     # slurmctld and one port per slurmd
        start = zlib.crc32(self.root.encode()) % 50
        for i in range(50):
            ctld = 16817 + n * ((start + i) % 50)
            if all(_port_free(p) for p in range(ctld, ctld + n)):
                self.ctld_port = ctld
                self.slurmd_ports = {node: ctld + 1 + k for k, node in enumerate(self.nodes)}
                return
        raise RuntimeError(f"no {n} free TCP ports in a row in 16817-{16817 + 50 * n} "
                           "on 127.0.0.1")

    def node_runtime(self, node: str | None = None) -> str:
        """jobns' runtime dir of `node` (several slurmd's share this host)."""
        return f"{self.runtime}/nodes/{node or self.node}"

    def spool_of(self, node: str | None = None) -> str:
        return f"{self.spool}/{node or self.node}"

    def write_slurm_conf(self, extra: tuple[str, ...] = ()) -> None:
        hw = self._hardware()
        mem = max(int(int(hw.get("RealMemory", "1000")) * 0.9), 100)
        try:
            addr = socket.gethostbyname(socket.gethostname())
        except OSError:
            addr = ""
        self.loopback = addr.startswith("127.")
        lines = [
            "# written by the jobns Slurm test fixture",
            "ClusterName=jobnstest",
            "MailProg=/bin/true",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_ports[self.node]}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "CredType=cred/munge",
            *(["CommunicationParameters=NoInAddrAny,NoCtldInAddrAny"] if self.loopback else []),
            f"StateSaveLocation={self.state}",
            f"SlurmdSpoolDir={self.spool}/%n",
            f"SlurmctldPidFile={self.pidfiles['slurmctld']}",
            f"SlurmdPidFile={self.pidfiles['slurmd']}",
            f"SlurmctldLogFile={self.log_dir}/slurmctld.log",
            f"SlurmdLogFile={self.log_dir}/slurmd-%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            *self._container_lines(),
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            # memory is allocated (a job has the memory it asks for: S_JOB_ALLOC_MEM), with a
            # small default so that several jobs share a node
            "SelectTypeParameters=CR_Core_Memory",
            "DefMemPerCPU=100",
            "ReturnToService=2",
            "SlurmctldTimeout=120",
            "SlurmdTimeout=300",
            "InactiveLimit=0",
            "KillWait=5",
            "MinJobAge=300",
            "PrologEpilogTimeout=120",
            "PrologFlags=Contain",
            f"PlugStackConfig={self.plugstack}",
            *(f"NodeName={node} NodeHostname={self.host} NodeAddr=127.0.0.1 "
              f"Port={self.slurmd_ports[node]} "
              f"CPUs={hw.get('CPUs', '1')} Boards=1 SocketsPerBoard={hw.get('SocketsPerBoard', '1')} "
              f"CoresPerSocket={hw.get('CoresPerSocket', '1')} "
              f"ThreadsPerCore={hw.get('ThreadsPerCore', '1')} RealMemory={mem} State=UNKNOWN"
              for node in self.nodes),
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            f"PartitionName=multi Nodes={','.join(self.nodes)} MaxTime=INFINITE State=UP",
            *extra,
        ]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(self.conf, 0o644)

    def _container_lines(self) -> list[str]:
        """slurm.conf lines and side files for `self.container` on this Slurm version."""
        jc = os.path.join(self.etc, "job_container.conf")
        cg = os.path.join(self.etc, "cgroup.conf")
        for path in (jc, cg):
            if os.path.exists(path):
                os.unlink(path)
        if self.version >= (24, 5):
            # proctrack/linuxproc and task/none need no cgroup; newer slurmd would still
            # initialise one without this (and fails on a v1 hybrid host)
            with open(cg, "w") as f:
                f.write("CgroupPlugin=disabled\n")
            os.chmod(cg, 0o644)
        newer = self.version >= (25, 11)
        if self.container == "none":
            return [] if newer else ["JobContainerType=job_container/none"]
        if self.container != "slurm":
            raise ValueError(f"unknown container mode {self.container!r}")
        if newer:
            return ["NamespaceType=namespace/linux"]   # reads etc/namespace.yaml
        with open(jc, "w") as f:   # 22.05 knows no Dirs= (always /tmp and /dev/shm)
            f.write(f"AutoBasePath=true\nBasePath={self.base}\n"
                    + ("Dirs=/tmp,/dev/shm\n" if self.version >= (23, 2) else ""))
        os.chmod(jc, 0o644)
        return ["JobContainerType=job_container/tmpfs"]

    def build_plugin(self, *extra: str) -> str:
        if not self.spank:
            with open(self.plugstack, "w"):
                pass
            os.chmod(self.plugstack, 0o644)
            return ""
        r = self.run([self.jobns, "--config", self.ns_yaml, "slurm", "build-plugin",
                      "--output", self.plugin, "--jobns", self.jobns,
                      "--runtime", self.runtime, *extra], env=self.env)
        if r.returncode != 0:
            raise RuntimeError(f"jobns slurm build-plugin failed:\n{r.stdout}{r.stderr}")
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("required ")]
        if len(line) != 1:
            raise RuntimeError(f"build-plugin printed no plugstack line:\n{r.stdout}")
        with open(self.plugstack, "w") as f:
            f.write(line[0] + "\n")
        os.chmod(self.plugstack, 0o644)
        return r.stdout + r.stderr

    def prepare_node(self) -> None:
        """Make the node ready for start() (users, jobns); nothing to do on the host."""

    # ------------------------------------------------------------- processes
    def pid_of(self, name: str, node: str | None = None) -> int | None:
        """The pid in `name`'s pid file (slurmd: of `node`, default n1), if that process is
        ours and alive."""
        try:
            with open(self.pidfiles[name].replace("%n", node or self.node)) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return None
        if pid <= 1 or not _alive(pid) or _exe(pid) != self.exes[name]:
            return None
        if not _environ_has(pid, f"{TAG}={self.root}"):
            return None
        return pid

    def stepd_pids(self) -> list[int]:
        """slurmstepd processes of our slurmd (they keep our slurmd.log open)."""
        out = []
        for name in os.listdir("/proc"):
            if name.isdigit() and _exe(int(name)) == self.exes["slurmstepd"] and \
                    _has_fd_under(int(name), self.root):
                out.append(int(name))
        return out

    def _spawn(self, argv: list[str], user: str | None = None) -> None:
        env = dict(self.env, **{TAG: self.root})
        if user:
            argv = ["runuser", "-u", user, "--", *argv]
        with open(f"{self.log_dir}/daemons.stderr", "ab") as err:
            r = self.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=err,
                         stderr=err, timeout=60, text=False)
        if r.returncode != 0:
            raise RuntimeError(f"{argv} exited {r.returncode}; see {self.log_dir}")

    def _wait_pid(self, name: str, timeout: float = 15, node: str | None = None) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid = self.pid_of(name, node)
            if pid:
                return pid
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not start; last log lines:\n{self.log_tail(name)}")

    def log_tail(self, name: str = "slurmd", lines: int = 30) -> str:
        path = {"munged": f"{self.munge_dir}/munged.log",
                "slurmd": f"{self.log_dir}/slurmd-{self.node}.log"}.get(
                    name, f"{self.log_dir}/{name}.log")
        try:
            with open(path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError as e:
            return f"({path}: {e.strerror})"

    def slurmd_log(self, node: str | None = None) -> str:
        try:
            with open(f"{self.log_dir}/slurmd-{node or self.node}.log", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def start_munged(self) -> None:
        os.makedirs(self.munge_dir, exist_ok=True)
        self.run(["chown", "munge:munge", self.munge_dir], check=True)
        os.chmod(self.munge_dir, 0o755)
        if not os.path.exists(self.munge_key):
            with open("/dev/urandom", "rb") as r, open(self.munge_key, "wb") as w:
                w.write(r.read(1024))
        self.run(["chown", "munge:munge", self.munge_key], check=True)
        os.chmod(self.munge_key, 0o600)
        self._spawn([MUNGED, f"--socket={self.munge_socket}", f"--key-file={self.munge_key}",
                     f"--pid-file={self.pidfiles['munged']}",
                     f"--log-file={self.munge_dir}/munged.log",
                     f"--seed-file={self.munge_dir}/munged.seed"], user="munge")
        self._wait_pid("munged")

    def start_slurmctld(self) -> None:
        self._spawn([SLURMCTLD, "-c", "-f", self.conf])
        self._wait_pid("slurmctld")
        end = time.monotonic() + 60
        while time.monotonic() < end:
            r = self.cmd(["scontrol", "ping"], timeout=10)
            if "is UP" in r.stdout:
                return
            time.sleep(0.2)
        raise RuntimeError("slurmctld does not answer:\n" + self.log_tail("slurmctld"))

    def start_slurmd(self, wait: bool = True, node: str | None = None) -> int:
        """Start `node`'s slurmd. n1 is started as Debian's slurmd.service starts it,
        without -N: it must find its NodeName in slurm.conf."""
        node = node or self.node
        self._spawn([SLURMD, "-f", self.conf, *([] if node == self.nodes[0] else ["-N", node])])
        pid = self._wait_pid("slurmd", node=node)
        if wait:
            self.wait_node_responding(node=node)
        return pid

    def stop_slurmd(self, node: str | None = None) -> None:
        pid = self.pid_of("slurmd", node)
        if pid:
            os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, 30):
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5)

    def kill_slurmd(self, node: str | None = None) -> None:
        pid = self.pid_of("slurmd", node)
        assert pid, "slurmd is not running"
        os.kill(pid, signal.SIGKILL)
        assert _wait_gone(pid, 5)

    def restart_slurmd(self, node: str | None = None) -> None:
        self.stop_slurmd(node)
        self.start_slurmd(node=node)

    def node_state(self, node: str | None = None) -> str:
        r = self.cmd(["sinfo", "-h", "-N", "-n", node or self.node, "-o", "%T"], timeout=10)
        return r.stdout.strip()

    def wait_node_responding(self, timeout: float = 60, node: str | None = None) -> None:
        node = node or self.node
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.node_state(node)
            if st and not st.endswith("*") and not st.startswith(("down", "unknown")):
                return
            time.sleep(0.1)
        raise RuntimeError(f"node {node} not responding (state {self.node_state(node)!r}):\n"
                           + self.log_tail(f"slurmd-{node}"))

    def wait_idle(self, timeout: float = 60) -> None:
        """No jobs in the queue and every node idle."""
        end = time.monotonic() + timeout
        st = ""
        while time.monotonic() < end:
            st = self.cmd(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=10).stdout
            states = {ln.split()[0]: ln.split()[1] for ln in st.splitlines() if ln.split()}
            if set(states) >= set(self.nodes) and \
                    all(states[n] == "idle" for n in self.nodes) and \
                    not self.cmd(["squeue", "-h", "-o", "%i"]).stdout.strip():
                return
            time.sleep(0.1)
        raise RuntimeError(f"node not idle after {timeout}s: {st!r}; queue: "
                           f"{self.cmd(['squeue', '-h', '-o', '%i %T %R']).stdout}")

    def resume(self) -> None:
        """Resume drained or down nodes (again while a job's end still holds them, when
        slurmctld refuses the resume) and wait until all are idle."""
        end = time.monotonic() + 90
        while time.monotonic() < end:
            bad = [n for n in self.nodes if self.node_state(n).startswith(("drain", "down"))]
            if not bad:
                break
            for node in bad:
                self.cmd(["scontrol", "update", f"nodename={node}", "state=resume"])
            time.sleep(0.5)
        self.wait_idle()

    def unhealthy(self) -> bool:
        return any(self.node_state(n).startswith(("drain", "down")) for n in self.nodes)

    def ensure_slurmds(self) -> None:
        for node in self.nodes:
            if self.pid_of("slurmd", node) is None:
                self.start_slurmd(node=node)

    def start(self) -> None:
        self.stop()
        for d in (self.root, self.etc, self.run_dir, self.log_dir, self.lib, self.scripts,
                  self.spool):     # slurmd makes its own spool/<node> below
            os.makedirs(d, mode=0o755, exist_ok=True)
            os.chmod(d, 0o755)
        os.makedirs(self.state, mode=0o700, exist_ok=True)
        self.users = ensure_users()
        self.prepare_node()
        self.version = self.slurm_version()
        self._pick_ports()
        self.write_slurm_conf()
        self.set_namespace_config()
        self.build_plugin()
        self.start_munged()
        self.start_slurmctld()
        for node in self.nodes:
            self.start_slurmd(node=node)
        self.started = True
        self.resume()

    def use_prolog_scripts(self, on: bool) -> None:
        """Create/delete namespaces from slurm.conf's Prolog=/Epilog= (plugin prolog=no)
        instead of SPANK's job_prolog/job_epilog; restarts slurmd."""
        extra: tuple[str, ...] = ()
        if on:
            r = self.run([self.jobns, "--config", self.ns_yaml, "slurm", "write-scripts",
                          self.scripts, "--jobns", self.jobns, "--runtime", self.runtime],
                         env=self.env)
            if r.returncode != 0:
                raise RuntimeError(f"write-scripts failed: {r.stderr}")
            extra = tuple(ln for ln in r.stdout.splitlines() if "=" in ln)
        self.write_slurm_conf(extra)
        self.build_plugin(*(["--no-prolog"] if on else []))
        self.cmd(["scontrol", "reconfigure"])
        for node in self.nodes:
            self.restart_slurmd(node)
        self.wait_idle()

    # ------------------------------------------------------------- teardown
    def stop(self) -> list[str]:
        """Stop exactly what we started and remove every mount below the root.
        Returns warnings (empty when everything went away)."""
        warnings = []
        ctld, munged = self.pid_of("slurmctld"), self.pid_of("munged")
        slurmds = [self.pid_of("slurmd", node) for node in self.nodes]
        if ctld and munged and os.path.exists(self.conf):
            jobs = self.cmd(["squeue", "-h", "-o", "%i"], timeout=10).stdout.split()
            if jobs:
                self.cmd(["scancel", *jobs], timeout=10)
                end = time.monotonic() + 30
                while time.monotonic() < end and \
                        self.cmd(["squeue", "-h", "-o", "%i"], timeout=10).stdout.strip():
                    time.sleep(0.2)
        for pid in (*slurmds, ctld):
            if pid:
                os.kill(pid, signal.SIGTERM)
                if not _wait_gone(pid, 30):
                    os.kill(pid, signal.SIGKILL)
                    _wait_gone(pid, 5)
        for pid in self.stepd_pids():
            victims = [pid, *_descendants(pid)]
            for v in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(v, signal.SIGKILL)
            _wait_gone(pid, 5)
            warnings.append(f"killed leftover slurmstepd {pid} and {len(victims) - 1} "
                            "descendants")
        # The jobns service the plugin started (it outlives slurmd, as on a real node).
        if os.path.exists(os.path.join(self.runtime, "service.pid")):
            r = self.run([self.jobns, "slurm", "service", "--stop"],
                         env=dict(self.env, JOBNS_RUNTIME_DIR=self.runtime))
            if r.returncode != 0:
                warnings.append(f"jobns slurm service --stop: {r.stderr.strip()}")
        # Namespaces of jobs that are gone: the same code path as a node start.
        for node in self.nodes:
            if not (os.path.isdir(self.base) and os.path.exists(self.ns_yaml)):
                break
            r = self.run([self.jobns, "--config", self.ns_yaml, "--node", node,
                          "slurm", "restore"],
                         env=dict(self.env, JOBNS_RUNTIME_DIR=self.runtime))
            if r.returncode != 0:
                warnings.append(f"jobns slurm restore of {node} at teardown: "
                                f"{r.stderr.strip()}")
        if munged:
            os.kill(munged, signal.SIGTERM)
            if not _wait_gone(munged, 10):
                os.kill(munged, signal.SIGKILL)
        for mp in self.mounts_under(self.root):
            r = self.run(["umount", mp])
            if r.returncode != 0:
                self.run(["umount", "-l", mp])
        left = self.mounts_under(self.root)
        if left:
            warnings.append(f"mounts left under {self.root}: {left}")
        for d in (self.base, self.runtime):
            if os.path.isdir(d) and not left:
                shutil.rmtree(d, ignore_errors=True)
        self.started = False
        return warnings

    # ------------------------------------------------------------- running things
    def cmd(self, argv: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        return self.run(argv, env=self.env, timeout=timeout, **kw)

    def as_user(self, user: str, argv: list[str], timeout: float = 60,
                input: str | None = None) -> subprocess.CompletedProcess:
        pw = self.users[user]
        full = [RUNUSER, "-u", user, "--", "env", "-C", pw.pw_dir, f"HOME={pw.pw_dir}",
                f"USER={user}", f"LOGNAME={user}", f"SLURM_CONF={self.conf}", *argv]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        return self.run(full, env=env, timeout=timeout, input=input)

    def srun(self, user: str, argv: list[str], *opts: str, timeout: float = 60):
        return self.as_user(user, ["srun", *opts, *argv], timeout=timeout)

    def sbatch(self, user: str, script: str, *opts: str) -> str:
        r = self.as_user(user, ["sbatch", "--parsable", "-o", "/dev/null", *opts],
                         input="#!/bin/bash\n" + script)
        if r.returncode != 0:
            raise RuntimeError(f"sbatch failed: {r.stderr}")
        return r.stdout.strip().split(";")[0]

    def job_state(self, job: str) -> str:
        r = self.cmd(["squeue", "-h", "-j", job, "-o", "%T"], timeout=10)
        return r.stdout.strip()

    def wait_running(self, job: str, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.job_state(job) == "RUNNING":
                return
            time.sleep(0.1)
        raise RuntimeError(f"job {job} not running: {self.job_state(job)!r}")

    def wait_until(self, pred, timeout: float = 30, what: str = "condition") -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def job_dir(self, job: str, node: str | None = None) -> str:
        return os.path.join(self.effective_base(node), job)

    def effective_base(self, node: str | None = None) -> str:
        """Where `node`'s job dirs are: base_path, plus /<NodeName> as several slurmd's
        share this host."""
        r = self.run([self.jobns, "--config", self.ns_yaml, "--node", node or self.node,
                      "config", "show", "--json"], env=self.env)
        if r.returncode != 0:
            raise RuntimeError(f"jobns config show failed: {r.stderr}")
        shown = json.loads(r.stdout)
        return shown.get("jobs_path") or shown["base_path"]

    def jobns_cmd(self, *args: str, node: str | None = None) -> subprocess.CompletedProcess:
        return self.run([self.jobns, "--config", self.ns_yaml, "--node", node or self.node,
                         *args], env=dict(self.env, JOBNS_RUNTIME_DIR=self.runtime))


def default_jobns() -> str:
    return os.path.join(os.path.dirname(sys.executable), "jobns")
