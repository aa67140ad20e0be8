"""PID namespace (clone_ns_flags: [CLONE_NEWPID]) against the real kernel.

The job's PID 1 is the jobns reaper: it must be the only foreign process a job sees,
reap every orphan, carry its title and OOM adjustment, stay small, and take the whole
namespace with it when `delete` kills it.
"""

from __future__ import annotations

import os
import subprocess

from kernelhelp import JOBNS
from jobns import lifecycle

from nshelp import (JOB_UID, MNT, PID, alive, cmdline, init_pid, job, ns_ino, procs_in_pidns,
                    start_time, status_field, uss_bytes, wait_until)

USS_LIMIT = 8 * 1024 * 1024


def _create(node, job_id="301", flags=(PID, MNT), log=None, **kw):
    cfg = node.cfg(clone_ns_flags=flags, **kw)
    lifecycle.create(cfg, job(job_id), **({"log": log} if log else {}))
    return cfg


def _has_cap(bit: int) -> bool:
    return bool(int(status_field(os.getpid(), "CapEff"), 16) >> bit & 1)


CAP_SYS_RESOURCE = 24


def _sh(node, job_id, script, *, user=None, check=True):
    args = ["exec", job_id]
    if user:
        args += ["--user", user]
    r = node.cli(*args, "--", "/bin/sh", "-c", script)
    if check:
        assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r


def test_reaper_is_pid1_with_title_oom_and_small_memory(node):
    logged = []
    _create(node, log=lambda level, msg: logged.append((level, msg)))
    pid = init_pid(node, "301")
    # PID 1 inside, a normal pid outside; in the job's mount namespace.
    assert status_field(pid, "NSpid").split() == [str(pid), "1"]
    assert ns_ino(pid, "mnt") == os.stat(os.path.join(node.job_dir("301"), ".ns/mnt")).st_ino
    assert ns_ino(pid, "pid") != ns_ino("self", "pid")
    # Title as `ps` shows it, comm for `ps -e`, lowest OOM score adjustment.
    assert cmdline(pid)[0] == "jobns: [301.namespace]"
    ps = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True)
    assert ps.stdout.strip() == "jobns: [301.namespace]"
    with open(f"/proc/{pid}/comm") as f:
        assert f.read().strip() == "jobns-init"
    with open(f"/proc/{pid}/oom_score_adj") as f:
        adj = int(f.read())
    # said once per job at debug level: a node that withholds the capability would
    # otherwise log it for every job
    oom_warnings = [m for lvl, m in logged if lvl == "debug" and "oom_score_adj" in m]
    if _has_cap(CAP_SYS_RESOURCE):
        assert adj == -1000 and not oom_warnings
    else:
        # Without CAP_SYS_RESOURCE nobody can go below the inherited value: PID 1 keeps
        # ours and create says so (this VM withholds the capability from root).
        with open("/proc/self/oom_score_adj") as f:
            assert adj == int(f.read())
        assert len(oom_warnings) == 1, logged
    # It runs as root, holds no file of the caller open and does not pin the caller's cwd.
    assert status_field(pid, "Uid").split()[0] == "0"
    fds = sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))
    assert fds == [0, 1, 2], [os.readlink(f"/proc/{pid}/fd/{n}") for n in fds]
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    # Memory: unique set size (what killing it would free).
    uss = uss_bytes(pid)
    print(f"reaper USS: {uss / 1048576:.2f} MiB")
    assert 0 < uss <= USS_LIMIT


def test_ps_inside_shows_only_the_job(node):
    _create(node)
    _sh(node, "301", "sleep 300 </dev/null >/dev/null 2>&1 &")
    r = node.cli("exec", "301", "--", "ps", "-e", "-o", "pid=,ppid=,user=,args=", check=True)
    rows = [line.split(None, 3) for line in r.stdout.strip().splitlines()]
    by_args = {row[3]: row for row in rows}
    assert set(by_args) == {"jobns: [301.namespace]", "sleep 300",
                            "ps -e -o pid=,ppid=,user=,args="}, r.stdout
    assert by_args["jobns: [301.namespace]"][:3] == ["1", "0", "root"]
    # The orphaned sleep was adopted by PID 1; the exec'd command's parent is outside.
    assert by_args["sleep 300"][1] == "1"
    assert by_args["sleep 300"][2] == str(JOB_UID)
    assert by_args["ps -e -o pid=,ppid=,user=,args="][1] == "0"
    # The host sees far more; inside, /proc is the job's own.
    host = subprocess.run(["ps", "-e", "-o", "pid="], capture_output=True, text=True)
    assert len(host.stdout.split()) > len(rows)
    r = _sh(node, "301", "grep -w /proc /proc/self/mountinfo | tail -n 1")
    assert " - proc " in r.stdout


