"""The native route on a real Slurm: JobContainerType=job_container/jobns (built by
`jobns slurm build-plugin --native` against the installed version's source tree) instead
of the SPANK plugin, and what it gives that the SPANK route cannot:

* sbcast and `srun --bcast=/tmp/...` write into the job's private /tmp (slurmd joins the
  job for them), nothing lands on the host;
* TaskEpilog runs inside the job's namespace;
* other SPANK plugins' task hooks see the job's namespace whatever their plugstack order
  (the namespace exists before any SPANK callback of the job and is joined before them).

The module switches the session cluster to the native route and back to the SPANK
plugin at its end.  The source tree comes from Debian's source package (see
jobns_slurm_native.py); without a package registry the module is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

import jobns_slurm_native as jsn
import test_slurm_contract as contract
# Slurm's own tests as the contract, on this route: the same test functions and fixtures,
# with `cluster` (below) being the native-route cluster.
from test_slurm_contract import (dir_confs, hook_plugin, scratch,  # noqa: F401
                                 test_other_spank_plugins_hooks,
                                 test_sbcast_into_the_private_dir)
# ...and the route-independent job tests of test_slurm_jobs.py and test_slurm_recovery.py
from test_slurm_jobs import (test_private_tmp_and_dev_shm,  # noqa: F401
                             test_steps_share_jobs_do_not,
                             test_task_that_re_unshares_does_not_outlive_its_job)
from test_slurm_recovery import (  # noqa: F401
    test_slurmd_restart_keeps_running_job_and_restore_removes_dead_ones,
    test_slurmd_sigkill_then_cancel_leaves_nothing)

pytestmark = pytest.mark.slurm

ALICE = "jobns-alice"

PROBE = r"""
/* SPANK probe: logs "<hook> <job>.<step> <mount namespace inode>" for each callback. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <slurm/spank.h>

SPANK_PLUGIN(jobnsprobe, 1);

static void note(spank_t sp, int ac, char **av, const char *hook)
{
	uint32_t job = 0, step = 0;
	struct stat st;
	char line[256];
	int fd, n;

	if (spank_context() != S_CTX_REMOTE || ac < 1)
		return;
	spank_get_item(sp, S_JOB_ID, &job);
	spank_get_item(sp, S_JOB_STEPID, &step);
	if (stat("/proc/self/ns/mnt", &st) < 0)
		return;
	n = snprintf(line, sizeof(line), "%s %u.%u %lu\n", hook, job, step,
		     (unsigned long) st.st_ino);
	fd = open(av[0], O_WRONLY | O_APPEND | O_CLOEXEC);
	if (fd >= 0) {
		if (write(fd, line, n) != n)
			;
		close(fd);
	}
}

#define HOOK(name) int slurm_spank_##name(spank_t sp, int ac, char **av) \
	{ note(sp, ac, av, #name); return 0; }
HOOK(init)
HOOK(user_init)
HOOK(task_init_privileged)
HOOK(task_init)
HOOK(task_post_fork)
HOOK(task_exit)
"""


@pytest.fixture(scope="module")
def native(slurm, tmp_path_factory):
    """The session cluster on the native route, with TaskEpilog and a SPANK probe."""
    try:
        tree, build = jsn.source_tree(jsn.node_version(slurm))
    except jsn.SourceUnavailable as e:
        pytest.skip(f"no Slurm source tree for the native plugin: {e}")
    output, lines = jsn.build_native(slurm, tree, build)
    from jobns.slurm import build as jbuild
    slurm.native_api = jbuild.slurm_tree(tree, build).api
    assert any(ln.startswith(("JobContainerType=", "NamespaceType=")) for ln in lines), output
    probe_dir = os.path.join(slurm.root, "probe")
    os.makedirs(probe_dir, exist_ok=True)
    os.chmod(probe_dir, 0o1777)
    probe_log = os.path.join(probe_dir, "spank.log")
    probe_so = os.path.join(slurm.lib, "jobnsprobe.so")
    src = tmp_path_factory.mktemp("probe") / "probe.c"
    src.write_text(PROBE)
    subprocess.run([shutil.which("cc") or "gcc", "-shared", "-fPIC", "-O2", "-I", build,
                    "-I", tree, "-o", probe_so, str(src)], check=True)
    task_epilog = os.path.join(slurm.scripts, "task-epilog")
    with open(task_epilog, "w") as f:
        f.write("#!/bin/sh\n"
                "# TaskEpilog of the native-route tests: what the task left in /tmp\n"
                f"out={probe_dir}/task-epilog.$SLURM_JOB_ID.$SLURM_STEP_ID\n"
                "{ cat /tmp/jobns-native-marker 2>&1; stat -c %U /tmp; "
                "stat -L -c %i /proc/self/ns/mnt 2>&1; } > $out.tmp; mv $out.tmp $out\n")
    os.chmod(task_epilog, 0o755)
    with open(probe_log, "w"):
        pass
    os.chmod(probe_log, 0o666)
    extra = [f"TaskEpilog={task_epilog}"]
    if slurm.native_api >= 2405:
        # as Slurm's test_147_1: the extern step's SPANK hooks run inside too
        extra.append("SlurmdParameters=contain_spank")
    jsn.use_native(slurm, lines, plugstack=f"required {probe_so} {probe_log}\n",
                   extra=tuple(extra))
    slurm.probe_dir, slurm.probe_log = probe_dir, probe_log
    slurm.route = "native"
    try:
        yield slurm
    finally:
        slurm.route = "spank"
        jsn.use_spank(slurm)


@pytest.fixture
def ncluster(native):
    native.set_namespace_config()
    native.wait_idle()
    yield native
    native.set_namespace_config()
    jobs = native.cmd(["squeue", "-h", "-o", "%i"]).stdout.split()
    if jobs:
        native.cmd(["scancel", *jobs])
    if native.node_state().startswith(("drain", "down")):
        native.resume()


@pytest.fixture
def cluster(ncluster):
    """Slurm's contract tests (test_slurm_contract.py) below run on the native route."""
    return ncluster


def _job_ids_in_base(cluster) -> list[str]:
    base = cluster.effective_base()
    return sorted(n for n in os.listdir(base) if n.isdigit()) if os.path.isdir(base) else []


def test_native_job_gets_private_tmp_and_is_removed(ncluster):
    r = ncluster.srun(ALICE, ["sh", "-c", "ls -A /tmp; stat -c '%U %a' /tmp; "
                                          "findmnt -n -o FSTYPE /dev/shm; "
                                          "echo $SLURM_JOB_ID"])
    assert r.returncode == 0, r.stderr + ncluster.log_tail()
    out = r.stdout.splitlines()
    assert out[0] == f"{ALICE} 700", r.stdout      # nothing in /tmp, the job's own dir
    assert out[1] == "tmpfs", r.stdout
    job = out[2]
    # The extern step's stepd_delete ran `jobns slurm epilog`.
    ncluster.wait_idle()
    ncluster.wait_until(lambda: job not in _job_ids_in_base(ncluster), 30,
                        f"job {job}'s directory to go")
    assert f"job {job}" in ncluster.slurmd_log()


def test_sbcast_lands_in_the_private_tmp(ncluster):
    src = os.path.join(ncluster.probe_dir, "sbcast-source")
    with open(src, "w") as f:
        f.write("broadcast content\n")
    os.chmod(src, 0o644)
    out = os.path.join(ncluster.probe_dir, "sbcast.out")
    script = (f"sbcast {src} /tmp/jobns-sbcast-file\n"
              "srun cat /tmp/jobns-sbcast-file\n"
              "srun stat -c '%U' /tmp/jobns-sbcast-file\n")
    r = ncluster.as_user(ALICE, ["sbatch", "--wait", "-o", out], input="#!/bin/bash\n" + script,
                         timeout=120)
    assert r.returncode == 0, r.stderr + open(out).read() if os.path.exists(out) else r.stderr
    with open(out) as f:     # (srun may also say "srun: Step created ..." when it waited)
        lines = [ln for ln in f.read().splitlines() if not ln.startswith("srun: ")]
    assert lines[:2] == ["broadcast content", ALICE], lines
    assert not os.path.exists(ncluster.node_path("/tmp/jobns-sbcast-file")), \
        "sbcast wrote to the node's /tmp"


def test_srun_bcast_to_tmp_runs_the_copy(ncluster):
    assert not os.path.exists(ncluster.node_path("/tmp/jobns-bcast-exe"))
    r = ncluster.srun(ALICE, ["/bin/echo", "bcast ran"], "--bcast=/tmp/jobns-bcast-exe")
    assert r.returncode == 0, r.stderr + ncluster.log_tail()
    assert r.stdout.strip() == "bcast ran"
    assert not os.path.exists(ncluster.node_path("/tmp/jobns-bcast-exe")), \
        "--bcast wrote to the node's /tmp"


def test_task_epilog_runs_inside_the_job(ncluster):
    r = ncluster.srun(ALICE, ["sh", "-c", "echo left-by-the-task > /tmp/jobns-native-marker; "
                                          "stat -L -c %i /proc/self/ns/mnt; echo $SLURM_JOB_ID"])
    assert r.returncode == 0, r.stderr
    task_ns, job = r.stdout.split()
    path = os.path.join(ncluster.probe_dir, f"task-epilog.{job}.0")
    ncluster.wait_until(lambda: os.path.exists(path), 30, "the TaskEpilog's output")
    with open(path) as f:
        lines = f.read().splitlines()
    assert lines == ["left-by-the-task", ALICE, task_ns], lines
    assert not os.path.exists(ncluster.node_path("/tmp/jobns-native-marker"))


def test_spank_task_hooks_see_the_namespace(ncluster):
    with open(ncluster.probe_log, "w"):
        pass
    r = ncluster.srun(ALICE, ["sh", "-c", "stat -L -c %i /proc/self/ns/mnt; echo $SLURM_JOB_ID"])
    assert r.returncode == 0, r.stderr
    task_ns, job = r.stdout.split()
    host_ns = str(os.stat("/proc/self/ns/mnt").st_ino)
    assert task_ns != host_ns
    seen = {}
    with open(ncluster.probe_log) as f:
        for line in f:
            hook, step, ino = line.split()
            if step == f"{job}.0":
                seen[hook] = ino
    # The probe is the only plugin in plugstack.conf: the namespace is joined by Slurm
    # before the task's SPANK callbacks, not by a plugin that must come first.
    assert seen.get("task_init_privileged") == task_ns, seen
    assert seen.get("task_init") == task_ns, seen
    if ncluster.native_api >= 2411:
        # The whole step's slurmstepd runs inside (joined when slurmd starts it): also
        # the callbacks in slurmstepd itself (Slurm's test_147_1).
        for hook in ("init", "user_init", "task_post_fork", "task_exit"):
            assert seen.get(hook) == task_ns, (hook, seen)
    else:
        assert seen.get("user_init") != task_ns, seen


def test_pid_namespace_from_24_11(ncluster):
    if ncluster.native_api < 2411:
        pytest.skip("before Slurm 24.11 the native route refuses PID namespaces")
    ncluster.set_namespace_config(clone_ns_flags=["CLONE_NEWPID"])
    r = ncluster.srun(ALICE, ["sh", "-c", "echo $$"], "-n2", timeout=60)
    assert r.returncode == 0, r.stderr + ncluster.log_tail()
    # Small pids: both tasks were born in the job's PID namespace (PID 1 is jobns').
    pids = [int(x) for x in r.stdout.split()]
    assert len(pids) == 2 and all(1 < p < 100 for p in pids), r.stdout


def test_pid_namespace_before_24_11_is_refused_not_half_isolated(ncluster):
    if ncluster.native_api >= 2411:
        pytest.skip("Slurm 24.11+: the native route gives tasks the job's PID namespace")
    ncluster.set_namespace_config(clone_ns_flags=["CLONE_NEWPID"])
    before = set(os.listdir(ncluster.probe_dir))
    r = ncluster.srun(ALICE, ["sh", "-c", "echo ran; echo $SLURM_JOB_ID"], timeout=60)
    assert r.returncode != 0 and "ran" not in r.stdout, \
        "a task ran outside the job's PID namespace"
    assert "cannot give tasks before Slurm 24.11" in ncluster.slurmd_log()
    # Slurm runs the TaskEpilog even when the join failed: it still ran in the job's
    # mount namespace, not the host's.
    def epilogs():
        return [n for n in set(os.listdir(ncluster.probe_dir)) - before
                if n.startswith("task-epilog.") and n.endswith(".0")]
    ncluster.wait_until(epilogs, 30, "the TaskEpilog's output")
    new = epilogs()
    assert len(new) == 1, new
    with open(os.path.join(ncluster.probe_dir, new[0])) as f:
        lines = f.read().splitlines()
    assert lines[1] == ALICE, lines     # the job's /tmp, not the host's (root's)


ADOPT_APP = r"""
/* What sshd does for pam_slurm_adopt: pam_acct_mgmt as USER, then run the command. */
#include <stdio.h>
#include <unistd.h>
#include <security/pam_appl.h>

