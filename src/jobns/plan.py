"""The plan: a pure function from (NodeConfig, Job) to the ordered steps that build a job's
namespace. No side effects, so it is testable without root and printable
(`jobns create --dry-run`). The lifecycle executes the steps in order; each step runs
either on the host (in the caller's namespaces) or inside the new namespace.

On-disk layout (Slurm namespace/linux compatible)::

    <base>/<J>/               0700 root        the job directory
    <base>/<J>/.ns/           0700 root        pins and the job record
    <base>/<J>/.ns/mnt        the mount-namespace pin (nsfs bind mount)
    <base>/<J>/.ns/pid1       host pid of the namespace's PID 1 (only with CLONE_NEWPID)
    <base>/<J>/.ns/job.json   the job record (what was built, for list/delete/restore)
    <base>/<J>/.<J>/          0700 <uid>:root  SLURM_JOB_MOUNTPOINT_SRC
    <base>/<J>/.<J>/_tmp      0700 <uid>       backing dir of /tmp (one per `dirs` entry)
    <base>/<J>/_scratch       0700 <uid>       backing dir of a dir_confs entry whose
                                               base_path is the node's base_path (Slurm's
                                               `<dir.base_path>/<J>/<mangled>`)

With `dir_confs`, each entry is mounted in list order: a bind mount from its backing dir
(then a bind remount when it has flags such as noexec), or a fresh tmpfs (no backing dir)
with nosuid,nodev always added. A tmpfs without `mode=` is 0700 and owned by the job user
(like Slurm's bind-mounted /tmp); /dev/shm keeps mode 1777. `size=N%mem` (a jobns
extension) is N% of SLURM_JOB_MEM (MiB), or N% of the node's RAM without a memory request.

Only the mount namespace is pinned on disk: pins of user and PID namespaces would be copied
into every later job namespace (measured: 2,024 mountinfo lines per job at 1,000 jobs). The
user namespace is reached from the mount pin (NS_GET_USERNS), the PID namespace through its
PID 1 (`.ns/pid1`, verified against the mount pin before use).
"""

from __future__ import annotations

import os
import posixpath
from jobns.config.model import SHM_DIR, DirConf, NodeConfig, mangle
from jobns.errors import OperationError
from jobns.job import Job
from jobns.values import Frozen

HOST = "host"
NS = "ns"
RECORD_VERSION = 1


class JobPaths(Frozen):
    base: str
    job_dir: str
    ns_dir: str
    pin: str
    pid1: str
    record: str
    src: str

    @classmethod
    def of(cls, base: str, job_id: str) -> "JobPaths":
        job_dir = os.path.join(base, job_id)
        ns_dir = os.path.join(job_dir, ".ns")
        return cls(base=base, job_dir=job_dir, ns_dir=ns_dir,
                   pin=os.path.join(ns_dir, "mnt"), pid1=os.path.join(ns_dir, "pid1"),
                   record=os.path.join(ns_dir, "job.json"),
                   src=os.path.join(job_dir, "." + job_id))

    def backing(self, target: str) -> str:
        return os.path.join(self.src, mangle(target))


