"""create: build a job's namespace by executing its plan (jobns.plan) step by step.

A failure at any step undoes every earlier step this create made (nothing stays mounted or
on disk; a create refused because the job exists touches nothing of it) and raises an
OperationError naming the step; the log says whether everything was undone. Host steps run here; the steps inside the new
namespace run in the namespace child (jobns.nschild).
"""

from __future__ import annotations

import errno
import os
import time
from jobns import kernel
from jobns.config.model import NodeConfig
from jobns.delete import DeleteResult, delete_locked, kill_and_wait, start_sweep
from jobns.errors import OperationError
from jobns.job import Job, validate_job_id
from jobns.log import null_log
from jobns.nschild import (NamespaceChild, child_error, reap, spawn_namespace_child,
                           warn_init_oom)
from jobns.plan import Op, Plan, Step, build_plan, step_error
from jobns.store import (MEM_PENDING, STATE_READY, ensure_base_path, fail_point, index_path, job_lock,
                         select_node,
                         ns_inode, pin_inode, read_init_pid, read_record, set_index,
                         write_record)
from jobns.values import suppress


def create(cfg: NodeConfig, job: Job, *, log=null_log, owner_pid: int | None = None) -> dict:
    """Build the job's namespace. Returns the job record. Raises OperationError."""
    validate_job_id(job.job_id)
    plan = build_plan(cfg, job)
    select_node(cfg)
    with job_lock(job.job_id):
        return _create_locked(plan, log, owner_pid)


def _existing_job(plan: Plan, log) -> None:
    """Called when <base>/<J> exists: refuse a job that may be alive, replace one that is
    provably dead (a PID-namespace job whose PID 1 is gone; a job whose namespace pin is
    gone, as after a reboot). A mount-only job with no process left is not provably dead
    (a process may join it at any moment): it is refused, harmlessly."""
    paths = plan.paths
    record = read_record(paths)
    job_id = plan.job.job_id
    who = f" (user {record.get('user')}, created {record.get('created')})" if record else ""
    ino = pin_inode(paths.pin)
    if ino is not None:
        why = _provably_dead(paths, record, ino)
        if why is None:
            raise OperationError("mkdir-job", f"job {job_id} already exists{who}; "
                                 "delete it first", path=paths.job_dir, errno=errno.EEXIST)
        log("warning", f"job {job_id}: the existing job{who} is dead: {why}; replacing it")
    else:
        state = record.get("state") if record else "unknown"
        log("warning", f"job {job_id}: the existing job directory{who} is stale: it has no "
            f"namespace (its pin is gone, as after a reboot; state {state}); replacing it")
    result = delete_locked(plan.cfg, job_id, log)
    if not result.ok:
        raise OperationError("mkdir-job", "could not clean the stale job directory: "
                             + result.summary(), path=paths.job_dir, errno=errno.EEXIST)


def _provably_dead(paths, record: dict | None, ino: int) -> str | None:
    """Why the job pinned at `ino` can hold no process any more, or None if it may."""
    if not record or "CLONE_NEWPID" not in (record.get("clone_ns_flags") or []):
        return None
    if read_init_pid(paths, ino) is not None:
        return None
    init = record.get("init_pid")
    if isinstance(init, int) and ns_inode(init, "mnt") == ino:
        return None     # PID 1 runs, but the pid file does not say so: not provable
    return f"PID 1 (pid {init}) of its PID namespace is gone"


class _Run:
    """What a create has made so far: read by the ops and by the undo."""

    __slots__ = ("plan", "log", "paths", "job_id", "owns_dir", "owns_index", "child",
                 "init_pid", "record", "cgroup")

    def __init__(self, plan: Plan, log, record: dict):
        self.plan, self.log, self.record = plan, log, record
        self.paths, self.job_id = plan.paths, plan.job.job_id
        self.owns_dir = self.owns_index = False
        self.cgroup: str | None = None
        self.child: NamespaceChild | None = None
        self.init_pid: int | None = None


# ------------------------------------------------------------------- the host ops
# One function per op (jobns.plan.Op), reading the step's fields and what the run made.

