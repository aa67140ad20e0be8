/*
 * jobns_spank.c - the SPANK side of jobns (built by `jobns slurm build-plugin`).
 *
 * This plugin holds no namespace logic.  It does three things:
 *
 *  1. Has jobns create and delete the job's namespaces where Slurm gives a single-threaded
 *     root process:
 *       slurm_spank_job_prolog  -> `jobns slurm prolog`   (creates the job's namespaces)
 *       slurm_spank_job_epilog  -> `jobns slurm epilog`   (deletes them)
 *       slurm_spank_init (slurmd context, at slurmd start)
 *                               -> `jobns slurm restore`  (removes leftovers of dead jobs;
 *                                  a config error keeps slurmd from starting)
 *                                  `jobns slurm service`  (starts the per-node service)
 *     Prolog and epilog go to the jobns service (<runtime>/service.sock, docs/service.md),
 *     which runs the same code in a resident worker without a Python start per job; when
 *     it does not answer completely, the plugin runs the jobns command itself (which
 *     starts the service again).  Either way the job variables Slurm put in the
 *     environment are passed on, the output is copied into the slurmd log, and a
 *     non-zero exit fails the callback (jobns_run.h).
 *
 *  2. In every step's slurmstepd (slurm_spank_init, remote context, still in the host
 *     mount namespace) opens the job's namespaces with jobns_join.h: the mount-namespace
 *     pin <runtime>/jobs/<J>/.ns/mnt and, if the job has them, its user namespace
 *     (NS_GET_USERNS on the pin) and PID namespace (pidfd of the PID 1 named in
 *     .ns/pid1, checked against the pin).  Pins are not visible from mount namespaces
 *     created later, so this cannot wait.
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
 *   service=yes|no   use (and start) the per-node jobns service for prolog/epilog
 *                    (default yes; no: a `jobns` process per prolog and epilog)
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
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <slurm/spank.h>
#include "jobns_run.h"

#include "jobns_join.h"

SPANK_PLUGIN(jobns, 1);

#define STEP_EXTERN 0xfffffffcU		/* SLURM_EXTERN_CONT */

static struct {
	char jobns[PATH_MAX];
	char config[PATH_MAX];
	char runtime[PATH_MAX];
	int prolog;
	int restore;
	int service;
} opt;

