"""Site hook scripts driven by create/delete on the real kernel (spec §2.8).

Each script records its own environment block (/proc/$$/environ, exactly what it was
exec'd with) and a few facts about how it was run; the tests compare them with the
documented environment and semantics. The hook runner's own unit tests live in
tests/unit/test_hooks.py; these check the integration: when each hook runs, with which
job variables, in which namespaces, and what its failure does to the job.
"""

from __future__ import annotations

import os
import time

import pytest

from jobns import lifecycle
from jobns.errors import OperationError

from nshelp import (JOB_GID, JOB_UID, MNT, PID, USER, alive, assert_nothing_left, job, ns_link,
                    read_env_file, read_facts, start_time, wait_until, write_script)

SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
FULL_ENV = {
    "SLURM_CONF": "/etc/slurm/slurm.conf",
    "SLURM_JOB_WORK_DIR": "/home/jobowner/run",
    "SLURM_JOB_MEM": "2048",
    "SLURM_NODE_ALIASES": "n1:10.0.0.1:n1",
    "SLURM_HET_JOB_ID": "500",
    "NOT_A_HOOK_VARIABLE": "must not reach any script",
}

# What every script records. $J comes from the job id and base path baked in below.
COMMON = r"""
out={out}
cat /proc/$$/environ > "$out/{hook}.env"
o=$(readlink /proc/$$/fd/1); e=$(readlink /proc/$$/fd/2)
{{
  echo "stdout=$o"
  echo "stderr=$e"
  echo "uid=$(id -u)"
  echo "mnt=$(readlink /proc/$$/ns/mnt)"
  echo "pid=$(readlink /proc/$$/ns/pid)"
  echo "user=$(readlink /proc/$$/ns/user)"
  echo "stdin=$(readlink /proc/$$/fd/0)"
  echo "pgid=$(cut -d' ' -f5 /proc/$$/stat)"
  echo "self=$$"
  echo "cwd=$(pwd)"
}} > "$out/{hook}.facts"
ls -l /proc/$$/fd > "$out/{hook}.fds"
echo "{hook}" >> "$out/order"
echo "output of {hook} to stdout"
echo "output of {hook} to stderr" >&2
"""

EXTRA = {
    "init_script": r"""
        { echo "pinned=$(mountpoint -q "$J/.ns/mnt" && echo yes || echo no)"
          echo "src_tmp=$([ -d "$SLURM_JOB_MOUNTPOINT_SRC/_tmp" ] && echo yes || echo no)"
        } >> "$out/init_script.facts"
        echo from-init > "$SLURM_JOB_MOUNTPOINT_SRC/_tmp/marker"
        """,
    "user_ns_script": r"""
        echo "nsuser=$(readlink /proc/$SLURM_NS_PID/ns/user)" >> "$out/user_ns_script.facts"
        echo '0 0 4294967295' > /proc/$SLURM_NS_PID/uid_map || exit 1
        echo '0 0 4294967295' > /proc/$SLURM_NS_PID/gid_map || exit 1
        """,
    "clone_ns_script": r"""
        { echo "seen=$(nsenter --mount="$SLURM_NS" cat /tmp/marker)"
          echo "pid1=$(cat "$SLURM_NS_DIR/pid1")"
        } >> "$out/clone_ns_script.facts"
        """,
    "clone_ns_epilog": r"""
        p1=$(cat "$SLURM_NS_DIR/pid1")
        { echo "seen=$(nsenter --mount="$SLURM_NS" cat /tmp/marker)"
          echo "pinned=$(mountpoint -q "$SLURM_NS" && echo yes || echo no)"
          echo "pid1_state=$(cut -d' ' -f3 /proc/$p1/stat 2>/dev/null || echo gone)"
        } >> "$out/clone_ns_epilog.facts"
        """,
}


def _scripts(node, job_id: str, hooks=tuple(EXTRA)) -> tuple[str, dict]:
    top = os.path.dirname(node.base)
    out = os.path.join(top, "hook-out")
    os.makedirs(out, exist_ok=True)
    paths = {}
    for hook in hooks:
        body = f"J={node.job_dir(job_id)}\n" + COMMON.format(out=out, hook=hook) + EXTRA[hook]
        paths[hook] = write_script(os.path.join(top, f"{hook}.sh"), body)
    return out, paths


