"""What a hostile job owner or a careless operator does to a node, through the CLI: a second create of a live job, a base_path out of inodes, an
interrupted delete, a full or read-only runtime dir, a job whose PID 1 was killed, many
deletes at once. Observed from the host, never trusting what jobns says about itself."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from jobns import kernel, lifecycle

from nshelp import alive, wait_until

TRASH = ".jobns-trash"


def _yaml(node, extra: str = "") -> None:
    node.write_config(f"defaults:\n  base_path: {node.base}\n  auto_base_path: true\n{extra}")


def _index(node, job_id: str) -> str:
    return os.path.join(node.runtime, "jobs", job_id)


def _others(node) -> list[str]:
    """node.leftovers() without the test's own filler dir."""
    return [n for n in node.leftovers() if n != ".filler"]


def _mount_tmpfs(path: str, options: str) -> None:
    os.makedirs(path, exist_ok=True)
    kernel.mount("tmpfs", path, "tmpfs", 0, options)


# ---------------------------------------------------------------- 2: a refused create

def test_refused_second_create_keeps_the_live_jobs_index_entry(node):
    _yaml(node)
    node.cli("create", "21", "--user", "nobody", check=True)
    link = _index(node, "21")
    assert os.readlink(link) == node.job_dir("21")
    r = node.cli("create", "21", "--user", "daemon")
    assert r.returncode == 1 and "already exists" in r.stderr, r.stderr
    assert "everything undone" not in r.stderr
    assert os.readlink(link) == node.job_dir("21")
    rec = json.load(open(os.path.join(node.job_dir("21"), ".ns/job.json")))
    assert rec["user"] == "nobody"
    assert node.cli("exec", "21", "--", "true").returncode == 0


# ---------------------------------------------------------------- 3: out of inodes

