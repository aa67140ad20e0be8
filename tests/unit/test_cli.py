"""CLI contract that needs no root: parsing, usage errors, exit codes, job ids."""

import json
import os
import subprocess
import sys

import pytest

from jobns import cli
from jobns.errors import UsageError
from jobns.job import is_slurm_job_id, validate_job_id

JOBNS = [sys.executable, "-m", "jobns"]


def run(*args, env=None):
    e = dict(os.environ, JOBNS_CONFIG="", SLURM_CONF="/nonexistent/slurm.conf")
    e.update(env or {})
    return subprocess.run([*JOBNS, *args], capture_output=True, text=True, env=e, timeout=60)


@pytest.mark.parametrize("good", ["1", "4294967293", "run-1a2b", "A.b_c-d", "x" * 64])
def test_valid_job_ids(good):
    assert validate_job_id(good) == good


@pytest.mark.parametrize("bad", ["", "0", "007", "4294967294", "../x", "a/b", ".hidden",
                                 "-rf", "x" * 65, "a b", "ab.", "é"])
def test_invalid_job_ids(bad):
    with pytest.raises(UsageError) as exc:
        validate_job_id(bad)
    assert "job id" in str(exc.value)


def test_slurm_job_id_detection():
    assert is_slurm_job_id("12") and not is_slurm_job_id("run-1") and not is_slurm_job_id("012")


def test_exec_splits_command_at_double_dash():
    p = cli.build_parser()
    args = p.parse_args(["exec", "5", "--user", "bob"])
    assert args.job == "5" and args.user == "bob"


