"""dir_confs against the real kernel: size-limited tmpfs dirs, noexec bind dirs, the flags
a tmpfs always gets, %u/%j paths, size=N%mem, failures at the new steps, delete."""

from __future__ import annotations

import os
import pwd

import pytest

from kernelhelp import USERNS, mounts_under
from jobns import config, kernel, lifecycle
from jobns.errors import OperationError
from jobns.job import Job
from jobns.plan import build_plan

NOBODY = pwd.getpwnam("nobody")


def job(job_id: str, **env) -> Job:
    return Job(job_id=job_id, uid=NOBODY.pw_uid, gid=NOBODY.pw_gid, user=NOBODY.pw_name,
               env=env)


def configure(node, body: str, extra: str = "") -> config.NodeConfig:
    """Write a namespace.yaml with this dir_confs list (YAML items, 4-space indented)."""
    node.write_config(f"defaults:\n  base_path: {node.base}\n  auto_base_path: true\n"
                      f"{extra}  dir_confs:\n{body}")
    return config.load(node.config_file, "testnode", use_cache=False)


def sh(node, job_id: str, script: str, user: str | None = None):
    args = ["exec", job_id] + (["--user", user] if user else [])
    return node.cli(*args, "--", "sh", "-c", script)


def mount_options(node, job_id: str, path: str) -> tuple[str, set[str]]:
    r = sh(node, job_id, f"findmnt -n -o FSTYPE,OPTIONS --mountpoint {path}")
    assert r.returncode == 0, r.stderr
    fstype, opts = r.stdout.splitlines()[-1].split()
    return fstype, set(opts.split(","))


WRITE = ("import errno, sys\n"
         "try:\n"
         "    with open(sys.argv[1], 'wb') as f:\n"
         "        f.write(b'x' * (int(sys.argv[2]) << 20)); f.flush()\n"
         "    print('ok')\n"
         "except OSError as e:\n"
         "    print(errno.errorcode[e.errno])\n")


def test_tmpfs_size_limit_mode_owner_and_forced_flags(node):
    configure(node, "    - path: /tmp\n      tmpfs: true\n      options: noexec,size=8m\n"
                    "    - path: /dev/shm\n      options: size=4m\n")
    r = node.cli("create", "201", "--user", "nobody")
    assert r.returncode == 0, r.stderr
    # 7 MiB fits, 9 MiB does not (ENOSPC), as the job user
    r = node.cli("exec", "201", "--", "python3", "-c", WRITE, "/tmp/a", "7")
    assert r.stdout.strip() == "ok", r.stderr
    r = node.cli("exec", "201", "--", "python3", "-c", WRITE, "/tmp/b", "9")
    assert r.stdout.strip() == "ENOSPC", r.stderr
    r = node.cli("exec", "201", "--", "python3", "-c", WRITE, "/dev/shm/c", "5")
    assert r.stdout.strip() == "ENOSPC", r.stderr
    fstype, opts = mount_options(node, "201", "/tmp")
    assert fstype == "tmpfs" and {"nosuid", "nodev", "noexec", "size=8192k", "mode=700"} <= opts
    fstype, opts = mount_options(node, "201", "/dev/shm")
    assert fstype == "tmpfs" and {"nosuid", "nodev", "size=4096k"} <= opts
    assert "noexec" not in opts
    r = sh(node, "201", "stat -c '%a %U' /tmp /dev/shm")
    assert r.stdout.splitlines() == ["700 nobody", "1777 root"]
    # no backing dir on disk for a tmpfs dir
    assert os.listdir(os.path.join(node.job_dir("201"), ".201")) == []
    r = node.cli("delete", "201")
    assert r.returncode == 0, r.stderr
    assert node.leftovers() == [] and mounts_under(node.base) == [node.base]


def work_dir(node) -> str:
    """A host dir for bind-mounted private dirs (next to, not around, the base path)."""
    d = os.path.join(os.path.dirname(node.base), "work")
    os.makedirs(d, exist_ok=True)
    return d


