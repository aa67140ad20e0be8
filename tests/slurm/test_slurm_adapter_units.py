"""The Slurm adapter's pure parts, without Slurm: environment, live-job discovery, build."""

from __future__ import annotations

import os
import socket

import pytest

from jobns.errors import OperationError, UsageError
from jobns.slurm import build, live
from jobns.slurm.env import job_from_env, job_id_from_env, node_name

ENV = {"SLURM_JOB_ID": "42", "SLURM_JOB_UID": "1001", "SLURM_JOB_GID": "1002",
       "SLURM_JOB_USER": "alice", "SLURMD_NODENAME": "n1", "SLURM_CONF": "/etc/slurm/slurm.conf",
       "SLURM_JOB_WORK_DIR": "/home/alice", "PATH": "/bin"}


def test_job_from_env():
    job = job_from_env(ENV)
    assert (job.job_id, job.uid, job.gid, job.user) == ("42", 1001, 1002, "alice")
    assert job.env["SLURM_JOB_WORK_DIR"] == "/home/alice"
    assert job.env["SLURM_CONF"] == "/etc/slurm/slurm.conf"
    assert "PATH" not in job.env


@pytest.mark.parametrize("var,value", [
    ("SLURM_JOB_ID", None), ("SLURM_JOB_ID", ""), ("SLURM_JOB_ID", "007"),
    ("SLURM_JOB_ID", "1_2"), ("SLURM_JOB_ID", "0"), ("SLURM_JOB_UID", None),
    ("SLURM_JOB_UID", "-1"), ("SLURM_JOB_UID", "4294967295"), ("SLURM_JOB_GID", "x"),
    ("SLURM_JOB_USER", "../root")])
def test_bad_environment_names_the_variable(var, value):
    env = dict(ENV)
    if value is None:
        del env[var]
    else:
        env[var] = value
    with pytest.raises(UsageError, match=var):
        job_from_env(env)


def test_user_from_uid_when_missing():
    env = dict(ENV, SLURM_JOB_UID="0")
    del env["SLURM_JOB_USER"]
    assert job_from_env(env).user == "root"
    assert job_id_from_env({"SLURM_JOB_ID": "7"}) == "7"


def test_node_name_order():
    assert node_name("x", {"SLURMD_NODENAME": "y"}) == "x"
    assert node_name(None, {"SLURMD_NODENAME": "y"}) == "y"
    assert node_name(None, {}) == socket.gethostname().split(".")[0]


def test_spool_dir_from_slurm_conf(tmp_path):
    inc = tmp_path / "inc.conf"
    inc.write_text("SlurmdSpoolDir=/var/spool/slurmd.%n # per node\n")
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=c\n#SlurmdSpoolDir=/wrong\nInclude inc.conf\n")
    assert live.slurmd_spool_dir(str(conf), "n7") == "/var/spool/slurmd.n7"
    conf.write_text("ClusterName=c\nslurmdspooldir = /s/%n\n")
    assert live.slurmd_spool_dir(str(conf), "n7") == "/s/n7"
    conf.write_text("ClusterName=c\n")
    assert live.slurmd_spool_dir(str(conf), "n7") == live.DEFAULT_SPOOL_DIR


def test_live_jobs_from_sockets(tmp_path):
    spool = str(tmp_path)
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(os.path.join(spool, "n1_10.4294967291"))
    listening.listen(1)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(os.path.join(spool, "n1_11.0"))
    dead.close()
    other_node = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other_node.bind(os.path.join(spool, "n2_12.0"))
    other_node.listen(1)
    (tmp_path / "n1_13.0").write_text("not a socket")
    het = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    het.bind(os.path.join(spool, "n1_14.0.1"))
    het.listen(1)
    try:
        assert live.live_jobs(spool, "n1") == {"10", "14"}
        assert live.live_jobs(spool, "n2") == {"12"}
        assert live.live_jobs(os.path.join(spool, "missing"), "n1") == set()
    finally:
        for s in (listening, other_node, het):
            s.close()


def test_build_reports_missing_header(tmp_path):
    with pytest.raises(OperationError, match="libslurm-dev"):
        build.find_include_dir(str(tmp_path))


def test_plugstack_line():
    assert build.plugstack_line("/p/x.so", "/v/bin/jobns", config="/etc/ns.yaml",
                                runtime="/run/j", prolog=False) == \
        "required /p/x.so jobns=/v/bin/jobns config=/etc/ns.yaml runtime=/run/j prolog=no"


@pytest.mark.skipif(not os.path.exists("/usr/include/slurm/spank.h"),
                    reason="libslurm-dev not installed")
def test_plugin_builds_without_warnings(tmp_path):
    out = tmp_path / "jobns_spank.so"
    warnings = build.build(str(out))
    assert warnings == ""
    assert out.stat().st_mode & 0o777 == 0o755
