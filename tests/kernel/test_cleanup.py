"""jobns.cleanup against the real kernel: hostile trees, mounts, races, odd names, depth.

Needs root (mounts, chattr, setpriv). Every tree lives under /var/tmp or a tmpfs mounted
by the fixture; all mounts are detached and all trees removed in teardown.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from jobns import kernel
from jobns.cleanup import WORKAREA_PREFIX, CleanupReport, empty_dir, remove_tree

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, chattr, setpriv)"),
]

DIRF = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
SRC = os.path.join(os.path.dirname(__file__), "..", "..", "src")


# ----------------------------------------------------------------- fixtures and helpers
def _mounts_below(path: str) -> list[str]:
    real = os.path.realpath(path)
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == real or mp.startswith(real + "/"):
                out.append(mp)
    return out


def _force_remove(path: str) -> None:
    """Teardown: detach every mount below path, clear inode flags, remove the tree."""
    for mp in sorted(_mounts_below(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], check=False)
    if not os.path.lexists(path):
        return
    subprocess.run(["chattr", "-R", "-i", "-a", path], stderr=subprocess.DEVNULL, check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", "--", path], check=False)


@pytest.fixture
def work():
    path = tempfile.mkdtemp(prefix="jobns-cleanup-test-", dir="/var/tmp")
    try:
        yield path
    finally:
        _force_remove(path)


@pytest.fixture
def tmpfs(work):
    """A tmpfs of our own, mounted inside the work directory."""
    path = os.path.join(work, "tmpfs")
    os.mkdir(path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g,mode=0755", "jobns-test", path],
                   check=True)
    yield path  # `work` detaches it


class Dir:
    """An fd on a directory, closed at exit."""

    def __init__(self, path: str):
        self.fd = os.open(path, DIRF)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def rm(parent: str, name: str, **kw) -> CleanupReport:
    with Dir(parent) as fd:
        return remove_tree(fd, name, **kw)


def make_files(path: str, names, data: bytes = b"x") -> None:
    os.makedirs(path, exist_ok=True)
    for n in names:
        with open(os.path.join(path, n), "wb") as fh:
            fh.write(data)


def snapshot(path: str) -> dict:
    """Everything below path (names, types, sizes, modes), not following symlinks."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            snap[os.path.relpath(p, path)] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_ino)
    return snap


def run_python(code: str, *, timeout: float, preexec=None, args=()) -> dict:
    """Run code in a fresh interpreter (jobns importable); it prints one JSON line."""
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=os.path.abspath(SRC)),
                          preexec_fn=preexec)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


REPORT_CODE = textwrap.dedent("""
    import json, os, resource, sys
    from jobns.cleanup import remove_tree
    limit = int(sys.argv[3])
    if limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
    w = None if sys.argv[4] == "auto" else int(sys.argv[4])
    r = remove_tree(fd, sys.argv[2], workers=w)
    print(json.dumps({"files": r.files, "dirs": r.dirs, "mounts": r.skipped_mounts,
                      "failures": [[f.path, f.op, f.errno, f.message] for f in r.failures],
                      "ok": r.ok}))
""")


def rm_in_subprocess(parent: str, name: str, *, timeout: float, fd_limit: int = 0,
                     workers="1", preexec=None) -> dict:
    return run_python(REPORT_CODE, timeout=timeout, preexec=preexec,
                      args=(parent, name, str(fd_limit), str(workers)))


