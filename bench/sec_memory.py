"""Section 5: memory. Peak RSS of each CLI command (ru_maxrss of that command, reported by
GNU time's %M) and the unique memory of the PID-namespace
reaper (PID 1 of a job with CLONE_NEWPID: Private_Clean + Private_Dirty from
/proc/PID/smaps_rollup; Rss and Pss reported alongside).

Anchors: the peak RSS of `<venv>/bin/python -I -S -c pass` (the interpreter alone) and of
`/bin/true`, measured the same way.
"""

from __future__ import annotations

import subprocess

from jobns import lifecycle

from bench.common import JOBNS, Node, Results, log

SECTION = "memory"


TIME = "/usr/bin/time"


def peak_rss_kib(argv: list[str], env: dict) -> int:
    """Peak RSS of argv in KiB, as GNU time reports it (%M: the child's ru_maxrss).

    Not os.wait4 on a posix_spawn'ed child: spawn uses vfork, and Linux carries the
    spawning process's own RSS high-water mark into the child at exec, so every child of
    the benchmark would report at least the benchmark's RSS. /usr/bin/time forks from a
    small process, so what it reports is the command's own peak."""
    r = subprocess.run([TIME, "-f", "RSS=%M", *argv], env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr[-300:]}")
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("RSS=")][-1]
    return int(line[4:])


def smaps_rollup(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                out[parts[0][:-1]] = int(parts[1])
    return out


def run(res: Results, runs: int, quick: bool) -> None:
    n = max(3, min(runs, 10))
    with Node("memory") as node:
        env = node.env()
        import sys
        anchors = {
            "anchor: /bin/true": ["/bin/true"],
            "anchor: venv python -I -S -c pass": [sys.executable, "-I", "-S", "-c", "pass"],
        }
        for name, argv in anchors.items():
            res.timing(SECTION, f"peak RSS {name}", [peak_rss_kib(argv, env) for _ in range(n)],
                       unit="KiB")
        a_py = res.get(SECTION, "peak RSS anchor: venv python -I -S -c pass")
        log("memory: peak RSS of CLI commands")
        vals: dict[str, list[int]] = {k: [] for k in
                                      ("create", "exec", "delete", "list", "config show")}
        for i in range(n):
            j = f"mem{i}"
            vals["create"].append(peak_rss_kib([JOBNS, "create", j, "--user", "nobody"], env))
            vals["exec"].append(peak_rss_kib([JOBNS, "exec", j, "--", "/bin/true"], env))
            vals["list"].append(peak_rss_kib([JOBNS, "list"], env))
            vals["config show"].append(peak_rss_kib([JOBNS, "config", "show"], env))
            vals["delete"].append(peak_rss_kib([JOBNS, "delete", j], env))
        for k, v in vals.items():
            row = res.timing(SECTION, f"peak RSS jobns {k}", v, unit="KiB")
            res.compare(row, a_py)

        log("memory: reaper of PID-namespace jobs")
        cfg = node.cfg(pid_user=True)
        uniq, rss, pss = [], [], []
        jobs = [f"reap{i}" for i in range(n)]
        try:
            for j in jobs:
                rec = lifecycle.create(cfg, node.job(j))
                pid = rec.get("init_pid")
                if not pid:
                    raise RuntimeError(f"job {j} has no PID 1 (init_pid missing)")
                sm = smaps_rollup(pid)
                uniq.append(sm.get("Private_Clean", 0) + sm.get("Private_Dirty", 0))
                rss.append(sm.get("Rss", 0))
                pss.append(sm.get("Pss", 0))
        finally:
            for j in jobs:
                lifecycle.delete(cfg, j)
        res.timing(SECTION, "reaper unique RSS (Private_Clean+Private_Dirty) per job", uniq,
                   unit="KiB", note=f"measured with {n} PID-namespace jobs alive")
        res.timing(SECTION, "reaper Rss per job", rss, unit="KiB")
        res.timing(SECTION, "reaper Pss per job", pss, unit="KiB")
        res.sections[SECTION] = {
            "method": "/usr/bin/time -f %M (ru_maxrss of the command; output to /dev/null);"
                      " reaper: /proc/<init_pid>/smaps_rollup right after create"}
