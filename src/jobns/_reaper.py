"""PID 1 of a job's PID namespace: reap orphans, nothing else.

Run as ``python -I -S -c <this source> JOB_ID READY_FD`` by the lifecycle, inside the job's
mount and PID namespaces. It imports nothing beyond builtins so that its memory stays
small, sets its title to ``jobns: [<J>.namespace]``, asks the OOM killer to spare it,
writes one byte to READY_FD and then waits for SIGCHLD forever. The kernel kills every
process of the namespace when this process dies; `jobns delete` does that with SIGKILL.
"""

import os
import signal
import sys


def _set_title(title: str) -> None:
    # comm (what `ps -e` shows) holds 15 bytes; the argv area (what `ps -f` shows) is
    # rewritten in place through /proc/self/mem, the way setproctitle does it.
    try:
        with open("/proc/self/comm", "w") as f:
            f.write("jobns-init")
    except OSError:
        pass
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        rest = stat[stat.rfind(b")") + 2:].split()
        start, end = int(rest[45]), int(rest[46])
        raw = title.encode()[: end - start - 1]
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(raw + b"\0" * (end - start - len(raw)))
    except (OSError, ValueError, IndexError):
        pass


def main() -> None:
    # Python catches SIGINT (KeyboardInterrupt at the next wake-up). The kernel only
    # delivers to a PID 1, from inside its namespace, the signals it handles: with the
    # default action restored, root inside the job cannot kill the reaper (and the job).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    job_id, ready_fd = sys.argv[1], int(sys.argv[2])
    _set_title(f"jobns: [{job_id}.namespace]")
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("-1000")
    except OSError:
        pass
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    null = os.open("/dev/null", os.O_WRONLY)
    os.dup2(null, 2)          # stderr was the ready pipe, for start-up errors
    os.close(null)
    os.write(ready_fd, b"R")
    os.close(ready_fd)
    while True:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        signal.sigwait({signal.SIGCHLD})


if __name__ == "__main__":
    main()
