"""Slurm's own namespace tests as the contract, on every Slurm of the matrix.

Slurm checks its namespace/linux and job_container/tmpfs plugins with tests that
(1) make /var/tmp and /dev/shm private and add PID and user namespaces from namespace.yaml,
(2) use 26.05's `dir_confs` (per-directory base_path, noexec, tmpfs size=, nosuid/nodev
always on a tmpfs, %u in a path), (3) sbcast a file into the private directory and find
nothing on the node, (4) find the files that another SPANK plugin's user_init,
task_post_fork and task_exit hooks wrote in the private directory. These are jobns' own
tests of the same behaviours, with jobns in place of Slurm's plugin.

Slurm's tests use /var/tmp as the second private directory; here it is SCRATCH
(/srv/jobns-contract-<pid>, made and removed by the tests), because the fixture keeps the whole
cluster (SlurmdSpoolDir, logs, etc/) under /var/tmp, and a slurmstepd that runs inside the
job's namespace (the native route from 24.11 on, like Slurm's own plugin) must see those.

These tests run here on the SPANK route; test_slurm_native.py runs the same functions on
the native route (`cluster.route == "native"`). jobns reads namespace.yaml itself, so (1)
and (2) hold on 22.05 and 24.11 too (the native route refuses PID namespaces before 24.11:
see test_slurm_native.py). (3) and (4) depend on the route: the SPANK plugin moves the
job's *tasks* into the namespace, while sbcast (written by slurmd) and the hooks that run
in slurmstepd itself stay outside; the native route joins sbcast on every version and
the whole slurmstepd from 24.11 on. Each test asserts what docs/slurm.md says for its
version and route.
"""

from __future__ import annotations

import os
import re
import textwrap

import pytest

pytestmark = pytest.mark.slurm

ALICE = "jobns-alice"
# (names carry this process's id: other test runs may share the node's directories)
SCRATCH = f"/srv/jobns-contract-{os.getpid()}"
ON_NODE = f"jobns-contract-on-node-{os.getpid()}"
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED")


def route(cluster) -> str:
    return getattr(cluster, "route", "spank")


def stepd_in_job(cluster) -> bool:
    """Whether a step's slurmstepd itself runs in the job's namespaces: on the native
    route from Slurm 24.11 on (slurmd joins before it starts the slurmstepd)."""
    return route(cluster) == "native" and getattr(cluster, "native_api", 0) >= 2411


def final_state(cluster, job: str) -> str:
    r = cluster.cmd(["scontrol", "-o", "show", "job", job], timeout=10)
    m = re.search(r"\bJobState=(\S+)", r.stdout)
    return m.group(1) if m else ""


def batch(cluster, script: str, user: str = ALICE) -> tuple[str, str, str]:
    """Run `script` as a batch job to its end; (job id, final state, its output)."""
    out = f"/home/{user}/jobns-contract-%j.out"
    job = cluster.sbatch(user, textwrap.dedent(script), "-o", out)
    cluster.wait_until(lambda: final_state(cluster, job) in TERMINAL, timeout=90,
                       what=f"batch job {job} to end (it is {final_state(cluster, job)})")
    path = cluster.node_path(out.replace("%j", job))
    cluster.wait_until(lambda: os.path.exists(path), timeout=30, what=f"{path}")
    with open(path) as f:
        text = f.read()
    os.unlink(path)
    return job, final_state(cluster, job), text


def srun_out(cluster, command: str, *opts: str) -> str:
    """Output of `command` run by bash as an srun step."""
    r = cluster.srun(ALICE, ["bash", "-c", textwrap.dedent(command)], *opts)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r.stdout


@pytest.fixture
def scratch(cluster):
    """SCRATCH on the node, world-writable like /var/tmp, removed again at the end."""
    path = cluster.node_path(SCRATCH)
    made = not os.path.isdir(path)
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o1777)
    yield SCRATCH
    cluster.set_namespace_config()
    cluster.wait_idle()
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    if made:
        os.rmdir(path)


# ---------------------------------------------------------------- namespace.yaml: dirs, flags