def test_orphaned_grandchildren_are_reaped(node):
    _create(node)
    init = init_pid(node, "301")
    pidns = ns_ino(init, "pid")
    # 20 grandchildren, orphaned at once when their subshells exit; they end together, so
    # the reaper gets coalesced SIGCHLDs and must loop over waitpid.
    _sh(node, "301", "for i in $(seq 20); do (sleep 1 </dev/null >/dev/null 2>&1 &); done")
    orphans = {p: f for p, f in procs_in_pidns(pidns).items() if p != init}
    assert len(orphans) == 20, orphans
    assert all(f[1] == str(init) for f in orphans.values()), orphans   # adopted by PID 1

    def only_init_left():
        return set(procs_in_pidns(pidns)) == {init}
    wait_until(only_init_left, 10, "the orphans to be reaped (no zombies)")
    assert alive(init)


def test_delete_leaves_no_process_of_the_job(node):
    cfg = _create(node, flags=(PID, MNT))
    init = init_pid(node, "301")
    pidns = ns_ino(init, "pid")
    # A mix: one ignoring SIGTERM/SIGHUP, one in its own session, a double fork, and a
    # command still attached to a `jobns exec` outside the namespace.
    _sh(node, "301", "trap '' TERM HUP; sleep 1000 </dev/null >/dev/null 2>&1 &")
    _sh(node, "301", "setsid sleep 1001 </dev/null >/dev/null 2>&1 &")
    _sh(node, "301", "(sh -c 'sleep 1002' </dev/null >/dev/null 2>&1 &)")
    attached = subprocess.Popen([JOBNS, "exec", "301", "--", "sleep", "1003"], env=node.env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: len(procs_in_pidns(pidns)) >= 6, 10, "the job's processes")
        members = {p: start_time(p) for p in procs_in_pidns(pidns)}
        assert init in members
        result = lifecycle.delete(cfg, "301")
        assert result.ok, result.summary()
        assert result.killed >= 1
        # Everything is dead at once (zombies only wait for a parent outside the job).
        assert [p for p, st in members.items() if alive(p, st)] == []
        assert attached.wait(10) != 0
    finally:
        if attached.poll() is None:
            attached.kill()
            attached.wait()
    assert not os.path.exists(node.job_dir("301"))


def test_pid1_dies_and_job_is_reported_broken_not_reused(node):
    """If PID 1 is killed behind jobns's back the namespace cannot take new tasks (the
    kernel refuses to fork into a PID namespace whose init is gone); exec says so and
    delete still cleans up."""
    cfg = _create(node)
    init = init_pid(node, "301")
    st = start_time(init)
    os.kill(init, 9)
    wait_until(lambda: not alive(init, st), 10, "PID 1 to die")
    r = node.cli("exec", "301", "--", "true")
    assert r.returncode != 0
    assert "PID 1" in r.stderr or "gone" in r.stderr, r.stderr
    listed = {j["job_id"]: j for j in lifecycle.list_jobs(cfg)}
    assert listed["301"]["state"] == "broken"
    assert lifecycle.delete(cfg, "301").ok
    assert not os.path.exists(node.job_dir("301"))


