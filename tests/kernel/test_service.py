"""The per-node jobns service (jobns slurm service): prologs and epilogs served by resident
workers, with the same results as `jobns slurm prolog|epilog`, and its failure modes: a bad
request, a worker killed half way through a create (restore removes what it left), new
code on disk, an epilog whose files cannot all be removed."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
import time

import pytest

from jobns.slurm import service

from kernelhelp import JOBNS, mounts_under

JOB_ENV = {"SLURM_JOB_UID": "65534", "SLURM_JOB_GID": "65534", "SLURM_JOB_USER": "nobody",
           "SLURMD_NODENAME": "testnode"}     # as slurmd gives every prolog and epilog


def _wait(pred, timeout=30.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def svc(node):
    """A service for the test's runtime dir, in the foreground; stopped at the end."""
    proc = subprocess.Popen([JOBNS, "slurm", "service", "--foreground"], env=node.env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    sock = os.path.join(node.runtime, service.SOCKET)
    try:
        _wait(lambda: os.path.exists(sock) or proc.poll() is not None, what="the socket")
        assert proc.poll() is None, proc.stdout.read()
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        proc.stdout.close()


def call(node, op, job, **kw):
    return service.call(node.runtime, op, dict(JOB_ENV, SLURM_JOB_ID=job),
                        config=node.config_file, **kw)


def _workers(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(name))
            except (OSError, ValueError):
                pass
    return out


def test_prolog_and_epilog_through_the_service(node, svc):
    sock = os.path.join(node.runtime, service.SOCKET)
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(node.runtime).st_mode) & 0o077 == 0
    code, out = call(node, "prolog", "71")
    assert code == 0, out
    assert "job 71: created namespace for nobody" in out
    pin = os.path.join(node.job_dir("71"), ".ns", "mnt")
    assert os.path.exists(pin) and any(m == pin for m in mounts_under(node.base))
    code, out = call(node, "prolog", "71")         # the same errors as the CLI
    assert code == 1 and "already exists" in out
    code, out = call(node, "epilog", "71")
    assert code == 0, out
    assert not os.path.lexists(node.job_dir("71"))
    _wait(lambda: node.leftovers() == [], what="the removal after the answer")
    code, out = call(node, "epilog", "71")         # no such job: a no-op
    assert code == 0, out
    # a request without the job's variables is a usage error naming the variable
    code, out = service.call(node.runtime, "prolog", {}, config=node.config_file)
    assert code == 2 and "SLURM_JOB_ID" in out


