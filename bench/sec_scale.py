"""Section 4: scale. Create/delete latency of one more job with 0, 100 and 1,000 other job
namespaces alive; `restore` with 1,000 live jobs; host mountinfo lines added per job.

The background jobs are made in-process (lifecycle.create, built-in config: mnt only). At
each level (after a sync, so that the disk's writeback of the new jobs is not measured)
the probe job is created and deleted `runs` times, in-process and through the CLI; the
anchor is the same figure at level 0 in the same run.
"""

from __future__ import annotations

import os
import subprocess
import time

from jobns import lifecycle

from bench.common import JOBNS, Node, Results, log, mountinfo_lines, now, run_timed

SECTION = "scale"


def _probe(node: Node, cfg, runs: int, level: int, res: Results) -> None:
    c_api, d_api, c_cli, d_cli = [], [], [], []
    env = node.env()
    for i in range(runs + 2):
        j = f"probe{level}x{i}"
        t = now()
        lifecycle.create(cfg, node.job(j))
        c = (now() - t) * 1000
        t = now()
        lifecycle.delete(cfg, j)
        d = (now() - t) * 1000
        if i >= 2:
            c_api.append(c)
            d_api.append(d)
    for i in range(runs):
        j = f"probecli{level}x{i}"
        c_cli.append(run_timed([JOBNS, "create", j, "--user", "nobody"], env))
        d_cli.append(run_timed([JOBNS, "delete", j], env))
    for name, vals in ((f"API create @{level} jobs", c_api), (f"API delete @{level} jobs", d_api),
                       (f"CLI create @{level} jobs", c_cli), (f"CLI delete @{level} jobs", d_cli)):
        row = res.timing(SECTION, name, vals)
        if level:
            anchor = res.get(SECTION, name.replace(f"@{level} ", "@0 "))
            res.compare(row, anchor)
            row.target = "<= 1.2x p50 @0"
            row.met = row.ratio is not None and row.ratio <= 1.2


def run(res: Results, runs: int, quick: bool) -> None:
    levels = (0, 100) if quick else (0, 100, 1000)
    with Node("scale") as node:
        cfg = node.cfg()
        lifecycle.ensure_base(cfg)
        before = mountinfo_lines()
        alive = 0
        grow_ms = []
        for level in levels:
            log(f"scale: growing to {level} live jobs")
            while alive < level:
                t = now()
                lifecycle.create(cfg, node.job(f"bg{alive}"))
                grow_ms.append((now() - t) * 1000)
                alive += 1
            # Growing leaves the disk busy writing back hundreds of new job dirs for a few
            # seconds, which would be measured as "scale" (it doubled API create at 100
            # jobs). Flush it first, at every level alike, so that only the number of live
            # namespaces differs between levels.
            os.sync()
            time.sleep(2)
            log(f"scale: probing at {level} live jobs ({mountinfo_lines()} mountinfo lines)")
            _probe(node, cfg, runs, level, res)
        top = levels[-1]
        added = mountinfo_lines() - before
        res.value(SECTION, f"host mountinfo lines added per job (@{top})", added / top,
                  "lines", note=f"{added} lines for {top} jobs")
        inside = subprocess.run(["nsenter", f"--mount={node.base}/bg0/.ns/mnt", "cat",
                                 "/proc/self/mountinfo"], capture_output=True, text=True)
        host_now = mountinfo_lines()
        if inside.returncode == 0:
            res.value(SECTION, f"mountinfo lines inside a job ns (@{top})",
                      inside.stdout.count("\n"), "lines",
                      note=f"host has {host_now} lines")
        live = ",".join(f"bg{i}" for i in range(alive))
        log(f"scale: restore with {alive} live jobs")
        r_api, r_cli = [], []
        for _ in range(max(3, runs // 4)):
            t = now()
            rr = lifecycle.restore(cfg, set(live.split(",")))
            r_api.append((now() - t) * 1000)
            if rr.removed or rr.failed or len(rr.kept) != alive:
                raise RuntimeError(f"restore touched live jobs: {rr}")
            r_cli.append(run_timed([JOBNS, "restore", "--live", live], node.env()))
        res.timing(SECTION, f"API restore, {alive} live jobs", r_api)
        res.timing(SECTION, f"CLI restore --live <{alive} ids>", r_cli)
        log(f"scale: tearing down {alive} jobs")
        t = now()
        for i in range(alive):
            lifecycle.delete(cfg, f"bg{i}")
        teardown = (now() - t)
        res.value(SECTION, f"delete all {alive} background jobs", teardown, "s")
        res.sections[SECTION] = {"levels": list(levels),
                                 "background_create_ms_median": sorted(grow_ms)[len(grow_ms) // 2]
                                 if grow_ms else None,
                                 "config": "built-in (CLONE_NEWNS, dirs /tmp,/dev/shm)"}
