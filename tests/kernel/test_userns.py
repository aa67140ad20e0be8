"""User namespace (clone_ns_flags: [CLONE_NEWUSER]) and the join order, on the real kernel.

Default: the identity map 0 0 4294967295, so ids mean the same inside and out. With
user_ns_script the site's script writes the maps while the namespace process waits.
"""

from __future__ import annotations

import os
import threading

import pytest

from jobns import kernel, lifecycle
from jobns.errors import OperationError

from nshelp import (JOB_GID, JOB_UID, MNT, PID, USER, assert_nothing_left, init_pid, job,
                    ns_ino, ns_link, wait_until, write_script)

IDENTITY = "0 0 4294967295"


def _exec(node, job_id, *argv, user=None, check=True):
    args = ["exec", job_id] + (["--user", user] if user else []) + ["--"] + list(argv)
    r = node.cli(*args)
    if check:
        assert r.returncode == 0, (argv, r.returncode, r.stdout, r.stderr)
    return r


def _maps(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def _backing_tmp(node, job_id: str) -> str:
    return os.path.join(node.job_dir(job_id), f".{job_id}", "_tmp")


def test_namespaces_differ_from_the_host(node):
    cfg = node.cfg(clone_ns_flags=(PID, USER, MNT))
    lifecycle.create(cfg, job("401"))
    r = _exec(node, "401", "readlink", "/proc/self/ns/pid", "/proc/self/ns/user",
              "/proc/self/ns/mnt")
    pid_link, user_link, mnt_link = r.stdout.split()
    assert pid_link != ns_link("self", "pid")
    assert user_link != ns_link("self", "user")
    assert mnt_link != ns_link("self", "mnt")
    # ... and they are the job's: PID 1's pid ns, the mount pin, the pin's owner.
    init = init_pid(node, "401")
    assert pid_link == ns_link(init, "pid")
    pin = os.path.join(node.job_dir("401"), ".ns", "mnt")
    assert mnt_link == f"mnt:[{os.stat(pin).st_ino}]"
    fd = os.open(pin, os.O_RDONLY)
    try:
        ufd = kernel.ns_get_userns(fd)
        assert user_link == f"user:[{os.fstat(ufd).st_ino}]"
        os.close(ufd)
    finally:
        os.close(fd)
    assert ns_link(init, "user") == user_link
    # Only the mount namespace is pinned on disk (DESIGN: pid/user pins would be copied
    # into every later job namespace).
    # (.ns/cgroup names the job's cgroup v2 group where tasks join it: containment)
    assert sorted(set(os.listdir(os.path.dirname(pin))) - {"cgroup"}) == \
        ["job.json", "mnt", "pid1"]


def test_identity_map_and_job_user(node):
    lifecycle.create(node.cfg(clone_ns_flags=(USER, MNT)), job("402"))
    r = _exec(node, "402", "cat", "/proc/self/uid_map", "/proc/self/gid_map")
    assert _maps(r.stdout) == [IDENTITY.split()] * 2
    r = _exec(node, "402", "id")
    assert r.stdout.strip() == f"uid={JOB_UID} gid={JOB_GID} groups={JOB_GID}"
    # Identity: a host file of some other uid keeps its owner inside.
    victim = os.path.join(_backing_tmp(node, "402"), "owned-by-2000")
    open(victim, "w").close()
    os.chown(victim, 2000, 2001)
    r = _exec(node, "402", "stat", "-c", "%u %g", "/tmp/owned-by-2000")
    assert r.stdout.split() == ["2000", "2001"]
    # The job's process is seen from the host with the same ids.
    r = _exec(node, "402", "sh", "-c", "cat /proc/self/status | grep -E '^(Uid|Gid):'")
    assert [line.split()[1] for line in r.stdout.splitlines()] == [str(JOB_UID), str(JOB_GID)]


def test_user_ns_script_writes_the_maps(node):
    script_map = f"0 0 1\n{JOB_UID} {JOB_UID} 1\n5000 15000 10\n"
    gid_map = f"0 0 1\n{JOB_GID} {JOB_GID} 1\n5000 15000 10\n"
    script = write_script(os.path.join(os.path.dirname(node.base), "userns.sh"), f"""
        printf '{script_map}' > /proc/$SLURM_NS_PID/uid_map || exit 1
        printf '{gid_map}' > /proc/$SLURM_NS_PID/gid_map || exit 1
        """)
    cfg = node.cfg(clone_ns_flags=(PID, USER, MNT), user_ns_script=script)
    lifecycle.create(cfg, job("403"))
    r = _exec(node, "403", "cat", "/proc/self/uid_map", "/proc/self/gid_map")
    assert _maps(r.stdout) == _maps(script_map) + _maps(gid_map)
    r = _exec(node, "403", "id", "-u")
    assert r.stdout.strip() == str(JOB_UID)
    tmp = _backing_tmp(node, "403")
    for name, owner in (("mapped", 15003), ("unmapped", 2000)):
        open(os.path.join(tmp, name), "w").close()
        os.chown(os.path.join(tmp, name), owner, owner)
    r = _exec(node, "403", "stat", "-c", "%n %u %g", "/tmp/mapped", "/tmp/unmapped")
    # host 15003 is 5003 inside; an id outside the map shows as the overflow id.
    assert _maps(r.stdout) == [["/tmp/mapped", "5003", "5003"],
                               ["/tmp/unmapped", "65534", "65534"]]
    # A process running as inside-uid 5001 is host uid 15001.
    r = _exec(node, "403", "sh", "-c", "id -u; grep '^Uid:' /proc/self/status", user="5001")
    assert r.stdout.split()[:2] == ["5001", "Uid:"]
    init = init_pid(node, "403")
    with open(f"/proc/{init}/uid_map") as f:      # seen from the host side
        assert _maps(f.read()) == _maps(script_map)


def test_failing_user_ns_script_fails_create_and_leaves_nothing(node):
    marker = os.path.join(os.path.dirname(node.base), "userns-pid")
    script = write_script(os.path.join(os.path.dirname(node.base), "userns-fail.sh"), f"""
        echo $SLURM_NS_PID > {marker}
        echo 'cannot map this job' >&2
        exit 4
        """)
    cfg = node.cfg(clone_ns_flags=(PID, USER, MNT), user_ns_script=script)
    with pytest.raises(OperationError) as info:
        lifecycle.create(cfg, job("404"))
    assert info.value.step == "user-ns-script"
    assert "exit status 4" in str(info.value) and "cannot map this job" in str(info.value)
    assert_nothing_left(node, "404")
    with open(marker) as f:
        ns_pid = int(f.read())
    wait_until(lambda: not os.path.exists(f"/proc/{ns_pid}/ns"), 5,
               "the namespace process to be gone")


def test_user_ns_script_that_writes_no_map_fails_create(node):
    script = write_script(os.path.join(os.path.dirname(node.base), "userns-lazy.sh"), "exit 0\n")
    cfg = node.cfg(clone_ns_flags=(USER, MNT), user_ns_script=script)
    with pytest.raises(OperationError) as info:
        lifecycle.create(cfg, job("405"))
    assert info.value.step == "user-ns-script"
    assert "uid_map" in str(info.value)
    assert_nothing_left(node, "405")


def test_root_in_the_job_has_no_host_privilege(node):
    """Consequence of the user namespace: capabilities are relative to it."""
    lifecycle.create(node.cfg(clone_ns_flags=(USER, MNT)), job("406"))
    lifecycle.create(node.cfg(), job("407"))                       # no user namespace
    r = _exec(node, "406", "mknod", "/tmp/null", "c", "1", "3", user="root", check=False)
    assert r.returncode != 0 and "Operation not permitted" in r.stderr
    _exec(node, "407", "mknod", "/tmp/null", "c", "1", "3", user="root")
    # Root inside may still mount (a tmpfs) in the job's own mount namespace.
    _exec(node, "406", "sh", "-c", "mkdir -p /tmp/m && mount -t tmpfs x /tmp/m && "
          "grep -q ' /tmp/m ' /proc/self/mountinfo", user="root")


def _join_report(cfg, job_id: str, threaded: bool) -> str:
    """In a forked child: open + join the job, fork, and report the grandchild's view."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        out = "error"
        try:
            if threaded:
                stop = threading.Event()
                threading.Thread(target=stop.wait, daemon=True).start()
            handle = lifecycle.open_job(cfg, job_id)
            try:
                lifecycle.join(handle)
            except (OSError, OperationError) as e:
                out = f"refused: {e}"
            else:
                g = os.fork()
                if g == 0:
                    links = [os.readlink(f"/proc/self/ns/{k}") for k in ("pid", "user", "mnt")]
                    os.write(w, (" ".join(links) + f" {os.getpid()}").encode())
                    os._exit(0)
                os.waitpid(g, 0)
                out = ""
        finally:
            os.write(w, out.encode())
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return data.decode()


def test_join_order_pid_user_mnt(node):
    cfg = node.cfg(clone_ns_flags=(PID, USER, MNT))
    lifecycle.create(cfg, job("408"))
    init = init_pid(node, "408")
    pid_link, user_link, mnt_link, inner_pid = _join_report(cfg, "408", False).split()
    assert (pid_link, user_link, mnt_link) == (ns_link(init, "pid"), ns_link(init, "user"),
                                               ns_link(init, "mnt"))
    assert int(inner_pid) > 1          # a pid of the job's namespace, seen through its /proc
    # setns into mount/user namespaces is refused in a multi-threaded process
    assert _join_report(cfg, "408", True).startswith("refused:")
    assert ns_ino(init, "pid") is not None
