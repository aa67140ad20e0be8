"""Section 1: namespace lifecycle (create / exec / delete), CLI and in-process, with anchors.

Anchors, all measured in the same run:
- `unshare --mount --propagation private true` as a whole process (what util-linux pays);
- `/bin/true` as a whole process (the spawn floor of subprocess from this interpreter);
- `<venv>/bin/python -I -S -c pass` and `-c 'import jobns.cli'` (interpreter start, imports);
- the raw floor of an in-process create: the same kernel work jobns does (fork, unshare,
  pin the mount namespace, rprivate, bind /tmp, fresh tmpfs on /dev/shm, wait), written
  straight on jobns.kernel with no plan, record, lock or index, and inside it the time of
  the syscalls alone (measured in the child with perf_counter around them);
- fork + exec /bin/true from this process (what any in-process exec pays).
"""

from __future__ import annotations

import os
import sys

from jobns import kernel, lifecycle

from bench.common import JOBNS, Node, Results, log, now, run_timed

SECTION = "lifecycle"
BENCH_PY = sys.executable


def _tag(label: str) -> str:
    return "P" if "pid" in label else "M"


def _cli_cycle(node: Node, runs: int, pid_user: bool, res: Results, label: str) -> None:
    env = node.env(pid_user)
    create, exec_, delete = [], [], []
    for i in range(runs):
        j = f"cli{_tag(label)}{i}"
        create.append(run_timed([JOBNS, "create", j, "--user", "nobody"], env))
        exec_.append(run_timed([JOBNS, "exec", j, "--", "/bin/true"], env))
        delete.append(run_timed([JOBNS, "delete", j], env))
    t = res.timing(SECTION, f"CLI create [{label}]", create)
    t.target = "<= 25 ms p50"
    t.met = t.stats["median"] <= 25
    res.timing(SECTION, f"CLI exec /bin/true [{label}]", exec_)
    d = res.timing(SECTION, f"CLI delete, empty job [{label}]", delete)
    d.target = "<= 20 ms p50"
    d.met = d.stats["median"] <= 20


def _inproc_exec(cfg, job_id: str) -> float:
    t = now()
    pid = os.fork()
    if pid == 0:  # child: join and exec
        code = 127
        try:
            handle = lifecycle.open_job(cfg, job_id)
            has_pid = handle.pid is not None
            lifecycle.join(handle)
            if has_pid:   # the PID namespace applies to children: fork once more
                pid2 = os.fork()
                if pid2 == 0:
                    os.execv("/bin/true", ["/bin/true"])
                _, st = os.waitpid(pid2, 0)
                code = os.waitstatus_to_exitcode(st)
            else:
                os.execv("/bin/true", ["/bin/true"])
        finally:
            os._exit(code)
    _, st = os.waitpid(pid, 0)
    ms = (now() - t) * 1000
    if os.waitstatus_to_exitcode(st) != 0:
        raise RuntimeError(f"in-process exec into {job_id} failed: status {st}")
    return ms


def _inproc_cycle(node: Node, runs: int, pid_user: bool, res: Results, label: str) -> None:
    cfg = node.cfg(pid_user)
    create, exec_, delete = [], [], []
    lifecycle.ensure_base(cfg)
    for i in range(runs + 2):   # 2 warm-up cycles (page cache, lazy imports)
        j = f"api{_tag(label)}{i}"
        t = now()
        lifecycle.create(cfg, node.job(j))
        c = (now() - t) * 1000
        e = _inproc_exec(cfg, j)
        t = now()
        r = lifecycle.delete(cfg, j)
        d = (now() - t) * 1000
        if not r.ok:
            raise RuntimeError(f"delete {j}: {r.summary()}")
        if i >= 2:
            create.append(c)
            exec_.append(e)
            delete.append(d)
    t = res.timing(SECTION, f"API create [{label}]", create)
    t.target = "<= 3 ms p50"
    t.met = t.stats["median"] <= 3
    res.timing(SECTION, f"API exec /bin/true [{label}]", exec_)
    res.timing(SECTION, f"API delete, empty job [{label}]", delete)


# ------------------------------------------------------------------ anchors

def _fork_exec_true() -> float:
    t = now()
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/bin/true", ["/bin/true"])
        finally:
            os._exit(127)
    os.waitpid(pid, 0)
    return (now() - t) * 1000


