"""The lifecycle: restore · create · join · delete · fini (the verbs of Slurm's plugin API).

The public API of the verbs, gathered from the modules that implement them (each verb
lives in one module; import from those directly on a start-up-sensitive path):

- jobns.store    base_path (ensure_base), the job record, the index, per-job locks
- jobns.nschild  the namespace child (unshare, mounts inside the namespace) and PID 1
- jobns.create   create: executes the plan; a failure at any step undoes every earlier one
- jobns.delete   delete, the trash (purge_trash)
- jobns.restore  restore (node start) and list_jobs
- jobns.join     open_job, join, exec_in, run, and the job user's identity

Every operation is safe to repeat after a crash. See docs/architecture.md.
"""

from __future__ import annotations

from jobns.create import create
from jobns.delete import DeleteResult, delete, purge_trash
from jobns.join import (Identity, JobNamespaces, become, exec_in, exit_like, join, open_job,
                        resolve_identity, run, wait_relaying)
from jobns.plan import RECORD_VERSION, JobPaths
from jobns.restore import RestoreResult, list_jobs, restore
from jobns.config.model import DEFAULT_RUNTIME_DIR, RUNTIME_ENV, runtime_dir
from jobns.store import (FAIL_ENV, STATE_READY, TRASH, ensure_base, index_path, job_lock,
                         pin_inode)

__all__ = [
    "create", "delete", "purge_trash", "DeleteResult", "restore", "list_jobs", "RestoreResult",
    "open_job", "join", "exec_in", "run", "JobNamespaces", "Identity", "resolve_identity",
    "become", "exit_like", "wait_relaying", "ensure_base", "job_lock", "pin_inode",
    "index_path", "runtime_dir", "JobPaths", "TRASH", "FAIL_ENV", "RUNTIME_ENV",
    "DEFAULT_RUNTIME_DIR", "RECORD_VERSION", "STATE_READY",
]
