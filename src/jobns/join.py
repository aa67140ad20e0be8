"""join and exec: enter a job's namespaces (PID, USER, MNT, Slurm's order) and run a
command there as the job user; `run` is create + exec + delete in one shot.

setns into mount and user namespaces is done only in single-threaded processes.
"""

from __future__ import annotations

import errno
import os
import pwd
import sys
from jobns import kernel
from jobns._lazy import lazy
from jobns.config.model import NodeConfig
from jobns.errors import OperationError, UsageError
from jobns.job import Job, validate_job_id
from jobns.log import null_log
from jobns.plan import JobPaths
from jobns.store import ns_inode, read_init_pid, read_record, require_base
from jobns.values import Frozen, suppress

# signal (with enum) costs more to import than an exec: loaded on demand
signal = lazy("signal")


class JobNamespaces:
    """Open fds of a job's namespaces, in join order (PID, USER, MNT)."""

    def __init__(self, job_id: str, record: dict, mnt: int):
        self.job_id = job_id
        self.record = record
        self.mnt = mnt
        self.user: int | None = None
        self.pid: int | None = None

    def close(self) -> None:
        for fd in (self.pid, self.user, self.mnt):
            if fd is not None:
                with suppress(OSError):
                    os.close(fd)


def open_job(cfg: NodeConfig, job_id: str) -> JobNamespaces:
    """Open the namespaces of job `job_id` on this node (see open_namespaces)."""
    validate_job_id(job_id)
    paths = JobPaths.of(require_base(cfg), job_id)
    if not os.path.isdir(paths.job_dir):
        raise OperationError("join", f"no such job {job_id} on node {cfg.node_name}",
                             path=paths.job_dir, errno=errno.ENOENT)
    return open_namespaces(paths, job_id, read_record(paths) or {})


