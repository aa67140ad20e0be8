"""What each job holds: bytes and inodes in its private directories.

- A directory bind-mounted from disk is measured by walking its backing directory on the
  host (`<base>/<J>/.<J>/<mangled>`): allocated bytes (st_blocks) and inodes. The walk
  never follows a symlink and never crosses into another filesystem.
- A tmpfs that lives only inside the job's namespace (`/dev/shm`, tmpfs dirs) is measured
  with statvfs from a short-lived child that joins the job's mount namespace.
"""

from __future__ import annotations

import json
import os
import stat

from jobns import kernel
from jobns.errors import OperationError
from jobns.plan import JobPaths


def walk_usage(top: str) -> dict:
    """Allocated bytes, apparent bytes and inodes under `top` (top excluded), not
    following symlinks, staying on top's filesystem. Missing dirs give zeros."""
    out = {"bytes": 0, "apparent_bytes": 0, "inodes": 0, "skipped_mounts": 0}
    try:
        dev = os.lstat(top).st_dev
    except OSError:
        return out
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode) and st.st_dev != dev:
                    out["skipped_mounts"] += 1
                    continue
                out["inodes"] += 1
                out["bytes"] += st.st_blocks * 512
                out["apparent_bytes"] += st.st_size
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return out


def _tmpfs_usage_in_ns(paths: JobPaths, job_id: str, targets: list[str]) -> dict:
    """statvfs of the tmpfs mounts at `targets` inside the job's namespaces (joined by
    a short-lived child, the way exec joins them)."""
    from jobns.join import join, open_namespaces
    kernel.require_single_threaded("measuring a job namespace")
    handle = open_namespaces(paths, job_id)
    try:
        r, w = os.pipe()
        pid = os.fork()
    except BaseException:
        handle.close()
        raise
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(r)
            join(handle)
            fstypes = {}
            for m in kernel.mountinfo():
                fstypes[m.mount_point] = m.fstype
            result = {}
            for t in targets:
                if fstypes.get(t) != "tmpfs":
                    continue
                sv = os.statvfs(t)
                result[t] = {"bytes": (sv.f_blocks - sv.f_bfree) * sv.f_frsize,
                             "inodes": sv.f_files - sv.f_ffree,
                             "size": sv.f_blocks * sv.f_frsize}
            os.write(w, json.dumps(result).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    handle.close()
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        return {}
    return json.loads(data)


def job_usage(base: str, job_id: str, dirs: list[str],
              backing: dict[str, str] | None = None) -> dict:
    """Usage per private dir of one job: {dir: {kind, bytes, inodes, ...}}. `backing`
    maps a dir to its backing directory (from the job record); by default Slurm's
    `<base>/<J>/.<J>/<mangled>`."""
    from jobns.store import pin_inode
    paths = JobPaths.of(base, job_id)
    usage: dict[str, dict] = {}
    in_ns = {}
    if pin_inode(paths.pin) is not None:
        try:
            in_ns = _tmpfs_usage_in_ns(paths, job_id, list(dirs))
        except (OSError, OperationError):
            in_ns = {}
    for d in dirs:
        if d in in_ns:
            usage[d] = {"kind": "tmpfs", **in_ns[d]}
        else:
            src = (backing or {}).get(d) or paths.backing(d)
            if os.path.isdir(src) and src.startswith(paths.job_dir + "/"):
                usage[d] = {"kind": "disk", **walk_usage(src)}
    return usage


def human(n: int) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)
