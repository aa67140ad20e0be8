"""What an admin does to a running Slurm node, and what must not go wrong then.

The cluster (see jobns_slurm_cluster.py) has three slurmd's on this host (n1, n2, n3, with
NodeHostname=<this host>, per-node ports and SlurmdSpoolDir=.../%n); n1's slurmd runs
without -N, as Debian's slurmd.service starts it. The principle: never delete what might
still be alive, never run a job without its namespace because something was misread.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

pytestmark = pytest.mark.slurm

ALICE, BOB = "jobns-alice", "jobns-bob"


# ------------------------------------------------------------------ helpers

def _start_job(cluster, script: str = "sleep 300\n", *opts: str, node: str | None = None,
               marker: str = "started") -> str:
    """An sbatch job that wrote /tmp/<marker> in its namespace and now sleeps."""
    job = cluster.sbatch(ALICE, f"echo up > /tmp/{marker}\n{script}", *opts)
    cluster.wait_running(job)
    backing = os.path.join(cluster.job_dir(job, node), f".{job}", "_tmp", marker)
    cluster.wait_until(lambda: os.path.exists(backing), what=f"job {job} to start")
    return job


def _pin_inode(cluster, job: str, node: str | None = None) -> int:
    """The job's mount namespace, as the node sees its pin (a Debian tree's box too)."""
    return os.stat(cluster.node_path(os.path.join(cluster.job_dir(job, node), ".ns",
                                                  "mnt"))).st_ino


def _ns_members(pin_ino: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}/ns/mnt").st_ino == pin_ino:
                    out.append(int(name))
            except OSError:
                pass
    return out


def _dead_stepd_socket(cluster, job: str, node: str | None = None) -> str:
    """A stepd socket whose slurmstepd is gone (bound, then closed: connect is refused)."""
    node = node or cluster.node
    path = os.path.join(cluster.spool_of(node), f"{node}_{job}.0")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    return path


def _log_since(cluster, offset: int, node: str | None = None) -> str:
    return cluster.slurmd_log(node)[offset:]


def _write_ns_yaml(cluster, text: str) -> None:
    with open(cluster.ns_yaml + ".tmp", "w") as f:
        f.write(text)
    os.replace(cluster.ns_yaml + ".tmp", cluster.ns_yaml)


def _jobns(cluster, *args: str, slurm_conf: str | None = None, node: bool = False):
    """jobns as an admin runs it by hand on the node: no --node (unless `node`)."""
    env = dict(cluster.env, JOBNS_RUNTIME_DIR=cluster.runtime,
               SLURM_CONF=slurm_conf or cluster.conf)
    head = [cluster.jobns, "--config", cluster.ns_yaml] + (["--node", cluster.node] if node else [])
    return cluster.run([*head, *args], env=env, timeout=120)


# ------------------------------------------------------------------ 1. node name

def test_slurmd_restart_without_N_keeps_running_jobs_and_removes_dead_ones(cluster):
    """NodeName n1 is not the hostname and n1's slurmd runs without -N: its restore
    must find NodeName n1 as slurmd does, keep the running job and remove a dead one."""
    assert cluster.node != cluster.host
    job = _start_job(cluster)
    ghost = "4000000101"
    sock = None
    try:
        ino = _pin_inode(cluster, job)
        r = cluster.jobns_cmd("create", ghost, "--user", BOB)
        assert r.returncode == 0, r.stderr
        sock = _dead_stepd_socket(cluster, ghost)

        # By hand, as slurmd's restore runs it: no --node, slurm.conf from SLURM_CONF.
        r = _jobns(cluster, "slurm", "live-jobs")
        assert r.returncode == 0, r.stderr
        assert job in r.stdout.split() and ghost not in r.stdout.split(), r.stdout

        offset = len(cluster.slurmd_log())
        cluster.restart_slurmd()          # n1: started again without -N
        log = _log_since(cluster, offset)
        assert "restore on node n1" in log, log[-3000:]
        assert _pin_inode(cluster, job) == ino, "the running job's namespace was replaced"
        assert cluster.job_state(job) == "RUNNING"
        assert not os.path.lexists(cluster.job_dir(ghost)), "restore kept a dead job"
        r = cluster.srun(ALICE, ["cat", "/tmp/started"], f"--jobid={job}", "--overlap")
        assert r.returncode == 0 and r.stdout == "up\n", (r.stdout, r.stderr)

        # The restore slurmd would run without -N, given only the spool dir: still n1.
        r = _jobns(cluster, "slurm", "restore", "--spool-dir", cluster.spool_of())
        assert r.returncode == 0, r.stderr
        assert _pin_inode(cluster, job) == ino and cluster.job_state(job) == "RUNNING"
    finally:
        cluster.cmd(["scancel", job])
        if sock and os.path.exists(sock):
            os.unlink(sock)
        cluster.jobns_cmd("delete", ghost)


def test_a_job_whose_stepd_runs_is_live_even_without_its_socket(cluster):
    """A misread spool dir must not make a live job look dead: its slurmstepd process
    is enough to keep it."""
    job = _start_job(cluster)
    try:
        ino = _pin_inode(cluster, job)
        empty = os.path.join(cluster.root, "empty-spool")
        os.makedirs(empty, exist_ok=True)
        r = _jobns(cluster, "slurm", "restore", "--spool-dir", empty)
        assert r.returncode == 0, r.stderr
        assert _pin_inode(cluster, job) == ino and cluster.job_state(job) == "RUNNING"
    finally:
        cluster.cmd(["scancel", job])


# ------------------------------------------------------------------ 2. config typos

@pytest.mark.parametrize("text,line,key,hint", [
    ("defaults:\n  base_pth: {base}\n", 2, "base_pth", "did you mean base_path?"),
    ("default:\n  base_path: {base}\n", 1, "default", "did you mean defaults?"),
])
def test_config_typo_fails_the_job_never_runs_it_unisolated(cluster, text, line, key, hint):
    marker = f"/tmp/jobns-slurm-test-typo-marker-{os.getpid()}"
    on_node = cluster.node_path(marker)       # the node's own /tmp (a Debian tree's box too)
    if os.path.exists(on_node):
        os.unlink(on_node)
    _write_ns_yaml(cluster, text.format(base=cluster.base))
    offset = len(cluster.slurmd_log())
    r = cluster.srun(ALICE, ["touch", marker])
    try:
        assert r.returncode != 0, "the job ran although the config cannot be used"
        assert not os.path.exists(on_node), "the job ran with the node's /tmp"
        log = _log_since(cluster, offset)
        want = f"error: jobns: {cluster.ns_yaml}:{line}: {key}: unknown key"
        assert want in log and hint in log, log[-3000:]
        assert "error: jobns: error:" not in log
        # Slurm drains a node whose prolog fails
        cluster.wait_until(lambda: cluster.node_state().startswith("drain"), timeout=60,
                           what="the node to be drained")
    finally:
        if os.path.exists(on_node):
            os.unlink(on_node)
        cluster.set_namespace_config()
        cluster.resume()


def test_slurmd_does_not_start_with_a_config_it_cannot_use(cluster):
    _write_ns_yaml(cluster, f"defaults:\n  BasePath: {cluster.base}\n")
    offset = len(cluster.slurmd_log())
    cluster.stop_slurmd()
    try:
        with pytest.raises(RuntimeError):
            cluster.start_slurmd(wait=False)
        log = _log_since(cluster, offset)
        assert f"{cluster.ns_yaml}:2: BasePath: unknown key" in log, log[-3000:]
        assert "slurmd does not start" in log
    finally:
        cluster.set_namespace_config()
        if cluster.pid_of("slurmd") is None:
            cluster.start_slurmd()


# ------------------------------------------------------------------ 3. base_path changes

def test_base_path_change_mid_job_tears_the_job_down_where_it_was_made(cluster):
    new_base = os.path.join(cluster.root, "base-new")
    job = _start_job(cluster, "setsid sleep 1000 < /dev/null > /dev/null 2>&1 &\nsleep 300\n")
    old_dir = cluster.job_dir(job)
    ghost = "4000000102"
    try:
        ino = _pin_inode(cluster, job)
        cluster.wait_until(lambda: len(_ns_members(ino)) >= 2, what="the job's daemon")
        r = cluster.jobns_cmd("create", ghost, "--user", BOB)   # dead: no stepd, no socket
        assert r.returncode == 0, r.stderr
        ghost_dir = cluster.job_dir(ghost)

        cluster.set_namespace_config(base_path=new_base)
        assert cluster.job_dir(job) != old_dir
        cluster.cmd(["scancel", job])
        cluster.wait_until(lambda: not os.path.lexists(old_dir), timeout=60,
                           what="the epilog to remove the job from its own base")
        assert _ns_members(ino) == [], "the job's setsid daemon survived"

        cluster.restart_slurmd()       # restore finishes the dead job of the earlier base
        assert not os.path.lexists(ghost_dir), "restore never looked in the earlier base"
        assert [m for m in cluster.mounts_under(os.path.dirname(old_dir))
                if m != os.path.dirname(old_dir)] == []
    finally:
        cluster.cmd(["scancel", job])
        cluster.set_namespace_config()


# ------------------------------------------------------------------ 4. + 5. several slurmd's

def test_restarting_one_slurmd_leaves_other_nodes_jobs_alone(cluster):
    job = _start_job(cluster, "sleep 300\n", "-p", "multi", "-w", "n3", node="n3")
    try:
        ino = _pin_inode(cluster, job, "n3")
        assert cluster.job_dir(job, "n3") != cluster.job_dir(job, "n2")
        cluster.restart_slurmd("n2")
        assert _pin_inode(cluster, job, "n3") == ino, "n2's restore touched n3's job"
        assert cluster.job_state(job) == "RUNNING"
        # n2's epilog of the same job id (it never ran there) leaves n3's job alone too
        r = cluster.jobns_cmd("delete", job, node="n2")
        assert r.returncode == 0, r.stderr
        assert _pin_inode(cluster, job, "n3") == ino
    finally:
        cluster.cmd(["scancel", job])


def test_multi_node_job_tasks_join_their_own_nodes_namespace(cluster):
    script = ("srun -N3 --ntasks-per-node=1 sh -c 'echo $SLURMD_NODENAME "
              "$(stat -L -c %i /proc/self/ns/mnt) > /tmp/where'\nsleep 300\n")
    job = cluster.sbatch(ALICE, script, "-p", "multi", "-N3")
    try:
        cluster.wait_running(job)
        for node in cluster.nodes:
            where = os.path.join(cluster.job_dir(job, node), f".{job}", "_tmp", "where")
            cluster.wait_until(lambda: os.path.exists(where) and open(where).read(), timeout=60,
                               what=f"the task on {node}")
            with open(where) as f:
                name, ino = f.read().split()
            assert name == node
            assert int(ino) == _pin_inode(cluster, job, node), \
                f"the task on {node} is not in {node}'s namespace of the job"
        assert len({_pin_inode(cluster, job, n) for n in cluster.nodes}) == 3
    finally:
        cluster.cmd(["scancel", job])
    for node in cluster.nodes:
        cluster.wait_until(lambda: not os.path.lexists(cluster.job_dir(job, node)), timeout=60,
                           what=f"{node}'s epilog")


# ------------------------------------------------------------------ 6. failed teardown

def test_failed_epilog_shows_teardown_failed_and_the_next_epilog_retries(cluster):
    job = _start_job(cluster, marker="stuck")
    stuck = os.path.join(cluster.job_dir(job), f".{job}", "_tmp", "stuck")
    subprocess.run(["chattr", "+i", stuck], check=True)
    left = None
    try:
        cluster.cmd(["scancel", job])
        cluster.wait_until(lambda: any(j["job_id"] == job and j["state"] == "teardown-failed"
                                       for j in _list(cluster)), timeout=60,
                           what="list to show the job as teardown-failed")
        row = next(j for j in _list(cluster) if j["job_id"] == job)
        left = os.path.join(row["path"], f".{job}", "_tmp", "stuck")
        assert os.path.exists(left), row
        r = cluster.jobns_cmd("list")
        assert any(ln.split()[:1] == [job] and "teardown-failed" in ln
                   for ln in r.stdout.splitlines()), r.stdout
    finally:
        subprocess.run(["chattr", "-i", left or stuck], capture_output=True)
    cluster.resume()
    r = cluster.srun(ALICE, ["true"])          # its epilog retries the failed teardown
    assert r.returncode == 0, r.stderr
    cluster.wait_until(lambda: all(j["job_id"] != job for j in _list(cluster)), timeout=60,
                       what="the next epilog to finish the failed teardown")
    assert not os.path.exists(left)


def _list(cluster) -> list[dict]:
    r = cluster.jobns_cmd("list", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# ------------------------------------------------------------------ 7. hand-run restore

def test_hand_run_restore_keeps_running_jobs(cluster):
    job = _start_job(cluster)
    try:
        ino = _pin_inode(cluster, job)
        r = _jobns(cluster, "restore")
        assert r.returncode == 0, r.stderr
        assert "live jobs" in r.stderr and job in r.stderr
        assert _pin_inode(cluster, job) == ino and cluster.job_state(job) == "RUNNING"
    finally:
        cluster.cmd(["scancel", job])


def test_restore_without_a_way_to_tell_live_jobs_keeps_them(cluster):
    """Without slurm.conf and without --live nothing tells a live job from a dead one:
    restore keeps every job whose namespace is alive; --all-dead removes it."""
    base = os.path.join(cluster.root, "standalone-base")
    conf = os.path.join(cluster.root, "standalone.yaml")   # the same path on the node
    with open(conf, "w") as f:
        f.write(f"defaults:\n  base_path: {base}\n  auto_base_path: true\n")
    env = dict(cluster.env, JOBNS_RUNTIME_DIR=os.path.join(cluster.root, "standalone-run"),
               SLURM_CONF=os.path.join(cluster.root, "no-slurm.conf"))

    def jobns(*args):
        return cluster.run([cluster.jobns, "--config", conf, *args], env=env, timeout=120)

    ghost = "4000000103"
    r = jobns("create", ghost, "--user", BOB)
    assert r.returncode == 0, r.stderr
    path = os.path.join(base, ghost)
    try:
        assert os.path.isdir(path)
        r = jobns("restore")
        assert os.path.isdir(path), "restore removed a job it could not know to be dead"
        assert "--all-dead" in r.stderr, r.stderr
        r = jobns("restore", "--all-dead")
        assert r.returncode == 0, r.stderr
        assert not os.path.lexists(path)
    finally:
        jobns("delete", ghost)
        for mp in cluster.mounts_under(base):
            cluster.run(["umount", mp])


# ------------------------------------------------------------------ 8. config check/show

def test_config_show_of_another_node_and_check_of_a_missing_base(cluster):
    script = os.path.join(cluster.root, "no-such-epilog.sh")
    _write_ns_yaml(cluster, f"defaults:\n  base_path: {cluster.base}\n"
                            f"node_confs:\n  - nodes: n9\n    options:\n"
                            f"      clone_ns_epilog: {script}\n")
    r = cluster.jobns_cmd("config", "show", "--node", "n9")
    assert r.returncode == 0, r.stderr
    assert "warning:" in r.stdout + r.stderr and script in r.stdout + r.stderr

    missing = os.path.join(cluster.root, "no-such-base")
    conf = os.path.join(cluster.root, "check-namespace.yaml")   # the same path on the node
    with open(conf, "w") as f:
        f.write(f"defaults:\n  base_path: {missing}\n  auto_base_path: false\n")
    r = cluster.jobns_cmd("config", "check", conf)
    assert r.returncode == 1 and missing in r.stdout and "auto_base_path" in r.stdout, \
        (r.stdout, r.stderr)


# ------------------------------------------------------------------ 9. %mem follows --mem

def test_size_percent_of_mem_follows_the_jobs_mem(cluster):
    """The prolog does not know the job's memory; the job's first step passes it on
    (S_JOB_ALLOC_MEM) before any task runs: size=50%mem with --mem=200M is 100 MiB."""
    cluster.set_namespace_config(
        f"defaults:\n  base_path: {cluster.base}\n  auto_base_path: true\n  dir_confs:\n"
        "    - {path: /tmp}\n    - {path: /dev/shm, options: \"size=50%mem\"}\n")
    r = cluster.srun(ALICE, ["stat", "-f", "-c", "%b %S", "/dev/shm"], "--mem=200M")
    assert r.returncode == 0, r.stderr
    blocks, size = map(int, r.stdout.split())
    assert blocks * size == 100 * 1024 * 1024, r.stdout
