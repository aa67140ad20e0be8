"""The one value every reader produces: the effective configuration of one node.

Readers (namespace.yaml, job_container.conf, plugstack args) live beside this module and
all return a `NodeConfig`. Nothing outside jobns.config parses configuration.
"""

from __future__ import annotations

import os

from jobns.values import Frozen

# Canonical clone flag names, in the order namespaces are joined (PID, USER, MNT).
CLONE_NEWPID = "CLONE_NEWPID"
CLONE_NEWUSER = "CLONE_NEWUSER"
CLONE_NEWNS = "CLONE_NEWNS"
KNOWN_CLONE_FLAGS = (CLONE_NEWPID, CLONE_NEWUSER, CLONE_NEWNS)

DEFAULT_BASE_PATH = "/var/lib/jobns"

# The runtime dir (locks, the job index, the config cache) is set by the environment.
RUNTIME_ENV = "JOBNS_RUNTIME_DIR"
DEFAULT_RUNTIME_DIR = "/run/jobns"     # also JOBNS_DEFAULT_RUNTIME in slurm/jobns_join.h
DEFAULT_DIRS = ("/tmp", "/dev/shm")
DEFAULT_WAIT = 10
SHM_DIR = "/dev/shm"

# dir_confs `options` tokens that are mount flags (in this display order); every other
# token is tmpfs data (size=, mode=, ...).
DIR_FLAGS = ("ro", "noexec", "nosuid", "nodev", "noatime", "nodiratime", "relatime")


class DirConf(Frozen):
    """One `dir_confs` element (Slurm 26.05 namespace.yaml).

    `path` is as written (``%j`` and ``%u`` are expanded per job by the plan);
    `options` the comma-separated tokens as written, flags lower-cased; `base_path` the
    expanded per-directory base (jobns accepts only the node's own base_path, which puts
    the backing dir at ``<base>/<J>/<mangled>`` as Slurm does) or None.
    """

    path: str
    tmpfs: bool = False
    options: tuple[str, ...] = ()
    base_path: str | None = None

    @property
    def flags(self) -> tuple[str, ...]:
        return tuple(f for f in DIR_FLAGS if f in self.options)

    @property
    def data(self) -> tuple[str, ...]:
        return tuple(t for t in self.options if t not in DIR_FLAGS)

    def as_dict(self) -> dict:
        return {"path": self.path, "tmpfs": self.tmpfs, "options": ",".join(self.options),
                "base_path": self.base_path}


class NodeConfig(Frozen):
    """Effective configuration for one node.

    `base_path` is None when jobns is disabled on this node (no base path, or `none`).
    `clone_ns_flags` always contains CLONE_NEWNS; extra flags are kept in canonical order.
    `dir_confs`, when not empty, says how each dir is mounted (and `dirs` is then the
    list of their paths, as written); empty means the classic `dirs` behaviour.
    `source` is the file it came from ("built-in" for the default) and `origin` says which
    entry or line of it applied (e.g. "node_confs[0] (line 12)").
    `node_dir` is set when several slurmd's share this host (Slurm's multiple-slurmd
    build): the node's jobs then live in `<base_path>/<node_name>/` (`jobs_path`), as
    Slurm's own plugins keep them in such a build.
    """

    node_name: str
    base_path: str | None = DEFAULT_BASE_PATH
    auto_base_path: bool = True
    dirs: tuple[str, ...] = DEFAULT_DIRS
    dir_confs: tuple[DirConf, ...] = ()
    shared: bool = False
    clone_ns_flags: tuple[str, ...] = (CLONE_NEWNS,)
    init_script: str | None = None
    clone_ns_script: str | None = None
    clone_ns_script_wait: int = DEFAULT_WAIT
    clone_ns_epilog: str | None = None
    clone_ns_epilog_wait: int = DEFAULT_WAIT
    user_ns_script: str | None = None
    disable_bpf_token: bool = False
    entire_step_in_ns: bool = False
    source: str = "built-in"
    origin: str = "built-in default"
    warnings: tuple[str, ...] = ()
    node_dir: bool = False

    _nocompare = ("warnings",)

    @property
    def enabled(self) -> bool:
        return self.base_path is not None

    @property
    def disabled_message(self) -> str:
        """What every command says when jobns is disabled on this node."""
        return (f"jobns is disabled on node {self.node_name} by {self.source} "
                f"({self.origin}): no base_path")

    @property
    def jobs_path(self) -> str | None:
        """The directory that holds this node's job dirs."""
        if self.base_path is None or not self.node_dir:
            return self.base_path
        return self.base_path.rstrip("/") + "/" + self.node_name

    @property
    def new_pid(self) -> bool:
        return CLONE_NEWPID in self.clone_ns_flags

    @property
    def new_user(self) -> bool:
        return CLONE_NEWUSER in self.clone_ns_flags

    def as_dict(self) -> dict:
        """The keys of `config show --json`: namespace.yaml option names, lists as lists."""
        d = self.to_dict()
        d["dirs"] = list(self.dirs)
        d["dir_confs"] = [c.as_dict() for c in self.dir_confs]
        d["clone_ns_flags"] = list(self.clone_ns_flags)
        d["warnings"] = list(self.warnings)
        d["jobs_path"] = self.jobs_path
        return d


def builtin_default(node_name: str) -> NodeConfig:
    """The configuration used when no config file exists anywhere."""
    return NodeConfig(node_name=node_name)


def runtime_dir() -> str:
    return os.environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME_DIR


def short_hostname() -> str:
    """The host name up to its first dot: the node name when none is given (Slurm's
    default NodeName, and what %h expands to)."""
    return os.uname().nodename.split(".", 1)[0]


def mangle(path: str) -> str:
    """Slurm's backing-directory name for a private dir: every '/' becomes '_'."""
    return path.replace("/", "_")