NS_YAML_159_1 = """\
---
defaults:
  auto_base_path: true
  base_path: "{base}"
  dirs: "{scratch},/dev/shm"
  clone_ns_flags:
    - "CLONE_NEWPID"
    - "CLONE_NEWUSER"
...
"""


def test_scratch_and_dev_shm_private_with_pid_and_user_namespaces(cluster, scratch):
    cluster.set_namespace_config(NS_YAML_159_1.format(base=cluster.base, scratch=SCRATCH))
    markers = [cluster.node_path(f"{d}/{ON_NODE}") for d in (SCRATCH,
                                                                          "/dev/shm")]
    for m in markers:
        with open(m, "w") as f:
            f.write("node\n")
    if route(cluster) == "native" and cluster.version < (24, 11):
        for m in markers:
            os.unlink(m)
        r = cluster.srun(ALICE, ["sh", "-c", "echo ran"])
        assert r.returncode != 0 and "ran" not in r.stdout, "a task ran without its PID ns"
        assert "cannot give tasks before Slurm 24.11" in cluster.slurmd_log()
        return
    try:
        out = srun_out(cluster, """\
            for d in {SCRATCH} /dev/shm; do
                if [ -e $d/{ON_NODE} ]; then echo "$d: node file visible"
                else echo "$d: private"; fi
            done
            echo "shm: $(findmnt -n -o FSTYPE /dev/shm)"
            echo "pid: $(readlink /proc/self/ns/pid)"
            echo "user: $(readlink /proc/self/ns/user)"
            echo mine > {SCRATCH}/from-job
            """.replace("{SCRATCH}", SCRATCH).replace("{ON_NODE}", ON_NODE))
    finally:
        for m in markers:
            os.unlink(m)
    lines = dict(ln.split(": ", 1) for ln in out.splitlines() if ": " in ln)
    assert lines[SCRATCH] == "private" and lines["/dev/shm"] == "private", out
    assert lines["shm"] == "tmpfs", out
    node_pid = cluster.run(["readlink", "/proc/self/ns/pid"]).stdout.strip()
    node_user = cluster.run(["readlink", "/proc/self/ns/user"]).stdout.strip()
    assert lines["pid"].startswith("pid:[") and lines["pid"] != node_pid, out
    assert lines["user"].startswith("user:[") and lines["user"] != node_user, out
    assert not os.path.exists(cluster.node_path(f"{SCRATCH}/from-job"))

    # the same for an srun step, every task of it
    out = srun_out(cluster, f"readlink /proc/self/ns/pid /proc/self/ns/user; ls -A {SCRATCH}",
                   "-n2", "-O")
    assert node_pid not in out and node_user not in out, out
    assert ON_NODE not in out


# ---------------------------------------------------------------- dir_confs (26.05's format)

NS_YAML_159_2 = """\
---
defaults:
  auto_base_path: true
  base_path: "{base}"
  dir_confs:
    - path: "{scratch}"
      base_path: "{dir_base}"
      options: "noexec"
    - path: "/home/%u/jobns-contract-dir"
    - path: "/dev/shm"
      tmpfs: true
      options: "size=64m"
...
"""


@pytest.fixture
def dir_confs(cluster, scratch):
    home_dir = cluster.node_path(f"/home/{ALICE}/jobns-contract-dir")
    os.makedirs(home_dir, exist_ok=True)
    cluster.set_namespace_config(NS_YAML_159_2.format(base=cluster.base, scratch=SCRATCH,
                                                      dir_base=cluster.base))
    yield cluster
    os.rmdir(home_dir)


def test_dir_confs_bind_is_private_and_noexec(dir_confs):
    cluster = dir_confs
    marker = cluster.node_path(f"{SCRATCH}/{ON_NODE}")
    with open(marker, "w") as f:
        f.write("node\n")
    try:
        out = srun_out(cluster, """\
            if [ -e {SCRATCH}/{ON_NODE} ]; then echo "node file visible"
            else echo "private"; fi
            printf '#!/bin/sh\\necho ran\\n' > {SCRATCH}/x.sh
            chmod +x {SCRATCH}/x.sh
            {SCRATCH}/x.sh
            echo "exit:$?"
            """.replace("{SCRATCH}", SCRATCH).replace("{ON_NODE}", ON_NODE))
    finally:
        os.unlink(marker)
    assert out.startswith("private\n"), out
    assert "exit:126" in out and "ran" not in out.replace("exit", ""), out


