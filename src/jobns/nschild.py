"""The namespace child and PID 1: the forked process that unshares, builds the mounts
inside the new namespace and (with CLONE_NEWPID) starts the job's PID 1 (jobns._reaper).

The creator (jobns.create) talks to the child over two pipes with length-prefixed
marshal messages: "unshared" -> (host steps: maps, pin) -> b"G" -> "ready" or "error".

Kernel facts relied on (measured; see docs/architecture.md):
- The mount-namespace pin must be made from a namespace with a lower namespace id than
  the new one (kernel 6.18 refuses otherwise): the child re-unshares until that holds.
- unshare of mount and user namespaces is done only in single-threaded processes.
"""

from __future__ import annotations

import errno
import marshal
import os
import select
import sys
import time
from jobns import kernel
from jobns.config.model import CLONE_NEWUSER
from jobns.errors import OperationError
from jobns.plan import Op, Step, step_error
from jobns.store import fail_point
from jobns.values import suppress


class NamespaceChild:
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


def child_error(msg: dict) -> OperationError:
    return OperationError(msg.get("step", "namespace"), msg.get("message", "failed"),
                          path=msg.get("path"), errno=msg.get("errno"))


def reap(pid: int) -> int | None:
    try:
        _, status = os.waitpid(pid, 0)
        return status
    except ChildProcessError:
        return None


def spawn_namespace_child(unshare: Step, steps: tuple[Step, ...], job_id: str) -> NamespaceChild:
    """Fork the child that performs `unshare` and, once told to go on, `steps` inside the
    new namespaces."""
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
            code = _namespace_child(unshare, steps, job_id, to_child_r, from_child_w,
                                    parent_ns_id)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(to_child_r)
    os.close(from_child_w)
    return NamespaceChild(pid=pid, to_child=to_child_w, from_child=from_child_r)


def _say(fd: int, **msg) -> None:
    data = marshal.dumps(msg)
    os.write(fd, len(data).to_bytes(4, "little") + data)


def _namespace_child(unshare: Step, steps: tuple[Step, ...], job_id: str, rfd: int, wfd: int,
                     parent_ns_id: int | None) -> int:
    """Runs in the forked child: unshare, wait for the pin, build the mounts, report."""
    current = unshare
    try:
        flags = 0
        for name in unshare.flags:
            flags |= kernel.FLAG_BY_NAME[name]
        if any(s.kind == Op.INIT for s in steps):
            _load_reaper()
        fail_point(unshare.name)
        kernel.unshare(flags)
        _order_after(parent_ns_id)
        _say(wfd, event="unshared")
        if os.read(rfd, 1) != b"G":
            return 1
        run = _NsRun(job_id, CLONE_NEWUSER in unshare.flags)
        for step in steps:
            current = step
            fail_point(step.name)
            NS_OPS[step.kind](step, run)
        _say(wfd, event="ready", init_pid=run.init_pid, marks=_marks(steps))
        return 0
    except OperationError as e:
        _say(wfd, event="error", step=e.step, path=e.path, errno=e.errno, message=e.message)
    except OSError as e:
        err = step_error(current, e)
        _say(wfd, event="error", step=err.step, path=err.path, errno=err.errno,
             message=err.message)
    except Exception as e:
        _say(wfd, event="error", step=current.name, path=current.path, errno=None,
             message=f"{type(e).__name__}: {e}")
    return 1


def _marks(steps: tuple[Step, ...]) -> list:
    """(path, st_dev, st_ino) of each private dir as the job sees it: what identifies a
    process that still holds the job's mounts after re-unsharing (jobns.cgroup, scan)."""
    out = []
    for step in steps:
        if step.kind in Op.MOUNTS_DIR:
            try:
                st = os.stat(step.path)
            except OSError:
                continue
            out.append([step.path, st.st_dev, st.st_ino])
    return out


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