static int conv(int n, const struct pam_message **m, struct pam_response **r, void *d)
{
	(void) n; (void) m; (void) r; (void) d;
	return PAM_CONV_ERR;
}

int main(int argc, char **argv)
{
	struct pam_conv c = { conv, NULL };
	pam_handle_t *h;
	int rc;

	if (argc < 4)
		return 2;
	if (pam_start(argv[1], argv[2], &c, &h) != PAM_SUCCESS)
		return 2;
	rc = pam_acct_mgmt(h, 0);
	if (rc != PAM_SUCCESS) {
		fprintf(stderr, "pam_acct_mgmt: %s\n", pam_strerror(h, rc));
		return 3;
	}
	pam_end(h, rc);
	fflush(stdout);
	execvp(argv[3], argv + 3);
	perror("execvp");
	return 4;
}
"""
PAM_ADOPT_PATHS = ("/lib/security/pam_slurm_adopt.so",
                   "/lib/x86_64-linux-gnu/security/pam_slurm_adopt.so",
                   "/usr/lib64/security/pam_slurm_adopt.so")


def _pam_adopt() -> str | None:
    return next((p for p in PAM_ADOPT_PATHS if os.path.exists(p)), None)


def _pam_adopt_on_node(cluster) -> str:
    """pam_slurm_adopt.so of the node's Slurm: the host's package (installed if missing),
    or, on a Debian tree, the tree's own package unpacked under the cluster root (the
    tree itself is not changed)."""
    if not getattr(cluster, "tree", None):
        if not _pam_adopt():
            r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                "libpam-slurm-adopt"], capture_output=True, text=True,
                               env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
                               timeout=600)
            if r.returncode != 0:
                pytest.skip(f"libpam-slurm-adopt cannot be installed: {r.stderr[-300:]}")
        return _pam_adopt()
    where = os.path.join(cluster.root, "pam-adopt")
    found = [os.path.join(d, f) for d, _, fs in os.walk(where) for f in fs
             if f == "pam_slurm_adopt.so"] if os.path.isdir(where) else []
    if not found:
        os.makedirs(os.path.join(where, "cache"), exist_ok=True)
        # this host's apt with the tree's (signed) package lists: the tree's own version
        t = cluster.tree
        r = subprocess.run(["apt-get", "-q", "-o", "APT::Sandbox::User=root",
                            "-o", f"Dir::State::Lists={t}/var/lib/apt/lists",
                            "-o", f"Dir::Etc::SourceList={t}/etc/apt/sources.list",
                            "-o", f"Dir::Etc::SourceParts={t}/etc/apt/sources.list.d",
                            "-o", f"Dir::State::status={t}/var/lib/dpkg/status",
                            "-o", f"Dir::Etc::PreferencesParts={t}/etc/apt/preferences.d",
                            "-o", "Dir::Etc::Preferences=/dev/null",
                            "-o", f"Dir::Cache={where}/cache", "download",
                            "libpam-slurm-adopt"], cwd=where, capture_output=True, text=True,
                           timeout=300)
        debs = [f for f in os.listdir(where) if f.endswith(".deb")]
        if r.returncode != 0 or not debs:
            pytest.skip(f"libpam-slurm-adopt of the {cluster.suite} tree cannot be "
                        f"downloaded: {(r.stderr or r.stdout)[-300:]}")
        subprocess.run(["dpkg-deb", "-x", os.path.join(where, debs[0]), where], check=True)
        found = [os.path.join(d, f) for d, _, fs in os.walk(where) for f in fs
                 if f == "pam_slurm_adopt.so"]
    assert found, f"no pam_slurm_adopt.so in {where}"
    return found[0]


def test_pam_slurm_adopt_joins_through_join_external(ncluster, tmp_path):
    """An ssh login adopted by pam_slurm_adopt lands in the job's namespaces: the extern
    step hands out the pin's fd (join_external: REQUEST_GET_NS_FD before 25.11; from 25.11
    REQUEST_GET_NS_FDS with the job's PID, user and mount namespaces)."""
    import uuid
    if not os.path.isfile("/usr/include/security/pam_appl.h"):
        pytest.skip("needs the PAM headers (libpam0g-dev)")
    pam_adopt = _pam_adopt_on_node(ncluster)
    app = os.path.join(ncluster.lib, "adopt")
    (tmp_path / "adopt.c").write_text(ADOPT_APP)
    subprocess.run([shutil.which("cc") or "gcc", "-o", app, str(tmp_path / "adopt.c"),
                    "-lpam"], check=True)
    namespaces = ncluster.native_api >= 2511
    if namespaces:
        ncluster.set_namespace_config(clone_ns_flags=["CLONE_NEWPID", "CLONE_NEWUSER"])
    service = f"jobns-native-adopt-{uuid.uuid4().hex[:8]}"
    pam_file = ncluster.node_path(f"/etc/pam.d/{service}")
    with open(pam_file, "w") as f:
        f.write(f"account required {pam_adopt} service={service} nodename={ncluster.node} "
                "action_no_jobs=deny log_level=debug\n")
    job = ncluster.sbatch(ALICE, "echo adopt-me > /tmp/jobns-adopt-marker\n"
                                 "readlink /proc/self/ns/pid /proc/self/ns/user "
                                 "> /tmp/jobns-adopt-ns\nsleep 120\n")
    backing = os.path.join(ncluster.job_dir(job), f".{job}", "_tmp")
    try:
        ncluster.wait_running(job)
        ncluster.wait_until(lambda: os.path.exists(os.path.join(backing, "jobns-adopt-ns"))
                            and open(os.path.join(backing, "jobns-adopt-ns")).read(), 30,
                            "the job's marker")
        r = ncluster.run([app, service, ALICE, "sh", "-c",
                          "cat /tmp/jobns-adopt-marker; stat -c %U /tmp; "
                          "readlink /proc/self/ns/pid /proc/self/ns/user"],
                         timeout=60, env=ncluster.env)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.split()
        assert lines[:2] == ["adopt-me", ALICE], r.stdout + r.stderr
        if namespaces:
            # readlink is a child of the adopted process: in the job's PID namespace
            with open(os.path.join(backing, "jobns-adopt-ns")) as f:
                assert lines[2:] == f.read().split(), r.stdout
    finally:
        os.unlink(pam_file)
        ncluster.cmd(["scancel", job])
    assert not os.path.exists(ncluster.node_path("/tmp/jobns-adopt-marker"))


