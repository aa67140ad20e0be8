/*
 * jobns_native.c - jobns as Slurm's own job-container layer (built by
 * `jobns slurm build-plugin --native --slurm-src DIR`).
 *
 * One source for two plugin interfaces, compiled against the site's configured Slurm
 * source tree (the plugin must carry that Slurm's version number and read its step
 * records):
 *   job_container/jobns  JobContainerType=job_container/jobns   Slurm 22.05 .. 25.05
 *   namespace/jobns      NamespaceType=namespace/jobns          Slurm 25.11 ..
 * JOBNS_API (set by the build from the tree's interface headers) selects the variant:
 *   2205  container_p_create/add_cont/delete/reconfig, stepd_create(job, uid)
 *   2302  + send_stepd/recv_stepd, stepd_create(job, step record)
 *   2405  the seven remaining container_p_* calls
 *   2411  container_p_join(step id, uid, step_create)
 *   2511  namespace_p_*, stepd_delete(step id)
 *   2605  namespace_p_*, stepd_delete(step record)
 *
 * Like the SPANK plugin it holds no namespace logic:
 *   create   (stepd_create, in the job's extern slurmstepd, before any SPANK plugin
 *             runs for the job)   -> `jobns slurm prolog`, the job read from the step
 *   delete   (stepd_delete, extern slurmstepd, after every other step has ended and
 *             after all SPANK epilogs)  -> `jobns slurm epilog`
 *   restore  (slurmd start)       -> `jobns slurm restore --spool-dir <SlurmdSpoolDir>`
 * all through jobns_run() (jobns_run.h), the job-start path the SPANK plugin uses: the
 * per-node jobns service (started after restore), else the CLI as a process.
 *   join     open the job's pin <runtime>/jobs/<J>/.ns/mnt and setns: PID (children
 *            only), USER, MNT, with jobns_join.h (the join of the SPANK and PAM
 *            modules).  Slurm calls it in single-threaded forked children: the task
 *            before exec, TaskProlog/TaskEpilog, the sbcast writer in slurmd, x11
 *            and, from 24.11 on, slurmd's child that execs a step's slurmstepd, so the
 *            whole step (SPANK plugins included) runs inside the job's namespaces.
 *   join_external  the pin fds pam_slurm_adopt receives (REQUEST_GET_NS_FD(S)).
 *
 * Before 24.11 the task is forked by slurmstepd before the join, so it cannot be born
 * in the job's PID namespace: a job with a PID namespace is refused there (the SPANK
 * route gives it), never run half isolated.
 *
 * The jobns executable, its config file, runtime dir and the use of the jobns service
 * are fixed at build time (JOBNS_EXE, JOBNS_CONFIG, JOBNS_RUNTIME, JOBNS_SERVICE):
 * job_container and namespace plugins take no arguments.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "config.h"
#include "slurm/slurm.h"
#include "slurm/slurm_errno.h"
#include "src/common/slurm_xlator.h"
#include "src/common/read_config.h"
#include "src/slurmd/slurmd/slurmd.h"
#if JOBNS_API >= 2302
#include "src/slurmd/slurmstepd/slurmstepd_job.h"
#endif
#if JOBNS_API >= 2511
#include "src/common/list.h"
#include "src/common/xmalloc.h"
#endif

/* slurm_error(), slurm_info() and slurm_debug(): libslurm's logging (log.h, also what
 * the SPANK API exports; jobns_run.h uses the first two) */
#include "jobns_run.h"
#include "jobns_join.h"

#ifndef JOBNS_API
#error "JOBNS_API is not set (build with jobns slurm build-plugin --native)"
#endif
#if !defined(JOBNS_EXE) || !defined(JOBNS_RUNTIME) || !defined(JOBNS_CONFIG)
#error "JOBNS_EXE, JOBNS_CONFIG and JOBNS_RUNTIME must be defined by the build"
#endif

#if JOBNS_API >= 2511
const char plugin_name[] = "jobns namespace plugin";
const char plugin_type[] = "namespace/jobns";
#else
const char plugin_name[] = "jobns job_container plugin";
const char plugin_type[] = "job_container/jobns";
#endif
const uint32_t plugin_version = SLURM_VERSION_NUMBER;

/* slurmd's (and slurmstepd's) configuration: the node name */
extern slurmd_conf_t *conf __attribute__((weak));

/* Marks a process (and the slurmstepd it execs) that joined the job at step creation:
 * inside the job's mount namespace the pin is not visible, so later joins recognise
 * "already inside" by this and the namespace's inode, never by a missing pin. */
#define JOINED_ENV "JOBNS_NATIVE_JOINED"