class _NsRun:
    """What the steps inside the namespace share: set by the unshare, read by the ops."""

    __slots__ = ("job_id", "new_user", "init_pid")

    def __init__(self, job_id: str, new_user: bool):
        self.job_id, self.new_user, self.init_pid = job_id, new_user, None


def _mount_flags(names) -> int:
    flags = 0
    for name in names:
        flags |= kernel.MOUNT_FLAG_BY_NAME[name]
    return flags


# ------------------------------------------------------- the ops inside the namespace
# One function per op (jobns.plan.Op), reading the step's fields only.

def _propagation(step: Step, run: _NsRun) -> None:
    for name in step.flags:
        kernel.mount(None, step.path, None, kernel.PROPAGATION_BY_NAME[name])


def _bind(step: Step, run: _NsRun) -> None:
    fd = os.open(step.source, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        kernel.mount(f"/proc/self/fd/{fd}", step.path, None, kernel.MS_BIND)
    finally:
        os.close(fd)
    if not step.flags:
        return
    # MS_BIND ignores flags: apply them with a bind remount, keeping the source mount's
    # ro/nosuid/nodev/noexec (clearing a locked one fails with EPERM).
    flags = kernel.MS_REMOUNT | kernel.MS_BIND | \
        (os.statvfs(step.path).f_flag & kernel.ST_LOCKABLE) | _mount_flags(step.flags)
    try:
        kernel.mount(None, step.path, None, flags)
    except PermissionError as e:
        atime = [n for n in step.flags if n in ("noatime", "nodiratime", "relatime")]
        if not (atime and run.new_user):
            raise
        raise OperationError(step.name, f"{','.join(atime)} cannot be applied: in a user "
                             "namespace the kernel locks a bind mount's atime flags to "
                             "those of its source", path=step.path, errno=errno.EPERM) from e


def _tmpfs(step: Step, run: _NsRun) -> None:
    if step.peel:
        _peel_mounts(step.path)
    kernel.mount(step.source, step.path, step.fstype, _mount_flags(step.flags), step.data)


def _hide(step: Step, run: _NsRun) -> None:
    try:
        kernel.mount(step.source, step.path, step.fstype, _mount_flags(step.flags), step.data)
    except FileNotFoundError:
        pass   # base_path is not reachable inside the namespace: hidden already


def _init(step: Step, run: _NsRun) -> None:
    run.init_pid = _start_init(step, run.job_id)


NS_OPS = {Op.PROPAGATION: _propagation, Op.BIND: _bind, Op.TMPFS: _tmpfs, Op.HIDE: _hide,
          Op.INIT: _init}


def warn_init_oom(pid: int, job_id: str, log) -> None:
    """The reaper asks for oom_score_adj -1000; going below the inherited value needs
    CAP_SYS_RESOURCE, which some nodes withhold from root. Say so instead of failing."""
    try:
        with open(f"/proc/{pid}/oom_score_adj") as f:
            adj = int(f.read())
    except (OSError, ValueError):
        return
    if adj != -1000:
        log("debug", f"job {job_id}: PID 1 keeps oom_score_adj {adj}, not -1000 "
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


def _start_init(step: Step, job_id: str) -> int:
    """Fork PID 1 of the new PID namespace: it mounts a fresh /proc (the step) and execs
    the reaper."""
    ready_r, ready_w = os.pipe()
    python = getattr(sys, "_base_executable", None) or sys.executable
    pid = os.fork()
    if pid == 0:  # pragma: no cover - PID 1 of the job
        try:
            os.close(ready_r)
            kernel.mount(step.source, step.path, step.fstype, _mount_flags(step.flags),
                         step.data)
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
            os.execv(python, [python, "-I", "-S", "-c", _REAPER_CODE, job_id,
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
            os.kill(pid, kernel.SIGKILL)
        text = answer[1:] if answer[:1] == b"E" else answer
        lines = text.decode(errors="replace").strip().splitlines()
        raise OperationError(step.name, "PID 1 did not start: "
                             + (lines[-1] if lines else f"{python} exited"), path=step.path)
    return pid
