"""The on-disk and runtime-dir state of jobs: base_path, the job record, the index, locks.

Layout under base_path (see jobns.plan for the full tree): `<base>/<J>/.ns/mnt` (the pin),
`.ns/pid1` (host pid of PID 1), `.ns/job.json` (the record), `<base>/.jobns-trash/` (job
dirs being removed). In the runtime dir (JOBNS_RUNTIME_DIR, default /run/jobns):
`lock/<J>` (one flock per job), `jobs/<J>` (symlink to the job dir), `bases/<mangled>`
(the mount id of a verified base_path).

Kernel facts relied on (measured; see docs/architecture.md): base_path is made its own
private mount once; per-job self-binds would grow quadratically with a shared `/`.
"""

from __future__ import annotations

import errno
import fcntl
import os
from jobns import kernel
from jobns._lazy import lazy
from jobns.config.model import NodeConfig
from jobns.config.model import runtime_dir as root_runtime_dir
from jobns.errors import OperationError, UsageError
from jobns.log import null_log
from jobns.plan import JobPaths
from jobns.values import suppress

# json (with re) costs more to import than a create does: the record is written by
# to_json and json loads on demand (to read a record).
json = lazy("json")

TRASH = ".jobns-trash"
FAIL_ENV = "JOBNS_TEST_FAIL_STEP"       # failure injection, used by the test suite

STATE_READY = "ready"
STATE_TEARDOWN_FAILED = "teardown-failed"
MEM_PENDING = "mem-pending"       # .ns/<this>: a size=N%mem waits for the job's memory

# Several slurmd's on one host: the runtime dir of the node this process works for is
# <runtime>/nodes/<NodeName> (set by select_node, from the node's config).
_node: str | None = None


def runtime_dir() -> str:
    """This process's runtime dir: the node's own below the root one when several
    slurmd's share this host (see select_node)."""
    root = root_runtime_dir()
    return root if _node is None else os.path.join(root, "nodes", _node)


def select_node(cfg: NodeConfig) -> None:
    """Work in `cfg`'s node's own runtime dir when several slurmd's share this host
    (cfg.node_dir): their job ids are the same for a multi-node job, their index and
    locks must not be."""
    global _node
    _node = cfg.node_name if cfg.node_dir else None


def ensure_private_dir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise OperationError("runtime-dir", "must be owned by root and not writable by others",
                             path=path)


def index_path(job_id: str) -> str:
    return os.path.join(runtime_dir(), "jobs", job_id)


def fail_point(step: str) -> None:
    if os.environ.get(FAIL_ENV) == step:
        raise OperationError(step, f"injected failure ({FAIL_ENV})", errno=errno.ECANCELED)


def require_base(cfg: NodeConfig) -> str:
    """The directory that holds this node's job dirs (base_path, or <base_path>/<node>
    when several slurmd's share the host); selects the node's runtime dir."""
    if cfg.base_path is None:
        raise UsageError(cfg.disabled_message)
    select_node(cfg)
    return cfg.jobs_path


# errnos that say the runtime dir cannot take a new file (not that something is wrong)
_UNUSABLE = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EIO)


