"""slurmd restarts and crashes: running jobs keep their namespaces, dead ones are removed."""

from __future__ import annotations

import os
import socket

import pytest

pytestmark = pytest.mark.slurm

ALICE, BOB = "jobns-alice", "jobns-bob"


def _dead_stepd_socket(cluster, job: str) -> str:
    """A stepd socket whose slurmstepd is gone (bound, then closed: connect is refused)."""
    path = os.path.join(cluster.spool_of(), f"{cluster.node}_{job}.0")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    return path


def test_slurmd_restart_keeps_running_job_and_restore_removes_dead_ones(cluster):
    base = cluster.effective_base()
    job = cluster.sbatch(ALICE, "echo before-restart > /tmp/keep\nsleep 120\n")
    ghost = "4000000001"   # a job that "crashed": its namespace exists, its stepd is gone
    sock = None
    try:
        cluster.wait_running(job)
        pin = os.path.join(base, job, ".ns", "mnt")
        cluster.wait_until(lambda: os.path.exists(os.path.join(base, job, f".{job}", "_tmp",
                                                                "keep")), what="job start")
        ino = os.stat(pin).st_ino

        r = cluster.jobns_cmd("create", ghost, "--user", BOB)
        assert r.returncode == 0, r.stderr
        sock = _dead_stepd_socket(cluster, ghost)
        r = cluster.jobns_cmd("slurm", "live-jobs", "--spool-dir", cluster.spool_of())
        assert r.returncode == 0, r.stderr
        assert job in r.stdout.split() and ghost not in r.stdout.split(), r.stdout

        cluster.restart_slurmd()   # slurmd start runs `jobns slurm restore` (SPANK)

        assert os.stat(pin).st_ino == ino, "the running job's namespace was replaced"
        assert not os.path.lexists(os.path.join(base, ghost)), "restore kept a dead job"
        assert cluster.mounts_under(os.path.join(base, ghost)) == []
        assert "restore on node" in cluster.slurmd_log()
        r = cluster.srun(ALICE, ["cat", "/tmp/keep"], f"--jobid={job}", "--overlap")
        assert r.returncode == 0 and r.stdout == "before-restart\n", (r.stdout, r.stderr)
    finally:
        cluster.cmd(["scancel", job])
        if sock and os.path.exists(sock):
            os.unlink(sock)
        cluster.jobns_cmd("delete", ghost)
    cluster.wait_until(lambda: not os.path.lexists(os.path.join(base, job)), timeout=60,
                       what="the job's directory to be removed after scancel")
    assert [m for m in cluster.mounts_under(base) if m != base] == []


def test_slurmd_sigkill_then_cancel_leaves_nothing(cluster):
    base = cluster.effective_base()
    job = cluster.sbatch(ALICE, "echo leftover > /tmp/leftover\nsleep 300\n")
    try:
        cluster.wait_running(job)
        cluster.wait_until(lambda: os.path.exists(os.path.join(base, job, f".{job}", "_tmp",
                                                                "leftover")), what="job start")
        cluster.kill_slurmd()
        # Its slurmstepds survive the crash: the job still counts as live on the node.
        r = cluster.jobns_cmd("slurm", "live-jobs", "--spool-dir", cluster.spool_of())
        assert job in r.stdout.split(), (r.stdout, r.stderr)
        cluster.cmd(["scancel", job])
        assert os.path.isdir(os.path.join(base, job))   # nobody to clean up while slurmd is down
        cluster.start_slurmd()
        cluster.wait_until(lambda: not os.path.lexists(os.path.join(base, job)), timeout=60,
                           what="the job's directory to be removed after slurmd came back")
        assert [m for m in cluster.mounts_under(base) if m != base] == []
        assert not os.path.lexists(os.path.join(cluster.node_runtime(), "jobs", job))
        cluster.wait_idle(timeout=90)
    finally:
        if cluster.pid_of("slurmd") is None:
            cluster.start_slurmd()
        cluster.cmd(["scancel", job])
