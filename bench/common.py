"""Shared pieces of the benchmark: statistics, result rows, the table, and an isolated node.

Every section gets a `Node`: its own base_path, runtime dir and namespace.yaml under
/var/tmp/jobns-bench-<tag>/ (never /var/lib/jobns), and removes every job, mount and file it
made when it is closed, also after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field

from jobns import kernel, lifecycle
from jobns.config.model import NodeConfig
from jobns.job import Job

VENV_BIN = os.path.dirname(os.path.abspath(sys.executable))
JOBNS = os.path.join(VENV_BIN, "jobns")
JOB_USER = "nobody"
ROOT_PREFIX = "/var/tmp/jobns-bench-"
NODE_NAME = "bench"                 # the node the benchmark's jobs belong to

PID_USER_FLAGS = ("CLONE_NEWPID", "CLONE_NEWUSER", "CLONE_NEWNS")


# ------------------------------------------------------------------ statistics

def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    xs = sorted(values)
    if not xs:
        return math.nan
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summarize(values: list[float]) -> dict:
    return {"n": len(values), "median": statistics.median(values) if values else math.nan,
            "p90": percentile(values, 90), "min": min(values) if values else math.nan,
            "max": max(values) if values else math.nan}


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ------------------------------------------------------------------ results

@dataclass
class Row:
    """One figure: a timing (stats over runs) or a single value, with its anchor."""

    section: str
    name: str
    unit: str                      # "ms", "s", "files/s", "KiB", "lines"
    stats: dict | None = None      # summarize() output, in `unit`
    value: float | None = None     # for single values
    anchor: str | None = None      # name of the row it is compared with
    ratio: float | None = None     # this / anchor (by median or value)
    target: str | None = None      # e.g. "<= 25 ms p50"
    met: bool | None = None
    note: str | None = None
    raw: list = field(default_factory=list)

    @property
    def central(self) -> float | None:
        if self.stats is not None:
            return self.stats["median"]
        return self.value


class Results:
    def __init__(self):
        self.rows: list[Row] = []
        self.sections: dict[str, dict] = {}

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def timing(self, section: str, name: str, values: list[float], unit: str = "ms",
               **kw) -> Row:
        return self.add(Row(section, name, unit, stats=summarize(values),
                            raw=[round(v, 6) for v in values], **kw))

    def value(self, section: str, name: str, value: float, unit: str, **kw) -> Row:
        return self.add(Row(section, name, unit, value=value, **kw))

    def get(self, section: str, name: str) -> Row | None:
        for r in self.rows:
            if r.section == section and r.name == name:
                return r
        return None

    def compare(self, row: Row, anchor: Row | None) -> None:
        if anchor is None or not anchor.central or row.central is None:
            return
        row.anchor = anchor.name
        row.ratio = row.central / anchor.central

    def to_json(self) -> dict:
        return {"sections": self.sections, "rows": [asdict(r) for r in self.rows]}


def _fmt(x: float | None, unit: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if unit in ("files/s", "dirs/s", "lines", "KiB", "count"):
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if abs(x) >= 1 else f"{x:.3f}"


def format_table(rows: list[Row]) -> str:
    head = ("figure", "unit", "n", "median", "p90", "min", "max", "anchor", "ratio", "target",
            "met")
    out = [head]
    for r in rows:
        if r.stats is not None:
            s = r.stats
            cells = (str(s["n"]), _fmt(s["median"], r.unit), _fmt(s["p90"], r.unit),
                     _fmt(s["min"], r.unit), _fmt(s["max"], r.unit))
        else:
            cells = ("1", _fmt(r.value, r.unit), "", "", "")
        met = "" if r.met is None else ("yes" if r.met else "NO")
        out.append((r.name, r.unit, *cells, r.anchor or "",
                    "" if r.ratio is None else f"{r.ratio:.2f}x", r.target or "", met))
    widths = [max(len(row[i]) for row in out) for i in range(len(head))]
    lines = []
    for i, row in enumerate(out):
        line = "  ".join(c.rjust(w) if 2 <= j <= 6 or j == 8 else c.ljust(w)
                         for j, (c, w) in enumerate(zip(row, widths)))
        lines.append(line.rstrip())
        if i == 0:
            lines.append("-" * len(line))
    return "\n".join(lines)


def format_markdown(rows: list[Row]) -> str:
    head = ["figure", "unit", "n", "median", "p90", "min", "max", "anchor", "ratio",
            "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.stats is not None:
            s = r.stats
            cells = [str(s["n"]), _fmt(s["median"], r.unit), _fmt(s["p90"], r.unit),
                     _fmt(s["min"], r.unit), _fmt(s["max"], r.unit)]
        else:
            cells = ["1", _fmt(r.value, r.unit), "", "", ""]
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append("| " + " | ".join([r.name, r.unit, *cells, r.anchor or "",
                                         "" if r.ratio is None else f"{r.ratio:.2f}x",
                                         r.target or "", met]) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ timing helpers

def now() -> float:
    return time.perf_counter()


def run_timed(argv: list[str], env: dict | None = None, check: bool = True) -> float:
    """Wall time in ms of one whole process (stdout/stderr discarded)."""
    t = now()
    r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    ms = (now() - t) * 1000
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {r.returncode}: "
                           f"{r.stderr.decode(errors='replace')[-400:]}")
    return ms


def mounts_under(path: str) -> list[str]:
    prefix = path.rstrip("/") + "/"
    return [m.mount_point for m in kernel.mountinfo()
            if m.mount_point == path.rstrip("/") or m.mount_point.startswith(prefix)]


def mountinfo_lines() -> int:
    with open("/proc/self/mountinfo", "rb") as f:
        return f.read().count(b"\n")


# ------------------------------------------------------------------ an isolated node

class Node:
    """A private base_path + runtime dir + config files for one section.

    `base_parent` lets a section put base_path on another filesystem (e.g. a tmpfs).
    Use as a context manager: on exit every job is deleted, the trash purged, every mount
    below the root detached and the root removed.
    """

    def __init__(self, label: str, base_parent: str | None = None):
        self.tag = f"{label}-{uuid.uuid4().hex[:6]}"
        self.root = ROOT_PREFIX + self.tag
        self.base = os.path.join(base_parent or self.root, "base")
        self.runtime = os.path.join(self.root, "run")
        self.config_file = os.path.join(self.root, "namespace.yaml")
        self.config_pid_user = os.path.join(self.root, "namespace-pid-user.yaml")
        self._old_env: dict[str, str | None] = {}

    def __enter__(self) -> "Node":
        os.makedirs(self.root, mode=0o755)
        os.chmod(self.root, 0o755)
        with open(self.config_file, "w") as f:
            f.write(f"defaults:\n  base_path: {self.base}\n  auto_base_path: true\n")
        with open(self.config_pid_user, "w") as f:
            f.write(f"defaults:\n  base_path: {self.base}\n  auto_base_path: true\n"
                    "  clone_ns_flags: [CLONE_NEWPID, CLONE_NEWUSER]\n")
        # the CLI's node is the one the in-process configs name (a job recorded by node
        # "bench" is refused to any other node)
        for k, v in (("JOBNS_RUNTIME_DIR", self.runtime), ("JOBNS_CONFIG", self.config_file),
                     ("SLURMD_NODENAME", NODE_NAME)):
            self._old_env[k] = os.environ.get(k)
            os.environ[k] = v
        return self

    def cfg(self, pid_user: bool = False) -> NodeConfig:
        if pid_user:
            return NodeConfig(node_name=NODE_NAME, base_path=self.base,
                              clone_ns_flags=PID_USER_FLAGS)
        return NodeConfig(node_name=NODE_NAME, base_path=self.base)

    def env(self, pid_user: bool = False) -> dict:
        env = dict(os.environ)
        env["JOBNS_RUNTIME_DIR"] = self.runtime
        env["JOBNS_CONFIG"] = self.config_pid_user if pid_user else self.config_file
        env["SLURMD_NODENAME"] = NODE_NAME
        return env

    def job(self, job_id: str) -> Job:
        return Job(job_id=job_id, uid=65534, gid=65534, user=JOB_USER)

    def tmp_dir(self, job_id: str) -> str:
        """The host path of the job's /tmp (Slurm's layout: <base>/<J>/.<J>/_tmp)."""
        return os.path.join(self.base, job_id, f".{job_id}", "_tmp")

    def jobs(self) -> list[str]:
        if not os.path.isdir(self.base):
            return []
        return [n for n in os.listdir(self.base) if not n.startswith(".")]

    def close(self) -> None:
        cfg = self.cfg()
        for name in self.jobs():
            with contextlib.suppress(Exception):
                lifecycle.delete(cfg, name)
        if os.path.isdir(self.base):
            with contextlib.suppress(Exception):
                lifecycle.purge_trash(cfg)
        tops = {self.root, os.path.dirname(self.base)}
        for top in tops:
            for mp in sorted(mounts_under(top), key=lambda p: -p.count("/")):
                with contextlib.suppress(OSError):
                    kernel.umount2(mp, kernel.MNT_DETACH)
        for top in sorted(tops, key=len, reverse=True):
            if os.path.isdir(top) and not mounts_under(top):
                subprocess.run(["rm", "-rf", "--one-file-system", "--", top])
        for k, v in self._old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def __exit__(self, *exc) -> None:
        self.close()


class TmpfsMount:
    """A tmpfs mounted under /var/tmp for one section (root only); unmounted on exit."""

    def __init__(self, size: str = "8g"):
        self.size = size
        self.path = ROOT_PREFIX + "tmpfs-" + uuid.uuid4().hex[:6]

    def __enter__(self) -> str:
        os.makedirs(self.path, mode=0o755)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755",
                        "jobns-bench", self.path], check=True)
        return self.path

    def __exit__(self, *exc) -> None:
        for mp in sorted(mounts_under(self.path), key=lambda p: -p.count("/")):
            with contextlib.suppress(OSError):
                kernel.umount2(mp, kernel.MNT_DETACH)
        with contextlib.suppress(OSError):
            os.rmdir(self.path)


def stale_roots() -> list[str]:
    """Roots left by an earlier, killed run (for the user to see)."""
    parent, prefix = os.path.split(ROOT_PREFIX)
    return [os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(prefix)]


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