def test_failing_create_fails_the_launch_and_leaves_nothing(ncluster):
    base = ncluster.effective_base()
    script = os.path.join(ncluster.scripts, "refuse.sh")
    with open(script, "w") as f:
        f.write('#!/bin/sh\necho "site check refuses job $SLURM_JOB_ID" >&2\nexit 3\n')
    os.chmod(script, 0o755)
    before = set(os.listdir(base)) if os.path.isdir(base) else set()
    log_size = os.path.getsize(os.path.join(ncluster.log_dir, f"slurmd-{ncluster.node}.log"))
    ncluster.set_namespace_config(init_script=script)

    r = ncluster.srun(ALICE, ["echo", "ran"], timeout=90)
    assert r.returncode != 0 and "ran" not in r.stdout, r.stdout + r.stderr

    with open(os.path.join(ncluster.log_dir, f"slurmd-{ncluster.node}.log"), errors="replace") as f:
        f.seek(log_size)
        new_log = f.read()
    assert "site check refuses job" in new_log, new_log
    assert "jobns slurm prolog` failed" in new_log, new_log
    after = set(os.listdir(base)) if os.path.isdir(base) else set()
    assert {n for n in after - before if not n.startswith(".")} == set()
    # A job-container failure is a launch failure, not a prolog failure: Slurm does not
    # drain the node (as with its own plugins).
    ncluster.wait_until(lambda: not ncluster.cmd(["squeue", "-h"]).stdout.strip(), 60,
                        "the failed job to leave the queue")
    state = ncluster.node_state()
    assert not state.startswith(("drain", "down")), state


