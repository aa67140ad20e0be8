"""The job as Slurm describes it to a prolog or epilog: read and validate the environment.

slurmd gives Prolog=/Epilog= scripts and SPANK's job_prolog/job_epilog the same variables
(SLURM_JOB_ID, SLURM_JOB_UID, SLURM_JOB_GID, SLURM_JOB_USER, SLURMD_NODENAME, SLURM_CONF,
SLURM_JOB_WORK_DIR, ...). Every error names the variable.
"""

from __future__ import annotations

import pwd
from collections.abc import Mapping

from jobns.errors import UsageError
from jobns.job import Job, is_numeric_id, is_slurm_job_id

# Variables passed on to hook scripts (the rest of the prolog environment is not).
HOOK_VARS = ("SLURM_JOB_WORK_DIR", "SLURM_JOB_MEM", "SLURM_NODE_ALIASES", "SLURM_HET_JOB_ID",
             "SLURM_CONF", "SLURM_JOB_PARTITION", "SLURM_JOB_NODELIST", "SLURM_NODELIST",
             "SLURM_CLUSTER_NAME", "SLURMD_NODENAME")


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if value is None or value == "":
        raise UsageError(f"{name} is not set (jobns slurm prolog/epilog must run as Slurm's "
                         "Prolog/Epilog or from the jobns SPANK plugin)")
    return value


def job_id_from_env(env: Mapping[str, str]) -> str:
    value = _required(env, "SLURM_JOB_ID")
    if not is_slurm_job_id(value):
        raise UsageError(f"SLURM_JOB_ID={value!r}: not a Slurm job id (a decimal number)")
    return value


def _numeric_id(env: Mapping[str, str], name: str) -> int:
    value = _required(env, name)
    if not is_numeric_id(value):
        raise UsageError(f"{name}={value!r}: not a numeric id")
    return int(value)


def job_from_env(env: Mapping[str, str]) -> Job:
    """The Job a prolog creates a namespace for."""
    job_id = job_id_from_env(env)
    uid = _numeric_id(env, "SLURM_JOB_UID")
    gid = _numeric_id(env, "SLURM_JOB_GID")
    user = env.get("SLURM_JOB_USER") or ""
    if not user:
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            raise UsageError(f"SLURM_JOB_USER is not set and uid {uid} (SLURM_JOB_UID) has "
                             "no passwd entry") from None
    if "/" in user or "\0" in user or user.startswith("-"):
        raise UsageError(f"SLURM_JOB_USER={user!r}: not a user name")
    hook_env = {k: env[k] for k in HOOK_VARS if env.get(k)}
    return Job(job_id, uid, gid, user, env=hook_env)


def node_name(explicit: str | None, env: Mapping[str, str] | None = None) -> str:
    """--node, then SLURMD_NODENAME, then slurm.conf as slurmd reads it (see
    jobns.slurm.nodes), then the short hostname."""
    from jobns.slurm.nodes import node_name as find
    return find(explicit, env)
