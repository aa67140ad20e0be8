"""Tests for jobns.hooks: environment per hook, execution, timeouts, output, fds."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from jobns import hooks
from jobns.config.model import NodeConfig
from jobns.errors import OperationError
from jobns.hooks import (HOOK_CLONE_NS, HOOK_EPILOG, HOOK_INIT, HOOK_USER_NS, HookConfigError,
                         HookResult, hook_env, run_configured, run_hook)
from jobns.job import Job

JOB_DIR = "/var/lib/jobns/4242"
# Upper bounds on a hook's run time only show that a timeout fired at all (the scripts sleep
# 1000 s): a busy machine must never fail them, so they leave this much room.
SLACK = 30.0
SLURM_CONF = "/etc/slurm/slurm.conf"
FULL_JOB_ENV = {
    "SLURM_HET_JOB_ID": "4240",
    "SLURM_NODE_ALIASES": "n1:10.0.0.1:n1",
    "SLURM_JOB_WORK_DIR": "/home/alice/work dir",
    "SLURM_JOB_MEM": "2048",
    "SLURM_UNRELATED": "must not appear",
}
COMMON = {"SLURM_JOB_ID", "SLURM_CONF", "SLURMD_NODENAME", "PATH", "JOBNS_HOOK"}
OWNER = {"SLURM_JOB_UID", "SLURM_JOB_GID", "SLURM_JOB_USER"}
OPTIONAL = {"SLURM_HET_JOB_ID", "SLURM_NODE_ALIASES", "SLURM_JOB_WORK_DIR", "SLURM_JOB_MEM"}
EXPECTED_KEYS = {
    HOOK_INIT: COMMON | OWNER | OPTIONAL | {"SLURM_JOB_MOUNTPOINT_SRC"},
    HOOK_USER_NS: COMMON | OWNER | OPTIONAL | {"SLURM_NS_PID"},
    HOOK_CLONE_NS: COMMON | OWNER | OPTIONAL | {"SLURM_JOB_MOUNTPOINT_SRC", "SLURM_NS",
                                                 "SLURM_NS_DIR"},
    HOOK_EPILOG: COMMON | {"SLURM_NS", "SLURM_NS_DIR"},
}


def make_job(env=None) -> Job:
    return Job(job_id="4242", uid=1234, gid=5678, user="alice",
               env=dict(FULL_JOB_ENV if env is None else env))


def script(tmp_path: Path, body: str, name: str = "hook.sh", mode: int = 0o755) -> str:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(mode)
    return str(p)


def read_environ(path: Path) -> dict[str, str]:
    raw = path.read_bytes()
    items = [x for x in raw.split(b"\0") if x]
    return dict(x.decode().split("=", 1) for x in items)


def pid_dead(pid: int) -> bool:
    """Gone, or a zombie waiting for its (new) parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def wait_dead(pids, limit=2.0) -> list[int]:
    end = time.monotonic() + limit
    alive = list(pids)
    while alive and time.monotonic() < end:
        alive = [p for p in alive if not pid_dead(p)]
        if alive:
            time.sleep(0.01)
    return alive


def kill_quietly(pids):
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- environment


@pytest.mark.parametrize("hook", [HOOK_INIT, HOOK_USER_NS, HOOK_CLONE_NS, HOOK_EPILOG])
def test_each_hook_gets_exactly_its_environment(tmp_path, monkeypatch, hook):
    monkeypatch.setenv("JOBNS_TEST_LEAK", "1")
    monkeypatch.setenv("HOME", "/root")
    out = tmp_path / "environ"
    # /proc/$$/environ is what execve received, before the shell adds PWD and friends.
    path = script(tmp_path, f"/bin/cat /proc/$$/environ > {out}\n")
    cfg = NodeConfig(node_name="node07", **{hook: path})
    res = run_configured(hook, cfg, make_job(), job_dir=JOB_DIR + "/", slurm_conf=SLURM_CONF,
                         ns_pid=999)
    assert res is not None and res.ok, res
    env = read_environ(out)
    assert set(env) == EXPECTED_KEYS[hook]
    assert env["SLURM_JOB_ID"] == "4242"
    assert env["SLURM_CONF"] == SLURM_CONF
    assert env["SLURMD_NODENAME"] == "node07"
    assert env["PATH"] == "/usr/sbin:/usr/bin:/sbin:/bin"
    assert env["JOBNS_HOOK"] == hook
    if hook != HOOK_EPILOG:
        assert (env["SLURM_JOB_UID"], env["SLURM_JOB_GID"], env["SLURM_JOB_USER"]) == \
            ("1234", "5678", "alice")
        for key in OPTIONAL:
            assert env[key] == FULL_JOB_ENV[key]
    if "SLURM_JOB_MOUNTPOINT_SRC" in env:
        assert env["SLURM_JOB_MOUNTPOINT_SRC"] == "/var/lib/jobns/4242/.4242"
    if "SLURM_NS" in env:
        # Both clone_ns hooks get the mount pin (Slurm's epilog would get the directory).
        assert env["SLURM_NS"] == "/var/lib/jobns/4242/.ns/mnt"
        assert env["SLURM_NS_DIR"] == "/var/lib/jobns/4242/.ns"
    if hook == HOOK_USER_NS:
        assert env["SLURM_NS_PID"] == "999"