class Op:
    """The closed set of step kinds. Each has one executor function (host steps:
    jobns.create.HOST_OPS; steps inside the namespace: jobns.nschild.NS_OPS) and one line of
    description (DESCRIBE below), and each reads only the fields listed here."""

    ENSURE_BASE = "ensure_base"     # path (base_path); mode: create it so when missing, else None
    JOB_DIR = "job_dir"             # path, mode: made exclusively (a stale one is cleaned first)
    MKDIR = "mkdir"                 # path, mode, owner ((uid, gid), -1 keeps; None: root)
    PIN_FILE = "pin_file"           # path, mode: the empty file the pin is mounted on
    HOOK = "hook"                   # hook, path (script), timeout, env
    UNSHARE = "unshare"             # flags (clone flag names)
    USER_MAP = "usermap"            # data: written to the child's uid_map and gid_map
    USER_MAP_HOOK = "usermap_hook"  # as HOOK plus SLURM_NS_PID; the maps must be written
    PIN = "pin"                     # path: bind mount of the child's /proc/<pid>/ns/mnt
    PROPAGATION = "propagation"     # path, flags (propagation names, applied in order)
    BIND = "bind"                   # path, source, flags (then a bind remount with them)
    TMPFS = "tmpfs"                 # path, source, fstype, flags, data; peel: unmount first
    HIDE = "hide"                   # as TMPFS without peel; a path missing in the namespace is fine
    INIT = "init"                   # path, source, fstype, flags: PID 1 mounts it, runs the reaper
    PID_FILE = "pid_file"           # path: gets the host pid of PID 1
    RECORD = "record"               # path: the job record (JSON)
    INDEX = "index"                 # source: the job dir the runtime index entry points to

    ALL = frozenset((ENSURE_BASE, JOB_DIR, MKDIR, PIN_FILE, HOOK, UNSHARE, USER_MAP,
                     USER_MAP_HOOK, PIN, PROPAGATION, BIND, TMPFS, HIDE, INIT, PID_FILE, RECORD,
                     INDEX))
    IN_NAMESPACE = frozenset((PROPAGATION, BIND, TMPFS, HIDE, INIT))
    MOUNTS_DIR = frozenset((BIND, TMPFS))     # the job's private dirs

    # the fields of each op shown by Step.args
    OPERANDS = {MKDIR: ("mode", "owner"), JOB_DIR: ("mode",), ENSURE_BASE: ("mode",),
                PIN_FILE: ("mode",), HOOK: ("hook", "timeout"), USER_MAP_HOOK: ("hook", "timeout"),
                UNSHARE: ("flags",), USER_MAP: ("data",), PROPAGATION: ("flags",),
                BIND: ("source", "flags"), TMPFS: ("data", "flags", "peel"),
                HIDE: ("source", "fstype", "flags", "data"), INIT: ("source", "fstype", "flags"),
                INDEX: ("source",), PIN: (), PID_FILE: (), RECORD: ()}


def _owner(owner) -> str:
    if owner is None:
        return "root"
    uid, gid = owner
    return f"{uid}:{'root' if gid == -1 else gid}"


# One line per op, from the step's fields only: what `create --dry-run` prints is what runs.
DESCRIBE = {
    Op.ENSURE_BASE: lambda s: ("must exist" if s.mode is None else
                               f"create {s.mode:04o} if missing, as auto_base_path allows")
    + "; own private mount",
    Op.JOB_DIR: lambda s: f"{s.mode:04o} root, exclusive",
    Op.MKDIR: lambda s: f"{s.mode:04o} {_owner(s.owner)}",
    Op.PIN_FILE: lambda s: f"empty file {s.mode:04o} for the mount pin",
    Op.HOOK: lambda s: f"timeout {s.timeout:g} s",
    Op.USER_MAP_HOOK: lambda s: f"writes uid_map/gid_map, timeout {s.timeout:g} s",
    Op.UNSHARE: lambda s: "|".join(s.flags),
    Op.USER_MAP: lambda s: f"uid_map and gid_map: {s.data.strip()}",
    Op.PIN: lambda s: "bind /proc/<child>/ns/mnt",
    Op.PROPAGATION: lambda s: " then ".join(s.flags),
    Op.BIND: lambda s: f"from {s.source}" + (
        f"; remount {','.join(s.flags)} (+ the source's flags)" if s.flags else ""),
    Op.TMPFS: lambda s: f"fresh {s.fstype} {','.join(s.flags)} {s.data}"
    + ("; inherited mounts peeled off first" if s.peel else ""),
    Op.HIDE: lambda s: f"empty {s.fstype} {','.join(s.flags)} {s.data}; none if not visible",
    Op.INIT: lambda s: f"PID 1 reaper; fresh {s.fstype} {','.join(s.flags)}",
    Op.PID_FILE: lambda s: "host pid of PID 1",
    Op.RECORD: lambda s: "what was built",
    Op.INDEX: lambda s: f"runtime index entry -> {s.source}",
}


