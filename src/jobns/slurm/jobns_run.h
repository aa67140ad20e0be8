/*
 * jobns_run.h - how Slurm's processes run `jobns slurm ACTION` (the job-start path).
 *
 * Included by the SPANK plugin (jobns_spank.c) and the native job_container/namespace
 * plugin (jobns_native.c): both create, delete and restore job namespaces by running
 * the jobns CLI this way, and nothing else.  Static functions only; the includer
 * provides slurm_error() and slurm_info() (libslurm's, as in <slurm/spank.h>).
 *
 * The child gets the caller's environment plus JOBNS_RUNTIME_DIR, SLURM_CONF (when
 * given) and the caller's extra variables; its output is copied into the Slurm log
 * (error level when it failed), and only an exit status of 0 counts as success.
 *
 * With `service` set in struct jobns_cmd, `prolog` and `epilog` first go to the jobns
 * service (<runtime>/service.sock, docs/service.md): the same command, with the same
 * environment and options, run by a resident worker without a process start.  Only
 * when the service gives no complete answer is the command run as a process (with
 * JOBNS_SERVICE=start, so that it starts the service again for the next jobs).
 */
#ifndef JOBNS_RUN_H
#define JOBNS_RUN_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define JOBNS_OUTPUT_MAX 16384
#define JOBNS_EXTRA_MAX 16	/* extra environment entries or arguments */
#define JOBNS_SERVICE_MAGIC "jobns-service 1"
#define JOBNS_SERVICE_SOCKET "service.sock"
#define JOBNS_SERVICE_ANSWER_MAX (65536 + 64)	/* the service sends <= 64 KiB of output */
#define JOBNS_SERVICE_ACK_MS 5000	/* no "+" within this time: the service is stuck */
#define JOBNS_FALLBACK (-2)

extern char **environ;

/* What to run: the jobns executable and the options every call passes. */
struct jobns_cmd {
	const char *jobns;	/* absolute path of bin/jobns */
	const char *config;	/* `--config FILE`, or "" */
	const char *runtime;	/* JOBNS_RUNTIME_DIR */
	int service;		/* prolog/epilog: ask the jobns service first */
};

/* Copy jobns' output (NUL-terminated; modified) into the Slurm log, line by line. */
static void jobns_log_lines(char *buf, uint32_t job, int failed)
{
	char *line, *save = NULL;

	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		if (!strncmp(line, "jobns: error: ", 14))
			slurm_error("jobns: %s", line + 14);
		else if (!strncmp(line, "jobns: ", 7))
			slurm_info("%s", line);
		else if (failed && job)
			slurm_error("jobns: job %u: %s", job, line);
		else if (failed)
			slurm_error("jobns: %s", line);
		else if (job)
			slurm_info("jobns: job %u: %s", job, line);
		else
			slurm_info("jobns: %s", line);
	}
}

/* Copy the child's output file into the Slurm log. */
static void jobns_log_output(int fd, uint32_t job, int failed)
{
	char buf[JOBNS_OUTPUT_MAX + 1];
	ssize_t n, got = 0;

	if (lseek(fd, 0, SEEK_SET) < 0)
		return;
	while (got < JOBNS_OUTPUT_MAX) {
		n = read(fd, buf + got, JOBNS_OUTPUT_MAX - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += n;
	}
	buf[got] = '\0';
	jobns_log_lines(buf, job, failed);
}

static void jobns_child_close_fds(void)
{
	if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0) {
		long max = sysconf(_SC_OPEN_MAX);
		for (long fd = 3; fd < (max > 0 ? max : 1024); fd++)
			close((int) fd);
	}
}

static int jobns_env_name_is(const char *entry, char *const *list)
{
	size_t len = strcspn(entry, "=");

	for (; list && *list; list++)
		if (!strncmp(*list, entry, len) && (*list)[len] == '=')
			return 1;
	return 0;
}

/* ---------------------------------------------------------------- the jobns service */

static int jobns_send_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t) n;
	}
	return 0;
}

/* Append the NUL-terminated item "<prefix><value>" at *p. */
static void jobns_put_item(char **p, const char *prefix, const char *value)
{
	size_t a = strlen(prefix), b = strlen(value);

	memcpy(*p, prefix, a);
	memcpy(*p + a, value, b);
	(*p)[a + b] = '\0';
	*p += a + b + 1;
}