def open_namespaces(paths: JobPaths, job_id: str, record: dict | None = None) -> JobNamespaces:
    """The rules of a join, as src/jobns/slurm/jobns_join.h states them for the C side:
    1. MNT: the pin must be a mount namespace; 2. USER: the owner of that mount namespace
    (NS_GET_USERNS), only when it is not ours; 3. PID: when .ns/pid1 exists, a pidfd of
    that pid, accepted only if the process is in the pinned mount namespace and still
    alive after the check; 4. join order PID, USER, MNT (join())."""
    try:
        mnt = os.open(paths.pin, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise OperationError.from_oserror("join", e, paths.pin) from e
    handle = JobNamespaces(job_id=job_id, record=record or {}, mnt=mnt)
    try:
        try:
            if kernel.ns_type(mnt) != kernel.CLONE_NEWNS:
                raise OSError(errno.EINVAL, "not a mount namespace")
        except OSError as e:
            raise OperationError("join", f"job {job_id} has lost its namespace (the pin is not "
                                 "mounted); delete and re-create it", path=paths.pin,
                                 errno=errno.ENOENT) from e
        handle.user = kernel.ns_get_userns(mnt)
        os.set_inheritable(handle.user, False)
        if os.fstat(handle.user).st_ino == os.stat("/proc/self/ns/user").st_ino:
            os.close(handle.user)
            handle.user = None
        if os.path.lexists(paths.pid1):
            handle.pid = _open_init(paths, job_id, os.fstat(mnt).st_ino)
    except BaseException:
        handle.close()
        raise
    return handle


def _open_init(paths: JobPaths, job_id: str, pin_ino: int) -> int:
    """A pidfd of the job's PID 1, checked against the pin (rule 3)."""
    gone = OperationError("join", f"PID 1 of job {job_id} is gone", path=paths.pid1,
                          errno=errno.ESRCH)
    pid = read_init_pid(paths, None)
    if pid is None or pid <= 1:
        raise gone
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        raise gone from e
    try:
        if ns_inode(pid, "mnt") != pin_ino:
            raise gone
        kernel.pidfd_send_signal(pidfd, 0)      # still the process that was checked
    except BaseException as e:
        os.close(pidfd)
        if isinstance(e, OSError):
            raise gone from e
        raise
    return pidfd


def join(handle: JobNamespaces) -> None:
    """setns into the job's namespaces in Slurm's order: PID, USER, MNT. The PID namespace
    applies to children forked afterwards. Single-threaded callers only."""
    kernel.require_single_threaded("joining a namespace")
    try:
        if handle.pid is not None:
            kernel.setns(handle.pid, kernel.CLONE_NEWPID)
        if handle.user is not None:
            kernel.setns(handle.user, kernel.CLONE_NEWUSER)
        kernel.setns(handle.mnt, kernel.CLONE_NEWNS)
    except OSError as e:
        raise OperationError.from_oserror("join", e, f"job {handle.job_id}") from e
    finally:
        handle.close()


class Identity(Frozen):
    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str
    shell: str


def resolve_identity(user: str | None = None, uid: int | None = None,
                     gid: int | None = None) -> Identity:
    """Resolve a user name or uid to the ids a job runs with (supplementary groups from
    the group database). A uid without a passwd entry runs with just its gid."""
    try:
        if user is not None:
            if user.isdigit():
                pw = pwd.getpwuid(int(user))
            else:
                pw = pwd.getpwnam(user)
        elif uid is not None:
            pw = pwd.getpwuid(uid)
        else:
            raise UsageError("a user or uid is needed")
    except KeyError:
        if user is not None and not user.isdigit():
            raise UsageError(f"unknown user {user!r}") from None
        num = int(user) if user is not None else uid
        g = gid if gid is not None else num
        return Identity(uid=num, gid=g, groups=(g,), name=str(num), home="/", shell="/bin/sh")
    g = gid if gid is not None else pw.pw_gid
    groups = tuple(os.getgrouplist(pw.pw_name, g))
    return Identity(uid=pw.pw_uid, gid=g, groups=groups, name=pw.pw_name, home=pw.pw_dir,
                    shell=pw.pw_shell or "/bin/sh")


def become(ident: Identity, cwd: str | None, env: dict[str, str]) -> None:
    """Switch to the job user (groups, gid, uid) and a sensible cwd. Root stays root."""
    if os.getuid() != ident.uid or os.getgid() != ident.gid:
        os.setgroups(list(ident.groups))
        os.setgid(ident.gid)
        os.setuid(ident.uid)
        env.update(HOME=ident.home, USER=ident.name, LOGNAME=ident.name)
    for candidate in (cwd, ident.home, "/"):
        if candidate:
            try:
                os.chdir(candidate)
                env["PWD"] = candidate
                return
            except OSError:
                continue


def exit_like(code: int) -> int:
    """Make this process end the way the job's command did: a negative code means killed
    by that signal, which is re-raised on ourselves (without a core dump), so callers see
    the same status as if they had run the command directly."""
    if code >= 0:
        return code
    import resource
    sig = -code
    with suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with suppress(ValueError, OSError):
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
    return 128 + sig


def exec_in(cfg: NodeConfig, job_id: str, argv: list[str], *, user: str | None = None,
            log=null_log) -> int:
    """Run argv inside the job's namespaces as the job user (or `user`). Without a PID
    namespace the command replaces this process; with one, this process waits for it,
    relays signals and returns its status (-N: killed by signal N; see exit_like)."""
    if not argv:
        raise UsageError("no command given")
    handle = open_job(cfg, job_id)
    record = handle.record
    if user is None:
        ident = resolve_identity(uid=int(record["uid"]), gid=int(record["gid"])) \
            if "uid" in record else resolve_identity(user="0")
    else:
        ident = resolve_identity(user=user)
    cwd = os.getcwd() if os.path.exists(".") else None
    env = dict(os.environ)
    pid_ns = handle.pid is not None
    if pid_ns:
        # this process stays to relay signals and the exit status: load what that needs
        # now, while the interpreter's library is surely visible
        __import__("resource")   # for exit_like
        signal.SIGINT
    procs = _open_group(record, job_id)
    join(handle)
    log("debug", f"job {job_id}: exec {argv[0]} as {ident.name}")
    if not pid_ns:
        _enter_group(procs)
        become(ident, cwd, env)
        _execvpe(argv, env)
    try:
        return _fork_exec_wait(argv, ident, cwd, env, procs)
    finally:
        if procs is not None:
            os.close(procs)


def _open_group(record: dict, job_id: str) -> int | None:
    """An fd of the job's cgroup.procs (containment mode cgroup), opened before the join:
    inside the job's namespaces the path may not be visible. None in scan mode."""
    path = record.get("cgroup")
    if record.get("containment") != "cgroup" or not isinstance(path, str):
        return None
    from jobns import cgroup
    try:
        return cgroup.open_procs(path)
    except OSError as e:
        raise OperationError("join", f"cannot enter the cgroup of job {job_id}: {e.strerror} "
                             "(is the job being deleted?)", path=path, errno=e.errno) from None


def _enter_group(procs: int | None) -> None:
    """Move the calling process into the job's group (the command and all it starts stay
    there, whatever namespaces they make), or end it: never run outside the group."""
    if procs is None:
        return
    try:
        os.write(procs, b"0")
        os.close(procs)
    except OSError as e:
        sys.stderr.write(f"jobns: cannot enter the job's cgroup: {e.strerror}\n")
        os._exit(126)


def _execvpe(argv: list[str], env: dict[str, str]) -> None:
    """execvpe searching the job's PATH, in the job's mount namespace. Written out rather
    than os.execvpe, which imports `warnings` after the join, when the interpreter's own
    library may not be visible any more."""
    cmd = argv[0]
    if "/" in cmd:
        candidates = [cmd]
    else:
        candidates = [os.path.join(d or ".", cmd)
                      for d in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":")]
    first_error: OSError | None = None
    for path in candidates:
        try:
            os.execve(path, argv, env)
        except OSError as e:
            if first_error is None or (first_error.errno in (errno.ENOENT, errno.ENOTDIR)
                                       and e.errno not in (errno.ENOENT, errno.ENOTDIR)):
                first_error = e
    err = first_error or OSError(errno.ENOENT, "No such file or directory")
    sys.stderr.write(f"jobns: exec {cmd}: {err.strerror}\n")
    os._exit(127 if err.errno in (errno.ENOENT, errno.ENOTDIR) else 126)


