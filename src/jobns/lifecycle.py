"""The lifecycle: restore · create · join · delete · fini (the verbs of Slurm's plugin API).

It executes plans (jobns.plan), owns the on-disk layout under base_path and the job record,
and is the only place that changes mounts. Every operation is safe to repeat after a crash:

- `create` builds the namespace step by step; a failure at any step undoes every earlier
  step (nothing stays mounted or on disk) and raises an OperationError naming the step.
- `delete` kills what is left of the job, runs the epilog, unmounts the pin, moves the job
  directory into `<base>/.jobns-trash/` (so the job id is free again at once) and removes
  it there with the safe walker (jobns.cleanup). Whatever could not be removed stays in the
  trash, is reported, and is retried by the next `delete` or `restore`.
- `restore` (node start) makes base_path usable and removes every job that is not live.

Kernel facts this module relies on (measured; see docs/architecture.md):
- base_path is made its own private mount once; per-job self-binds would grow
  quadratically with a shared `/`.
- The mount-namespace pin must be made from a namespace with a lower namespace id than
  the new one (kernel 6.18 refuses otherwise): the child re-unshares until that holds.
- setns into mount and user namespaces is done only in single-threaded processes.
"""

from __future__ import annotations

import errno
import fcntl
import marshal
import os
import pwd
import select
import sys
import time
from jobns import kernel
from jobns._lazy import lazy
from jobns.config.model import SHM_DIR, NodeConfig
from jobns.errors import OperationError, UsageError
from jobns.job import Job, validate_job_id
from jobns.log import null_log
from jobns.plan import JobPaths, Plan, Step, build_plan
from jobns.values import Frozen, suppress

# json (with re) and signal (with enum) cost more to import than a create does: the
# record is written by _to_json, child messages use marshal, and these load on demand.
json = lazy("json")
signal = lazy("signal")
SIGKILL = 9

TRASH = ".jobns-trash"
FAIL_ENV = "JOBNS_TEST_FAIL_STEP"       # failure injection, used by the test suite
RUNTIME_ENV = "JOBNS_RUNTIME_DIR"
DEFAULT_RUNTIME_DIR = "/run/jobns"
RECORD_VERSION = 1

STATE_READY = "ready"


# ---------------------------------------------------------------------------------------
# small helpers

def runtime_dir() -> str:
    return os.environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME_DIR


def _ensure_private_dir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise OperationError("runtime-dir", "must be owned by root and not writable by others",
                             path=path)


def index_path(job_id: str) -> str:
    return os.path.join(runtime_dir(), "jobs", job_id)


def _fail_point(step: str) -> None:
    if os.environ.get(FAIL_ENV) == step:
        raise OperationError(step, f"injected failure ({FAIL_ENV})", errno=errno.ECANCELED)


def _base(cfg: NodeConfig) -> str:
    if cfg.base_path is None:
        raise UsageError(f"jobns is disabled on node {cfg.node_name} by {cfg.source} "
                         f"({cfg.origin}): no base_path")
    return cfg.base_path


class job_lock:
    """Serialise create/delete/restore of one job across processes (flock on a lock file
    in the runtime dir; the file is re-checked after locking so that unlinking it is safe).
    With `remove`, the lock file is unlinked before it is released (after a delete), so
    that lock files do not pile up with every job id a node ever ran."""

    def __init__(self, job_id: str, *, remove: bool = False):
        self.path = os.path.join(runtime_dir(), "lock", job_id)
        self.remove = remove
        self.fd = -1

    def __enter__(self):
        _ensure_private_dir(runtime_dir())
        _ensure_private_dir(os.path.dirname(self.path))
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.remove and exc_type is None:
                with suppress(OSError):
                    os.unlink(self.path)
        finally:
            os.close(self.fd)
        return False


def _lock_held(job_id: str) -> bool:
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


def _read_record(paths: JobPaths) -> dict | None:
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


def _to_json(obj, level: int = 0) -> str:
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
        return "[" + ",".join(inner + _to_json(v, level + 1) for v in obj) + pad + "]"
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        return "{" + ",".join(f"{inner}{_json_str(str(k))}: {_to_json(obj[k], level + 1)}"
                              for k in sorted(obj)) + pad + "}"
    raise TypeError(f"not serialisable in a job record: {type(obj).__name__}")


def _write_record(paths: JobPaths, record: dict) -> None:
    tmp = paths.record + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(_to_json(record) + "\n")
    os.rename(tmp, paths.record)


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