def _raw_create(node: Node, i: int) -> tuple[float, float, float]:
    """The kernel work of a mount-only create with nothing around it.
    Returns (total ms, syscalls-in-child ms, pin ms) and undoes it."""
    job_dir = os.path.join(node.base, f"raw{i}")
    tmp_src = os.path.join(job_dir, "tmp")
    pin = os.path.join(job_dir, "mnt")
    os.mkdir(job_dir, 0o700)
    os.mkdir(tmp_src, 0o700)
    os.close(os.open(pin, os.O_WRONLY | os.O_CREAT, 0o400))
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    t = now()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(w1)
            os.close(r2)
            a = now()
            kernel.unshare(kernel.CLONE_NEWNS)
            b = now()
            os.write(w2, b"U")
            os.read(r1, 1)
            c = now()
            kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
            kernel.mount(tmp_src, "/tmp", None, kernel.MS_BIND)
            kernel.mount("tmpfs", "/dev/shm", "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV,
                         "mode=1777")
            d = now()
            os.write(w2, f"{(b - a + d - c) * 1e6:.1f}\n".encode())
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(w2)
    os.close(r1)
    assert os.read(r2, 1) == b"U"
    p0 = now()
    kernel.mount(f"/proc/{pid}/ns/mnt", pin, None, kernel.MS_BIND)
    p1 = now()
    os.write(w1, b"G")
    child_us = float(os.read(r2, 64).decode().strip() or "nan")
    _, st = os.waitpid(pid, 0)
    total = (now() - t) * 1000
    os.close(r2)
    os.close(w1)
    if st != 0:
        raise RuntimeError("raw create child failed")
    kernel.umount2(pin, kernel.MNT_DETACH)
    os.unlink(pin)
    os.rmdir(tmp_src)
    os.rmdir(job_dir)
    return total, child_us / 1000 + (p1 - p0) * 1000, (p1 - p0) * 1000


def run(res: Results, runs: int, quick: bool) -> None:
    with Node("lifecycle") as node:
        log("lifecycle: anchors")
        true_ms, unshare_ms, py_ms, imp_ms = [], [], [], []
        for _ in range(runs):
            true_ms.append(run_timed(["/bin/true"]))
            unshare_ms.append(run_timed(["unshare", "--mount", "--propagation", "private",
                                         "true"]))
            py_ms.append(run_timed([BENCH_PY, "-I", "-S", "-c", "pass"]))
            imp_ms.append(run_timed([BENCH_PY, "-I", "-c", "import jobns.cli"]))
        a_true = res.timing(SECTION, "anchor: /bin/true (process)", true_ms)
        a_unshare = res.timing(SECTION, "anchor: unshare --mount --propagation private true",
                               unshare_ms)
        a_py = res.timing(SECTION, "anchor: venv python -I -S -c pass", py_ms)
        res.timing(SECTION, "anchor: venv python -I -c 'import jobns.cli'", imp_ms)

        log("lifecycle: CLI create/exec/delete (built-in config)")
        _cli_cycle(node, runs, False, res, "mnt")
        log("lifecycle: CLI create/exec/delete (mnt+pid+user)")
        _cli_cycle(node, runs, True, res, "mnt+pid+user")
        for name in ("CLI create [mnt]", "CLI exec /bin/true [mnt]",
                     "CLI delete, empty job [mnt]", "CLI create [mnt+pid+user]",
                     "CLI exec /bin/true [mnt+pid+user]",
                     "CLI delete, empty job [mnt+pid+user]"):
            res.compare(res.get(SECTION, name), a_unshare)

        log("lifecycle: in-process API")
        _inproc_cycle(node, runs, False, res, "mnt")
        _inproc_cycle(node, runs, True, res, "mnt+pid+user")

        log("lifecycle: raw floor")
        fe = [_fork_exec_true() for _ in range(runs)]
        a_fe = res.timing(SECTION, "floor: fork+exec /bin/true (this process)", fe)
        raw_total, raw_sys, raw_pin = [], [], []
        for i in range(runs + 2):
            tot, sysc, pin = _raw_create(node, i)
            if i >= 2:
                raw_total.append(tot)
                raw_sys.append(sysc)
                raw_pin.append(pin)
        a_raw = res.timing(SECTION, "floor: raw create (fork+unshare+pin+3 mounts, Python)",
                           raw_total)
        a_sys = res.timing(SECTION, "floor: the syscalls alone (unshare+pin+3 mounts)",
                           raw_sys)
        for name in ("API create [mnt]", "API create [mnt+pid+user]"):
            res.compare(res.get(SECTION, name), a_raw)
        for name in ("API exec /bin/true [mnt]", "API exec /bin/true [mnt+pid+user]"):
            res.compare(res.get(SECTION, name), a_fe)
        api = res.get(SECTION, "API create [mnt]")
        res.sections[SECTION] = {
            "method": "whole processes timed with perf_counter around subprocess.run "
                      "(stdout/stderr to pipes, not a terminal); in-process via the API; "
                      "the raw floor repeats jobns' kernel steps with nothing around them",
            "python_overhead_api_create_ms": round(api.central - a_raw.central, 3),
            "syscall_share_of_api_create": round(a_sys.central / api.central, 3),
            "interpreter_share_of_cli_create": round(
                a_py.central / res.get(SECTION, "CLI create [mnt]").central, 3),
            "spawn_floor_ms": round(a_true.central, 3),
        }
