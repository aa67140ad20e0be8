"""Section slurm26: jobns side by side with Slurm's own namespace/linux on Slurm 26.05
(Debian sid's packages, run by the test fixture's box: tests/slurm/jobns_slurm_box.py).

Modes of the same single-node cluster, one after the other in one run:

- none:         no NamespaceType, empty plugstack (no namespace at all)
- linux:        NamespaceType=namespace/linux (Slurm's plugin, the anchor), same namespace.yaml
- jobns:        the jobns SPANK plugin
- jobns-native: NamespaceType=namespace/jobns (`jobns slurm build-plugin --native` against
                Debian's 26.05 source, see tests/slurm/jobns_slurm_native.py); recorded as
                skipped when no source tree can be had

Every mode uses PrologFlags=Contain, proctrack/linuxproc, task/none and a node declared
with 210 CPUs (SlurmdParameters=config_overrides) so that 200 one-CPU jobs run at once on
this 2-core machine. Figures per mode:

- `srun -n1 true`: wall time as jobns-alice, node idle and queue empty before each run
  (includes entering the box with nsenter and runuser, a few ms, the same in every mode);
- 50 short jobs: an array of 50 `true` batch jobs, from submission to the queue empty and
  the node idle (jobs/s); all 50 may run at once;
- 200 concurrent jobs (`--quick`: 20): an array of `sleep` jobs, all running, then the
  node's mountinfo lines per job (the node's mount namespace: what every new namespace
  copies), the mountinfo lines of the newest job's own namespace, `srun -n1 true` latency
  with them running, and from `scancel` to no job directory left under the base paths and
  to the node idle with an empty queue.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

from bench.common import Results, log, now

SECTION = "slurm26"
ROOT = "/var/tmp/jobns-bench-slurm26"
MODES = ("none", "linux", "jobns", "jobns-native")
USER = "jobns-alice"
CPUS = 210

_TESTS_SLURM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "tests", "slurm")


def _import_fixture():
    if _TESTS_SLURM not in sys.path:
        sys.path.insert(0, _TESTS_SLURM)
    import jobns_slurm_box as jsb
    return jsb


def make_cluster(jsb):
    class WideCluster(jsb.BoxCluster):
        """The 26.05 fixture cluster, declared with CPUS CPUs."""

        def _hardware(self) -> dict[str, str]:
            hw = super()._hardware()
            hw.update(CPUs=str(CPUS), SocketsPerBoard="1", CoresPerSocket=str(CPUS),
                      ThreadsPerCore="1")
            return hw

        def write_slurm_conf(self, extra: tuple[str, ...] = ()) -> None:
            super().write_slurm_conf(("SlurmdParameters=config_overrides",
                                      "MaxJobCount=20000", *extra))

    return WideCluster(ROOT, jsb.SUITES["26.05"])


def _job_dirs(cluster) -> int:
    """Job directories (numeric names) under the node's base path, at depth 1 or 2
    (namespace/linux puts them under <base>/<node>/ on a multiple-slurmd build)."""
    base = cluster.node_path(cluster.base)
    n = 0
    try:
        for e in os.scandir(base):
            if e.name.isdigit():
                n += 1
            elif e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
                n += sum(1 for s in os.scandir(e.path) if s.name.isdigit())
    except FileNotFoundError:
        pass
    return n


def _node_mountinfo_lines(cluster) -> int:
    with open(f"/proc/{cluster._pid()}/mountinfo", "rb") as f:
        return f.read().count(b"\n")


def _stable_mountinfo_lines(cluster) -> int:
    """The node's mountinfo line count once it stopped changing for 2 s (job namespaces
    are pinned a moment after their directory appears)."""
    last, since = _node_mountinfo_lines(cluster), time.monotonic()
    end = since + 120
    while time.monotonic() < end:
        time.sleep(0.5)
        n = _node_mountinfo_lines(cluster)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= 2:
            break
    return last


def _queue(cluster) -> list[str]:
    return cluster.cmd(["squeue", "-h", "-o", "%i"], timeout=60).stdout.split()


def _srun_ms(cluster) -> float | None:
    t = now()
    r = cluster.srun(USER, ["true"], "-n1", timeout=120)
    return (now() - t) * 1000 if r.returncode == 0 else None


def _array(cluster, n: int, command: str) -> str:
    r = cluster.as_user(USER, ["sbatch", "--parsable", "-o", "/dev/null", f"--array=1-{n}",
                               "-n1", f"--wrap={command}"], timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"sbatch --array failed: {r.stderr}")
    return r.stdout.strip().split(";")[0]


def _wait(pred, timeout: float, what: str) -> float:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return now()
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def _set_mode(cluster, jsn_state: dict, mode: str) -> None:
    cluster.container = "slurm" if mode == "linux" else "none"
    cluster.spank = mode == "jobns"
    cluster.start()
    if mode == "jobns-native":
        jsn = jsn_state["module"]
        tree, build = jsn.source_tree(jsn.node_version(cluster))
        _, lines = jsn.build_native(cluster, tree, build)
        jsn.use_native(cluster, lines)


def _run_mode(res: Results, cluster, mode: str, runs: int, concurrent: int, info: dict):
    ms = _srun_ms(cluster)
    probe = cluster.srun(USER, ["readlink", "/proc/self/ns/mnt"])
    node_ns = cluster.run(["readlink", "/proc/self/ns/mnt"]).stdout.strip()
    info["task_in_private_mntns"] = probe.returncode == 0 and probe.stdout.strip() != node_ns
    if ms is None:
        raise RuntimeError(f"srun fails: {probe.stderr.strip()[-300:]}")
    # 1. srun overhead
    times = []
    for _ in range(runs):
        cluster.wait_idle()
        ms = _srun_ms(cluster)
        if ms is not None:
            times.append(ms)
    info["srun_failures"] = runs - len(times)
    res.timing(SECTION, f"srun -n1 true [{mode}]", times)

    # 2. 50 short jobs
    cluster.wait_idle()
    t0 = now()
    _array(cluster, 50, "true")
    t1 = _wait(lambda: not _queue(cluster) and _job_dirs(cluster) == 0, 600,
               "50 short jobs to finish")
    cluster.wait_idle(timeout=120)
    res.value(SECTION, f"50 short jobs: submit to empty queue [{mode}]", t1 - t0, "s")
    res.value(SECTION, f"50 short jobs: throughput [{mode}]", 50 / (t1 - t0), "jobs/s")

    # 3. concurrency
    cluster.wait_idle()
    lines0 = _stable_mountinfo_lines(cluster)
    _array(cluster, concurrent, "sleep 3000")
    want_dirs = 0 if mode == "none" else concurrent

    def all_running():
        r = cluster.cmd(["squeue", "-h", "-t", "R", "-o", "%i"], timeout=60)
        return len(r.stdout.split()) == concurrent and _job_dirs(cluster) >= want_dirs
    t_start = now()
    _wait(all_running, 1200, f"{concurrent} jobs running")
    info["concurrent_start_s"] = round(now() - t_start, 1)
    lines1 = _stable_mountinfo_lines(cluster)
    res.value(SECTION, f"{concurrent} jobs: node mountinfo lines per job [{mode}]",
              (lines1 - lines0) / concurrent, "lines",
              note=f"{lines0} -> {lines1}")
    jobs = cluster.cmd(["squeue", "-h", "-o", "%A", "-t", "R"]).stdout.split()
    newest = max(jobs, key=int)
    r = cluster.srun(USER, ["sh", "-c", "wc -l < /proc/self/mountinfo"], f"--jobid={newest}",
                     "--overlap", timeout=120)
    if r.returncode == 0:
        res.value(SECTION, f"{concurrent} jobs: mountinfo lines inside the newest job "
                           f"[{mode}]", float(r.stdout.strip()), "lines")
    lat = [ms for ms in (_srun_ms(cluster) for _ in range(max(5, runs // 2))) if ms]
    res.timing(SECTION, f"{concurrent} jobs: srun -n1 true [{mode}]", lat)
    t0 = now()
    cluster.cmd(["scancel", "-u", USER], timeout=120)
    t_base = _wait(lambda: _job_dirs(cluster) == 0, 1200, "the base path to empty")
    t_idle = _wait(lambda: not _queue(cluster) and cluster.node_state() == "idle", 1200,
                   "the node to be idle")
    if mode != "none":   # no namespaces, no job directories
        res.value(SECTION, f"{concurrent} jobs: scancel to empty base_path [{mode}]",
                  t_base - t0, "s")
    res.value(SECTION, f"{concurrent} jobs: scancel to idle node [{mode}]", t_idle - t0, "s")
    left = [m for m in cluster.mounts_under(cluster.base) if m != cluster.base]
    info["mounts_left_under_base"] = len(left)


def run(res: Results, runs: int, quick: bool) -> None:
    runs = 5 if quick else min(max(runs, 10), 30)
    concurrent = 20 if quick else 200
    if os.geteuid() != 0:
        res.sections[SECTION] = {"skipped": "needs root (starts slurmctld/slurmd/munged)"}
        return
    try:
        jsb = _import_fixture()
        import jobns_slurm_native as jsn
    except Exception as e:   # the fixture module is missing or broken
        res.sections[SECTION] = {"skipped": f"tests/slurm fixture: {e}"}
        return
    cluster = make_cluster(jsb)
    info: dict = {"runs": runs, "concurrent": concurrent, "user": USER, "node_cpus": CPUS,
                  "slurm": "26.05 (Debian sid)", "modes": {}}
    try:
        for mode in MODES:
            log(f"slurm26: mode {mode}")
            m = info["modes"][mode] = {}
            t = now()
            try:
                _set_mode(cluster, {"module": jsn}, mode)
                m["start_s"] = round(now() - t, 1)
                _run_mode(res, cluster, mode, runs, concurrent, m)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                m["skipped"] = f"{type(e).__name__}: {e}"[:800]
                log(f"slurm26: mode {mode}: {m['skipped']}")
            finally:
                w = cluster.stop()
                if w:
                    m["teardown_warnings"] = w
    finally:
        cluster.stop()
        if os.path.isdir(ROOT):
            shutil.rmtree(ROOT, ignore_errors=True)
    for row in [r for r in res.rows if r.section == SECTION]:
        for mode in ("jobns", "jobns-native"):
            if row.name.endswith(f"[{mode}]"):
                res.compare(row, res.get(SECTION, row.name[:-len(mode) - 2] + "[linux]"))
    none = res.get(SECTION, "srun -n1 true [none]")
    for mode in ("linux", "jobns", "jobns-native"):
        row = res.get(SECTION, f"srun -n1 true [{mode}]")
        if row is not None and none is not None:
            res.value(SECTION, f"srun -n1 true: overhead over none [{mode}]",
                      row.central - none.central, "ms")
    res.sections[SECTION] = info
