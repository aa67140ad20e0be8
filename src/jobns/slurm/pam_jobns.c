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
 * <base>/<J>/.ns/job.json (root-only JSON) names the owner ("uid": N).  The job named by
 * SLURM_JOB_ID in the PAM environment is used if it belongs to the user; otherwise the
 * user's only job, or the newest of several that can be joined ("created_epoch", else
 * the record's mtime; a job whose namespace is lost only when no other can be joined).
 * A user without a job is left alone: this module joins, it does not decide access.
 *
 * Joining, in the session process (root, single-threaded; the user's shell is forked
 * after open_session): PID namespace (affects the children only), then the user
 * namespace that owns the job's mount namespace (if it is not ours), then the mount
 * namespace.
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
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <linux/nsfs.h>

#define PAM_SM_SESSION
#include <security/pam_modules.h>
#include <security/pam_ext.h>

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

#define DEFAULT_RUNTIME "/run/jobns"
#define RECORD_MAX (1024 * 1024)	/* a job record is a few KiB */
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
	strcpy(o->runtime, DEFAULT_RUNTIME);
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

/*
 * The value of the top-level key `key` in a record written as json.dumps(indent=1,
 * sort_keys=True): top-level keys are exactly the lines that start with one space and
 * a quote (a newline inside a JSON string is always escaped).  Returns a pointer to
 * the value text or NULL.
 */
static const char *top_level_value(const char *text, const char *key)
{
	char pat[64];
	const char *p;

	if (snprintf(pat, sizeof(pat), "\n \"%s\": ", key) >= (int) sizeof(pat))
		return NULL;
	p = strstr(text, pat);
	return p ? p + strlen(pat) : NULL;
}

/* Read the record of job `name`: 1 = read (uid and epoch set), 0 = no record (job
 * being created or deleted), -1 = unusable (logged). */
static int read_record(pam_handle_t *pamh, const char *path, const char *name,
		       uid_t *uid, double *epoch)
{
	struct stat st;
	char *buf, *end;
	const char *v, *p;
	ssize_t n, got = 0;
	unsigned long long u;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: open %s: %m", name, path);
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != 0 ||
	    (st.st_mode & 022) || st.st_size > RECORD_MAX) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: %s is not a root-owned job record; ignored",
			   name, path);
		close(fd);
		return -1;
	}
	buf = malloc((size_t) st.st_size + 1);
	if (!buf) {
		close(fd);
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: out of memory", name);
		return -1;
	}
	while (got < st.st_size) {
		n = read(fd, buf + got, (size_t) (st.st_size - got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += n;
	}
	close(fd);
	buf[got] = '\0';

	for (p = buf; *p == ' ' || *p == '\n' || *p == '\t' || *p == '\r'; p++)
		;
	v = top_level_value(buf, "uid");
	if (*p != '{' || !v || *v < '0' || *v > '9') {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: %s has no \"uid\" field; ignored",
			   name, path);
		free(buf);
		return -1;
	}
	errno = 0;
	u = strtoull(v, &end, 10);
	if (errno || u > (uid_t) -1 || (*end != ',' && *end != '\n')) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: %s: bad \"uid\" value; ignored", name, path);
		free(buf);
		return -1;
	}
	*uid = (uid_t) u;
	*epoch = (double) st.st_mtim.tv_sec + st.st_mtim.tv_nsec / 1e9;
	v = top_level_value(buf, "created_epoch");
	if (v) {
		double e;

		errno = 0;
		e = strtod(v, &end);
		if (!errno && end != v && (*end == ',' || *end == '\n'))
			*epoch = e;
	}
	free(buf);
	return 1;
}

/* Is the job whose pin is `pin` joinable (a mounted mount-namespace pin)? */
static int pinned(const char *pin)
{
	int fd = open(pin, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	int ok;

	if (fd < 0)
		return 0;
	ok = ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNS;
	close(fd);
	return ok;
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
		live = pinned(path);
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

static int single_threaded(void)
{
	char line[256];
	int threads = -1;
	FILE *f = fopen("/proc/self/status", "re");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Threads: %d", &threads) == 1)
			break;
	fclose(f);
	return threads;
}

static void close_fd(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

static int same_file(int fd, const char *path)
{
	struct stat a, b;

	return fstat(fd, &a) == 0 && stat(path, &b) == 0 &&
		a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}

/* The job's PID namespace: a pidfd of the PID 1 named in .ns/pid1, accepted only if that
 * process is in the job's mount namespace.  0 = opened or none, -1 = failed (logged). */
static int open_pid_ns(pam_handle_t *pamh, const char *job, const char *ns_dir,
		       int mnt_fd, int *pid_fd)
{
	char path[PATH_MAX + 16], buf[32], proc[64];
	ssize_t n;
	long pid;
	char *end;
	int fd, pfd;

	snprintf(path, sizeof(path), "%s/pid1", ns_dir);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;	/* no PID namespace for this job */
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: open %s: %m", job, path);
		return -1;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: %s is empty or unreadable", job, path);
		return -1;
	}
	buf[n] = '\0';
	errno = 0;
	pid = strtol(buf, &end, 10);
	if (errno || pid <= 1 || pid > INT_MAX || (*end && *end != '\n')) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: %s does not hold a process id", job, path);
		return -1;
	}
	pfd = (int) syscall(SYS_pidfd_open, (pid_t) pid, 0U);
	if (pfd < 0) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: PID 1 of the job's PID namespace (pid %ld, %s) is gone: %m",
			   job, pid, path);
		return -1;
	}
	snprintf(proc, sizeof(proc), "/proc/%ld/ns/mnt", pid);
	if (!same_file(mnt_fd, proc) || syscall(SYS_pidfd_send_signal, pfd, 0, NULL, 0U) < 0) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: pid %ld (%s) is not the job's PID 1 (not in its mount namespace)",
			   job, pid, path);
		close(pfd);
		return -1;
	}
	*pid_fd = pfd;
	return 0;
}