def test_dir_confs_bind_is_private_and_noexec(dir_confs):
    contract.test_dir_confs_bind_is_private_and_noexec(dir_confs)


def test_dir_confs_tmpfs_size_nosuid_nodev(dir_confs):
    contract.test_dir_confs_tmpfs_size_nosuid_nodev(dir_confs)


def test_dir_confs_per_dir_base_path_and_user_expansion(dir_confs):
    contract.test_dir_confs_per_dir_base_path_and_user_expansion(dir_confs)


def test_dir_confs_foreign_per_dir_base_path_is_refused(dir_confs):
    contract.test_dir_confs_foreign_per_dir_base_path_is_refused(dir_confs)


def test_scratch_and_dev_shm_private_with_pid_and_user_namespaces(cluster, scratch):
    """Slurm's test_159_1 on the native route: from 24.11 as on the SPANK route; before,
    the PID namespace it asks for is refused (docs/slurm.md), the job does not run."""
    if cluster.native_api >= 2411:
        return contract.test_scratch_and_dev_shm_private_with_pid_and_user_namespaces(
            cluster, scratch)
    cluster.set_namespace_config(contract.NS_YAML_159_1.format(base=cluster.base,
                                                               scratch=scratch))
    r = cluster.srun(ALICE, ["sh", "-c", "echo ran"], timeout=90)
    assert r.returncode != 0 and "ran" not in r.stdout, (r.stdout, r.stderr)
    assert "cannot give tasks before Slurm 24.11" in cluster.slurmd_log()


