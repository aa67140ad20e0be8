"""Section 2: job start overhead under a real Slurm 22.05 (Debian's packages, single node on
localhost). `srun -n1 true` and `srun -n2 true` wall time, run as an ordinary user, in four
modes of the same cluster, one after the other in the same run:

- none:    JobContainerType=job_container/none, no PrologFlags, no SPANK plugin
- contain: job_container/none + PrologFlags=Contain (the extern step alone, no namespace)
- tmpfs:   Slurm's own job_container/tmpfs + PrologFlags=Contain (job_container.conf)
- jobns:   job_container/none + PrologFlags=Contain + the jobns SPANK plugin

Every srun starts on an idle node with an empty queue (the queue is polled between runs,
outside the timing). The cluster comes from the Slurm test fixture
(tests/slurm/jobns_slurm_cluster.py); `ModeCluster` below only rewrites the two lines of
slurm.conf and the plugstack that differ between modes. If Slurm cannot be brought up the
section records "skipped: <reason>" and the rest of the benchmark runs.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys

from bench.common import JOBNS, Results, log, mounts_under, now

SECTION = "slurm"
ROOT = "/var/tmp/jobns-bench-slurm"
MODES = ("none", "contain", "tmpfs", "jobns")
USER = "jobns-alice"

_TESTS_SLURM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "tests", "slurm")


def _import_fixture():
    if _TESTS_SLURM not in sys.path:
        sys.path.insert(0, _TESTS_SLURM)
    import jobns_slurm_cluster as jsc
    return jsc


def make_cluster(jsc):
    class ModeCluster(jsc.Cluster):
        """The fixture's cluster with a selectable container mode."""

        mode = "jobns"

        def write_slurm_conf(self) -> None:
            super().write_slurm_conf()
            with open(self.conf) as f:
                lines = f.read().splitlines()
            out = []
            for ln in lines:
                if ln.startswith("JobContainerType="):
                    ln = ("JobContainerType=job_container/tmpfs" if self.mode == "tmpfs"
                          else "JobContainerType=job_container/none")
                if ln.startswith("PrologFlags=") and self.mode == "none":
                    continue
                out.append(ln)
            with open(self.conf, "w") as f:
                f.write("\n".join(out) + "\n")
            jc = os.path.join(self.etc, "job_container.conf")
            if self.mode == "tmpfs":
                with open(jc, "w") as f:
                    f.write(f"AutoBasePath=true\nBasePath={self.root}/jc\n")
                os.chmod(jc, 0o644)
            elif os.path.exists(jc):
                os.unlink(jc)

        def build_plugin(self) -> str:
            if self.mode == "jobns":
                return super().build_plugin()
            with open(self.plugstack, "w") as f:
                f.write("")
            os.chmod(self.plugstack, 0o644)
            return ""

    return ModeCluster(ROOT, JOBNS)


def _srun(cluster, argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    pw = pwd.getpwnam(USER)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": pw.pw_dir,
           "USER": USER, "LOGNAME": USER, "SLURM_CONF": cluster.conf}
    t = now()
    r = subprocess.run(["srun", *argv], env=env, cwd=pw.pw_dir, user=pw.pw_uid,
                       group=pw.pw_gid, extra_groups=[], capture_output=True, text=True,
                       timeout=120)
    return (now() - t) * 1000, r


def _host_mntns() -> str:
    return os.readlink("/proc/self/ns/mnt")


def run(res: Results, runs: int, quick: bool) -> None:
    n = 5 if quick else max(runs, 20)
    if os.geteuid() != 0:
        res.sections[SECTION] = {"skipped": "needs root (starts slurmctld/slurmd/munged)"}
        return
    try:
        jsc = _import_fixture()
    except Exception as e:   # the fixture module is missing or broken
        res.sections[SECTION] = {"skipped": f"tests/slurm/jobns_slurm_cluster.py: {e}"}
        return
    reason = jsc.install_packages()
    if reason:
        res.sections[SECTION] = {"skipped": reason}
        return
    cluster = make_cluster(jsc)
    info: dict = {"runs": n, "series": "isolated: node idle and queue empty before every run",
                  "user": USER, "modes": {}}
    try:
        for mode in MODES:
            cluster.mode = mode
            log(f"slurm: starting the cluster in mode {mode}")
            t = now()
            try:
                cluster.start()
            except Exception as e:
                info["modes"][mode] = {"skipped": f"cluster start failed: {e}"[:600]}
                log(f"slurm: mode {mode} skipped: {e}")
                continue
            info["modes"][mode] = {"start_s": round(now() - t, 2)}
            ms, r = _srun(cluster, ["readlink", "/proc/self/ns/mnt"])
            private = r.returncode == 0 and r.stdout.strip() != _host_mntns()
            info["modes"][mode]["task_in_private_mntns"] = private
            if r.returncode != 0:
                info["modes"][mode]["skipped"] = f"srun failed: {r.stderr.strip()[-400:]}"
                log(f"slurm: srun fails in mode {mode}: {r.stderr.strip()[-200:]}")
                continue
            for argv in (["-n1", "true"], ["-n2", "true"]):   # warm-up
                cluster.wait_idle()
                _srun(cluster, argv)
            t1, t2, fails = [], [], 0
            for _ in range(n):
                for argv, out in ((["-N1", "-n1", "true"], t1), (["-n2", "true"], t2)):
                    cluster.wait_idle()
                    ms, r = _srun(cluster, argv)
                    if r.returncode != 0:
                        fails += 1
                        continue
                    out.append(ms)
            info["modes"][mode]["failed_runs"] = fails
            res.timing(SECTION, f"srun -n1 true [{mode}]", t1)
            res.timing(SECTION, f"srun -n2 true [{mode}]", t2)
    except KeyboardInterrupt:
        raise
    finally:
        log("slurm: stopping the cluster")
        warnings = cluster.stop()
        if warnings:
            info["teardown_warnings"] = warnings
        if os.path.isdir(ROOT) and not mounts_under(ROOT):
            shutil.rmtree(ROOT, ignore_errors=True)
    for cmd in ("-n1", "-n2"):
        rows = {m: res.get(SECTION, f"srun {cmd} true [{m}]") for m in MODES}
        none = rows["none"]
        for m in ("contain", "tmpfs", "jobns"):
            if rows[m] is not None:
                res.compare(rows[m], none)
        if none is None:
            continue
        over = {m: rows[m].central - none.central for m in ("contain", "tmpfs", "jobns")
                if rows[m] is not None}
        for m, v in over.items():
            res.value(SECTION, f"srun {cmd}: overhead over none [{m}]", v, "ms")
        if "jobns" in over and "tmpfs" in over:
            row = res.get(SECTION, f"srun {cmd}: overhead over none [jobns]")
            row.anchor = f"srun {cmd}: overhead over none [tmpfs]"
            row.ratio = over["jobns"] / over["tmpfs"] if over["tmpfs"] else None
            row.target = "<= tmpfs overhead"
            row.met = over["jobns"] <= over["tmpfs"]
        if rows["contain"] is not None:
            for m in ("tmpfs", "jobns"):
                if rows[m] is not None:
                    res.value(SECTION, f"srun {cmd}: namespace cost over contain [{m}]",
                              rows[m].central - rows["contain"].central, "ms")
    res.sections[SECTION] = info
