"""Which jobs are alive on this node, asked of the node itself (never of the controller).

Every running step has a slurmstepd listening on a unix socket
``<SlurmdSpoolDir>/<NodeName>_<jobid>.<stepid>[.<het component>]``. A socket that accepts
a connection belongs to a live step; one that refuses it (ECONNREFUSED) or vanished is
left over from a dead slurmstepd. Anything else (timeouts, a full backlog, permission
problems) counts as alive: a live job's namespace must never be taken for a leftover.
For restore, a job counts as live if any node's socket for it is alive or a slurmstepd
process of it runs on this host: a NodeName misread must never make a live job look dead.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat

DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"
DEFAULT_SPOOL_DIR = "/var/spool/slurmd"
_DEAD = (errno.ECONNREFUSED, errno.ENOENT)


def slurm_conf_values(path: str) -> dict[str, str]:
    """Lower-case key -> value (the last one wins) of a slurm.conf and the files it
    Includes, read by jobns.slurm.nodes.conf_pairs (conf_reader's rules). An unreadable
    file gives nothing."""
    from jobns.slurm.nodes import conf_pairs
    values: dict[str, str] = {}
    try:
        for line in conf_pairs(path):
            for key, value in line:
                values[key.lower()] = value
    except OSError:
        pass
    return values


def slurmd_spool_dir(slurm_conf: str | None, node: str) -> str:
    """SlurmdSpoolDir of `node` (with %n and %h expanded), Slurm's default if unset."""
    from jobns.slurm import nodes
    conf = nodes.read(slurm_conf)
    if conf is None:
        return DEFAULT_SPOOL_DIR
    return conf.slurmd_spool_dir(node)


_SOCKET = re.compile(r"(.+)_([0-9]+)\.([0-9]+)(?:\.([0-9]+))?")


def step_sockets(spool_dir: str, node: str | None = None) -> list[tuple[str, str]]:
    """(job id, socket path) of every stepd socket in `spool_dir`: of `node`, or of any
    node when `node` is None (several slurmd's may share one spool dir)."""
    found = []
    try:
        names = os.listdir(spool_dir)
    except FileNotFoundError:
        return []
    for name in sorted(names):
        m = _SOCKET.fullmatch(name)
        if not m or (node is not None and m.group(1) != node):
            continue
        path = os.path.join(spool_dir, name)
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
        except FileNotFoundError:
            continue
        found.append((str(int(m.group(2))), path))
    return found


_STEPD_TITLE = re.compile(rb"slurmstepd: \[([0-9]+)\.")


def stepd_processes() -> dict[str, list[int]]:
    """Job id -> pids of the slurmstepd processes running on this host (any node's):
    slurmstepd titles itself `slurmstepd: [<job>.<step>]`."""
    out: dict[str, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                head = f.read(256)
        except OSError:
            continue
        m = _STEPD_TITLE.match(head)
        if m:
            out.setdefault(str(int(m.group(1))), []).append(int(name))
    return out


def socket_alive(path: str, timeout: float = 2.0) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except OSError as exc:
        return exc.errno not in _DEAD
    finally:
        s.close()
    return True


def live_jobs(spool_dir: str, node: str | None = None, *, log=None) -> set[str]:
    """Job ids that may still be running here: a stepd socket in `spool_dir` that does not
    refuse connections (under any node name unless `node` is given), or a slurmstepd
    process of the job on this host. A job is dead only when neither is found."""
    live: set[str] = set()
    for job_id, path in step_sockets(spool_dir, node):
        if job_id in live:
            continue
        if socket_alive(path):
            live.add(job_id)
        elif log is not None:
            log("debug", f"{path}: no slurmstepd behind it")
    if node is None:
        for job_id, pids in stepd_processes().items():
            if job_id not in live and log is not None:
                log("debug", f"job {job_id}: slurmstepd still running (pid "
                    f"{','.join(map(str, pids))}) though its socket is not in {spool_dir}; "
                    "the job counts as live")
            live.add(job_id)
    return live