def _fork_exec_wait(argv: list[str], ident: Identity, cwd: str | None,
                    env: dict[str, str], procs: int | None = None) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the job's command
        try:
            _enter_group(procs)
            become(ident, cwd, env)
            _execvpe(argv, env)
        finally:
            os._exit(127)
    return wait_relaying(pid)


def wait_relaying(pid: int) -> int:
    """Wait for `pid`, forwarding SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1/2 to it.
    Returns its exit code, or -N if signal N killed it (see exit_like)."""
    relayed = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
               signal.SIGUSR2)

    def forward(sig, _frame):
        with suppress(OSError):
            os.kill(pid, sig)

    old = {s: signal.signal(s, forward) for s in relayed}
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return os.waitstatus_to_exitcode(status)


def run(cfg: NodeConfig, job: Job, argv: list[str], *, log=null_log) -> int:
    """One shot: create, run argv as the job user inside, delete; return argv's status
    (-N if signal N killed it)."""
    from jobns.create import create
    from jobns.delete import delete
    create(cfg, job, log=log, owner_pid=os.getpid())
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - joins and execs
            code = 127
            try:
                code = exit_like(exec_in(cfg, job.job_id, argv, log=log))
            except BaseException as e:
                sys.stderr.write(f"jobns: {e}\n")
            finally:
                os._exit(code)
        status = wait_relaying(pid)
    finally:
        result = delete(cfg, job.job_id, log=log)
        if not result.ok:
            log("error", f"job {job.job_id}: {result.summary()}")
    return status