def _expected(node, job_id: str, hook: str, job_env: dict, ns_pid: str | None = None) -> dict:
    j = node.job_dir(job_id)
    env = {"SLURM_JOB_ID": job_id, "SLURMD_NODENAME": "testnode", "PATH": SAFE_PATH,
           "JOBNS_HOOK": hook}
    if job_env.get("SLURM_CONF"):
        env["SLURM_CONF"] = job_env["SLURM_CONF"]
    if hook in ("init_script", "clone_ns_script"):
        env["SLURM_JOB_MOUNTPOINT_SRC"] = f"{j}/.{job_id}"
    if hook != "clone_ns_epilog":
        env.update(SLURM_JOB_UID=str(JOB_UID), SLURM_JOB_GID=str(JOB_GID),
                   SLURM_JOB_USER="jobowner")
        for key in ("SLURM_HET_JOB_ID", "SLURM_NODE_ALIASES", "SLURM_JOB_WORK_DIR",
                    "SLURM_JOB_MEM"):
            if job_env.get(key) not in (None, "", "0"):
                env[key] = job_env[key]
    if hook in ("clone_ns_script", "clone_ns_epilog"):
        env["SLURM_NS"] = f"{j}/.ns/mnt"          # the pin, in the epilog too (Slurm: the dir)
        env["SLURM_NS_DIR"] = f"{j}/.ns"
    if hook == "user_ns_script":
        env["SLURM_NS_PID"] = ns_pid
    return env


@pytest.mark.parametrize("job_env", [FULL_ENV, {"SLURM_JOB_MEM": "0"}], ids=["full", "minimal"])
def test_every_script_gets_exactly_its_environment(node, monkeypatch, job_env):
    monkeypatch.setenv("LEAK_CHECK", "the caller's environment must not leak")
    out, scripts = _scripts(node, "501")
    cfg = node.cfg(clone_ns_flags=(PID, USER, MNT), init_script=scripts["init_script"],
                   user_ns_script=scripts["user_ns_script"],
                   clone_ns_script=scripts["clone_ns_script"],
                   clone_ns_epilog=scripts["clone_ns_epilog"])
    logged = []

    def log(level, msg):
        logged.append((level, msg))

    lifecycle.create(cfg, job("501", dict(job_env)), log=log)
    init = int(open(os.path.join(node.job_dir("501"), ".ns", "pid1")).read())
    job_user_ns = ns_link(init, "user")
    assert lifecycle.delete(cfg, "501", log=log).ok

    with open(os.path.join(out, "order")) as f:
        assert f.read().split() == ["init_script", "user_ns_script", "clone_ns_script",
                                    "clone_ns_epilog"]
    facts = {h: read_facts(os.path.join(out, f"{h}.facts")) for h in EXTRA}
    for hook in EXTRA:
        env = read_env_file(os.path.join(out, f"{hook}.env"))
        ns_pid = env.get("SLURM_NS_PID") if hook == "user_ns_script" else None
        assert env == _expected(node, "501", hook, job_env, ns_pid), hook
        f = facts[hook]
        # root, in the root namespaces, stdin /dev/null, own process group, cwd /,
        # nothing but stdin/stdout/stderr open.
        assert f["uid"] == "0", hook
        assert (f["mnt"], f["pid"], f["user"]) == (ns_link("self", "mnt"), ns_link("self", "pid"),
                                                   ns_link("self", "user")), hook
        assert f["stdin"] == "/dev/null", hook
        assert f["pgid"] == f["self"], hook
        assert f["cwd"] == "/", hook
        # no descriptor of jobns leaks into the script (lock file, record, pipes of the
        # namespace process, base_path): only the shell's own (script, redirections).
        with open(os.path.join(out, f"{hook}.fds")) as fh:
            fds = dict(line.split()[-3::2] for line in fh if " -> " in line)
        assert fds["0"] == "/dev/null", (hook, fds)
        assert f["stdout"].startswith("pipe:") and f["stderr"] == f["stdout"], f
        for num, target in fds.items():
            assert target in (scripts[hook], "/dev/null", f["stdout"]) or \
                target.startswith(out + "/"), (hook, num, target)
        # the output went to the log (both streams)
        text = "\n".join(m for _, m in logged)
        assert f"output of {hook} to stdout" in text and f"output of {hook} to stderr" in text

    # When each ran: init before the namespace exists (job dirs ready), user_ns_script
    # while the namespace process waits in the job's user namespace, clone_ns_script with
    # the namespace ready, the epilog with PID 1 already dead but the pin still mounted.
    assert facts["init_script"]["pinned"] == "no"
    assert facts["init_script"]["src_tmp"] == "yes"
    assert facts["user_ns_script"]["nsuser"] == job_user_ns
    assert int(facts["user_ns_script"]["self"]) != int(
        read_env_file(os.path.join(out, "user_ns_script.env"))["SLURM_NS_PID"])
    assert facts["clone_ns_script"]["seen"] == "from-init"
    assert facts["clone_ns_script"]["pid1"] == str(init)
    assert facts["clone_ns_epilog"]["seen"] == "from-init"    # SLURM_NS usable in the epilog
    assert facts["clone_ns_epilog"]["pinned"] == "yes"
    assert facts["clone_ns_epilog"]["pid1_state"] in ("Z", "gone")
    assert_nothing_left(node, "501")


