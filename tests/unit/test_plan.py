"""The plan is pure: same input, same steps; layout follows Slurm's namespace/linux."""

import pytest

from jobns.config.model import NodeConfig, mangle
from jobns.job import Job
from jobns.plan import HOST, NS, JobPaths, build_plan

JOB = Job(job_id="42", uid=1001, gid=1001, user="alice")


def names(plan):
    return [s.name for s in plan.steps]


def test_default_plan_order_and_sides():
    plan = build_plan(NodeConfig(node_name="n1", base_path="/b"), JOB)
    assert names(plan) == ["ensure-base", "mkdir-job", "mkdir-ns", "pin-file",
                           "mkdir-src", "mkdir-dir:/tmp", "unshare", "pin-mnt", "propagation",
                           "bind:/tmp", "tmpfs:/dev/shm", "hide-base", "record", "index"]
    assert [s.name for s in plan.in_namespace()] == ["propagation", "bind:/tmp",
                                                     "tmpfs:/dev/shm", "hide-base"]
    assert [s.name for s in plan.host_between()] == ["pin-mnt"]
    assert plan.host_before()[-1].name == "unshare"
    assert [s.name for s in plan.host_after()] == ["record", "index"]
    assert all(s.where == HOST for s in plan.host_after())


def test_layout_paths_and_mangling():
    p = JobPaths.of("/var/nvme/storage_1", "42")
    assert p.job_dir == "/var/nvme/storage_1/42"
    assert p.pin == "/var/nvme/storage_1/42/.ns/mnt"
    assert p.src == "/var/nvme/storage_1/42/.42"
    assert p.backing("/var/tmp") == "/var/nvme/storage_1/42/.42/_var_tmp"
    assert mangle("/tmp") == "_tmp"


def test_full_plan_with_hooks_pid_user_shared():
    cfg = NodeConfig(node_name="n1", base_path="/b", dirs=("/tmp", "/var/tmp", "/dev/shm"),
                     shared=True, clone_ns_flags=("CLONE_NEWPID", "CLONE_NEWUSER", "CLONE_NEWNS"),
                     init_script="/s/init", clone_ns_script="/s/clone", user_ns_script="/s/u",
                     clone_ns_script_wait=20)
    plan = build_plan(cfg, JOB)
    n = names(plan)
    assert n.index("init-script") < n.index("unshare") < n.index("user-ns-script") < \
        n.index("pin-mnt") < n.index("propagation")
    assert "user-map" not in n
    assert n[-1] == "clone-ns-script"
    assert "timeout 20 s" in plan.steps[-1].detail
    assert n.index("init") > n.index("hide-base")
    prop = next(s for s in plan.steps if s.name == "propagation")
    assert prop.where == NS and "rslave" in prop.detail
    text = plan.describe()
    assert "bind:/var/tmp /var/tmp  (from /b/42/.42/_var_tmp)" in text
    assert "plan for job 42 (user alice, uid 1001, gid 1001) on node n1:" in text


def test_user_ns_without_script_uses_identity_map():
    cfg = NodeConfig(node_name="n1", base_path="/b", clone_ns_flags=("CLONE_NEWUSER", "CLONE_NEWNS"))
    assert "user-map" in names(build_plan(cfg, JOB))


def test_only_shm_and_no_shm():
    only_shm = build_plan(NodeConfig(node_name="n", base_path="/b", dirs=("/dev/shm",)), JOB)
    assert not [s for s in only_shm.steps if s.name.startswith(("bind:", "mkdir-dir:"))]
    no_shm = build_plan(NodeConfig(node_name="n", base_path="/b", dirs=("/tmp",)), JOB)
    assert "tmpfs:/dev/shm" not in names(no_shm)


def test_disabled_node_has_no_plan():
    with pytest.raises(ValueError):
        build_plan(NodeConfig(node_name="n", base_path=None), JOB)


def test_plan_is_pure():
    cfg = NodeConfig(node_name="n1", base_path="/b")
    assert build_plan(cfg, JOB) == build_plan(cfg, JOB)