def _ensure_base(step: Step, run: _Run) -> None:
    ensure_base_path(step.path, step.mode, run.log, parent=step.source)


def _job_dir(step: Step, run: _Run) -> None:
    try:
        os.mkdir(step.path, step.mode)
    except FileExistsError:
        _existing_job(run.plan, run.log)
        os.mkdir(step.path, step.mode)
    run.owns_dir = True
    os.chmod(step.path, step.mode)


def _mkdir(step: Step, run: _Run) -> None:
    os.mkdir(step.path, step.mode)
    os.chmod(step.path, step.mode)
    if step.owner:
        os.chown(step.path, *step.owner, follow_symlinks=False)


def _pin_file(step: Step, run: _Run) -> None:
    os.close(os.open(step.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, step.mode))


def _hook(step: Step, run: _Run, ns_pid: int | None = None) -> None:
    from jobns import hooks
    env = dict(step.env)
    if ns_pid is not None:
        env[hooks.NS_PID_VAR] = str(ns_pid)
    result = hooks.run_hook(step.hook, step.path, env, step.timeout, log=run.log)
    if not result.ok:
        raise result.as_error(step.name)


def _user_map_hook(step: Step, run: _Run) -> None:
    _hook(step, run, ns_pid=run.child.pid)
    _check_user_maps(run.child.pid, step)


def _unshare(step: Step, run: _Run) -> None:
    from jobns import cgroup
    run.cgroup = cgroup.make_group(run.job_id, run.paths.base, run.log)
    join = bool(run.cgroup) and cgroup.tasks_join(run.cgroup)
    run.record.update(containment=cgroup.CGROUP if run.cgroup else cgroup.SCAN,
                      cgroup=run.cgroup, tasks_join=join)
    if join:    # the SPANK plugin moves every task of the job into the group
        with open(os.path.join(run.paths.ns_dir, cgroup.MARKER), "w") as f:
            f.write(run.cgroup + "\n")
    run.child = spawn_namespace_child(step, run.plan.in_namespace(), run.job_id)
    if run.cgroup:      # before PID 1 is forked: it and all it starts stay in the group
        cgroup.enter(run.cgroup, run.child.pid)
    msg = run.child.recv()
    if msg.get("event") != "unshared":
        raise child_error(msg)


def _user_map(step: Step, run: _Run) -> None:
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{run.child.pid}/{name}", "w") as f:
            f.write(step.data)


def _pin(step: Step, run: _Run) -> None:
    ns = f"/proc/{run.child.pid}/ns/mnt"
    try:
        kernel.mount(ns, step.path, None, kernel.MS_BIND)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        # base_path lost its private propagation since it was checked (a pin on a shared
        # mount is refused): check it for real, and retry once
        ensure_base_path(run.paths.base, None, run.log, thorough=True)
        kernel.mount(ns, step.path, None, kernel.MS_BIND)


def _pid_file(step: Step, run: _Run) -> None:
    with open(step.path, "w") as f:
        f.write(f"{run.init_pid}\n")


def _record(step: Step, run: _Run) -> None:
    init_pid = run.init_pid
    run.record.update(state=STATE_READY, init_pid=init_pid,
                      init_start=kernel.proc_start_time(init_pid) if init_pid else None,
                      pin_inode=pin_inode(run.paths.pin),
                      userns_inode=_own_userns_inode(run.paths.pin))
    write_record(step.path, run.record)
    if run.record.get("mem_pending"):
        # the SPANK plugin's cue to pass the job's memory from its first step
        with open(os.path.join(run.paths.ns_dir, MEM_PENDING), "w") as f:
            f.write("".join(f"{p} {n}%\n" for p, n in run.record["mem_pending"]))


