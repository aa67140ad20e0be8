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
 */
#ifndef JOBNS_RUN_H
#define JOBNS_RUN_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

#define JOBNS_OUTPUT_MAX 16384
#define JOBNS_EXTRA_MAX 16	/* extra environment entries or arguments */

extern char **environ;

/* What to run: the jobns executable and the options every call passes. */
struct jobns_cmd {
	const char *jobns;	/* absolute path of bin/jobns */
	const char *config;	/* `--config FILE`, or "" */
	const char *runtime;	/* JOBNS_RUNTIME_DIR */
};

/* Copy the child's output into the Slurm log, one line at a time. */
static void jobns_log_output(int fd, uint32_t job, int failed)
{
	char buf[JOBNS_OUTPUT_MAX + 1], *line, *save = NULL;
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
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		/* jobns' own lines already say "jobns: job N: ..." */
		int own = !strncmp(line, "jobns: ", 7);

		if (failed && own)
			slurm_error("%s", line);
		else if (failed)
			slurm_error("jobns: job %u: %s", job, line);
		else if (own)
			slurm_info("%s", line);
		else
			slurm_info("jobns: job %u: %s", job, line);
	}
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

/*
 * Run `jobns [--config F] [--node N] slurm ACTION [ARGS...]` with the current
 * environment plus JOBNS_RUNTIME_DIR, SLURM_CONF (when given) and `extra_env`
 * ("NAME=value" entries, NULL-terminated, replacing inherited ones of the same name);
 * wait for it and log its output.  Returns 0 when it exited 0, -1 otherwise.
 */
static int jobns_run(const struct jobns_cmd *cmd, const char *action, uint32_t job,
		     const char *node, const char *slurm_conf, char *const *extra_env,
		     char *const *extra_args)
{
	char *argv[10 + JOBNS_EXTRA_MAX], *own[3 + JOBNS_EXTRA_MAX], **envp;
	char env_runtime[PATH_MAX + 32], env_conf[PATH_MAX + 16];
	size_t n_env = 0, i, k = 0, n_own = 0;
	int out, status, a = 0, rc = -1;
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

	while (environ && environ[n_env])
		n_env++;
	if (!(envp = calloc(n_env + n_own + 1, sizeof(char *)))) {
		slurm_error("jobns: job %u: %s: out of memory", job, action);
		return -1;
	}
	for (i = 0; i < n_own; i++)
		envp[k++] = own[i];
	for (i = 0; i < n_env; i++)
		if (!jobns_env_name_is(environ[i], own))
			envp[k++] = environ[i];
	envp[k] = NULL;

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
		jobns_log_output(out, job, 1);
		if (WIFEXITED(status))
			slurm_error("jobns: job %u: `%s slurm %s` failed with exit code %d",
				    job, cmd->jobns, action, WEXITSTATUS(status));
		else
			slurm_error("jobns: job %u: `%s slurm %s` killed by signal %d",
				    job, cmd->jobns, action, WTERMSIG(status));
	}
	close(out);
	return rc;
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