def _ns_inode(pid: int, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def _init_pid(paths: JobPaths, pin_ino: int | None) -> int | None:
    """The host pid of the job's PID 1, verified to live in the job's mount namespace."""
    try:
        with open(paths.pid1, "rb") as f:
            pid = int(f.read(32).strip())
    except (OSError, ValueError):
        return None
    if pin_ino is not None and _ns_inode(pid, "mnt") != pin_ino:
        return None
    return pid


def _owner_alive(record: dict | None) -> bool:
    owner = (record or {}).get("owner")
    if not isinstance(owner, dict):
        return False
    pid, start = owner.get("pid"), owner.get("start")
    return isinstance(pid, int) and start is not None and kernel.proc_start_time(pid) == start


def _open_base(base: str) -> int:
    return os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


# ---------------------------------------------------------------------------------------
# base path

def _base_marker(real: str) -> str:
    return os.path.join(runtime_dir(), "bases", real.replace("/", "_"))


def _base_mount_key(real: str) -> str | None:
    """'<boot id> <mount id of base_path>': what a verified base_path looked like."""
    from jobns import _fsops
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        fd = os.open(real, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return f"{boot} {_fsops.fstatx(fd).mnt_id}"
        finally:
            os.close(fd)
    except OSError:
        return None


def ensure_base(cfg: NodeConfig, log=null_log, *, thorough: bool = False) -> str:
    """Create base_path if allowed, check it is safe, and make it its own private mount.

    Reading the mount table costs ~1 ms per thousand mounts (one per live job), so once
    base_path was found (or made) a private mount, its mount id is remembered in the
    runtime dir and later calls only compare it; `thorough` always reads the table."""
    base = _base(cfg)
    if not os.path.isabs(base):
        raise OperationError("ensure-base", "base_path must be absolute", path=base)
    if not os.path.isdir(base):
        if not cfg.auto_base_path:
            raise OperationError("ensure-base", "does not exist (create it, or set "
                                 "auto_base_path: true)", path=base, errno=errno.ENOENT)
        old = os.umask(0o022)
        try:
            os.makedirs(base, mode=0o755, exist_ok=True)
        except OSError as e:
            raise OperationError.from_oserror("ensure-base", e, base) from None
        finally:
            os.umask(old)
        log("info", f"created base_path {base} (0755)")
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
    mounts = kernel.mounts_at(real)
    top = mounts[-1] if mounts else None
    try:
        if top is None:
            kernel.mount(real, real, None, kernel.MS_BIND)
            kernel.mount(None, real, None, kernel.MS_PRIVATE)
            log("info", f"made base_path {real} its own private mount")
        elif top.propagation:
            kernel.mount(None, real, None, kernel.MS_PRIVATE)
            log("info", f"made base_path mount {real} private (was {' '.join(top.propagation)})")
    except OSError as e:
        raise OperationError.from_oserror("ensure-base", e, real) from None
    key = _base_mount_key(real)
    if key is not None:
        try:
            _ensure_private_dir(runtime_dir())
            _ensure_private_dir(os.path.dirname(marker))
            with open(marker + ".tmp", "w") as f:
                f.write(key)
            os.rename(marker + ".tmp", marker)
        except (OSError, OperationError):
            pass   # only a shortcut for the next call
    return real


# ---------------------------------------------------------------------------------------
# create

class _Child:
    """The forked namespace child and the two pipes to talk to it."""

    def __init__(self, pid: int, to_child: int, from_child: int):
        self.pid = pid
        self.to_child = to_child
        self.from_child = from_child
        self.buf = b""

    def send(self, data: bytes) -> None:
        os.write(self.to_child, data)

    def recv(self, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while len(self.buf) < 4 or len(self.buf) < 4 + int.from_bytes(self.buf[:4], "little"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise OperationError("namespace", "the namespace process did not answer")
            ready, _, _ = select.select([self.from_child], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.from_child, 65536)
            if not chunk:
                raise OperationError("namespace", "the namespace process exited unexpectedly")
            self.buf += chunk
        size = 4 + int.from_bytes(self.buf[:4], "little")
        msg, self.buf = self.buf[4:size], self.buf[size:]
        return marshal.loads(msg)

    def close(self) -> None:
        for fd in (self.to_child, self.from_child):
            with suppress(OSError):
                os.close(fd)


def _child_error(msg: dict) -> OperationError:
    return OperationError(msg.get("step", "namespace"), msg.get("message", "failed"),
                          path=msg.get("path"), errno=msg.get("errno"))


def create(cfg: NodeConfig, job: Job, *, log=null_log, owner_pid: int | None = None) -> dict:
    """Build the job's namespace. Returns the job record. Raises OperationError."""
    validate_job_id(job.job_id)
    plan = build_plan(cfg, job)
    with job_lock(job.job_id):
        return _create_locked(plan, log, owner_pid)


def _existing_job(plan: Plan, log) -> None:
    """Called when <base>/<J> exists: refuse a live job, clean a stale one."""
    paths = plan.paths
    record = _read_record(paths)
    if pin_inode(paths.pin) is not None:
        who = f" (user {record.get('user')}, created {record.get('created')})" if record else ""
        raise OperationError("mkdir-job", f"job {plan.job.job_id} already exists{who}; "
                             "delete it first", path=paths.job_dir, errno=errno.EEXIST)
    log("warning", f"job {plan.job.job_id}: stale job directory without a namespace "
        f"(state {record.get('state') if record else 'unknown'}); cleaning it before re-creating")
    result = _delete_locked(plan.cfg, plan.job.job_id, log)
    if not result.ok:
        raise OperationError("mkdir-job", "could not clean the stale job directory: "
                             + result.summary(), path=paths.job_dir, errno=errno.EEXIST)


def _create_locked(plan: Plan, log, owner_pid: int | None) -> dict:
    cfg, job, paths = plan.cfg, plan.job, plan.paths
    t0 = time.monotonic()
    record = {
        "version": RECORD_VERSION, "job_id": job.job_id, "uid": job.uid, "gid": job.gid,
        "user": job.user, "node": cfg.node_name, "created": time.strftime(
            "%Y-%m-%dT%H:%M:%S%z"), "created_epoch": time.time(), "state": STATE_READY,
        "base_path": cfg.base_path, "dirs": list(plan.job_dirs()),
        "backing": plan.backing_dirs(),
        "clone_ns_flags": list(cfg.clone_ns_flags), "shared": cfg.shared,
        "config": cfg.source, "env": dict(job.env), "init_pid": None,
    }
    if owner_pid is not None:
        record["owner"] = {"pid": owner_pid, "start": kernel.proc_start_time(owner_pid)}
    owns_dir = False
    child: _Child | None = None
    init_pid: int | None = None
    step: Step | None = None
    try:
        for step in plan.host_before():
            _fail_point(step.name)
            if step.kind == "ensure_base":
                ensure_base(cfg, log)
            elif step.kind == "mkdir":
                if step.name == "mkdir-job":
                    try:
                        os.mkdir(step.path, 0o700)
                    except FileExistsError:
                        _existing_job(plan, log)
                        os.mkdir(step.path, 0o700)
                    owns_dir = True
                    os.chmod(step.path, 0o700)
                else:
                    os.mkdir(step.path, step.args["mode"])
                    os.chmod(step.path, step.args["mode"])
                    if step.args.get("owner"):
                        os.chown(step.path, *step.args["owner"], follow_symlinks=False)
            elif step.kind == "pin_file":
                os.close(os.open(step.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                 0o400))
            elif step.kind == "hook":
                _run_hook_step(step, plan, log)
            elif step.kind == "unshare":
                child = _spawn_namespace_child(plan)
                msg = child.recv()
                if msg.get("event") != "unshared":
                    raise _child_error(msg)
        for step in plan.host_between():
            _fail_point(step.name)
            if step.kind == "usermap":
                for name in ("uid_map", "gid_map"):
                    with open(f"/proc/{child.pid}/{name}", "w") as f:
                        f.write("0 0 4294967295\n")
            elif step.kind == "hook":
                _run_hook_step(step, plan, log, ns_pid=child.pid)
                if step.args.get("hook") == "user_ns_script":
                    _check_user_maps(child.pid, step)
            elif step.kind == "pin":
                try:
                    kernel.mount(f"/proc/{child.pid}/ns/mnt", paths.pin, None, kernel.MS_BIND)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    # base_path lost its private propagation since it was checked (a pin
                    # on a shared mount is refused): check it for real, and retry once
                    ensure_base(cfg, log, thorough=True)
                    kernel.mount(f"/proc/{child.pid}/ns/mnt", paths.pin, None, kernel.MS_BIND)
        step = None
        child.send(b"G")
        msg = child.recv()
        if msg.get("event") != "ready":
            raise _child_error(msg)
        init_pid = msg.get("init_pid")
        if init_pid:
            _warn_init_oom(init_pid, job.job_id, log)
        _reap(child.pid)
        child.close()
        child = None
        for step in plan.host_after():
            _fail_point(step.name)
            if step.kind == "ready":
                if init_pid:
                    with open(paths.pid1, "w") as f:
                        f.write(f"{init_pid}\n")
                record.update(state=STATE_READY, init_pid=init_pid,
                              init_start=kernel.proc_start_time(init_pid) if init_pid else None,
                              pin_inode=pin_inode(paths.pin))
                _write_record(paths, record)
            elif step.kind == "index":
                _set_index(job.job_id, paths.job_dir)
            elif step.kind == "hook":
                _run_hook_step(step, plan, log)
    except BaseException as exc:
        failed = step.name if step is not None else "namespace"
        _undo_create(plan, owns_dir, child, init_pid, log)
        if isinstance(exc, OperationError):
            err = exc
        elif isinstance(exc, OSError):
            err = OperationError.from_oserror(failed, exc, getattr(step, "path", None))
        elif isinstance(exc, KeyboardInterrupt):
            raise
        else:
            err = OperationError(failed, f"{type(exc).__name__}: {exc}")
        log("error", f"job {job.job_id}: create failed at {err}; everything undone")
        raise err from None
    ms = (time.monotonic() - t0) * 1000
    log("info", f"job {job.job_id}: created namespace for {job.user} (uid {job.uid}) "
        f"at {paths.job_dir} [{','.join(cfg.dirs)}; {'|'.join(cfg.clone_ns_flags)}] "
        f"in {ms:.1f} ms")
    return record


def _run_hook_step(step: Step, plan: Plan, log, ns_pid: int | None = None) -> None:
    from jobns import hooks
    result = hooks.run_configured(step.args["hook"], plan.cfg, plan.job,
                                  job_dir=plan.paths.job_dir,
                                  slurm_conf=plan.job.env.get("SLURM_CONF"),
                                  ns_pid=ns_pid, log=log)
    if result is not None and not result.ok:
        why = ("timed out" if result.timed_out else
               f"killed by signal {result.signal}" if result.signal else
               f"exit status {result.status}")
        tail = result.output.strip().splitlines()[-1:] if result.output else []
        raise OperationError(step.name, f"{why}" + (f": {tail[0]}" if tail else ""),
                             path=step.path)


def _check_user_maps(pid: int, step: Step) -> None:
    """A user_ns_script that exits 0 without writing the maps would leave a job whose
    every id is the overflow id (and the job user could not even be switched to)."""
    empty = []
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{name}") as f:
            if not f.read().strip():
                empty.append(name)
    if empty:
        raise OperationError(step.name, "the script exited 0 but did not write "
                             + " and ".join(f"/proc/$SLURM_NS_PID/{n}" for n in empty),
                             path=step.path)


def _reap(pid: int) -> int | None:
    try:
        _, status = os.waitpid(pid, 0)
        return status
    except ChildProcessError:
        return None


def _undo_create(plan: Plan, owns_dir: bool, child: _Child | None, init_pid: int | None,
                 log) -> None:
    if child is not None:
        with suppress(OSError):
            os.kill(child.pid, SIGKILL)
        _reap(child.pid)
        child.close()
    if init_pid:
        _kill_and_wait(init_pid, None)
    with suppress(OSError):
        os.unlink(index_path(plan.job.job_id))
    if not owns_dir:
        return
    result = _delete_locked(plan.cfg, plan.job.job_id, log, run_epilog=False)
    if not result.ok:
        log("error", f"job {plan.job.job_id}: undo after a failed create left "
            f"{result.summary()}")


def _set_index(job_id: str, job_dir: str) -> None:
    jobs = os.path.join(runtime_dir(), "jobs")
    _ensure_private_dir(runtime_dir())
    _ensure_private_dir(jobs)
    link = os.path.join(jobs, job_id)
    try:
        os.symlink(job_dir, link)
    except FileExistsError:      # left by a crash; this create holds the job's lock
        os.unlink(link)
        os.symlink(job_dir, link)


# ------------------------------ the namespace child ------------------------------------

def _spawn_namespace_child(plan: Plan) -> _Child:
    kernel.require_single_threaded("creating a namespace")
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    with open("/proc/self/ns/mnt", "rb") as f:
        parent_ns_id = kernel.mntns_id(f.fileno())
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(to_child_w)
            os.close(from_child_r)
            code = _namespace_child(plan, to_child_r, from_child_w, parent_ns_id)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(to_child_r)
    os.close(from_child_w)
    return _Child(pid=pid, to_child=to_child_w, from_child=from_child_r)


def _say(fd: int, **msg) -> None:
    data = marshal.dumps(msg)
    os.write(fd, len(data).to_bytes(4, "little") + data)


def _namespace_child(plan: Plan, rfd: int, wfd: int, parent_ns_id: int | None) -> int:
    """Runs in the forked child: unshare, wait for the pin, build the mounts, report."""
    step_name = "unshare"
    path = None
    try:
        flags = 0
        for name in plan.clone_flags:
            flags |= kernel.FLAG_BY_NAME[name]
        if plan.cfg.new_pid:
            _load_reaper()
        _fail_point("unshare")
        kernel.unshare(flags)
        _order_after(parent_ns_id)
        _say(wfd, event="unshared")
        if os.read(rfd, 1) != b"G":
            return 1
        init_pid = None
        for step in plan.in_namespace():
            step_name, path = step.name, step.path
            _fail_point(step.name)
            init_pid = _ns_step(step, plan) or init_pid
        _say(wfd, event="ready", init_pid=init_pid)
        return 0
    except OperationError as e:
        _say(wfd, event="error", step=e.step, path=e.path, errno=e.errno, message=e.message)
    except OSError as e:
        _say(wfd, event="error", step=step_name, path=e.filename or path, errno=e.errno,
             message=e.strerror or str(e))
    except Exception as e:
        _say(wfd, event="error", step=step_name, path=path, errno=None,
             message=f"{type(e).__name__}: {e}")
    return 1


def _order_after(parent_ns_id: int | None) -> None:
    """Kernel >= 6.18 refuses to pin a mount namespace whose id is below the pinning
    namespace's id; ids come from per-CPU batches. Re-unshare on another CPU until ours
    is above the parent's (only needed when jobns itself runs in a nested namespace)."""
    if parent_ns_id is None:
        return
    cpus = sorted(os.sched_getaffinity(0))
    original = set(cpus)
    try:
        for attempt in range(64):
            with open("/proc/self/ns/mnt", "rb") as f:
                mine = kernel.mntns_id(f.fileno())
            if mine is None or mine > parent_ns_id:
                return
            os.sched_setaffinity(0, {cpus[attempt % len(cpus)]})
            kernel.unshare(kernel.CLONE_NEWNS)
        raise OperationError("unshare", "could not obtain a mount namespace id above the "
                             "caller's; run jobns in the initial mount namespace")
    finally:
        os.sched_setaffinity(0, original)


def _peel_mounts(path: str) -> None:
    """Peel off every mount at `path` this namespace inherited (the host may stack
    several); propagation is already private or slave, so nothing leaves the job.
    Locked mounts (user namespace) refuse with EINVAL: the new tmpfs then stacks."""
    for _ in range(16):
        try:
            kernel.umount2(path, kernel.MNT_DETACH)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EPERM):
                raise
            break


def _ns_step(step: Step, plan: Plan) -> int | None:
    cfg = plan.cfg
    if step.kind == "propagation":
        if cfg.shared:
            kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_SHARED)
            kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_SLAVE)
        else:
            kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
    elif step.kind == "bind":
        src = step.args["source"]
        fd = os.open(src, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            kernel.mount(f"/proc/self/fd/{fd}", step.path, None, kernel.MS_BIND)
        finally:
            os.close(fd)
        names = step.args.get("flags")
        if names:
            # MS_BIND ignores flags: apply them with a bind remount, keeping the source
            # mount's ro/nosuid/nodev/noexec (clearing a locked one fails with EPERM).
            flags = kernel.MS_REMOUNT | kernel.MS_BIND | \
                (os.statvfs(step.path).f_flag & kernel.ST_LOCKABLE)
            for name in names:
                flags |= kernel.MOUNT_FLAG_BY_NAME[name]
            try:
                kernel.mount(None, step.path, None, flags)
            except PermissionError:
                atime = [n for n in names if n in ("noatime", "nodiratime", "relatime")]
                if not (atime and cfg.new_user):
                    raise
                raise OperationError(step.name, f"{','.join(atime)} cannot be applied: in a "
                                     "user namespace the kernel locks a bind mount's atime "
                                     "flags to those of its source", path=step.path,
                                     errno=errno.EPERM) from None
    elif step.kind == "shm":
        _peel_mounts(SHM_DIR)
        kernel.mount("tmpfs", SHM_DIR, "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV, "mode=1777")
    elif step.kind == "tmpfs":
        if step.args.get("peel"):
            _peel_mounts(step.path)
        flags = 0
        for name in step.args["flags"]:
            flags |= kernel.MOUNT_FLAG_BY_NAME[name]
        kernel.mount("tmpfs", step.path, "tmpfs", flags, step.args["data"])
    elif step.kind == "hide":
        try:
            kernel.mount("jobns-hidden", step.path, "tmpfs",
                         kernel.MS_RDONLY | kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC,
                         "mode=0755,size=4k,nr_inodes=1")
        except FileNotFoundError:
            pass   # base_path is not reachable inside the namespace: hidden already
    elif step.kind == "init":
        return _start_init(plan)
    else:
        raise OperationError(step.name, f"unknown step kind {step.kind}")
    return None


def _warn_init_oom(pid: int, job_id: str, log) -> None:
    """The reaper asks for oom_score_adj -1000; going below the inherited value needs
    CAP_SYS_RESOURCE, which some nodes withhold from root. Say so instead of failing."""
    try:
        with open(f"/proc/{pid}/oom_score_adj") as f:
            adj = int(f.read())
    except (OSError, ValueError):
        return
    if adj != -1000:
        log("info", f"job {job_id}: PID 1 keeps oom_score_adj {adj}, not -1000 "
            "(lowering it needs CAP_SYS_RESOURCE, which this process lacks)")


_REAPER_CODE: str | None = None


def _load_reaper() -> None:
    """Read the reaper's source while the host's view is still in place: jobns itself (a
    venv, a checkout) may live under one of the private dirs or base_path, which the job's
    namespace covers. The reaper runs as `python -I -S -c <source>` on the base
    interpreter, so it needs nothing but the standard interpreter inside the job."""
    global _REAPER_CODE
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_reaper.py")) as f:
        _REAPER_CODE = f.read()


def _start_init(plan: Plan) -> int:
    """Fork PID 1 of the new PID namespace: it mounts a fresh /proc and execs the reaper."""
    ready_r, ready_w = os.pipe()
    python = getattr(sys, "_base_executable", None) or sys.executable
    pid = os.fork()
    if pid == 0:  # pragma: no cover - PID 1 of the job
        try:
            os.close(ready_r)
            kernel.mount("proc", "/proc", "proc",
                         kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC)
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            # stderr goes to the ready pipe until the reaper is up: if the interpreter
            # cannot start, its own message becomes create's error (the reaper then
            # points stderr at /dev/null)
            os.dup2(ready_w, 2)
            os.closerange(3, ready_w)
            os.closerange(ready_w + 1, 65536)
            os.setsid()
            os.chdir("/")   # never hold the creator's cwd (a busy mount in the job for ever)
            os.set_inheritable(ready_w, True)
            os.execv(python, [python, "-I", "-S", "-c", _REAPER_CODE, plan.job.job_id,
                              str(ready_w)])
        except BaseException as e:
            with suppress(Exception):
                os.write(ready_w, f"E{type(e).__name__}: {e}".encode())
        os._exit(127)
    os.close(ready_w)
    answer = b""
    while len(answer) < 65536:
        chunk = os.read(ready_r, 4096)
        if not chunk:
            break
        answer += chunk
        if answer == b"R":
            break
    os.close(ready_r)
    if answer != b"R":
        with suppress(OSError):
            os.kill(pid, SIGKILL)
        text = answer[1:] if answer[:1] == b"E" else answer
        lines = text.decode(errors="replace").strip().splitlines()
        raise OperationError("init", "PID 1 did not start: "
                             + (lines[-1] if lines else f"{python} exited"), path="/proc")
    return pid


# ---------------------------------------------------------------------------------------
# delete

class DeleteResult:
    """What a delete did: counts, and what it could not remove.
    `failures` holds (path, operation, errno name, message) tuples."""

    def __init__(self, job_id: str, existed: bool):
        self.job_id = job_id
        self.existed = existed
        self.ok = True
        self.files = 0
        self.dirs = 0
        self.failures: list[tuple[str, str, str, str]] = []
        self.skipped_mounts: list[str] = []
        self.killed = 0
        self.seconds = 0.0

    def __repr__(self):
        return (f"DeleteResult(job_id={self.job_id!r}, existed={self.existed}, ok={self.ok}, "
                f"files={self.files}, dirs={self.dirs}, failures={self.failures!r}, "
                f"skipped_mounts={self.skipped_mounts!r}, killed={self.killed})")

    def summary(self) -> str:
        parts = []
        if self.failures:
            parts.append(f"{len(self.failures)} entries not removed: " + "; ".join(
                f"{p} ({op}: {e})" for p, op, e, _ in self.failures[:5]))
        if self.skipped_mounts:
            parts.append("mounts left in place: " + ", ".join(self.skipped_mounts[:5]))
        return "; ".join(parts) or "ok"


def delete(cfg: NodeConfig, job_id: str, *, log=null_log) -> DeleteResult:
    """Tear the job's namespace down and remove <base>/<J> completely."""
    validate_job_id(job_id)
    _base(cfg)
    with job_lock(job_id, remove=True):
        return _delete_locked(cfg, job_id, log)


def _kill_and_wait(pid: int, pin_ino: int | None, timeout: float = 10.0) -> bool:
    """SIGKILL a process through a pidfd (immune to pid reuse once opened) and wait until
    it has exited. With pin_ino, only a process in that mount namespace is killed."""
    try:
        pidfd = kernel.pidfd_open(pid)
    except OSError:
        return False
    try:
        if pin_ino is not None and _ns_inode(pid, "mnt") != pin_ino:
            return False
        try:
            kernel.pidfd_send_signal(pidfd, SIGKILL)
        except ProcessLookupError:
            return False
        select.select([pidfd], [], [], timeout)
        return True
    finally:
        os.close(pidfd)


def _kill_namespace_members(pin_ino: int) -> int:
    """SIGKILL every process still in the job's mount namespace (jobs without a PID
    namespace leave no PID 1 whose death would take them along)."""
    killed = 0
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        if _ns_inode(int(name), "mnt") == pin_ino and _kill_and_wait(int(name), pin_ino, 2.0):
            killed += 1
    return killed


def _umount_pin(pin: str, log) -> int:
    """Lazily unmount the job's mount-namespace pin; 1 if it was mounted, else 0."""
    try:
        kernel.umount2(pin, kernel.MNT_DETACH | kernel.UMOUNT_NOFOLLOW)
        return 1
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            log("warning", f"umount {pin}: {e.strerror} [{errno.errorcode.get(e.errno)}]")
        return 0


def _detach_mounts_below(job_dir: str, log) -> list[str]:
    """Lazily unmount every mount at or below job_dir in this namespace, deepest first.
    Unmounting never deletes data; the walker then never meets a foreign filesystem."""
    found = [m.mount_point for m in kernel.mounts_below(job_dir)]
    done = []
    for mp in sorted(set(found), key=lambda p: (-p.count("/"), p)):
        try:
            kernel.umount2(mp, kernel.MNT_DETACH | kernel.UMOUNT_NOFOLLOW)
            done.append(mp)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):
                log("warning", f"umount {mp}: {e.strerror} [{errno.errorcode.get(e.errno)}]")
    return done


def _delete_locked(cfg: NodeConfig, job_id: str, log, *, run_epilog: bool = True) -> DeleteResult:
    t0 = time.monotonic()
    base = _base(cfg)
    paths = JobPaths.of(base, job_id)
    result = DeleteResult(job_id=job_id, existed=os.path.lexists(paths.job_dir))
    with suppress(OSError):
        os.unlink(index_path(job_id))
    if not result.existed:
        result.seconds = time.monotonic() - t0
        return result
    ino = pin_inode(paths.pin)
    if ino is not None:
        init = _init_pid(paths, ino)
        if init and _kill_and_wait(init, ino):
            result.killed += 1
        result.killed += _kill_namespace_members(ino)
    if run_epilog and ino is not None and cfg.clone_ns_epilog:
        _run_epilog(cfg, _read_record(paths) or {}, job_id, paths, log)
    # The pin is the only mount a job normally has on the host. Anything else mounted
    # below the job dir (an admin's bind, a script's mount) is found by the walker, which
    # never enters it; then, and only then, the mount table is read to detach it.
    unmounted = _umount_pin(paths.pin, log)
    base_fd = _open_base(base)
    try:
        trash_name = f"{job_id}.{time.time_ns()}"
        trash_fd = _open_trash(base_fd)
        try:
            os.rename(job_id, trash_name, src_dir_fd=base_fd, dst_dir_fd=trash_fd)
            first = DeleteResult(job_id=job_id, existed=True)
            _remove_into(first, trash_fd, trash_name, paths.job_dir)
            if first.skipped_mounts:
                moved = os.path.join(os.path.realpath(base), TRASH, trash_name)
                unmounted += len(_detach_mounts_below(moved, log))
                _remove_into(result, trash_fd, trash_name, paths.job_dir)
                result.files += first.files
                result.dirs += first.dirs
            else:
                result.files, result.dirs = first.files, first.dirs
                result.failures, result.ok = first.failures, first.ok
        finally:
            os.close(trash_fd)
        if result.ok:
            _drop_empty_trash(base_fd)
    except OSError as e:
        result.ok = False
        result.failures.append((paths.job_dir, "rename", errno.errorcode.get(e.errno, "?"),
                                e.strerror))
    finally:
        os.close(base_fd)
    result.seconds = time.monotonic() - t0
    if result.ok:
        log("info", f"job {job_id}: deleted {paths.job_dir} ({result.files} files, "
            f"{result.dirs} dirs, {unmounted} mounts, {result.killed} processes killed) "
            f"in {result.seconds * 1000:.1f} ms")
    else:
        log("error", f"job {job_id}: delete incomplete: {result.summary()} "
            f"(left in {base}/{TRASH}; retried by the next delete or restore)")
    return result


def _drop_empty_trash(base_fd: int) -> None:
    with suppress(OSError):   # ENOTEMPTY: other deletes are under way
        os.rmdir(TRASH, dir_fd=base_fd)


def _open_trash(base_fd: int) -> int:
    try:
        os.mkdir(TRASH, 0o700, dir_fd=base_fd)
    except FileExistsError:
        pass
    return os.open(TRASH, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                   dir_fd=base_fd)


def _remove_into(result: DeleteResult, parent_fd: int, name: str, shown: str) -> None:
    from jobns.cleanup import remove_tree
    report = remove_tree(parent_fd, name)
    result.files += report.files
    result.dirs += report.dirs
    for f in report.failures:
        result.failures.append((os.path.join(shown, f.path), f.op,
                                errno.errorcode.get(f.errno, str(f.errno)), f.message))
    result.skipped_mounts += [os.path.join(shown, p) for p in report.skipped_mounts]
    if not report.ok:
        result.ok = False


def _run_epilog(cfg: NodeConfig, record: dict, job_id: str, paths: JobPaths, log) -> None:
    from jobns import hooks
    job = Job(job_id=job_id, uid=int(record.get("uid", -1)), gid=int(record.get("gid", -1)),
              user=str(record.get("user", "")), env=dict(record.get("env") or {}))
    try:
        result = hooks.run_configured(hooks.HOOK_EPILOG, cfg, job, job_dir=paths.job_dir,
                                      slurm_conf=job.env.get("SLURM_CONF"), log=log)
    except OperationError as e:     # e.g. the script is missing: logged, teardown goes on
        log("warning", f"job {job_id}: clone_ns_epilog not run: {e}; continuing the teardown")
        return
    if result is not None and not result.ok:
        log("warning", f"job {job_id}: clone_ns_epilog {cfg.clone_ns_epilog} failed "
            f"(status {result.status}, signal {result.signal}, timed out {result.timed_out}); "
            "continuing the teardown")


def purge_trash(cfg: NodeConfig, log=null_log) -> DeleteResult:
    """Remove whatever earlier deletes left in <base>/.jobns-trash."""
    base = _base(cfg)
    result = DeleteResult(job_id=TRASH, existed=True)
    base_fd = _open_base(base)
    try:
        try:
            trash_fd = os.open(TRASH, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                               dir_fd=base_fd)
        except FileNotFoundError:
            result.existed = False
            return result
        try:
            for name in os.listdir(trash_fd):
                _remove_into(result, trash_fd, name, os.path.join(base, TRASH, name))
        finally:
            os.close(trash_fd)
        if result.ok:
            _drop_empty_trash(base_fd)
    finally:
        os.close(base_fd)
    if result.files or result.dirs:
        log("info", f"trash: removed {result.files} files, {result.dirs} dirs")
    return result


# ---------------------------------------------------------------------------------------
# restore, fini, list

class RestoreResult:
    def __init__(self, base: str):
        self.base = base
        self.kept: list[str] = []
        self.removed: list[str] = []
        self.failed: list[str] = []

    @property
    def ok(self) -> bool:
        return not self.failed


def restore(cfg: NodeConfig, live: set[str] | frozenset[str] = frozenset(), *,
            log=null_log) -> RestoreResult:
    """Node start: make base_path usable and remove every job that is not live.

    A job is live if its id is in `live`, or if it was created by a standalone
    `jobns run` whose process is still running."""
    base = ensure_base(cfg, log, thorough=True)
    result = RestoreResult(base=base)
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        name = entry.name
        if name.startswith("."):
            continue
        try:
            validate_job_id(name)
        except UsageError:
            log("debug", f"restore: ignoring {entry.path}: not a job id")
            continue
        if name in live:
            result.kept.append(name)
            continue
        with job_lock(name):
            record = _read_record(JobPaths.of(base, name))
            if _owner_alive(record):
                result.kept.append(name)
                continue
            outcome = _delete_locked(cfg, name, log)
        (result.removed if outcome.ok else result.failed).append(name)
    trash = purge_trash(cfg, log)
    if not trash.ok:
        result.failed.append(TRASH)
    _prune_index()
    log("info", f"restore: base_path {base}: kept {len(result.kept)} live jobs, removed "
        f"{len(result.removed)}, failed {len(result.failed)}")
    return result


def _prune_index() -> None:
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


def list_jobs(cfg: NodeConfig) -> list[dict]:
    """The job namespaces under base_path, with their record and observed state."""
    base = _base(cfg)
    out = []
    try:
        entries = sorted(os.scandir(base), key=lambda e: (len(e.name), e.name))
    except FileNotFoundError:
        return out
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        paths = JobPaths.of(base, entry.name)
        record = _read_record(paths) or {}
        ino = pin_inode(paths.pin)
        init = _init_pid(paths, ino) if ino else None
        if ino is None:
            # no namespace: being created or deleted right now (its lock is held), or lost
            state = "busy" if _lock_held(entry.name) else "lost"
        elif record.get("init_pid") and not init:
            state = "broken"
        else:
            state = record.get("state", "unknown")
        out.append({
            "job_id": entry.name, "user": record.get("user"), "uid": record.get("uid"),
            "created": record.get("created"), "dirs": record.get("dirs"),
            "clone_ns_flags": record.get("clone_ns_flags"), "state": state,
            "init_pid": init, "path": paths.job_dir, "backing": record.get("backing") or {},
        })
    return out


# ---------------------------------------------------------------------------------------
# join

class JobNamespaces:
    """Open fds of a job's namespaces, in join order (PID, USER, MNT)."""

    def __init__(self, job_id: str, record: dict, mnt: int):
        self.job_id = job_id
        self.record = record
        self.mnt = mnt
        self.user: int | None = None
        self.pid: int | None = None

    def close(self) -> None:
        for fd in (self.pid, self.user, self.mnt):
            if fd is not None:
                with suppress(OSError):
                    os.close(fd)


def open_job(cfg: NodeConfig, job_id: str) -> JobNamespaces:
    validate_job_id(job_id)
    paths = JobPaths.of(_base(cfg), job_id)
    if not os.path.isdir(paths.job_dir):
        raise OperationError("join", f"no such job {job_id} on node {cfg.node_name}",
                             path=paths.job_dir, errno=errno.ENOENT)
    record = _read_record(paths) or {}
    try:
        mnt = os.open(paths.pin, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise OperationError.from_oserror("join", e, paths.pin) from None
    handle = JobNamespaces(job_id=job_id, record=record, mnt=mnt)
    try:
        try:
            if kernel.ns_type(mnt) != kernel.CLONE_NEWNS:
                raise OSError(errno.EINVAL, "not a mount namespace")
        except OSError:
            raise OperationError("join", f"job {job_id} has lost its namespace (the pin is not "
                                 "mounted); delete and re-create it", path=paths.pin,
                                 errno=errno.ENOENT) from None
        flags = record.get("clone_ns_flags") or []
        if "CLONE_NEWUSER" in flags:
            handle.user = kernel.ns_get_userns(mnt)
            if os.fstat(handle.user).st_ino == os.stat("/proc/self/ns/user").st_ino:
                os.close(handle.user)
                handle.user = None
        if "CLONE_NEWPID" in flags:
            init = _init_pid(paths, os.fstat(mnt).st_ino)
            if init is None:
                raise OperationError("join", f"PID 1 of job {job_id} is gone", path=paths.pid1,
                                     errno=errno.ESRCH)
            handle.pid = os.open(f"/proc/{init}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        handle.close()
        raise
    return handle


def join(handle: JobNamespaces) -> None:
    """setns into the job's namespaces in Slurm's order: PID, USER, MNT. The PID namespace
    applies to children forked afterwards. Single-threaded callers only."""
    kernel.require_single_threaded("joining a namespace")
    try:
        if handle.pid is not None:
            kernel.setns(handle.pid, kernel.CLONE_NEWPID)
        if handle.user is not None:
            kernel.setns(handle.user, kernel.CLONE_NEWUSER)
        kernel.setns(handle.mnt, kernel.CLONE_NEWNS)
    except OSError as e:
        raise OperationError.from_oserror("join", e, f"job {handle.job_id}") from None
    finally:
        handle.close()


class Identity(Frozen):
    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str
    shell: str


def resolve_identity(user: str | None = None, uid: int | None = None,
                     gid: int | None = None) -> Identity:
    """Resolve a user name or uid to the ids a job runs with (supplementary groups from
    the group database). A uid without a passwd entry runs with just its gid."""
    try:
        if user is not None:
            if user.isdigit():
                pw = pwd.getpwuid(int(user))
            else:
                pw = pwd.getpwnam(user)
        elif uid is not None:
            pw = pwd.getpwuid(uid)
        else:
            raise UsageError("a user or uid is needed")
    except KeyError:
        if user is not None and not user.isdigit():
            raise UsageError(f"unknown user {user!r}") from None
        num = int(user) if user is not None else uid
        g = gid if gid is not None else num
        return Identity(uid=num, gid=g, groups=(g,), name=str(num), home="/", shell="/bin/sh")
    g = gid if gid is not None else pw.pw_gid
    groups = tuple(os.getgrouplist(pw.pw_name, g))
    return Identity(uid=pw.pw_uid, gid=g, groups=groups, name=pw.pw_name, home=pw.pw_dir,
                    shell=pw.pw_shell or "/bin/sh")


def become(ident: Identity, cwd: str | None, env: dict[str, str]) -> None:
    """Switch to the job user (groups, gid, uid) and a sensible cwd. Root stays root."""
    if os.getuid() != ident.uid or os.getgid() != ident.gid:
        os.setgroups(list(ident.groups))
        os.setgid(ident.gid)
        os.setuid(ident.uid)
        env.update(HOME=ident.home, USER=ident.name, LOGNAME=ident.name)
    for candidate in (cwd, ident.home, "/"):
        if candidate:
            try:
                os.chdir(candidate)
                env["PWD"] = candidate
                return
            except OSError:
                continue


def exit_like(code: int) -> int:
    """Make this process end the way the job's command did: a negative code means killed
    by that signal, which is re-raised on ourselves (without a core dump), so callers see
    the same status as if they had run the command directly."""
    if code >= 0:
        return code
    import resource
    sig = -code
    with suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with suppress(ValueError, OSError):
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
    return 128 + sig


def exec_in(cfg: NodeConfig, job_id: str, argv: list[str], *, user: str | None = None,
            log=null_log) -> int:
    """Run argv inside the job's namespaces as the job user (or `user`). Without a PID
    namespace the command replaces this process; with one, this process waits for it,
    relays signals and returns its status (-N: killed by signal N; see exit_like)."""
    if not argv:
        raise UsageError("no command given")
    handle = open_job(cfg, job_id)
    record = handle.record
    if user is None:
        ident = resolve_identity(uid=int(record["uid"]), gid=int(record["gid"])) \
            if "uid" in record else resolve_identity(user="0")
    else:
        ident = resolve_identity(user=user)
    cwd = os.getcwd() if os.path.exists(".") else None
    env = dict(os.environ)
    pid_ns = handle.pid is not None
    if pid_ns:
        # this process stays to relay signals and the exit status: load what that needs
        # now, while the interpreter's library is surely visible
        __import__("resource")   # for exit_like
        signal.SIGINT
    join(handle)
    log("debug", f"job {job_id}: exec {argv[0]} as {ident.name}")
    if not pid_ns:
        become(ident, cwd, env)
        _execvpe(argv, env)
    return _fork_exec_wait(argv, ident, cwd, env)


def _execvpe(argv: list[str], env: dict[str, str]) -> None:
    """execvpe searching the job's PATH, in the job's mount namespace. Written out rather
    than os.execvpe, which imports `warnings` after the join, when the interpreter's own
    library may not be visible any more."""
    cmd = argv[0]
    if "/" in cmd:
        candidates = [cmd]
    else:
        candidates = [os.path.join(d or ".", cmd)
                      for d in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":")]
    first_error: OSError | None = None
    for path in candidates:
        try:
            os.execve(path, argv, env)
        except OSError as e:
            if first_error is None or (first_error.errno in (errno.ENOENT, errno.ENOTDIR)
                                       and e.errno not in (errno.ENOENT, errno.ENOTDIR)):
                first_error = e
    err = first_error or OSError(errno.ENOENT, "No such file or directory")
    sys.stderr.write(f"jobns: exec {cmd}: {err.strerror}\n")
    os._exit(127 if err.errno in (errno.ENOENT, errno.ENOTDIR) else 126)


def _fork_exec_wait(argv: list[str], ident: Identity, cwd: str | None,
                    env: dict[str, str]) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the job's command
        try:
            become(ident, cwd, env)
            _execvpe(argv, env)
        finally:
            os._exit(127)
    return wait_relaying(pid)


def wait_relaying(pid: int) -> int:
    """Wait for `pid`, forwarding SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1/2 to it.
    Returns its exit code, or -N if signal N killed it (see exit_like)."""
    relayed = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
               signal.SIGUSR2)

    def forward(sig, _frame):
        with suppress(OSError):
            os.kill(pid, sig)

    old = {s: signal.signal(s, forward) for s in relayed}
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return os.waitstatus_to_exitcode(status)


def run(cfg: NodeConfig, job: Job, argv: list[str], *, log=null_log) -> int:
    """One shot: create, run argv as the job user inside, delete; return argv's status
    (-N if signal N killed it)."""
    create(cfg, job, log=log, owner_pid=os.getpid())
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - joins and execs
            code = 127
            try:
                code = exit_like(exec_in(cfg, job.job_id, argv, log=log))
            except BaseException as e:
                sys.stderr.write(f"jobns: {e}\n")
            finally:
                os._exit(code)
        status = wait_relaying(pid)
    finally:
        result = delete(cfg, job.job_id, log=log)
        if not result.ok:
            log("error", f"job {job.job_id}: {result.summary()}")
    return status