def test_signals_from_inside_do_not_kill_pid1(node):
    """Root inside the job may signal PID 1; the kernel drops signals whose action is the
    default, so only a signal PID 1 handles could hurt it. Python handles SIGINT by
    default (KeyboardInterrupt at the next wake-up, i.e. the next orphan): the reaper must
    not."""
    _create(node)
    init = init_pid(node, "301")
    st = start_time(init)
    _sh(node, "301", "for s in INT TERM HUP QUIT USR1 USR2 PIPE ALRM KILL; do kill -$s 1; done; "
        "(sleep 0.1 </dev/null >/dev/null 2>&1 &); sleep 0.3", user="root")
    pidns = ns_ino(init, "pid")
    wait_until(lambda: set(procs_in_pidns(pidns)) == {init}, 10, "the orphan to be reaped")
    assert alive(init, st)
    with open(f"/proc/{init}/status") as f:
        caught = int(next(ln for ln in f if ln.startswith("SigCgt:")).split()[1], 16)
    assert caught == 0, hex(caught)
    r = _sh(node, "301", "true")
    assert r.returncode == 0


def test_pid1_starts_when_jobns_itself_lives_under_a_private_dir(node):
    """jobns may be installed under a directory the job gets privately (a checkout or
    venv under /var/tmp, say): PID 1 must not need it inside the namespace."""
    import jobns
    pkg_dir = os.path.dirname(os.path.abspath(jobns.__file__))
    cfg = node.cfg(dirs=(pkg_dir,), clone_ns_flags=("CLONE_NEWPID", "CLONE_NEWNS"))
    lifecycle.create(cfg, job("880"))
    r = node.cli("exec", "880", "--", "sh", "-c",
                 f"tr '\\0' ' ' < /proc/1/cmdline; echo; ls -A {pkg_dir} | wc -l")
    assert r.returncode == 0, r.stderr
    title, count = r.stdout.splitlines()
    assert title.strip() == "jobns: [880.namespace]"
    assert count == "0"    # the package dir is the job's private (empty) one


def test_exec_works_when_the_interpreter_is_hidden_in_the_job(node):
    """`jobns exec` joins the job's mounts and then still runs Python code (the PATH
    search): nothing it needs may be imported after the join, because the interpreter's
    library may be hidden inside the job. (With a PID namespace the base interpreter must
    stay visible anyway: PID 1 runs on it.)"""
    import sysconfig
    stdlib = sysconfig.get_paths()["stdlib"]
    for flags, jid in ((("CLONE_NEWNS",), "890"),):
        cfg = node.cfg(dirs=(stdlib,), clone_ns_flags=flags)
        node.write_config(f"defaults:\n  base_path: {node.base}\n  dirs: {stdlib}\n"
                          f"  clone_ns_flags: [{', '.join(flags)}]\n")
        lifecycle.create(cfg, job(jid))
        r = node.cli("exec", jid, "--", "sh", "-c", f"ls -A {stdlib} | wc -l; exit 3")
        assert r.returncode == 3, r.stderr
        assert r.stdout.strip() == "0"
        r = node.cli("exec", jid, "--", "sh", "-c", "kill -TERM $$")
        assert r.returncode == -15, r.stderr


def test_pid1_start_failure_names_the_cause(node, monkeypatch):
    """When PID 1's interpreter cannot start, create fails at step init with the
    interpreter's own message, and leaves nothing behind."""
    import sys

    import pytest

    from jobns.errors import OperationError
    monkeypatch.setattr(sys, "_base_executable", "/nonexistent/python3", raising=False)
    cfg = node.cfg(clone_ns_flags=("CLONE_NEWPID", "CLONE_NEWNS"))
    with pytest.raises(OperationError) as exc:
        lifecycle.create(cfg, job("892"))
    assert exc.value.step == "init"
    assert "No such file or directory" in str(exc.value), str(exc.value)
    assert node.leftovers() == []


def test_pid1_interpreter_error_output_reaches_the_error(node, monkeypatch):
    import sys

    import pytest

    from jobns.errors import OperationError
    fake = os.path.join(os.path.dirname(node.base), "fakepython")
    with open(fake, "w") as f:
        f.write("#!/bin/sh\necho 'Fatal Python error: fake start-up failure' >&2\nexit 1\n")
    os.chmod(fake, 0o755)
    monkeypatch.setattr(sys, "_base_executable", fake, raising=False)
    cfg = node.cfg(clone_ns_flags=("CLONE_NEWPID", "CLONE_NEWNS"))
    with pytest.raises(OperationError) as exc:
        lifecycle.create(cfg, job("893"))
    assert "Fatal Python error: fake start-up failure" in str(exc.value)
    assert node.leftovers() == []
