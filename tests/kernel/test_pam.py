"""The PAM session module (pam_jobns.so) against the real kernel, without sshd.

A small PAM application does what sshd does for a login: pam_start(service, user),
pam_open_session, fork + setgid/setuid + exec of the command, wait, pam_close_session.
Each test writes its own /etc/pam.d/jobns-test-<random> service naming the module built
by `jobns slurm build-pam`, and removes it afterwards.  The application opens syslog
with LOG_PERROR, so the module's pam_syslog messages also reach its stderr.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid

import pytest

from kernelhelp import JOBNS
from jobns import kernel, lifecycle
from jobns.job import Job

from nshelp import MNT, PID, USER, init_pid, ns_link

NOBODY = 65534
DAEMON = pwd.getpwnam("daemon").pw_uid
CC = shutil.which("cc") or shutil.which("gcc")
HAVE_PAM = os.path.isfile("/usr/include/security/pam_appl.h") and \
    os.path.isfile("/usr/include/security/pam_modules.h")

pytestmark = pytest.mark.skipif(not (CC and HAVE_PAM),
                                reason="needs a C compiler and the PAM headers (libpam0g-dev)")

APP = r"""
#define _GNU_SOURCE
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <syslog.h>
#include <unistd.h>
#include <sys/wait.h>
#include <security/pam_appl.h>

static int conv(int n, const struct pam_message **m, struct pam_response **r, void *d)
{
	(void) n; (void) m; (void) r; (void) d;
	return PAM_CONV_ERR;
}

static void *idle(void *arg)
{
	(void) arg;
	pause();
	return NULL;
}

/* pam-app SERVICE USER CMD...: a login as sshd does it. */
int main(int argc, char **argv)
{
	struct pam_conv c = { conv, NULL };
	pam_handle_t *pamh = NULL;
	const char *job = getenv("TEST_SLURM_JOB_ID");
	struct passwd *pw;
	char env[256];
	int rc, status = 0;
	pthread_t t;
	pid_t pid;

	if (argc < 4)
		return 64;
	openlog("pam-app", LOG_PERROR, LOG_AUTHPRIV);
	if (!(pw = getpwnam(argv[2])))
		return 65;
	if (getenv("TEST_THREAD") && pthread_create(&t, NULL, idle, NULL) != 0)
		return 68;
	rc = pam_start(argv[1], argv[2], &c, &pamh);
	if (rc != PAM_SUCCESS) {
		fprintf(stderr, "pam_start: %s\n", pam_strerror(pamh, rc));
		return 66;
	}
	if (job) {
		snprintf(env, sizeof(env), "SLURM_JOB_ID=%s", job);
		pam_putenv(pamh, env);
	}
	rc = pam_open_session(pamh, 0);
	if (rc != PAM_SUCCESS) {
		fprintf(stderr, "pam_open_session: %s\n", pam_strerror(pamh, rc));
		pam_end(pamh, rc);
		return 67;
	}
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		if (setgroups(1, &pw->pw_gid) || setgid(pw->pw_gid) || setuid(pw->pw_uid) ||
		    chdir("/")) {
			perror("dropping to the user");
			_exit(126);
		}
		execvp(argv[3], argv + 3);
		perror(argv[3]);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) < 0)
		status = 125 << 8;
	rc = pam_close_session(pamh, 0);
	pam_end(pamh, rc);
	if (rc != PAM_SUCCESS)
		return 69;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
"""


@pytest.fixture(scope="module")
def built():
    """pam_jobns.so (through the CLI) and the PAM application, outside /tmp: the session
    process changes its /tmp when it joins a job."""
    d = tempfile.mkdtemp(prefix="jobns-pam-", dir="/var/tmp")
    os.chmod(d, 0o755)
    try:
        module = os.path.join(d, "pam_jobns.so")
        r = subprocess.run([JOBNS, "slurm", "build-pam", "--output", module,
                            "--runtime", "/run/jobns-test"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stderr == "", r.stderr     # no compiler warnings
        assert r.stdout.splitlines()[-1] == \
            f"session required {module} runtime=/run/jobns-test"
        assert os.stat(module).st_mode & 0o777 == 0o755
        src = os.path.join(d, "pam-app.c")
        with open(src, "w") as f:
            f.write(APP)
        app = os.path.join(d, "pam-app")
        r = subprocess.run([CC, "-Wall", "-Wextra", "-O2", "-o", app, src, "-lpam",
                            "-lpthread"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        yield module, app
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def pam(node, built):
    """login(user, *cmd, required=, job=, thread=, runtime=) -> CompletedProcess,
    through a PAM service of this test that names the node's runtime dir."""
    module, app = built
    services = []

    def login(user, *cmd, required=False, job=None, thread=False, runtime=None):
        name = f"jobns-test-{uuid.uuid4().hex[:12]}"
        path = os.path.join("/etc/pam.d", name)
        args = f"runtime={runtime or node.runtime}" + (" required_join" if required else "")
        services.append(path)
        with open(path, "x") as f:
            f.write(f"session required {module} {args}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TEST_")}
        if job is not None:
            env["TEST_SLURM_JOB_ID"] = job
        if thread:
            env["TEST_THREAD"] = "1"
        return subprocess.run([app, name, user, *cmd], capture_output=True, text=True,
                              timeout=60, env=env)

    try:
        yield login
    finally:
        for path in services:
            os.unlink(path)


@pytest.fixture
def host_file():
    """A file in the host's /tmp that nobody can read (absent from every job's /tmp)."""
    path = f"/tmp/jobns-pam-host-{uuid.uuid4().hex[:8]}"
    with open(path, "w") as f:
        f.write("host\n")
    os.chmod(path, 0o644)
    yield path
    os.unlink(path)