class Step(Frozen):
    """One named action: an op from the closed set `Op` and every field its executor reads.
    `name` is stable: errors, logs and failure injection use it."""

    name: str
    where: str                      # HOST or NS
    kind: str                       # an Op
    path: str | None = None
    source: str | None = None
    fstype: str | None = None
    flags: tuple[str, ...] = ()
    data: str | None = None
    mode: int | None = None
    owner: tuple[int, int] | None = None
    peel: bool = False
    hook: str | None = None
    timeout: float | None = None
    env: tuple[tuple[str, str], ...] = ()

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        if self.kind not in Op.ALL:
            raise ValueError(f"step {self.name}: unknown op {self.kind!r}")
        if (self.where == NS) != (self.kind in Op.IN_NAMESPACE):
            raise ValueError(f"step {self.name}: op {self.kind} does not run on the {self.where} side")

    @property
    def detail(self) -> str:
        return DESCRIBE[self.kind](self)

    @property
    def args(self) -> dict:
        """The op's operands (lists for flags), e.g. for JSON."""
        return {f: list(v) if f == "flags" else v
                for f in Op.OPERANDS[self.kind] for v in (getattr(self, f),)}

    def describe(self) -> str:
        text = f"[{self.where}] {self.name}"
        if self.path:
            text += f" {self.path}"
        detail = self.detail
        if detail:
            text += f"  ({detail})"
        return text


def step_error(step: Step, exc: OSError) -> OperationError:
    """The error of a step that failed with `exc`: the step, the path acted on, the errno,
    and the op with its operands (source, flags, data: what was asked of the kernel)."""
    return OperationError(step.name, f"{exc.strerror or exc} ({step.kind}: {step.detail})",
                          path=exc.filename or step.path, errno=exc.errno)


class Plan(Frozen):
    cfg: NodeConfig
    job: Job
    paths: JobPaths
    clone_flags: tuple[str, ...]
    steps: tuple[Step, ...]

    def host_before(self) -> tuple[Step, ...]:
        """Host steps up to and including the unshare."""
        idx = next(i for i, s in enumerate(self.steps) if s.kind == Op.UNSHARE)
        return self.steps[:idx + 1]

    def host_between(self) -> tuple[Step, ...]:
        """Host steps after the child unshared and before it builds the mounts."""
        out = []
        for s in self.steps[len(self.host_before()):]:
            if s.where != HOST:
                break
            out.append(s)
        return tuple(out)

    def in_namespace(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.where == NS)

    def host_after(self) -> tuple[Step, ...]:
        last_ns = max(i for i, s in enumerate(self.steps) if s.where == NS)
        return self.steps[last_ns + 1:]

    def job_dirs(self) -> tuple[str, ...]:
        """The job's private dirs as mounted (dir_confs paths expanded), in order."""
        return tuple(s.path for s in self.steps if s.kind in Op.MOUNTS_DIR)

    def backing_dirs(self) -> dict[str, str]:
        """Private dir -> its backing directory on the host (bind-mounted dirs only)."""
        return {s.path: s.source for s in self.steps if s.kind == Op.BIND}

    def record(self) -> dict:
        """The job record's fields known before anything runs (create adds the rest)."""
        cfg, job = self.cfg, self.job
        return {
            "version": RECORD_VERSION, "job_id": job.job_id, "uid": job.uid, "gid": job.gid,
            "user": job.user, "node": cfg.node_name, "base_path": cfg.base_path,
            "jobs_path": cfg.jobs_path,
            "dirs": list(self.job_dirs()), "backing": self.backing_dirs(),
            "clone_ns_flags": list(self.clone_flags), "shared": cfg.shared,
            "config": cfg.source, "env": dict(job.env), "init_pid": None,
            "mem_pending": self.mem_pending(),
        }

    def mem_pending(self) -> list:
        """[path, N] of each tmpfs sized `size=N%mem` while the job's memory is not known
        (no SLURM_JOB_MEM: Slurm gives a prolog none). Mounted at N% of the node's RAM
        until the job's first step, which knows it, sets it (`jobns slurm set-mem`)."""
        mem = (self.job.env.get("SLURM_JOB_MEM") or "").strip()
        if mem not in ("", "0"):
            return []
        out = []
        for conf in self.cfg.dir_confs:
            for tok in conf.data if conf.tmpfs else ():
                name, _, value = tok.partition("=")
                if name == "size" and value.endswith("%mem"):
                    out.append([expand_dir_path(conf.path, self.job), int(value[:-4])])
        return out

    def describe(self) -> str:
        lines = [f"plan for job {self.job.job_id} (user {self.job.user}, uid {self.job.uid}, "
                 f"gid {self.job.gid}) on node {self.cfg.node_name}:"]
        lines += [f"{i:3d}. {s.describe()}" for i, s in enumerate(self.steps, 1)]
        return "\n".join(lines)