def test_usage_errors_exit_2():
    r = run("frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr
    r = run("create", "5")
    assert r.returncode == 2 and "--user" in r.stderr
    r = run("exec", "5")
    assert r.returncode == 2


def test_config_show_builtin_default_json():
    r = run("config", "show", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["base_path"] == "/var/lib/jobns" and d["auto_base_path"] is True
    assert d["dirs"] == ["/tmp", "/dev/shm"] and d["clone_ns_flags"] == ["CLONE_NEWNS"]
    assert d["source"] == "built-in"


def test_create_dry_run_needs_no_root(tmp_path):
    cfg = tmp_path / "namespace.yaml"
    cfg.write_text("defaults:\n  base_path: /srv/jobns\n  dirs: /tmp,/var/tmp,/dev/shm\n")
    r = run("--config", str(cfg), "--node", "n1", "create", "9", "--uid", "4242", "--gid",
            "42", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "plan for job 9 (user 4242, uid 4242, gid 42) on node n1:" in r.stdout
    assert "[ns] bind:/var/tmp /var/tmp  (from /srv/jobns/9/.9/_var_tmp)" in r.stdout
    assert not os.path.exists("/srv/jobns/9")


def test_config_error_exits_2_with_location(tmp_path):
    cfg = tmp_path / "namespace.yaml"
    cfg.write_text("defaults:\n  base_path: relative/path\n")
    r = run("--config", str(cfg), "config", "show")
    assert r.returncode == 2
    assert f"{cfg}:2" in r.stderr and "base_path" in r.stderr


def test_privileged_commands_refuse_non_root(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("JOBNS_CONFIG", "")
    monkeypatch.setenv("SLURM_CONF", "/nonexistent/slurm.conf")
    for argv in (["create", "5", "--uid", "1000"], ["delete", "5"], ["restore"],
                 ["run", "--", "true"], ["exec", "5", "--", "true"]):
        assert cli.main(argv) == 2, argv
        assert "needs root" in capsys.readouterr().err


def test_parser_built_for_one_command_parses_like_the_full_one():
    argv = ["--config", "/x.yaml", "--node", "n1", "create", "5", "--uid", "7", "--env", "A=b"]
    assert cli._command_word(argv) == "create"
    one = vars(cli.build_parser("create").parse_args(argv))
    full = vars(cli.build_parser().parse_args(argv))
    assert one == full and one["uid"] == "7" and one["env"] == ["A=b"]
    assert cli._command_word(["-v", "--node", "list", "exec"]) == "exec"
    assert cli._command_word(["--help"]) is None


FAST = [
    (["create", "5", "--user", "bob"], None),
    (["-q", "--config", "/c.yaml", "--node", "n1", "create", "5", "--uid", "7", "--gid", "8",
      "--env", "A=b", "--env", "C=d=e"], None),
    (["create", "run-x", "--uid", "0"], None),
    (["delete", "12"], None),
    (["-v", "delete", "12"], None),
    (["exec", "12", "--user", "bob"], ["ls", "-la"]),
    (["--node", "cn1", "exec", "12"], ["sh", "-c", "x --user y"]),
    (["slurm", "prolog"], None),
    (["-q", "--config", "/c.yaml", "--node", "n1", "slurm", "epilog"], None),
]
# forms the fast path leaves to argparse (which accepts some and rejects others)
SLOW = [
    (["create", "--user", "bob", "5"], None), (["create", "5", "--user=bob"], None),
    (["create", "5", "--user", "bob", "--uid", "3"], None), (["create", "5"], None),
    (["create", "5", "--uid", "x"], None), (["create", "5", "--user", "a", "--dry-run"], None),
    (["create", "5", "--user", "a", "--user", "b"], None), (["delete", "5", "6"], None),
    (["delete", "--help"], None), (["exec", "5"], None), (["list"], None),
    (["--config=/c", "delete", "5"], None), (["create", "5", "--user", "-x"], None),
    (["slurm", "prolog", "--help"], None), (["slurm", "restore"], None),
    (["slurm", "epilog", "x"], None),
]


@pytest.mark.parametrize("argv,cmd", FAST)
def test_fast_parser_agrees_with_argparse(argv, cmd):
    fast = cli._fast_args(argv, cmd)
    assert fast is not None
    full = cli.build_parser().parse_args(argv)
    if cmd is not None:
        full.cmd = cmd
    assert vars(fast) == vars(full)


@pytest.mark.parametrize("argv,cmd", SLOW)
def test_fast_parser_leaves_the_rest_to_argparse(argv, cmd):
    assert cli._fast_args(argv, cmd) is None


def test_job_start_imports_stay_light(tmp_path):
    """create and delete, and what Slurm runs for every job (`slurm prolog`/`epilog`),
    must not import what costs more than the work itself: argparse, re, json, enum,
    dataclasses, typing, yaml, subprocess."""
    heavy = ("argparse", "re", "json", "enum", "dataclasses", "typing", "yaml", "subprocess",
             "threading", "hashlib", "socket", "shutil")
    probe = ("import sys\nfrom jobns import cli\n"
             "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    import shutil
    import tempfile
    top = tempfile.mkdtemp(prefix="jobns-light-", dir="/var/tmp")   # not under /tmp
    conf = tmp_path / "namespace.yaml"
    conf.write_text(f"defaults:\n  base_path: {top}/base\n  auto_base_path: true\n")
    env = dict(os.environ, JOBNS_CONFIG=str(conf), JOBNS_RUNTIME_DIR=str(tmp_path / "run"),
               SLURM_JOB_ID="4243", SLURM_JOB_UID="65534", SLURM_JOB_GID="65534",
               SLURM_JOB_USER="nobody")
    # warm the config cache first (the first load of a file parses the YAML)
    subprocess.run([sys.executable, "-m", "jobns", "config", "show"], env=env,
                   capture_output=True, check=True)
    for argv in (["-q", "delete", "4242"], ["-q", "create", "4242", "--uid", "65534"],
                 ["-q", "slurm", "epilog"], ["-q", "slurm", "prolog"]):
        r = subprocess.run([sys.executable, "-c", probe, *argv], env=env, capture_output=True,
                           text=True)
        assert r.stdout.strip() == "", (argv, r.stdout, r.stderr)
    if os.geteuid() == 0:   # the create above really ran: clean it up
        for job in ("4242", "4243"):
            subprocess.run([sys.executable, "-m", "jobns", "-q", "delete", job], env=env)
        subprocess.run(["umount", "-l", f"{top}/base"], capture_output=True)
    shutil.rmtree(top, ignore_errors=True)
