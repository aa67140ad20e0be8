"""restore (node start: keep the live jobs, remove the rest) and list."""

from __future__ import annotations

import os
from jobns.config.model import NodeConfig
from jobns.delete import delete_locked, not_a_job, purge_trash_at, retry_failed_teardowns
from jobns.errors import UsageError
from jobns.job import validate_job_id
from jobns.log import null_log
from jobns.plan import JobPaths
from jobns.store import (STATE_TEARDOWN_FAILED, TRASH, ensure_base, job_lock, known_bases,
                         lock_held, owner_alive, pin_inode, prune_index, read_init_pid,
                         read_record, require_base)


class RestoreResult:
    def __init__(self, base: str):
        self.base = base
        self.kept: list[str] = []
        self.removed: list[str] = []
        self.failed: list[str] = []

    @property
    def ok(self) -> bool:
        return not self.failed


def restore(cfg: NodeConfig, live: set[str] | frozenset[str] | None = frozenset(), *,
            log=null_log) -> RestoreResult:
    """Node start: make base_path usable and remove every job that is positively dead.

    A job is live if its id is in `live`, or if it was created by a standalone
    `jobns run` whose process is still running. With `live` None (nothing tells live
    jobs from dead ones), only jobs whose namespace is gone are removed; the others are
    kept and reported. Jobs in every base this node used since boot are looked at (a
    base_path changed while jobs ran), each only by the node that created it."""
    base = ensure_base(cfg, log, thorough=True)
    result = RestoreResult(base=base)
    bases = [base]
    for other in known_bases():
        if other not in bases and os.path.isdir(other):
            bases.append(other)
    unsure: list[str] = []
    for b in bases:
        _restore_base(cfg, b, live, result, unsure, log)
    if not retry_failed_teardowns(cfg, log):
        result.failed.append("teardown-failed")
    prune_index()
    if unsure:
        log("warning", f"restore: kept {len(unsure)} jobs whose namespace is still alive "
            f"({', '.join(unsure[:10])}): nothing tells whether they still run; pass the "
            "live jobs (--live) or --all-dead")
    log("info", f"restore: base_path {' '.join(bases)}: kept {len(result.kept)} live jobs, "
        f"removed {len(result.removed)}, failed {len(result.failed)}")
    return result


def _restore_base(cfg: NodeConfig, base: str, live, result: RestoreResult,
                  unsure: list[str], log) -> None:
    for entry in sorted(os.scandir(base), key=lambda e: e.name):
        name = entry.name
        if name.startswith("."):
            continue
        try:
            validate_job_id(name)
        except UsageError:
            log("debug", f"restore: ignoring {entry.path}: not a job id")
            continue
        if live is not None and name in live:
            result.kept.append(name)
            continue
        paths = JobPaths.of(base, name)
        why = not_a_job(base, paths)
        if why:
            log("debug", f"restore: ignoring {paths.job_dir}: {why}")
            continue
        with job_lock(name, optional=True, log=log):
            record = read_record(paths)
            if owner_alive(record):
                result.kept.append(name)
                continue
            owner = (record or {}).get("node")
            if owner and owner != cfg.node_name:
                log("debug", f"restore: {paths.job_dir} belongs to node {owner}; left alone")
                continue
            if live is None and pin_inode(paths.pin) is not None:
                result.kept.append(name)
                unsure.append(name)
                continue
            outcome = delete_locked(cfg, name, log, base=base)
        (result.removed if outcome.ok else result.failed).append(name)
    from jobns import cgroup
    cgroup.prune(base, {e.name for e in os.scandir(base) if not e.name.startswith(".")}, log)
    trash = purge_trash_at(base, log)
    if not trash.ok:
        result.failed.append(os.path.join(base, TRASH))


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
        if record.get("state") == STATE_TEARDOWN_FAILED:
            state = STATE_TEARDOWN_FAILED
        elif ino is None:
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
    out.extend(_trash_rows(base))
    return out


def _trash_rows(base: str) -> list[dict]:
    """What failed deletes left in the trash: one teardown-failed row per job."""
    trash = os.path.join(base, TRASH)
    try:
        names = sorted(os.listdir(trash))
    except OSError:
        return []
    rows = []
    for name in names:
        job_id = name.rsplit(".", 1)[0]
        rows.append({"job_id": job_id, "user": None, "uid": None, "created": None,
                     "dirs": None, "clone_ns_flags": None, "state": STATE_TEARDOWN_FAILED,
                     "init_pid": None, "path": os.path.join(trash, name), "backing": {}})
    return rows
