/*
 * jobns_spank.c - the SPANK side of jobns (built by `jobns slurm build-plugin`).
 *
 * This plugin holds no namespace logic.  It does three things:
 *
 *  1. Runs the jobns CLI where Slurm gives a single-threaded root process:
 *       slurm_spank_job_prolog  -> `jobns slurm prolog`   (creates the job's namespaces)
 *       slurm_spank_job_epilog  -> `jobns slurm epilog`   (deletes them)
 *       slurm_spank_init (slurmd context, at slurmd start)
 *                               -> `jobns slurm restore`  (removes leftovers of dead jobs)
 *     The child gets the job variables Slurm put in the environment; its output is
 *     copied into the slurmd log, and a non-zero exit fails the callback.
 *
 *  2. In every step's slurmstepd (slurm_spank_init, remote context, still in the host
 *     mount namespace) opens the job's mount-namespace pin <runtime>/jobs/<J>/.ns/mnt
 *     and, if the job has them, its user namespace (NS_GET_USERNS on the pin) and PID
 *     namespace (pidfd of the PID 1 named in .ns/pid1, checked against the pin).
 *     Pins are not visible from mount namespaces created later, so this cannot wait.
 *
 *  3. Joins: the PID namespace in slurmstepd's main thread just before it forks the
 *     tasks (user_init; undone in task_post_fork so slurmstepd can still create
 *     threads), then USER and MNT in each forked task child (task_init_privileged,
 *     root and single-threaded, before exec).  A task never runs outside its job's
 *     namespace: any failure fails the task.
 *
 * plugstack.conf arguments (all optional except jobns= when prolog/restore are on):
 *   jobns=PATH       absolute path of the jobns executable (e.g. a venv's bin/jobns)
 *   config=FILE      passed as `jobns --config FILE`
 *   runtime=DIR      jobns runtime dir (default /run/jobns), exported as JOBNS_RUNTIME_DIR
 *   prolog=yes|no    run `jobns slurm prolog/epilog` from job_prolog/job_epilog (default
 *                    yes; say no when Prolog=/Epilog= scripts do it)
 *   restore=yes|no   run `jobns slurm restore` when slurmd starts (default yes)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <linux/nsfs.h>
#include <slurm/spank.h>
#include "jobns_run.h"

SPANK_PLUGIN(jobns, 1);

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef NS_GET_USERNS
#define NS_GET_USERNS 0xb701
#endif
#ifndef NS_GET_NSTYPE
#define NS_GET_NSTYPE 0xb703
#endif
#ifndef CLONE_NEWNS
#define CLONE_NEWNS 0x00020000
#endif
#ifndef CLONE_NEWUSER
#define CLONE_NEWUSER 0x10000000
#endif
#ifndef CLONE_NEWPID
#define CLONE_NEWPID 0x20000000
#endif

#define STEP_EXTERN 0xfffffffcU		/* SLURM_EXTERN_CONT */
#define DEFAULT_RUNTIME "/run/jobns"

static struct {
	char jobns[PATH_MAX];
	char config[PATH_MAX];
	char runtime[PATH_MAX];
	int prolog;
	int restore;
} opt;

/* Descriptors opened in slurm_spank_init (remote context), all O_CLOEXEC. */
static int mnt_fd = -1;		/* the job's mount namespace (pin) */
static int user_fd = -1;	/* the job's user namespace, if it has one */
static int pid_fd = -1;		/* pidfd of the job's PID 1, if it has a PID namespace */
static int own_pid_fd = -1;	/* this slurmstepd's PID namespace, to switch back */
static int pid_switched;	/* slurmstepd's children currently go to the job PID ns */
static uint32_t cur_job;

static int parse_bool(const char *arg, const char *val, int *out)
{
	if (!strcmp(val, "yes") || !strcmp(val, "1") || !strcmp(val, "true")) {
		*out = 1;
		return 0;
	}
	if (!strcmp(val, "no") || !strcmp(val, "0") || !strcmp(val, "false")) {
		*out = 0;
		return 0;
	}
	slurm_error("jobns: plugstack argument '%s': expected yes or no", arg);
	return -1;
}