/*
 * Ask the jobns service to run `jobns [--config F] [--node N] slurm ACTION` with the
 * environment `envp` (protocol: docs/service.md).  Returns 0 when it answered exit
 * status 0, -1 when it answered another status (its output is logged either way), and
 * JOBNS_FALLBACK when there is no service or no complete answer.
 */
static int jobns_service_call(const struct jobns_cmd *cmd, const char *action, uint32_t job,
			      const char *node, char *const *envp)
{
	struct sockaddr_un addr;
	struct pollfd pfd;
	size_t need, i, got = 0;
	char *req = NULL, *p, *ans = NULL, *nul, *end, ack;
	int fd, rc = JOBNS_FALLBACK;
	long status;
	ssize_t n;

	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	if (snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/%s", cmd->runtime,
		     JOBNS_SERVICE_SOCKET) >= (int) sizeof(addr.sun_path))
		return JOBNS_FALLBACK;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return JOBNS_FALLBACK;
	if (connect(fd, (struct sockaddr *) &addr, sizeof(addr)) < 0) {
		slurm_info("jobns: job %u: no jobns service at %s (%s); running jobns, which starts it",
			   job, addr.sun_path, strerror(errno));
		goto out;
	}

	need = sizeof(JOBNS_SERVICE_MAGIC) + strlen(action) + 4 + 1;
	if (cmd->config && cmd->config[0])
		need += strlen(cmd->config) + 8;
	if (node && node[0])
		need += strlen(node) + 6;
	for (i = 0; envp && envp[i]; i++)
		need += strlen(envp[i]) + 5;
	if (!(req = malloc(need)) || !(ans = malloc(JOBNS_SERVICE_ANSWER_MAX + 1)))
		goto out;
	p = req;
	jobns_put_item(&p, "", JOBNS_SERVICE_MAGIC);
	jobns_put_item(&p, "op=", action);
	if (cmd->config && cmd->config[0])
		jobns_put_item(&p, "config=", cmd->config);
	if (node && node[0])
		jobns_put_item(&p, "node=", node);
	for (i = 0; envp && envp[i]; i++)
		jobns_put_item(&p, "env=", envp[i]);
	*p++ = '\0';
	if (jobns_send_all(fd, req, (size_t) (p - req)) < 0)
		goto out;

	/* "+": a worker has the request.  After that the work may take as long as Slurm's
	 * PrologEpilogTimeout allows; before it, a stuck service must not stall the job. */
	pfd.fd = fd;
	pfd.events = POLLIN;
	do {
		n = poll(&pfd, 1, JOBNS_SERVICE_ACK_MS);
	} while (n < 0 && errno == EINTR);
	if (n <= 0) {
		slurm_error("jobns: job %u: the jobns service did not take the request within %d ms; running jobns",
			    job, JOBNS_SERVICE_ACK_MS);
		goto out;
	}
	do {
		n = read(fd, &ack, 1);
	} while (n < 0 && errno == EINTR);
	if (n != 1 || ack != '+')
		goto out;
	while (got < JOBNS_SERVICE_ANSWER_MAX) {
		n = read(fd, ans + got, JOBNS_SERVICE_ANSWER_MAX - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto out;
		if (n == 0)
			break;
		got += (size_t) n;
	}
	ans[got] = '\0';
	nul = got ? memrchr(ans, '\0', got) : NULL;
	errno = 0;
	status = nul && nul + 1 < ans + got ? strtol(nul + 1, &end, 10) : -1;
	if (!nul || nul + 1 >= ans + got || errno || *end || status < 0 || status > 255) {
		slurm_error("jobns: job %u: the jobns service gave no complete answer to %s; running jobns",
			    job, action);
		goto out;
	}
	jobns_log_lines(ans, job, status != 0);
	if (status == 0) {
		rc = 0;
	} else {
		char who[32] = "";	/* restore is no job's: no "job 0" */

		if (job)
			snprintf(who, sizeof(who), "job %u: ", job);
		slurm_error("jobns: %s`%s slurm %s` failed with exit code %ld (run by the jobns service)",
			    who, cmd->jobns, action, status);
		rc = status > 1 ? (int) -status : -1;
	}
out:
	free(req);
	free(ans);
	close(fd);
	return rc;
}

