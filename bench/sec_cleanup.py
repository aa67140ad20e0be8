"""Section 3: cleanup. Deleting a job whose /tmp holds many small files, against `rm -rf` of
the same tree on the same filesystem in the same run.

Trees (built with bench/cleanup_tree.py; files are 0 bytes): 100k files in 1,000 dirs,
1M files in 1,000 dirs (tmpfs by default; ext4 with --ext4-1m) and one chain of 20,000
nested directories. Filesystems: ext4 (base_path under /var/tmp) and a tmpfs mounted for
the run.

For jobns the tree is built in the job's /tmp on the host (`<base>/<J>/.<J>/_tmp/tree`),
synced, and `jobns delete J` is run as a whole process (what an epilog pays). Two moments
are taken: "ready" = the job directory has been renamed into `<base>/.jobns-trash/`
(seen through inotify IN_MOVED_FROM on base_path: the id is free for the next job), and
"done" = the process exited (every file gone). `rm -rf` has only "done". The methods
alternate rep by rep so that drift hits both alike.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import subprocess

from jobns import lifecycle

from bench import cleanup_tree
from bench.common import JOBNS, Node, Results, TmpfsMount, log, now

SECTION = "cleanup"
IN_MOVED_FROM = 0x40
IN_CLOEXEC = 0o2000000
IN_NONBLOCK = 0o4000

_libc = ctypes.CDLL(None, use_errno=True)


class Inotify:
    def __init__(self, path: str, mask: int):
        self.fd = _libc.inotify_init1(IN_CLOEXEC | IN_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if _libc.inotify_add_watch(self.fd, path.encode(), mask) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch {path}")

    def names(self) -> list[tuple[int, str]]:
        out = []
        try:
            buf = os.read(self.fd, 65536)
        except BlockingIOError:
            return out
        off = 0
        while off + 16 <= len(buf):
            _wd, mask, _cookie, ln = struct.unpack_from("iIII", buf, off)
            name = buf[off + 16: off + 16 + ln].split(b"\0", 1)[0].decode(errors="replace")
            out.append((mask, name))
            off += 16 + ln
        return out

    def close(self) -> None:
        os.close(self.fd)


def _build(path: str, shape: str, n: int) -> None:
    if shape == "flat":
        cleanup_tree.build_flat(path, n, 1000, 0)
    else:
        cleanup_tree.build_chain(path, n)


def _entries(shape: str, n: int) -> int:
    return n if shape == "flat" else n   # files for flat trees, directories for a chain


def _time_jobns(node: Node, job_id: str, how: str) -> tuple[float, float]:
    """Delete job_id through the CLI (`jobns delete`, a whole process) or the API
    (lifecycle.delete in a forked copy of this process, no interpreter start); return
    (ms until the job id is free, ms until every file is gone and the process exited)."""
    ino = Inotify(node.base, IN_MOVED_FROM)
    try:
        t0 = now()
        if how == "cli":
            p = subprocess.Popen([JOBNS, "delete", job_id], env=node.env(),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
            pid = p.pid
        else:
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = 0 if lifecycle.delete(node.cfg(), job_id).ok else 1
                finally:
                    os._exit(code)
        pidfd = os.pidfd_open(pid)
        ready = done = None
        try:
            while done is None:
                rd, _, _ = select.select([ino.fd, pidfd], [], [], 600)
                if ino.fd in rd and ready is None:
                    t = now()
                    if any(mask & IN_MOVED_FROM and name == job_id for mask, name in ino.names()):
                        ready = t
                if pidfd in rd:
                    done = now()
        finally:
            os.close(pidfd)
        if how == "cli":
            err = p.stderr.read().decode(errors="replace")
            p.wait()
            code = p.returncode
        else:
            err = ""
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if code != 0:
            raise RuntimeError(f"jobns delete {job_id} ({how}) exited {code}: {err[-400:]}")
        if ready is None:   # the event may have been read together with the exit
            ready = done
        return (ready - t0) * 1000, (done - t0) * 1000
    finally:
        ino.close()


def _case(res: Results, node: Node, scratch: str, fs: str, shape: str, n: int,
          reps: int) -> None:
    cfg = node.cfg()
    size = f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"
    label = f"{size} files" if shape == "flat" else f"{size}-deep chain"
    log(f"cleanup: {fs}, {label}, {reps} reps")
    times: dict[str, list[float]] = {k: [] for k in ("rm", "cli-ready", "cli-done",
                                                     "api-ready", "api-done")}
    order = ("rm", "cli", "api")
    for rep in range(reps):
        for method in order[rep % 3:] + order[:rep % 3]:
            if method == "rm":
                path = os.path.join(scratch, f"rmtree-{rep}")
                _build(path, shape, n)
                os.sync()
                t = now()
                subprocess.run(["rm", "-rf", "--", path], check=True)
                times["rm"].append((now() - t) * 1000)
            else:
                j = f"clean{shape[0]}{n}r{rep}{method}"
                lifecycle.create(cfg, node.job(j))
                _build(os.path.join(node.tmp_dir(j), "tree"), shape, n)
                os.sync()
                r, d = _time_jobns(node, j, method)
                times[f"{method}-ready"].append(r)
                times[f"{method}-done"].append(d)
            os.sync()
    unit_n = _entries(shape, n)
    unit = "files/s" if shape == "flat" else "dirs/s"
    sec = {k: [x / 1000 for x in v] for k, v in times.items()}
    a = res.timing(SECTION, f"{fs} {label}: rm -rf", sec["rm"], unit="s")
    tp_a = res.value(SECTION, f"{fs} {label}: rm -rf throughput", unit_n / a.central, unit)
    for how, what in (("cli", "CLI jobns delete"), ("api", "API lifecycle.delete")):
        d = res.timing(SECTION, f"{fs} {label}: {what}, all gone", sec[f"{how}-done"],
                       unit="s")
        res.compare(d, a)
        r = res.timing(SECTION, f"{fs} {label}: {what}, job id free (node ready)",
                       sec[f"{how}-ready"], unit="s")
        res.compare(r, a)
        tp = res.value(SECTION, f"{fs} {label}: {what} throughput", unit_n / d.central, unit)
        tp.anchor, tp.ratio = tp_a.name, tp.value / tp_a.value
        tp.target = ">= 1.0x rm -rf"
        tp.met = tp.ratio >= 1.0


def run(res: Results, runs: int, quick: bool, ext4_1m: bool = False) -> None:
    reps_small = 1 if quick else 3
    reps_big = 1   # each method once: 3 trees of 1M files
    if quick:
        cases = [("flat", 10_000, reps_small), ("chain", 2_000, reps_small)]
        big_tmpfs = big_ext4 = []
    else:
        cases = [("flat", 100_000, reps_small), ("chain", 20_000, reps_small)]
        big_tmpfs = [("flat", 1_000_000, reps_big)]
        big_ext4 = [("flat", 1_000_000, 1)] if ext4_1m else []
    with Node("cleanup") as node:
        scratch = os.path.join(node.root, "scratch")
        os.makedirs(scratch)
        lifecycle.ensure_base(node.cfg())
        for shape, n, reps in cases + big_ext4:
            _case(res, node, scratch, "ext4", shape, n, reps)
    with TmpfsMount() as mnt:
        with Node("cleanup-tmpfs", base_parent=mnt) as node:
            scratch = os.path.join(mnt, "scratch")
            os.makedirs(scratch)
            lifecycle.ensure_base(node.cfg())
            for shape, n, reps in cases + big_tmpfs:
                _case(res, node, scratch, "tmpfs", shape, n, reps)
    res.sections[SECTION] = {
        "files": "0-byte files, 1,000 directories per flat tree; chain = nested directories "
                 "with one empty file at the bottom",
        "ext4": "base_path under /var/tmp (ext4, mounted with discard)",
        "tmpfs": "a tmpfs mounted for the run, base_path on it",
        "ext4_1m": ext4_1m,
        "jobns": "`jobns delete` as a whole process (interpreter start included); 'ready' = "
                 "rename of <base>/<J> into <base>/.jobns-trash seen by inotify",
    }
