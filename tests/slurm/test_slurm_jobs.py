"""Jobs on a real Slurm: every task of every step lands in its job's namespaces.

Runs as root against the session cluster of conftest.py (users jobns-alice, jobns-bob).
"""

from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.slurm

ALICE, BOB = "jobns-alice", "jobns-bob"


def _mounts_below(cluster, path: str) -> list[str]:
    return [m for m in cluster.mounts_under(path) if m != path]


def test_private_tmp_and_dev_shm(cluster, tmp_path):
    # Markers on the node that a job must not see.
    # (named after this process: other test runs may share the node's /tmp)
    marker = f"jobns-slurm-test-host-marker-{os.getpid()}"
    host_tmp = cluster.node_path(f"/tmp/{marker}")
    host_shm = cluster.node_path(f"/dev/shm/{marker}")
    for p in (host_tmp, host_shm):
        with open(p, "w") as f:
            f.write("host\n")
    try:
        r = cluster.srun(ALICE, ["ls", "-al", "/tmp"])
        assert r.returncode == 0, r.stderr
        lines = [ln for ln in r.stdout.splitlines() if not ln.startswith("total")]
        assert [ln.split()[-1] for ln in lines] == [".", ".."], r.stdout
        dot = lines[0].split()
        assert dot[0] == "drwx------" and dot[2] == ALICE, r.stdout

        r = cluster.srun(ALICE, ["sh", "-c", "findmnt -n -o FSTYPE,SOURCE /dev/shm; "
                                 "ls -A /dev/shm /tmp; echo inside > /dev/shm/job-file; "
                                 "stat -c '%U %a' /tmp"])
        assert r.returncode == 0, r.stderr
        out = r.stdout.splitlines()
        assert out[0].split() == ["tmpfs", "tmpfs"], r.stdout
        assert marker not in r.stdout
        assert out[-1] == f"{ALICE} 700"
        assert not os.path.exists(cluster.node_path("/dev/shm/job-file")), \
            "job's /dev/shm leaked to the node"
    finally:
        for p in (host_tmp, host_shm):
            os.unlink(p)


def test_steps_share_jobs_do_not(cluster):
    base = cluster.effective_base()
    a = cluster.sbatch(ALICE, "echo from-batch > /tmp/shared\n"
                              "srun -n2 -O sh -c 'cat /tmp/shared && echo task-$SLURM_PROCID "
                              ">> /tmp/tasks'\nsleep 120\n")
    b = None
    try:
        cluster.wait_running(a)
        job_dir = os.path.join(base, a)
        backing = os.path.join(job_dir, f".{a}", "_tmp")
        # root sees the job's /tmp in its backing directory; the batch step's srun -n2
        # (both tasks) read the batch script's file and appended to a shared one.
        cluster.wait_until(lambda: os.path.exists(os.path.join(backing, "tasks")) and
                           len(open(os.path.join(backing, "tasks")).read().split()) == 2,
                           what="both tasks of the in-batch srun -n2")
        with open(os.path.join(backing, "shared")) as f:
            assert f.read() == "from-batch\n"
        with open(os.path.join(backing, "tasks")) as f:
            assert sorted(f.read().split()) == ["task-0", "task-1"]
        assert os.stat(job_dir).st_mode & 0o777 == 0o700

        # Step 1 writes, step 2 and every task of an srun -n2 step read it.
        r = cluster.srun(ALICE, ["sh", "-c", "echo step1 > /tmp/from-step1"],
                         f"--jobid={a}", "--overlap")
        assert r.returncode == 0, r.stderr
        r = cluster.srun(ALICE, ["sh", "-c", "echo $SLURM_PROCID:$(cat /tmp/from-step1 "
                                 "/tmp/shared | tr '\\n' ,)"],
                         f"--jobid={a}", "--overlap", "-n2", "-O")
        assert r.returncode == 0, r.stderr
        assert sorted(r.stdout.split()) == ["0:step1,from-batch,", "1:step1,from-batch,"]

        # Another job of the same user, running at the same time, has its own /tmp.
        r = cluster.srun(ALICE, ["sh", "-c", "ls -A /tmp"])
        assert r.returncode == 0 and r.stdout.strip() == "", (r.stdout, r.stderr)

        # Another job of another user, running at the same time, sees none of it.
        b = cluster.sbatch(BOB, "sleep 120\n")
        cluster.wait_running(b)
        r = cluster.srun(BOB, ["sh", "-c", "ls -A /tmp; cat /tmp/shared; "
                               f"ls {backing}; ls {base}/{b}"], f"--jobid={b}", "--overlap")
        assert "from-batch" not in r.stdout and "step1" not in r.stdout
        assert "shared" not in r.stdout and "tasks" not in r.stdout
        assert "No such file or directory" in r.stderr  # cat /tmp/shared
        # base_path is hidden (or at least closed) inside the job
        assert "Permission denied" in r.stderr or "No such file" in r.stderr
        # bob's job has its own directory, owned by bob.
        assert os.stat(os.path.join(base, b, f".{b}", "_tmp")).st_uid == \
            cluster.users[BOB].pw_uid
    finally:
        cluster.cmd(["scancel", a] + ([b] if b else []))
    for job in [a] + ([b] if b else []):
        cluster.wait_until(lambda: not os.path.lexists(os.path.join(base, job)), timeout=60,
                           what=f"{base}/{job} to be removed after the job ended")
        assert not os.path.lexists(os.path.join(cluster.node_runtime(), "jobs", job))
    assert _mounts_below(cluster, base) == []