/*
 * Run `jobns [--config F] [--node N] slurm ACTION [ARGS...]` with the current
 * environment plus JOBNS_RUNTIME_DIR, SLURM_CONF (when given) and `extra_env`
 * ("NAME=value" entries, NULL-terminated, replacing inherited ones of the same name);
 * wait for it and log its output.  Returns 0 when it exited 0, -N when it exited N > 1
 * (2: a usage or configuration error), -1 otherwise.
 */
static int jobns_run(const struct jobns_cmd *cmd, const char *action, uint32_t job,
		     const char *node, const char *slurm_conf, char *const *extra_env,
		     char *const *extra_args)
{
	char *argv[10 + JOBNS_EXTRA_MAX], *own[4 + JOBNS_EXTRA_MAX], **envp;
	char env_runtime[PATH_MAX + 32], env_conf[PATH_MAX + 16];
	size_t n_env = 0, i, k = 0, n_own = 0;
	int out, status, a = 0, rc = -1, via_service;
	pid_t pid, w;

	argv[a++] = (char *) cmd->jobns;
	if (cmd->config && cmd->config[0]) {
		argv[a++] = "--config";
		argv[a++] = (char *) cmd->config;
	}
	if (node && node[0]) {
		argv[a++] = "--node";
		argv[a++] = (char *) node;
	}
	argv[a++] = "slurm";
	argv[a++] = (char *) action;
	for (i = 0; extra_args && extra_args[i] && i < JOBNS_EXTRA_MAX; i++)
		argv[a++] = extra_args[i];
	argv[a] = NULL;

	snprintf(env_runtime, sizeof(env_runtime), "JOBNS_RUNTIME_DIR=%s", cmd->runtime);
	own[n_own++] = env_runtime;
	if (slurm_conf && slurm_conf[0]) {
		snprintf(env_conf, sizeof(env_conf), "SLURM_CONF=%s", slurm_conf);
		own[n_own++] = env_conf;
	}
	for (i = 0; extra_env && extra_env[i] && i < JOBNS_EXTRA_MAX; i++)
		own[n_own++] = extra_env[i];
	own[n_own] = NULL;
	via_service = cmd->service && !extra_args &&
		(!strcmp(action, "prolog") || !strcmp(action, "epilog"));

	while (environ && environ[n_env])
		n_env++;
	if (!(envp = calloc(n_env + n_own + 2, sizeof(char *)))) {
		slurm_error("jobns: job %u: %s: out of memory", job, action);
		return -1;
	}
	for (i = 0; i < n_own; i++)
		envp[k++] = own[i];
	for (i = 0; i < n_env; i++)
		if (!jobns_env_name_is(environ[i], own) &&
		    strncmp(environ[i], "JOBNS_SERVICE=", 14))
			envp[k++] = environ[i];
	envp[k] = NULL;

	if (via_service) {
		rc = jobns_service_call(cmd, action, job, node, envp);
		if (rc != JOBNS_FALLBACK) {
			free(envp);
			return rc;
		}
		/* it ran because the service did not answer: have it start the service */
		rc = -1;
		envp[k++] = "JOBNS_SERVICE=start";
		envp[k] = NULL;
	}

	/* Output goes to an anonymous file, not a pipe: a long-lived process started by
	 * jobns (a PID namespace's init) may inherit it, and we must not wait for EOF. */
	out = memfd_create("jobns-output", MFD_CLOEXEC);
	if (out < 0) {
		slurm_error("jobns: job %u: %s: memfd_create: %s", job, action, strerror(errno));
		free(envp);
		return -1;
	}

	pid = fork();
	if (pid < 0) {
		slurm_error("jobns: job %u: %s: fork: %s", job, action, strerror(errno));
		close(out);
		free(envp);
		return -1;
	}
	if (pid == 0) {
		sigset_t none;
		/* Our caller may have started us with fds 0-2 closed: move the output file
		 * out of the way before filling 0-2, so that no dup2() is a no-op that keeps
		 * FD_CLOEXEC on a standard descriptor. */
		int o = fcntl(out, F_DUPFD, 10);
		int devnull = open("/dev/null", O_RDONLY);

		if (o < 0 || devnull < 0 || dup2(devnull, STDIN_FILENO) < 0 ||
		    dup2(o, STDOUT_FILENO) < 0 || dup2(o, STDERR_FILENO) < 0)
			_exit(126);
		/* jobns runs as root.  A caller whose effective ids were changed under it
		 * while its real uid stayed root (seen in 24.11's extern slurmstepd with
		 * SlurmdParameters=contain_spank, whose hooks drop privileges in a CLONE_VM
		 * child) gets root back for the command. */
		if (getuid() == 0 && (geteuid() != 0 || getegid() != 0) &&
		    (setresuid(0, 0, 0) < 0 || setresgid(0, 0, 0) < 0 || setgroups(0, NULL) < 0)) {
			dprintf(STDERR_FILENO, "cannot take root back (euid %u): %s\n",
				(unsigned) geteuid(), strerror(errno));
			_exit(126);
		}
		jobns_child_close_fds();
		for (int s = 1; s < NSIG; s++)
			if (s != SIGKILL && s != SIGSTOP)
				signal(s, SIG_DFL);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		execve(argv[0], argv, envp);
		dprintf(STDERR_FILENO, "cannot execute %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	free(envp);

	do {
		w = waitpid(pid, &status, 0);
	} while (w < 0 && errno == EINTR);

	if (w < 0) {
		slurm_error("jobns: job %u: %s: waitpid(%d): %s", job, action, (int) pid,
			    strerror(errno));
		jobns_log_output(out, job, 1);
	} else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		jobns_log_output(out, job, 0);
		rc = 0;
	} else {
		char who[32] = "";	/* restore is no job's: no "job 0" */

		jobns_log_output(out, job, 1);
		if (job)
			snprintf(who, sizeof(who), "job %u: ", job);
		if (WIFEXITED(status))
			slurm_error("jobns: %s`%s slurm %s` failed with exit code %d",
				    who, cmd->jobns, action, WEXITSTATUS(status));
		else
			slurm_error("jobns: %s`%s slurm %s` killed by signal %d",
				    who, cmd->jobns, action, WTERMSIG(status));
		if (WIFEXITED(status) && WEXITSTATUS(status) > 1)
			rc = -WEXITSTATUS(status);
	}
	close(out);
	return rc;
}

/*
 * The runtime dir of node `node` into buf: <runtime>/nodes/<node> when that directory
 * exists (several slurmd's on one host, Slurm's multiple-slurmd build: jobns keeps each
 * node's index there), else <runtime>.  A job of one node is never looked up in another
 * node's index: the same job id runs on each of them (srun -N3).
 */
static const char *jobns_node_runtime(const char *runtime, const char *node, char *buf,
				      size_t len)
{
	struct stat st;
	int n;

	if (node && node[0] && !strchr(node, '/') && strcmp(node, ".") && strcmp(node, "..")) {
		n = snprintf(buf, len, "%s/nodes/%s", runtime, node);
		if (n > 0 && (size_t) n < len && stat(buf, &st) == 0 && S_ISDIR(st.st_mode))
			return buf;
	}
	if (strlen(runtime) >= len)
		return runtime;
	strcpy(buf, runtime);
	return buf;
}

/* slurmd's own command line: -f FILE and -N NAME (getopt short options only). */
static void jobns_slurmd_cmdline(char *conf, size_t conf_len, char *node, size_t node_len)
{
	char buf[8192];
	ssize_t n = 0, r;
	int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);

	conf[0] = node[0] = '\0';
	if (fd < 0)
		return;
	while (n < (ssize_t) sizeof(buf) - 1 &&
	       (r = read(fd, buf + n, sizeof(buf) - 1 - n)) > 0)
		n += r;
	close(fd);
	buf[n] = '\0';
	for (char *p = buf; p < buf + n; p += strlen(p) + 1) {
		char *next = p + strlen(p) + 1;
		char *val = NULL, *dst = NULL;
		size_t len = 0;

		if (!strncmp(p, "-f", 2)) {
			dst = conf;
			len = conf_len;
		} else if (!strncmp(p, "-N", 2)) {
			dst = node;
			len = node_len;
		} else
			continue;
		if (p[2])
			val = p + 2;
		else if (next < buf + n)
			val = next;
		if (val && strlen(val) < len)
			strcpy(dst, val);
	}
}

#endif /* JOBNS_RUN_H */