def test_dir_confs_tmpfs_size_nosuid_nodev(dir_confs):
    out = srun_out(dir_confs, """\
        echo "mnt: $(findmnt -n -o FSTYPE,OPTIONS /dev/shm)"
        dd if=/dev/zero of=/dev/shm/small bs=1M count=32 2>/dev/null
        echo "small:$?"
        dd if=/dev/zero of=/dev/shm/large bs=1M count=65 2>&1
        echo "large:$?"
        """)
    fstype, opts = out.splitlines()[0].split()[1:3]
    assert fstype == "tmpfs", out
    assert {"nosuid", "nodev", "size=65536k"} <= set(opts.split(",")), out
    assert "small:0" in out and "large:1" in out, out
    assert "No space left on device" in out, out


def test_dir_confs_per_dir_base_path_and_user_expansion(dir_confs):
    cluster = dir_confs
    base = cluster.effective_base()
    out = srun_out(cluster, f"findmnt -n -o SOURCE {SCRATCH}; "
                            f"findmnt -n -o TARGET /home/{ALICE}/jobns-contract-dir; "
                            f"echo $SLURM_JOB_ID")
    source, target, job = out.split()
    backing = source[source.index("[") + 1:-1]
    # the source is a path of the file system (on a box, the tree's path on the host)
    assert f"{base}/{job}/" in backing, out
    assert target == f"/home/{ALICE}/jobns-contract-dir", out


def test_dir_confs_foreign_per_dir_base_path_is_refused(dir_confs):
    """Slurm accepts any per-directory base_path; jobns only the node's own (documented in
    docs/config.md): `config check` names the line, and no job runs with it."""
    cluster = dir_confs
    other = f"{cluster.root}/elsewhere"
    cluster.set_namespace_config(NS_YAML_159_2.format(base=cluster.base, scratch=SCRATCH,
                                                      dir_base=other))
    r = cluster.jobns_cmd("config", "check")
    assert r.returncode != 0
    assert re.search(r"namespace\.yaml:\d+", r.stdout + r.stderr), (r.stdout, r.stderr)
    assert other in r.stdout + r.stderr


# ---------------------------------------------------------------- sbcast

def test_sbcast_into_the_private_dir(cluster):
    """SPANK route: sbcast writes through slurmd, outside the job (docs/slurm.md): the file
    lands in the node's /tmp and the job's private /tmp does not see it. Native route: in
    the job's /tmp only."""
    name = f"/tmp/jobns-contract-sbcast-{os.getpid()}"
    node_file = cluster.node_path(name)
    src = f"/home/{ALICE}/jobns-contract-sbcast-{os.getpid()}.src"
    with open(cluster.node_path(src), "w") as f:
        f.write("sent by sbcast\n")
    os.chown(cluster.node_path(src), cluster.users[ALICE].pw_uid, cluster.users[ALICE].pw_gid)
    assert not os.path.exists(node_file)
    job = cluster.sbatch(ALICE, "touch $HOME/jobns-contract-started-$SLURM_JOB_ID\n"
                                "sleep 120\n")
    started = cluster.node_path(f"/home/{ALICE}/jobns-contract-started-{job}")
    try:
        # as Slurm's test: sbcast once the batch script runs (the namespace exists then)
        cluster.wait_until(lambda: os.path.exists(started), what="the batch script to start")
        r = cluster.as_user(ALICE, ["sbcast", "-j", job, src, name])
        assert r.returncode == 0, r.stderr
        inside = cluster.srun(ALICE, ["sh", "-c", f"cat {name} || echo absent"],
                              f"--jobid={job}", "--overlap")
        assert inside.returncode == 0, inside.stderr
        if route(cluster) == "native":
            assert inside.stdout == "sent by sbcast\n", inside.stdout
            assert not os.path.exists(node_file), "sbcast wrote the node's /tmp"
        else:
            assert inside.stdout.strip().endswith("absent"), inside.stdout
            with open(node_file) as f:
                assert f.read() == "sent by sbcast\n"
    finally:
        cluster.cmd(["scancel", job])
        for p in (node_file, cluster.node_path(src), started):
            if os.path.exists(p):
                os.unlink(p)


