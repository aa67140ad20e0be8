"""slurm.conf as jobns.slurm.nodes reads it: the node slurmd started without -N takes, the
nodes sharing a host, the spool dir; by conf_reader's rules (one reader of slurm.conf)."""

from __future__ import annotations

import os

import pytest

from jobns.slurm import live, nodes


def write(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


def test_node_name_as_slurmd_finds_it_with_include_continuation_and_comments(tmp_path):
    host = nodes.short_hostname()
    write(tmp_path / "nodes.conf",
          f"NodeName=DEFAULT CPUs=2\n"
          f"NodeName=n[1-3] NodeHostname={host} \\\n  CPUs=2   # three slurmd's, one host\n"
          f"NodeName=far NodeHostname=elsewhere\n")
    conf = write(tmp_path / "slurm.conf",
                 "ClusterName=c\nSlurmdSpoolDir=/var/spool/slurmd/%n\n"
                 "Include nodes.conf\nInclude missing-*.conf\n"
                 "PartitionName=p Nodes=n[1-3] Default=YES\n")
    c = nodes.SlurmConf(str(conf))
    assert c.this_node() == "n1"
    assert c.nodes_on(host) == ["n1", "n2", "n3"]
    assert c.shares_host("n2") and not c.shares_host("far")
    assert c.slurmd_spool_dir("n3") == "/var/spool/slurmd/n3"
    assert c.host_of("far") == "elsewhere"


def test_no_node_of_this_host_and_escaped_hash(tmp_path):
    conf = write(tmp_path / "slurm.conf",
                 "NodeName=a NodeHostname=not-this-host\n"
                 "SlurmdSpoolDir=/spool/with\\#hash # a comment\n")
    c = nodes.SlurmConf(str(conf))
    assert c.this_node() is None
    assert c.slurmd_spool_dir("a") == "/spool/with#hash"
    assert live.slurm_conf_values(str(conf))["slurmdspooldir"] == "/spool/with#hash"


def test_unreadable_slurm_conf(tmp_path):
    missing = os.path.join(tmp_path, "none.conf")
    assert live.slurm_conf_values(missing) == {}
    with pytest.raises(OSError):
        nodes.SlurmConf(missing)