/* Descriptors opened in slurm_spank_init (remote context), all O_CLOEXEC. */
static struct jobns_job jj = { .mnt_fd = -1, .user_fd = -1, .pid_fd = -1, .group_fd = -1 };
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
	strcpy(opt.runtime, JOBNS_DEFAULT_RUNTIME);
	opt.prolog = 1;
	opt.restore = 1;
	opt.service = 1;
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
		else if (!strncmp(a, "service=", 8))
			rc |= parse_bool(a, a + 8, &opt.service);
		else {
			slurm_error("jobns: unknown plugstack argument '%s' (known: jobns= config= runtime= prolog= restore= service=)", a);
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
	c.service = opt.service;
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

/* This node's runtime dir (see jobns_node_runtime); slurmstepd has its NodeName in
 * SLURMD_NODENAME. */
static const char *runtime_dir(void)
{
	static char buf[PATH_MAX];

	return jobns_node_runtime(opt.runtime, getenv("SLURMD_NODENAME"), buf, sizeof(buf));
}

static int disabled_on_node(void)
{
	char path[PATH_MAX];

	if (snprintf(path, sizeof(path), "%s/slurm-disabled", runtime_dir()) >= (int) sizeof(path))
		return 0;
	return access(path, F_OK) == 0;
}

static void close_job(void)
{
	jobns_close(&jj);
	close_fd(&own_pid_fd);
}

static int open_job(uint32_t job)
{
	char id[16], err[JOBNS_ERR_MAX];

	snprintf(id, sizeof(id), "%u", job);
	if (jobns_open(&jj, runtime_dir(), id, err, sizeof(err)) < 0) {
		if (errno == ENOENT && disabled_on_node()) {
			slurm_debug("jobns: job %u: jobns is disabled on this node", job);
			return 0;
		}
		slurm_error("jobns: job %u: %s%s", job, err, errno == ENOENT ?
			    " (did `jobns slurm prolog` run for this job? PrologFlags=Contain is required)" : "");
		return -1;
	}
	if (jj.pid_fd >= 0) {
		own_pid_fd = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
		if (own_pid_fd < 0) {
			slurm_error("jobns: job %u: open /proc/self/ns/pid: %s", job, strerror(errno));
			close_job();
			return -1;
		}
	}
	cur_job = job;
	slurm_debug("jobns: job %u: namespace opened (user ns: %s, pid ns: %s)", job,
		    jj.user_fd >= 0 ? "yes" : "no", jj.pid_fd >= 0 ? "yes" : "no");
	return 0;
}

/* ---------------------------------------------------------------- callbacks */

/*
 * A prolog does not know the job's memory (job_prolog has only the job id, uid and gid),
 * so `size=N%mem` mounts start at N% of the node's RAM and the job is marked
 * <index>/.ns/mem-pending.  Every step has the memory (S_JOB_ALLOC_MEM, MiB): the first
 * one on the node, before its tasks, passes it on with `jobns slurm set-mem`.  Should
 * that fail, the job keeps the larger size (it stays isolated) and the error is logged.
 */
static void pass_job_mem(spank_t sp, uint32_t job)
{
	char path[PATH_MAX], e_job[48], e_mem[48];
	char *env[3] = { e_job, e_mem, NULL };
	uint64_t mem = 0;

	if (snprintf(path, sizeof(path), "%s/jobs/%u/.ns/mem-pending", runtime_dir(), job) >=
	    (int) sizeof(path) || access(path, F_OK) != 0)
		return;
	if (spank_get_item(sp, S_JOB_ALLOC_MEM, &mem) != ESPANK_SUCCESS) {
		slurm_info("jobns: job %u: Slurm gives no job memory (S_JOB_ALLOC_MEM): size=N%%mem stays N%% of the node's RAM",
			   job);
		return;
	}
	snprintf(e_job, sizeof(e_job), "SLURM_JOB_ID=%u", job);
	snprintf(e_mem, sizeof(e_mem), "SLURM_JOB_MEM=%llu", (unsigned long long) mem);
	if (jobns_run(cmd(), "set-mem", job, NULL, NULL, env, NULL) != 0)
		slurm_error("jobns: job %u: size=N%%mem mounts keep N%% of the node's RAM", job);
}

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

		if (!opt.restore && !(opt.service && opt.prolog))
			return 0;
		jobns_slurmd_cmdline(conf, sizeof(conf), node, sizeof(node));
		/* Without -N, jobns finds the NodeName in slurm.conf as slurmd does.  A config
		 * that cannot be used (exit 2) keeps slurmd from starting: no job may run on a
		 * node whose namespaces are not configured.  Any other failed restore is
		 * logged, and slurmd starts. */
		if (opt.restore &&
		    jobns_run(cmd(), "restore", 0, node, conf, NULL, NULL) == -2) {
			slurm_error("jobns: the jobns configuration cannot be used (see above): slurmd does not start, so that no job runs without its namespace; fix it (`jobns config check`) and start slurmd again");
			return -1;
		}
		/* A failed service must not: without it, prologs run the jobns command. */
		if (opt.service && opt.prolog)
			(void) jobns_run(cmd(), "service", 0, node, conf, NULL, NULL);
		return 0;
	}

	if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS ||
	    spank_get_item(sp, S_JOB_STEPID, &step) != ESPANK_SUCCESS) {
		slurm_error("jobns: cannot get the job and step id");
		return -1;
	}
	if (job == 0)
		return 0;
	pass_job_mem(sp, job);
	if (step == STEP_EXTERN)
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
	char err[JOBNS_ERR_MAX];
	int rc = 0;

	(void) sp;
	(void) ac;
	(void) av;
	if (spank_context() != S_CTX_REMOTE || jj.pid_fd < 0 || pid_switched)
		return 0;
	if (euid != 0 && seteuid(0) < 0) {
		slurm_error("jobns: job %u: seteuid(0): %s", cur_job, strerror(errno));
		return -1;
	}
	if (jobns_join_pid(&jj, err, sizeof(err)) < 0)
		rc = -1;
	else
		pid_switched = 1;
	if (euid != 0 && (setegid(egid) < 0 || seteuid(euid) < 0)) {
		slurm_error("jobns: job %u: cannot drop privileges again: %s", cur_job,
			    strerror(errno));
		return -1;
	}
	if (rc < 0)
		slurm_error("jobns: job %u: %s", cur_job, err);
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
	char err[JOBNS_ERR_MAX];

	(void) sp;
	(void) ac;
	(void) av;
	if (spank_context() != S_CTX_REMOTE || jj.mnt_fd < 0)
		return 0;
	if (jobns_join_user_mnt(&jj, err, sizeof(err)) < 0) {
		slurm_error("jobns: job %u: %s", cur_job, err);
		return -1;
	}
	/* Nothing of ours reaches the task (they are O_CLOEXEC anyway). */
	close_job();
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
	close_job();
	return rc;
}
