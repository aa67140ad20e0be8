"""restore (node start: keep the live jobs, remove the rest) and list."""

from __future__ import annotations

import os
from jobns.config.model import NodeConfig
from jobns.delete import delete_locked, purge_trash
from jobns.errors import UsageError
from jobns.job import validate_job_id
from jobns.log import null_log
from jobns.plan import JobPaths
from jobns.store import (TRASH, ensure_base, job_lock, lock_held, owner_alive, pin_inode,
                         prune_index, read_init_pid, read_record, require_base)


class RestoreResult:
    def __init__(self, base: str):
        self.base = base
        self.kept: list[str] = []
        self.removed: list[str] = []
        self.failed: list[str] = []

    @property
    def ok(self) -> bool:
        return not self.failed


def restore(cfg: NodeConfig, live: set[str] | frozenset[str] = frozenset(), *,
            log=null_log) -> RestoreResult:
    """Node start: make base_path usable and remove every job that is not live.

    A job is live if its id is in `live`, or if it was created by a standalone
    `jobns run` whose process is still running."""
    base = ensure_base(cfg, log, thorough=True)
    result = RestoreResult(base=base)
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        name = entry.name
        if name.startswith("."):
            continue
        try:
            validate_job_id(name)
        except UsageError:
            log("debug", f"restore: ignoring {entry.path}: not a job id")
            continue
        if name in live:
            result.kept.append(name)
            continue
        with job_lock(name, optional=True, log=log):
            record = read_record(JobPaths.of(base, name))
            if owner_alive(record):
                result.kept.append(name)
                continue
            outcome = delete_locked(cfg, name, log)
        (result.removed if outcome.ok else result.failed).append(name)
    from jobns import cgroup
    cgroup.prune(base, {e.name for e in os.scandir(base) if not e.name.startswith(".")}, log)
    trash = purge_trash(cfg, log)
    if not trash.ok:
        result.failed.append(TRASH)
    prune_index()
    log("info", f"restore: base_path {base}: kept {len(result.kept)} live jobs, removed "
        f"{len(result.removed)}, failed {len(result.failed)}")
    return result


def list_jobs(cfg: NodeConfig) -> list[dict]:
    """The job namespaces under base_path, with their record and observed state."""
    base = require_base(cfg)
    out = []
    try:
        entries = sorted(os.scandir(base), key=lambda e: (len(e.name), e.name))
    except FileNotFoundError:
        return out
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        paths = JobPaths.of(base, entry.name)
        record = read_record(paths) or {}
        ino = pin_inode(paths.pin)
        init = read_init_pid(paths, ino) if ino else None
        if ino is None:
            # no namespace: being created or deleted right now (its lock is held), or lost
            state = "busy" if lock_held(entry.name) else "lost"
        elif record.get("init_pid") and not init:
            state = "broken"
        else:
            state = record.get("state", "unknown")
        out.append({
            "job_id": entry.name, "user": record.get("user"), "uid": record.get("uid"),
            "created": record.get("created"), "dirs": record.get("dirs"),
            "clone_ns_flags": record.get("clone_ns_flags"), "state": state,
            "init_pid": init, "path": paths.job_dir, "backing": record.get("backing") or {},
            "containment": record.get("containment") or "scan", "cgroup": record.get("cgroup"),
        })
    return out