# ---------------------------------------------------------------- other SPANK plugins' hooks

HOOKS = ("user_init", "task_post_fork", "task_exit")
BATCH_STEP = 0xFFFFFFFB    # SLURM_BATCH_SCRIPT
HOOK_PLUGIN = r"""
/* A SPANK plugin that leaves a file in /tmp from three slurmstepd hooks. */
#include <fcntl.h>
#include <stdio.h>
#include <stdint.h>
#include <unistd.h>
#include <slurm/spank.h>

SPANK_PLUGIN(jobns_hook_probe, 1);

/* av[0]: a tag for the file names (test runs on one node must not meet) */
static void mark(spank_t sp, int ac, char **av, const char *hook)
{
	uint32_t job = 0, step = 0;
	char path[256];
	int fd;

	if (!spank_remote(sp) || spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_STEPID, &step) != ESPANK_SUCCESS)
		return;
	snprintf(path, sizeof(path), "/tmp/jobns-hook-%s-%u-%s-%u", ac > 0 ? av[0] : "",
		 job, hook, step);
	fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd >= 0)
		close(fd);
}

int slurm_spank_user_init(spank_t sp, int ac, char **av)
{ mark(sp, ac, av, "user_init"); return 0; }
int slurm_spank_task_post_fork(spank_t sp, int ac, char **av)
{ mark(sp, ac, av, "task_post_fork"); return 0; }
int slurm_spank_task_exit(spank_t sp, int ac, char **av)
{ mark(sp, ac, av, "task_exit"); return 0; }
"""


@pytest.fixture
def hook_plugin(cluster):
    src = os.path.join(cluster.lib, "jobns_hook_probe.c")
    so = os.path.join(cluster.lib, "jobns_hook_probe.so")
    with open(src, "w") as f:
        f.write(HOOK_PLUGIN)
    r = cluster.run(["gcc", "-shared", "-fPIC", "-Wall", "-Wno-unused-parameter", "-o", so,
                     src])
    assert r.returncode == 0, r.stderr
    with open(cluster.plugstack) as f:
        plugstack = f.read()
    with open(cluster.plugstack, "a") as f:
        f.write(f"required {so} {os.getpid()}\n")
    cluster.restart_slurmd()
    yield cluster
    with open(cluster.plugstack, "w") as f:
        f.write(plugstack)
    cluster.restart_slurmd()


def test_other_spank_plugins_hooks(hook_plugin):
    """SPANK route, and the native route before 24.11: user_init, task_post_fork and
    task_exit run in slurmstepd, which stays in the node's mount namespace (docs/slurm.md):
    their files land in the node's /tmp, not in the job's. Native route from 24.11 on: in
    the job's /tmp, none on the node."""
    cluster = hook_plugin
    job, state, out = batch(cluster, """\
        #!/bin/bash
        srun true
        ls /tmp
        """)
    assert state == "COMPLETED", out
    prefix = f"jobns-hook-{os.getpid()}-{job}-"
    inside = {ln for ln in out.split() if ln.startswith(prefix)}
    on_node = {n for n in os.listdir(cluster.node_path("/tmp"))
               if n.startswith(prefix)}
    try:
        # the srun step (0) and the batch step (whose own task_exit comes after its `ls`);
        # the extern step's hooks count only on the node's side
        step0 = {f"{prefix}{h}-0" for h in HOOKS}
        batch_step = {f"{prefix}{h}-{BATCH_STEP}" for h in HOOKS[:2]}
        if stepd_in_job(cluster):
            # with contain_spank (as Slurm's test) the extern step's hooks are inside too
            assert step0 | batch_step <= inside, out
            assert on_node == set(), on_node
        else:
            assert inside == set(), out
            assert step0 | batch_step <= on_node, on_node
    finally:
        for n in on_node:
            os.unlink(cluster.node_path(f"/tmp/{n}"))
