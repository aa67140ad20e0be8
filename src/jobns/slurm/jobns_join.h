/*
 * jobns_join.h - find, open and join the namespaces of a jobns job (header-only C).
 *
 * The one C implementation of the join, shared by the SPANK plugin (jobns_spank.c), the
 * PAM session module (pam_jobns.c) and any other native code that puts a process into a
 * job's namespaces.  The Python twin is jobns/join.py (open_job, join); both follow the
 * rules below, and a change to one is a change to both.
 *
 * Self-contained: it needs only libc and the kernel headers, logs nothing (errors are
 * returned as text in the caller's buffer, to be logged with slurm_error, pam_syslog,
 * ...), and every function is `static inline`, so a program includes it once per
 * translation unit and unused functions cost nothing (no -Wunused-function).
 *
 * The on-disk contract (written by jobns; documented in docs/architecture.md):
 *
 *   <runtime>/jobs/<J>                   symlink to <base_path>/<J> (the node's index)
 *   <runtime>/jobs/<J>/.ns/mnt           the mount-namespace pin (nsfs bind mount)
 *   <runtime>/jobs/<J>/.ns/pid1          host pid of the job's PID 1, only with a PID ns
 *   <runtime>/jobs/<J>/.ns/job.json      the job record (root-owned, 0600)
 *   <runtime>/jobs/<J>/.ns/cgroup        the directory of the job's cgroup v2 group, only
 *                                        where joined processes go into it (containment)
 *
 * The record is one JSON object (RFC 8259).  Native readers rely only on that and on
 * these top-level members, which jobns keeps: "version" (1), "job_id" (string), "uid",
 * "gid" (integers), "created_epoch" (seconds since the epoch, a number).  Other members,
 * their order, whitespace and indentation may change: jobns_read_record parses the JSON
 * (any layout, escapes, nesting) and ignores members it does not know.
 *
 * The rules of a join:
 *   1. MNT: open the pin; it must be a mount namespace (NS_GET_NSTYPE), else the job's
 *      namespace is lost.
 *   2. USER: the user namespace that owns the job's mount namespace (NS_GET_USERNS on
 *      the pin), joined only when it is not the caller's own.
 *   3. PID: when .ns/pid1 exists, a pidfd of that pid, accepted only if the process is in
 *      the pinned mount namespace and still alive after the check (a reused pid cannot
 *      redirect the join); setns(pidfd, CLONE_NEWPID) needs Linux >= 5.8.
 *   4. Order PID, USER, MNT (Slurm's order).  PID affects only children forked later.
 *      setns into USER and MNT needs a single-threaded caller (jobns_thread_count).
 *   5. CGROUP: when .ns/cgroup exists, the joining process first moves itself into that
 *      group (its cgroup.procs is opened by jobns_open, as root), so that it and all it
 *      starts die with the job however they re-unshare; a process that cannot enter it
 *      is not joined.  No file: the process stays in its cgroups (docs/namespaces.md).
 *
 * Use:
 *   struct jobns_job j;
 *   char err[JOBNS_ERR_MAX];
 *   if (jobns_open(&j, runtime, "42", err, sizeof(err)) < 0)  -> log err (errno kept)
 *   if (jobns_join(&j, err, sizeof(err)) < 0)                  -> log err
 *   jobns_close(&j);
 * or, split as slurmstepd needs it: jobns_join_pid (before the tasks fork) then
 * jobns_join_user_mnt (in each task).
 */
#ifndef JOBNS_JOIN_H
#define JOBNS_JOIN_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE		/* setns(2); define it before any other include */
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>

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

#define JOBNS_DEFAULT_RUNTIME "/run/jobns"
#define JOBNS_ERR_MAX 512

/* The open namespaces of one job; -1 = not open / the job has none of that kind. */
struct jobns_job {
	int mnt_fd;		/* the pin */
	int user_fd;		/* the job's own user namespace */
	int pid_fd;		/* pidfd of the job's PID 1 */
	int group_fd;		/* cgroup.procs of the job's cgroup v2 group (rule 5) */
	char ns_dir[PATH_MAX];	/* <runtime>/jobs/<J>/.ns */
	char pin[PATH_MAX];	/* <ns_dir>/mnt */
};

