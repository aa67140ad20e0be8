"""Session fixture: a real single-node Slurm on localhost with the jobns SPANK plugin, once
per Slurm version of the matrix: 22.05 (this Debian 12 host's packages), 24.11 (Debian 13)
and 26.05 (Debian sid), the newer two from cached Debian trees run in a private mount
namespace (tests/slurm/jobns_slurm_box.py). Every test of tests/slurm runs on each version
(test ids end in [22.05], [24.11], [26.05]).

JOBNS_SLURM_VERSIONS=22.05 (comma-separated) runs a subset, for quick local runs; CI runs
all three. JOBNS_SLURM_TEST_ROOT (default /var/tmp/jobns-slurm-test) is 22.05's cluster
root; the others use <root>-24.11 and <root>-26.05.

Installs Debian's slurmctld/slurmd/slurm-client/munge/libslurm-dev/gcc if missing (skips,
with the reason, only when no package registry is reachable), creates the users
jobns-alice and jobns-bob, builds the plugin with `jobns slurm build-plugin`, starts
munged, slurmctld and slurmd under their own root directory and stops exactly those again
at the end, unmounting whatever is left below the root, also when tests fail.
"""

from __future__ import annotations

import os
import shutil

import pytest

import jobns_slurm_box as jsb
import jobns_slurm_cluster as jsc

ROOT = os.environ.get("JOBNS_SLURM_TEST_ROOT", "/var/tmp/jobns-slurm-test").rstrip("/")
VERSIONS = tuple(v.strip() for v in
                 os.environ.get("JOBNS_SLURM_VERSIONS", ",".join(jsb.VERSIONS)).split(",")
                 if v.strip())
_unknown = [v for v in VERSIONS if v not in jsb.VERSIONS]
if _unknown:
    raise pytest.UsageError(f"JOBNS_SLURM_VERSIONS: unknown Slurm version(s) "
                            f"{', '.join(_unknown)}; known: {', '.join(jsb.VERSIONS)}")


def cluster_root(version: str) -> str:
    return ROOT if version == jsb.HOST_VERSION else f"{ROOT}-{version}"


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here + os.sep):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session", params=VERSIONS)
def slurm(request):
    version = request.param
    if os.geteuid() != 0:
        pytest.skip("needs root: starts slurmd/slurmctld/munged and creates namespaces")
    if version == jsb.HOST_VERSION:
        if shutil.which("apt-get") is None and jsc.missing_packages():
            pytest.skip("Slurm is not installed and there is no apt-get to install it")
        reason = jsc.install_packages()
        if reason:
            pytest.skip(reason)
    elif shutil.which("debootstrap") is None and shutil.which("apt-get") is None and \
            not os.path.exists(jsb.tree_path(jsb.SUITES[version])):
        pytest.skip(f"Slurm {version} needs a Debian tree and there is no debootstrap")
    cluster = jsb.cluster_for(version, cluster_root(version))
    try:
        cluster.start()
    except jsb.TreeUnavailable as e:
        cluster.stop()
        pytest.skip(f"Slurm {version}: {e}")
    except BaseException:
        cluster.stop()
        raise
    try:
        yield cluster
    finally:
        warnings = cluster.stop()
        assert not cluster.mounts_under(cluster.root), "mounts left after stopping Slurm"
        assert not jsc.mounts_under(cluster.root), "mounts left on the host"
        for w in warnings:
            print(f"slurm fixture teardown: {w}")


@pytest.fixture
def cluster(slurm):
    """The session cluster, idle, with the default namespace.yaml, before and after."""
    slurm.set_namespace_config()
    slurm.ensure_slurmds()
    if slurm.unhealthy():
        slurm.resume()
    slurm.wait_idle()
    yield slurm
    slurm.set_namespace_config()
    slurm.ensure_slurmds()
    jobs = slurm.cmd(["squeue", "-h", "-o", "%i"]).stdout.split()
    if jobs:
        slurm.cmd(["scancel", *jobs])
    if slurm.unhealthy():
        slurm.resume()
