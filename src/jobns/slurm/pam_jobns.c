/*
 * pam_jobns.c - PAM session module of jobns (built by `jobns slurm build-pam`).
 *
 * pam_sm_open_session moves the session into the namespaces of the PAM user's job on
 * this node, so that an ssh login (admitted by pam_slurm_adopt) sees the job's private
 * /tmp and /dev/shm, and, if the job has them, its PID and user namespaces.  It holds
 * no namespace logic: it joins what `jobns slurm prolog` built, with the same checks
 * as the SPANK plugin (jobns_spank.c).
 *
 * Finding the job: every live job has <runtime>/jobs/<J> -> <base>/<J>, and its record
 * <base>/<J>/.ns/job.json (root-only JSON, read by jobns_join.h) names the owner ("uid").  The job named by
 * SLURM_JOB_ID in the PAM environment is used if it belongs to the user; otherwise the
 * user's only job, or the newest of several that can be joined ("created_epoch", else
 * the record's mtime; a job whose namespace is lost only when no other can be joined).
 * A user without a job is left alone: this module joins, it does not decide access.
 *
 * Joining, in the session process (root, single-threaded; the user's shell is forked
 * after open_session), is jobns_join.h's: PID namespace (affects the children only), then
 * the user namespace that owns the job's mount namespace (if it is not ours), then the
 * mount namespace.
 *
 * /etc/pam.d/sshd, after pam_slurm_adopt:
 *   session required /path/to/pam_jobns.so runtime=/run/jobns
 * Arguments:
 *   runtime=DIR      jobns runtime dir (default /run/jobns)
 *   required_join    a job that cannot be joined denies the session (PAM_SESSION_ERR);
 *                    without it the failure is logged and the session goes on unjoined
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/types.h>

#define PAM_SM_SESSION
#include <security/pam_modules.h>
#include <security/pam_ext.h>

#include "jobns_join.h"

#define NAME_MAX_LEN 256

struct options {
	char runtime[PATH_MAX];
	int required_join;
};

struct choice {
	char job[NAME_MAX_LEN];
	double epoch;
	int live;	/* its mount namespace is pinned: it can be joined */
	int found;
};

static void parse_args(pam_handle_t *pamh, int argc, const char **argv, struct options *o)
{
	strcpy(o->runtime, JOBNS_DEFAULT_RUNTIME);
	o->required_join = 0;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];

		if (!strncmp(a, "runtime=", 8)) {
			if (a[8] != '/' || strlen(a + 8) >= sizeof(o->runtime))
				pam_syslog(pamh, LOG_ERR, "jobns: argument '%s': need an absolute path; using %s",
					   a, o->runtime);
			else
				strcpy(o->runtime, a + 8);
		} else if (!strcmp(a, "required_join")) {
			o->required_join = 1;
		} else {
			pam_syslog(pamh, LOG_ERR, "jobns: unknown argument '%s' ignored (known: runtime=DIR required_join)",
				   a);
		}
	}
}

/* ---------------------------------------------------------------- the job record */

/* Read the record of job `name`: 1 = read (uid and epoch set), 0 = no record (job being
 * created or deleted), -1 = unusable (logged). */
static int read_record(pam_handle_t *pamh, const char *path, const char *name,
		       uid_t *uid, double *epoch)
{
	struct jobns_record rec;
	char err[JOBNS_ERR_MAX];
	struct stat st;
	int rc = jobns_read_record(path, &rec, err, sizeof(err));

	if (rc < 0)
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: %s; ignored", name, err);
	if (rc != 1)
		return rc;
	*uid = (uid_t) rec.uid;
	if (rec.have & JOBNS_REC_EPOCH)
		*epoch = rec.created_epoch;
	else if (stat(path, &st) == 0)
		*epoch = (double) st.st_mtim.tv_sec + st.st_mtim.tv_nsec / 1e9;
	else
		*epoch = 0;
	return 1;
}

/* Is `a` (epoch, name) newer than `b`?  Ties go to the name that sorts last. */
static int newer(double ea, const char *a, double eb, const char *b)
{
	if (ea != eb)
		return ea > eb;
	return strcmp(a, b) > 0;
}

/*
 * Choose the user's job: 1 = chosen (in *out), 0 = the user has no job here,
 * -1 = the index cannot be read (logged).
 */