def _own_userns_inode(pin: str) -> int | None:
    """The inode of the job's own user namespace (None: it has none), for containment by
    scan: processes in it or below it are the job's."""
    try:
        fd = os.open(pin, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        user = kernel.ns_get_userns(fd)
        try:
            ino = os.fstat(user).st_ino
        finally:
            os.close(user)
        return None if ino == os.stat("/proc/self/ns/user").st_ino else ino
    except OSError:
        return None
    finally:
        os.close(fd)


def _index(step: Step, run: _Run) -> None:
    run.owns_index = True
    set_index(run.job_id, step.source)


HOST_OPS = {
    Op.ENSURE_BASE: _ensure_base, Op.JOB_DIR: _job_dir, Op.MKDIR: _mkdir,
    Op.PIN_FILE: _pin_file, Op.HOOK: _hook, Op.USER_MAP_HOOK: _user_map_hook,
    Op.UNSHARE: _unshare, Op.USER_MAP: _user_map, Op.PIN: _pin, Op.PID_FILE: _pid_file,
    Op.RECORD: _record, Op.INDEX: _index,
}


def _create_locked(plan: Plan, log, owner_pid: int | None) -> dict:
    cfg, job, paths = plan.cfg, plan.job, plan.paths
    t0 = time.monotonic()
    record = plan.record()
    record.update(created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), created_epoch=time.time(),
                  state=STATE_READY)
    if owner_pid is not None:
        record["owner"] = {"pid": owner_pid, "start": kernel.proc_start_time(owner_pid)}
    run = _Run(plan, log, record)
    step: Step | None = None
    try:
        for step in plan.host_before() + plan.host_between():
            fail_point(step.name)
            HOST_OPS[step.kind](step, run)
        step = None
        child = run.child
        child.send(b"G")
        msg = child.recv()
        if msg.get("event") != "ready":
            raise child_error(msg)
        run.init_pid = msg.get("init_pid")
        record["marks"] = msg.get("marks") or []
        if run.init_pid:
            warn_init_oom(run.init_pid, job.job_id, log)
        reap(child.pid)
        child.close()
        run.child = None
        for step in plan.host_after():
            fail_point(step.name)
            HOST_OPS[step.kind](step, run)
    except BaseException as exc:
        failed = step.name if step is not None else "namespace"
        undo = _undo_create(run)
        if isinstance(exc, OperationError):
            err = exc
        elif isinstance(exc, OSError):
            err = step_error(step, exc) if step is not None else \
                OperationError.from_oserror(failed, exc)
        elif isinstance(exc, KeyboardInterrupt):
            raise
        else:
            err = OperationError(failed, f"{type(exc).__name__}: {exc}")
        if undo is None:
            done = "nothing to undo"
        elif undo.ok:
            done = "everything undone"
        else:
            done = f"undo incomplete: {undo.summary()}"
        log("error", f"job {job.job_id}: create failed at {err}; {done}")
        if err is exc:
            raise
        raise err from exc
    ms = (time.monotonic() - t0) * 1000
    start_sweep(cfg.base_path, log)   # leftovers of killed deletes, in the background
    contain = f"cgroup {run.cgroup}" if run.cgroup else "scan (no writable cgroup2)"
    log("info", f"job {job.job_id}: created namespace for {job.user} (uid {job.uid}) "
        f"at {paths.job_dir} [{','.join(cfg.dirs)}; {'|'.join(cfg.clone_ns_flags)}; "
        f"containment {contain}] in {ms:.1f} ms")
    return record


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


def _undo_create(run: _Run) -> DeleteResult | None:
    """Undo what this create made, and only that (a refused create must not touch the
    live job's index entry or directory). Returns the removal's result, or None if this
    create made nothing."""
    plan, log, child = run.plan, run.log, run.child
    if child is not None:
        with suppress(OSError):
            os.kill(child.pid, kernel.SIGKILL)
        reap(child.pid)
        child.close()
    if run.init_pid:
        kill_and_wait(run.init_pid, None)
    if run.cgroup:
        from jobns import cgroup
        cgroup.kill_group(run.cgroup, log)
    if run.owns_index:
        with suppress(OSError):
            os.unlink(index_path(run.job_id))
    if not run.owns_dir:
        return None
    return delete_locked(plan.cfg, run.job_id, log, run_epilog=False)