@pytest.mark.parametrize("hook", [HOOK_INIT, HOOK_USER_NS, HOOK_CLONE_NS, HOOK_EPILOG])
def test_optional_variables_left_out_when_absent(hook):
    cfg = NodeConfig(node_name="n1")
    env = hook_env(hook, cfg, make_job(env={"SLURM_JOB_MEM": "0", "SLURM_NODE_ALIASES": ""}),
                   job_dir=JOB_DIR, slurm_conf=None, ns_pid=7)
    assert set(env) == (EXPECTED_KEYS[hook] - OPTIONAL - {"SLURM_CONF"})


def test_hook_env_rejects_unknown_hook_and_missing_ns_pid():
    cfg = NodeConfig(node_name="n1")
    with pytest.raises(ValueError):
        hook_env("prolog", cfg, make_job(), job_dir=JOB_DIR, slurm_conf=None)
    with pytest.raises(ValueError, match="ns_pid"):
        hook_env(HOOK_USER_NS, cfg, make_job(), job_dir=JOB_DIR, slurm_conf=None)


# ---------------------------------------------------------------- status


def test_success_is_ok(tmp_path):
    res = run_hook(HOOK_INIT, script(tmp_path, "exit 0\n"), {}, 5)
    assert res.ok and res.status == 0 and res.signal is None and not res.timed_out
    assert res.hook == HOOK_INIT and res.wait == 5


def test_nonzero_exit_is_failure(tmp_path):
    path = script(tmp_path, "echo bad thing >&2\nexit 3\n")
    res = run_hook(HOOK_CLONE_NS, path, {}, 5)
    assert not res.ok
    assert res.status == 3 and res.signal is None and not res.timed_out
    err = res.as_error()
    assert isinstance(err, OperationError)
    assert "exit status 3" in str(err) and path in str(err) and "bad thing" in str(err)


def test_killed_by_signal_is_failure(tmp_path):
    res = run_hook(HOOK_INIT, script(tmp_path, "kill -KILL $$\n"), {}, 5)
    assert not res.ok
    assert res.status is None and res.signal == signal.SIGKILL and not res.timed_out
    assert "SIGKILL" in res.describe()


def test_timeout_kills_script_and_its_children(tmp_path):
    pids = tmp_path / "pids"
    path = script(tmp_path, f"""echo $$ >> {pids}
/bin/sleep 1000 & echo $! >> {pids}
/bin/sleep 1000 & echo $! >> {pids}
/bin/sh -c '/bin/sleep 1000 & echo $! >> {pids}; /bin/sleep 1000' & echo $! >> {pids}
/bin/sleep 1000
""")
    t0 = time.monotonic()
    res = run_hook(HOOK_CLONE_NS, path, {}, 0.5)
    elapsed = time.monotonic() - t0
    recorded = [int(x) for x in pids.read_text().split()]
    try:
        assert elapsed < 0.5 + SLACK
        assert res.timed_out and not res.ok
        assert res.signal == signal.SIGTERM
        assert len(recorded) == 5
        assert wait_dead(recorded) == []
    finally:
        kill_quietly(recorded)