static int choose_job(pam_handle_t *pamh, const struct options *o, const char *user,
		      uid_t uid, struct choice *out)
{
	char dir[PATH_MAX], path[PATH_MAX];
	struct choice requested = { .found = 0 }, newest = { .found = 0 };
	const char *want = pam_getenv(pamh, "SLURM_JOB_ID");
	struct dirent *e;
	int count = 0;
	DIR *d;

	if (snprintf(dir, sizeof(dir), "%s/jobs", o->runtime) >= (int) sizeof(dir)) {
		pam_syslog(pamh, LOG_ERR, "jobns: runtime dir %s: path too long", o->runtime);
		return -1;
	}
	d = opendir(dir);
	if (!d) {
		if (errno == ENOENT)
			return 0;	/* jobns never ran a job here */
		pam_syslog(pamh, LOG_ERR, "jobns: cannot read the job index %s: %m", dir);
		return -1;
	}
	while ((e = readdir(d))) {
		uid_t owner;
		double epoch;
		int live;

		if (e->d_name[0] == '.' || strlen(e->d_name) >= NAME_MAX_LEN)
			continue;
		if (snprintf(path, sizeof(path), "%s/%s/.ns/job.json", dir, e->d_name) >=
		    (int) sizeof(path))
			continue;
		if (read_record(pamh, path, e->d_name, &owner, &epoch) != 1 || owner != uid)
			continue;
		count++;
		if (snprintf(path, sizeof(path), "%s/%s/.ns/mnt", dir, e->d_name) >=
		    (int) sizeof(path))
			continue;
		live = jobns_pinned(path);
		if (want && !strcmp(want, e->d_name)) {
			strcpy(requested.job, e->d_name);
			requested.epoch = epoch;
			requested.found = 1;
		}
		/* the newest job that can be joined; a lost one only if none can */
		if (!newest.found || live > newest.live ||
		    (live == newest.live && newer(epoch, e->d_name, newest.epoch, newest.job))) {
			strcpy(newest.job, e->d_name);
			newest.epoch = epoch;
			newest.live = live;
			newest.found = 1;
		}
	}
	closedir(d);

	if (requested.found) {
		*out = requested;
		return 1;
	}
	if (want && want[0])
		pam_syslog(pamh, LOG_NOTICE, "jobns: SLURM_JOB_ID=%s is not a job of user %s on this node",
			   want, user);
	if (!count)
		return 0;
	if (count > 1)
		pam_syslog(pamh, LOG_NOTICE, "jobns: user %s has %d jobs on this node; joining job %s, the newest that can be joined",
			   user, count, newest.job);
	*out = newest;
	return 1;
}

/* ---------------------------------------------------------------- joining */

/* Join the job's namespaces (jobns_join.h): 0 = joined, -1 = not joined (logged). */
static int join_job(pam_handle_t *pamh, const struct options *o, const char *job)
{
	struct jobns_job j;
	char err[JOBNS_ERR_MAX];
	int threads, rc;

	if (geteuid() != 0) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: the session runs as uid %u, not root; cannot join %s/jobs/%s",
			   job, (unsigned) geteuid(), o->runtime, job);
		return -1;
	}
	threads = jobns_thread_count();
	if (threads != 1) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: the session process has %d threads; namespaces (%s/jobs/%s) can be joined only by a single-threaded process",
			   job, threads, o->runtime, job);
		return -1;
	}
	if (jobns_open(&j, o->runtime, job, err, sizeof(err)) < 0) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: %s", job, err);
		return -1;
	}
	rc = jobns_join(&j, err, sizeof(err));
	if (rc < 0)
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: %s", job, err);
	jobns_close(&j);
	return rc;
}

/* ---------------------------------------------------------------- PAM entry points */

PAM_EXTERN int pam_sm_open_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	struct options o;
	struct choice job;
	struct passwd pw, *pwp = NULL;
	const char *user = NULL;
	char *buf;
	long bufsize;
	int rc;

	(void) flags;
	parse_args(pamh, argc, argv, &o);
	if (pam_get_user(pamh, &user, NULL) != PAM_SUCCESS || !user || !user[0]) {
		pam_syslog(pamh, LOG_ERR, "jobns: cannot get the PAM user");
		return o.required_join ? PAM_SESSION_ERR : PAM_SUCCESS;
	}
	bufsize = sysconf(_SC_GETPW_R_SIZE_MAX);
	if (bufsize < 16384)
		bufsize = 16384;
	buf = malloc((size_t) bufsize);
	if (!buf) {
		pam_syslog(pamh, LOG_ERR, "jobns: user %s: out of memory", user);
		return o.required_join ? PAM_SESSION_ERR : PAM_SUCCESS;
	}
	if (getpwnam_r(user, &pw, buf, (size_t) bufsize, &pwp) != 0 || !pwp) {
		pam_syslog(pamh, LOG_ERR, "jobns: unknown user %s", user);
		free(buf);
		return o.required_join ? PAM_SESSION_ERR : PAM_SUCCESS;
	}
	rc = choose_job(pamh, &o, user, pw.pw_uid, &job);
	if (rc == 0) {
		free(buf);
		return PAM_SUCCESS;	/* no job of this user here: nothing to join */
	}
	if (rc < 0 || join_job(pamh, &o, job.job) < 0) {
		if (rc > 0)
			pam_syslog(pamh, LOG_ERR, "jobns: user %s: the session was not moved into job %s%s",
				   user, job.job, o.required_join ? "; denied (required_join)" : "");
		free(buf);
		return o.required_join ? PAM_SESSION_ERR : PAM_SUCCESS;
	}
	pam_syslog(pamh, LOG_INFO, "jobns: user %s: session joined the namespaces of job %s",
		   user, job.job);
	free(buf);
	return PAM_SUCCESS;
}

PAM_EXTERN int pam_sm_close_session(pam_handle_t *pamh, int flags, int argc, const char **argv)
{
	/* Nothing to undo: the namespaces go with the session's processes. */
	(void) pamh;
	(void) flags;
	(void) argc;
	(void) argv;
	return PAM_SUCCESS;
}
