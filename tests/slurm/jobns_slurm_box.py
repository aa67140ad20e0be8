"""Newer Slurm versions for the test cluster: Debian 13's 24.11 and Debian sid's 26.05, each
run from a Debian root tree in a private mount namespace on this (Debian 12) machine.

API (used by conftest.py and by bench/):

    cluster = cluster_for("26.05", "/var/tmp/jobns-slurm-x")   # "22.05" gives the host's
    cluster.container = "slurm"   # or "none": Slurm's own plugin (namespace/linux on 25.11+,
                                  # job_container/tmpfs before) in place of nothing
    cluster.spank = False         # no jobns SPANK plugin (plugstack.conf left empty)
    cluster.start()               # makes the tree if needed, the box, users, jobns, daemons
    cluster.srun("jobns-alice", ["ls", "/tmp"]); cluster.sbatch(...); cluster.cmd([...])
    cluster.run(argv)             # any command on the node (inside the box)
    cluster.node_path("/tmp/x")   # that node file as seen from the host
    cluster.mounts_under(path)    # mount points in the node's mount namespace
    cluster.stop()                # daemons, jobs, mounts, then the box; returns warnings

Everything else is `jobns_slurm_cluster.Cluster`'s (see there). All paths that tests use
(the cluster root with base_path, runtime dir, spool, logs, etc/, and this checkout) are
bind-mounted into the box at the same path, so they mean the same inside and outside.

The tree. `debootstrap --variant=minbase --include=<PACKAGES> trixie|sid DIR` (1-2 min and
~600 MB each on a fast mirror), cached across runs under $JOBNS_SLURM_TREE_CACHE (default
/var/cache/jobns-test/slurm-<suite>; delete the directory to refresh it). Made in
`<dir>.partial`, renamed when complete, under a lock (several checkouts may share the cache).

The box. A plain chroot does not work: setns(CLONE_NEWNS) resets the caller's root to the
namespace's root (a task joining a job namespace made from a chroot would run in the host's
tree), and both jobns and namespace/linux make "/" private in the job namespace, which
needs "/" to be a mount point. So the box is a private mount namespace whose root is the
tree (pivot_root), held by a `sleep infinity` carrying JOBNS_SLURM_BOX=<root>; every node
command enters it with nsenter. Kernel 6.18 hands out mount-namespace ids in per-CPU
batches, and binding /proc/<pid>/ns/mnt (a job's pin) fails with EINVAL when the pinning
process's mount namespace has a higher id than the pinned one: the box is created on the
CPU whose next id is lowest, so every job namespace made later in it has a higher id.

jobns inside the tree: a venv under the cluster root (`<root>/venv`, the tree's Python:
trixie 3.13, sid 3.14) with this checkout installed editable, and the SPANK plugin built
there by `jobns slurm build-plugin` against the tree's slurm/spank.h.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time

import jobns_slurm_cluster as jsc

SUITES = {"24.11": "trixie", "26.05": "sid"}
HOST_VERSION = "22.05"
VERSIONS = (HOST_VERSION, *SUITES)
PACKAGES = ("slurmd", "slurmctld", "slurm-client", "munge", "python3", "python3-venv",
            "libslurm-dev", "gcc", "libc6-dev", "procps", "util-linux")
CACHE = os.environ.get("JOBNS_SLURM_TREE_CACHE", "/var/cache/jobns-test")
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOX_TAG = "JOBNS_SLURM_BOX"
NS_GET_MNTNS_ID = 0x8008B705
_MNTNS_ID = ("import fcntl,os,struct;fd=os.open('/proc/self/ns/mnt',os.O_RDONLY);"
             "print(struct.unpack('Q',fcntl.ioctl(fd,%d,bytes(8)))[0])" % NS_GET_MNTNS_ID)


class TreeUnavailable(RuntimeError):
    """The Debian tree or jobns' packages for it cannot be had (no package registry?):
    a reason to skip that version, as for the host's own packages."""


def cluster_for(version: str, root: str, jobns: str | None = None) -> jsc.Cluster:
    """The test cluster for Slurm `version` (22.05: this host's packages)."""
    if version == HOST_VERSION:
        return jsc.Cluster(root, jobns or jsc.default_jobns())
    if version not in SUITES:
        raise ValueError(f"unknown Slurm version {version!r}; known: {', '.join(VERSIONS)}")
    return BoxCluster(root, SUITES[version])


# ------------------------------------------------------------------ the Debian tree

def tree_path(suite: str) -> str:
    return os.path.join(CACHE, f"slurm-{suite}")