FAILING = {
    "init_script": "init-script",
    "user_ns_script": "user-ns-script",
    "clone_ns_script": "clone-ns-script",
}


@pytest.mark.parametrize("hook", list(FAILING))
def test_failing_script_fails_create_and_leaves_nothing(node, hook):
    top = os.path.dirname(node.base)
    seen = os.path.join(top, "seen")
    script = write_script(os.path.join(top, "fail.sh"), f"""
        cat "$SLURM_NS_DIR/pid1" > {seen} 2>/dev/null
        echo "{hook} refuses this job" >&2
        exit 3
        """)
    cfg = node.cfg(clone_ns_flags=(PID, USER, MNT), **{hook: script})
    with pytest.raises(OperationError) as info:
        lifecycle.create(cfg, job("502"))
    assert info.value.step == FAILING[hook]
    assert "exit status 3" in str(info.value)
    assert f"{hook} refuses this job" in str(info.value)
    assert_nothing_left(node, "502")
    if hook == "clone_ns_script":
        # PID 1 had started; the undo killed it with everything in its namespace.
        init = int(open(seen).read())
        wait_until(lambda: not alive(init), 5, "PID 1 of the failed job to die")
    # the job id is free again at once
    lifecycle.create(node.cfg(clone_ns_flags=(PID, USER, MNT)), job("502"))


def _slow_script(path: str, out: str) -> str:
    """Sleeps past any wait; leaves a grandchild that ignores SIGTERM and keeps the
    output pipe open, so only a SIGKILL to the whole group ends it."""
    return write_script(path, f"""
        echo $$ > {out}/script.pid
        sh -c 'trap "" TERM HUP; exec sleep 1000' &
        echo $! > {out}/grandchild.pid
        sleep 1000
        """)


def _pids(out: str) -> list[tuple[int, str]]:
    pids = []
    for name in ("script.pid", "grandchild.pid"):
        pid = int(open(os.path.join(out, name)).read())
        pids.append((pid, start_time(pid)))
    return pids


def test_clone_ns_script_past_its_wait_is_killed_with_its_children(node):
    top = os.path.dirname(node.base)
    script = _slow_script(os.path.join(top, "slow.sh"), top)
    cfg = node.cfg(clone_ns_flags=(PID, MNT), clone_ns_script=script, clone_ns_script_wait=1)
    t0 = time.monotonic()
    with pytest.raises(OperationError) as info:
        lifecycle.create(cfg, job("503"))
    took = time.monotonic() - t0
    assert info.value.step == "clone-ns-script"
    assert "timed out" in str(info.value)
    assert 1.0 <= took < 1.0 + 30.0, took   # the script sleeps 1000 s
    for pid, st in _pids(top):
        assert not alive(pid, st), pid        # the script and the TERM-proof grandchild
    assert_nothing_left(node, "503")


def test_epilog_past_its_wait_is_killed_and_delete_still_succeeds(node):
    top = os.path.dirname(node.base)
    script = _slow_script(os.path.join(top, "slow-epilog.sh"), top)
    cfg = node.cfg(clone_ns_flags=(PID, MNT), clone_ns_epilog=script, clone_ns_epilog_wait=1)
    lifecycle.create(cfg, job("504"))
    logged = []
    t0 = time.monotonic()
    result = lifecycle.delete(cfg, "504", log=lambda lvl, msg: logged.append((lvl, msg)))
    took = time.monotonic() - t0
    assert result.ok, result.summary()
    assert 1.0 <= took < 1.0 + 30.0, took   # the script sleeps 1000 s
    assert any(lvl == "warning" and "clone_ns_epilog" in msg and "timed out" in msg
               for lvl, msg in logged), logged
    for pid, st in _pids(top):
        assert not alive(pid, st), pid
    assert_nothing_left(node, "504")


def test_failing_epilog_is_only_logged(node):
    top = os.path.dirname(node.base)
    script = write_script(os.path.join(top, "bad-epilog.sh"), "echo 'epilog trouble'\nexit 9\n")
    cfg = node.cfg(clone_ns_epilog=script)
    lifecycle.create(cfg, job("505"))
    logged = []
    result = lifecycle.delete(cfg, "505", log=lambda lvl, msg: logged.append((lvl, msg)))
    assert result.ok
    assert any(lvl == "warning" and "clone_ns_epilog" in msg for lvl, msg in logged), logged
    assert any("epilog trouble" in msg for _, msg in logged), logged
    assert_nothing_left(node, "505")