def test_noexec_bind_dir_refuses_a_copied_script(node):
    work = work_dir(node)
    configure(node, f"    - path: {work}\n      options: noexec\n    - path: /tmp\n")
    lifecycle.create(config.load(node.config_file, "testnode", use_cache=False), job("202"))
    script = "printf '#!/bin/sh\\necho ran\\n' > {d}/s.sh && chmod 755 {d}/s.sh && {d}/s.sh"
    r = sh(node, "202", script.format(d=work))
    assert r.returncode == 126 and "ran" not in r.stdout, (r.returncode, r.stdout, r.stderr)
    r = sh(node, "202", "cp /bin/true {d}/t && {d}/t".format(d=work))
    assert r.returncode == 126, (r.returncode, r.stderr)
    r = sh(node, "202", script.format(d="/tmp"))         # no flags: runs
    assert r.returncode == 0 and r.stdout == "ran\n", r.stderr
    _, opts = mount_options(node, "202", work)
    assert "noexec" in opts
    # it is the job's private backing dir, not the host's dir
    assert os.path.exists(os.path.join(node.job_dir("202"), ".202", work.replace("/", "_"),
                                       "s.sh"))
    assert os.listdir(work) == []


@pytest.fixture
def nosuid_base(node):
    """The base path on a tmpfs mounted nosuid,nodev (like a scratch file system)."""
    os.makedirs(node.base, mode=0o755)
    kernel.mount("tmpfs", node.base, "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV, "mode=0755")
    yield node


@pytest.mark.parametrize("flags", [
    "",
    pytest.param("  clone_ns_flags: [CLONE_NEWUSER]\n",
                 marks=pytest.mark.skipif(not USERNS, reason="user namespaces unavailable")),
], ids=["mnt", "user+mnt"])
def test_bind_remount_keeps_the_source_flags(nosuid_base, flags):
    node = nosuid_base
    work = work_dir(node)
    cfg = configure(node, f"    - path: {work}\n      options: noexec,ro\n", extra=flags)
    lifecycle.create(cfg, job("203"))
    _, opts = mount_options(node, "203", work)
    # the requested flags, and the source's nosuid,nodev were not dropped (in a user
    # namespace they are locked: clearing them would have failed with EPERM)
    assert {"noexec", "ro", "nosuid", "nodev"} <= opts, opts
    r = lifecycle.delete(cfg, "203")
    assert r.ok, r.summary()


@pytest.mark.skipif(not USERNS, reason="user namespaces unavailable")
def test_atime_flag_on_a_bind_mount_in_a_user_namespace(node):
    work = work_dir(node)
    extra = "  clone_ns_flags: [CLONE_NEWUSER]\n"
    cfg = configure(node, f"    - path: {work}\n      options: noatime\n", extra=extra)
    assert any("noatime on the bind mount" in w and "CLONE_NEWUSER" in w for w in cfg.warnings)
    with pytest.raises(OperationError) as exc:
        lifecycle.create(cfg, job("209"))
    assert exc.value.step == f"bind:{work}" and "locks" in str(exc.value)
    assert node.leftovers() == [] and mounts_under(node.base) == [node.base]
    # without the user namespace the same option works
    cfg = configure(node, f"    - path: {work}\n      options: noatime\n")
    lifecycle.create(cfg, job("209"))
    assert "noatime" in mount_options(node, "209", work)[1]


def test_user_and_job_id_expansion(node):
    root = os.path.dirname(node.base)
    target = os.path.join(root, "home", NOBODY.pw_name, "204")
    os.makedirs(target)
    cfg = configure(node, f"    - path: {root}/home/%u/%j\n      options: nosuid\n")
    assert cfg.dirs == (f"{root}/home/%u/%j",)
    lifecycle.create(cfg, job("204"))
    r = sh(node, "204", f"echo mine > {target}/f && findmnt -n -o TARGET --mountpoint {target}")
    assert r.returncode == 0 and r.stdout.strip() == target, r.stderr
    backing = os.path.join(node.job_dir("204"), ".204",
                           target.replace("/", "_"))     # mangled from the expanded path
    with open(os.path.join(backing, "f")) as f:
        assert f.read() == "mine\n"
    assert os.listdir(target) == []                      # the host's dir is untouched
    assert lifecycle.delete(cfg, "204").ok
    assert node.leftovers() == []


def test_per_dir_base_path_equal_to_the_node_base(node):
    work = work_dir(node)
    cfg = configure(node, f"    - path: {work}\n      base_path: {node.base}\n")
    lifecycle.create(cfg, job("205"))
    backing = os.path.join(node.job_dir("205"), work.replace("/", "_"))
    assert os.stat(backing).st_uid == NOBODY.pw_uid
    r = sh(node, "205", f"echo x > {work}/f; findmnt -n -o SOURCE --mountpoint {work}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith(f"[{os.path.realpath(backing)}]")
    assert os.path.exists(os.path.join(backing, "f")) and os.listdir(work) == []
    r = node.cli("delete", "205")
    assert r.returncode == 0, r.stderr
    assert node.leftovers() == [] and mounts_under(node.base) == [node.base]


def _size_kib(node, job_id: str, path: str) -> int:
    """The tmpfs's size limit as the job sees it (statvfs inside the namespace).

    mountinfo is not enough: the kernel shows size= only when it differs from its default
    (half of RAM), so a limit equal to that default has no size= option.
    """
    fstype, _ = mount_options(node, job_id, path)
    assert fstype == "tmpfs", fstype
    r = node.cli("exec", job_id, "--", "python3", "-c",
                 "import os, sys; s = os.statvfs(sys.argv[1]); "
                 "print(s.f_blocks * s.f_frsize // 1024)", path)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def test_size_percent_of_the_job_memory_request(node):
    configure(node, "    - path: /tmp\n      tmpfs: true\n      options: size=50%mem\n")
    r = node.cli("create", "206", "--user", "nobody", "--env", "SLURM_JOB_MEM=64")
    assert r.returncode == 0, r.stderr
    assert _size_kib(node, "206", "/tmp") == 32 * 1024
    r = node.cli("exec", "206", "--", "python3", "-c", WRITE, "/tmp/a", "33")
    assert r.stdout.strip() == "ENOSPC", r.stderr
    # without a memory request: 50% of the node's RAM (the kernel's size=50%)
    r = node.cli("create", "207", "--user", "nobody")
    assert r.returncode == 0, r.stderr
    with open("/proc/meminfo") as f:
        total = int(next(ln for ln in f if ln.startswith("MemTotal:")).split()[1])
    assert abs(_size_kib(node, "207", "/tmp") - total // 2) <= 8
    # a malformed request fails before anything is made
    r = node.cli("create", "208", "--user", "nobody", "--env", "SLURM_JOB_MEM=lots")
    assert r.returncode != 0 and "SLURM_JOB_MEM" in r.stderr and "tmpfs:/tmp" in r.stderr
    assert not os.path.exists(node.job_dir("208"))


DIRS = ("    - path: /tmp\n      tmpfs: true\n      options: size=8m,noexec\n"
        "    - path: {work}\n      options: noexec,nosuid\n"
        "    - path: /scratch-%j\n      base_path: {base}\n"
        "    - path: /dev/shm\n      options: size=50%mem\n")


def test_failure_at_every_step_leaves_nothing(node, monkeypatch):
    os.makedirs("/scratch-31", exist_ok=True)
    try:
        work = work_dir(node)
        cfg = configure(node, DIRS.format(base=node.base, work=work))
        lifecycle.ensure_base(cfg)
        steps = [s.name for s in build_plan(cfg, job("31", SLURM_JOB_MEM="64")).steps]
        assert {"tmpfs:/tmp", f"mkdir-dir:{work}", f"bind:{work}", "mkdir-dir:/scratch-31",
                "bind:/scratch-31", "tmpfs:/dev/shm"} <= set(steps)
        before = sorted(mounts_under(node.base))
        for name in steps:
            monkeypatch.setenv(lifecycle.FAIL_ENV, name)
            with pytest.raises(OperationError) as exc:
                lifecycle.create(cfg, job("31", SLURM_JOB_MEM="64"))
            assert exc.value.step == name and "injected failure" in str(exc.value)
            assert node.leftovers() == [], name
            assert sorted(mounts_under(node.base)) == before, name
            assert os.listdir("/scratch-31") == [] and os.listdir(work) == []
        monkeypatch.delenv(lifecycle.FAIL_ENV)
        lifecycle.create(cfg, job("31", SLURM_JOB_MEM="64"))
        assert sh(node, "31", f"touch /scratch-31/f {work}/g /tmp/h").returncode == 0
        assert lifecycle.list_jobs(cfg)[0]["state"] == "ready"
        assert lifecycle.delete(cfg, "31").ok
        assert node.leftovers() == [] and sorted(mounts_under(node.base)) == before
        assert os.listdir("/scratch-31") == []
    finally:
        os.rmdir("/scratch-31")


@pytest.mark.parametrize("body, step", [
    ("    - path: /nonexistent-jobns-tmpfs\n      tmpfs: true\n", "tmpfs:/nonexistent-jobns-tmpfs"),
    ("    - path: /tmp\n    - path: /nonexistent-jobns-bind\n      options: noexec\n",
     "bind:/nonexistent-jobns-bind"),
])
def test_real_failure_at_a_new_step_names_it_and_leaves_nothing(node, body, step):
    cfg = configure(node, body)
    with pytest.raises(OperationError) as exc:
        lifecycle.create(cfg, job("32"))
    assert exc.value.step == step and "ENOENT" in str(exc.value)
    assert node.leftovers() == []
    assert mounts_under(node.base) == [node.base]


def test_config_check_reports_dir_confs_problems(node):
    node.write_config(f"defaults:\n  base_path: {node.base}\n  dir_confs:\n"
                      "    - path: /srv\n      options: size=1g\n")
    r = node.cli("config", "check")
    assert r.returncode != 0
    assert "namespace.yaml:5: options: option 'size=1g' of /srv is tmpfs mount data" \
        in r.stdout + r.stderr
    r = node.cli("create", "33", "--user", "nobody")
    assert r.returncode != 0 and "size=1g" in r.stderr
    assert not os.path.exists(node.job_dir("33"))


def test_record_and_usage_use_the_expanded_paths(node):
    """%u/%j paths are recorded as mounted, and `list --usage` measures them."""
    import json
    node.write_config(f"defaults:\n  base_path: {node.base}\n  auto_base_path: true\n"
                      "  dir_confs:\n    - path: /tmp\n    - path: /var/tmp/%u-%j\n"
                      "    - path: /dev/shm\n      tmpfs: true\n      options: size=4m\n")
    os.makedirs("/var/tmp/nobody-61", exist_ok=True)
    try:
        r = node.cli("create", "61", "--user", "nobody")
        assert r.returncode == 0, r.stderr
        r = node.cli("exec", "61", "--", "sh", "-c",
                     "head -c 100000 /dev/zero > /var/tmp/nobody-61/f; touch /dev/shm/x")
        assert r.returncode == 0, r.stderr
        [j] = json.loads(node.cli("list", "--usage", "--json", check=True).stdout)
        assert j["dirs"] == ["/tmp", "/var/tmp/nobody-61", "/dev/shm"]
        assert j["usage"]["/var/tmp/nobody-61"]["inodes"] == 1
        assert j["usage"]["/var/tmp/nobody-61"]["bytes"] >= 100000
        assert j["usage"]["/dev/shm"]["kind"] == "tmpfs"
        assert j["usage"]["/dev/shm"]["size"] == 4 * 1024 * 1024
    finally:
        node.cli("delete", "61")
        os.rmdir("/var/tmp/nobody-61")
