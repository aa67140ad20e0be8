"""What a careless operator or a hostile job owner can hand the CLI: a FIFO as the config,
ids out of range, file names that are not UTF-8. Each is a clear error, never a hang, a
traceback, or anything created."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jobns import log as jlog

JOBNS = [sys.executable, "-m", "jobns"]


def run(*args, env=None, timeout=120):
    e = dict(os.environ, JOBNS_CONFIG="", SLURM_CONF="/nonexistent/slurm.conf")
    e.update(env or {})
    return subprocess.run([*JOBNS, *args], capture_output=True, env=e, timeout=timeout)


@pytest.fixture
def config(tmp_path):
    base = tmp_path / "base"
    path = tmp_path / "namespace.yaml"
    path.write_text(f"defaults:\n  base_path: {base}\n  dirs: /dev/shm\n")
    return str(path), base


# ---------------------------------------------------------------- --config is a FIFO

@pytest.mark.parametrize("argv", [
    ("--config", "{fifo}", "config", "show"),
    ("config", "check", "{fifo}"),
    ("--config", "{fifo}", "config", "check"),
    ("--config", "{fifo}", "create", "5", "--user", "nobody"),
    ("--config", "{fifo}", "create", "5", "--user", "nobody", "--dry-run"),
    ("--config", "{fifo}", "delete", "5"),
])
def test_config_fifo_is_refused_without_waiting_for_a_writer(tmp_path, argv):
    fifo = tmp_path / "namespace.conf"
    os.mkfifo(fifo)
    # a reader of a FIFO blocks until a writer opens it: jobns must never get there (the
    # timeout only turns a hang into a failure; no writer ever comes)
    r = run(*(a.format(fifo=fifo) for a in argv))
    err = r.stderr.decode() + r.stdout.decode()
    assert r.returncode in (1, 2) and "Traceback" not in err, err
    assert f"{fifo}" in err and "FIFO" in err and "not a regular file" in err, err
    if "check" not in argv:
        assert r.returncode == 2


def test_config_env_naming_a_fifo_is_refused(tmp_path):
    fifo = tmp_path / "namespace.yaml"
    os.mkfifo(fifo)
    r = run("config", "show", env={"JOBNS_CONFIG": str(fifo)})
    assert r.returncode == 2 and b"FIFO" in r.stderr, r.stderr


@pytest.mark.parametrize("kind,word", [("dir", "a directory"), ("dev", "a character device")])
def test_config_other_non_regular_files_are_named(tmp_path, kind, word):
    path = str(tmp_path) if kind == "dir" else "/dev/zero"
    r = run("--config", path, "config", "show")
    assert r.returncode == 2 and word.encode() in r.stderr, r.stderr


def test_config_regular_file_still_reads(config):
    path, base = config
    r = run("--config", path, "config", "show", "--json")
    assert r.returncode == 0 and str(base).encode() in r.stdout, r.stderr


# ---------------------------------------------------------------- uid and gid

BAD_IDS = [
    ("--uid", "-1"), ("--uid", "4294967295"), ("--uid", "99999999999"), ("--uid", "x"),
    ("--uid", ""), ("--uid", "+5"), ("--uid", "٣"),
]


@pytest.mark.parametrize("opt,value", BAD_IDS)
def test_bad_uid_is_a_usage_error_naming_it_before_anything_is_made(config, opt, value):
    path, base = config
    r = run("--config", path, "create", "5", opt, value)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert "Traceback" not in err and "OverflowError" not in err
    assert f"{opt} {value!r}" in err, err
    assert not base.exists()


@pytest.mark.parametrize("value", ["4294967295", "-5", "-1", "99999999999", "g"])
@pytest.mark.parametrize("who", [("--user", "nobody"), ("--uid", "7")])
def test_bad_gid_is_a_usage_error_naming_it(config, value, who):
    path, base = config
    r = run("--config", path, "create", "5", *who, "--gid", value)
    err = r.stderr.decode()
    assert r.returncode == 2 and f"--gid {value!r}" in err, err
    assert "Traceback" not in err
    assert not base.exists()


@pytest.mark.parametrize("argv", [
    ("create", "5", "--user", "4294967295"),
    ("create", "5", "--user", "99999999999"),
    ("exec", "5", "--user", "99999999999", "--", "true"),
    ("run", "--user", "4294967295", "--", "true"),
])
def test_numeric_user_out_of_range_is_a_usage_error(config, argv):
    path, base = config
    r = run("--config", path, *argv)
    err = r.stderr.decode()
    assert r.returncode == 2 and "--user" in err and "not a valid id" in err, err
    assert not base.exists()


def test_highest_valid_id_is_accepted_by_the_parser(config):
    path, _ = config
    r = run("--config", path, "create", "5", "--uid", "4294967294", "--gid", "0", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert b"4294967294" in r.stdout


# ---------------------------------------------------------------- non-UTF-8 names

def test_escape_keeps_text_and_shows_bytes():
    name = os.fsdecode(b"/tmp/a\xff\xfeb")
    assert jlog.escape(name) == "/tmp/a\\xff\\xfeb"
    assert jlog.escape("plain ascii, é, 日本") == "plain ascii, é, 日本"
    assert jlog.escape("a\x1b[31mred") == "a\\x1b[31mred"
    assert jlog.escape("two\nlines\tand tab") == "two\nlines\tand tab"
    jlog.escape(name).encode("utf-8")   # always encodable


def test_log_with_syslog_takes_a_non_utf8_name(capsys):
    log = jlog.Log("info", use_syslog=True)
    log("error", "cannot remove " + os.fsdecode(b"/tmp/\xff"))
    assert "cannot remove /tmp/\\xff" in capsys.readouterr().err


def test_non_utf8_config_path_is_a_config_error_not_a_crash(tmp_path):
    bad = os.path.join(os.fsencode(tmp_path), b"x\xff.yaml")
    # stderr is a pipe: the message goes to syslog as well
    r = subprocess.run([*JOBNS, b"--config", bad, "config", "show"], capture_output=True,
                       timeout=120, env=dict(os.environ, JOBNS_CONFIG=""))
    assert r.returncode == 2, r.stderr
    assert b"x\\xff.yaml" in r.stderr and b"Traceback" not in r.stderr


def test_non_utf8_config_check_prints_the_name_escaped(tmp_path):
    bad = os.path.join(os.fsencode(tmp_path), b"x\xff.conf")
    with open(bad, "w") as f:
        f.write("BasePath=relative\n")
    r = subprocess.run([*JOBNS, "config", "check", bad], capture_output=True, timeout=120)
    assert r.returncode == 1 and b"Traceback" not in r.stderr, r.stderr
    assert b"x\\xff.conf:1:" in r.stdout, r.stdout
