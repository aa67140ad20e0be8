"""The jobns service under Slurm: the SPANK plugin's prologs and epilogs go to it, jobs
survive its crash (the plugin runs `jobns slurm prolog|epilog` itself, which starts the
service again), and a service that answers without doing the work cannot make a job run
outside its namespace."""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest

pytestmark = pytest.mark.slurm

ALICE = "jobns-alice"
MAGIC = b"jobns-service 1"


def _service_pid(cluster) -> int | None:
    try:
        with open(os.path.join(cluster.runtime, "service.pid")) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return None
    return pid if os.path.exists(f"/proc/{pid}") else None


def _children(pid: int) -> list[int]:
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


def _log_from(cluster, offset: int) -> str:
    with open(os.path.join(cluster.log_dir, f"slurmd-{cluster.node}.log"), errors="replace") as f:
        f.seek(offset)
        return f.read()


def _log_size(cluster) -> int:
    return os.path.getsize(os.path.join(cluster.log_dir, f"slurmd-{cluster.node}.log"))


def _host_mntns(cluster) -> str:
    return cluster.run(["readlink", "/proc/self/ns/mnt"]).stdout.strip()


def test_jobs_use_the_service_and_survive_its_crash(cluster):
    r = cluster.srun(ALICE, ["true"])
    assert r.returncode == 0, r.stderr
    pid = _service_pid(cluster)
    assert pid, "no jobns service running after a job (the plugin starts it with slurmd)"
    offset = _log_size(cluster)
    r = cluster.srun(ALICE, ["true"])
    assert r.returncode == 0, r.stderr
    assert "no jobns service" not in _log_from(cluster, offset)

    for p in [pid, *_children(pid)]:          # the service and its workers crash
        os.kill(p, signal.SIGKILL)
    offset = _log_size(cluster)
    r = cluster.srun(ALICE, ["readlink", "/proc/self/ns/mnt"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and r.stdout.strip() != _host_mntns(cluster)
    cluster.wait_until(lambda: "no jobns service" in _log_from(cluster, offset),
                       what="the plugin's fallback in the slurmd log")
    cluster.wait_until(lambda: _service_pid(cluster) not in (None, pid),
                       what="the service started again by the fallback")
    offset = _log_size(cluster)
    r = cluster.srun(ALICE, ["readlink", "/proc/self/ns/mnt"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() != _host_mntns(cluster)
    cluster.wait_idle()
    assert "no jobns service" not in _log_from(cluster, offset)


class _YesService:
    """Answers every request with exit status 0 and does nothing."""

    def __init__(self, path: str):
        self.path = path
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(10)
                data = b""
                try:
                    while not data.endswith(b"\0\0"):
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    self.requests.append(data)
                    conn.sendall(b"+\0" + b"0")
                except OSError:
                    pass

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()
        os.unlink(self.path)


def test_a_service_that_does_nothing_cannot_run_a_job_unisolated(cluster):
    r = cluster.srun(ALICE, ["true"])          # the real service is up
    assert r.returncode == 0, r.stderr
    r = cluster.run([cluster.jobns, "slurm", "service", "--stop"],
                    env=dict(cluster.env, JOBNS_RUNTIME_DIR=cluster.runtime))
    assert r.returncode == 0, r.stderr
    fake = _YesService(os.path.join(cluster.runtime, "service.sock"))
    try:
        r = cluster.srun(ALICE, ["sh", "-c", "echo ran-outside"])
        # the task is refused (srun 22.05 may still exit 0 after "launch failed")
        assert r.returncode != 0 or "launch failed" in r.stderr, (r.stdout, r.stderr)
        assert "ran-outside" not in r.stdout
        assert any(b"op=prolog" in q for q in fake.requests), fake.requests
        assert any(MAGIC in q and b"env=SLURM_JOB_ID=" in q for q in fake.requests)
    finally:
        fake.close()
    cluster.wait_idle()
    if cluster.node_state().startswith(("drain", "down")):
        cluster.resume()
    r = cluster.srun(ALICE, ["readlink", "/proc/self/ns/mnt"])    # the CLI, then the service
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() != _host_mntns(cluster)
    cluster.wait_until(lambda: _service_pid(cluster) is not None, what="the service")