def _job(node, job_id, uid=NOBODY, user="nobody", marker=None, **kw):
    lifecycle.create(node.cfg(**kw), Job(job_id=job_id, uid=uid, gid=uid, user=user))
    if marker is not None:
        r = node.cli("exec", job_id, "--user", user, "--", "sh", "-c",
                     f"echo {marker} > /tmp/marker")
        assert r.returncode == 0, r.stderr


def test_session_sees_the_jobs_tmp(node, pam, host_file):
    _job(node, "7101", marker="in-7101")
    assert not os.path.exists("/tmp/marker") or open("/tmp/marker").read() != "in-7101\n"
    r = pam("nobody", "sh", "-c", f"cat /tmp/marker; id -u; test ! -e {host_file}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["in-7101", str(NOBODY)]
    assert "session joined the namespaces of job 7101" in r.stderr


def test_session_joins_pid_and_user_namespaces(node, pam):
    _job(node, "7102", marker="in-7102", clone_ns_flags=(PID, USER, MNT))
    pid1 = init_pid(node, "7102")
    r = pam("nobody", "sh", "-c",
            "cat /tmp/marker; readlink /proc/self/ns/pid /proc/self/ns/user; ps -e -o pid=,comm=")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "in-7102"
    assert lines[1] == ns_link(pid1, "pid") != ns_link("self", "pid")
    assert lines[2] == ns_link(pid1, "user") != ns_link("self", "user")
    ps = {tuple(line.split(None, 1)) for line in lines[3:]}
    assert ("1", "jobns-init") in ps, lines
    assert len(ps) < 10, lines      # the job's processes only, not the host's


def test_user_without_a_job_keeps_the_host(node, pam, host_file):
    _job(node, "7103", uid=DAEMON, user="daemon", marker="theirs")
    r = pam("nobody", "sh", "-c", f"cat {host_file}; readlink /proc/self/ns/mnt")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["host", ns_link("self", "mnt")]
    assert "jobns" not in r.stderr
    # no runtime dir at all (jobns never ran a job here): the same
    r = pam("nobody", "cat", host_file, required=True,
            runtime=os.path.join(node.runtime, "never-created"))
    assert (r.returncode, r.stdout) == (0, "host\n"), r.stderr
    assert "jobns" not in r.stderr


def test_slurm_job_id_chooses_among_the_users_jobs(node, pam):
    _job(node, "7104", marker="first")
    _job(node, "7105", marker="second")
    _job(node, "7106", uid=DAEMON, user="daemon", marker="theirs")
    r = pam("nobody", "cat", "/tmp/marker", job="7104")
    assert (r.returncode, r.stdout) == (0, "first\n"), r.stderr
    r = pam("nobody", "cat", "/tmp/marker", job="7105")
    assert (r.returncode, r.stdout) == (0, "second\n"), r.stderr
    # without SLURM_JOB_ID, or naming another user's job: the newest, and it says so
    for job in (None, "7106"):
        r = pam("nobody", "cat", "/tmp/marker", job=job)
        assert (r.returncode, r.stdout) == (0, "second\n"), r.stderr
        assert ("user nobody has 2 jobs on this node; joining job 7105, the newest that can "
                "be joined") in r.stderr
    assert "SLURM_JOB_ID=7106 is not a job of user nobody" in r.stderr


def test_a_lost_newer_job_does_not_hide_a_live_older_one(node, pam):
    _job(node, "7110", marker="older-live")
    _job(node, "7111", marker="newer-lost")
    kernel.umount2(os.path.join(node.job_dir("7111"), ".ns", "mnt"), kernel.MNT_DETACH)
    r = pam("nobody", "cat", "/tmp/marker", required=True)
    assert (r.returncode, r.stdout) == (0, "older-live\n"), r.stderr
    assert "joining job 7110, the newest that can be joined" in r.stderr


def test_lost_namespace_denies_only_with_required_join(node, pam, host_file):
    _job(node, "7107", marker="lost")
    pin = os.path.join(node.job_dir("7107"), ".ns", "mnt")
    kernel.umount2(pin, kernel.MNT_DETACH)
    index_pin = os.path.join(node.runtime, "jobs", "7107", ".ns", "mnt")
    r = pam("nobody", "cat", host_file, required=True)
    assert r.returncode == 67 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    assert f"job 7107: {index_pin} is not a mount namespace pin" in r.stderr
    assert "denied (required_join)" in r.stderr
    assert "pam_open_session: Cannot make/remove an entry for the specified session" \
        in r.stderr
    r = pam("nobody", "cat", host_file)
    assert (r.returncode, r.stdout) == (0, "host\n"), r.stderr
    assert f"job 7107: {index_pin} is not a mount namespace pin" in r.stderr
    assert "the session was not moved into job 7107" in r.stderr


def test_threaded_session_process_is_refused(node, pam, host_file):
    _job(node, "7108", marker="t")
    r = pam("nobody", "cat", "/tmp/marker", required=True, thread=True)
    assert r.returncode == 67, (r.returncode, r.stdout, r.stderr)
    assert "job 7108: the session process has 2 threads" in r.stderr
    r = pam("nobody", "cat", host_file, thread=True)
    assert (r.returncode, r.stdout) == (0, "host\n"), r.stderr


def test_build_pam_names_the_package_when_headers_are_missing(tmp_path):
    r = subprocess.run([JOBNS, "slurm", "build-pam", "--output", str(tmp_path / "m.so"),
                        "--include-dir", str(tmp_path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert "security/pam_modules.h not found" in r.stderr and "libpam0g-dev" in r.stderr
    assert not os.path.exists(tmp_path / "m.so")
