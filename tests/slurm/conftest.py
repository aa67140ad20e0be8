"""Session fixture: a real single-node Slurm 22.05+ on localhost with the jobns SPANK plugin.

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

import jobns_slurm_cluster as jsc

ROOT = os.environ.get("JOBNS_SLURM_TEST_ROOT", "/var/tmp/jobns-slurm-test")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here + os.sep):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm():
    if os.geteuid() != 0:
        pytest.skip("needs root: starts slurmd/slurmctld/munged and creates namespaces")
    if shutil.which("apt-get") is None and jsc.missing_packages():
        pytest.skip("Slurm is not installed and there is no apt-get to install it")
    reason = jsc.install_packages()
    if reason:
        pytest.skip(reason)
    cluster = jsc.Cluster(ROOT, jsc.default_jobns())
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    try:
        yield cluster
    finally:
        warnings = cluster.stop()
        assert not jsc.mounts_under(cluster.root), "mounts left after stopping Slurm"
        for w in warnings:
            print(f"slurm fixture teardown: {w}")


@pytest.fixture
def cluster(slurm):
    """The session cluster, idle, with the default namespace.yaml, before and after."""
    slurm.set_namespace_config()
    if slurm.pid_of("slurmd") is None:
        slurm.start_slurmd()
    if slurm.node_state().startswith(("drain", "down")):
        slurm.resume()
    slurm.wait_idle()
    yield slurm
    slurm.set_namespace_config()
    if slurm.pid_of("slurmd") is None:
        slurm.start_slurmd()
    jobs = slurm.cmd(["squeue", "-h", "-o", "%i"]).stdout.split()
    if jobs:
        slurm.cmd(["scancel", *jobs])
    if slurm.node_state().startswith(("drain", "down")):
        slurm.resume()