def test_pid_namespace(cluster):
    cluster.set_namespace_config(clone_ns_flags=["CLONE_NEWPID"])
    r = cluster.srun(ALICE, ["sh", "-c", "echo self=$$; ps -e -o pid=,comm="], "-n2", "-O")
    assert r.returncode == 0, r.stderr
    procs = [ln.split(None, 1) for ln in r.stdout.splitlines() if not ln.startswith("self=")]
    comms = {c for _, c in procs}
    assert {"slurmd", "slurmctld", "munged"}.isdisjoint(comms), r.stdout
    # A "slurmstepd" here is the other task, forked and not yet exec'd (one task's ps can
    # run in that moment): it is in the job's namespace, so its pid is small like the rest.
    assert ["1", "jobns-init"] in procs, r.stdout
    # only the job: PID 1, the two task shells (and what they run)
    assert all(int(p) < 100 for p, _ in procs), r.stdout
    selves = sorted(int(ln.split("=")[1]) for ln in r.stdout.splitlines()
                    if ln.startswith("self="))
    assert len(selves) == 2 and all(1 < s < 100 for s in selves), r.stdout
    # none of the plugin's descriptors (pin, pidfd, output file) reach the task
    r = cluster.srun(ALICE, ["sh", "-c", "ls -l /proc/$$/fd"])
    assert r.returncode == 0, r.stderr
    fds = [ln.split()[-3:] for ln in r.stdout.splitlines()[1:]]
    assert all(fd[0] in {"0", "1", "2"} for fd in fds), r.stdout


def test_failing_init_script_fails_the_job_and_leaves_nothing(cluster):
    base = cluster.effective_base()
    script = os.path.join(cluster.scripts, "refuse.sh")
    with open(script, "w") as f:
        f.write('#!/bin/sh\necho "site check refuses job $SLURM_JOB_ID" >&2\nexit 3\n')
    os.chmod(script, 0o755)
    before = set(os.listdir(base)) if os.path.isdir(base) else set()
    log_size = os.path.getsize(os.path.join(cluster.log_dir, f"slurmd-{cluster.node}.log"))
    cluster.set_namespace_config(init_script=script)

    r = cluster.srun(ALICE, ["true"], timeout=60)
    assert r.returncode != 0
    assert "Prolog failure" in r.stderr or "prolog" in r.stderr.lower(), r.stderr

    with open(os.path.join(cluster.log_dir, f"slurmd-{cluster.node}.log"), errors="replace") as f:
        f.seek(log_size)
        new_log = f.read()
    assert "site check refuses job" in new_log, new_log
    assert "jobns slurm prolog` failed" in new_log, new_log
    # jobns' own lines keep their level: no doubled "error: jobns: error:", and the
    # successful rollback ("deleted ...") is information, not an error
    assert "error: jobns: error:" not in new_log, new_log
    assert not [ln for ln in new_log.splitlines() if "error:" in ln and ": deleted " in ln], \
        new_log
    after = set(os.listdir(base)) if os.path.isdir(base) else set()
    assert {n for n in after - before if not n.startswith(".")} == set()
    assert _mounts_below(cluster, base) == []
    # Like any failing Prolog, Slurm drains the node ("Prolog error"); the fixture resumes it.
    reason = cluster.cmd(["sinfo", "-h", "-R", "-o", "%E"]).stdout
    assert "Prolog error" in reason, reason