def _fill_inodes(fs: str, leave: int) -> None:
    """Use up the inodes of the filesystem at `fs` until exactly `leave` are free."""
    filler = os.path.join(fs, ".filler")
    os.makedirs(filler, exist_ok=True)
    n = len(os.listdir(filler))
    while os.statvfs(fs).f_ffree > leave:
        try:
            os.close(os.open(os.path.join(filler, str(n)), os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as e:
            assert e.errno == errno.ENOSPC
            break
        n += 1
    names = sorted(os.listdir(filler), key=int)
    while os.statvfs(fs).f_ffree < leave and names:
        os.unlink(os.path.join(filler, names.pop()))


def test_create_out_of_inodes_is_undone_without_new_inodes(node):
    os.makedirs(node.base)
    _mount_tmpfs(node.base, "mode=0755,nr_inodes=400")
    _yaml(node, "  dirs: /tmp,/mnt,/dev/shm\n")
    failed_at = set()
    for leave in range(0, 14):
        _fill_inodes(node.base, leave)
        r = node.cli("create", "31", "--user", "nobody")
        if r.returncode == 0:
            d = node.cli("delete", "31")
            assert d.returncode == 0, (leave, d.stderr)
            assert _others(node) == [], (leave, _others(node))
            continue
        assert "Traceback" not in r.stderr
        assert "ENOSPC" in r.stderr, r.stderr
        failed_at.add(leave)
        left = _others(node)
        assert left == [], (leave, left, r.stderr)
        # true either way: nothing was left
        assert "everything undone" in r.stderr or "nothing to undo" in r.stderr, r.stderr
        assert not os.path.lexists(_index(node, "31"))
    assert failed_at, "no create ran out of inodes: the test did not test anything"


def test_undo_that_leaves_something_does_not_say_everything_undone(node):
    """When the undo itself cannot remove something (an immutable file in a half-made job),
    the message says what is left instead of "everything undone"."""
    _yaml(node)
    lifecycle_hook = os.path.join(os.path.dirname(node.base), "init.sh")
    with open(lifecycle_hook, "w") as f:
        f.write("#!/bin/sh\nd=$SLURM_JOB_MOUNTPOINT_SRC\nmkdir -p $d/stuck && "
                "touch $d/stuck/f && chattr +i $d/stuck/f && exit 3\n")
    os.chmod(lifecycle_hook, 0o755)
    _yaml(node, f"  init_script: {lifecycle_hook}\n")
    r = node.cli("create", "32", "--user", "nobody")
    try:
        assert r.returncode == 1
        if not os.path.exists(os.path.join(node.job_dir("32"))) and not _trash(node):
            pytest.skip("chattr +i does not work here")
        assert "everything undone" not in r.stderr, r.stderr
        assert "stuck/f" in r.stderr, r.stderr
    finally:
        subprocess.run(["chattr", "-R", "-i", node.base], capture_output=True)


def _trash(node) -> list[str]:
    try:
        return os.listdir(os.path.join(node.base, TRASH))
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------- 5: leftover trash

def _leftover(node, name: str, files: int) -> str:
    d = os.path.join(node.base, TRASH, name, f".{name}", "_tmp")
    os.makedirs(d)
    for i in range(files):
        with open(os.path.join(d, f"f{i}"), "w"):
            pass
    return os.path.join(node.base, TRASH, name)


def test_next_delete_finishes_leftover_trash(node):
    _yaml(node)
    node.cli("create", "51", "--user", "nobody", check=True)
    left = _leftover(node, "50.1700000000000000000", 300)
    r = node.cli("delete", "51")
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(left)
    assert _others(node) == []


def test_delete_of_an_unknown_job_still_finishes_leftover_trash(node):
    _yaml(node)
    node.cli("create", "52", "--user", "nobody", check=True)    # makes base_path
    left = _leftover(node, "50.1700000000000000001", 50)
    r = node.cli("delete", "59")
    assert r.returncode == 0 and "no such job" in r.stderr, r.stderr
    assert not os.path.exists(left)


def test_create_finishes_small_leftover_trash(node):
    _yaml(node)
    node.cli("create", "53", "--user", "nobody", check=True)
    left = _leftover(node, "50.1700000000000000002", 20)
    node.cli("create", "54", "--user", "nobody", check=True)
    wait_until(lambda: not os.path.exists(left), 60, "the leftover trash to be removed")
    assert node.cli("exec", "54", "--", "true").returncode == 0


def test_trash_being_removed_by_a_live_delete_is_not_touched(node):
    """Leftovers are only what no running delete holds: a purge skips an entry whose
    remover is alive (here: the test holds the entry's lock like a running delete does)."""
    _yaml(node)
    node.cli("create", "55", "--user", "nobody", check=True)
    busy = _leftover(node, "56.1700000000000000003", 5)
    fd = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    try:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert node.cli("delete", "55").returncode == 0
        assert os.path.isdir(busy)
    finally:
        os.close(fd)
    assert node.cli("restore").returncode == 0
    assert not os.path.exists(busy)


# ---------------------------------------------------------------- 7: runtime dir unusable

@pytest.fixture(params=["read-only", "full"])
def broken_runtime(node, request):
    """A runtime dir that becomes unusable while job 71 lives."""
    os.makedirs(node.runtime, mode=0o700)
    _mount_tmpfs(node.runtime, "mode=0700,size=1m,nr_inodes=64")
    _yaml(node)
    node.cli("create", "71", "--user", "nobody", check=True)
    if request.param == "read-only":
        kernel.mount(None, node.runtime, None, kernel.MS_REMOUNT | kernel.MS_RDONLY)
        code = "EROFS"
    else:
        code = "ENOSPC"
        n = 0
        with contextlib.suppress(OSError):
            while True:
                os.close(os.open(os.path.join(node.runtime, f"fill{n}"),
                                 os.O_CREAT | os.O_WRONLY, 0o600))
                n += 1
        with contextlib.suppress(OSError):
            with open(os.path.join(node.runtime, "fill0"), "wb") as f:
                f.write(b"x" * (2 << 20))
    yield code
    with contextlib.suppress(OSError):
        kernel.mount(None, node.runtime, None, kernel.MS_REMOUNT)


def test_delete_tears_the_job_down_with_an_unusable_runtime_dir(node, broken_runtime):
    r = node.cli("delete", "71")
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(node.job_dir("71"))
    assert _others(node) == []


def test_delete_of_a_job_without_a_lock_file_with_an_unusable_runtime_dir(node, broken_runtime):
    # a job the runtime dir knows nothing of (its lock file went with a reboot of /run)
    with contextlib.suppress(OSError):
        kernel.mount(None, node.runtime, None, kernel.MS_REMOUNT)
    os.unlink(os.path.join(node.runtime, "lock", "71"))
    if broken_runtime == "EROFS":
        kernel.mount(None, node.runtime, None, kernel.MS_REMOUNT | kernel.MS_RDONLY)
    else:       # take the inode the lock file gave back
        with contextlib.suppress(OSError):
            for n in range(100):
                os.close(os.open(os.path.join(node.runtime, f"refill{n}"),
                                 os.O_CREAT | os.O_WRONLY, 0o600))
    r = node.cli("delete", "71")
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr
    assert node.runtime in r.stderr and broken_runtime in r.stderr, r.stderr
    assert not os.path.exists(node.job_dir("71"))


def test_create_with_an_unusable_runtime_dir_is_a_clear_error(node, broken_runtime):
    r = node.cli("create", "72", "--user", "nobody")
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1, r.stderr
    assert node.runtime in r.stderr and broken_runtime in r.stderr, r.stderr
    assert not os.path.exists(node.job_dir("72"))


# ---------------------------------------------------------------- 9: a provably dead job

def test_pid_namespace_job_whose_pid1_died_is_replaced_by_the_next_create(node):
    _yaml(node, "  clone_ns_flags: [CLONE_NEWPID, CLONE_NEWNS]\n")
    node.cli("create", "91", "--user", "nobody", check=True)
    pid1 = int(open(os.path.join(node.job_dir("91"), ".ns/pid1")).read())
    os.kill(pid1, signal.SIGKILL)
    wait_until(lambda: not alive(pid1), 10, "PID 1 to die")
    [entry] = json.loads(node.cli("list", "--json", check=True).stdout)
    assert entry["state"] == "broken"
    r = node.cli("create", "91", "--user", "daemon")
    assert r.returncode == 0, r.stderr
    assert re.search(r"job 91: .*(PID 1|pid 1).*gone.*replac", r.stderr, re.I), r.stderr
    assert node.cli("exec", "91", "--", "true").returncode == 0
    rec = json.load(open(os.path.join(node.job_dir("91"), ".ns/job.json")))
    assert rec["user"] == "daemon"
    assert os.readlink(_index(node, "91")) == node.job_dir("91")


def test_job_whose_pin_is_gone_is_replaced_by_the_next_create(node):
    _yaml(node)
    node.cli("create", "92", "--user", "nobody", check=True)
    kernel.umount2(os.path.join(node.job_dir("92"), ".ns/mnt"), kernel.MNT_DETACH)  # a reboot
    r = node.cli("create", "92", "--user", "daemon")
    assert r.returncode == 0, r.stderr
    assert "job 92" in r.stderr and "replac" in r.stderr, r.stderr


def test_mount_only_job_without_processes_is_not_provably_dead(node):
    _yaml(node)
    node.cli("create", "93", "--user", "nobody", check=True)
    r = node.cli("create", "93", "--user", "daemon")
    assert r.returncode == 1 and "already exists" in r.stderr, r.stderr
    assert node.cli("exec", "93", "--", "true").returncode == 0


# ---------------------------------------------------------------- 10: concurrent deletes

_RMDIR_LOOP = """
import os, sys
try:
    from jobns.delete import _drop_empty_trash
except ImportError:
    from jobns.lifecycle import _drop_empty_trash
base, stop = sys.argv[1], sys.argv[2]
fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
while not os.path.exists(stop):
    for _ in range(200):
        _drop_empty_trash(fd)
"""


def test_parallel_deletes_with_a_widened_window_all_succeed(node):
    n = 40
    _yaml(node)
    cfg = node.cfg()
    ids = [str(100 + i) for i in range(n)]
    for i in ids:
        lifecycle.create(cfg, __import__("nshelp").job(i))
    # what every delete (and restore) does when it finds the trash empty, as often as
    # possible, from another process
    stop = os.path.join(os.path.dirname(node.base), "stop")
    hammer = subprocess.Popen([sys.executable, "-c", _RMDIR_LOOP, node.base, stop])
    try:
        # one after another: each delete meets a trash the others just found empty
        for i in ids[:n // 2]:
            result = lifecycle.delete(cfg, i)
            assert result.ok, result.summary()
        ids = ids[n // 2:]
        # all at once, with the window between opening the trash and the rename widened
        env = node.env(JOBNS_TEST_TRASH_DELAY="0.05")
        procs = [subprocess.Popen([node_jobns(), "delete", i], env=env, stderr=subprocess.PIPE,
                                  text=True) for i in ids]
        procs.append(subprocess.Popen([node_jobns(), "restore", "--live", ",".join(ids)],
                                      env=env, stderr=subprocess.PIPE, text=True))
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    finally:
        open(stop, "w").close()
        hammer.wait(timeout=60)
    failed = [(code, err) for code, err in results if code != 0]
    assert failed == []
    assert _others(node) == [], _others(node)


def node_jobns() -> str:
    from kernelhelp import JOBNS
    return JOBNS


def test_delete_failure_names_where_the_dir_really_is(node):
    _yaml(node)
    node.cli("create", "95", "--user", "nobody", check=True)
    f = os.path.join(node.job_dir("95"), ".95", "_tmp", "stuck")
    open(f, "w").close()
    if subprocess.run(["chattr", "+i", f], capture_output=True).returncode != 0:
        pytest.skip("chattr +i not supported here")
    try:
        r = node.cli("delete", "95")
        assert r.returncode == 1
        shown = re.findall(r"not removed: (\S+?/stuck)", r.stderr)
        assert shown, r.stderr
        for path in shown:
            assert os.path.lexists(path), (path, r.stderr)
    finally:
        subprocess.run(["chattr", "-R", "-i", node.base], capture_output=True)


def test_delete_killed_half_way_is_finished_by_the_next_delete(node):
    """The case that happens: a delete is killed while it removes a big /tmp from the
    trash (its lock dies with it); the next delete, of any job, finishes it."""
    _yaml(node)
    node.cli("create", "57", "--user", "nobody", check=True)
    node.cli("create", "58", "--user", "nobody", check=True)
    tmp = os.path.join(node.job_dir("57"), ".57", "_tmp")
    for d in range(30):
        os.mkdir(os.path.join(tmp, f"d{d}"))
        for i in range(1000):
            os.close(os.open(os.path.join(tmp, f"d{d}", f"f{i}"), os.O_CREAT | os.O_WRONLY,
                             0o600))
    p = subprocess.Popen([node_jobns(), "delete", "57"], env=node.env(),
                         stderr=subprocess.DEVNULL)
    # kill it once the job dir is in the trash (if it finished first, there is simply
    # nothing left over, and the assertions below still hold)
    wait_until(lambda: _trash(node) or p.poll() is not None, 60, "the rename into the trash")
    p.kill()
    p.wait()
    r = node.cli("delete", "58")
    assert r.returncode == 0, r.stderr
    assert _trash(node) == []
    assert _others(node) == []