def ensure_tree(suite: str, log=print) -> str:
    """The cached Debian tree of `suite`, made first if missing."""
    path = tree_path(suite)
    ready = os.path.join(path, ".jobns-tree-ready")
    if os.path.exists(ready):
        return path
    os.makedirs(CACHE, mode=0o755, exist_ok=True)
    with open(os.path.join(CACHE, f".slurm-{suite}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(ready):
            return path
        if shutil.which("debootstrap") is None:
            r = subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"],
                               capture_output=True, text=True,
                               env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
            if r.returncode != 0:
                raise TreeUnavailable(f"apt-get install debootstrap failed: {r.stderr[-500:]}")
        partial = path + ".partial"
        if os.path.lexists(partial):
            if jsc.mounts_under(partial):
                raise RuntimeError(f"{partial} has mounts; not removing it")
            shutil.rmtree(partial)
        if os.path.lexists(path):   # a tree without the ready mark: an interrupted rename
            raise RuntimeError(f"{path} exists but is not marked complete; remove it by hand")
        log(f"debootstrap {suite} into {partial} (cached for later runs)")
        with open(os.path.join(CACHE, f"debootstrap-{suite}.log"), "w") as out:
            r = subprocess.run(["debootstrap", "--variant=minbase",
                                "--include=" + ",".join(PACKAGES), suite, partial],
                               stdout=out, stderr=subprocess.STDOUT, timeout=1800)
        if r.returncode != 0:
            with open(os.path.join(CACHE, f"debootstrap-{suite}.log"), errors="replace") as f:
                tail = f.read()[-400:]
            raise TreeUnavailable(f"debootstrap {suite} failed (exit {r.returncode}; no "
                                  f"package registry reachable?): {tail}")
        with open(os.path.join(partial, ".jobns-tree-ready"), "w") as f:
            f.write(" ".join(PACKAGES) + "\n")
        os.rename(partial, path)
    return path


# ------------------------------------------------------------------ the box

def _next_mntns_id(cpu: int) -> int:
    r = subprocess.run(["taskset", "-c", str(cpu), "unshare", "--mount", sys.executable,
                        "-I", "-c", _MNTNS_ID], capture_output=True, text=True, check=True)
    return int(r.stdout)


def _best_cpu() -> int:
    cpus = sorted(os.sched_getaffinity(0))
    return min(cpus, key=_next_mntns_id)


class Box:
    """A private mount namespace rooted at `tree`, with `binds` at the same paths."""

    def __init__(self, tree: str, tag: str, pidfile: str, binds: tuple[str, ...]):
        self.tree = tree
        self.tag = f"{BOX_TAG}={tag}"
        self.pidfile = pidfile
        self.binds = binds

    def pid(self) -> int | None:
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return None
        if pid > 1 and jsc._alive(pid) and jsc._environ_has(pid, self.tag):
            return pid
        return None

    def up(self) -> int:
        pid = self.pid()
        if pid:
            return pid
        t = self.tree
        lines = ["set -e", f"mount --bind {t} {t}", f"mount -t proc proc {t}/proc",
                 f"mount --rbind /sys {t}/sys", f"mount --rbind /dev {t}/dev",
                 f"mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs {t}/dev/shm"]
        for b in self.binds:
            os.makedirs(t + b, exist_ok=True)
            lines.append(f"mount --bind {b} {t}{b}")
        # the namespace is made on `cpu`; its holder then may run on every CPU again
        cpu = _best_cpu()
        every = ",".join(map(str, sorted(os.sched_getaffinity(0))))
        lines += [f"cd {t}", "mkdir -p .oldroot", "pivot_root . .oldroot", "cd /",
                  "umount -l /.oldroot", "rmdir /.oldroot",
                  f"taskset -p -c {every} $$ >/dev/null", "echo ready", "exec sleep infinity"]
        key, value = self.tag.split("=", 1)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", key: value}
        p = subprocess.Popen(["taskset", "-c", str(cpu), "unshare", "--mount",
                              "--propagation", "private", "--", "/bin/sh", "-c",
                              "\n".join(lines)],
                             env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        first = p.stdout.readline()
        if first.strip() != "ready":
            p.kill()
            raise RuntimeError(f"the box for {t} did not come up: {first}{p.stderr.read()}")
        with open(self.pidfile, "w") as f:
            f.write(f"{p.pid}\n")
        return p.pid

    def down(self) -> None:
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
            if not jsc._wait_gone(pid, 10):
                os.kill(pid, signal.SIGKILL)
                jsc._wait_gone(pid, 5)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pidfile)


# ------------------------------------------------------------------ the cluster

class BoxCluster(jsc.Cluster):
    """jobns_slurm_cluster.Cluster whose node runs in a Debian tree's box."""

    def __init__(self, root: str, suite: str):
        root = root.rstrip("/")
        super().__init__(root, f"{root}/venv/bin/jobns")
        self.suite = suite
        self.tree = tree_path(suite)
        self.box = Box(self.tree, root, f"{root}/box.pid", (root, CHECKOUT))
        self._box_pid: int | None = None

    # ------------------------------------------------------------- where the node runs
    def _pid(self) -> int:
        pid = self._box_pid if self._box_pid and jsc._alive(self._box_pid) else self.box.pid()
        if not pid:
            raise RuntimeError(f"the box of {self.root} is not running")
        self._box_pid = pid
        return pid

    def node_argv(self, argv: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self._pid()), "-m", "--", *argv]

    def mounts_under(self, path: str) -> list[str]:
        pid = self.box.pid()
        if not pid:
            return []
        return jsc.mounts_under(path, f"/proc/{pid}/mountinfo")

    def node_path(self, path: str) -> str:
        return f"/proc/{self._pid()}/root{path}"

    # ------------------------------------------------------------- preparation
    def prepare_node(self) -> None:
        ensure_tree(self.suite)
        for d in (self.root, CHECKOUT):
            os.makedirs(self.tree + d, exist_ok=True)
        # the node's names resolve as on the host (slurmctld and slurmd look up the host name)
        with open("/etc/hosts") as f:
            hosts = f.read()
        with open(f"{self.tree}/etc/hosts", "r+") as f:
            if f.read() != hosts:
                f.seek(0)
                f.truncate()
                f.write(hosts)
        self._box_pid = self.box.up()
        self._sync_users()
        self._install_jobns()
        self.exes = {n: self.run(["readlink", "-f", p], check=True).stdout.strip()
                     for n, p in (("munged", jsc.MUNGED), ("slurmctld", jsc.SLURMCTLD),
                                  ("slurmd", jsc.SLURMD), ("slurmstepd", jsc.SLURMSTEPD))}

    def _sync_users(self) -> None:
        """The test users with the host's uid/gid, and their home directories."""
        for user, pw in self.users.items():
            for db, entry in (("group", f"{user}:x:{pw.pw_gid}:"),
                              ("passwd", f"{user}:x:{pw.pw_uid}:{pw.pw_gid}::"
                                         f"/home/{user}:/bin/bash")):
                path = f"{self.tree}/etc/{db}"
                with open(path) as f:
                    lines = [ln for ln in f.read().splitlines()
                             if ln.split(":", 1)[0] != user]
                with open(path) as f:
                    current = f.read().splitlines()
                if current != [*lines, entry] and entry not in current:
                    with open(path + ".jobns-tmp", "w") as f:
                        f.write("\n".join([*lines, entry]) + "\n")
                    os.chmod(path + ".jobns-tmp", 0o644)
                    os.replace(path + ".jobns-tmp", path)
            home = f"{self.tree}/home/{user}"
            os.makedirs(home, mode=0o755, exist_ok=True)
            os.chown(home, pw.pw_uid, pw.pw_gid)

    def _install_jobns(self) -> None:
        venv = f"{self.root}/venv"
        stamp = f"{venv}/.jobns-installed"
        want = f"{CHECKOUT} {os.path.getmtime(os.path.join(CHECKOUT, 'pyproject.toml'))}\n"
        with contextlib.suppress(OSError):
            if open(stamp).read() == want and os.path.exists(self.jobns):
                return
        if os.path.exists(venv):
            shutil.rmtree(venv)
        self.run(["python3", "-m", "venv", venv], check=True)
        # the tree's own pip settings (the host's PIP_* may name files the tree lacks)
        env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
        # ...but this host's CA bundle: the way to the package index may need it
        ca = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
        if os.path.isfile(ca):
            shutil.copyfile(ca, f"{self.root}/pip-ca.crt")
            env["PIP_CERT"] = f"{self.root}/pip-ca.crt"
        r = self.run([f"{venv}/bin/python", "-m", "pip", "install", "-q",
                      "--disable-pip-version-check", "-e", CHECKOUT], timeout=600, env=env)
        if r.returncode != 0:
            raise TreeUnavailable(f"pip install -e {CHECKOUT} in the {self.suite} tree "
                                  f"failed (no package index reachable?):\n"
                                  f"{r.stdout[-1000:]}{r.stderr[-1500:]}")
        self.run([f"{venv}/bin/python", "-m", "compileall", "-q", f"{CHECKOUT}/src"])
        with open(stamp, "w") as f:
            f.write(want)

    # ------------------------------------------------------------- teardown
    def stop(self) -> list[str]:
        if not self.box.pid():
            self.started = False
            return []
        warnings = super().stop()
        self.box.down()   # the job namespaces' pins and all other box mounts go with it
        self._box_pid = None
        return warnings