def test_prolog_epilog_scripts_instead_of_spank_prolog(cluster):
    """slurm.conf Prolog=/Epilog= run `jobns slurm prolog/epilog`; the plugin only joins."""
    base = cluster.effective_base()
    cluster.use_prolog_scripts(True)
    try:
        with open(cluster.plugstack) as f:
            assert "prolog=no" in f.read()
        log_size = os.path.getsize(os.path.join(cluster.log_dir, f"slurmd-{cluster.node}.log"))
        job = cluster.sbatch(ALICE, "echo via-scripts > /tmp/x\nsleep 120\n")
        cluster.wait_running(job)
        backing = os.path.join(base, job, f".{job}", "_tmp", "x")
        cluster.wait_until(lambda: os.path.exists(backing), what="the batch script's file")
        r = cluster.srun(ALICE, ["sh", "-c", "cat /tmp/x; ls -ld /tmp"], f"--jobid={job}",
                         "--overlap")
        assert r.returncode == 0 and r.stdout.startswith("via-scripts\n"), (r.stdout, r.stderr)
        cluster.cmd(["scancel", job])
        cluster.wait_until(lambda: not os.path.lexists(os.path.join(base, job)), timeout=60,
                           what="Epilog= to remove the job's directory")
        with open(os.path.join(cluster.log_dir, f"slurmd-{cluster.node}.log"), errors="replace") as f:
            f.seek(log_size)
            new_log = f.read()
        # the SPANK job_prolog did not run jobns (it would log "created namespace")
        assert "created namespace" not in new_log, new_log
    finally:
        cluster.use_prolog_scripts(False)


def test_disabled_node_runs_jobs_without_namespace(cluster):
    cluster.set_namespace_config(base_path="none")
    marker = f"/tmp/jobns-slurm-test-disabled-marker-{os.getpid()}"
    with open(cluster.node_path(marker), "w") as f:
        f.write("host\n")
    try:
        r = cluster.srun(ALICE, ["cat", marker])
        assert r.returncode == 0 and r.stdout == "host\n", (r.stdout, r.stderr)
        assert os.path.exists(os.path.join(cluster.node_runtime(), "slurm-disabled"))
    finally:
        os.unlink(cluster.node_path(marker))
    cluster.set_namespace_config()
    cluster.wait_idle()
    r = cluster.srun(ALICE, ["ls", "-A", "/tmp"])
    assert r.returncode == 0 and r.stdout == "", (r.stdout, r.stderr)
    assert not os.path.exists(os.path.join(cluster.node_runtime(), "slurm-disabled"))


def test_the_node_runs_the_version_of_the_matrix(cluster, request):
    """Each run of the matrix really runs its Slurm: slurmd, the client and the job agree."""
    want = request.node.callspec.params["slurm"]
    assert cluster.version[:2] == tuple(int(n) for n in want.split("."))
    r = cluster.srun(ALICE, ["sh", "-c", "srun --version; cat /etc/debian_version"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1].startswith(want + "."), r.stdout


def _start(pid: int) -> str | None:
    """The start time of a live process `pid` (None: gone, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def test_task_that_re_unshares_does_not_outlive_its_job(cluster):
    """A task that leaves the job's namespaces (unshare -Urm, setsid) is killed with the job:
    in the job's jobns cgroup (hybrid node), or by the epilog's scan."""
    base = cluster.effective_base()
    job = cluster.sbatch(ALICE, "setsid unshare -Urm sleep 1000 >/dev/null 2>&1 </dev/null &\n"
                                "echo $! > /tmp/escaped\ncat /proc/self/cgroup > /tmp/cgroup\n"
                                "sleep 120\n")
    try:
        cluster.wait_running(job)
        backing = os.path.join(base, job, f".{job}", "_tmp")
        cluster.wait_until(lambda: os.path.exists(os.path.join(backing, "cgroup")) and
                           open(os.path.join(backing, "escaped")).read().strip(),
                           what="the batch script to start the escaping process")
        pid = int(open(os.path.join(backing, "escaped")).read())
        cluster.wait_until(lambda: os.stat(f"/proc/{pid}/ns/mnt").st_ino !=
                           os.stat(os.path.join(base, job, ".ns/mnt")).st_ino,
                           what="the task to leave the job's mount namespace")
        start = _start(pid)
        with open(os.path.join(base, job, ".ns/job.json")) as f:
            record = json.load(f)
        if record.get("tasks_join"):
            with open(os.path.join(backing, "cgroup")) as f:
                from jobns import cgroup
                inside = record["cgroup"][len(cgroup.parent_dir()):]
                assert f"0::{inside}" in f.read().splitlines()
    finally:
        cluster.cmd(["scancel", job])
    cluster.wait_until(lambda: not os.path.lexists(os.path.join(base, job)), timeout=60,
                       what=f"{base}/{job} to be removed after the job ended")
    assert _start(pid) != start, f"pid {pid} outlived job {job}"