static int set_path(const char *arg, const char *val, char *dst, int must_be_abs)
{
	if (strlen(val) >= PATH_MAX) {
		slurm_error("jobns: plugstack argument '%s': path too long", arg);
		return -1;
	}
	if (must_be_abs && val[0] != '/') {
		slurm_error("jobns: plugstack argument '%s': must be an absolute path", arg);
		return -1;
	}
	strcpy(dst, val);
	return 0;
}

static int parse_args(int ac, char **av)
{
	int i, rc = 0;

	memset(&opt, 0, sizeof(opt));
	strcpy(opt.runtime, DEFAULT_RUNTIME);
	opt.prolog = 1;
	opt.restore = 1;
	for (i = 0; i < ac; i++) {
		const char *a = av[i];

		if (!strncmp(a, "jobns=", 6))
			rc |= set_path(a, a + 6, opt.jobns, 1);
		else if (!strncmp(a, "config=", 7))
			rc |= set_path(a, a + 7, opt.config, 1);
		else if (!strncmp(a, "runtime=", 8))
			rc |= set_path(a, a + 8, opt.runtime, 1);
		else if (!strncmp(a, "prolog=", 7))
			rc |= parse_bool(a, a + 7, &opt.prolog);
		else if (!strncmp(a, "restore=", 8))
			rc |= parse_bool(a, a + 8, &opt.restore);
		else {
			slurm_error("jobns: unknown plugstack argument '%s' (known: jobns= config= runtime= prolog= restore=)", a);
			rc = -1;
		}
	}
	if (!rc && (opt.prolog || opt.restore) && !opt.jobns[0]) {
		slurm_error("jobns: plugstack argument jobns=/path/to/bin/jobns is required (or prolog=no restore=no)");
		rc = -1;
	}
	return rc ? -1 : 0;
}

/* The jobns command line of this plugin's arguments. */
static const struct jobns_cmd *cmd(void)
{
	static struct jobns_cmd c;

	c.jobns = opt.jobns;
	c.config = opt.config;
	c.runtime = opt.runtime;
	return &c;
}

static void close_fd(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

/* ---------------------------------------------------------------- opening the job */

static int job_path(char *buf, size_t len, uint32_t job, const char *leaf)
{
	int n = snprintf(buf, len, "%s/jobs/%u/.ns/%s", opt.runtime, job, leaf);

	return (n < 0 || (size_t) n >= len) ? -1 : 0;
}

/* The PID namespace of the job: a pidfd of the PID 1 named in .ns/pid1, accepted
 * only if that process is (still) in the job's mount namespace. */
static int open_pid_ns(uint32_t job)
{
	char path[PATH_MAX], buf[32], proc[64];
	struct stat pin, st;
	ssize_t n;
	long pid;
	char *end;
	int fd, pfd;

	if (job_path(path, sizeof(path), job, "pid1") < 0)
		return -1;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;	/* no PID namespace for this job */
		slurm_error("jobns: job %u: open %s: %s", job, path, strerror(errno));
		return -1;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0) {
		slurm_error("jobns: job %u: %s is empty or unreadable", job, path);
		return -1;
	}
	buf[n] = '\0';
	errno = 0;
	pid = strtol(buf, &end, 10);
	if (errno || pid <= 1 || pid > INT_MAX || (*end && *end != '\n')) {
		slurm_error("jobns: job %u: %s does not hold a process id", job, path);
		return -1;
	}
	pfd = (int) syscall(SYS_pidfd_open, (pid_t) pid, 0U);
	if (pfd < 0) {
		slurm_error("jobns: job %u: PID 1 of the job's PID namespace (pid %ld) is gone: %s",
			    job, pid, strerror(errno));
		return -1;
	}
	snprintf(proc, sizeof(proc), "/proc/%ld/ns/mnt", pid);
	if (fstat(mnt_fd, &pin) < 0 || stat(proc, &st) < 0 ||
	    pin.st_ino != st.st_ino || pin.st_dev != st.st_dev ||
	    syscall(SYS_pidfd_send_signal, pfd, 0, NULL, 0U) < 0) {
		slurm_error("jobns: job %u: pid %ld is not the job's PID 1 (not in its mount namespace)",
			    job, pid);
		close(pfd);
		return -1;
	}
	own_pid_fd = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
	if (own_pid_fd < 0) {
		slurm_error("jobns: job %u: open /proc/self/ns/pid: %s", job, strerror(errno));
		close(pfd);
		return -1;
	}
	pid_fd = pfd;
	return 0;
}

