"""Core lifecycle against the real kernel: isolation, layout, delete, failures, restore."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess

import pytest

from kernelhelp import mounts_under
from jobns import kernel, lifecycle
from jobns.errors import OperationError
from jobns.job import Job
from jobns.plan import build_plan

NOBODY = pwd.getpwnam("nobody")
DAEMON = pwd.getpwnam("daemon")


def job(job_id: str, pw=NOBODY, **env) -> Job:
    return Job(job_id=job_id, uid=pw.pw_uid, gid=pw.pw_gid, user=pw.pw_name, env=env)


def run_in(node, job_id: str, script: str, user: str | None = None) -> subprocess.CompletedProcess:
    args = ["exec", job_id]
    if user:
        args += ["--user", user]
    return node.cli(*args, "--", "sh", "-c", script)


def test_two_users_cannot_see_each_others_tmp_or_shm(node):
    cfg = node.cfg()
    lifecycle.create(cfg, job("101", NOBODY))
    lifecycle.create(cfg, job("102", DAEMON))
    for jid in ("101", "102"):
        r = run_in(node, jid, f"echo {jid} > /tmp/mine && echo {jid} > /dev/shm/mine")
        assert r.returncode == 0, r.stderr
    for jid in ("101", "102"):
        r = run_in(node, jid, "cat /tmp/mine /dev/shm/mine; ls -A /tmp /dev/shm")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [jid, jid, "/dev/shm:", "mine", "/tmp:", "mine"]
    # the host sees neither
    assert not os.path.exists("/tmp/mine") and not os.path.exists("/dev/shm/mine")
    # each job's /tmp is its own backing dir; /dev/shm has no host path at all
    with open(os.path.join(node.base, "101", ".101", "_tmp", "mine")) as f:
        assert f.read() == "101\n"


def test_layout_modes_and_owners(node):
    cfg = node.cfg(dirs=("/tmp", "/var/tmp", "/dev/shm"))
    lifecycle.create(cfg, job("7", NOBODY))
    jd = node.job_dir("7")
    expect = {
        jd: (0o700, 0, 0), f"{jd}/.ns": (0o700, 0, 0),
        f"{jd}/.7": (0o700, NOBODY.pw_uid, 0), f"{jd}/.7/_tmp": (0o700, NOBODY.pw_uid, 0),
        f"{jd}/.7/_var_tmp": (0o700, NOBODY.pw_uid, 0),
    }
    for path, (mode, uid, gid) in expect.items():
        st = os.lstat(path)
        assert stat.S_ISDIR(st.st_mode), path
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, uid, gid), path
    assert not os.path.exists(f"{jd}/.7/_dev_shm")
    assert lifecycle.pin_inode(f"{jd}/.ns/mnt") is not None
    assert os.readlink(os.path.join(node.runtime, "jobs", "7")) == jd
    # inside: /tmp and /var/tmp are the user's 0700 dirs, /dev/shm a fresh 1777 tmpfs
    r = run_in(node, "7", "stat -c '%a %U %n' /tmp /var/tmp /dev/shm; "
                          "findmnt -n -o FSTYPE,OPTIONS /dev/shm; id -u")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["700 nobody /tmp", "700 nobody /var/tmp", "1777 root /dev/shm"]
    fstype, opts = lines[3].split()
    assert fstype == "tmpfs" and "nosuid" in opts and "nodev" in opts
    assert lines[4] == str(NOBODY.pw_uid)
    # the base path is hidden inside the job
    r = run_in(node, "7", f"ls -A {node.base} | wc -l")
    assert r.stdout.strip() == "0"


def test_delete_removes_everything_and_unmounts(node):
    cfg = node.cfg()
    lifecycle.create(cfg, job("55", NOBODY))
    r = run_in(node, "55", "mkdir -p /tmp/a/b && for i in 1 2 3; do echo $i > /tmp/a/b/f$i; "
                           "done; echo x > /dev/shm/s")
    assert r.returncode == 0, r.stderr
    assert mounts_under(node.job_dir("55"))
    r = node.cli("delete", "55")
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(node.job_dir("55"))
    assert mounts_under(node.base) == [node.base]
    assert node.leftovers() == []
    assert not os.path.lexists(os.path.join(node.runtime, "jobs", "55"))
    assert not os.path.lexists(os.path.join(node.runtime, "lock", "55"))
    # deleting again is a no-op with a message
    r = node.cli("delete", "55")
    assert r.returncode == 0 and "nothing to delete" in r.stderr


def test_create_existing_job_is_an_error_and_keeps_it(node):
    cfg = node.cfg()
    lifecycle.create(cfg, job("9", NOBODY))
    run_in(node, "9", "echo keep > /tmp/k")
    r = node.cli("create", "9", "--user", "daemon")
    assert r.returncode == 1
    assert "already exists" in r.stderr and "mkdir-job" in r.stderr
    assert run_in(node, "9", "cat /tmp/k").stdout == "keep\n"


def test_recreate_after_namespace_lost_cleans_stale_job(node):
    cfg = node.cfg()
    lifecycle.create(cfg, job("10", NOBODY))
    run_in(node, "10", "echo old > /tmp/old")
    kernel.umount2(os.path.join(node.job_dir("10"), ".ns", "mnt"), kernel.MNT_DETACH)
    assert lifecycle.list_jobs(cfg)[0]["state"] == "lost"
    r = node.cli("create", "10", "--user", "daemon")
    assert r.returncode == 0, r.stderr
    assert "stale" in r.stderr
    r = run_in(node, "10", "ls -A /tmp; id -un")
    assert r.stdout.split() == ["daemon"]


@pytest.mark.parametrize("flags", [("CLONE_NEWNS",),
                                   ("CLONE_NEWPID", "CLONE_NEWUSER", "CLONE_NEWNS")],
                         ids=["mnt", "pid+user+mnt"])
def test_failure_at_every_step_leaves_nothing(node, monkeypatch, flags, tmp_path):
    script = tmp_path / "hook.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    cfg = node.cfg(dirs=("/tmp", "/var/tmp", "/dev/shm"), clone_ns_flags=flags,
                   init_script=str(script), clone_ns_script=str(script))
    lifecycle.ensure_base(cfg)
    steps = [s.name for s in build_plan(cfg, job("31")).steps]
    assert {"mkdir-job", "pin-mnt", "bind:/tmp", "tmpfs:/dev/shm", "hide-base",
            "record", "index", "clone-ns-script"} <= set(steps)
    before_mounts = sorted(mounts_under(node.base))
    procs_before = _procs_titled("jobns: [31.namespace]")
    for name in steps:
        monkeypatch.setenv(lifecycle.FAIL_ENV, name)
        with pytest.raises(OperationError) as exc:
            lifecycle.create(cfg, job("31"))
        assert exc.value.step == name, (name, str(exc.value))
        assert "injected failure" in str(exc.value)
        assert node.leftovers() == [], name
        assert sorted(mounts_under(node.base)) == before_mounts, name
        assert not os.path.lexists(os.path.join(node.runtime, "jobs", "31")), name
        assert _procs_titled("jobns: [31.namespace]") == procs_before, name
    monkeypatch.delenv(lifecycle.FAIL_ENV)
    lifecycle.create(cfg, job("31"))
    assert lifecycle.list_jobs(cfg)[0]["state"] == "ready"


def _procs_titled(title: str) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[0].decode(errors="replace") == title:
                        out.append(int(p))
            except OSError:
                pass
    return out


def test_real_failure_names_step_and_path(node):
    cfg = node.cfg(dirs=("/tmp", "/nonexistent-jobns-dir"))
    with pytest.raises(OperationError) as exc:
        lifecycle.create(cfg, job("12"))
    err = exc.value
    assert err.step == "bind:/nonexistent-jobns-dir"
    assert err.path == "/nonexistent-jobns-dir"
    assert "ENOENT" in str(err)
    assert node.leftovers() == []
    assert mounts_under(node.base) == [node.base]


def test_exec_status_cwd_env_and_groups(node, tmp_path):
    lifecycle.create(node.cfg(), job("13", DAEMON))
    workdir = os.path.join(os.path.dirname(node.base), "work")   # not under a private dir
    os.mkdir(workdir, 0o755)
    r = subprocess.run([os.path.join(os.path.dirname(os.sys.executable), "jobns"), "exec", "13",
                        "--", "sh", "-c", "pwd; echo $JOBNS_TEST_VAR; id -G; exit 7"],
                       capture_output=True, text=True, cwd=workdir,
                       env=node.env(JOBNS_TEST_VAR="kept"))
    assert r.returncode == 7, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == workdir
    assert out[1] == "kept"
    assert sorted(map(int, out[2].split())) == sorted(
        set(os.getgrouplist("daemon", DAEMON.pw_gid)))
    # a cwd under the host's /tmp does not exist in the job's /tmp: it starts in its home
    r = subprocess.run([os.path.join(os.path.dirname(os.sys.executable), "jobns"), "exec", "13",
                        "--", "pwd"], capture_output=True, text=True, cwd=tmp_path,
                       env=node.env())
    assert r.stdout == DAEMON.pw_dir + "\n", r.stderr
    # killed by a signal: jobns ends the same way
    r = node.cli("exec", "13", "--", "sh", "-c", "kill -TERM $$")
    assert r.returncode == -15
    # --user overrides the job user; a missing command is a usage error
    assert node.cli("exec", "13", "--user", "nobody", "--", "id", "-un").stdout == "nobody\n"
    assert node.cli("exec", "13", "--", "/nonexistent/cmd").returncode == 127
    assert node.cli("exec", "13").returncode == 2


def test_run_one_shot(node):
    r = node.cli("run", "--user", "nobody", "--job", "77", "--", "sh", "-c",
                 "echo hi > /tmp/f; cat /tmp/f; id -un; exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout == "hi\nnobody\n"
    assert "created namespace" in r.stderr and "deleted" in r.stderr
    assert node.leftovers() == []
    r = node.cli("run", "--", "true")
    assert r.returncode == 0, r.stderr
    assert node.leftovers() == []


def test_restore_removes_dead_jobs_keeps_live(node):
    cfg = node.cfg()
    for jid in ("1", "2", "3"):
        lifecycle.create(cfg, job(jid))
    os.makedirs(os.path.join(node.base, "not-a-job!"))
    # a half-created job (crash between mkdir and pin) and trash left by an earlier crash
    os.makedirs(os.path.join(node.job_dir("4"), ".ns"))
    os.makedirs(os.path.join(node.base, lifecycle.TRASH, "5.123", "x"))
    r = node.cli("restore", "--live", "2, 3")
    assert r.returncode == 0, r.stderr
    names = sorted(os.listdir(node.base))
    assert names == ["2", "3", "not-a-job!"]
    assert "kept 2 live jobs, removed 2" in r.stderr
    assert run_in(node, "2", "true").returncode == 0
    # with nothing to tell live jobs from dead ones, restore keeps those whose namespace
    # is alive and says how to decide; --all-dead removes them
    r = node.cli("restore")
    assert sorted(os.listdir(node.base)) == ["2", "3", "not-a-job!"]
    assert "--all-dead" in r.stderr, r.stderr
    assert node.cli("restore", "--all-dead").returncode == 0
    assert sorted(os.listdir(node.base)) == ["not-a-job!"]


def test_restore_keeps_running_standalone_job(node):
    p = subprocess.Popen([os.path.join(os.path.dirname(os.sys.executable), "jobns"), "run",
                          "--job", "run-keep", "--", "sleep", "30"],
                         env=node.env(), stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:
            if "created namespace" in line:
                break
        else:
            raise AssertionError("jobns run never reported its namespace")
        r = node.cli("restore")
        assert r.returncode == 0, r.stderr
        assert os.path.isdir(node.job_dir("run-keep"))
    finally:
        p.terminate()
        p.wait(timeout=30)
    assert node.leftovers() == []


def test_list_json_and_table(node):
    cfg = node.cfg()
    lifecycle.create(cfg, job("21", NOBODY))
    lifecycle.create(cfg, job("3", DAEMON))
    data = json.loads(node.cli("list", "--json", check=True).stdout)
    assert [j["job_id"] for j in data] == ["3", "21"]
    assert data[1]["user"] == "nobody" and data[1]["state"] == "ready"
    assert data[1]["dirs"] == ["/tmp", "/dev/shm"]
    table = node.cli("list", check=True).stdout.splitlines()
    assert table[0].split()[:3] == ["JOB", "USER", "STATE"]
    assert table[2].split()[:3] == ["21", "nobody", "ready"]


def test_bad_job_ids_and_users_are_usage_errors(node):
    for bad in ("../etc", "0", "01", "a/b", "-rf", "x" * 70, "1 2", ""):
        r = node.cli("create", bad, "--user", "nobody")
        assert r.returncode == 2, (bad, r.stderr)
        assert "job id" in r.stderr or "required: JOB" in r.stderr, (bad, r.stderr)
    r = node.cli("create", "5", "--user", "no-such-user-jobns")
    assert r.returncode == 2 and "unknown user" in r.stderr
    assert node.leftovers() == []


def test_config_show_json_keys(node):
    data = json.loads(node.cli("config", "show", "--json", check=True).stdout)
    for key in ("base_path", "auto_base_path", "dirs", "shared", "clone_ns_flags",
                "init_script", "clone_ns_script", "clone_ns_script_wait", "clone_ns_epilog",
                "clone_ns_epilog_wait", "user_ns_script"):
        assert key in data
    assert data["base_path"] == node.base and data["dirs"] == ["/tmp", "/dev/shm"]
    node.write_config("defaults:\n  base_path: none\n")
    data = json.loads(node.cli("config", "show", "--json", check=True).stdout)
    assert data["base_path"] is None


def test_base_path_writable_by_others_is_refused(node):
    os.makedirs(node.base, exist_ok=True)
    os.chmod(node.base, 0o777)
    r = node.cli("create", "5", "--user", "nobody")
    assert r.returncode == 1
    assert "ensure-base" in r.stderr and "not writable" in r.stderr
    os.chmod(node.base, 0o755)


def test_missing_base_without_auto_base_path(node):
    node.write_config(f"defaults:\n  base_path: {node.base}/deeper\n  auto_base_path: false\n")
    r = node.cli("create", "5", "--user", "nobody")
    assert r.returncode == 1
    assert "auto_base_path" in r.stderr and f"{node.base}/deeper" in r.stderr


def test_list_usage_measures_disk_and_tmpfs(node):
    cfg = node.cfg(dirs=("/tmp", "/var/tmp", "/dev/shm"))
    lifecycle.create(cfg, job("41", NOBODY))
    r = run_in(node, "41", "head -c 3000000 /dev/zero > /tmp/big; mkdir /tmp/d; touch /tmp/d/a "
                           "/tmp/d/b; ln -s /etc /tmp/etc; head -c 2000000 /dev/zero > "
                           "/dev/shm/s; touch /dev/shm/t")
    assert r.returncode == 0, r.stderr
    data = json.loads(node.cli("list", "--usage", "--json", check=True).stdout)
    usage = data[0]["usage"]
    assert usage["/tmp"]["kind"] == "disk"
    assert usage["/tmp"]["inodes"] == 5                      # big, d, d/a, d/b, etc
    assert 3_000_000 <= usage["/tmp"]["bytes"] < 3_200_000   # the symlink is not followed
    assert usage["/var/tmp"] == {"kind": "disk", "bytes": 0, "apparent_bytes": 0,
                                 "inodes": 0, "skipped_mounts": 0}
    shm = usage["/dev/shm"]
    assert shm["kind"] == "tmpfs" and 2_000_000 <= shm["bytes"] < 2_200_000
    assert shm["inodes"] >= 2
    table = node.cli("list", "--usage", check=True).stdout
    assert "/tmp=2.9M/5i" in table and "USAGE" in table


def test_base_path_made_shared_behind_our_back_is_repaired(node):
    """ensure_base remembers a verified base_path; if someone makes it shared later, the
    pin is refused (EINVAL) and create re-checks the mount table, makes it private again
    and succeeds."""
    cfg = node.cfg()
    lifecycle.create(cfg, job("71"))
    subprocess.run(["mount", "--make-shared", node.base], check=True)
    [m] = [m for m in kernel.mounts_at(node.base)]
    assert any(p.startswith("shared:") for p in m.propagation)
    logged = []
    lifecycle.create(cfg, job("72"), log=lambda lvl, msg: logged.append(msg))
    [m] = [m for m in kernel.mounts_at(node.base)]
    assert not m.propagation        # private again
    assert any("private (was shared:" in msg for msg in logged), logged
    assert run_in(node, "72", "echo ok").stdout == "ok\n"
    assert run_in(node, "71", "echo ok").stdout == "ok\n"


def test_list_tells_a_job_being_built_from_a_lost_one(node):
    cfg = node.cfg()
    lifecycle.ensure_base(cfg)
    os.makedirs(os.path.join(node.job_dir("81"), ".ns"))
    assert lifecycle.list_jobs(cfg)[0]["state"] == "lost"
    with lifecycle.job_lock("81"):          # what a create or delete in progress holds
        assert lifecycle.list_jobs(cfg)[0]["state"] == "busy"
    assert lifecycle.list_jobs(cfg)[0]["state"] == "lost"


def test_first_jobs_starting_together_make_one_private_base_mount(node):
    """base_path does not exist yet and several jobs start at once: it is created and
    made its own private mount once (no stacked self-binds), and each is said once."""
    cfg = node.cfg()
    go_r, go_w = os.pipe()
    said_r, said_w = os.pipe()
    kids = []
    for _ in range(8):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(go_w)
                os.read(go_r, 1)      # all start together
                lifecycle.ensure_base(
                    cfg, lambda lvl, msg: os.write(said_w, (msg + "\n").encode()))
                code = 0
            finally:
                os._exit(code)
        kids.append(pid)
    os.close(go_r)
    os.close(said_w)
    os.close(go_w)                    # EOF: go
    codes = [os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) for k in kids]
    with os.fdopen(said_r) as f:
        text = f.read()
    assert codes == [0] * 8, text
    assert [m for m in mounts_under(node.base) if m == node.base] == [node.base], text
    assert text.count(f"created base_path {node.base}") == 1, text
    assert text.count(f"made base_path {node.base} its own private mount") == 1, text
