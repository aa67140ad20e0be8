"""Which Slurm node this is, found the way slurmd finds it, and who else shares the host.

slurmd takes its NodeName from ``-N``; without it, from slurm.conf: the first NodeName
(in file order) whose NodeHostname -- NodeName itself when NodeHostname is not given --
is this host's short name, else its full name, else ``localhost``. Prologs and epilogs get
the answer in SLURMD_NODENAME. The short hostname is only the last resort here, when no
slurm.conf can be read; it is never assumed when slurm.conf names the node otherwise.

Several slurmd's on one host (Slurm's multiple-slurmd build, which Debian's packages are)
are several NodeNames with the same NodeHostname. Their jobs must never meet: jobns then
keeps each node's jobs under ``<base_path>/<NodeName>/`` (as Slurm's own job_container and
namespace plugins do in such a build) and its runtime index under
``<runtime>/nodes/<NodeName>/``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from jobns._lazy import lazy
from jobns.config.model import short_hostname

# Only a node with a slurm.conf parses one; the job-start path elsewhere stays light.
glob = lazy("glob")

DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"
DEFAULT_SPOOL_DIR = "/var/spool/slurmd"
_MAX_INCLUDE_DEPTH = 10


def slurm_conf_path(explicit: str | None = None,
                    env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return explicit or env.get("SLURM_CONF") or DEFAULT_SLURM_CONF


def conf_pairs(path: str, depth: int = 0):
    """The key=value pairs of each logical line of a slurm.conf and of the files it
    Includes (globs allowed), read by the rules of jobns.config.conf_reader (comments,
    line continuations, escapes, quoted values, as Slurm's parser): one list of (key,
    value) per line. A line that is not all key=value pairs is nothing jobns reads and is
    skipped; an Included file that cannot be read is skipped. Raises OSError when `path`
    itself cannot be read."""
    from jobns.config.conf_reader import logical_lines, split_pairs
    if depth > _MAX_INCLUDE_DEPTH:
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    base = os.path.dirname(path)
    for _, line in logical_lines(text):
        words = line.split(None, 1)
        if not words:
            continue
        if words[0].lower() == "include" and len(words) == 2:
            pattern = words[1].strip()
            if not os.path.isabs(pattern):
                pattern = os.path.join(base, pattern)
            for inc in sorted(glob.glob(pattern)):
                try:
                    yield from conf_pairs(inc, depth + 1)
                except OSError:
                    continue
            continue
        try:
            pairs = split_pairs(line)
        except ValueError:
            continue
        if pairs:
            yield [(key, value) for key, value, _ in pairs]


class SlurmConf:
    """The few facts of slurm.conf jobns needs: the nodes and the slurmd spool dir."""

    def __init__(self, path: str):
        self.path = path
        self.spool_dir: str | None = None
        self.nodes: list[tuple[str, str | None]] = []  # (NodeName expr, NodeHostname expr)
        for line in conf_pairs(path):
            pairs = {key.lower(): value for key, value in line}
            if "slurmdspooldir" in pairs:
                self.spool_dir = pairs["slurmdspooldir"]
            name = pairs.get("nodename")
            if name and line[0][0].lower() == "nodename" and name.lower() != "default":
                self.nodes.append((name, pairs.get("nodehostname")))

    def _names_with_hosts(self):
        """(NodeName, NodeHostname) in file order. A single NodeHostname serves every
        name of its line (several slurmd's on one host)."""
        from jobns.config import hostlist as hl
        for name_expr, host_expr in self.nodes:
            try:
                names = hl.expand(name_expr)
                hosts = hl.expand(host_expr) if host_expr else names
            except hl.HostlistError:
                continue
            if len(hosts) == 1 and len(names) > 1:
                hosts = hosts * len(names)
            yield from zip(names, hosts)

    def nodes_on(self, hostname: str) -> list[str]:
        """NodeNames whose NodeHostname is `hostname`, in file order."""
        return [n for n, h in self._names_with_hosts() if h == hostname]

    def this_node(self) -> str | None:
        """The NodeName slurmd started without -N takes on this host."""
        short = short_hostname()
        for candidate in (short, os.uname().nodename, "localhost"):
            found = self.nodes_on(candidate)
            if found:
                return found[0]
        return None

    def host_of(self, node: str) -> str | None:
        for n, h in self._names_with_hosts():
            if n == node:
                return h
        return None

    def shares_host(self, node: str) -> bool:
        """Whether another slurmd of this cluster runs on `node`'s host."""
        host = self.host_of(node)
        return host is not None and len(self.nodes_on(host)) > 1

    def slurmd_spool_dir(self, node: str) -> str:
        value = self.spool_dir or DEFAULT_SPOOL_DIR
        host = self.host_of(node) or short_hostname()
        return value.replace("%n", node).replace("%h", host)


_cache: dict[tuple, SlurmConf] = {}


def read(path: str | None = None) -> SlurmConf | None:
    """slurm.conf at `path` ($SLURM_CONF, /etc/slurm/slurm.conf), or None if it cannot be
    read. Parsed once per process and file version."""
    path = slurm_conf_path(path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _cache:
        try:
            _cache[key] = SlurmConf(path)
        except OSError:
            return None
    return _cache[key]


def node_name(explicit: str | None = None, env: Mapping[str, str] | None = None,
              slurm_conf: str | None = None) -> str:
    """This node's NodeName: --node, SLURMD_NODENAME, slurm.conf as slurmd reads it, and
    only then the short hostname."""
    env = os.environ if env is None else env
    if explicit:
        return explicit
    name = env.get("SLURMD_NODENAME")
    if name:
        return name
    conf = read(slurm_conf_path(slurm_conf, env))
    found = conf.this_node() if conf is not None else None
    return found or short_hostname()


def with_layout(cfg, slurm_conf: str | None = None):
    """`cfg` with `node_dir` set when slurm.conf puts another slurmd on its node's host."""
    if cfg.node_dir:
        return cfg
    conf = read(slurm_conf)
    if conf is not None and conf.shares_host(cfg.node_name):
        return cfg.replace(node_dir=True)
    return cfg