def private_dirs(cfg: NodeConfig) -> tuple[str, ...]:
    """The `dirs` entries that are bind-mounted from a backing dir (all but /dev/shm;
    with dir_confs, the entries that are not tmpfs, as written)."""
    if cfg.dir_confs:
        return tuple(c.path for c in cfg.dir_confs if not c.tmpfs)
    return tuple(d for d in cfg.dirs if d != SHM_DIR)


def expand_dir_path(path: str, job: Job) -> str:
    """A dir_confs path for `job`: %j is the job id, %u the user name."""
    return path.replace("%j", job.job_id).replace("%u", job.user)


def tmpfs_data(conf: DirConf, path: str, job: Job, step: str) -> str:
    """The mount data of a dir_confs tmpfs for `job` (see the module docstring)."""
    data = []
    for tok in conf.data:
        name, _, value = tok.partition("=")
        if name == "size" and value.endswith("%mem"):
            pct = int(value[:-4])
            mem = (job.env.get("SLURM_JOB_MEM") or "").strip()
            if mem in ("", "0"):
                tok = f"size={pct}%"            # no memory request: N% of the node's RAM
            elif not (mem.isascii() and mem.isdigit()):
                raise OperationError(step, f"size={value} needs SLURM_JOB_MEM in MiB, "
                                     f"got {mem!r}", path=path)
            else:
                tok = f"size={max(1, int(mem) * 1024 * pct // 100)}k"
        data.append(tok)
    names = {t.partition("=")[0] for t in data}
    if "mode" not in names:
        if path == SHM_DIR:
            data.append("mode=1777")
        else:
            data.append("mode=0700")
            if "uid" not in names:
                data.append(f"uid={job.uid}")
            if "gid" not in names:
                data.append("gid=0")
    return ",".join(data)


def _check_plain_absolute(conf: DirConf, path: str, step: str, base: str) -> None:
    parts = path.split("/")
    if not path.startswith("/") or ".." in parts or "." in parts[1:] or \
            posixpath.normpath(path) == "/":
        raise OperationError(step, f"{conf.path} expands to the unusable path {path!r}",
                             path=path)


def _check_outside_base(conf: DirConf, path: str, step: str, base: str) -> None:
    norm = posixpath.normpath(path)
    if norm == base or norm.startswith(base.rstrip("/") + "/"):
        raise OperationError(step, f"{conf.path} expands to {path}, inside base_path {base}",
                             path=path)


# What a dir_confs path must be once %j and %u are expanded for a job: one check per concern
# (the config reader checks the path as written; only the job's values are checked here).
DIR_PATH_CHECKS = (_check_plain_absolute, _check_outside_base)


def _checked_path(conf: DirConf, job: Job, base: str) -> str:
    path = expand_dir_path(conf.path, job)
    step = f"{'tmpfs' if conf.tmpfs else 'bind'}:{path}"
    for check in DIR_PATH_CHECKS:
        check(conf, path, step, base)
    return path


def _dir_conf_steps(cfg: NodeConfig, job: Job, paths: JobPaths):
    """(host mkdir steps, namespace mount steps) of the dir_confs entries."""
    host, ns = [], []
    seen = set()
    for conf in cfg.dir_confs:
        path = _checked_path(conf, job, cfg.base_path)
        if posixpath.normpath(path) in seen:
            raise OperationError(f"bind:{path}", f"two dir_confs paths expand to {path} for "
                                 f"job {job.job_id} (user {job.user})", path=path)
        seen.add(posixpath.normpath(path))
        if conf.tmpfs:
            name = f"tmpfs:{path}"
            data = tmpfs_data(conf, path, job, name)
            flags = ("nosuid", "nodev") + tuple(f for f in conf.flags
                                                if f not in ("nosuid", "nodev"))
            ns.append(Step(name, NS, Op.TMPFS, path, source="tmpfs", fstype="tmpfs",
                           flags=flags, data=data, peel=path == SHM_DIR))
            continue
        if conf.base_path:
            backing = os.path.join(paths.job_dir, mangle(path))
        else:
            backing = paths.backing(path)
        host.append(Step(f"mkdir-dir:{path}", HOST, Op.MKDIR, backing, mode=0o700,
                         owner=(job.uid, -1)))
        ns.append(Step(f"bind:{path}", NS, Op.BIND, path, source=backing,
                       flags=tuple(conf.flags)))
    return host, ns


