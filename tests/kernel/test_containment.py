"""Every process that descends from a job is gone when delete returns, however it
re-unshares (user, mount, PID namespaces), in both containment modes: the job's cgroup v2
group (cgroup.kill) and, where no cgroup2 hierarchy is writable, the scan for processes
that hold the job's mounts. Observed from the host."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from nshelp import alive, start_time, wait_until


def _cgroup2_writable() -> bool:
    from jobns import cgroup
    return cgroup.parent_dir() is not None


@pytest.fixture(params=["cgroup", "scan"])
def mode(request, monkeypatch):
    """Both containment modes: the job's cgroup v2 group, and (JOBNS_CGROUP=off, as on a
    node without a writable cgroup2 hierarchy) the scan for processes holding its mounts."""
    if request.param == "cgroup":
        monkeypatch.delenv("JOBNS_CGROUP", raising=False)
        if not _cgroup2_writable():
            pytest.skip("no writable cgroup2 hierarchy here")
    else:
        monkeypatch.setenv("JOBNS_CGROUP", "off")
    return request.param


@pytest.fixture
def cgroup_mode(monkeypatch):
    monkeypatch.delenv("JOBNS_CGROUP", raising=False)
    if not _cgroup2_writable():
        pytest.skip("no writable cgroup2 hierarchy here")


def _yaml(node, extra: str = "") -> None:
    node.write_config(f"defaults:\n  base_path: {node.base}\n  auto_base_path: true\n{extra}")


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.append(p)
            todo += _children(p)
    return seen


# ---------------------------------------------------------------- 1: escaped processes

_BG = ">/dev/null 2>&1 </dev/null & echo $!"
ESCAPES = {
    "unshare -Urm": "unshare -Urm sleep 1000 " + _BG,
    "unshare -Urmp --fork": "unshare -Urmp --fork sleep 1000 " + _BG,
    "setsid unshare -Urm (orphaned)": "setsid unshare -Urm sh -c 'sleep 1000 & sleep 1000' "
                                      + _BG,
}


def _userns_for_nobody() -> bool:
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "unshare", "-Urm", "true"], capture_output=True)
    return r.returncode == 0


def _escape(node, job_id: str, script: str, user: str | None = None) -> list[tuple[int, str]]:
    """Run `script` (which backgrounds the escaping command and prints its pid) in the
    job; the escaped processes, each with its start time."""
    r = node.cli("exec", job_id, *(["--user", user] if user else []), "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    top = int(r.stdout.split()[-1])
    if "fork" in script or "setsid" in script:
        wait_until(lambda: len(_tree(top)) >= 2, 10, "the escaped processes to fork")
    mnt = os.stat(os.path.join(node.job_dir(job_id), ".ns/mnt")).st_ino
    wait_until(lambda: all(_mnt_ns(p) != mnt for p in _tree(top)), 10,
               "the processes to leave the job's mount namespace")
    return [(p, start_time(p)) for p in _tree(top)]


def _mnt_ns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:     # gone (a short-lived child of the escaping shell)
        return None


@pytest.mark.parametrize("how", list(ESCAPES))
def test_processes_that_re_unshare_do_not_survive_delete(node, mode, how):
    if not _userns_for_nobody():
        pytest.skip("unprivileged user namespaces are disabled here")
    _yaml(node)
    node.cli("create", "11", "--user", "nobody", check=True)
    procs = _escape(node, "11", ESCAPES[how])
    try:
        r = node.cli("delete", "11")
        assert r.returncode == 0, r.stderr
        left = [p for p, st in procs if alive(p, st)]
        assert left == [], f"still running after delete: {left}"
    finally:
        for p, st in procs:
            if alive(p, st):
                os.kill(p, signal.SIGKILL)


def test_root_process_with_a_new_mount_namespace_does_not_survive_delete(node, mode):
    _yaml(node)
    node.cli("create", "12", "--user", "nobody", check=True)
    procs = _escape(node, "12", "unshare -m sleep 1000 " + _BG, user="root")
    try:
        assert node.cli("delete", "12").returncode == 0
        assert [p for p, st in procs if alive(p, st)] == []
    finally:
        for p, st in procs:
            if alive(p, st):
                os.kill(p, signal.SIGKILL)


def test_list_and_log_say_which_kill_mode_is_in_force(node, mode):
    _yaml(node)
    r = node.cli("create", "13", "--user", "nobody", check=True)
    [entry] = json.loads(node.cli("list", "--json", check=True).stdout)
    assert entry["containment"] == mode, entry
    assert f"containment {mode}" in r.stderr, r.stderr
    table = node.cli("list", check=True).stdout
    assert "CONTAINMENT" in table and mode in table.splitlines()[1]


def test_exec_and_pid1_run_in_the_jobs_cgroup(node, cgroup_mode):
    _yaml(node, "  clone_ns_flags: [CLONE_NEWPID, CLONE_NEWNS]\n")
    node.cli("create", "14", "--user", "nobody", check=True)
    [entry] = json.loads(node.cli("list", "--json", check=True).stdout)
    group = entry["cgroup"]
    assert group.endswith("/14") and "/jobns/" in group and os.path.isdir(group)
    pid1 = int(open(os.path.join(node.job_dir("14"), ".ns/pid1")).read())
    members = open(os.path.join(group, "cgroup.procs")).read().split()
    assert str(pid1) in members
    r = node.cli("exec", "14", "--", "sh", "-c", "cat /proc/self/cgroup")
    assert r.returncode == 0 and f"0::{group[len(__import__('jobns.cgroup').cgroup.parent_dir()):]}" in r.stdout, r.stdout
    assert node.cli("delete", "14").returncode == 0
    assert not os.path.exists(group)




def test_restore_removes_groups_of_jobs_that_are_gone(node, cgroup_mode):
    """A create killed half way can leave a job's group (with processes) but no job dir:
    the next restore kills and removes it; a live job's group stays."""
    _yaml(node)
    node.cli("create", "15", "--user", "nobody", check=True)
    [entry] = json.loads(node.cli("list", "--json", check=True).stdout)
    from jobns import cgroup
    orphan = os.path.join(os.path.dirname(entry["cgroup"]), "16")
    os.mkdir(orphan)
    p = subprocess.Popen(["sleep", "1000"])
    try:
        cgroup.enter(orphan, p.pid)
        assert node.cli("restore", "--live", "15").returncode == 0
        assert p.wait(timeout=60) == -signal.SIGKILL
        assert not os.path.exists(orphan)
        assert os.path.isdir(entry["cgroup"])
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_scan_finds_a_root_process_that_unmounted_the_jobs_dirs_in_a_user_ns_job(node, mode):
    """In a job with its own user namespace, root (of the job) may make a new mount
    namespace and unmount every private dir: it holds no mount of the job any more, but is
    still in the job's user namespace."""
    if not _userns_for_nobody():
        pytest.skip("user namespaces are disabled here")
    _yaml(node, "  clone_ns_flags: [CLONE_NEWUSER, CLONE_NEWNS]\n")
    node.cli("create", "17", "--user", "nobody", check=True)
    procs = _escape(node, "17", "unshare -m sh -c 'umount -l /tmp && umount -l /dev/shm && "
                    "exec sleep 1000' " + _BG, user="root")
    try:
        pid = procs[0][0]
        wait_until(lambda: os.stat(f"/proc/{pid}/root/tmp").st_dev ==
                   os.stat("/tmp").st_dev or not alive(pid), 10, "the unmounts")
        assert node.cli("delete", "17").returncode == 0
        assert [p for p, st in procs if alive(p, st)] == []
    finally:
        for p, st in procs:
            if alive(p, st):
                os.kill(p, signal.SIGKILL)
