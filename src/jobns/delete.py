"""delete: tear a job's namespace down and remove its directory; the trash.

`delete` kills what is left of the job, runs the epilog, unmounts the pin, moves the job
directory into `<base>/.jobns-trash/` (so the job id is free again at once) and removes it
there with the safe walker (jobns.cleanup); with no room for a trash, in place. Whatever
could not be removed stays in the trash, is reported with its real path, and is swept by
the next `delete` (bounded), `create` (in the background) or `restore` (purge_trash).
Deletes and restores share the trash through flocks: a shared one on the trash from its
open to the rename into it, an exclusive one to remove it when empty, and one on each
entry while it is being removed (see _claim).
"""

from __future__ import annotations

import errno
import os
import select
import time
from jobns import kernel
from jobns.config.model import NodeConfig
from jobns.errors import OperationError, UsageError
from jobns.job import Job, validate_job_id
from jobns.log import null_log
from jobns.plan import JobPaths
from jobns.store import (STATE_TEARDOWN_FAILED, TRASH, ensure_private_dir, index_path,
                         indexed_job_dir, job_lock, ns_inode, open_base, pin_inode,
                         read_init_pid, read_record, require_base, runtime_dir, write_record)
from jobns.values import suppress

# Test-only: seconds to sleep between opening the trash and the rename into it, which
# widens the window in which other deletes and restores act on the trash.
DELAY_ENV = "JOBNS_TEST_TRASH_DELAY"
# A delete removes leftovers of earlier deletes for at most this long (checked between
# entries) after its own job; the rest waits for the next delete, create or restore.
SWEEP_BUDGET = 5.0
# errnos of a trash that cannot be made (no inode, no space, a read-only base): the job
# dir is then removed where it is, which needs no new inode
_NO_TRASH = (errno.ENOSPC, errno.EDQUOT, errno.EMLINK, errno.EROFS)
_LOCK_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


def delete(cfg: NodeConfig, job_id: str, *, log=null_log, on_free=None) -> DeleteResult:
    """Tear the job's namespace down and remove <base>/<J> completely. The job is found
    where it was created (the runtime index), whatever base_path the config names now.

    `on_free`, if given, is called once the job id is free again: every process of the
    job is gone, its namespace unpinned and its directory moved into the trash. The
    removal of the files follows (what it cannot remove stays in the trash, swept by the
    next delete, create or restore); the result reports it."""
    validate_job_id(job_id)
    jobs = require_base(cfg)
    with job_lock(job_id, remove=True, optional=True, log=log):
        base = job_base(cfg, job_id)
        result = delete_locked(cfg, job_id, log, on_free=on_free, base=base)
    sweep_trash(jobs, log)
    if base != jobs:
        sweep_trash(base, log)
    return result


def job_base(cfg: NodeConfig, job_id: str) -> str:
    """The directory that holds job `job_id`'s dir: where the runtime index says it was
    created, else this node's job directory root of the current config."""
    where = indexed_job_dir(job_id)
    if where and os.path.basename(where) == job_id and os.path.lexists(where):
        return os.path.dirname(where)
    return require_base(cfg)


def sweep_trash(base: str, log, budget: float = SWEEP_BUDGET) -> None:
    """Finish what earlier (killed, failed) deletes left in the trash, for at most
    `budget` seconds; never fails the caller."""
    try:
        purge_trash_at(base, log, budget=budget)
    except OSError as e:        # no base_path yet, or it cannot be read: nothing to do
        if e.errno not in (errno.ENOENT, errno.ENOTDIR):
            log("warning", f"trash {os.path.join(base, TRASH)}: not swept: {e.strerror} "
                f"[{errno.errorcode.get(e.errno, '?')}]")


