"""The native route in the Slurm test fixture: a configured Slurm source tree of the
installed version, `jobns slurm build-plugin --native` against it, and a cluster that runs
with JobContainerType=job_container/jobns (NamespaceType=namespace/jobns on 25.11+)
instead of the SPANK plugstack.

Source trees come from Debian's source packages, fetched with apt-get through a private
apt configuration (deb-src entries and package lists of its own under CACHE; the
system's apt sources are not touched), unpacked with dpkg-source and configured with
Debian's options, once per version: later runs reuse CACHE/<version>/{tree,build}.  A
mirror that serves only the upstream .orig tarball of a version still gives a tree (the
tarball checked against the signed index); one that serves neither skips the module.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time

import jobns_slurm_cluster as jsc

CACHE = os.environ.get("JOBNS_SLURM_SRC_CACHE", "/var/cache/jobns-test/slurm-src")
APT_DIR = os.path.join(os.path.dirname(CACHE.rstrip("/")), "apt-src")
SUITES = ("bookworm", "bookworm-security", "trixie", "trixie-security", "sid")
APT_SOURCES = ("/etc/apt/sources.list", "/etc/apt/sources.list.d")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
BUILD_DEPS = (("dpkg-dev", "/usr/bin/dpkg-source"), ("libmunge-dev", "/usr/include/munge.h"))
# Debian's configure options for slurm-wlm that shape the structures a plugin reads.
CONFIGURE = ("--sysconfdir=/etc/slurm", "--enable-multiple-slurmd", "--disable-debug",
             "--without-rpath", "-q")


class SourceUnavailable(Exception):
    """The source of this Slurm version cannot be had here (a reason to skip)."""


def node_version(cluster: jsc.Cluster) -> str:
    """Debian version of the cluster node's slurmd (the host's or its Debian tree's)."""
    tree = getattr(cluster, "tree", None)
    return installed_version(os.path.join(tree, "var/lib/dpkg") if tree else None)


def installed_version(admindir: str | None = None) -> str:
    """Debian version of the installed slurmd (e.g. 22.05.8-4+deb12u3)."""
    argv = ["dpkg-query", "-W", "-f=${Version}", "slurmd"]
    if admindir:
        argv.insert(1, f"--admindir={admindir}")
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        raise SourceUnavailable(f"slurmd is not installed ({r.stderr.strip()})")
    return r.stdout.strip()


def _host_archives() -> dict[str, str]:
    """The host's Debian archive URIs, from its own apt sources: {"main": uri,
    "security": uri}. The mirror this machine is set up with serves the other suites too."""
    found: dict[str, str] = {}

    def note(uri: str, suites: list[str]) -> None:
        kind = "security" if any(s.endswith("-security") for s in suites) else "main"
        found.setdefault(kind, uri.rstrip("/"))

    files = []
    for top in APT_SOURCES:
        if os.path.isdir(top):
            files += [os.path.join(top, n) for n in sorted(os.listdir(top))
                      if n.endswith((".list", ".sources"))]
        elif os.path.isfile(top):
            files.append(top)
    for path in files:
        with open(path, errors="replace") as f:
            text = f.read()
        if path.endswith(".sources"):
            for stanza in text.split("\n\n"):
                fields = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith(("#", " ")):
                        k, v = line.split(":", 1)
                        fields[k.strip().lower()] = v.split()
                if fields.get("uris") and fields.get("suites"):
                    note(fields["uris"][0], fields["suites"])
        else:
            for line in text.splitlines():
                words = [w for w in line.split() if not w.startswith("[")]
                if len(words) >= 3 and words[0] in ("deb", "deb-src"):
                    note(words[1], [words[2]])
    return found


def _suite_uris() -> list[tuple[str, str]]:
    """(uri, suite) for every suite whose source packages the tests may need."""
    archives = _host_archives()
    if "main" not in archives:
        raise SourceUnavailable("no Debian archive in the host's apt sources "
                                f"({', '.join(APT_SOURCES)})")
    out = []
    for suite in SUITES:
        kind = "security" if suite.endswith("-security") else "main"
        if kind in archives:
            out.append((archives[kind], suite))
    return out


def _apt_options() -> list[str]:
    return [f"-o=Dir::Etc::SourceList={APT_DIR}/sources.list",
            f"-o=Dir::Etc::SourceParts={APT_DIR}/sources.list.d",
            f"-o=Dir::State::Lists={APT_DIR}/lists",
            f"-o=Dir::Etc::Preferences={APT_DIR}/preferences",
            f"-o=Dir::Etc::PreferencesParts={APT_DIR}/preferences.d",
            "-o=APT::Sandbox::User=root"]