#ifndef JOBNS_SERVICE
#define JOBNS_SERVICE 1
#endif
/* prolog/epilog go to the per-node jobns service first (docs/service.md), as from the
 * SPANK plugin; build-plugin --no-service compiles JOBNS_SERVICE=0 */
static const struct jobns_cmd jobns_cmd = {
	.jobns = JOBNS_EXE, .config = JOBNS_CONFIG, .runtime = JOBNS_RUNTIME,
	.service = JOBNS_SERVICE,
};

/* The job's namespaces, opened once in the extern slurmstepd for join_external. */
static uint32_t ext_job;
static struct jobns_job ext;	/* jobns_job_init'ed by init() */

static const char *node_name(void)
{
	if (&conf && conf && conf->node_name && conf->node_name[0])
		return conf->node_name;
	return NULL;
}

/* This node's runtime dir (see jobns_node_runtime). */
static const char *runtime_dir(void)
{
	static char buf[PATH_MAX];
	const char *node = node_name();

	return jobns_node_runtime(JOBNS_RUNTIME, node ? node : getenv("SLURMD_NODENAME"), buf,
				  sizeof(buf));
}

static int disabled_on_node(void)
{
	char path[PATH_MAX];

	if (snprintf(path, sizeof(path), "%s/slurm-disabled", runtime_dir()) >= (int) sizeof(path))
		return 0;
	return access(path, F_OK) == 0;
}

/*
 * Open the job's namespaces (jobns_join.h) from the host's mount namespace.  Returns 1
 * when the job has none because jobns is disabled on this node, 0 when open, -1 on error.
 */
static int open_job(uint32_t job, struct jobns_job *j)
{
	char id[16], err[JOBNS_ERR_MAX];

	snprintf(id, sizeof(id), "%u", job);
	if (jobns_open(j, runtime_dir(), id, err, sizeof(err)) == 0)
		return 0;
	if (errno == ENOENT && disabled_on_node()) {
		debug("jobns: job %u: jobns is disabled on this node", job);
		return 1;
	}
	slurm_error("jobns: job %u: %s%s", job, err, errno == ENOENT ?
		    " (did the job's extern step create it? PrologFlags=Contain is required)" : "");
	return -1;
}

/* This process joined the job at step creation (and is still in its namespace). */
static int joined_at_step_create(uint32_t job)
{
	const char *v = getenv(JOINED_ENV);
	unsigned long long ino;
	unsigned int j;
	struct stat st;

	if (!v || sscanf(v, "%u:%llu", &j, &ino) != 2 || j != job)
		return 0;
	return stat("/proc/self/ns/mnt", &st) == 0 && (unsigned long long) st.st_ino == ino;
}

/*
 * Move the calling (single-threaded, root) process into the job's namespaces: PID
 * (its later children), USER, MNT.  `whole_step`: slurmd's child that execs the step's
 * slurmstepd (24.11+); the tasks are then forked inside the job's PID namespace.
 */
static int join_job(uint32_t job, bool whole_step)
{
	struct jobns_job j;
	char mark[64], err[JOBNS_ERR_MAX];
	struct stat st;
	int rc;

	if (job == 0)
		return SLURM_SUCCESS;	/* not a job: a script of slurmd's own */
	if (joined_at_step_create(job))
		return SLURM_SUCCESS;
	rc = open_job(job, &j);
	if (rc)
		return rc > 0 ? SLURM_SUCCESS : SLURM_ERROR;
	if (jobns_same_file(j.mnt_fd, "/proc/self/ns/mnt")) {
		jobns_close(&j);
		return SLURM_SUCCESS;
	}
#if JOBNS_API < 2411
	/* The caller is already forked: it cannot be born in the PID namespace.  It still
	 * joins the others (a caller that ignores the error, like Slurm's TaskEpilog, runs
	 * inside them), and the error fails the task. */
	(void) whole_step;
	(void) mark;
	(void) st;
	rc = jobns_join_user_mnt(&j, err, sizeof(err)) < 0 ? -1 : 0;
	if (!rc && j.pid_fd >= 0) {
		snprintf(err, sizeof(err), "the job has a PID namespace (clone_ns_flags CLONE_NEWPID), which job_container/jobns cannot give tasks before Slurm 24.11: use the SPANK plugin for such jobs");
		rc = -1;
	}
#else
	rc = jobns_join(&j, err, sizeof(err));
	if (!rc && whole_step) {
		if (fstat(j.mnt_fd, &st) < 0)
			rc = jobns_err(err, sizeof(err), "fstat %s: %s", j.pin, strerror(errno));
		else if (snprintf(mark, sizeof(mark), "%u:%llu", job,
				  (unsigned long long) st.st_ino) < 0 ||
			 setenv(JOINED_ENV, mark, 1) < 0)
			rc = jobns_err(err, sizeof(err), "setenv: %s", strerror(errno));
	}
#endif
	jobns_close(&j);
	if (rc) {
		slurm_error("jobns: job %u: %s", job, err);
		return SLURM_ERROR;
	}
	return SLURM_SUCCESS;
}

