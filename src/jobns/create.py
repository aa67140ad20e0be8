"""create: build a job's namespace by executing its plan (jobns.plan) step by step.

A failure at any step undoes every earlier step (nothing stays mounted or on disk) and
raises an OperationError naming the step. Host steps run here; the steps inside the new
namespace run in the namespace child (jobns.nschild).
"""

from __future__ import annotations

import errno
import os
import time
from jobns import kernel
from jobns.config.model import NodeConfig
from jobns.delete import delete_locked, kill_and_wait
from jobns.errors import OperationError
from jobns.job import Job, validate_job_id
from jobns.log import null_log
from jobns.nschild import (NamespaceChild, child_error, reap, spawn_namespace_child,
                           warn_init_oom)
from jobns.plan import Plan, Step, build_plan
from jobns.store import (RECORD_VERSION, STATE_READY, ensure_base, fail_point, index_path,
                         job_lock, pin_inode, read_record, set_index, write_record)
from jobns.values import suppress


def create(cfg: NodeConfig, job: Job, *, log=null_log, owner_pid: int | None = None) -> dict:
    """Build the job's namespace. Returns the job record. Raises OperationError."""
    validate_job_id(job.job_id)
    plan = build_plan(cfg, job)
    with job_lock(job.job_id):
        return _create_locked(plan, log, owner_pid)


def _existing_job(plan: Plan, log) -> None:
    """Called when <base>/<J> exists: refuse a live job, clean a stale one."""
    paths = plan.paths
    record = read_record(paths)
    if pin_inode(paths.pin) is not None:
        who = f" (user {record.get('user')}, created {record.get('created')})" if record else ""
        raise OperationError("mkdir-job", f"job {plan.job.job_id} already exists{who}; "
                             "delete it first", path=paths.job_dir, errno=errno.EEXIST)
    log("warning", f"job {plan.job.job_id}: stale job directory without a namespace "
        f"(state {record.get('state') if record else 'unknown'}); cleaning it before re-creating")
    result = delete_locked(plan.cfg, plan.job.job_id, log)
    if not result.ok:
        raise OperationError("mkdir-job", "could not clean the stale job directory: "
                             + result.summary(), path=paths.job_dir, errno=errno.EEXIST)