/* The user namespace that owns the job's mount namespace, if it is not ours. */
static int open_user_ns(uint32_t job)
{
	struct stat theirs, ours;
	int fd = ioctl(mnt_fd, NS_GET_USERNS);

	if (fd < 0) {
		slurm_error("jobns: job %u: NS_GET_USERNS: %s", job, strerror(errno));
		return -1;
	}
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 || fstat(fd, &theirs) < 0 ||
	    stat("/proc/self/ns/user", &ours) < 0) {
		slurm_error("jobns: job %u: user namespace check: %s", job, strerror(errno));
		close(fd);
		return -1;
	}
	if (theirs.st_ino == ours.st_ino && theirs.st_dev == ours.st_dev)
		close(fd);	/* the job has no user namespace of its own */
	else
		user_fd = fd;
	return 0;
}

static int disabled_on_node(void)
{
	char path[PATH_MAX];

	if (snprintf(path, sizeof(path), "%s/slurm-disabled", opt.runtime) >= (int) sizeof(path))
		return 0;
	return access(path, F_OK) == 0;
}

static int open_job(uint32_t job)
{
	char path[PATH_MAX];
	int type;

	if (job_path(path, sizeof(path), job, "mnt") < 0) {
		slurm_error("jobns: job %u: runtime path too long", job);
		return -1;
	}
	mnt_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (mnt_fd < 0) {
		if (errno == ENOENT && disabled_on_node()) {
			slurm_debug("jobns: job %u: jobns is disabled on this node", job);
			return 0;
		}
		slurm_error("jobns: job %u: cannot open the job's namespace %s: %s (did `jobns slurm prolog` run for this job? PrologFlags=Contain is required)",
			    job, path, strerror(errno));
		return -1;
	}
	type = ioctl(mnt_fd, NS_GET_NSTYPE);
	if (type != CLONE_NEWNS) {
		slurm_error("jobns: job %u: %s is not a mount namespace pin", job, path);
		close_fd(&mnt_fd);
		return -1;
	}
	if (open_user_ns(job) < 0 || open_pid_ns(job) < 0) {
		close_fd(&mnt_fd);
		close_fd(&user_fd);
		close_fd(&pid_fd);
		close_fd(&own_pid_fd);
		return -1;
	}
	cur_job = job;
	slurm_debug("jobns: job %u: namespace opened (user ns: %s, pid ns: %s)", job,
		    user_fd >= 0 ? "yes" : "no", pid_fd >= 0 ? "yes" : "no");
	return 0;
}

/* ---------------------------------------------------------------- callbacks */

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	spank_context_t ctx = spank_context();
	uint32_t job = 0, step = 0;

	if (ctx != S_CTX_REMOTE && ctx != S_CTX_SLURMD)
		return 0;	/* srun, sbatch, salloc: nothing to do */
	if (parse_args(ac, av) < 0)
		return -1;

	if (ctx == S_CTX_SLURMD) {
		char conf[PATH_MAX], node[256];

		if (!opt.restore)
			return 0;
		jobns_slurmd_cmdline(conf, sizeof(conf), node, sizeof(node));
		/* A failed restore must not keep slurmd from starting: it is logged. */
		(void) jobns_run(cmd(), "restore", 0, node, conf, NULL, NULL);
		return 0;
	}

	if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_STEPID, &step) != ESPANK_SUCCESS) {
		slurm_error("jobns: cannot get the job and step id");
		return -1;
	}
	if (job == 0 || step == STEP_EXTERN)
		return 0;
	return open_job(job);
}