/* What the record says (JOBNS_REC_* bits in `have` tell which members were present). */
struct jobns_record {
	unsigned long long uid, gid;
	double created_epoch;
	char job_id[256];
	int have;
};
#define JOBNS_REC_UID 1
#define JOBNS_REC_GID 2
#define JOBNS_REC_EPOCH 4
#define JOBNS_REC_JOB_ID 8
#define JOBNS_RECORD_MAX (1024 * 1024)	/* a job record is a few KiB */
#define JOBNS_JSON_DEPTH 64

static inline int jobns_err(char *err, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Fill `err` and return -1, keeping errno as it was. */
static inline int jobns_err(char *err, size_t len, const char *fmt, ...)
{
	int saved = errno;
	va_list ap;

	if (err && len) {
		va_start(ap, fmt);
		vsnprintf(err, len, fmt, ap);
		va_end(ap);
	}
	errno = saved;
	return -1;
}

static inline void jobns_close_fd(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

static inline void jobns_job_init(struct jobns_job *j)
{
	j->mnt_fd = j->user_fd = j->pid_fd = j->group_fd = -1;
	j->ns_dir[0] = j->pin[0] = '\0';
}

static inline void jobns_close(struct jobns_job *j)
{
	jobns_close_fd(&j->mnt_fd);
	jobns_close_fd(&j->user_fd);
	jobns_close_fd(&j->pid_fd);
	jobns_close_fd(&j->group_fd);
}

/* Threads of the calling process (from /proc/self/status), -1 if unknown. */
static inline int jobns_thread_count(void)
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

static inline int jobns_same_file(int fd, const char *path)
{
	struct stat a, b;

	return fstat(fd, &a) == 0 && stat(path, &b) == 0 &&
		a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}

/* Is `pin` a mounted mount-namespace pin (the job can be joined)? */
static inline int jobns_pinned(const char *pin)
{
	int fd = open(pin, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	int ok;

	if (fd < 0)
		return 0;
	ok = ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNS;
	close(fd);
	return ok;
}

/* ---- a small, strict JSON reader for the record's top level ---- */

static inline const char *jobns_json_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/*
 * A JSON string at p (the opening quote); returns the position after it, or NULL.  If
 * `out` is given, the string is stored there (escapes decoded; a \u escape that is not
 * printable ASCII is stored as '?'); a string that does not fit is an error.
 */
static inline const char *jobns_json_string(const char *p, const char *end, char *out,
					    size_t outlen)
{
	size_t n = 0;

	if (p >= end || *p != '"')
		return NULL;
	for (p++; p < end && *p != '"'; p++) {
		char c = *p;

		if ((unsigned char) c < 0x20)
			return NULL;
		if (c == '\\') {
			if (++p >= end)
				return NULL;
			switch (*p) {
			case '"': case '\\': case '/': c = *p; break;
			case 'b': c = '\b'; break;
			case 'f': c = '\f'; break;
			case 'n': c = '\n'; break;
			case 'r': c = '\r'; break;
			case 't': c = '\t'; break;
			case 'u': {
				unsigned v = 0;

				if (end - p < 5)
					return NULL;
				for (int i = 1; i <= 4; i++) {
					char h = p[i];

					v <<= 4;
					if (h >= '0' && h <= '9') v |= (unsigned) (h - '0');
					else if (h >= 'a' && h <= 'f') v |= (unsigned) (h - 'a' + 10);
					else if (h >= 'A' && h <= 'F') v |= (unsigned) (h - 'A' + 10);
					else return NULL;
				}
				p += 4;
				c = (v >= 0x20 && v < 0x7f) ? (char) v : '?';
				break;
			}
			default:
				return NULL;
			}
		}
		if (out) {
			if (n + 1 >= outlen)
				return NULL;
			out[n++] = c;
		}
	}
	if (p >= end)
		return NULL;
	if (out)
		out[n] = '\0';
	return p + 1;
}

/* Skip one JSON value at p; returns the position after it, or NULL if it is malformed. */
static inline const char *jobns_json_skip(const char *p, const char *end)
{
	int depth = 0;

	p = jobns_json_ws(p, end);
	do {
		if (p >= end)
			return NULL;
		if (*p == '"') {
			if (!(p = jobns_json_string(p, end, NULL, 0)))
				return NULL;
		} else if (*p == '{' || *p == '[') {
			if (++depth > JOBNS_JSON_DEPTH)
				return NULL;
			p++;
		} else if (*p == '}' || *p == ']') {
			if (--depth < 0)
				return NULL;
			p++;
		} else if (depth > 0 && (*p == ',' || *p == ':')) {
			p++;
		} else if ((*p >= '0' && *p <= '9') || *p == '-' || *p == 't' || *p == 'f' ||
			   *p == 'n') {
			const char *s = p;

			while (p < end && ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
					   *p == '-' || *p == '+' || *p == '.' || (*p >= 'A' && *p <= 'Z')))
				p++;
			if (p == s)
				return NULL;
		} else {
			return NULL;
		}
		p = jobns_json_ws(p, end);
	} while (depth > 0);
	return p;
}

/* A JSON number at p into *out; returns the position after it, or NULL. */
static inline const char *jobns_json_number(const char *p, const char *end, double *out)
{
	char num[64], *stop;
	size_t n = 0;

	while (p + n < end && n < sizeof(num) - 1 &&
	       ((p[n] >= '0' && p[n] <= '9') || p[n] == '-' || p[n] == '+' || p[n] == '.' ||
		p[n] == 'e' || p[n] == 'E'))
		n++;
	if (!n || n >= sizeof(num) - 1)
		return NULL;
	memcpy(num, p, n);
	num[n] = '\0';
	errno = 0;
	*out = strtod(num, &stop);
	if (errno || *stop)
		return NULL;
	return p + n;
}

/* A JSON integer in 0..(uid_t)-1 at p; returns the position after it, or NULL. */
static inline const char *jobns_json_id(const char *p, const char *end, unsigned long long *out)
{
	char num[32], *stop;
	size_t n = 0;

	while (p + n < end && n < sizeof(num) - 1 && p[n] >= '0' && p[n] <= '9')
		n++;
	if (!n || n >= sizeof(num) - 1)
		return NULL;
	memcpy(num, p, n);
	num[n] = '\0';
	errno = 0;
	*out = strtoull(num, &stop, 10);
	if (errno || *stop || *out > (uid_t) -1)
		return NULL;
	return p + n;
}

/*
 * Read the job record at `path` (a regular root-owned file that group and others cannot
 * write): 1 = read (at least "uid" set), 0 = absent (the job is being created or
 * deleted), -1 = unusable (err says why).
 */
static inline int jobns_read_record(const char *path, struct jobns_record *rec, char *err,
				    size_t len)
{
	struct stat st;
	char *buf, key[64];
	const char *p, *end;
	ssize_t n, got = 0;
	int fd, rc = -1;

	memset(rec, 0, sizeof(*rec));
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		return jobns_err(err, len, "open %s: %s", path, strerror(errno));
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != 0 ||
	    (st.st_mode & 022) || st.st_size > JOBNS_RECORD_MAX) {
		close(fd);
		return jobns_err(err, len, "%s is not a root-owned job record", path);
	}
	buf = malloc((size_t) st.st_size + 1);
	if (!buf) {
		close(fd);
		return jobns_err(err, len, "%s: out of memory", path);
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
	end = buf + got;

	p = jobns_json_ws(buf, end);
	if (p >= end || *p != '{')
		goto bad;
	p = jobns_json_ws(p + 1, end);
	if (p < end && *p == '}')
		p++;
	else
		for (;;) {
			const char *v;

			v = jobns_json_string(p, end, key, sizeof(key));
			if (!v) {	/* a key longer than ours is none of ours */
				key[0] = '\0';
				v = jobns_json_string(p, end, NULL, 0);
			}
			if (!v)
				goto bad;
			p = jobns_json_ws(v, end);
			if (p >= end || *p != ':')
				goto bad;
			p = jobns_json_ws(p + 1, end);
			v = NULL;
			if (!strcmp(key, "uid") && (v = jobns_json_id(p, end, &rec->uid)))
				rec->have |= JOBNS_REC_UID;
			else if (!strcmp(key, "gid") && (v = jobns_json_id(p, end, &rec->gid)))
				rec->have |= JOBNS_REC_GID;
			else if (!strcmp(key, "created_epoch") &&
				 (v = jobns_json_number(p, end, &rec->created_epoch)))
				rec->have |= JOBNS_REC_EPOCH;
			else if (!strcmp(key, "job_id") &&
				 (v = jobns_json_string(p, end, rec->job_id, sizeof(rec->job_id))))
				rec->have |= JOBNS_REC_JOB_ID;
			if (!strcmp(key, "uid") && !v) {
				jobns_err(err, len, "%s: bad \"uid\" value", path);
				goto out;
			}
			p = v ? jobns_json_ws(v, end) : jobns_json_skip(p, end);
			if (!p || p >= end)
				goto bad;
			if (*p == '}') {
				p++;
				break;
			}
			if (*p != ',')
				goto bad;
			p = jobns_json_ws(p + 1, end);
		}
	if (jobns_json_ws(p, end) != end)
		goto bad;
	if (!(rec->have & JOBNS_REC_UID)) {
		jobns_err(err, len, "%s has no \"uid\" member", path);
		goto out;
	}
	rc = 1;
	goto out;
bad:
	jobns_err(err, len, "%s is not a JSON object", path);
out:
	free(buf);
	return rc;
}

/* Rule 2: the user namespace owning the job's mount namespace, if it is not ours. */
static inline int jobns_open_user(struct jobns_job *j, char *err, size_t len)
{
	int fd = ioctl(j->mnt_fd, NS_GET_USERNS);

	if (fd < 0)
		return jobns_err(err, len, "NS_GET_USERNS on %s: %s", j->pin, strerror(errno));
	if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
		jobns_err(err, len, "user namespace of %s: %s", j->pin, strerror(errno));
		close(fd);
		return -1;
	}
	if (jobns_same_file(fd, "/proc/self/ns/user"))
		close(fd);	/* the job has no user namespace of its own */
	else
		j->user_fd = fd;
	return 0;
}

/* Rule 3: a pidfd of the PID 1 named in .ns/pid1, checked against the pin. */
static inline int jobns_open_pid(struct jobns_job *j, char *err, size_t len)
{
	char path[PATH_MAX + 16], buf[32], proc[64];
	ssize_t n;
	long pid;
	char *end;
	int fd, pfd;

	snprintf(path, sizeof(path), "%s/pid1", j->ns_dir);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;	/* no PID namespace for this job */
		return jobns_err(err, len, "open %s: %s", path, strerror(errno));
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return jobns_err(err, len, "%s is empty or unreadable", path);
	buf[n] = '\0';
	errno = 0;
	pid = strtol(buf, &end, 10);
	if (errno || pid <= 1 || pid > INT_MAX || (*end && *end != '\n'))
		return jobns_err(err, len, "%s does not hold a process id", path);
	pfd = (int) syscall(SYS_pidfd_open, (pid_t) pid, 0U);
	if (pfd < 0)
		return jobns_err(err, len, "PID 1 of the job's PID namespace (pid %ld, %s) is gone: %s",
				 pid, path, strerror(errno));
	snprintf(proc, sizeof(proc), "/proc/%ld/ns/mnt", pid);
	if (!jobns_same_file(j->mnt_fd, proc) || syscall(SYS_pidfd_send_signal, pfd, 0, NULL, 0U) < 0) {
		close(pfd);
		return jobns_err(err, len, "pid %ld (%s) is not the job's PID 1 (not in its mount namespace)",
				 pid, path);
	}
	j->pid_fd = pfd;
	return 0;
}

/* Rule 5: cgroup.procs of the group named in .ns/cgroup, if there is one. */
static inline int jobns_open_group(struct jobns_job *j, char *err, size_t len)
{
	char path[PATH_MAX + 16], dir[PATH_MAX];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s/cgroup", j->ns_dir);
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;	/* joined processes stay in their cgroups */
		return jobns_err(err, len, "open %s: %s", path, strerror(errno));
	}
	n = read(fd, dir, sizeof(dir) - 1);
	close(fd);
	while (n > 0 && (dir[n - 1] == '\n' || dir[n - 1] == ' '))
		n--;
	if (n <= 0 || dir[0] != '/')
		return jobns_err(err, len, "%s does not name a cgroup directory", path);
	dir[n] = '\0';
	if (snprintf(path, sizeof(path), "%s/cgroup.procs", dir) >= (int) sizeof(path)) {
		errno = ENAMETOOLONG;
		return jobns_err(err, len, "cgroup path too long: %s", dir);
	}
	j->group_fd = open(path, O_WRONLY | O_CLOEXEC);
	if (j->group_fd < 0)
		return jobns_err(err, len, "open %s: %s", path, strerror(errno));
	return 0;
}