class job_lock:
    """Serialise create/delete/restore of one job across processes (flock on a lock file
    in the runtime dir; the file is re-checked after locking so that unlinking it is safe).
    With `remove`, the lock file is unlinked before it is released (after a delete), so
    that lock files do not pile up with every job id a node ever ran.

    A runtime dir that cannot take the lock file (read-only, full) raises an
    OperationError naming the path and errno; an existing lock file is still used (a
    read-only descriptor can hold a flock). With `optional` (delete, restore: tearing a job
    down must work while /run is full) the lock is skipped instead, with a warning."""

    def __init__(self, job_id: str, *, remove: bool = False, optional: bool = False,
                 log=null_log):
        self.job_id = job_id
        self.path = os.path.join(runtime_dir(), "lock", job_id)
        self.remove = remove
        self.optional = optional
        self.log = log
        self.fd = -1

    def __enter__(self):
        try:
            ensure_private_dir(runtime_dir())
            ensure_private_dir(os.path.dirname(self.path))
            self.fd = self._lock(os.O_RDWR | os.O_CREAT)
        except OSError as e:
            if e.errno not in _UNUSABLE:
                raise OperationError.from_oserror("runtime-dir", e, e.filename or self.path) \
                    from e
            try:    # the runtime dir cannot take a new file: an existing one still locks
                self.fd = self._lock(os.O_RDONLY)
            except OSError:
                if not self.optional:
                    raise OperationError("runtime-dir", "cannot make the job's lock file: "
                                         f"{e.strerror}", path=e.filename or self.path,
                                         errno=e.errno) from e
                self.log("warning", f"job {self.job_id}: runtime dir unusable: "
                         f"{e.filename or self.path}: {e.strerror} "
                         f"[{errno.errorcode.get(e.errno, e.errno)}]; going on without the "
                         "job's lock")
        return self

    def _lock(self, flags: int) -> int:
        while True:
            fd = os.open(self.path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def __exit__(self, exc_type, exc, tb):
        if self.fd < 0:
            return False
        try:
            if self.remove and exc_type is None:
                with suppress(OSError):
                    os.unlink(self.path)
        finally:
            os.close(self.fd)
        return False


def lock_held(job_id: str) -> bool:
    """Whether a create/delete/restore holds the job's lock now (without waiting)."""
    try:
        fd = os.open(os.path.join(runtime_dir(), "lock", job_id),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def read_record(paths: JobPaths) -> dict | None:
    try:
        fd = os.open(paths.record, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            data = json.loads(f.read(1 << 20))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


_JSON_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _json_str(s: str) -> str:
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    out = []
    for ch in s:
        o = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch in _JSON_SHORT:
            out.append(_JSON_SHORT[ch])
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            o -= 0x10000
            out.append(f"\\u{0xD800 | (o >> 10):04x}\\u{0xDC00 | (o & 0x3FF):04x}")
    return '"' + "".join(out) + '"'


def to_json(obj, level: int = 0) -> str:
    """JSON text of the record, as json.dumps(obj, indent=1, sort_keys=True) writes it
    (the record stays readable for admins; this spares the job-start path `json`)."""
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int):
        return str(int(obj))
    if isinstance(obj, float):
        if obj != obj or obj in (float("inf"), float("-inf")):
            return {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[repr(obj)]
        return repr(obj)
    if isinstance(obj, str):
        return _json_str(obj)
    pad, inner = "\n" + " " * level, "\n" + " " * (level + 1)
    if isinstance(obj, (list, tuple)):
        if not obj:
            return "[]"
        return "[" + ",".join(inner + to_json(v, level + 1) for v in obj) + pad + "]"
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        return "{" + ",".join(f"{inner}{_json_str(str(k))}: {to_json(obj[k], level + 1)}"
                              for k in sorted(obj)) + pad + "}"
    raise TypeError(f"not serialisable in a job record: {type(obj).__name__}")


def write_record(path: str, record: dict) -> None:
    """The job record: one JSON object (read by jobns, admins, and the JSON reader of
    jobns_join.h in the PAM module, which needs uid and created_epoch at the top level)."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(to_json(record) + "\n")
    os.rename(tmp, path)


def pin_inode(pin: str) -> int | None:
    """The inode of the mount namespace pinned at `pin`, or None if nothing is pinned."""
    try:
        fd = os.open(pin, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if kernel.ns_type(fd) != kernel.CLONE_NEWNS:
            return None
        return os.fstat(fd).st_ino
    except OSError:
        return None
    finally:
        os.close(fd)


def ns_inode(pid: int, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def read_init_pid(paths: JobPaths, pin_ino: int | None) -> int | None:
    """The host pid of the job's PID 1, verified to live in the job's mount namespace."""
    try:
        with open(paths.pid1, "rb") as f:
            pid = int(f.read(32).strip())
    except (OSError, ValueError):
        return None
    if pin_ino is not None and ns_inode(pid, "mnt") != pin_ino:
        return None
    return pid


def owner_alive(record: dict | None) -> bool:
    owner = (record or {}).get("owner")
    if not isinstance(owner, dict):
        return False
    pid, start = owner.get("pid"), owner.get("start")
    return isinstance(pid, int) and start is not None and kernel.proc_start_time(pid) == start


def open_base(base: str) -> int:
    return os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _base_marker(real: str) -> str:
    return os.path.join(runtime_dir(), "bases", real.replace("/", "_"))


def _base_mount_key(real: str) -> str | None:
    """'<boot id> <mount id of base_path>': what a verified base_path looked like."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        fd = os.open(real, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return f"{boot} {kernel.fstatx(fd).mnt_id}"
        finally:
            os.close(fd)
    except OSError:
        return None


def ensure_base(cfg: NodeConfig, log=null_log, *, thorough: bool = False) -> str:
    """Create base_path if allowed, check it is safe, and make it its own private mount.

    Reading the mount table costs ~1 ms per thousand mounts (one per live job), so once
    base_path was found (or made) a private mount, its mount id is remembered in the
    runtime dir and later calls only compare it; `thorough` always reads the table."""
    jobs = require_base(cfg)
    return ensure_base_path(jobs, 0o755 if cfg.auto_base_path or cfg.node_dir else None, log,
                            thorough=thorough,
                            parent=cfg.base_path if cfg.node_dir and not cfg.auto_base_path
                            else None)


def ensure_base_path(base: str, create_mode: int | None, log=null_log, *,
                     thorough: bool = False, parent: str | None = None) -> str:
    """ensure_base for a base_path that is created with `create_mode` when missing (None:
    it must exist; `parent`, if given, must exist). Returns the real path."""
    if not os.path.isabs(base):
        raise OperationError("ensure-base", "base_path must be absolute", path=base)
    if not os.path.isdir(base):
        if parent is not None and not os.path.isdir(parent):
            raise OperationError("ensure-base", "does not exist (create it, or set "
                                 "auto_base_path: true)", path=parent, errno=errno.ENOENT)
        if create_mode is None:
            raise OperationError("ensure-base", "does not exist (create it, or set "
                                 "auto_base_path: true)", path=base, errno=errno.ENOENT)
        old = os.umask(0o022)
        try:
            os.makedirs(os.path.dirname(base.rstrip("/")), exist_ok=True)
            os.mkdir(base, create_mode)
            log("info", f"created base_path {base} ({create_mode:04o})")
        except FileExistsError:
            pass                     # a concurrent create made it first (and says so)
        except OSError as e:
            raise OperationError.from_oserror("ensure-base", e, base) from e
        finally:
            os.umask(old)
    real = os.path.realpath(base)
    st = os.stat(real)
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise OperationError("ensure-base", "must be owned by root and not writable by group "
                             "or others (mode %04o, uid %d)" % (st.st_mode & 0o7777, st.st_uid),
                             path=base)
    marker = _base_marker(real)
    if not thorough:
        key = _base_mount_key(real)
        try:
            with open(marker) as f:
                if key is not None and f.read() == key:
                    return real
        except OSError:
            pass
    # One process at a time looks and mounts: two first jobs starting together would
    # otherwise both see no mount and stack two binds. The lock is on the directory's
    # inode, which the bind shows again, so it holds across the mount.
    try:
        lock_fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            mounts = kernel.mounts_at(real)
            top = mounts[-1] if mounts else None
            if top is None:
                # recursive: mounts already below (e.g. the node directories of several
                # slurmd's) stay visible through the new mount
                kernel.mount(real, real, None, kernel.MS_BIND | kernel.MS_REC)
                kernel.mount(None, real, None, kernel.MS_PRIVATE)
                log("info", f"made base_path {real} its own private mount")
            elif top.propagation:
                kernel.mount(None, real, None, kernel.MS_PRIVATE)
                log("info", f"made base_path mount {real} private "
                            f"(was {' '.join(top.propagation)})")
        finally:
            os.close(lock_fd)
    except OSError as e:
        raise OperationError.from_oserror("ensure-base", e, real) from e
    key = _base_mount_key(real)
    if key is not None:
        _write_runtime_note(marker, key)   # only a shortcut for the next call
    remember_base(real)
    return real


def _write_runtime_note(path: str, text: str) -> None:
    """Best effort: `text` into `path` below the runtime dir (made private if missing),
    replaced atomically. A note that cannot be written is only a lost shortcut."""
    try:
        ensure_private_dir(runtime_dir())
        ensure_private_dir(os.path.dirname(path))
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.rename(path + ".tmp", path)
    except (OSError, OperationError):
        pass


def remember_base(real: str) -> None:
    """Note that this node keeps jobs in `real`: restore finishes the jobs of every base
    it used (since boot), even after base_path changed in the config."""
    path = os.path.join(runtime_dir(), "bases", real.replace("/", "_") + ".path")
    if not os.path.exists(path):
        _write_runtime_note(path, real)


def known_bases() -> list[str]:
    """Every job directory root this node used since boot (see remember_base)."""
    out = []
    d = os.path.join(runtime_dir(), "bases")
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return out
    for name in names:
        if name.endswith(".path"):
            with suppress(OSError):
                with open(os.path.join(d, name)) as f:
                    out.append(f.read())
    return out


def indexed_job_dir(job_id: str) -> str | None:
    """The job dir the runtime index names for `job_id` (where it was created), if any."""
    try:
        target = os.readlink(index_path(job_id))
    except OSError:
        return None
    return target if os.path.isabs(target) else None


def set_index(job_id: str, job_dir: str) -> None:
    jobs = os.path.join(runtime_dir(), "jobs")
    ensure_private_dir(runtime_dir())
    ensure_private_dir(jobs)
    link = os.path.join(jobs, job_id)
    try:
        os.symlink(job_dir, link)
    except FileExistsError:      # left by a crash; this create holds the job's lock
        os.unlink(link)
        os.symlink(job_dir, link)


def prune_index() -> None:
    jobs = os.path.join(runtime_dir(), "jobs")
    try:
        names = os.listdir(jobs)
    except FileNotFoundError:
        return
    for name in names:
        link = os.path.join(jobs, name)
        if not os.path.exists(link):
            with suppress(OSError):
                os.unlink(link)