/* The job's namespaces for an adopted process (pam_slurm_adopt), opened once by the
 * extern slurmstepd, which runs in the host's mount namespace.  1: jobns is disabled
 * on this node (no namespaces), 0: open, -1: error. */
static int open_external(uint32_t job)
{
	int rc;

	if (ext.mnt_fd >= 0 && ext_job == job)
		return 0;
	jobns_close(&ext);
	rc = open_job(job, &ext);
	if (rc == 0)
		ext_job = job;
	return rc;
}

/* ------------------------------------------------------------ create, delete, restore */

static int create_job(uint32_t job, uid_t uid, gid_t gid, const char *user)
{
	char e_job[48], e_uid[48], e_gid[48], e_user[300], e_node[300];
	char *env[8];
	const char *node = node_name();
	int n = 0;

	snprintf(e_job, sizeof(e_job), "SLURM_JOB_ID=%u", job);
	snprintf(e_uid, sizeof(e_uid), "SLURM_JOB_UID=%u", (unsigned) uid);
	snprintf(e_gid, sizeof(e_gid), "SLURM_JOB_GID=%u", (unsigned) gid);
	env[n++] = e_job;
	env[n++] = e_uid;
	env[n++] = e_gid;
	if (user && user[0] && strlen(user) < 256) {
		snprintf(e_user, sizeof(e_user), "SLURM_JOB_USER=%s", user);
		env[n++] = e_user;
	}
	if (node && strlen(node) < 256) {
		snprintf(e_node, sizeof(e_node), "SLURMD_NODENAME=%s", node);
		env[n++] = e_node;
	}
	env[n] = NULL;
	return jobns_run(&jobns_cmd, "prolog", job, node, slurm_conf.slurm_conf, env, NULL)
		? SLURM_ERROR : SLURM_SUCCESS;
}

static int delete_job(uint32_t job)
{
	char e_job[48];
	char *env[2] = { e_job, NULL };

	jobns_close(&ext);	/* an open fd would keep the namespace alive */
	if (geteuid() != 0)
		debug("jobns: job %u: slurmstepd's effective uid is %u at stepd_delete; jobns runs as root",
		      job, (unsigned) geteuid());
	snprintf(e_job, sizeof(e_job), "SLURM_JOB_ID=%u", job);
	return jobns_run(&jobns_cmd, "epilog", job, node_name(), slurm_conf.slurm_conf, env,
			 NULL) ? SLURM_ERROR : SLURM_SUCCESS;
}

static int restore_node(const char *spool_dir)
{
	char conf_path[PATH_MAX], node[256];
	char *args[3] = { "--spool-dir", (char *) spool_dir, NULL };
	const char *name = node_name();

	jobns_slurmd_cmdline(conf_path, sizeof(conf_path), node, sizeof(node));
	if (!name)
		name = node;
	const char *slurm_conf_path = slurm_conf.slurm_conf ? slurm_conf.slurm_conf : conf_path;
	int rc;

	/* A failed restore is logged; slurmd keeps running (Slurm logs the error too). */
	rc = jobns_run(&jobns_cmd, "restore", 0, name, slurm_conf_path, NULL,
		       spool_dir && spool_dir[0] ? args : NULL);
	/* Neither must the service: without it, prologs run the jobns command. */
	if (jobns_cmd.service)
		(void) jobns_run(&jobns_cmd, "service", 0, name, slurm_conf_path, NULL, NULL);
	return rc ? SLURM_ERROR : SLURM_SUCCESS;
}

#if JOBNS_API < 2302
static int create_for_uid(uint32_t job, uid_t uid)
{
	struct passwd pw, *res = NULL;
	char buf[4096];

	if (getpwuid_r(uid, &pw, buf, sizeof(buf), &res) || !res) {
		slurm_error("jobns: job %u: uid %u has no passwd entry", job, (unsigned) uid);
		return SLURM_ERROR;
	}
	return create_job(job, uid, pw.pw_gid, pw.pw_name);
}
#endif

/* ------------------------------------------------------------ the plugin interface */

extern int init(void)
{
	jobns_job_init(&ext);
	return SLURM_SUCCESS;
}

