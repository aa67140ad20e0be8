"""Slurm's own namespace plugin in the fixture (the benchmarks' anchor): job_container/tmpfs
on 22.05 and 24.11, namespace/linux on 26.05, from the same namespace.yaml /
job_container.conf directory, with jobns' SPANK plugin left out. The private /tmp that
jobns' tests expect is what Slurm's plugin gives, and the fixture's anchor mode works on
every version of the matrix.
"""

from __future__ import annotations

import os
import re

import pytest

pytestmark = pytest.mark.slurm

ALICE = "jobns-alice"


@pytest.fixture(scope="module")
def anchor(slurm):
    slurm.container, slurm.spank = "slurm", False
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.container, slurm.spank = "none", True
        slurm.start()


def test_slurms_own_plugin_gives_the_private_tmp_jobns_gives(anchor):
    with open(anchor.conf) as f:
        conf = f.read()
    want = ("NamespaceType=namespace/linux" if anchor.version >= (25, 11)
            else "JobContainerType=job_container/tmpfs")
    assert want in conf.splitlines()
    with open(anchor.plugstack) as f:
        assert f.read().strip() == ""
    marker = f"jobns-anchor-marker-{os.getpid()}"
    path = anchor.node_path(f"/tmp/{marker}")
    with open(path, "w") as f:
        f.write("node\n")
    log_size = os.path.getsize(os.path.join(anchor.log_dir, f"slurmd-{anchor.node}.log"))
    try:
        r = anchor.srun(ALICE, ["sh", "-c", "ls -A /tmp; stat -c '%U %a' /tmp; "
                                            "findmnt -n -o FSTYPE /dev/shm; echo $SLURM_JOB_ID"])
    finally:
        os.unlink(path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[0] == f"{ALICE} 700", r.stdout     # empty: the node's marker is not there
    assert lines[1] == "tmpfs", r.stdout
    job = lines[2]
    anchor.wait_idle()
    with open(os.path.join(anchor.log_dir, f"slurmd-{anchor.node}.log"), errors="replace") as f:
        f.seek(log_size)
        assert not re.search(rf"jobns: job {job}\b", f.read())   # Slurm's plugin did it
