"""delete: tear a job's namespace down and remove its directory; the trash.

`delete` kills what is left of the job, runs the epilog, unmounts the pin, moves the job
directory into `<base>/.jobns-trash/` (so the job id is free again at once) and removes it
there with the safe walker (jobns.cleanup). Whatever could not be removed stays in the
trash, is reported, and is retried by the next `delete` or `restore` (purge_trash).
"""

from __future__ import annotations

import errno
import os
import select
import time
from jobns import kernel
from jobns.config.model import NodeConfig
from jobns.errors import OperationError
from jobns.job import Job, validate_job_id
from jobns.log import null_log
from jobns.plan import JobPaths
from jobns.store import (TRASH, index_path, job_lock, ns_inode, open_base, pin_inode,
                         read_init_pid, read_record, require_base)
from jobns.values import suppress


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
    require_base(cfg)
    with job_lock(job_id, remove=True):
        return delete_locked(cfg, job_id, log)


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


def delete_locked(cfg: NodeConfig, job_id: str, log, *, run_epilog: bool = True) -> DeleteResult:
    t0 = time.monotonic()
    base = require_base(cfg)
    paths = JobPaths.of(base, job_id)
    result = DeleteResult(job_id=job_id, existed=os.path.lexists(paths.job_dir))
    with suppress(OSError):
        os.unlink(index_path(job_id))
    if not result.existed:
        result.seconds = time.monotonic() - t0
        return result
    ino = pin_inode(paths.pin)
    if ino is not None:
        init = read_init_pid(paths, ino)
        if init and kill_and_wait(init, ino):
            result.killed += 1
        result.killed += _kill_namespace_members(ino)
    if run_epilog and ino is not None and cfg.clone_ns_epilog:
        _run_epilog(cfg, read_record(paths) or {}, job_id, paths, log)
    # The pin is the only mount a job normally has on the host. Anything else mounted
    # below the job dir (an admin's bind, a script's mount) is found by the walker, which
    # never enters it; then, and only then, the mount table is read to detach it.
    unmounted = _umount_pin(paths.pin, log)
    base_fd = open_base(base)
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
    base = require_base(cfg)
    result = DeleteResult(job_id=TRASH, existed=True)
    base_fd = open_base(base)
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