def test_user_namespace_on_every_version(ncluster):
    """CLONE_NEWUSER alone needs no PID namespace: the native route gives it on every
    version (the task, and sbcast's writer, join the user namespace before the mount one)."""
    ncluster.set_namespace_config(clone_ns_flags=["CLONE_NEWUSER"])
    host_user = ncluster.run(["readlink", "/proc/self/ns/user"]).stdout.strip()
    r = ncluster.srun(ALICE, ["sh", "-c", "readlink /proc/self/ns/user; stat -c '%U %a' /tmp; "
                                          "id -un"])
    assert r.returncode == 0, r.stderr + ncluster.log_tail()
    ns, owner, who = r.stdout.splitlines()
    assert ns.startswith("user:[") and ns != host_user, r.stdout
    assert owner == f"{ALICE} 700" and who == ALICE, r.stdout


def test_lost_namespace_fails_the_step_never_runs_it_on_the_host(ncluster):
    """A step of a running job whose namespace pin is gone (unmounted under it) does not
    run: the join fails, and Slurm fails the task (before 24.11) or the step's launch."""
    job = ncluster.sbatch(ALICE, "echo inside > /tmp/jobns-lost-ns-marker\nsleep 120\n")
    try:
        ncluster.wait_running(job)
        pin = os.path.join(ncluster.node_runtime(), "jobs", job, ".ns", "mnt")
        # The pin goes only once the batch script runs inside the namespace (its marker is
        # in the job's /tmp): RUNNING comes before the batch task's own join, and a pin
        # lost before that join fails the batch task too (fail safe), ending the job.
        marker = os.path.join(ncluster.job_dir(job), f".{job}", "_tmp", "jobns-lost-ns-marker")
        ncluster.wait_until(lambda: os.path.exists(marker), 30, "the batch script's marker")
        assert os.path.lexists(pin), pin
        r = ncluster.run(["umount", pin])
        assert r.returncode == 0, r.stderr
        assert ncluster.job_state(job) == "RUNNING"
        r = ncluster.srun(ALICE, ["sh", "-c", "echo ran-on-the-node"], f"--jobid={job}",
                          "--overlap", timeout=90)
        assert r.returncode != 0 and "ran-on-the-node" not in r.stdout, (r.stdout, r.stderr)
        assert f"jobns: job {job}: {pin} is not a mount namespace pin" in ncluster.slurmd_log()
        assert ncluster.job_state(job) == "RUNNING"     # the job itself goes on
    finally:
        ncluster.cmd(["scancel", job])
    ncluster.wait_until(lambda: not os.path.lexists(os.path.join(ncluster.node_runtime(), "jobs",
                                                                 job)), 60,
                        "the job's namespace to be removed after scancel")