def _apt_update() -> None:
    for d in ("lists/partial", "sources.list.d", "preferences.d"):
        os.makedirs(os.path.join(APT_DIR, d), exist_ok=True)
    with open(os.path.join(APT_DIR, "sources.list"), "w"):
        pass
    entries = []
    for uri, suite in _suite_uris():
        entries.append(f"Types: deb-src\nURIs: {uri}\nSuites: {suite}\nComponents: main\n"
                       f"Signed-By: {KEYRING}\n")
    with open(os.path.join(APT_DIR, "sources.list.d", "jobns-test-src.sources"), "w") as f:
        f.write("\n".join(entries))
    stamp = os.path.join(APT_DIR, "updated")
    r = subprocess.run(["apt-get", *_apt_options(), "-q", "update"], capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0 and not os.path.exists(stamp):
        raise SourceUnavailable(f"apt-get update (deb-src) failed: {r.stderr[-400:]}")
    with open(stamp, "w"):
        pass


def _download(deb_version: str, into: str) -> str:
    """The .dsc of slurm-wlm=deb_version in `into` (apt-get source --download-only)."""
    dsc = os.path.join(into, f"slurm-wlm_{deb_version.split(':')[-1]}.dsc")
    if os.path.isfile(dsc):
        return dsc
    os.makedirs(into, exist_ok=True)
    last = ""
    stamp = os.path.join(APT_DIR, "updated")
    for attempt in range(2):
        fresh = os.path.exists(stamp) and time.time() - os.path.getmtime(stamp) < 86400
        if attempt and fresh:
            break           # the lists are today's: the mirror does not have the files
        if attempt or not os.path.isdir(os.path.join(APT_DIR, "lists")):
            _apt_update()
        r = subprocess.run(["apt-get", *_apt_options(), "-q", "source", "--download-only",
                            f"slurm-wlm={deb_version}"], cwd=into, capture_output=True,
                           text=True, timeout=900)
        if r.returncode == 0 and os.path.isfile(dsc):
            return dsc
        last = (r.stderr or r.stdout)[-600:]
    raise SourceUnavailable(f"apt-get source slurm-wlm={deb_version} failed: {last}")


def _upstream_only(deb_version: str, into: str) -> str:
    """When the mirror serves the upstream tarball but not the .dsc or Debian's part:
    the .orig tarball, checked against the SHA256 of the signed Sources index.  Debian's
    patches do not touch the plugin interfaces or the structures the plugin reads."""
    import tempfile
    with tempfile.TemporaryDirectory() as empty:   # files present in cwd are not listed
        r = subprocess.run(["apt-get", *_apt_options(), "-q", "source", "--print-uris",
                            f"slurm-wlm={deb_version}"], cwd=empty, capture_output=True,
                           text=True, timeout=300)
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and ".orig.tar." in parts[1] and parts[3].startswith("SHA256:"):
            uri, name, sha = parts[0].strip("'"), parts[1], parts[3][7:]
            break
    else:
        raise SourceUnavailable(f"apt-get source --print-uris slurm-wlm={deb_version}: "
                                f"no .orig tarball ({(r.stderr or r.stdout)[-300:]})")
    path = os.path.join(into, name)
    if not os.path.isfile(path) or _sha256(path) != sha:
        import urllib.error
        import urllib.request
        try:
            with urllib.request.urlopen(uri, timeout=300) as r, open(path + ".part", "wb") as f:
                shutil.copyfileobj(r, f)
        except (urllib.error.URLError, OSError) as e:
            raise SourceUnavailable(f"{uri}: {e}") from None
        os.replace(path + ".part", path)
    if _sha256(path) != sha:
        os.unlink(path)
        raise SourceUnavailable(f"{uri}: SHA256 differs from the Sources index")
    return path


def _sha256(path: str) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unpack(deb_version: str, top: str, tree: str) -> None:
    try:
        dsc = _download(deb_version, top)
    except SourceUnavailable:
        orig = _upstream_only(deb_version, top)
        os.makedirs(tree)
        r = subprocess.run(["tar", "-xf", orig, "-C", tree, "--strip-components=1"],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise SourceUnavailable(f"tar -xf {orig} failed: {r.stderr[-400:]}")
        return
    r = subprocess.run(["dpkg-source", "--no-check", "-x", dsc, tree], cwd=top,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SourceUnavailable(f"dpkg-source -x {dsc} failed: {r.stderr[-400:]}")


def _install_build_deps() -> None:
    """What unpacking and configure need on this host: dpkg-source (dpkg-dev) and
    munge's headers (configure requires them from 23.x on)."""
    missing = [pkg for pkg, path in BUILD_DEPS if not os.path.exists(path)]
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        *missing], capture_output=True, text=True, env=env, timeout=900)
    if r.returncode != 0:
        raise SourceUnavailable(f"apt-get install {' '.join(missing)} failed: "
                                f"{r.stderr[-400:]}")


def _given_trees() -> dict[str, tuple[str, str]]:
    """JOBNS_SLURM_SOURCE_TREES="DEBVERSION=SRC:BUILD,...": configured trees to use
    instead of Debian's source packages (e.g. a site's own build of the same version)."""
    out = {}
    for item in os.environ.get("JOBNS_SLURM_SOURCE_TREES", "").split(","):
        if "=" in item:
            version, _, dirs = item.partition("=")
            src, _, build = dirs.partition(":")
            out[version.strip()] = (src, build or src)
    return out


def source_tree(deb_version: str) -> tuple[str, str]:
    """(source tree, configured build dir) of Debian's slurm-wlm `deb_version`, made
    once and cached under CACHE/<deb_version>."""
    given = _given_trees().get(deb_version)
    if given:
        return given
    top = os.path.join(CACHE, deb_version)
    tree, build = os.path.join(top, "tree"), os.path.join(top, "build")
    done = os.path.join(top, "configured")
    os.makedirs(top, exist_ok=True)
    with open(os.path.join(top, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(done):
            return tree, build
        for d in (tree, build):
            if os.path.isdir(d):
                shutil.rmtree(d)
        _install_build_deps()
        _unpack(deb_version, top, tree)
        os.makedirs(build)
        r = subprocess.run(["nice", os.path.join(tree, "configure"), *CONFIGURE], cwd=build,
                           capture_output=True, text=True, timeout=1200)
        if r.returncode != 0:
            raise RuntimeError(f"configure of Slurm {deb_version} failed:\n{r.stderr[-2000:]}")
        with open(done, "w") as f:
            f.write(deb_version + "\n")
    return tree, build


# ------------------------------------------------------------------ the cluster

def build_native(cluster: jsc.Cluster, tree: str, build: str) -> tuple[str, list[str]]:
    """Build the native plugin into <root>/lib/jobns; returns build-plugin's output and
    the slurm.conf lines it printed."""
    # Built on this host (a plugin compiled here loads in the newer Debian trees too)
    # with this checkout's jobns, naming the node's jobns, config and runtime dir.
    r = subprocess.run([jsc.default_jobns(), "--config", cluster.ns_yaml, "slurm", "build-plugin",
                        "--native", "--slurm-src", tree, "--slurm-build", build,
                        "--prefix", cluster.root, "--jobns", cluster.jobns,
                        "--runtime", cluster.runtime],
                       capture_output=True, text=True, env=cluster.env)
    if r.returncode != 0:
        raise RuntimeError(f"jobns slurm build-plugin --native failed:\n{r.stdout}{r.stderr}")
    lines = [ln for ln in r.stdout.splitlines()
             if ln.split("=", 1)[0] in ("JobContainerType", "NamespaceType", "PrologFlags",
                                        "PluginDir")]
    return r.stdout + r.stderr, lines


def _stop_slurmctld(cluster: jsc.Cluster) -> None:
    pid = cluster.pid_of("slurmctld")
    if pid:
        os.kill(pid, signal.SIGTERM)
        if not jsc._wait_gone(pid, 30):
            os.kill(pid, signal.SIGKILL)
            jsc._wait_gone(pid, 5)


def _rewrite_conf(cluster: jsc.Cluster, native_lines: list[str], extra: tuple[str, ...]) -> None:
    """The fixture's slurm.conf with the job-container line replaced by the native ones."""
    cluster.write_slurm_conf(extra)
    with open(cluster.conf) as f:
        lines = f.read().splitlines()
    keys = {ln.split("=", 1)[0] for ln in native_lines}
    out = [ln for ln in lines if ln.split("=", 1)[0] not in keys | {"JobContainerType"}]
    out += native_lines
    with open(cluster.conf, "w") as f:
        f.write("\n".join(out) + "\n")


def restart_all(cluster: jsc.Cluster) -> None:
    cluster.stop_slurmd()
    _stop_slurmctld(cluster)
    cluster.start_slurmctld()
    cluster.start_slurmd()
    if cluster.node_state() != "idle":
        cluster.resume()
    cluster.wait_idle()


def use_native(cluster: jsc.Cluster, native_lines: list[str], *, plugstack: str = "",
               extra: tuple[str, ...] = ()) -> None:
    """Run the cluster with the native plugin; plugstack.conf gets `plugstack` (other
    SPANK plugins, not jobns')."""
    _rewrite_conf(cluster, native_lines, extra)
    with open(cluster.plugstack, "w") as f:
        f.write(plugstack)
    os.chmod(cluster.plugstack, 0o644)
    restart_all(cluster)


def use_spank(cluster: jsc.Cluster) -> None:
    """Back to the fixture's own setup (SPANK plugin, job_container/none)."""
    cluster.write_slurm_conf()
    cluster.build_plugin()
    restart_all(cluster)