def _hook_step(name: str, where: str, op: str, hook: str, cfg: NodeConfig, job: Job,
               paths: JobPaths) -> Step:
    from jobns import hooks     # only when a hook is configured: it imports more than a create
    env = hooks.job_hook_env(hook, cfg.node_name, job, job_dir=paths.job_dir,
                             slurm_conf=job.env.get("SLURM_CONF"))
    return Step(name, where, op, hooks.hook_path(hook, cfg), hook=hook,
                timeout=hooks.hook_wait(hook, cfg), env=tuple(env.items()))


def build_plan(cfg: NodeConfig, job: Job) -> Plan:
    if cfg.base_path is None:
        raise ValueError(cfg.disabled_message)
    paths = JobPaths.of(cfg.jobs_path, job.job_id)
    flags = tuple(cfg.clone_ns_flags)
    steps: list[Step] = []
    add = steps.append
    owner = (job.uid, -1)

    # the node's own directory below base_path (several slurmd's on the host) is always
    # made; base_path itself (then `source`, which must exist) only with auto_base_path
    add(Step("ensure-base", HOST, Op.ENSURE_BASE, cfg.jobs_path,
             mode=0o755 if cfg.auto_base_path or cfg.node_dir else None,
             source=cfg.base_path if cfg.node_dir and not cfg.auto_base_path else None))
    add(Step("mkdir-job", HOST, Op.JOB_DIR, paths.job_dir, mode=0o700))
    add(Step("mkdir-ns", HOST, Op.MKDIR, paths.ns_dir, mode=0o700))
    add(Step("pin-file", HOST, Op.PIN_FILE, paths.pin, mode=0o400))
    add(Step("mkdir-src", HOST, Op.MKDIR, paths.src, mode=0o700, owner=owner))
    dir_host, dir_ns = _dir_conf_steps(cfg, job, paths) if cfg.dir_confs else ((), ())
    steps.extend(dir_host)
    for d in (() if cfg.dir_confs else private_dirs(cfg)):
        add(Step(f"mkdir-dir:{d}", HOST, Op.MKDIR, paths.backing(d), mode=0o700, owner=owner))
    if cfg.init_script:
        add(_hook_step("init-script", HOST, Op.HOOK, "init_script", cfg, job, paths))
    add(Step("unshare", HOST, Op.UNSHARE, flags=flags))
    if cfg.new_user:
        if cfg.user_ns_script:
            add(_hook_step("user-ns-script", HOST, Op.USER_MAP_HOOK, "user_ns_script", cfg,
                           job, paths))
        else:
            add(Step("user-map", HOST, Op.USER_MAP, data="0 0 4294967295\n"))
    add(Step("pin-mnt", HOST, Op.PIN, paths.pin))
    add(Step("propagation", NS, Op.PROPAGATION, "/",
             flags=("rshared", "rslave") if cfg.shared else ("rprivate",)))
    steps.extend(dir_ns)
    for d in (() if cfg.dir_confs else private_dirs(cfg)):
        add(Step(f"bind:{d}", NS, Op.BIND, d, source=paths.backing(d)))
    if SHM_DIR in cfg.dirs and not cfg.dir_confs:
        add(Step(f"tmpfs:{SHM_DIR}", NS, Op.TMPFS, SHM_DIR, source="tmpfs", fstype="tmpfs",
                 flags=("nosuid", "nodev"), data="mode=1777", peel=True))
    add(Step("hide-base", NS, Op.HIDE, cfg.base_path, source="jobns-hidden", fstype="tmpfs",
             flags=("ro", "nosuid", "nodev", "noexec"), data="mode=0755,size=4k,nr_inodes=1"))
    if cfg.new_pid:
        add(Step("init", NS, Op.INIT, "/proc", source="proc", fstype="proc",
                 flags=("nosuid", "nodev", "noexec")))
    if cfg.new_pid:
        add(Step("pid1", HOST, Op.PID_FILE, paths.pid1))
    add(Step("record", HOST, Op.RECORD, paths.record))
    add(Step("index", HOST, Op.INDEX, source=paths.job_dir))
    if cfg.clone_ns_script:
        add(_hook_step("clone-ns-script", HOST, Op.HOOK, "clone_ns_script", cfg, job, paths))
    return Plan(cfg=cfg, job=job, paths=paths, clone_flags=flags, steps=tuple(steps))
