"""Running site hook scripts (init_script, user_ns_script, clone_ns_script, clone_ns_epilog).

The scripts are the ones a site wrote for Slurm's ``namespace/linux`` plugin, so they get the
same environment and are run the same way; where Slurm has a trap, jobns fixes it and keeps
the rest. ``docs/hooks.md`` is the admin-facing description; this docstring is the contract.

When each hook runs (driven by the lifecycle, not by this module):

* ``init_script``: after the job directory ``<J>``, ``<J>/.ns`` and ``<J>/.<job id>`` exist,
  before the namespace is created. Fixed 10 s wait.
* ``user_ns_script``: only with CLONE_NEWUSER, while the namespace process waits for its
  uid/gid maps; it replaces the default identity map. Fixed 10 s wait.
* ``clone_ns_script``: after the namespace is set up and pinned. Wait ``clone_ns_script_wait``.
* ``clone_ns_epilog``: at teardown, before the pins are unmounted. Wait
  ``clone_ns_epilog_wait``. Its failure is only logged by the caller; the other three fail
  the job creation.

Environment (built from nothing; the caller's environment is never inherited):

======================== ====== ======= ======== ======= =====================================
variable                 init   user_ns clone_ns epilog  value
======================== ====== ======= ======== ======= =====================================
SLURM_JOB_ID             yes    yes     yes      yes     job id
SLURM_CONF               yes    yes     yes      yes     slurm.conf path (left out if None)
SLURMD_NODENAME          yes    yes     yes      yes     ``cfg.node_name``
SLURM_JOB_MOUNTPOINT_SRC yes    --      yes      --      ``<J>/.<job id>``
SLURM_JOB_UID/GID/USER   yes    yes     yes      --      job owner
SLURM_HET_JOB_ID         yes    yes     yes      --      from ``job.env`` if set
SLURM_NODE_ALIASES       yes    yes     yes      --      from ``job.env`` if set
SLURM_JOB_WORK_DIR       yes    yes     yes      --      from ``job.env`` if set
SLURM_JOB_MEM            yes    yes     yes      --      from ``job.env`` if set and not "0"
SLURM_NS                 --     --      yes      yes     ``<J>/.ns/mnt`` (the mount ns pin)
SLURM_NS_PID             --     yes     --       --      pid of the namespace process
SLURM_NS_DIR (jobns)     --     --      yes      yes     ``<J>/.ns``
PATH (jobns)             yes    yes     yes      yes     ``/usr/sbin:/usr/bin:/sbin:/bin``
JOBNS_HOOK (jobns)       yes    yes     yes      yes     the hook name, e.g. ``init_script``
======================== ====== ======= ======== ======= =====================================

Differences from Slurm (the jobns improvements):

* ``PATH`` is set to a safe default; Slurm passes no PATH at all.
* In ``clone_ns_epilog`` Slurm sets ``SLURM_NS`` to the *directory* ``<J>/.ns``, so
  ``nsenter --mount=$SLURM_NS`` works in clone_ns_script but not in the epilog. jobns passes
  the mount pin ``<J>/.ns/mnt`` in both, and the directory as ``SLURM_NS_DIR`` (in both).
* ``JOBNS_HOOK`` names the hook, so one script can serve several hooks.
* Empty values in ``job.env`` are left out rather than exported as empty strings.

Execution (as Slurm's run_command does it, with the differences marked):

* The path must be absolute, a regular file and pass ``access(R_OK|X_OK)``. Otherwise
  `HookConfigError` (an `OperationError`) is raised naming the hook and the path. Slurm
  reports this case as status 127, "configuration error"; the exception carries
  ``status = 127``. A script the kernel refuses to execute (bad ``#!`` interpreter, unknown
  format, noexec mount) is reported the same way (Slurm's child would exit 127).
* stdin is ``/dev/null``; stdout and stderr share one pipe whose content is captured, at most
  `OUTPUT_CAP` bytes (the first ones; the rest is read and dropped so the script never
  blocks on a full pipe, and the result says it was truncated). All other fds are closed.
* The script gets its own process group (``setpgid(0, 0)``), in the caller's session and
  namespaces, as root (real uid/gid are set to the effective ones if they differ), with
  cwd ``/`` (jobns; Slurm leaves the daemon's cwd).
* Timeout: at the deadline the whole group gets SIGTERM; once the script has exited, or
  after `KILL_GRACE` (0.1 s; Slurm uses ~10 ms), the group gets SIGKILL, then the script is
  reaped. The script is not reaped before the SIGKILL, so its pid, and thus the group id,
  cannot be reused in between. A script killed this way is a failure even if it exited 0.
* A wait of 0, a negative wait or None means the default 10 s (namespace/linux semantics),
  never "no timeout".
* When the script exits but something it started in the background still holds the output
  pipe, jobns stops reading after `OUTPUT_GRACE` (0.2 s) and returns the script's status;
  those processes are left running (logged as a warning). Slurm would wait for them until the
  deadline and then kill the group.
* Failure is a non-zero exit status, death by a signal, or a timeout.
* No threads are started (the process may call setns later): the pipe and the script's
  pidfd are watched with a selector from the calling thread.

Logging: if a ``log(level, msg)`` callable is given, each run logs one ``info`` line (hook,
path, status, duration) and, if there was any, the output at ``debug`` level.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal as _signal
import stat
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

from jobns.config.model import DEFAULT_WAIT, NodeConfig
from jobns.errors import OperationError
from jobns.job import Job

HOOK_INIT = "init_script"
HOOK_CLONE_NS = "clone_ns_script"
HOOK_EPILOG = "clone_ns_epilog"
HOOK_USER_NS = "user_ns_script"
HOOKS = (HOOK_INIT, HOOK_USER_NS, HOOK_CLONE_NS, HOOK_EPILOG)

DEFAULT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
FIXED_WAIT = 10          # seconds, init_script and user_ns_script (not configurable in Slurm)
OUTPUT_CAP = 64 * 1024   # bytes of output kept
KILL_GRACE = 0.1         # seconds between SIGTERM and SIGKILL of the group
OUTPUT_GRACE = 0.2       # seconds to keep reading after the script exited
CONFIG_ERROR_STATUS = 127

# Variables taken from job.env, in the order Slurm sets them.
_JOB_ENV_KEYS = ("SLURM_HET_JOB_ID", "SLURM_NODE_ALIASES", "SLURM_JOB_WORK_DIR", "SLURM_JOB_MEM")

Log = Callable[[str, str], None]


class HookConfigError(OperationError):
    """The hook could not be run at all (Slurm: status 127, "configuration error")."""

    status = CONFIG_ERROR_STATUS

    def __init__(self, hook: str, path: str, message: str, *, errno: int | None = None):
        self.hook = hook
        super().__init__(hook, f"configuration error (status 127): {message}", path=path,
                         errno=errno)


@dataclass
class HookResult:
    hook: str
    path: str
    status: int | None      # exit status, None if killed by a signal
    signal: int | None      # the signal that killed the script, else None
    timed_out: bool
    output: str
    duration: float         # seconds, start to reap
    truncated: bool = False  # output longer than OUTPUT_CAP; the first OUTPUT_CAP bytes kept
    wait: float | None = None  # the timeout applied, in seconds

    @property
    def ok(self) -> bool:
        return self.status == 0 and self.signal is None and not self.timed_out

    def describe(self) -> str:
        """e.g. "exit status 3", "killed by SIGKILL", "timed out after 10 s (killed by SIGTERM)"."""
        if self.signal is not None:
            what = f"killed by {_signame(self.signal)}"
        else:
            what = f"exit status {self.status}"
        if self.timed_out:
            return f"timed out after {self.wait or self.duration:g} s ({what})"
        return what

    def failure(self) -> str:
        """Why the script failed and its last output line: the one wording of a failed hook."""
        msg = f"failed: {self.describe()}"
        tail = self.output.strip().splitlines()[-1:] if self.output.strip() else []
        if tail:
            msg += f"; last output line: {tail[0][:200]}"
        return msg

    def as_error(self, step: str | None = None) -> OperationError:
        """The OperationError a caller raises when this hook failing must fail the job
        (named after `step`, by default the hook)."""
        return OperationError(step or self.hook, self.failure(), path=self.path)


def _signame(num: int) -> str:
    try:
        return _signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _check_hook(hook: str) -> None:
    if hook not in HOOKS:
        raise ValueError(f"unknown hook {hook!r}; expected one of {', '.join(HOOKS)}")


def hook_env(hook: str, cfg: NodeConfig, job: Job, *, job_dir: str, slurm_conf: str | None,
             ns_pid: int | None = None) -> dict[str, str]:
    """Exactly the environment of spec §2.8 for that hook, plus jobns's documented improvements.

    ``job_dir`` is ``<J>`` (``<base_path>/<job id>``). ``ns_pid`` is required for
    user_ns_script and ignored otherwise. See the module docstring for the table.
    """
    env = job_hook_env(hook, cfg.node_name, job, job_dir=job_dir, slurm_conf=slurm_conf)
    if hook == HOOK_USER_NS:
        if ns_pid is None:
            raise ValueError("user_ns_script needs ns_pid (SLURM_NS_PID)")
        env[NS_PID_VAR] = str(int(ns_pid))
    return env


NS_PID_VAR = "SLURM_NS_PID"


def job_hook_env(hook: str, node_name: str, job: Job, *, job_dir: str,
                 slurm_conf: str | None) -> dict[str, str]:
    """hook_env without SLURM_NS_PID (known only once the namespace exists): what a plan
    step carries; the executor adds SLURM_NS_PID for user_ns_script."""
    _check_hook(hook)
    j = job_dir.rstrip("/") or "/"
    ns_dir = os.path.join(j, ".ns")
    ns_mnt = os.path.join(ns_dir, "mnt")
    env: dict[str, str] = {"SLURM_JOB_ID": str(job.job_id)}
    if slurm_conf:
        env["SLURM_CONF"] = slurm_conf
    env["SLURMD_NODENAME"] = node_name
    if hook in (HOOK_INIT, HOOK_CLONE_NS):
        env["SLURM_JOB_MOUNTPOINT_SRC"] = os.path.join(j, "." + str(job.job_id))
    if hook != HOOK_EPILOG:
        env["SLURM_JOB_UID"] = str(job.uid)
        env["SLURM_JOB_GID"] = str(job.gid)
        env["SLURM_JOB_USER"] = job.user
        for key in _JOB_ENV_KEYS:
            value = job.env.get(key)
            if value is None or value == "":
                continue
            if key == "SLURM_JOB_MEM" and value.strip() == "0":
                continue
            env[key] = str(value)
    if hook in (HOOK_CLONE_NS, HOOK_EPILOG):
        env["SLURM_NS"] = ns_mnt       # Slurm's epilog gets ns_dir here; jobns fixes that
        env["SLURM_NS_DIR"] = ns_dir
    env["PATH"] = DEFAULT_PATH
    env["JOBNS_HOOK"] = hook
    return env


def _validate(hook: str, path: str, env: dict[str, str]) -> None:
    if not isinstance(path, str) or not path:
        raise HookConfigError(hook, str(path), "no script path")
    if not os.path.isabs(path):
        raise HookConfigError(hook, path, "script path must be absolute")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise HookConfigError(hook, path, f"cannot stat script: {exc.strerror}",
                              errno=exc.errno) from exc
    if not stat.S_ISREG(st.st_mode):
        raise HookConfigError(hook, path, "script is not a regular file")
    if not os.access(path, os.R_OK | os.X_OK):
        raise HookConfigError(hook, path, "script is not readable and executable "
                              "(access(R_OK|X_OK) failed)", errno=errno.EACCES)
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in str(value):
            raise HookConfigError(hook, path, f"invalid environment variable {key!r}")


def _normalize_timeout(timeout: float | None) -> float:
    if timeout is None or timeout <= 0:
        return float(_DEFAULT_TIMEOUT)
    return float(timeout)


_DEFAULT_TIMEOUT = DEFAULT_WAIT


class _Exited:
    """Whether the script (the group leader) has exited, without reaping it."""

    def __init__(self, pid: int):
        self.pid = pid
        try:
            self.pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.pidfd = None  # fallback: waitid(WNOWAIT) polled at a short interval
        self.done = False

    def check(self) -> bool:
        if self.done:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = True  # reaped by someone else (SIGCHLD ignored); treat as exited
        if info is not None:
            self.done = True
        return self.done

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class _Reader:
    def __init__(self, fd: int, cap: int):
        self.fd = fd
        self.cap = cap
        self.buf = bytearray()
        self.total = 0
        self.eof = False

    def drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            if not chunk:
                self.eof = True
                return
            self.total += len(chunk)
            room = self.cap - len(self.buf)
            if room > 0:
                self.buf += chunk[:room]


def _killpg(pgid: int, sig: int) -> None:
    """Signal the script's group; the leader itself too, should the group be gone.

    Only called while the leader is unreaped, so neither id can have been reused.
    """
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _pump(sel: selectors.BaseSelector, reader: _Reader, exited: _Exited, until: float,
          *, stop_on_exit: bool) -> None:
    """Read output and watch the script until `until`, or until the condition is met."""
    while True:
        if stop_on_exit and exited.done:
            return
        if reader.eof and exited.done:
            return
        now = time.monotonic()
        if now >= until:
            return
        wait = until - now
        if exited.pidfd is None and not exited.done:
            wait = min(wait, 0.02)
        if not sel.get_map():
            time.sleep(wait)
            exited.check()
            continue
        for key, _ in sel.select(wait):
            if key.data == "out":
                reader.drain()
                if reader.eof:
                    sel.unregister(reader.fd)
            else:
                exited.done = True
                sel.unregister(key.fd)
        if exited.pidfd is None:
            exited.check()


def run_hook(hook: str, path: str, env: dict[str, str], timeout: float, *,
             log: Log | None = None) -> HookResult:
    """Run one script; never raises for script failure (returns the result).

    Raises `HookConfigError` (an `OperationError`, ``status`` 127 as in Slurm) only when the
    script cannot be run at all: a relative, missing, non-regular or non-executable path, or an
    exec the kernel refuses. ``timeout`` is in seconds; 0, negative or None mean 10 s.
    """
    _validate(hook, path, env)
    wait = _normalize_timeout(timeout)
    extra: dict = {}
    if os.getuid() != os.geteuid():
        extra["user"] = os.geteuid()
    if os.getgid() != os.getegid():
        extra["group"] = os.getegid()

    start = time.monotonic()
    deadline = start + wait
    try:
        proc = subprocess.Popen(
            [path], executable=path, env={k: str(v) for k, v in env.items()},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            close_fds=True, process_group=0, cwd="/", **extra)
    except OSError as exc:
        hint = ""
        if exc.errno == errno.ENOENT and os.path.exists(path):
            hint = " (check the #! interpreter line)"
        raise HookConfigError(hook, path, f"cannot execute script: {exc.strerror}{hint}",
                              errno=exc.errno) from exc

    pid = proc.pid
    assert proc.stdout is not None
    out_fd = proc.stdout.fileno()
    os.set_blocking(out_fd, False)
    reader = _Reader(out_fd, OUTPUT_CAP)
    exited = _Exited(pid)
    sel = selectors.DefaultSelector()
    timed_out = False
    lingering = False
    try:
        sel.register(out_fd, selectors.EVENT_READ, "out")
        if exited.pidfd is not None:
            sel.register(exited.pidfd, selectors.EVENT_READ, "exit")

        # Until the script exits (and its output reaches EOF), or the deadline.
        _pump(sel, reader, exited, deadline, stop_on_exit=True)
        if exited.done and not reader.eof:
            _pump(sel, reader, exited, min(deadline, time.monotonic() + OUTPUT_GRACE),
                  stop_on_exit=False)
            lingering = not reader.eof

        if not exited.done:
            timed_out = True
            if log:
                log("warning", f"{hook} {path}: still running after {wait:g} s; "
                               "sending SIGTERM to its process group")
            _killpg(pid, _signal.SIGTERM)
            _pump(sel, reader, exited, time.monotonic() + KILL_GRACE, stop_on_exit=True)
            # Always, even if the script is gone: its children may not be. The leader is not
            # reaped yet, so the group id cannot have been reused.
            _killpg(pid, _signal.SIGKILL)
            _pump(sel, reader, exited, time.monotonic() + OUTPUT_GRACE, stop_on_exit=False)
        returncode = proc.wait()
    except BaseException:
        _killpg(pid, _signal.SIGKILL)
        proc.wait()
        raise
    finally:
        sel.close()
        exited.close()
        proc.stdout.close()

    duration = time.monotonic() - start
    status = returncode if returncode >= 0 else None
    sig = -returncode if returncode < 0 else None
    truncated = reader.total > len(reader.buf)
    output = reader.buf.decode("utf-8", errors="replace")
    if truncated:
        output += (f"\n[jobns: output truncated: kept the first {len(reader.buf)} of "
                   f"{reader.total} bytes]\n")
    result = HookResult(hook=hook, path=path, status=status, signal=sig,
                        timed_out=timed_out, output=output, duration=duration,
                        truncated=truncated, wait=wait)
    if log:
        log("info", f"{hook} {path}: {result.describe()}, "
                    f"{'ok' if result.ok else 'failed'} in {duration:.3f} s")
        if lingering:
            log("warning", f"{hook} {path}: processes it started still hold its output; "
                           f"not waiting for them")
        if output:
            log("debug", f"{hook} {path} output:\n{output.rstrip()}")
    return result


def hook_path(hook: str, cfg: NodeConfig) -> str | None:
    """The configured script for a hook, or None."""
    _check_hook(hook)
    return getattr(cfg, hook) or None


def hook_wait(hook: str, cfg: NodeConfig) -> float:
    """The wait in seconds for a hook: fixed 10 s for init/user_ns, the configured ones else."""
    _check_hook(hook)
    if hook == HOOK_CLONE_NS:
        return _normalize_timeout(cfg.clone_ns_script_wait)
    if hook == HOOK_EPILOG:
        return _normalize_timeout(cfg.clone_ns_epilog_wait)
    return float(FIXED_WAIT)


def run_configured(hook: str, cfg: NodeConfig, job: Job, *, job_dir: str, slurm_conf: str | None,
                   ns_pid: int | None = None, log: Log | None = None) -> HookResult | None:
    """Run the hook configured in ``cfg`` for ``job``; None if it is not configured.

    Like `run_hook`, raises `HookConfigError` when the script cannot be run at all. For
    clone_ns_epilog the caller should log that and carry on, as it does for a failed result.
    """
    path = hook_path(hook, cfg)
    if path is None:
        return None
    env = hook_env(hook, cfg, job, job_dir=job_dir, slurm_conf=slurm_conf, ns_pid=ns_pid)
    return run_hook(hook, path, env, hook_wait(hook, cfg), log=log)


__all__ = [
    "HOOK_INIT", "HOOK_CLONE_NS", "HOOK_EPILOG", "HOOK_USER_NS", "HOOKS",
    "HookResult", "HookConfigError", "hook_env", "hook_path", "hook_wait", "run_hook",
    "run_configured", "DEFAULT_PATH", "OUTPUT_CAP", "KILL_GRACE", "OUTPUT_GRACE",
]