/*
 * Open the namespaces of job `job_id` through the index in `runtime` (rules 1-3, 5).
 * 0 = open; -1 = not open (err says why; errno is ENOENT when the job has no pin).
 */
static inline int jobns_open(struct jobns_job *j, const char *runtime, const char *job_id,
			     char *err, size_t len)
{
	jobns_job_init(j);
	if (snprintf(j->ns_dir, sizeof(j->ns_dir), "%s/jobs/%s/.ns", runtime, job_id) >=
	    (int) sizeof(j->ns_dir) ||
	    snprintf(j->pin, sizeof(j->pin), "%s/mnt", j->ns_dir) >= (int) sizeof(j->pin)) {
		errno = ENAMETOOLONG;
		return jobns_err(err, len, "runtime path too long");
	}
	j->mnt_fd = open(j->pin, O_RDONLY | O_CLOEXEC);
	if (j->mnt_fd < 0)
		return jobns_err(err, len, "cannot open the job's namespace %s: %s", j->pin,
				 strerror(errno));
	if (ioctl(j->mnt_fd, NS_GET_NSTYPE) != CLONE_NEWNS) {
		jobns_close(j);
		errno = EINVAL;
		return jobns_err(err, len, "%s is not a mount namespace pin (the job's namespace is lost)",
				 j->pin);
	}
	if (jobns_open_user(j, err, len) < 0 || jobns_open_pid(j, err, len) < 0 ||
	    jobns_open_group(j, err, len) < 0) {
		jobns_close(j);
		return -1;
	}
	return 0;
}

