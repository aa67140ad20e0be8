"""Section: job throughput under a real Slurm 22.05, the way a user with many short jobs
meets it (the `slurm` section waits for an idle node before every run, so it never counts
the epilog).

Figures, for each mode, measured in rounds that alternate the modes within one run:

- **N short jobs**: `sbatch --wrap true` N times (50 by default, `--jobs`) as fast as
  possible, until the queue is empty again (every job's epilog done). Submission counts.
- **back to back**: `srun -n1 true` (then `srun -n2 true`) run again as soon as the last
  one returned, without waiting for the node to be idle; median and p90.
- **concurrent** (`--concurrent`, 200 by default; 0 skips it): that many `sleep 600` batch
  jobs on one node (a partition with OverSubscribe=FORCE), time until every job's script
  has started, then `scancel` of all of them until the queue is empty and the mode's
  base path holds no job.

Modes: `contain` (no namespace plugin + PrologFlags=Contain), `slurm` (Slurm's own plugin:
job_container/tmpfs on 22.05, namespace/linux on 26.05; the anchor of every ratio), `jobns`
(the SPANK plugin with the per-node service), `jobns-cli` (the SPANK plugin running `jobns
slurm prolog/epilog` as a process per job, `service=no`: what jobns cost before the service,
and what the plugin falls back to), and on request (`--modes`) `jobns-native` (the native
plugin, built against the cached configured Slurm source tree of
tests/slurm/jobns_slurm_native.py, using the service). With `--loaded` the rounds are
repeated with two busy loops on the CPUs.

The cluster is the Slurm test fixture's (tests/slurm/jobns_slurm_cluster.py) under its own
root, restarted for each mode; jobs run as the fixture's user `jobns-alice`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time

from bench import sec_slurm
from bench.common import JOBNS, Node, Results, log, loadavg, mounts_under, now

SECTION = "throughput"
ROOT = "/var/tmp/jobns-bench-throughput"
MODES = ("contain", "slurm", "jobns", "jobns-cli")   # and "jobns-native" (--modes)
ANCHOR = "slurm"
USER = sec_slurm.USER
WIDE = "wide"            # the oversubscribed partition of the concurrent figure

TARGETS = {"short jobs": 1.1, "srun -n1 true back to back": 1.1,
           "concurrent start": 1.2, "concurrent teardown": 1.2}


def make_cluster(jsc, jsb, version: str):
    root = ROOT if version == jsb.HOST_VERSION else f"{ROOT}-{version}"
    base = type(jsb.cluster_for(version, root, JOBNS))

    class ThroughputCluster(base):
        """The fixture's cluster (22.05 on the host, newer ones in their Debian box) with
        a selectable mode and an oversubscribed partition for the concurrent figure."""

        mode = "jobns"

        def set_mode(self, mode: str) -> None:
            self.mode = mode
            self.container = "slurm" if mode == "slurm" else "none"
            self.spank = mode in ("jobns", "jobns-cli")

        def start(self) -> None:
            super().start()
            if self.mode == "jobns-native":
                # the native plugin (job_container/jobns, namespace/jobns) built against
                # the cached configured source tree of the node's Slurm, with the service
                import jobns_slurm_native as jsn
                tree, build = jsn.source_tree(jsn.node_version(self))
                _, lines = jsn.build_native(self, tree, build)
                jsn.use_native(self, lines)

        def node_state(self, node: str | None = None) -> str:
            # the node is in two partitions: sinfo -N prints it once per partition
            return (super().node_state(node).splitlines() or [""])[0]

        def write_slurm_conf(self, extra: tuple[str, ...] = ()) -> None:
            super().write_slurm_conf(extra + (
                f"PartitionName={WIDE} Nodes={self.node} MaxTime=INFINITE State=UP "
                "OverSubscribe=FORCE:256",))

        def build_plugin(self, *extra: str) -> str:
            if self.mode == "jobns-cli":
                extra = ("--no-service", *extra)
            return super().build_plugin(*extra)

    if version == jsb.HOST_VERSION:
        return ThroughputCluster(root, JOBNS)
    return ThroughputCluster(root, jsb.SUITES[version])


def _plugin_name(cluster) -> str:
    return "namespace/linux" if cluster.version >= (25, 11) else "job_container/tmpfs"


def _user_env(cluster) -> tuple[pwd.struct_passwd, dict]:
    pw = pwd.getpwnam(USER)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": pw.pw_dir,
           "USER": USER, "LOGNAME": USER, "SLURM_CONF": cluster.conf}
    return pw, env


def _as_user(cluster, argv: list[str], timeout: float = 120,
             input: str | None = None) -> subprocess.CompletedProcess:
    if cluster.node_argv(["x"]) != ["x"]:         # a Debian box: enter it (nsenter, runuser)
        return cluster.as_user(USER, argv, timeout=timeout, input=input)
    pw, env = _user_env(cluster)
    return subprocess.run(argv, env=env, cwd=pw.pw_dir, user=pw.pw_uid, group=pw.pw_gid,
                          extra_groups=[], capture_output=True, text=True, timeout=timeout,
                          input=input)


def _queue(cluster) -> list[str]:
    return cluster.cmd(["squeue", "-h", "-o", "%i"], timeout=30).stdout.split()


# Slurm 22.05 sometimes fails a batch launch among many concurrent ones ("Waiting for
# JobId=N REQUEST_LAUNCH_PROLOG notification failed"), requeues the job and holds it; the
# bench releases such jobs and counts them (per mode, in the JSON).
HELD = {"count": 0}


def _release_held(cluster) -> None:
    r = cluster.cmd(["squeue", "-h", "-t", "PD", "-o", "%i %r"], timeout=30)
    held = [ln.split()[0] for ln in r.stdout.splitlines() if "Held" in ln]
    if held:
        HELD["count"] += len(held)
        cluster.cmd(["scontrol", "release", ",".join(held)], timeout=30)


def _wait_empty(cluster, timeout: float, poll: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    last = time.monotonic()
    while time.monotonic() < end:
        if not _queue(cluster):
            return True
        if time.monotonic() - last > 2:
            _release_held(cluster)
            last = time.monotonic()
        time.sleep(poll)
    return False


def _job_dirs(cluster) -> list[str]:
    """Job directories the mode's base path still holds (Slurm's plugin: BasePath)."""
    out = []
    for base in (cluster.base, os.path.join(cluster.root, "jc")):
        try:
            names = os.listdir(base)
        except OSError:
            continue
        out += [n for n in names if n[:1].isdigit()]
    return out


def short_jobs(cluster, n: int) -> float:
    """Seconds from the first sbatch until the queue is empty again."""
    t = now()
    for _ in range(n):
        r = _as_user(cluster, ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "true"])
        if r.returncode != 0:
            raise RuntimeError(f"sbatch failed: {r.stderr.strip()[-300:]}")
    if not _wait_empty(cluster, 60 + n * 2):
        raise RuntimeError(f"{n} short jobs not done after {60 + n * 2} s")
    return now() - t


def back_to_back(cluster, argv: list[str], n: int) -> tuple[list[float], int]:
    out, fails = [], 0
    for _ in range(n):
        t = now()
        r = _as_user(cluster, ["srun", *argv])
        ms = (now() - t) * 1000
        if r.returncode != 0:
            fails += 1
            continue
        out.append(ms)
    return out, fails


def concurrent(cluster, n: int) -> tuple[float, float]:
    """(seconds until all n jobs' scripts run, seconds from scancel until all gone)."""
    marks = os.path.join(cluster.root, "started")      # the same path in a box
    shutil.rmtree(marks, ignore_errors=True)
    os.makedirs(marks, mode=0o1777)
    os.chmod(marks, 0o1777)
    script = f"touch {marks}/$SLURM_JOB_ID\nexec sleep 600\n"
    t = now()
    for _ in range(n):
        r = _as_user(cluster, ["sbatch", "--parsable", "-o", "/dev/null", "-p", WIDE, "-n1"],
                     input="#!/bin/sh\n" + script, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"sbatch failed: {r.stderr.strip()[-300:]}")
    end = time.monotonic() + 120 + n
    last = time.monotonic()
    while len(os.listdir(marks)) < n:
        if time.monotonic() > end:
            raise RuntimeError(f"only {len(os.listdir(marks))} of {n} jobs started")
        if time.monotonic() - last > 2:
            _release_held(cluster)
            last = time.monotonic()
        time.sleep(0.1)
    started = now() - t
    t = now()
    jobs = _queue(cluster)
    cluster.cmd(["scancel", "-u", USER], timeout=60)
    end = time.monotonic() + 120 + n
    while _queue(cluster) or _job_dirs(cluster):
        if time.monotonic() > end:
            raise RuntimeError(f"not torn down: queue {_queue(cluster)[:5]}, "
                               f"dirs {_job_dirs(cluster)[:5]}")
        time.sleep(0.05)
    gone = now() - t
    if len(jobs) < n:
        log(f"throughput: only {len(jobs)} of {n} jobs were in the queue at scancel")
    shutil.rmtree(marks, ignore_errors=True)
    return started, gone


class Busy:
    """Two busy loops (one per CPU of the project VM), niced like ordinary user work."""

    def __init__(self, count: int = 2):
        self.count = count
        self.procs: list[subprocess.Popen] = []

    def __enter__(self):
        for _ in range(self.count):
            self.procs.append(subprocess.Popen(["sh", "-c", "while :; do :; done"]))
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def _one_series(cluster, res: Results, info: dict, tag: str, rounds: int, n_jobs: int,
                runs: int, n_conc: int, modes: tuple[str, ...]) -> None:
    data = {m: {"short": [], "n1": [], "n2": [], "conc_start": [], "conc_gone": [],
                "fails": 0} for m in modes}
    for rnd in range(rounds):
        for mode in (modes if rnd % 2 == 0 else tuple(reversed(modes))):
            d = data[mode]
            if d.get("skipped"):
                continue
            HELD["count"] = 0
            cluster.set_mode(mode)
            log(f"throughput{tag}: round {rnd + 1}/{rounds}, mode {mode} (load {loadavg()})")
            try:
                cluster.start()
                r = _as_user(cluster, ["srun", "readlink", "/proc/self/ns/mnt"])
                if r.returncode != 0:
                    raise RuntimeError(f"srun fails: {r.stderr.strip()[-300:]}")
                d["private"] = r.stdout.strip() != cluster.run(
                    ["readlink", "/proc/self/ns/mnt"]).stdout.strip()
                info["slurm"] = ".".join(map(str, cluster.version))
                info["slurm_plugin"] = _plugin_name(cluster)
                back_to_back(cluster, ["-n1", "true"], 3)        # warm-up
                cluster.wait_idle()
                d["short"].append(short_jobs(cluster, n_jobs))
                for argv, key in ((["-n1", "true"], "n1"), (["-n2", "true"], "n2")):
                    cluster.wait_idle()
                    ms, fails = back_to_back(cluster, argv, runs)
                    d[key] += ms
                    d["fails"] += fails
                if n_conc:
                    cluster.wait_idle()
                    s, g = concurrent(cluster, n_conc)
                    d["conc_start"].append(s)
                    d["conc_gone"].append(g)
            except Exception as e:
                d["skipped"] = f"{type(e).__name__}: {e}"[:600]
                log(f"throughput{tag}: mode {mode} failed: {e}")
            finally:
                d["launch_failures_requeued"] = d.get("launch_failures_requeued", 0) + \
                    HELD["count"]
                try:        # prologs/epilogs that found no service (ran the CLI instead)
                    d["service_fallbacks"] = d.get("service_fallbacks", 0) + \
                        cluster.slurmd_log().count("no jobns service at")
                except OSError:
                    pass
                w = cluster.stop()
                if w:
                    info.setdefault("teardown_warnings", []).extend(w)
    for mode in modes:
        d = data[mode]
        info["modes"][mode + tag] = {k: d[k] for k in ("fails", "skipped", "private",
                                                        "launch_failures_requeued",
                                                        "service_fallbacks") if k in d}
        if d["short"]:
            res.timing(SECTION, f"{n_jobs} short jobs, until all done [{mode}]{tag}",
                       d["short"], "s")
        for key, name in (("n1", "srun -n1 true back to back"),
                          ("n2", "srun -n2 true back to back")):
            if d[key]:
                res.timing(SECTION, f"{name} [{mode}]{tag}", d[key])
        if d["conc_start"]:
            res.timing(SECTION, f"{n_conc} concurrent jobs: all started [{mode}]{tag}",
                       d["conc_start"], "s")
            res.timing(SECTION, f"{n_conc} concurrent jobs: scancel until all gone "
                       f"[{mode}]{tag}", d["conc_gone"], "s")
    # ratios to Slurm's own plugin, by median
    figures = [(f"{n_jobs} short jobs, until all done", "short jobs"),
               ("srun -n1 true back to back", "srun -n1 true back to back"),
               ("srun -n2 true back to back", None),
               (f"{n_conc} concurrent jobs: all started", "concurrent start"),
               (f"{n_conc} concurrent jobs: scancel until all gone", "concurrent teardown")]
    for name, target in figures:
        anchor = res.get(SECTION, f"{name} [{ANCHOR}]{tag}")
        for mode in modes:
            if mode == ANCHOR:
                continue
            row = res.get(SECTION, f"{name} [{mode}]{tag}")
            if row is None or anchor is None:
                continue
            res.compare(row, anchor)
            if target and mode in ("jobns", "jobns-native") and row.ratio is not None:
                row.target = f"<= {TARGETS[target]}x {ANCHOR}"
                row.met = row.ratio <= TARGETS[target]


def job_paths(res: Results, runs: int) -> None:
    """The prolog and epilog themselves, without Slurm, on an idle node: through the jobns
    service (what the SPANK plugin does), as `jobns slurm prolog|epilog` processes (the
    plugin's fallback, service=no, Prolog=/Epilog= scripts), and the in-process API (the
    namespace work alone). "Added" = service round trip minus the API's time."""
    from jobns import lifecycle
    from jobns.slurm import service
    tag = " [no Slurm]"
    with Node("throughput") as node:
        env = node.env()
        env["JOBNS_RUNTIME_DIR"] = node.runtime
        proc = subprocess.Popen([JOBNS, "slurm", "service", "--foreground"], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            sock = os.path.join(node.runtime, service.SOCKET)
            end = time.monotonic() + 30
            while not os.path.exists(sock) and time.monotonic() < end:
                time.sleep(0.02)
            job_env = {"SLURM_JOB_UID": "65534", "SLURM_JOB_GID": "65534",
                       "SLURM_JOB_USER": "nobody"}
            sp, se, cp, ce, ap, ae = [], [], [], [], [], []
            cfg = node.cfg()
            for i in range(runs + 3):
                job_env["SLURM_JOB_ID"] = str(910000 + i)
                t = now()
                r = service.call(node.runtime, "prolog", job_env, config=node.config_file)
                a = (now() - t) * 1000
                time.sleep(0.02)
                t = now()
                r2 = service.call(node.runtime, "epilog", job_env, config=node.config_file)
                b = (now() - t) * 1000
                time.sleep(0.05)        # the removal after the answer
                if not r or not r2 or r[0] or r2[0]:
                    raise RuntimeError(f"service prolog/epilog failed: {r} {r2}")
                if i >= 3:
                    sp.append(a)
                    se.append(b)
            for i in range(runs):
                e = dict(env, SLURM_JOB_ID=str(920000 + i), **{k: v for k, v in
                                                               job_env.items()
                                                               if k != "SLURM_JOB_ID"})
                for op, out in (("prolog", cp), ("epilog", ce)):
                    t = now()
                    subprocess.run([JOBNS, "-q", "--config", node.config_file, "slurm", op],
                                   env=e, check=True, stdin=subprocess.DEVNULL)
                    out.append((now() - t) * 1000)
            for i in range(runs + 3):
                j = node.job(str(930000 + i))
                t = now()
                lifecycle.create(cfg, j)
                a = (now() - t) * 1000
                t = now()
                lifecycle.delete(cfg, j.job_id)
                b = (now() - t) * 1000
                if i >= 3:
                    ap.append(a)
                    ae.append(b)
        finally:
            proc.terminate()
            proc.wait(30)
    api_c = res.timing(SECTION, "API create (namespace work alone)" + tag, ap)
    api_d = res.timing(SECTION, "API delete, empty job" + tag, ae)
    for name, vals, anchor in (("prolog through the jobns service", sp, api_c),
                               ("epilog through the jobns service", se, api_d),
                               ("jobns slurm prolog (process)", cp, api_c),
                               ("jobns slurm epilog (process)", ce, api_d)):
        row = res.timing(SECTION, name + tag, vals)
        res.compare(row, anchor)
    for what, vals, anchor in (("prolog", sp, api_c), ("epilog", se, api_d)):
        added = res.value(SECTION, f"{what} through the service: added over the API" + tag,
                          row_median(vals) - anchor.central, "ms")
        added.target = "<= 5 ms"
        added.met = added.value <= 5


def row_median(vals: list[float]) -> float:
    import statistics
    return statistics.median(vals)


def run(res: Results, runs: int, quick: bool, *, jobs: int = 50, concurrent_jobs: int = 200,
        rounds: int | None = None, loaded: bool = False,
        modes: tuple[str, ...] = MODES, versions: tuple[str, ...] = ("22.05",)) -> None:
    if os.geteuid() != 0:
        res.sections[SECTION] = {"skipped": "needs root (starts slurmctld/slurmd/munged)"}
        return
    try:
        jsc = sec_slurm._import_fixture()
        import jobns_slurm_box as jsb
    except Exception as e:
        res.sections[SECTION] = {"skipped": f"tests/slurm/jobns_slurm_cluster.py: {e}"}
        return
    reason = jsc.install_packages()
    if reason:
        res.sections[SECTION] = {"skipped": reason}
        return
    if quick:
        jobs, concurrent_jobs, runs = min(jobs, 10), min(concurrent_jobs, 10), min(runs, 5)
    rounds = rounds or (1 if quick else 2)
    runs = min(runs, 20)
    info: dict = {"jobs": jobs, "runs": runs, "rounds": rounds, "concurrent": concurrent_jobs,
                  "user": USER, "modes": {}, "anchor": ANCHOR, "versions": {}}
    try:
        info["loadavg_job_paths"] = loadavg()
        job_paths(res, max(runs, 10))
    except Exception as e:
        info["job_paths_error"] = f"{type(e).__name__}: {e}"[:600]
        log(f"throughput: prolog/epilog paths: {e}")
    for version in versions:
        cluster = make_cluster(jsc, jsb, version)
        vinfo = info["versions"].setdefault(version, {"modes": {}})
        try:
            vinfo["loadavg_start"] = loadavg()
            _one_series(cluster, res, vinfo, f" ({version})", rounds, jobs, runs,
                        concurrent_jobs, modes)
            vinfo["loadavg_end"] = loadavg()
            if loaded:
                with Busy(2):
                    vinfo["loadavg_loaded_start"] = loadavg()
                    _one_series(cluster, res, vinfo, f" ({version}, 2 busy loops)",
                                max(1, rounds // 2),
                                jobs, runs, concurrent_jobs, modes)
                    vinfo["loadavg_loaded_end"] = loadavg()
        except Exception as e:
            vinfo["skipped"] = f"{type(e).__name__}: {e}"[:600]
            log(f"throughput: Slurm {version}: {e}")
        finally:
            w = cluster.stop()
            if w:
                vinfo.setdefault("teardown_warnings", []).extend(w)
            if os.path.isdir(cluster.root) and not mounts_under(cluster.root) and \
                    cluster.root == ROOT:
                shutil.rmtree(cluster.root, ignore_errors=True)
    res.sections[SECTION] = info