/* The user namespace that owns the job's mount namespace, if it is not ours. */
static int open_user_ns(pam_handle_t *pamh, const char *job, const char *pin,
			int mnt_fd, int *user_fd)
{
	int fd = ioctl(mnt_fd, NS_GET_USERNS);

	if (fd < 0) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: NS_GET_USERNS on %s: %m", job, pin);
		return -1;
	}
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: user namespace of %s: %m", job, pin);
		close(fd);
		return -1;
	}
	if (same_file(fd, "/proc/self/ns/user"))
		close(fd);	/* the job has no user namespace of its own */
	else
		*user_fd = fd;
	return 0;
}

/* Join the job's namespaces: 0 = joined, -1 = not joined (logged). */
static int join_job(pam_handle_t *pamh, const struct options *o, const char *job)
{
	char ns_dir[PATH_MAX], pin[PATH_MAX + 16];
	int mnt_fd = -1, user_fd = -1, pid_fd = -1, own_pid_fd = -1, threads, rc = -1;

	if (snprintf(ns_dir, sizeof(ns_dir), "%s/jobs/%s/.ns", o->runtime, job) >=
	    (int) sizeof(ns_dir)) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: runtime path too long", job);
		return -1;
	}
	snprintf(pin, sizeof(pin), "%s/mnt", ns_dir);
	if (geteuid() != 0) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: the session runs as uid %u, not root; cannot join %s",
			   job, (unsigned) geteuid(), pin);
		return -1;
	}
	threads = single_threaded();
	if (threads != 1) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: the session process has %d threads; namespaces (%s) can be joined only by a single-threaded process",
			   job, threads, pin);
		return -1;
	}
	mnt_fd = open(pin, O_RDONLY | O_CLOEXEC);
	if (mnt_fd < 0) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: cannot open the job's namespace %s: %m",
			   job, pin);
		return -1;
	}
	if (ioctl(mnt_fd, NS_GET_NSTYPE) != CLONE_NEWNS) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: %s is not a mount namespace pin (the job's namespace is lost)",
			   job, pin);
		goto out;
	}
	if (open_user_ns(pamh, job, pin, mnt_fd, &user_fd) < 0 ||
	    open_pid_ns(pamh, job, ns_dir, mnt_fd, &pid_fd) < 0)
		goto out;

	if (pid_fd >= 0) {
		own_pid_fd = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
		if (own_pid_fd < 0) {
			pam_syslog(pamh, LOG_ERR, "jobns: job %s: open /proc/self/ns/pid: %m", job);
			goto out;
		}
		if (setns(pid_fd, CLONE_NEWPID) < 0) {
			pam_syslog(pamh, LOG_ERR, "jobns: job %s: setns(PID namespace of %s/pid1): %m",
				   job, ns_dir);
			goto out;
		}
	}
	if (user_fd >= 0 && setns(user_fd, CLONE_NEWUSER) < 0) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: setns(user namespace of %s): %m", job, pin);
		/* nothing joined for good yet: the session's children stay on the host */
		if (own_pid_fd >= 0 && setns(own_pid_fd, CLONE_NEWPID) < 0)
			pam_syslog(pamh, LOG_ERR, "jobns: job %s: setns back to the host PID namespace: %m",
				   job);
		goto out;
	}
	if (setns(mnt_fd, CLONE_NEWNS) < 0) {
		pam_syslog(pamh, LOG_ERR, "jobns: job %s: setns(mount namespace %s): %m%s", job, pin,
			   user_fd >= 0 ? " (the session is left in the job's user namespace)" : "");
		if (user_fd < 0 && own_pid_fd >= 0 && setns(own_pid_fd, CLONE_NEWPID) < 0)
			pam_syslog(pamh, LOG_ERR, "jobns: job %s: setns back to the host PID namespace: %m",
				   job);
		goto out;
	}
	rc = 0;
out:
	close_fd(&mnt_fd);
	close_fd(&user_fd);
	close_fd(&pid_fd);
	close_fd(&own_pid_fd);
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
