"""Messages that carry user-made names reach syslog intact: the real libc syslog(3) writes
to /dev/log, which this test replaces (in a private mount namespace) with its own socket."""

from __future__ import annotations

import os
import socket
import subprocess

from kernelhelp import JOBNS

_SETUP = r'''
set -e
T=$1; shift
mkdir -p "$T/dev"
mount -t tmpfs -o mode=0755 jobns-test-dev "$T/dev"
for n in null zero random urandom full; do cp -a /dev/$n "$T/dev/"; done
: > "$T/dev/log"
mount --bind "$T/log" "$T/dev/log"
mount --move "$T/dev" /dev
exec "$@"
'''


def _with_syslog(tmp: str, argv: list, env=None):
    """Run argv with /dev/log bound to a socket of ours: (completed process, syslog lines)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.path.join(tmp, "log"))
    try:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", _SETUP,
                            "sh", tmp, *argv], capture_output=True, timeout=120, env=env)
        sock.setblocking(False)
        lines = []
        while True:
            try:
                lines.append(sock.recv(65536))
            except BlockingIOError:
                break
        return r, lines
    finally:
        sock.close()


def test_non_utf8_config_path_reaches_syslog_and_stderr_escaped(tmp_path):
    bad = os.path.join(os.fsencode(tmp_path), b"cfg-\xff\xfe.yaml")
    r, lines = _with_syslog(str(tmp_path), [JOBNS, b"--config", bad, "config", "show"],
                            env=dict(os.environ, JOBNS_CONFIG=""))
    assert r.returncode == 2, r.stderr
    assert b"Traceback" not in r.stderr
    assert b"cfg-\\xff\\xfe.yaml: cannot read the config file" in r.stderr, r.stderr
    assert any(b"jobns" in line and b"cfg-\\xff\\xfe.yaml: cannot read the config file" in line
               for line in lines), lines


def test_non_utf8_file_left_in_a_job_is_logged_escaped(node, tmp_path):
    """A delete that cannot remove a file with a non-UTF-8 name (immutable) names it
    escaped on stderr and in syslog, and exits 1 (not a crash)."""
    node.cli("create", "61", "--user", "nobody", check=True)
    node.cli("exec", "61", "--user", "root", "--", "sh", "-c",
             "f=$(printf '/tmp/keep-\\377'); touch \"$f\" && chattr +i \"$f\"", check=True)
    try:
        r, lines = _with_syslog(str(tmp_path), [JOBNS, "delete", "61"], env=node.env())
        assert r.returncode == 1, r.stderr
        assert b"Traceback" not in r.stderr
        assert b"keep-\\xff" in r.stderr, r.stderr
        assert any(b"keep-\\xff" in line for line in lines), lines
    finally:
        subprocess.run(["chattr", "-R", "-i", os.path.join(node.base, ".jobns-trash")],
                       capture_output=True)
