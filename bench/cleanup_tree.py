"""Deletion benchmark: `jobns.cleanup.remove_tree` against `rm -rf` on the same tree shape,
built afresh for every run, in the same process run.

Importable (the benchmark driver calls these functions) and runnable:

    python bench/cleanup_tree.py --dir /var/tmp --files 100000 --dirs 100
    python bench/cleanup_tree.py --tmpfs --files 100000 --dirs 100   # mounts its own tmpfs
    python bench/cleanup_tree.py --dir /var/tmp --depth 20000

Every tree is built, `sync`ed (so creation writeback is not billed to deletion), then
removed and timed; methods alternate run by run so that drift hits all of them alike.
Needs root only for --tmpfs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

try:
    from jobns.cleanup import remove_tree
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    from jobns.cleanup import remove_tree

_DIRF = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def build_flat(path: str, nfiles: int, ndirs: int = 100, size: int = 0) -> None:
    """Make `path` holding `ndirs` directories with nfiles/ndirs files of `size` bytes."""
    os.mkdir(path)
    data = b"x" * size
    per = max(1, nfiles // max(1, ndirs))
    made = 0
    for d in range(max(1, ndirs)):
        dname = os.path.join(path, f"d{d:05d}")
        os.mkdir(dname)
        dfd = os.open(dname, _DIRF)
        try:
            for i in range(per if d < ndirs - 1 else nfiles - made):
                fd = os.open(f"f{i:07d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             0o644, dir_fd=dfd)
                if data:
                    os.write(fd, data)
                os.close(fd)
                made += 1
        finally:
            os.close(dfd)


def build_chain(path: str, depth: int, name: str = "d") -> None:
    """Make `path` holding a chain of `depth` nested directories, fd-relative (no PATH_MAX
    limit), with one empty file at the bottom."""
    os.mkdir(path)
    fd = os.open(path, _DIRF)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, _DIRF, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def time_rm_rf(path: str) -> float:
    t = time.perf_counter()
    subprocess.run(["rm", "-rf", "--", path], check=True)
    return time.perf_counter() - t


def time_remove_tree(path: str, workers: int | None = None) -> tuple[float, object]:
    parent, name = os.path.split(os.path.abspath(path))
    pfd = os.open(parent, _DIRF)
    try:
        t = time.perf_counter()
        report = remove_tree(pfd, name, workers=workers)
        elapsed = time.perf_counter() - t
    finally:
        os.close(pfd)
    if not report.ok or os.path.lexists(path):
        raise RuntimeError(f"remove_tree left {path}: {report}")
    return elapsed, report


def compare(base: str, shape: str, n: int, *, ndirs: int = 100, size: int = 0,
            reps: int = 3, workers: tuple = (1, 2, None)) -> list[dict]:
    """Time `rm -rf` and remove_tree(workers=w) for each w on trees of one shape.

    shape "flat": n files in `ndirs` dirs; shape "chain": n nested directories.
    Returns one dict per method: name, median/min seconds, entries/s, ratio to rm -rf
    (>1 means faster than rm -rf).
    """
    methods = ["rm -rf"] + [f"remove_tree(workers={w})" for w in workers]
    times: dict[str, list[float]] = {m: [] for m in methods}
    entries = n + ndirs + 1 if shape == "flat" else n + 2
    for rep in range(reps):
        for k, m in enumerate(methods):
            path = os.path.join(base, f"cleanup-bench-{os.getpid()}-{rep}-{k}")
            if shape == "flat":
                build_flat(path, n, ndirs, size)
            else:
                build_chain(path, n)
            os.sync()
            try:
                if m == "rm -rf":
                    times[m].append(time_rm_rf(path))
                else:
                    times[m].append(time_remove_tree(path, workers[k - 1])[0])
            finally:
                if os.path.lexists(path):
                    subprocess.run(["rm", "-rf", "--", path])
            os.sync()
    ref = statistics.median(times["rm -rf"])
    rows = []
    for m in methods:
        med = statistics.median(times[m])
        rows.append({"method": m, "shape": shape, "n": n, "median_s": round(med, 4),
                     "min_s": round(min(times[m]), 4), "entries_per_s": round(entries / med),
                     "vs_rm_rf": round(ref / med, 2)})
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'method':28} {'median s':>9} {'min s':>8} {'entries/s':>10} {'x rm -rf':>9}")
    for r in rows:
        print(f"{r['method']:28} {r['median_s']:9.3f} {r['min_s']:8.3f} "
              f"{r['entries_per_s']:10d} {r['vs_rm_rf']:9.2f}")


class TmpfsMount:
    """A private tmpfs under /var/tmp for the duration of a `with` block (root only)."""

    def __init__(self, parent: str = "/var/tmp", size: str = "4g"):
        self.parent, self.size, self.path = parent, size, None

    def __enter__(self) -> str:
        self.path = tempfile.mkdtemp(prefix="cleanup-bench-tmpfs-", dir=self.parent)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755",
                        "jobns-bench", self.path], check=True)
        return self.path

    def __exit__(self, *exc) -> None:
        subprocess.run(["umount", self.path], check=False)
        os.rmdir(self.path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/var/tmp", help="where to build trees (default /var/tmp)")
    ap.add_argument("--tmpfs", action="store_true", help="mount a tmpfs under --dir and use it")
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--dirs", type=int, default=100)
    ap.add_argument("--size", type=int, default=0, help="bytes per file (default 0)")
    ap.add_argument("--depth", type=int, default=0, help="also time a chain this deep")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", default="1,2,auto",
                    help="comma list of workers values for remove_tree; 'auto' = None")
    ap.add_argument("--json", help="write the rows to this file")
    args = ap.parse_args(argv)
    workers = tuple(None if w == "auto" else int(w) for w in args.workers.split(","))
    rows: list[dict] = []

    def run(base: str, label: str) -> None:
        if args.files:
            r = compare(base, "flat", args.files, ndirs=args.dirs, size=args.size,
                        reps=args.reps, workers=workers)
            print_table(f"{label}: {args.files} files of {args.size} B in {args.dirs} dirs", r)
            rows.extend(dict(x, fs=label) for x in r)
        if args.depth:
            r = compare(base, "chain", args.depth, reps=args.reps, workers=workers)
            print_table(f"{label}: chain of {args.depth} directories", r)
            rows.extend(dict(x, fs=label) for x in r)

    if args.tmpfs:
        with TmpfsMount(args.dir) as mnt:
            run(mnt, "tmpfs")
    else:
        fstype = subprocess.run(["findmnt", "-no", "FSTYPE", "-T", args.dir],
                                capture_output=True, text=True).stdout.strip() or "?"
        run(args.dir, fstype)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