def test_script_ignoring_sigterm_is_sigkilled(tmp_path):
    pids = tmp_path / "pids"
    path = script(tmp_path, f"""trap '' TERM
echo $$ >> {pids}
/bin/sleep 1000 & echo $! >> {pids}
while :; do /bin/sleep 0.05; done
""")
    t0 = time.monotonic()
    res = run_hook(HOOK_INIT, path, {}, 0.5)
    elapsed = time.monotonic() - t0
    recorded = [int(x) for x in pids.read_text().split()]
    try:
        assert elapsed < 0.5 + SLACK
        assert res.timed_out and not res.ok
        assert res.status is None and res.signal == signal.SIGKILL
        assert wait_dead(recorded) == []
    finally:
        kill_quietly(recorded)


def test_script_exiting_zero_after_sigterm_still_failed(tmp_path):
    path = script(tmp_path, "trap 'exit 0' TERM\nwhile :; do /bin/sleep 0.02; done\n")
    res = run_hook(HOOK_INIT, path, {}, 0.3)
    assert res.timed_out and not res.ok
    assert "timed out" in res.describe()


@pytest.mark.parametrize("timeout", [0, None, -1])
def test_zero_or_missing_timeout_means_default_not_forever(tmp_path, monkeypatch, timeout):
    monkeypatch.setattr(hooks, "_DEFAULT_TIMEOUT", 0.4)
    t0 = time.monotonic()
    res = run_hook(HOOK_EPILOG, script(tmp_path, "exec /bin/sleep 1000\n"), {}, timeout)
    assert res.timed_out and time.monotonic() - t0 < 0.4 + SLACK
    assert res.wait == 0.4


def test_real_default_timeout_is_ten_seconds():
    assert hooks._normalize_timeout(0) == 10.0
    assert hooks._normalize_timeout(None) == 10.0
    assert hooks._normalize_timeout(2.5) == 2.5


# ---------------------------------------------------------------- output


def test_stdout_and_stderr_captured_in_order(tmp_path):
    res = run_hook(HOOK_INIT, script(tmp_path, "echo one\necho two >&2\necho three\n"), {}, 5)
    assert res.output == "one\ntwo\nthree\n"
    assert not res.truncated


def test_output_truncated_over_cap_without_blocking_script(tmp_path):
    n = hooks.OUTPUT_CAP * 4
    path = script(tmp_path, f"/usr/bin/head -c {n} /dev/zero | /usr/bin/tr '\\0' a\n"
                  "echo done >&2\n")
    res = run_hook(HOOK_INIT, path, {}, 10)
    assert res.ok, res.describe()
    assert res.truncated
    assert res.output.startswith("a" * hooks.OUTPUT_CAP)
    assert "a" * (hooks.OUTPUT_CAP + 1) not in res.output
    assert f"kept the first {hooks.OUTPUT_CAP} of {n + 5} bytes" in res.output
    assert len(res.output) < hooks.OUTPUT_CAP + 200


@pytest.fixture
def stdin_with_data():
    """Our fd 0 is a pipe holding a line, so a script inheriting it would read that line."""
    saved = os.dup(0)
    r, w = os.pipe()
    os.write(w, b"from-caller-stdin\n")
    os.dup2(r, 0)
    os.close(r)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(w)


def test_stdin_is_dev_null(tmp_path, stdin_with_data):
    path = script(tmp_path, "if read line; then echo got:$line; else echo eof; fi\n"
                  "/bin/readlink /proc/$$/fd/0\n")
    res = run_hook(HOOK_INIT, path, {}, 5)
    assert res.ok and res.output == "eof\n/dev/null\n"


def test_no_fd_leaks_into_script(tmp_path):
    marker = tmp_path / "marker-fd-target"
    marker.write_text("x")
    fd = os.open(marker, os.O_RDONLY)
    os.set_inheritable(fd, True)
    try:
        # find(1) lists the shell's descriptors from outside, so the listing adds none.
        path = script(tmp_path, "/usr/bin/find /proc/$$/fd -mindepth 1 -printf '%f %l\\n'\n")
        res = run_hook(HOOK_INIT, path, {}, 5)
    finally:
        os.close(fd)
    assert res.ok
    lines = dict(line.split(" ", 1) for line in res.output.splitlines())
    assert str(marker) not in res.output
    fds = {int(k): v for k, v in lines.items()}
    assert fds.get(fd) != str(marker)
    assert fds[0] == "/dev/null"
    assert fds[1].startswith("pipe:") and fds[1] == fds[2]
    # Besides 0-2 only the shell's own descriptor for reading the script may be open.
    others = {n: v for n, v in fds.items() if n > 2}
    assert all(v == path for v in others.values()), others


