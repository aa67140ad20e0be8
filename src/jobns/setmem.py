"""set-mem: size a job's `size=N%mem` tmpfs mounts once the job's memory is known.

Slurm tells a prolog nothing about the job's memory (SPANK's job_prolog has only the job
id, uid and gid), so `create` mounts such a tmpfs at N% of the node's RAM and records it
as pending (`mem_pending` in the record, `.ns/mem-pending` for the SPANK plugin). The
first step of the job on the node has the job's memory (S_JOB_ALLOC_MEM): the plugin runs
`jobns slurm set-mem` there, before any task, and this remounts each tmpfs with its size.
"""

from __future__ import annotations

import os

from jobns import kernel
from jobns.config.model import NodeConfig
from jobns.delete import job_base
from jobns.errors import OperationError
from jobns.job import validate_job_id
from jobns.log import null_log
from jobns.plan import JobPaths
from jobns.store import (MEM_PENDING, job_lock, read_record, require_base, write_record)
from jobns.values import suppress


def set_mem(cfg: NodeConfig, job_id: str, mem_mb: int, *, log=null_log) -> int:
    """Size the job's pending `size=N%mem` mounts for `mem_mb` MiB (0: the job has no
    memory request; they keep N% of the node's RAM). Returns how many were sized."""
    validate_job_id(job_id)
    require_base(cfg)
    with job_lock(job_id, optional=True, log=log):
        paths = JobPaths.of(job_base(cfg, job_id), job_id)
        record = read_record(paths)
        pending = (record or {}).get("mem_pending") or []
        marker = os.path.join(paths.ns_dir, MEM_PENDING)
        sizes = [(str(p), max(1, mem_mb * 1024 * int(n) // 100)) for p, n in pending]
        if sizes and mem_mb > 0:
            _remount(paths.pin, sizes)
            log("info", f"job {job_id}: " + ", ".join(
                f"{p} size={kb}k ({n}% of {mem_mb} MiB)"
                for (p, kb), (_, n) in zip(sizes, pending)))
        if record is not None and pending:
            record.update(mem_pending=[], mem_mb=mem_mb)
            write_record(paths.record, record)
        with suppress(OSError):
            os.unlink(marker)
    return len(sizes) if mem_mb > 0 else 0


def _remount(pin: str, sizes: list[tuple[str, int]]) -> None:
    """Remount each tmpfs inside the job's mount namespace with its size, keeping its
    flags (a forked child joins the namespace; this process stays in the node's)."""
    try:
        fd = os.open(pin, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise OperationError.from_oserror("set-mem", e, pin) from None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child in the job's mount namespace
        code, msg = 0, b""
        try:
            os.close(r)
            kernel.setns(fd, kernel.CLONE_NEWNS)
            for path, kb in sizes:
                flags = kernel.MS_REMOUNT | (os.statvfs(path).f_flag & kernel.ST_LOCKABLE)
                kernel.mount(None, path, None, flags, f"size={kb}k")
        except OSError as e:
            code, msg = 1, f"{e.filename or ''}: {e.strerror}".encode()
        except BaseException as e:
            code, msg = 1, f"{type(e).__name__}: {e}".encode()
        finally:
            with suppress(OSError):
                os.write(w, msg)
            os._exit(code)
    os.close(w)
    os.close(fd)
    try:
        msg = os.read(r, 4096)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OperationError("set-mem", msg.decode(errors="replace") or "remount failed",
                             path=pin)