def kill_and_wait(pid: int, pin_ino: int | None, timeout: float = 10.0) -> bool:
    """SIGKILL a process through a pidfd (immune to pid reuse once opened) and wait until
    it has exited. With pin_ino, only a process in that mount namespace is killed."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if pin_ino is not None and ns_inode(pid, "mnt") != pin_ino:
            return False
        try:
            kernel.pidfd_send_signal(pidfd, kernel.SIGKILL)
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
        if ns_inode(int(name), "mnt") == pin_ino and kill_and_wait(int(name), pin_ino, 2.0):
            killed += 1
    return killed


def _kill_contained(record: dict, job_id: str, base: str, log) -> int:
    """Kill and remove the job's cgroup (containment mode cgroup): every process that
    descends from the job, whatever namespaces it made. Only a group jobns made for this
    job id and base_path (``.../jobns/<base>/<J>``) is touched."""
    from jobns import cgroup
    path = record.get("cgroup")
    if not cgroup.is_group_of(path, job_id, base):
        return 0
    return cgroup.kill_group(path, log) or 0


def _kill_mount_holders(marks: list, userns_ino: int | None = None, rounds: int = 20) -> int:
    """Containment mode scan: kill every process that still sees one of the job's private
    mounts (a process that re-unshared its mount namespace keeps them), until none is left
    (they may fork while being killed)."""
    from jobns import cgroup
    marks = [tuple(m) for m in marks if isinstance(m, (list, tuple)) and len(m) == 3]
    killed = 0
    me = {os.getpid()}
    for _ in range(rounds):
        found = cgroup.scan_holders(marks, me, userns_ino)
        if not found:
            break
        for pid in found:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                # the pid is pinned by the pidfd: check it is still the same holder
                if cgroup.holds_mounts(pid, marks) or \
                        (userns_ino and cgroup.in_userns(pid, userns_ino)):
                    with suppress(OSError):
                        kernel.pidfd_send_signal(pidfd, kernel.SIGKILL)
                        killed += 1
                    select.select([pidfd], [], [], 2.0)
            finally:
                os.close(pidfd)
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


def delete_locked(cfg: NodeConfig, job_id: str, log, *, run_epilog: bool = True,
                  on_free=None, base: str | None = None) -> DeleteResult:
    t0 = time.monotonic()
    base = base or require_base(cfg)
    paths = JobPaths.of(base, job_id)
    result = DeleteResult(job_id=job_id, existed=os.path.lexists(paths.job_dir))
    if not result.existed:
        with suppress(OSError):
            os.unlink(index_path(job_id))
        result.seconds = time.monotonic() - t0
        return result
    why = not_a_job(base, paths)
    if why:
        result.ok = False
        result.failures.append((paths.job_dir, "check", "EPERM", why))
        log("error", f"job {job_id}: {paths.job_dir} {why}; left alone")
        return result
    owner = (read_record(paths) or {}).get("node")
    if owner and owner != cfg.node_name:
        # A base_path shared with another node (a network filesystem without %n): that
        # node's job is never touched from here.
        result.ok = False
        result.failures.append((paths.job_dir, "owner", "EPERM",
                                f"the job belongs to node {owner}, not {cfg.node_name}"))
        log("error", f"job {job_id}: {paths.job_dir} belongs to node {owner}; node "
            f"{cfg.node_name} leaves it alone (give each node its own base_path: %n)")
        return result
    with suppress(OSError):
        os.unlink(index_path(job_id))
    ino = pin_inode(paths.pin)
    record = read_record(paths) or {}
    result.killed += _kill_contained(record, job_id, base, log)
    if ino is not None:
        init = read_init_pid(paths, ino)
        if init and kill_and_wait(init, ino):
            result.killed += 1
        result.killed += _kill_namespace_members(ino)
    if record.get("containment") != "cgroup" or record.get("tasks_join") is False:
        # no group, or a scheduler's tasks stay in the scheduler's own groups
        userns = record.get("userns_inode")
        result.killed += _kill_mount_holders(record.get("marks") or [],
                                             userns if isinstance(userns, int) else None)
    if run_epilog and ino is not None and cfg.clone_ns_epilog:
        _run_epilog(cfg, record, job_id, paths, log)
    # The pin is the only mount a job normally has on the host. Anything else mounted
    # below the job dir (an admin's bind, a script's mount) is found by the walker, which
    # never enters it; then, and only then, the mount table is read to detach it.
    unmounted = _umount_pin(paths.pin, log)
    base_fd = open_base(base)
    try:
        where, unmounted = _move_and_remove(result, base, base_fd, job_id, log, unmounted,
                                            on_free)
        if where is not None and result.ok:
            _drop_empty_trash(base_fd)
    finally:
        os.close(base_fd)
    result.seconds = time.monotonic() - t0
    if result.ok:
        log("info", f"job {job_id}: deleted {paths.job_dir} ({result.files} files, "
            f"{result.dirs} dirs, {unmounted} mounts, {result.killed} processes killed) "
            f"in {result.seconds * 1000:.1f} ms")
    elif where is None:
        mark_teardown_failed(job_id, base, paths)
        log("error", f"job {job_id}: delete incomplete: {result.summary()} (the job "
            f"directory is still at {paths.job_dir}, state {STATE_TEARDOWN_FAILED}; the "
            "next epilog on this node or restore retries)")
    else:
        mark_teardown_failed(job_id, base, paths)
        log("error", f"job {job_id}: delete incomplete: {result.summary()} (left in "
            f"{where}, state {STATE_TEARDOWN_FAILED}; retried by the next delete or "
            "restore)")
    return result


def not_a_job(base: str, paths: JobPaths) -> str | None:
    """Why `paths.job_dir` must not be torn down as a job, or None. A node's own directory
    of jobs (<base_path>/<NodeName>, several slurmd's on one host) has a job-like name;
    it is its own mount and holds job dirs, and is never deleted as a job."""
    try:
        fd = os.open(paths.job_dir, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None                     # not a directory: removed as it is
    try:
        bfd = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if kernel.fstatx(fd).mnt_id != kernel.fstatx(bfd).mnt_id:
                return "is a mount point, not a job directory"
        finally:
            os.close(bfd)
    finally:
        os.close(fd)
    if os.path.isdir(paths.ns_dir):
        return None
    try:
        with os.scandir(paths.job_dir) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False) and \
                        os.path.isdir(os.path.join(entry.path, ".ns")):
                    return "holds other jobs' directories (a node's directory of jobs)"
    except OSError:
        pass
    return None


def _failed_dir() -> str:
    return os.path.join(runtime_dir(), "teardown-failed")


def mark_teardown_failed(job_id: str, base: str, paths: JobPaths) -> None:
    """Remember a teardown that did not finish: the job dir still in place gets the state
    teardown-failed in its record (list shows it), and the runtime dir a note that the
    next epilog on this node (retry_failed_teardowns) and restore act on."""
    if os.path.lexists(paths.job_dir):
        record = read_record(paths)
        if record is not None:
            record["state"] = STATE_TEARDOWN_FAILED
            with suppress(OSError):
                write_record(paths.record, record)
    with suppress(OSError, OperationError):
        ensure_private_dir(runtime_dir())
        ensure_private_dir(_failed_dir())
        with open(os.path.join(_failed_dir(), job_id), "w") as f:
            f.write(base)


def retry_failed_teardowns(cfg: NodeConfig, log=null_log) -> bool:
    """Finish the teardowns that failed earlier on this node (their jobs are over).
    Costs one directory listing when there are none. True when none is left."""
    d = _failed_dir()
    try:
        names = os.listdir(d)
    except OSError:
        return True
    ok = True
    for job_id in names:
        note = os.path.join(d, job_id)
        try:
            with open(note) as f:
                base = f.read()
            validate_job_id(job_id)
        except (OSError, UsageError):
            continue
        with suppress(OSError):
            os.unlink(note)     # a failure below writes it again
        log("info", f"job {job_id}: retrying its teardown ({STATE_TEARDOWN_FAILED})")
        with job_lock(job_id, remove=True, optional=True, log=log):
            if not delete_locked(cfg, job_id, log, base=base).ok:
                ok = False
        if os.path.isdir(base):
            trash = purge_trash_at(base, log)
            if not trash.ok:
                ok = False
                mark_teardown_failed(job_id, base, JobPaths.of(base, job_id))
    return ok






def _claim(parent_fd: int, name: str, *, wait: bool) -> int | None:
    """An fd of directory parent_fd/name holding an exclusive flock on it, or None (not a
    directory, gone, or -- without `wait` -- being removed by a live process). The flock
    follows the directory through the rename into the trash: a purge skips what a
    running delete holds, and a killed delete's lock dies with it."""
    import fcntl
    try:
        fd = os.open(name, _LOCK_FLAGS, dir_fd=parent_fd)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        return None
    return fd


def _move_and_remove(result: DeleteResult, base: str, base_fd: int, job_id: str, log,
                     unmounted: int, on_free=None) -> tuple[str | None, int]:
    """Move <base>/<J> into the trash and remove it there (the job id is free at once), or,
    when no trash can be made, remove it in place. Returns where the directory is (its
    trash path, or its own path; None if it could not be moved) and the mount count."""
    job_dir = os.path.join(base, job_id)
    claim = _claim(base_fd, job_id, wait=True)
    try:
        trash_name = f"{job_id}.{time.time_ns()}"
        trash_fd = None
        try:
            trash_fd = _rename_into_trash(base_fd, job_id, trash_name)
        except OSError as e:
            if e.errno not in _NO_TRASH:
                result.ok = False
                result.failures.append((job_dir, "rename", errno.errorcode.get(e.errno, "?"),
                                        e.strerror))
                return None, unmounted
            log("warning", f"job {job_id}: no trash ({os.path.join(base, TRASH)}: "
                f"{e.strerror} [{errno.errorcode.get(e.errno, '?')}]): removing {job_dir} "
                "in place")
        if trash_fd is None:
            parent_fd, name, parent = base_fd, job_id, base
        else:
            parent_fd, name, parent = trash_fd, trash_name, os.path.join(base, TRASH)
            if on_free is not None:       # the job id is free: the files go later
                on_free()
        where = os.path.join(parent, name)
        try:
            first = DeleteResult(job_id=job_id, existed=True)
            _remove_into(first, parent_fd, name, parent)
            if first.skipped_mounts:
                unmounted += len(_detach_mounts_below(os.path.join(os.path.realpath(parent),
                                                                   name), log))
                _remove_into(result, parent_fd, name, parent)
                result.files += first.files
                result.dirs += first.dirs
            else:
                result.files, result.dirs = first.files, first.dirs
                result.failures, result.ok = first.failures, first.ok
        finally:
            if trash_fd is not None:
                os.close(trash_fd)
        return where, unmounted
    finally:
        if claim is not None:
            os.close(claim)


def _rename_into_trash(base_fd: int, job_id: str, trash_name: str) -> int:
    """Rename base/<job_id> to base/.jobns-trash/<trash_name>; returns an fd of the trash.
    Another delete or restore may remove the trash when it finds it empty, at any moment:
    a rename that failed because the trash went away (the job dir is still there) is
    retried with a new one."""
    import fcntl
    delay = float(os.environ.get(DELAY_ENV) or 0)
    for _ in range(1000):
        try:
            trash_fd = _open_trash(base_fd)
        except FileNotFoundError:     # made, then removed by another delete: again
            continue
        try:
            # a shared lock on the trash keeps _drop_empty_trash from removing it under us
            fcntl.flock(trash_fd, fcntl.LOCK_SH)
            if os.fstat(trash_fd).st_nlink == 0:   # removed before we locked it: again
                os.close(trash_fd)
                continue
            if delay:
                time.sleep(delay)
            os.rename(job_id, trash_name, src_dir_fd=base_fd, dst_dir_fd=trash_fd)
            return trash_fd
        except FileNotFoundError:
            gone = os.fstat(trash_fd).st_nlink == 0
            os.close(trash_fd)
            if not gone:
                raise
        except BaseException:
            os.close(trash_fd)
            raise
    raise OSError(errno.EAGAIN, "the trash kept disappearing", TRASH)


def _drop_empty_trash(base_fd: int) -> None:
    """Remove the trash if it is empty and no delete is about to move a job dir into it
    (each holds a shared flock on it from its open to its rename)."""
    import fcntl
    try:
        fd = os.open(TRASH, _LOCK_FLAGS, dir_fd=base_fd)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        st = os.fstat(fd)
        if st.st_nlink and os.stat(TRASH, dir_fd=base_fd,
                                   follow_symlinks=False).st_ino == st.st_ino:
            os.rmdir(TRASH, dir_fd=base_fd)
    except OSError:     # ENOTEMPTY, EWOULDBLOCK: other deletes are under way
        pass
    finally:
        os.close(fd)


def _open_trash(base_fd: int) -> int:
    try:
        os.mkdir(TRASH, 0o700, dir_fd=base_fd)
    except FileExistsError:
        pass
    return os.open(TRASH, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                   dir_fd=base_fd)


def _remove_into(result: DeleteResult, parent_fd: int, name: str, parent: str) -> None:
    """Remove parent_fd/name; failures are reported with their real path under `parent`
    (the path of parent_fd)."""
    from jobns.cleanup import remove_tree
    report = remove_tree(parent_fd, name)
    result.files += report.files
    result.dirs += report.dirs
    for f in report.failures:
        result.failures.append((os.path.join(parent, f.path), f.op,
                                errno.errorcode.get(f.errno, str(f.errno)), f.message))
    result.skipped_mounts += [os.path.join(parent, p) for p in report.skipped_mounts]
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


def leftovers_waiting(base: str, look: int = 8) -> bool:
    """Whether the trash holds something no live process is removing (a look at its
    first `look` entries: cheap enough for every create)."""
    try:
        trash_fd = os.open(os.path.join(base, TRASH), _LOCK_FLAGS)
    except OSError:
        return False
    try:
        with os.scandir(trash_fd) as it:
            for n, entry in enumerate(it):
                if n >= look:
                    break
                claim = _claim(trash_fd, entry.name, wait=False)
                if claim is not None:
                    os.close(claim)
                    return True
                if not _is_dir(trash_fd, entry.name):
                    return True
        return False
    finally:
        os.close(trash_fd)


_SWEEP_CODE = "import sys; from jobns.delete import sweep_main; sweep_main(sys.argv[1])"


SWEEP_INTERVAL = 60.0   # at most one background sweep per base_path this often


def _sweep_due(base: str) -> bool:
    """Whether a background sweep may start now: at most one per SWEEP_INTERVAL per base
    (an entry nobody can remove, say an immutable file, must not cost every create a
    process). The stamp is a file in the runtime dir; without one, no background sweep."""
    stamp = os.path.join(runtime_dir(), "sweep", os.path.realpath(base).replace("/", "_"))
    try:
        if time.time() - os.stat(stamp).st_mtime < SWEEP_INTERVAL:
            return False
    except FileNotFoundError:
        pass
    except OSError:
        return False
    try:
        os.makedirs(os.path.dirname(stamp), mode=0o700, exist_ok=True)
        os.close(os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600))
        os.utime(stamp)
    except OSError:
        return False
    return True


