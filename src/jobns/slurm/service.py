"""The per-node jobns service: job prologs and epilogs without a Python start per job.

A Python process start plus the imports of a prolog cost 30-90 ms (more on a busy node or
a slow Python), against a few ms of namespace work; srun (24.11+) polls "nodes ready" at
0 s, 0.1 s and then only after 1 s, so a prolog that ends after 0.1 s costs a whole second.
The service is a small resident process, started on demand, that has already imported
everything; for each request it forks a worker that runs exactly what `jobns slurm prolog`
or `jobns slurm epilog` runs (`jobns.cli.main`, with the request's environment and
options), so there is one implementation of each verb and the worker is as isolated from
the service as a CLI process is from slurmd.

Protocol (version 1; docs/service.md): a SOCK_STREAM unix socket `<runtime>/service.sock`
(mode 0600 in the root-only runtime dir; peers other than uid 0 are refused). The client
sends NUL-terminated items and an empty item at the end:

    jobns-service 1 \\0 op=prolog|epilog \\0 [config=FILE \\0] [node=NAME \\0]
    env=KEY=VALUE \\0 ... \\0

The service answers `+` as soon as a worker has the request, then the command's output
(the lines jobns would print, at most 64 KiB), a NUL and the exit status in decimal, then
closes. A client that gets no `+` in time, or EOF before the status, must treat the service
as absent and run `jobns slurm prolog|epilog` itself: the answer is complete or it was not
given. A job whose prolog failed never runs (Slurm fails it), and a task runs only inside
a namespace it can open (the SPANK plugin refuses it otherwise): a misbehaving service can
fail jobs, never run one unisolated.

Start: `jobns slurm service` daemonizes and returns once the socket listens; one instance
per runtime dir (it holds `<runtime>/service.lock` for its life). The SPANK plugin starts it
in slurmd context when slurmd starts; a `jobns slurm prolog` that ran because the service
was absent starts it again (`JOBNS_SERVICE=start`). When jobns' installed code changes the
service stops taking requests and exits (clients fall back; the next fallback starts the
new code).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import time

from jobns.values import suppress

MAGIC = b"jobns-service 1"
SOCKET = "service.sock"
LOCK = "service.lock"
PIDFILE = "service.pid"
START_ENV = "JOBNS_SERVICE"          # "start": the CLI prolog/epilog (re)starts the service
MAX_REQUEST = 1 << 20
MAX_OUTPUT = 64 << 10
OPS = ("prolog", "epilog")
REQUEST_TIMEOUT = 10.0               # a client must send its request within this time
MIN_IDLE = 2                         # workers kept waiting for a request
MAX_WORKERS = 64                     # beyond that, requests wait in the listen backlog
IDLE_RETIRE = 60.0                   # seconds an extra idle worker lives on
MAX_REQUESTS = 10000                 # then a worker exits and a fresh one replaces it
STAMP_EVERY = 1.0                    # seconds between two checks of the code on disk

# Everything a prolog or epilog imports, loaded once in the service so that the forked
# workers import nothing.
_PRELOAD = ("jobns.cli", "jobns.log", "jobns.slurm.cli", "jobns.slurm.env", "jobns.create",
            "jobns.delete", "jobns.store", "jobns.nschild",
            "jobns.plan", "jobns.kernel", "jobns.config", "jobns.config.cache",
            "jobns.config.yaml_reader", "jobns.config.conf_reader",
            "jobns.config.plugstack_reader", "jobns.cleanup", "jobns.hooks", "jobns._fsops",
            "json", "signal", "syslog", "subprocess")


def paths(runtime: str) -> tuple[str, str, str]:
    return (os.path.join(runtime, SOCKET), os.path.join(runtime, LOCK),
            os.path.join(runtime, PIDFILE))


def _code_stamp() -> tuple:
    """Identity of the installed jobns code: name, size and mtime of every module file
    (a pip upgrade or an edit changes it; about 50 stats)."""
    import jobns
    top = os.path.dirname(os.path.abspath(jobns.__file__))
    out = []
    for d in (top, os.path.join(top, "slurm"), os.path.join(top, "config")):
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.name.endswith(".py"):
                        st = e.stat(follow_symlinks=False)
                        out.append((e.path, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((d, None))
    return tuple(sorted(out))


# ------------------------------------------------------------------------- requests

def parse_request(data: bytes) -> tuple[str, str | None, str | None, dict[str, str]]:
    """(op, config, node, env) of a complete request; ValueError on anything else."""
    if not data.endswith(b"\0\0"):
        raise ValueError("request not terminated by an empty item")
    items = data[:-2].split(b"\0")
    if not items or items[0] != MAGIC:
        raise ValueError("not a jobns-service 1 request")
    op = config = node = None
    env: dict[str, str] = {}
    for raw in items[1:]:
        item = raw.decode("utf-8", "surrogateescape")
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"item without '=': {item[:80]!r}")
        if key == "op" and op is None:
            op = value
        elif key == "config" and config is None and value:
            config = value
        elif key == "node" and node is None and value:
            node = value
        elif key == "env":
            name, sep, val = value.partition("=")
            if not sep or not name:
                raise ValueError(f"env item without KEY=VALUE: {value[:80]!r}")
            env[name] = val
        else:
            raise ValueError(f"unknown or repeated item {key!r}")
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}, not {op!r}")
    return op, config, node, env


def encode_request(op: str, env: dict[str, str], config: str | None = None,
                   node: str | None = None) -> bytes:
    items = [MAGIC, f"op={op}".encode()]
    if config:
        items.append(f"config={config}".encode())
    if node:
        items.append(f"node={node}".encode())
    items += [f"env={k}={v}".encode("utf-8", "surrogateescape") for k, v in env.items()]
    return b"\0".join(items) + b"\0\0"


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    conn.settimeout(REQUEST_TIMEOUT)
    while not data.endswith(b"\0\0"):
        chunk = conn.recv(65536)
        if not chunk:
            raise ValueError("connection closed before the request was complete")
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request too large")
    return data


def _serve_one(conn: socket.socket, runtime: str) -> bool:
    """In a worker: run the request as `jobns slurm OP` would, answer. Returns False when
    the worker should not take another request (an unexpected exception).

    An epilog is answered as soon as the job id is free (every process of the job gone,
    its namespace unpinned, its directory moved into the trash); the worker then removes
    the files, logging to syslog. What it cannot remove, or what a crash interrupts,
    stays in `<base>/.jobns-trash` until the next restore."""
    code = 1
    out_fd = -1
    healthy = True
    replied = False
    saved = (os.dup(1), os.dup(2))

    def answer(status: int) -> None:
        nonlocal replied
        if replied:
            return
        replied = True
        sys.stdout.flush()
        sys.stderr.flush()
        size = os.lseek(out_fd, 0, os.SEEK_END)
        start = max(0, size - MAX_OUTPUT)
        output = os.pread(out_fd, size - start, start)
        try:
            conn.sendall(output.replace(b"\0", b" ") + b"\0" + str(status).encode())
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    try:
        op, config, node, env = parse_request(_read_request(conn))
        conn.sendall(b"+")
        env["JOBNS_RUNTIME_DIR"] = runtime     # the runtime dir whose socket was used
        env.pop(START_ENV, None)
        os.environ.clear()
        os.environ.update(env)
        out_fd = os.memfd_create("jobns-output", os.MFD_CLOEXEC)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        from jobns import cli
        from jobns.slurm import cli as slurm_cli
        try:
            ctx = cli.Context(_Options(config, node))
            code = slurm_cli.job_command(op, ctx, on_free=(lambda: answer(0))
                                         if op == "epilog" else None)
        except BaseException as e:   # a bug: say it, as an uncaught exception would
            sys.stderr.write(f"jobns: error: {op}: {type(e).__name__}: {e}\n")
            code = 1
            healthy = False
        answer(code)
    except ValueError as e:
        _reply_error(conn, f"jobns: error: service: bad request: {e}", 2)
    except OSError:
        pass    # the client went away or sent nothing in time: no answer (it falls back)
    finally:
        if out_fd >= 0:
            os.close(out_fd)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        conn.close()
    return healthy


class _Options:
    """The global options of a `jobns [--config F] [--node N] slurm OP` command line."""

    def __init__(self, config: str | None, node: str | None):
        self.config = config
        self.node = node
        self.verbose = False
        self.quiet = False


def _reply_error(conn: socket.socket, message: str, code: int) -> None:
    try:
        conn.sendall(b"+" + message.encode(errors="replace") + b"\n\0" + str(code).encode())
    except OSError:
        pass


# ------------------------------------------------------------------------- the server

class Service:
    def __init__(self, runtime: str, log):
        self.runtime = runtime
        self.sock_path, self.lock_path, self.pid_path = paths(runtime)
        self.log = log
        self.lock_fd = -1
        self.listener: socket.socket | None = None
        self.stamp = None
        self.sock_id = None
        self.stopping = False

    def acquire(self) -> bool:
        """Take the instance lock; False if another service holds it."""
        from jobns.store import ensure_private_dir
        ensure_private_dir(self.runtime)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.lock_fd = fd
        return True

    def listen(self) -> None:
        with suppress(FileNotFoundError):
            os.unlink(self.sock_path)      # ours: we hold the lock
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            s.bind(self.sock_path)
        finally:
            os.umask(old)
        os.chmod(self.sock_path, 0o600)
        s.listen(256)
        st = os.stat(self.sock_path)
        self.sock_id = (st.st_dev, st.st_ino)
        self.listener = s
        tmp = self.pid_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, self.pid_path)

    def preload(self) -> None:
        import importlib
        for name in _PRELOAD:
            try:
                importlib.import_module(name)
            except ImportError as e:
                self.log("warning", f"service: cannot preload {name}: {e}")
        self.stamp = _code_stamp()

    def close(self) -> None:
        """Stop listening; the socket path is removed only while it is still ours."""
        if self.listener is not None:
            try:
                st = os.stat(self.sock_path)
                ours = (st.st_dev, st.st_ino) == self.sock_id
            except OSError:
                ours = False
            if ours:
                with suppress(OSError):
                    os.unlink(self.sock_path)
                with suppress(OSError):
                    os.unlink(self.pid_path)
            self.listener.close()
            self.listener = None

    def _still_bound(self) -> bool:
        """Whether the socket path still names our socket (a removed runtime dir, or
        another service that took over after a restore, means: stop)."""
        try:
            st = os.stat(self.sock_path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.sock_id

    def _peer_is_root(self, conn: socket.socket) -> bool:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid == 0

    def serve(self) -> int:
        """Until SIGTERM/SIGINT, or until jobns' code changes on disk.

        Requests are served by pre-forked workers that wait in accept() and each handle
        one request at a time, in-process and warm (no fork or import on the request's
        path). The service keeps at least MIN_IDLE of them idle: when one takes a
        request and fewer are idle, it forks another (up to MAX_WORKERS); extra workers
        idle for IDLE_RETIRE seconds are asked to exit. A worker that crashes takes only
        its own request with it (that client falls back to the CLI)."""
        def stop(_sig, _frame):
            self.stopping = True
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.listener.setblocking(False)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        workers: dict[int, list] = {}     # pid -> [state, since, control write fd]
        self.log("info", f"service: listening on {self.sock_path} (pid {os.getpid()})")
        try:
            while not self.stopping:
                idle = [p for p, w in workers.items() if w[0] == "I"]
                if len(idle) < MIN_IDLE and len(workers) < MAX_WORKERS:
                    pid, ctl = self._fork_worker(status_w)
                    if pid:
                        workers[pid] = ["I", time.monotonic(), ctl]
                    continue
                if len(idle) > MIN_IDLE:
                    now = time.monotonic()
                    for pid in idle[MIN_IDLE:]:
                        w = workers[pid]
                        if now - w[1] > IDLE_RETIRE and w[0] == "I":
                            with suppress(OSError):
                                os.write(w[2], b"q")
                            w[0] = "Q"
                try:
                    ready, _, _ = select.select([status_r], [], [], 1.0)
                except InterruptedError:
                    ready = []
                if not ready and not self._still_bound():
                    self.log("info", f"service: {self.sock_path} is gone or not ours; "
                             "exiting")
                    break
                if ready:
                    data = os.read(status_r, 4096)
                    for k in range(0, len(data) - len(data) % 5, 5):
                        state, pid = data[k:k + 1].decode(), int.from_bytes(
                            data[k + 1:k + 5], "little")
                        if state == "X":
                            self.log("info", "service: jobns was updated on disk; exiting")
                            self.stopping = True
                        elif pid in workers and workers[pid][0] != "Q":
                            workers[pid][0:2] = [state, time.monotonic()]
                for pid in self._reap():
                    w = workers.pop(pid, None)
                    if w is not None:
                        with suppress(OSError):
                            os.close(w[2])
        finally:
            self.close()        # no new connections; workers finish what they took
            for pid, w in workers.items():
                with suppress(OSError):
                    os.write(w[2], b"q")
                with suppress(OSError):
                    os.close(w[2])
            os.close(status_r)
            os.close(status_w)
        return 0

    def _fork_worker(self, status_w: int) -> tuple[int, int]:
        ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = os.fork()
        except OSError as e:
            self.log("error", f"service: fork: {e.strerror}; clients fall back to the CLI")
            os.close(ctl_r)
            os.close(ctl_w)
            select.select([], [], [], 0.5)
            return 0, -1
        if pid:
            os.close(ctl_r)
            return pid, ctl_w
        code = 0  # pragma: no cover - the worker
        try:
            os.close(ctl_w)
            os.close(self.lock_fd)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
                signal.signal(sig, signal.SIG_DFL)
            self._work(ctl_r, status_w)
        except BaseException:
            code = 1
        finally:
            os._exit(code)

    def _work(self, ctl: int, status_w: int) -> None:  # pragma: no cover - the worker
        me = os.getpid().to_bytes(4, "little")
        checked = 0.0
        for _ in range(MAX_REQUESTS):
            ready, _, _ = select.select([self.listener, ctl], [], [])
            if ctl in ready:
                return
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            os.write(status_w, b"B" + me)
            conn.setblocking(True)
            if not self._peer_is_root(conn):
                conn.close()
                os.write(status_w, b"I" + me)
                continue
            if time.monotonic() - checked > STAMP_EVERY:
                checked = time.monotonic()
                if _code_stamp() != self.stamp:
                    # new code installed: this client falls back to the CLI, which starts
                    # the service again with the new code
                    os.write(status_w, b"X" + me)
                    conn.close()
                    return
            if not _serve_one(conn, self.runtime):
                return
            os.write(status_w, b"I" + me)

    def _reap(self) -> list[int]:
        gone = []
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return gone
            if pid == 0:
                return gone
            gone.append(pid)


# ------------------------------------------------------------------------- starting it

def run(runtime: str, log, *, foreground: bool = False) -> int:
    """`jobns slurm service`: start the service for `runtime` unless one runs already.
    Daemonized, it returns once the socket listens (exit 0), or with the start error."""
    svc = Service(runtime, log)
    if foreground:
        if not svc.acquire():
            log("info", f"service: already running for {runtime}")
            return 0
        svc.preload()
        svc.listen()
        return svc.serve()
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        answer = b""
        while True:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            answer += chunk
        os.close(r)
        os.waitpid(pid, 0)
        text = answer.decode(errors="replace")
        if text.startswith("ok"):
            log("info", f"service: {text[3:] or 'started'}")
            return 0
        log("error", f"service: not started: {text}")
        return 1
    # first child: a new session, then the service itself in a grandchild
    try:
        os.close(r)
        os.setsid()
        if os.fork():
            os._exit(0)
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if null > 2:
            os.close(null)
        os.closerange(3, w)
        os.closerange(w + 1, 65536)
        from jobns.log import Log
        slog = Log("info", use_syslog=True, stream=open(os.devnull, "w"))
        svc = Service(runtime, slog)
        if not svc.acquire():
            os.write(w, b"ok already running")
            os._exit(0)
        svc.preload()
        svc.listen()
        os.write(w, b"ok")
        os.close(w)
        code = svc.serve()
    except BaseException as e:
        with suppress(OSError):
            os.write(w, f"{type(e).__name__}: {e}".encode())
        os._exit(1)
    os._exit(code)


def start_detached(jobns_exe: str, runtime: str) -> None:
    """Start `jobns slurm service` in the background unless a service holds the lock;
    returns at once (called by a CLI prolog/epilog that ran because none answered)."""
    lock = os.path.join(runtime, LOCK)
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        fd = -1
    except OSError:
        return
    if fd >= 0:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return                      # a service runs (or is starting)
        finally:
            os.close(fd)
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:  # pragma: no cover - the child
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for n in (0, 1, 2):
            os.dup2(null, n)
        os.closerange(3, 65536)
        env = dict(os.environ, JOBNS_RUNTIME_DIR=runtime)
        env.pop(START_ENV, None)
        os.execve(jobns_exe, [jobns_exe, "-q", "slurm", "service"], env)
    finally:
        os._exit(127)


def call(runtime: str, op: str, env: dict[str, str], *, config: str | None = None,
         node: str | None = None, timeout: float = 10.0) -> tuple[int, str] | None:
    """A client (tests, tools): (exit status, output), or None when the service did not
    answer completely (then run the CLI instead)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            s.connect(os.path.join(runtime, SOCKET))
            s.sendall(encode_request(op, env, config, node))
            s.settimeout(timeout)
            if s.recv(1) != b"+":
                return None
            s.settimeout(None)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            return None
    finally:
        s.close()
    out, sep, status = data.rpartition(b"\0")
    if not sep or not status.isdigit():
        return None
    return int(status), out.decode(errors="replace")



def stop(runtime: str, log, timeout: float = 10.0) -> int:
    """`jobns slurm service --stop`: SIGTERM the service of `runtime` (the process named
    in its pid file that holds the instance lock) and wait until it is gone."""
    import time
    _, lock, pidfile = paths(runtime)
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        log("info", f"service: not running for {runtime}")
        return 0
    if not _holds(pid, lock):
        log("info", f"service: not running for {runtime} (stale {pidfile})")
        return 0
    pidfd = os.pidfd_open(pid)
    try:
        if not _holds(pid, lock):       # the pid was reused before the pidfd was opened
            return 0
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        log("error", f"service: pid {pid} did not stop within {timeout:.0f} s")
        return 1
    log("info", f"service: stopped (pid {pid})")
    return 0


def _holds(pid: int, path: str) -> bool:
    """Whether process `pid` has `path` open (the service holds its lock file)."""
    try:
        st = os.stat(path)
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            s = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
            return True
    return False