extern int fini(void)
{
	jobns_close(&ext);
	return SLURM_SUCCESS;
}

#if JOBNS_API < 2511	/* ------------------------------ job_container (22.05 .. 25.05) */

extern int container_p_restore(char *dir_name, bool recover)
{
	(void) recover;
	return restore_node(dir_name);
}

#if JOBNS_API < 2302
extern int container_p_stepd_create(uint32_t job_id, uid_t uid)
{
	return create_for_uid(job_id, uid);
}
#else
extern int container_p_stepd_create(uint32_t job_id, stepd_step_rec_t *step)
{
	return create_job(job_id, step->uid, step->gid, step->user_name);
}
#endif

extern int container_p_stepd_delete(uint32_t job_id)
{
	return delete_job(job_id);
}

#if JOBNS_API < 2411
extern int container_p_join(uint32_t job_id, uid_t uid)
{
	(void) uid;
	return join_job(job_id, false);
}
#else
extern int container_p_join(slurm_step_id_t *step_id, uid_t uid, bool step_create)
{
	(void) uid;
	return join_job(step_id->job_id, step_create);
}
#endif

extern int container_p_join_external(uint32_t job_id)
{
	int rc = open_external(job_id);

	return rc == 0 ? ext.mnt_fd : rc > 0 ? 0 : -1;	/* 0: no namespace to join */
}

#if JOBNS_API < 2405
extern int container_p_create(uint32_t job_id, uid_t uid)
{
	(void) job_id;
	(void) uid;
	return SLURM_SUCCESS;	/* the extern step creates it (stepd_create) */
}

extern int container_p_add_cont(uint32_t job_id, uint64_t cont_id)
{
	(void) job_id;
	(void) cont_id;
	return SLURM_SUCCESS;
}

extern int container_p_delete(uint32_t job_id)
{
	(void) job_id;
	return SLURM_SUCCESS;	/* the extern step deletes it (stepd_delete) */
}

extern void container_p_reconfig(void)
{
}
#endif

#if JOBNS_API >= 2302
extern int container_p_send_stepd(int fd)
{
	(void) fd;
	return SLURM_SUCCESS;	/* nothing to send: the configuration is jobns' */
}

extern int container_p_recv_stepd(int fd)
{
	(void) fd;
	return SLURM_SUCCESS;
}
#endif

#else	/* ------------------------------------------------------ namespace (25.11 ..) */

extern int namespace_p_restore(char *dir_name, bool recover)
{
	(void) recover;
	return restore_node(dir_name);
}

extern int namespace_p_stepd_create(stepd_step_rec_t *step)
{
	return create_job(step->step_id.job_id, step->uid, step->gid, step->user_name);
}

#if JOBNS_API >= 2605
extern int namespace_p_stepd_delete(stepd_step_rec_t *step)
{
	return delete_job(step->step_id.job_id);
}
#else
extern int namespace_p_stepd_delete(slurm_step_id_t *step_id)
{
	return delete_job(step_id->job_id);
}
#endif

extern int namespace_p_join(slurm_step_id_t *step_id, uid_t uid, bool step_create)
{
	(void) uid;
	return join_job(step_id->job_id, step_create);
}

static void add_fd(list_t *map, int type, int fd)
{
	ns_fd_map_t *entry = xmalloc(sizeof(*entry));

	entry->type = type;
	entry->fd = fd;
	list_append(map, entry);
}

/* PID, USER, MNT: the order in which pam_slurm_adopt joins them. */
extern int namespace_p_join_external(slurm_step_id_t *step_id, list_t *fd_map)
{
	int rc = open_external(step_id->job_id);

	if (rc < 0)
		return -1;
	if (rc > 0)
		return 0;
	if (ext.pid_fd >= 0)	/* a pidfd: setns(fd, CLONE_NEWPID) takes it (Linux 5.8+) */
		add_fd(fd_map, CLONE_NEWPID, ext.pid_fd);
	if (ext.user_fd >= 0)
		add_fd(fd_map, CLONE_NEWUSER, ext.user_fd);
	add_fd(fd_map, CLONE_NEWNS, ext.mnt_fd);
	return list_count(fd_map);
}

extern int namespace_p_send_stepd(int fd)
{
	(void) fd;
	return SLURM_SUCCESS;
}

extern int namespace_p_recv_stepd(int fd)
{
	(void) fd;
	return SLURM_SUCCESS;
}

extern bool namespace_p_can_bpf(stepd_step_rec_t *step)
{
	(void) step;
	return false;
}

extern int namespace_p_setup_bpf_token(stepd_step_rec_t *step)
{
	(void) step;
	return SLURM_SUCCESS;
}

#endif