def start_sweep(base: str | None, log=null_log) -> None:
    """Start a sweep of leftover trash in the background (a detached process, so a job
    start never waits for it), if there is any. Never fails the caller."""
    if not base or not leftovers_waiting(base) or not _sweep_due(base):
        return
    import subprocess
    import sys
    try:
        # sh puts the sweeper in the background and exits at once: nothing to reap later
        subprocess.run(["/bin/sh", "-c", '"$@" </dev/null >/dev/null 2>&1 &', "sh",
                        sys.executable, "-c", _SWEEP_CODE, base], check=True,
                       start_new_session=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log("info", f"trash {os.path.join(base, TRASH)}: leftovers of earlier deletes are "
            "being removed in the background")
    except (OSError, subprocess.CalledProcessError) as e:
        log("warning", f"trash {os.path.join(base, TRASH)}: could not start the background "
            f"sweep: {e}; the next delete or restore removes the leftovers")


def sweep_main(base: str) -> None:
    """The background sweeper (see start_sweep): logs to syslog only."""
    from jobns.log import Log
    with open(os.devnull, "w") as devnull:
        purge_trash_at(base, Log("info", use_syslog=True, stream=devnull, tag="jobns-sweep"))


def purge_trash(cfg: NodeConfig, log=null_log) -> DeleteResult:
    """Remove whatever earlier deletes left in <base>/.jobns-trash."""
    return purge_trash_at(require_base(cfg), log)


def purge_trash_at(base: str, log=null_log, *, budget: float | None = None) -> DeleteResult:
    """Remove what earlier deletes left in <base>/.jobns-trash: every entry no live
    process is removing (see _claim). With `budget` (seconds), no new entry is started
    once it is spent. `existed` says whether there was a trash at all."""
    result = DeleteResult(job_id=TRASH, existed=True)
    deadline = None if budget is None else time.monotonic() + budget
    base_fd = open_base(base)
    busy = 0
    try:
        try:
            trash_fd = os.open(TRASH, _LOCK_FLAGS, dir_fd=base_fd)
        except FileNotFoundError:
            result.existed = False
            return result
        try:
            for name in os.listdir(trash_fd):
                if deadline is not None and time.monotonic() > deadline:
                    busy += 1
                    continue
                claim = _claim(trash_fd, name, wait=False)
                if claim is None and _is_dir(trash_fd, name):
                    busy += 1       # a running delete is removing it
                    continue
                try:
                    _remove_into(result, trash_fd, name, os.path.join(base, TRASH))
                finally:
                    if claim is not None:
                        os.close(claim)
        finally:
            os.close(trash_fd)
        if result.ok and not busy:
            _drop_empty_trash(base_fd)
    finally:
        os.close(base_fd)
    if result.files or result.dirs:
        log("info", f"trash: removed {result.files} files, {result.dirs} dirs left by earlier "
            f"deletes" + (f"; {busy} entries left for later" if busy else ""))
    if not result.ok:
        log("error", f"trash {os.path.join(base, TRASH)}: {result.summary()}")
    return result


def _is_dir(dir_fd: int, name: str) -> bool:
    import stat
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False
