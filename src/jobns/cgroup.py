"""Containment: how `delete` finds every process of a job, however it re-unshares.

A job's processes can leave its mount (and user, PID) namespace: `unshare -Urm` inside a
mount-only job makes a process no pin-based kill would find. Two modes, chosen per job at
create and written to its record (`containment`), shown by `jobns list` and the logs:

- ``cgroup``: the job has its own cgroup v2 group, ``<cgroup2 mount>/jobns/<base>/<J>``
  (``<base>``: base_path with ``/`` as ``_``); the namespace child (hence PID 1), every
  `jobns exec`/`run` command and every native join (jobns_join.h, where ``.ns/cgroup``
  names the group) are placed in it, and a process cannot leave a cgroup by unsharing
  namespaces. `delete` writes ``1`` to its
  ``cgroup.kill`` (kernel >= 5.14; older kernels: SIGKILL to each member until it is
  empty), waits until it is unpopulated, and removes it. jobns enables no controller in
  its groups: it only needs membership and kill. On a hybrid v1/v2 node the group lives
  in the v2 hierarchy (``/sys/fs/cgroup/unified``), which Slurm's cgroup/v1 plugins do
  not use; jobns never creates, moves processes into, or kills a group it did not make
  (see docs/namespaces.md for Slurm).
- ``scan``: no cgroup2 hierarchy is mounted or writable (or ``JOBNS_CGROUP=off``). `delete`
  then kills, besides every process in the job's mount namespace, every process whose view
  still holds one of the job's private mounts (found by the device and inode of each private
  dir as the job saw it at create, through /proc/PID/root): a process that re-unshared
  its mount namespace keeps those mounts, and with them the job's memory (a user namespace
  cannot unmount them: they are locked); and, for a job with its own user namespace, every
  process in it or in a user namespace below it. A root process of a mount-only job that
  made a new mount namespace and unmounted every private dir escapes this mode (it no
  longer holds the job's files).

``JOBNS_CGROUP``: ``off`` (scan mode), a cgroup2 directory to make the ``jobns`` groups
under, or unset (automatic: the first writable cgroup2 mount, the v2 part of a hybrid
node preferred).
"""

from __future__ import annotations

import errno
import os
import time

from jobns.values import suppress

ENV = "JOBNS_CGROUP"
CGROUP = "cgroup"
SCAN = "scan"
_TOP = "jobns"
_MOUNT_CANDIDATES = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


def _is_cgroup2(path: str) -> bool:
    """Whether `path` is a cgroup2 directory (v1 hierarchies have no cgroup.subtree_control)."""
    return os.path.exists(os.path.join(path, "cgroup.procs")) and \
        os.path.exists(os.path.join(path, "cgroup.subtree_control"))


def parent_dir() -> str | None:
    """Where the jobns groups are made (``<it>/jobns/<J>``), or None for scan mode."""
    setting = os.environ.get(ENV, "").strip()
    if setting.lower() in ("off", "no", "none", "0", "scan"):
        return None
    if setting:
        return setting if _is_cgroup2(setting) else None
    for candidate in _MOUNT_CANDIDATES:
        if _is_cgroup2(candidate) and os.access(candidate, os.W_OK):
            return candidate
    return None


def tasks_join(path: str) -> bool:
    """Whether a scheduler's tasks should join the group at `path`: not when it is in the
    node's main cgroup hierarchy (a unified, v2-only node), where Slurm's cgroup/v2 owns
    every task's placement; yes in the v2 part of a hybrid node, which Slurm's cgroup/v1
    plugins never use."""
    try:
        return not (_is_cgroup2("/sys/fs/cgroup") and
                    os.stat(path).st_dev == os.stat("/sys/fs/cgroup").st_dev)
    except OSError:
        return False


MARKER = "cgroup"     # <J>/.ns/cgroup: the group tasks of the job join (read by the SPANK plugin)


def base_key(base: str) -> str:
    """The group name of a base_path: the same job id under two base_paths (two configs
    on one node) must never share a group."""
    return os.path.realpath(base).strip("/").replace("/", "_") or "_"


def group_path(job_id: str, parent: str, base: str) -> str:
    return os.path.join(parent, _TOP, base_key(base), job_id)


def is_group_of(path: str, job_id: str, base: str) -> bool:
    """Whether `path` (from a job record) is a group jobns made for this job: only such a
    group is ever killed."""
    return isinstance(path, str) and os.path.basename(path) == job_id and \
        os.path.basename(os.path.dirname(path)) == base_key(base) and \
        os.path.basename(os.path.dirname(os.path.dirname(path))) == _TOP


def make_group(job_id: str, base: str, log) -> str | None:
    """Make the job's group; its path, or None (scan mode) when no cgroup2 hierarchy is
    writable, with the reason logged at debug level. An existing group of this job id and
    base_path was left by an earlier job of that id (whose directory is gone: this runs
    under the job's lock, after any stale job was removed): it is emptied and reused."""
    parent = parent_dir()
    if parent is None:
        return None
    path = group_path(job_id, parent, base)
    try:
        for _ in range(100):
            # the base's dir goes away when its last group does (kill_group): again then
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            try:
                os.mkdir(path, 0o755)
                break
            except FileExistsError:
                kill_group(path, log, drop_parent=False)
                with suppress(FileNotFoundError):
                    os.mkdir(path, 0o755)
                    break
            except FileNotFoundError:
                continue
        else:
            raise OSError(errno.EAGAIN, "the group's parent kept disappearing", path)
    except OSError as e:
        log("debug", f"cgroup {path}: {e.strerror} [{errno.errorcode.get(e.errno, '?')}]; "
            "containment by scan")
        return None
    return path