def test_own_process_group(tmp_path):
    path = script(tmp_path, "echo $$ $(/usr/bin/cut -d' ' -f5,6 /proc/$$/stat)\n")
    res = run_hook(HOOK_INIT, path, {}, 5)
    pid, pgrp, sid = (int(x) for x in res.output.split())
    assert pgrp == pid != os.getpgrp()
    assert sid == os.getsid(0)  # same session: the caller's


def test_background_child_holding_output_does_not_hang(tmp_path):
    pidfile = tmp_path / "child"
    path = script(tmp_path, f"/bin/sleep 1000 & echo $! > {pidfile}\necho done\nexit 0\n")
    logs = []
    t0 = time.monotonic()
    res = run_hook(HOOK_CLONE_NS, path, {}, 2 * SLACK,
                   log=lambda lvl, msg: logs.append((lvl, msg)))
    elapsed = time.monotonic() - t0
    child = int(pidfile.read_text())
    try:
        assert elapsed < hooks.OUTPUT_GRACE + SLACK
        assert res.ok and res.output == "done\n"
        # Left running, as documented, and reported.
        assert not pid_dead(child)
        assert any(lvl == "warning" and "still hold its output" in msg for lvl, msg in logs)
    finally:
        kill_quietly([child])


def test_script_closing_output_early_is_still_waited_for(tmp_path):
    path = script(tmp_path, "echo start\nexec >/dev/null 2>&1\n/bin/sleep 0.4\nexit 4\n")
    res = run_hook(HOOK_INIT, path, {}, 5)
    assert res.status == 4 and res.output == "start\n" and not res.timed_out
    assert res.duration >= 0.4


def test_no_threads_started(tmp_path):
    assert threading.active_count() == 1
    run_hook(HOOK_INIT, script(tmp_path, "echo hi\n"), {}, 5)
    run_hook(HOOK_INIT, script(tmp_path, "exec /bin/sleep 5\n", name="slow.sh"), {}, 0.2)
    assert threading.active_count() == 1


def test_caller_environment_not_inherited(tmp_path, monkeypatch):
    monkeypatch.setenv("JOBNS_TEST_LEAK", "yes")
    out = tmp_path / "environ"
    res = run_hook(HOOK_INIT, script(tmp_path, f"/bin/cat /proc/$$/environ > {out}\n"),
                   {"A": "1"}, 5)
    assert res.ok and read_environ(out) == {"A": "1"}


# ---------------------------------------------------------------- configuration errors


def _assert_config_error(exc_info, hook, path):
    err = exc_info.value
    assert isinstance(err, OperationError) and isinstance(err, HookConfigError)
    assert err.status == 127 and err.path == path and err.hook == hook
    assert hook in str(err) and path in str(err) and "configuration error" in str(err)


