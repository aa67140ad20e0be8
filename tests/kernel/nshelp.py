"""Helpers for the PID/user namespace, hook and propagation tests (real kernel, as root).

Everything here observes the kernel from the host side (/proc of the initial PID
namespace) so that the tests do not trust what jobns says about itself.
"""

from __future__ import annotations

import os
import stat
import textwrap
import time

from jobns import lifecycle
from jobns.job import Job

# A job owner without a passwd entry: its ids are unambiguous in `id`, `stat` and
# /proc/PID/status (65534 would be confused with the overflow id, 0 with root).
JOB_UID = 4242
JOB_GID = 4243
PID = "CLONE_NEWPID"
USER = "CLONE_NEWUSER"
MNT = "CLONE_NEWNS"


def job(job_id: str, env: dict | None = None) -> Job:
    return Job(job_id=job_id, uid=JOB_UID, gid=JOB_GID, user="jobowner", env=env or {})


def wait_until(cond, timeout: float = 10.0, what: str = "condition", interval: float = 0.01):
    """Poll `cond` until it returns a true value (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def ns_ino(pid: int | str, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def ns_link(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [0] state, [1] ppid, [2] pgrp,
    [19] start time. None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode()
    except OSError:
        return None
    return data[data.rfind(")") + 2:].split()


def alive(pid: int, start: str | None = None) -> bool:
    """True if `pid` exists, is not a zombie and (if given) has that start time."""
    f = stat_fields(pid)
    if f is None or f[0] in ("Z", "X"):
        return False
    return start is None or f[19] == start


def start_time(pid: int) -> str | None:
    f = stat_fields(pid)
    return None if f is None else f[19]


def procs_in_pidns(pidns_ino: int) -> dict[int, list[str]]:
    """host pid -> stat fields, for every process whose PID namespace is `pidns_ino`."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and ns_ino(name, "pid") == pidns_ino:
            f = stat_fields(int(name))
            if f is not None:
                out[int(name)] = f
    return out


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0")]


def init_pid(node, job_id: str) -> int:
    paths = lifecycle.JobPaths.of(node.base, job_id)
    with open(paths.pid1) as f:
        return int(f.read())


def uss_bytes(pid: int) -> int:
    """Unique set size: Private_Clean + Private_Dirty from smaps_rollup."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Private_Clean", "Private_Dirty"):
                total += int(rest.split()[0]) * 1024
    return total


def status_field(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
    raise KeyError(key)


def write_script(path: str, body: str) -> str:
    """Write an executable /bin/sh script (root-owned, 0755)."""
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + textwrap.dedent(body).lstrip("\n"))
    os.chmod(path, 0o755)
    return path


def read_env_file(path: str) -> dict[str, str]:
    """A NUL-separated environment block (a copy of /proc/PID/environ)."""
    with open(path, "rb") as f:
        data = f.read()
    out = {}
    for item in data.split(b"\0"):
        if item:
            k, _, v = item.decode().partition("=")
            out[k] = v
    return out


def read_facts(path: str) -> dict[str, str]:
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            out[k] = v
    return out


def mounts_below(path: str, pid: str = "self") -> list[str]:
    from jobns import kernel
    prefix = path.rstrip("/") + "/"
    return [m.mount_point for m in kernel.mountinfo(pid)
            if m.mount_point == path or m.mount_point.startswith(prefix)]


def assert_nothing_left(node, job_id: str) -> None:
    """A failed create (or a delete) must leave no directory, mount, index entry."""
    assert not os.path.lexists(node.job_dir(job_id))
    assert node.leftovers() == []
    assert mounts_below(node.base) in ([], [node.base])
    assert not os.path.lexists(os.path.join(node.runtime, "jobs", job_id))


def is_dir_mode(path: str) -> bool:
    return stat.S_ISDIR(os.lstat(path).st_mode)