def enter(path: str, pid: int = 0) -> None:
    """Move `pid` (0: the caller) into the group at `path`."""
    fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(pid).encode())
    finally:
        os.close(fd)


def open_procs(path: str) -> int:
    """An fd of the group's cgroup.procs: a forked child writes "0" to it to enter (opened
    before the caller joins a job's namespaces, where the path may not be visible)."""
    return os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)


def _members(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def _populated(path: str) -> bool:
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "populated":
                    return value.strip() != "0"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    return bool(_members(path))


class _Events:
    def __init__(self, fd: int):
        import select
        self.fd = fd
        self.poller = select.poll()
        self.poller.register(fd, select.POLLPRI | select.POLLERR)

    def poll(self, ms: float) -> None:
        with suppress(OSError):
            self.poller.poll(ms)
        with suppress(OSError):     # re-arm: kernfs notifies a reader that read since
            os.pread(self.fd, 4096, 0)


def _open_events(path: str) -> "_Events | None":
    try:
        fd = os.open(os.path.join(path, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        events = _Events(fd)
        os.pread(fd, 4096, 0)
        return events
    except OSError:
        os.close(fd)
        return None


def kill_group(path: str, log, timeout: float = 10.0, *, drop_parent: bool = True) -> int | None:
    """Kill every process in the group at `path` and remove the group (and its base_path's
    dir, if that is empty now). Returns how many processes it held (None if there was no
    such group). Never raises."""
    if not os.path.isdir(path):
        return None
    count = len(_members(path))
    try:
        fd = os.open(os.path.join(path, "cgroup.kill"), os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        fd = -1
    deadline = time.monotonic() + timeout
    events = _open_events(path)
    try:
        while _populated(path):
            if fd >= 0:
                with suppress(OSError):
                    os.write(fd, b"1")
            else:       # kernel < 5.14: no cgroup.kill
                for pid in _members(path):
                    with suppress(OSError):
                        os.kill(pid, 9)
            left = deadline - time.monotonic()
            if left <= 0:
                log("warning", f"cgroup {path}: processes still present after {timeout:.0f} s "
                    "(uninterruptible?); the group is kept")
                return count
            # cgroup.events signals a change of "populated" (POLLPRI); poll briefly anyway
            if events is not None:
                events.poll(min(left, 0.05) * 1000)
            else:
                time.sleep(0.002)
    finally:
        if fd >= 0:
            os.close(fd)
        if events is not None:
            os.close(events.fd)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log("warning", f"cgroup {path}: not removed: {e.strerror} "
            f"[{errno.errorcode.get(e.errno, '?')}]")
        return count
    if drop_parent:
        with suppress(OSError):     # EBUSY/ENOTEMPTY: other jobs of this base_path
            os.rmdir(os.path.dirname(path))
    return count


def prune(base: str, keep: set[str], log) -> int:
    """Node start (restore): kill and remove every group of this base_path whose job is
    not in `keep` (a create killed half way, a job dir removed by hand). Returns how many
    groups were removed."""
    parent = parent_dir()
    if parent is None:
        return 0
    top = os.path.join(parent, _TOP, base_key(base))
    try:
        names = [e.name for e in os.scandir(top) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return 0
    removed = 0
    for name in names:
        if name not in keep:
            kill_group(os.path.join(top, name), log)
            removed += 1
    return removed


# ------------------------------------------------------------------- scan mode

def holds_mounts(pid: int, marks: list) -> bool:
    """Whether process `pid` sees one of the job's private mounts: `marks` are
    (path, st_dev, st_ino) of each private dir as the job saw it at create."""
    for path, dev, ino in marks:
        try:
            st = os.stat(f"/proc/{pid}/root{path}")
        except OSError:
            continue
        if st.st_dev == dev and st.st_ino == ino:
            return True
    return False


def in_userns(pid: int, userns_ino: int) -> bool:
    """Whether process `pid` is in the user namespace `userns_ino` or one below it (a job's
    own user namespace: every namespace its processes make descends from it)."""
    try:
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    from jobns import kernel
    try:
        for _ in range(33):     # the kernel nests user namespaces at most 32 deep
            if os.fstat(fd).st_ino == userns_ino:
                return True
            try:
                parent = kernel.ns_get_parent(fd)
            except OSError:     # EPERM: reached our own level without meeting it
                return False
            os.close(fd)
            fd = parent
        return False
    finally:
        os.close(fd)


def scan_holders(marks: list, exclude: set[int], userns_ino: int | None = None) -> list[int]:
    """Host pids of every process (but `exclude`) that sees one of the job's mounts, or is
    in the job's own user namespace (`userns_ino`) or one below it."""
    out = []
    if not marks and not userns_ino:
        return out
    try:    # a process in our own mount namespace sees the node's dirs, not the job's
        own = os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        own = None
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in exclude:
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/mnt").st_ino == own:
                continue
        except OSError:
            continue
        if holds_mounts(pid, marks) or (userns_ino and in_userns(pid, userns_ino)):
            out.append(pid)
    return out