def test_relative_path_is_config_error(tmp_path, monkeypatch):
    script(tmp_path, "exit 0\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OperationError) as ei:
        run_hook(HOOK_INIT, "hook.sh", {}, 5)
    _assert_config_error(ei, HOOK_INIT, "hook.sh")
    assert "absolute" in str(ei.value)


def test_missing_path_is_config_error(tmp_path):
    path = str(tmp_path / "nope.sh")
    with pytest.raises(OperationError) as ei:
        run_hook(HOOK_CLONE_NS, path, {}, 5)
    _assert_config_error(ei, HOOK_CLONE_NS, path)
    assert "ENOENT" in str(ei.value)


def test_non_executable_is_config_error(tmp_path):
    path = script(tmp_path, "exit 0\n", mode=0o644)
    with pytest.raises(OperationError) as ei:
        run_hook(HOOK_EPILOG, path, {}, 5)
    _assert_config_error(ei, HOOK_EPILOG, path)


def test_directory_is_config_error(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    with pytest.raises(HookConfigError) as ei:
        run_hook(HOOK_USER_NS, str(d), {}, 5)
    _assert_config_error(ei, HOOK_USER_NS, str(d))


def test_bad_interpreter_is_config_error(tmp_path):
    p = tmp_path / "bad.sh"
    p.write_text("#!/nonexistent/interpreter\nexit 0\n")
    p.chmod(0o755)
    with pytest.raises(HookConfigError) as ei:
        run_hook(HOOK_INIT, str(p), {}, 5)
    _assert_config_error(ei, HOOK_INIT, str(p))
    assert "interpreter" in str(ei.value)


# ---------------------------------------------------------------- run_configured, logging


def test_run_configured_returns_none_when_not_configured():
    cfg = NodeConfig(node_name="n1")
    for hook in (HOOK_INIT, HOOK_USER_NS, HOOK_CLONE_NS, HOOK_EPILOG):
        assert run_configured(hook, cfg, make_job(), job_dir=JOB_DIR, slurm_conf=None,
                              ns_pid=1) is None


def test_run_configured_waits(monkeypatch):
    seen = {}

    def fake(hook, path, env, timeout, *, log=None):
        seen[hook] = timeout
        return HookResult(hook, path, 0, None, False, "", 0.0)

    monkeypatch.setattr(hooks, "run_hook", fake)
    cfg = NodeConfig(node_name="n1", init_script="/a", user_ns_script="/b",
                     clone_ns_script="/c", clone_ns_script_wait=3,
                     clone_ns_epilog="/d", clone_ns_epilog_wait=7)
    for hook in (HOOK_INIT, HOOK_USER_NS, HOOK_CLONE_NS, HOOK_EPILOG):
        run_configured(hook, cfg, make_job(), job_dir=JOB_DIR, slurm_conf=None, ns_pid=1)
    assert seen == {HOOK_INIT: 10, HOOK_USER_NS: 10, HOOK_CLONE_NS: 3, HOOK_EPILOG: 7}


def test_run_configured_applies_clone_ns_wait_for_real(tmp_path):
    cfg = NodeConfig(node_name="n1", clone_ns_script=script(tmp_path, "exec /bin/sleep 1000\n"),
                     clone_ns_script_wait=1)
    t0 = time.monotonic()
    res = run_configured(HOOK_CLONE_NS, cfg, make_job(), job_dir=JOB_DIR, slurm_conf=None)
    assert res.timed_out and 1.0 <= time.monotonic() - t0 < 1.0 + SLACK


def test_logging_one_info_line_and_output_at_debug(tmp_path):
    logs = []
    path = script(tmp_path, "echo hello from hook\nexit 2\n")
    run_hook(HOOK_INIT, path, {}, 5, log=lambda lvl, msg: logs.append((lvl, msg)))
    infos = [m for lvl, m in logs if lvl == "info"]
    assert len(infos) == 1
    assert HOOK_INIT in infos[0] and path in infos[0] and "exit status 2" in infos[0]
    assert " s" in infos[0]
    debugs = [m for lvl, m in logs if lvl == "debug"]
    assert len(debugs) == 1 and "hello from hook" in debugs[0]


def test_ok_requires_no_timeout():
    assert HookResult("x", "/x", 0, None, False, "", 0.1).ok
    assert not HookResult("x", "/x", 0, None, True, "", 0.1).ok
    assert not HookResult("x", "/x", None, 15, False, "", 0.1).ok
    assert not HookResult("x", "/x", 1, None, False, "", 0.1).ok


def test_without_pidfd_the_polling_fallback_behaves_the_same(tmp_path, monkeypatch):
    def no_pidfd(pid, flags=0):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    res = run_hook(HOOK_INIT, script(tmp_path, "echo x\nexit 3\n"), {}, 5)
    assert res.status == 3 and res.output == "x\n"
    pidfile = tmp_path / "pids"
    path = script(tmp_path, f"/bin/sleep 1000 & echo $! > {pidfile}\nexec /bin/sleep 1000\n",
                  name="slow.sh")
    t0 = time.monotonic()
    res = run_hook(HOOK_INIT, path, {}, 0.3)
    child = int(pidfile.read_text())
    try:
        assert res.timed_out and res.signal == signal.SIGTERM
        assert time.monotonic() - t0 < 0.3 + SLACK
        assert wait_dead([child]) == []
    finally:
        kill_quietly([child])
    path = script(tmp_path, f"/bin/sleep 1000 & echo $! > {pidfile}\nexit 0\n", name="bg.sh")
    t0 = time.monotonic()
    res = run_hook(HOOK_INIT, path, {}, 2 * SLACK)
    child = int(pidfile.read_text())
    kill_quietly([child])
    assert res.ok and time.monotonic() - t0 < hooks.OUTPUT_GRACE + SLACK