/* job_prolog / job_epilog: run `jobns slurm prolog|epilog` for the job (unless prolog=no). */
static int job_script(spank_t sp, int ac, char **av, const char *what)
{
	uint32_t job = 0;

	if (parse_args(ac, av) < 0)
		return -1;
	if (!opt.prolog)
		return 0;
	if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS)
		job = 0;
	return jobns_run(cmd(), what, job, NULL, NULL, NULL, NULL);
}

int slurm_spank_job_prolog(spank_t sp, int ac, char **av)
{
	return job_script(sp, ac, av, "prolog");
}

int slurm_spank_job_epilog(spank_t sp, int ac, char **av)
{
	return job_script(sp, ac, av, "epilog");
}

/*
 * slurmstepd's main thread, after IO setup, right before it forks the tasks.  It runs
 * with the user's euid; the real uid is still root, so take the effective root back
 * for the setns and drop it again.  Only the calling thread's future children are
 * affected.
 */
int slurm_spank_user_init(spank_t sp, int ac, char **av)
{
	uid_t euid = geteuid();
	gid_t egid = getegid();
	int rc = 0, err = 0;

	(void) sp;
	(void) ac;
	(void) av;
	if (spank_context() != S_CTX_REMOTE || pid_fd < 0 || pid_switched)
		return 0;
	if (euid != 0 && seteuid(0) < 0) {
		slurm_error("jobns: job %u: seteuid(0): %s", cur_job, strerror(errno));
		return -1;
	}
	if (setns(pid_fd, CLONE_NEWPID) < 0) {
		err = errno;
		rc = -1;
	} else
		pid_switched = 1;
	if (euid != 0 && (setegid(egid) < 0 || seteuid(euid) < 0)) {
		slurm_error("jobns: job %u: cannot drop privileges again: %s", cur_job,
			    strerror(errno));
		return -1;
	}
	if (rc < 0)
		slurm_error("jobns: job %u: setns(PID namespace): %s", cur_job, strerror(err));
	return rc;
}

/* Back in slurmstepd's main thread after the forks: later children (and threads,
 * which must share the caller's PID namespace) are slurmstepd's own again. */
static int restore_pid_ns(void)
{
	if (!pid_switched)
		return 0;
	if (setns(own_pid_fd, CLONE_NEWPID) < 0) {
		slurm_error("jobns: job %u: setns back to slurmstepd's PID namespace: %s",
			    cur_job, strerror(errno));
		return -1;
	}
	pid_switched = 0;
	return 0;
}

int slurm_spank_task_post_fork(spank_t sp, int ac, char **av)
{
	(void) sp;
	(void) ac;
	(void) av;
	if (spank_context() != S_CTX_REMOTE)
		return 0;
	return restore_pid_ns();
}

/* The forked task, root and single-threaded, before it becomes the user and execs. */
int slurm_spank_task_init_privileged(spank_t sp, int ac, char **av)
{
	(void) sp;
	(void) ac;
	(void) av;
	if (spank_context() != S_CTX_REMOTE || mnt_fd < 0)
		return 0;
	if (user_fd >= 0 && setns(user_fd, CLONE_NEWUSER) < 0) {
		slurm_error("jobns: job %u: setns(user namespace): %s", cur_job, strerror(errno));
		return -1;
	}
	if (setns(mnt_fd, CLONE_NEWNS) < 0) {
		slurm_error("jobns: job %u: setns(mount namespace): %s", cur_job, strerror(errno));
		return -1;
	}
	/* Nothing of ours reaches the task (they are O_CLOEXEC anyway). */
	close_fd(&mnt_fd);
	close_fd(&user_fd);
	close_fd(&pid_fd);
	close_fd(&own_pid_fd);
	return 0;
}

int slurm_spank_exit(spank_t sp, int ac, char **av)
{
	int rc = 0;

	(void) sp;
	(void) ac;
	(void) av;
	if (spank_context() != S_CTX_REMOTE)
		return 0;
	rc = restore_pid_ns();
	close_fd(&mnt_fd);
	close_fd(&user_fd);
	close_fd(&pid_fd);
	close_fd(&own_pid_fd);
	return rc;
}