/* Rule 4, first half: children forked from now on start in the job's PID namespace. */
static inline int jobns_join_pid(const struct jobns_job *j, char *err, size_t len)
{
	if (j->pid_fd >= 0 && setns(j->pid_fd, CLONE_NEWPID) < 0)
		return jobns_err(err, len, "setns(PID namespace of %s/pid1): %s", j->ns_dir,
				 strerror(errno));
	return 0;
}

/*
 * Rule 5, then rule 4, second half (single-threaded callers): the job's cgroup, the user
 * namespace, then the mount one.  0 = joined; -1 = nothing joined (but perhaps the
 * cgroup); -2 = the user namespace was joined, the mount one not.
 */
static inline int jobns_join_user_mnt(const struct jobns_job *j, char *err, size_t len)
{
	if (j->group_fd >= 0 && write(j->group_fd, "0", 1) < 0)
		return jobns_err(err, len, "cannot enter the job's cgroup (%s/cgroup): %s",
				 j->ns_dir, strerror(errno));
	if (j->user_fd >= 0 && setns(j->user_fd, CLONE_NEWUSER) < 0)
		return jobns_err(err, len, "setns(user namespace of %s): %s", j->pin,
				 strerror(errno));
	if (setns(j->mnt_fd, CLONE_NEWNS) < 0) {
		jobns_err(err, len, "setns(mount namespace %s): %s%s", j->pin, strerror(errno),
			  j->user_fd >= 0 ? " (the process is left in the job's user namespace)" : "");
		return j->user_fd >= 0 ? -2 : -1;
	}
	return 0;
}

/*
 * The whole join, PID then USER then MNT, for a single-threaded caller: 0 = joined,
 * -1 = not joined.  When nothing else was joined, the PID namespace is switched back,
 * so that later children stay on the host.
 */
static inline int jobns_join(const struct jobns_job *j, char *err, size_t len)
{
	int own_pid_fd = -1, rc;
	size_t used;

	if (j->pid_fd >= 0) {
		own_pid_fd = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
		if (own_pid_fd < 0)
			return jobns_err(err, len, "open /proc/self/ns/pid: %s", strerror(errno));
		if (jobns_join_pid(j, err, len) < 0) {
			jobns_close_fd(&own_pid_fd);
			return -1;
		}
	}
	rc = jobns_join_user_mnt(j, err, len);
	if (rc == -1 && own_pid_fd >= 0 && setns(own_pid_fd, CLONE_NEWPID) < 0) {
		used = strlen(err);
		if (used < len)
			snprintf(err + used, len - used, "; setns back to the host PID namespace: %s",
				 strerror(errno));
	}
	jobns_close_fd(&own_pid_fd);
	return rc < 0 ? -1 : 0;
}

#endif /* JOBNS_JOIN_H */