def _create_locked(plan: Plan, log, owner_pid: int | None) -> dict:
    cfg, job, paths = plan.cfg, plan.job, plan.paths
    t0 = time.monotonic()
    record = {
        "version": RECORD_VERSION, "job_id": job.job_id, "uid": job.uid, "gid": job.gid,
        "user": job.user, "node": cfg.node_name, "created": time.strftime(
            "%Y-%m-%dT%H:%M:%S%z"), "created_epoch": time.time(), "state": STATE_READY,
        "base_path": cfg.base_path, "dirs": list(plan.job_dirs()),
        "backing": plan.backing_dirs(),
        "clone_ns_flags": list(cfg.clone_ns_flags), "shared": cfg.shared,
        "config": cfg.source, "env": dict(job.env), "init_pid": None,
    }
    if owner_pid is not None:
        record["owner"] = {"pid": owner_pid, "start": kernel.proc_start_time(owner_pid)}
    owns_dir = False
    child: NamespaceChild | None = None
    init_pid: int | None = None
    step: Step | None = None
    try:
        for step in plan.host_before():
            fail_point(step.name)
            if step.kind == "ensure_base":
                ensure_base(cfg, log)
            elif step.kind == "mkdir":
                if step.name == "mkdir-job":
                    try:
                        os.mkdir(step.path, 0o700)
                    except FileExistsError:
                        _existing_job(plan, log)
                        os.mkdir(step.path, 0o700)
                    owns_dir = True
                    os.chmod(step.path, 0o700)
                else:
                    os.mkdir(step.path, step.args["mode"])
                    os.chmod(step.path, step.args["mode"])
                    if step.args.get("owner"):
                        os.chown(step.path, *step.args["owner"], follow_symlinks=False)
            elif step.kind == "pin_file":
                os.close(os.open(step.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                 0o400))
            elif step.kind == "hook":
                _run_hook_step(step, plan, log)
            elif step.kind == "unshare":
                child = spawn_namespace_child(plan)
                msg = child.recv()
                if msg.get("event") != "unshared":
                    raise child_error(msg)
        for step in plan.host_between():
            fail_point(step.name)
            if step.kind == "usermap":
                for name in ("uid_map", "gid_map"):
                    with open(f"/proc/{child.pid}/{name}", "w") as f:
                        f.write("0 0 4294967295\n")
            elif step.kind == "hook":
                _run_hook_step(step, plan, log, ns_pid=child.pid)
                if step.args.get("hook") == "user_ns_script":
                    _check_user_maps(child.pid, step)
            elif step.kind == "pin":
                try:
                    kernel.mount(f"/proc/{child.pid}/ns/mnt", paths.pin, None, kernel.MS_BIND)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    # base_path lost its private propagation since it was checked (a pin
                    # on a shared mount is refused): check it for real, and retry once
                    ensure_base(cfg, log, thorough=True)
                    kernel.mount(f"/proc/{child.pid}/ns/mnt", paths.pin, None, kernel.MS_BIND)
        step = None
        child.send(b"G")
        msg = child.recv()
        if msg.get("event") != "ready":
            raise child_error(msg)
        init_pid = msg.get("init_pid")
        if init_pid:
            warn_init_oom(init_pid, job.job_id, log)
        reap(child.pid)
        child.close()
        child = None
        for step in plan.host_after():
            fail_point(step.name)
            if step.kind == "ready":
                if init_pid:
                    with open(paths.pid1, "w") as f:
                        f.write(f"{init_pid}\n")
                record.update(state=STATE_READY, init_pid=init_pid,
                              init_start=kernel.proc_start_time(init_pid) if init_pid else None,
                              pin_inode=pin_inode(paths.pin))
                write_record(paths, record)
            elif step.kind == "index":
                set_index(job.job_id, paths.job_dir)
            elif step.kind == "hook":
                _run_hook_step(step, plan, log)
    except BaseException as exc:
        failed = step.name if step is not None else "namespace"
        _undo_create(plan, owns_dir, child, init_pid, log)
        if isinstance(exc, OperationError):
            err = exc
        elif isinstance(exc, OSError):
            err = OperationError.from_oserror(failed, exc, getattr(step, "path", None))
        elif isinstance(exc, KeyboardInterrupt):
            raise
        else:
            err = OperationError(failed, f"{type(exc).__name__}: {exc}")
        log("error", f"job {job.job_id}: create failed at {err}; everything undone")
        raise err from None
    ms = (time.monotonic() - t0) * 1000
    log("info", f"job {job.job_id}: created namespace for {job.user} (uid {job.uid}) "
        f"at {paths.job_dir} [{','.join(cfg.dirs)}; {'|'.join(cfg.clone_ns_flags)}] "
        f"in {ms:.1f} ms")
    return record


def _run_hook_step(step: Step, plan: Plan, log, ns_pid: int | None = None) -> None:
    from jobns import hooks
    result = hooks.run_configured(step.args["hook"], plan.cfg, plan.job,
                                  job_dir=plan.paths.job_dir,
                                  slurm_conf=plan.job.env.get("SLURM_CONF"),
                                  ns_pid=ns_pid, log=log)
    if result is not None and not result.ok:
        why = ("timed out" if result.timed_out else
               f"killed by signal {result.signal}" if result.signal else
               f"exit status {result.status}")
        tail = result.output.strip().splitlines()[-1:] if result.output else []
        raise OperationError(step.name, f"{why}" + (f": {tail[0]}" if tail else ""),
                             path=step.path)


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


def _undo_create(plan: Plan, owns_dir: bool, child: NamespaceChild | None, init_pid: int | None,
                 log) -> None:
    if child is not None:
        with suppress(OSError):
            os.kill(child.pid, kernel.SIGKILL)
        reap(child.pid)
        child.close()
    if init_pid:
        kill_and_wait(init_pid, None)
    with suppress(OSError):
        os.unlink(index_path(plan.job.job_id))
    if not owns_dir:
        return
    result = delete_locked(plan.cfg, plan.job.job_id, log, run_epilog=False)
    if not result.ok:
        log("error", f"job {plan.job.job_id}: undo after a failed create left "
            f"{result.summary()}")