def build_chain(path: str, depth: int, name: str = "d", bottom: str = "bottom") -> None:
    os.mkdir(path)
    fd = os.open(path, DIRF)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, DIRF, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(os.open(bottom, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def chattr(flag: str, path: str) -> None:
    """chattr, or skip the test when this filesystem has no inode flags."""
    proc = subprocess.run(["chattr", flag, path], capture_output=True, text=True)
    if proc.returncode != 0:
        if "Operation not supported" in proc.stderr or "Inappropriate ioctl" in proc.stderr:
            pytest.skip(f"chattr unsupported here: {proc.stderr.strip()}")
        raise AssertionError(proc.stderr)


# ----------------------------------------------------------------- basic behaviour
def test_counts_and_types(work):
    t = os.path.join(work, "t")
    make_files(os.path.join(t, "a", "b"), ["f1", "f2"])
    make_files(os.path.join(t, "c"), ["f3"])
    os.mkdir(os.path.join(t, "empty"))
    os.symlink("f3", os.path.join(t, "c", "rel-link"))
    os.symlink("/nonexistent", os.path.join(t, "dangling"))
    os.link(os.path.join(t, "c", "f3"), os.path.join(t, "hardlink"))
    r = rm(work, "t")
    assert r.ok, r
    assert (r.files, r.dirs) == (6, 5)  # f1 f2 f3 rel-link dangling hardlink; t a b c empty
    assert not os.path.lexists(t)


def test_missing_name_is_ok(work):
    r = rm(work, "nope")
    assert r == CleanupReport(0, 0, [], []) and r.ok


def test_name_must_be_one_component(work):
    make_files(os.path.join(work, "a", "b"), ["keep"])
    for bad in ("a/b", "..", ".", ""):
        r = rm(work, bad)
        assert not r.ok and r.failures[0].errno == errno.EINVAL
    assert os.path.exists(os.path.join(work, "a", "b", "keep"))


def test_non_directory_name_is_unlinked_not_followed(work):
    other = os.path.join(work, "other")
    make_files(other, ["precious"])
    os.symlink(other, os.path.join(work, "link"))
    r = rm(work, "link")
    assert r.ok and (r.files, r.dirs) == (1, 0)
    assert not os.path.lexists(os.path.join(work, "link"))
    assert os.listdir(other) == ["precious"]
    make_files(work, ["plain"])
    r = rm(work, "plain")
    assert r.ok and (r.files, r.dirs) == (1, 0)


def test_empty_dir_keeps_the_directory(work):
    t = os.path.join(work, "t")
    make_files(os.path.join(t, "x", "y"), ["a", "b"])
    make_files(t, ["c"])
    os.chmod(t, 0o1777)
    ino = os.stat(t).st_ino
    with Dir(t) as fd:
        r = empty_dir(fd)
    assert r.ok and (r.files, r.dirs) == (3, 2)
    st = os.stat(t)
    assert st.st_ino == ino and stat.S_IMODE(st.st_mode) == 0o1777 and os.listdir(t) == []


# ----------------------------------------------------------------- symlinks and races
def test_symlinks_to_etc_and_other_job_are_not_followed(work):
    other = os.path.join(work, "other-job")
    make_files(os.path.join(other, "sub"), [f"f{i}" for i in range(20)])
    before_other = snapshot(other)
    etc_names = sorted(os.listdir("/etc"))
    passwd = os.stat("/etc/passwd")
    t = os.path.join(work, "job")
    make_files(os.path.join(t, "deep", "er"), ["mine"])
    os.symlink("/etc", os.path.join(t, "etc"))
    os.symlink("/etc/", os.path.join(t, "deep", "etc-slash"))
    os.symlink("/etc/passwd", os.path.join(t, "passwd"))
    os.symlink(other, os.path.join(t, "deep", "er", "other"))
    os.symlink("../../other-job/sub", os.path.join(t, "rel-other"))
    r = rm(work, "job")
    assert r.ok, r
    assert (r.files, r.dirs) == (6, 3)
    assert not os.path.lexists(t)
    assert snapshot(other) == before_other
    assert sorted(os.listdir("/etc")) == etc_names
    after = os.stat("/etc/passwd")
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == \
           (passwd.st_ino, passwd.st_size, passwd.st_mtime_ns)


ATTACKER = textwrap.dedent("""
    # Swap the job's directories for symlinks to the victim, again and again, until told
    # to stop; print how many swaps were made.
    import os, random, sys, time
    top, victim, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    names = sys.argv[4].split(",")
    swaps = 0
    while not os.path.exists(stop):
        for n in random.sample(names, len(names)):
            p = os.path.join(top, n)
            hidden = os.path.join(top, "." + n.replace("/", "_") + ".moved")
            try:
                os.rename(p, hidden)
            except OSError:
                continue
            try:
                os.symlink(victim, p)
                swaps += 1
                time.sleep(0.001)  # keep the symlink in place most of the time
                os.unlink(p)
            except OSError:
                pass
            try:
                os.rename(hidden, p)
            except OSError:
                pass
    print(swaps)
""")


@pytest.mark.parametrize("workers", [1, 2])
def test_dir_swapped_for_symlink_during_removal_loses_no_victim_file(tmpfs, workers):
    work = tmpfs
    victim = os.path.join(work, "victim")
    # The victim has the very names the remover will unlink: a remover that resolves
    # paths again after listing them deletes victim files once a swap lands.
    make_files(os.path.join(victim, "sub"), [f"f{j}" for j in range(200)])
    make_files(victim, [f"g{j}" for j in range(200)])
    before = snapshot(victim)
    total_swaps = 0
    for trial in range(5):
        t = os.path.join(work, f"job{trial}")
        names = []
        for i in range(40):
            make_files(os.path.join(t, f"d{i}", "sub"), [f"f{j}" for j in range(200)])
            make_files(os.path.join(t, f"d{i}"), [f"g{j}" for j in range(200)])
            names += [f"d{i}", f"d{i}/sub"]
        stop = os.path.join(work, f"stop{trial}")
        attacker = subprocess.Popen([sys.executable, "-c", ATTACKER, t, victim, stop,
                                     ",".join(names)], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.05)
            r = rm(work, f"job{trial}", workers=workers)
        finally:
            open(stop, "w").close()
            out, _ = attacker.communicate(timeout=30)
        total_swaps += int(out)
        assert snapshot(victim) == before, f"trial {trial}: victim changed ({r})"
        # The attacker may have recreated entries after we passed; a second run finishes.
        r2 = rm(work, f"job{trial}")
        assert r2.ok, r2
        assert not os.path.lexists(t)
    assert total_swaps > 0, "the attacker never managed a swap: the test proved nothing"
    assert snapshot(victim) == before


# ----------------------------------------------------------------- mounts
def test_tmpfs_mounted_inside_is_skipped_and_reported(work):
    t = os.path.join(work, "t")
    make_files(os.path.join(t, "a"), ["f"])
    make_files(os.path.join(t, "b"), ["g"])
    mnt = os.path.join(t, "a", "mnt")
    os.mkdir(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "jobns-test-inner", mnt],
                   check=True)
    make_files(os.path.join(mnt, "sub"), [f"m{i}" for i in range(10)])
    inside = snapshot(mnt)
    r = rm(work, "t")
    assert r.skipped_mounts == ["t/a/mnt"]
    assert r.failures == []
    assert not r.ok
    assert snapshot(mnt) == inside
    assert (r.files, r.dirs) == (2, 1)  # a/f, b/g and b; t and a stay (mount inside)
    assert sorted(os.listdir(t)) == ["a"] and sorted(os.listdir(os.path.join(t, "a"))) == ["mnt"]


def test_bind_mount_of_same_filesystem_is_skipped_and_reported(work):
    other = os.path.join(work, "other-job")
    make_files(os.path.join(other, "sub"), [f"o{i}" for i in range(10)])
    before = snapshot(other)
    t = os.path.join(work, "t")
    make_files(os.path.join(t, "x"), ["f"])
    target = os.path.join(t, "x", "bound")
    os.mkdir(target)
    subprocess.run(["mount", "--bind", other, target], check=True)
    assert os.stat(target).st_dev == os.stat(t).st_dev  # same fs: st_dev cannot tell
    r = rm(work, "t", workers=2)
    assert r.skipped_mounts == ["t/x/bound"] and r.failures == [] and not r.ok
    assert snapshot(other) == before
    subprocess.run(["umount", target], check=True)
    assert rm(work, "t").ok


def test_self_bind_mount_and_file_bind_mount(work):
    t = os.path.join(work, "t")
    make_files(os.path.join(t, "self"), ["inside"])
    make_files(t, ["file-target"])
    secret = os.path.join(work, "secret")
    make_files(work, ["secret"], b"do not delete")
    self_mp = os.path.join(t, "self")
    subprocess.run(["mount", "--bind", self_mp, self_mp], check=True)
    subprocess.run(["mount", "--bind", secret, os.path.join(t, "file-target")], check=True)
    r = rm(work, "t")
    assert sorted(r.skipped_mounts) == ["t/file-target", "t/self"], r
    assert r.failures == [] and not r.ok
    assert os.path.exists(os.path.join(self_mp, "inside"))
    with open(secret, "rb") as fh:
        assert fh.read() == b"do not delete"


def test_top_that_is_a_mount_point_is_left_alone(work, tmpfs):
    make_files(tmpfs, ["a", "b"])
    r = rm(work, "tmpfs")
    assert r.skipped_mounts == ["tmpfs"] and r.files == 0 and not r.ok
    assert sorted(os.listdir(tmpfs)) == ["a", "b"]


# ----------------------------------------------------------------- names and types
ODD_NAMES = [b"new\nline", b"\n", b"x" * 255, b"\xff\xfe-not-utf8", b"-rf", b"*", b" ",
             b"tab\tand\x01ctrl", "\u00e9\u6f22".encode(), b"...", b".hidden"]


def test_odd_names(work):
    t = os.path.join(work, "t").encode()
    os.mkdir(t)
    for n in ODD_NAMES:
        os.mkdir(os.path.join(t, n))
        with open(os.path.join(t, n, n), "wb") as fh:
            fh.write(b"1")
    r = rm(work, "t")
    assert r.ok, r
    assert (r.files, r.dirs) == (len(ODD_NAMES), len(ODD_NAMES) + 1)
    assert not os.path.lexists(t)


def test_odd_names_in_failure_paths_round_trip(work, tmpfs):
    t = os.path.join(tmpfs, "t").encode()
    d = os.path.join(t, b"\xff\nsub")
    os.makedirs(d)
    f = os.path.join(d, b"x" * 255)
    open(f, "wb").close()
    chattr("+i", f)
    r = rm(tmpfs, "t")
    assert [x.op for x in r.failures] == ["unlink"]
    assert os.fsencode(r.failures[0].path) == b"t/\xff\nsub/" + b"x" * 255
    subprocess.run(["chattr", "-i", f], check=True)


def test_fifos_sockets_and_devices_do_not_hang(work):
    t = os.path.join(work, "t")
    os.makedirs(os.path.join(t, "d"))
    for i in range(5):
        os.mkfifo(os.path.join(t, f"fifo{i}"))
        os.mkfifo(os.path.join(t, "d", f"fifo{i}"))
    socks = []
    for i in range(3):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(os.path.join(t, "d", f"sock{i}"))
        s.listen(1)
        socks.append(s)
    os.mknod(os.path.join(t, "null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(os.path.join(t, "d", "blk"), 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    try:
        rep = rm_in_subprocess(work, "t", timeout=20)
    finally:
        for s in socks:
            s.close()
    assert rep["ok"], rep
    assert (rep["files"], rep["dirs"]) == (15, 2)
    assert not os.path.lexists(t)


# ----------------------------------------------------------------- permissions and flags
def _tree_with_mode_000(t: str) -> None:
    make_files(os.path.join(t, "locked", "inner"), ["a", "b"])
    make_files(os.path.join(t, "noexec"), ["c"])
    make_files(t, ["zero"])
    os.chmod(os.path.join(t, "zero"), 0)
    os.chmod(os.path.join(t, "locked", "inner", "a"), 0)
    os.chmod(os.path.join(t, "locked", "inner"), 0)
    os.chmod(os.path.join(t, "locked"), 0)
    os.chmod(os.path.join(t, "noexec"), 0o444)


def test_mode_000_files_and_dirs_as_root(work):
    t = os.path.join(work, "t")
    _tree_with_mode_000(t)
    r = rm(work, "t")
    assert r.ok, r
    assert (r.files, r.dirs) == (4, 4)


def test_mode_000_dirs_without_dac_override(work):
    """The job user removing its own tree: no CAP_DAC_OVERRIDE, so mode 000 directories
    must be chmod'ed (through a verified fd) before they can be read."""
    parent = os.path.join(work, "userdir")
    os.mkdir(parent)
    t = os.path.join(parent, "t")
    _tree_with_mode_000(t)
    for dirpath, dirnames, filenames in os.walk(parent):
        for n in dirnames + filenames + [""]:
            os.lchown(os.path.join(dirpath, n), 65534, 65534)
    os.chmod(work, 0o755)
    # setpriv drops to nobody with no capabilities at all.
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-c", REPORT_CODE, parent, "t", "0", "1"],
        capture_output=True, text=True, timeout=30,
        env=dict(os.environ, PYTHONPATH=os.path.abspath(SRC)))
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["ok"], rep
    assert (rep["files"], rep["dirs"]) == (4, 4)
    assert os.listdir(parent) == []


def test_immutable_and_append_only_are_reported_then_cleared_on_request(tmpfs):
    t = os.path.join(tmpfs, "t")
    make_files(os.path.join(t, "a"), ["imm", "free1"])
    make_files(os.path.join(t, "b"), ["app", "free2"])
    make_files(os.path.join(t, "c"), ["x"])
    chattr("+i", os.path.join(t, "a", "imm"))
    chattr("+a", os.path.join(t, "b", "app"))
    chattr("+i", os.path.join(t, "c"))  # immutable directory: its entries cannot go
    r = rm(tmpfs, "t")
    assert not r.ok and r.skipped_mounts == []
    got = sorted((f.path, f.op, errno.errorcode[f.errno]) for f in r.failures)
    assert got == [("t/a/imm", "unlink", "EPERM"), ("t/b/app", "unlink", "EPERM"),
                   ("t/c/x", "unlink", "EPERM")]
    assert all("immutable" in f.message for f in r.failures)
    assert (r.files, r.dirs) == (2, 0)  # free1, free2 removed: no stop at the first error
    assert sorted(os.listdir(t)) == ["a", "b", "c"]
    r = rm(tmpfs, "t", clear_immutable=True)
    assert r.ok, r
    assert (r.files, r.dirs) == (3, 4)


def test_failure_deep_below_work_area_is_reported_under_original_path(tmpfs):
    t = os.path.join(tmpfs, "t")
    build_chain(t, 450, name="d", bottom="stuck")
    bottom = os.path.join(t, *(["d"] * 450), "stuck")
    chattr("+i", bottom)
    r = rm(tmpfs, "t")
    want = "/".join(["t"] + ["d"] * 450 + ["stuck"])
    assert [(f.path, f.op) for f in r.failures] == [(want, "unlink")], r.failures
    assert r.skipped_mounts == []
    # The file now sits in the work area (moved up); find it there and free it.
    stuck = [os.path.join(dp, "stuck") for dp, _, fn in os.walk(t) if "stuck" in fn]
    assert len(stuck) == 1 and WORKAREA_PREFIX in stuck[0]
    subprocess.run(["chattr", "-i", stuck[0]], check=True)
    r = rm(tmpfs, "t")
    assert r.ok, r
    assert os.listdir(tmpfs) == []  # the work area went too


# ----------------------------------------------------------------- size and depth
@pytest.mark.parametrize("depth,limit,timeout", [(20_000, 300, 60), (100_000, 300, 30)])
def test_deep_chain_with_bounded_fds(tmpfs, depth, limit, timeout):
    t = os.path.join(tmpfs, "t")
    build_chain(t, depth)
    start = time.monotonic()
    rep = rm_in_subprocess(tmpfs, "t", timeout=timeout, fd_limit=limit, workers="auto")
    elapsed = time.monotonic() - start
    assert rep["ok"], rep
    assert (rep["files"], rep["dirs"]) == (1, depth + 1)
    assert os.listdir(tmpfs) == []
    assert elapsed < 30


def test_deep_chain_on_disk(work):
    build_chain(os.path.join(work, "t"), 20_000)
    r = rm(work, "t")
    assert r.ok and (r.files, r.dirs) == (1, 20_001)


@pytest.mark.parametrize("workers", [None, 1, 2])
def test_100k_files_in_100_dirs(tmpfs, workers):
    t = os.path.join(tmpfs, "t")
    os.mkdir(t)
    for d in range(100):
        dfd = os.open(t, DIRF)
        try:
            os.mkdir(f"d{d}", dir_fd=dfd)
            sfd = os.open(f"d{d}", DIRF, dir_fd=dfd)
            for i in range(1000):
                os.close(os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=sfd))
            os.close(sfd)
        finally:
            os.close(dfd)
    r = rm(tmpfs, "t", workers=workers)
    assert r.ok, r
    assert (r.files, r.dirs) == (100_000, 101)
    assert not os.path.lexists(t)


def test_statx_reports_mount_id():
    fd = os.open("/", DIRF)
    try:
        st = kernel.fstatx(fd)
        ref = os.fstat(fd)
        assert (st.ino, st.dev) == (ref.st_ino, ref.st_dev)
        with open(f"/proc/self/fdinfo/{fd}") as fh:
            mnt = int(next(l for l in fh if l.startswith("mnt_id:")).split()[1])
        assert st.mnt_id == mnt
    finally:
        os.close(fd)


@pytest.mark.parametrize("workers", [1, 2])
def test_empty_dir_with_deep_chain_and_files(tmpfs, workers):
    t = os.path.join(tmpfs, "t")
    build_chain(t, 1_000)
    make_files(os.path.join(t, "flat"), [f"f{i}" for i in range(3000)])
    ino = os.stat(t).st_ino
    with Dir(t) as fd:
        r = empty_dir(fd, workers=workers)
    assert r.ok, r
    assert (r.files, r.dirs) == (3001, 1001)
    assert os.stat(t).st_ino == ino and os.listdir(t) == []  # work area gone too
