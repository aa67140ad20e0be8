"""Which jobs are alive on this node, asked of the node itself (never of the controller).

Every running step has a slurmstepd listening on a unix socket
``<SlurmdSpoolDir>/<NodeName>_<jobid>.<stepid>[.<het component>]``. A socket that accepts
a connection belongs to a live step; one that refuses it (ECONNREFUSED) or vanished is
left over from a dead slurmstepd. Anything else (timeouts, a full backlog, permission
problems) counts as alive: a live job's namespace must never be taken for a leftover.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import socket
import stat

DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"
DEFAULT_SPOOL_DIR = "/var/spool/slurmd"
_DEAD = (errno.ECONNREFUSED, errno.ENOENT)


def _conf_lines(path: str, depth: int = 0):
    """Logical lines of a slurm.conf, following Include directives (globs allowed)."""
    if depth > 10:
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return
    base = os.path.dirname(path)
    text = text.replace("\\\n", "")
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        head, _, rest = line.partition(" ")
        if head.lower() == "include" and rest.strip():
            pattern = rest.strip()
            if not os.path.isabs(pattern):
                pattern = os.path.join(base, pattern)
            for inc in sorted(glob.glob(pattern)):
                yield from _conf_lines(inc, depth + 1)
            continue
        yield line


def slurmd_spool_dir(slurm_conf: str | None, node: str) -> str:
    """SlurmdSpoolDir of `node` (with %n and %h expanded), Slurm's default if unset."""
    conf = slurm_conf or os.environ.get("SLURM_CONF") or DEFAULT_SLURM_CONF
    value = None
    for line in _conf_lines(conf):
        for m in re.finditer(r"(?i)(?:^|\s)slurmdspooldir\s*=\s*(\"[^\"]*\"|\S+)", line):
            value = m.group(1).strip('"')
    if not value:
        value = DEFAULT_SPOOL_DIR
    from jobns.config.model import short_hostname
    return value.replace("%n", node).replace("%h", short_hostname())


def step_sockets(spool_dir: str, node: str) -> list[tuple[str, str]]:
    """(job id, socket path) of every stepd socket of `node` in `spool_dir`."""
    pattern = re.compile(re.escape(node) + r"_([0-9]+)\.([0-9]+)(?:\.([0-9]+))?")
    found = []
    try:
        names = os.listdir(spool_dir)
    except FileNotFoundError:
        return []
    for name in sorted(names):
        m = pattern.fullmatch(name)
        if not m:
            continue
        path = os.path.join(spool_dir, name)
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
        except FileNotFoundError:
            continue
        found.append((str(int(m.group(1))), path))
    return found


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


def live_jobs(spool_dir: str, node: str, *, log=None) -> set[str]:
    """Job ids with at least one live slurmstepd on this node."""
    live: set[str] = set()
    for job_id, path in step_sockets(spool_dir, node):
        if job_id in live:
            continue
        if socket_alive(path):
            live.add(job_id)
        elif log is not None:
            log("debug", f"{path}: no slurmstepd behind it (job {job_id} is not running here)")
    return live
