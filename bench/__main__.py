"""`python -m bench`: every benchmark section, one table, bench/results.json.

    .venv/bin/python -m bench                      # everything (about 10-20 minutes)
    .venv/bin/python -m bench --quick              # smoke test: few runs, small trees
    .venv/bin/python -m bench --only lifecycle,scale --runs 50
    .venv/bin/python -m bench --only cleanup --ext4-1m
    .venv/bin/python -m bench --only throughput --jobs 50 --concurrent 200 --loaded

The benchmark reports; it never fails because a target is missed (exit 0). It exits 1
only if a section crashed, 2 on bad arguments. Needs root (namespaces, mounts, Slurm).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
import traceback

SECTIONS = ("lifecycle", "slurm", "slurm26", "throughput", "cleanup", "scale", "memory")
DEFAULT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json")


def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="few runs, small trees, no 1M-file case (a smoke test)")
    ap.add_argument("--only", metavar="SECTION[,SECTION]",
                    help=f"run only these sections ({', '.join(SECTIONS)})")
    ap.add_argument("--runs", type=int, help="runs per timing (default 30; --quick: 5)")
    ap.add_argument("--json", metavar="PATH", default=DEFAULT_JSON,
                    help="where to write the results (default bench/results.json)")
    ap.add_argument("--ext4-1m", action="store_true",
                    help="cleanup: also the 1M-file tree on ext4 (slow to build)")
    ap.add_argument("--jobs", type=int, default=50,
                    help="throughput: short batch jobs per round (default 50)")
    ap.add_argument("--concurrent", type=int, default=200,
                    help="throughput: concurrent sleep jobs started and cancelled (default "
                         "200; 0 skips it)")
    ap.add_argument("--rounds", type=int,
                    help="throughput: rounds, modes alternated in each (default 2; --quick: 1)")
    ap.add_argument("--modes", help="throughput: modes to run (default "
                    "contain,slurm,jobns,jobns-cli)")
    ap.add_argument("--slurm-versions", default="22.05",
                    help="throughput: Slurm versions of the test fixture to run on "
                         "(default 22.05; e.g. 22.05,26.05)")
    ap.add_argument("--loaded", action="store_true",
                    help="throughput: repeat the rounds with two busy loops on the CPUs")
    args = ap.parse_args(argv)
    only = SECTIONS
    if args.only:
        only = tuple(s.strip() for s in args.only.split(",") if s.strip())
        bad = [s for s in only if s not in SECTIONS]
        if bad:
            ap.error(f"unknown section(s) {', '.join(bad)}; known: {', '.join(SECTIONS)}")
    if args.runs is not None and args.runs < 1:
        ap.error("--runs must be at least 1")
    args.sections = only
    args.runs = args.runs or (5 if args.quick else 30)
    return args


def _on_term(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = _parse(argv)
    if os.geteuid() != 0:
        print("python -m bench: needs root (it creates namespaces and mounts)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, _on_term)

    from bench import common
    stale = common.stale_roots()
    if stale:
        common.log(f"note: left by an earlier run (remove them when nothing uses them): "
                   f"{', '.join(stale)}")
    res = common.Results()
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": platform.node(), "kernel": platform.release(),
        "cpus": os.cpu_count(), "python": sys.version.split()[0],
        "quick": args.quick, "runs": args.runs, "sections": list(args.sections),
        "loadavg_start": common.loadavg(),
    }
    crashed = []
    t_all = time.monotonic()
    try:
        for name in args.sections:
            t0 = time.monotonic()
            load0 = common.loadavg()
            try:
                mod = __import__(f"bench.sec_{name}", fromlist=["run"])
                if name == "cleanup":
                    mod.run(res, args.runs, args.quick, ext4_1m=args.ext4_1m)
                elif name == "throughput":
                    kw = {"modes": tuple(args.modes.split(","))} if args.modes else {}
                    kw["versions"] = tuple(v for v in args.slurm_versions.split(",") if v)
                    mod.run(res, args.runs, args.quick, jobs=args.jobs,
                            concurrent_jobs=args.concurrent, rounds=args.rounds,
                            loaded=args.loaded, **kw)
                else:
                    mod.run(res, args.runs, args.quick)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                crashed.append(name)
                res.sections.setdefault(name, {})["error"] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
            sec = res.sections.setdefault(name, {})
            sec["seconds"] = round(time.monotonic() - t0, 1)
            sec["loadavg_before"] = load0
            sec["loadavg_after"] = common.loadavg()
    except KeyboardInterrupt:
        common.log("interrupted: everything this run made has been removed")
        meta["interrupted"] = True
    meta["seconds"] = round(time.monotonic() - t_all, 1)
    meta["loadavg_end"] = common.loadavg()
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")

    print(f"\njobns benchmark  {meta['started']}  {meta['host']} kernel {meta['kernel']}  "
          f"{meta['cpus']} CPUs  load {meta['loadavg_start']} -> {meta['loadavg_end']}  "
          f"{meta['seconds']} s{'  (quick)' if args.quick else ''}")
    for name in args.sections:
        rows = [r for r in res.rows if r.section == name]
        info = res.sections.get(name, {})
        head = f"\n== {name}  ({info.get('seconds', '?')} s, load {info.get('loadavg_before')}" \
               f" -> {info.get('loadavg_after')})"
        print(head)
        if "skipped" in info:
            print(f"skipped: {info['skipped']}")
        if "error" in info:
            print(f"error: {info['error']}")
        for mode, m in (info.get("modes") or {}).items():
            if isinstance(m, dict) and m.get("skipped"):
                print(f"mode {mode} skipped: " + " / ".join(m["skipped"].splitlines()))
        if rows:
            print(common.format_table(rows))
    targets = [r for r in res.rows if r.met is not None]
    if targets:
        print(f"\ntargets: {sum(r.met for r in targets)} of {len(targets)} met"
              + "".join(f"\n  missed: {r.name}: {common._fmt(r.central, r.unit)} {r.unit}"
                        f" (target {r.target}" + (f", {r.ratio:.2f}x" if r.ratio else "") + ")"
                        for r in targets if not r.met))
    out = {"meta": meta, **res.to_json()}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\nwrote {args.json}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