def test_bad_requests_are_refused_with_status_2(node, svc):
    import socket
    for data in (b"nonsense\0\0", service.MAGIC + b"\0op=rm\0\0",
                 service.MAGIC + b"\0op=prolog\0what=x\0\0"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(os.path.join(node.runtime, service.SOCKET))
        s.sendall(data)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        s.close()
        assert answer.startswith(b"+") and answer.endswith(b"\x002"), answer
        assert b"bad request" in answer
    assert call(node, "prolog", "72")[0] == 0      # the service still serves
    assert call(node, "epilog", "72")[0] == 0


def test_worker_killed_during_create_leaves_what_restore_removes(node, svc):
    marker = os.path.join(os.path.dirname(node.base), "hook-started")
    script = os.path.join(os.path.dirname(node.base), "slow-hook.sh")
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\ntouch {marker}\nexec sleep 60\n")
    os.chmod(script, 0o755)
    with open(node.config_file, "a") as f:
        f.write(f"  clone_ns_script: {script}\n  clone_ns_script_wait: 120\n")
    answers = []
    t = threading.Thread(target=lambda: answers.append(call(node, "prolog", "73")))
    t.start()
    try:
        _wait(lambda: os.path.exists(marker), what="the hook script")
        busy = [w for w in _workers(svc.pid) if _workers(w)]    # the worker running the hook
        assert len(busy) == 1
        hook = _workers(busy[0])
        os.kill(busy[0], signal.SIGKILL)
        t.join(30)
        assert answers == [None]         # no complete answer: the plugin runs the CLI
        for pid in hook:
            os.kill(pid, signal.SIGKILL)
    finally:
        t.join(30)
    assert os.path.exists(node.job_dir("73"))       # half made, pinned
    # no slurm.conf here to tell live jobs from dead ones: the caller says so
    assert node.cli("restore", "--all-dead", check=True).returncode == 0
    assert node.leftovers() == []
    assert mounts_under(node.base) == [] or mounts_under(node.base) == [node.base]
    # the service lost one worker, not its service
    with open(node.config_file) as f:
        text = f.read()
    node.write_config(text.split("  clone_ns_script:")[0])
    assert call(node, "prolog", "74")[0] == 0
    assert call(node, "epilog", "74")[0] == 0


def test_epilog_answers_once_the_job_id_is_free(node, svc):
    """Files that cannot be removed do not fail the epilog: every process is gone and the
    job dir is out of base_path; the rest waits in the trash for the next restore."""
    assert call(node, "prolog", "75")[0] == 0
    stuck = os.path.join(node.job_dir("75"), ".75", "_tmp", "stuck")
    with open(stuck, "w") as f:
        f.write("x")
    r = subprocess.run(["chattr", "+i", stuck], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"chattr unsupported here: {r.stderr.strip()}")
    trash = os.path.join(node.base, ".jobns-trash")
    try:
        code, out = call(node, "epilog", "75")
        assert code == 0, out
        assert not os.path.lexists(node.job_dir("75"))
        # the worker goes on removing after the answer; it keeps only the immutable file
        def files():
            return sorted(f for _, _, names in os.walk(trash) for f in names)
        _wait(lambda: files() == ["stuck"], what="the removal after the answer")
        # the CLI (no service) reports the same teardown as a failure
        assert node.cli("create", "76", "--user", "nobody").returncode == 0
        stuck2 = os.path.join(node.job_dir("76"), ".76", "_tmp", "stuck")
        open(stuck2, "w").close()
        subprocess.run(["chattr", "+i", stuck2], check=True)
        r = node.cli("slurm", "epilog", SLURM_JOB_ID="76")
        assert r.returncode == 1 and "delete incomplete" in r.stderr
    finally:
        subprocess.run(["chattr", "-R", "-i", trash], capture_output=True)
    assert node.cli("restore", check=True).returncode == 0
    assert node.leftovers() == []


def test_new_code_on_disk_stops_the_service(node, svc):
    assert call(node, "prolog", "77")[0] == 0
    module = service.__file__
    st = os.stat(module)
    try:
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        time.sleep(service.STAMP_EVERY + 0.2)          # workers look at most once a second
        assert call(node, "epilog", "77") is None       # the plugin falls back to the CLI
        svc.wait(30)
    finally:
        os.utime(module, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert node.cli("slurm", "epilog", SLURM_JOB_ID="77").returncode == 0
    assert node.leftovers() == []


def test_one_service_per_runtime_dir_and_stop(node, svc):
    r = node.cli("slurm", "service", check=True)
    assert "already running" in r.stderr
    assert svc.poll() is None
    r = node.cli("slurm", "service", "--stop", check=True)
    svc.wait(30)
    for name in (service.SOCKET, service.PIDFILE):
        assert not os.path.exists(os.path.join(node.runtime, name))
    assert call(node, "prolog", "78") is None


def test_cli_fallback_starts_the_service(node):
    """What the SPANK plugin does when no service answers: `jobns slurm prolog` with
    JOBNS_SERVICE=start does the work and starts the service for the next jobs."""
    r = node.cli("slurm", "prolog", JOBNS_SERVICE="start", SLURM_JOB_ID="79", **JOB_ENV)
    assert r.returncode == 0, r.stderr
    sock = os.path.join(node.runtime, service.SOCKET)
    _wait(lambda: os.path.exists(sock), what="the service started by the CLI")
    try:
        code, out = call(node, "epilog", "79")
        assert code == 0, out
        _wait(lambda: node.leftovers() == [], what="the removal after the answer")
    finally:
        node.cli("slurm", "service", "--stop")
    assert not os.path.exists(sock)
