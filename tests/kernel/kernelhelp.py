"""Names the real-kernel tests share. A module of its own rather than conftest, which
pytest may load under the same name from another test directory in the same run."""

from __future__ import annotations

import os
import subprocess
import sys

from jobns import kernel

ROOT = os.geteuid() == 0
JOBNS = os.path.join(os.path.dirname(sys.executable), "jobns")


def _userns_works() -> bool:
    try:
        r = subprocess.run(["unshare", "--mount", "--pid", "--user", "--map-root-user", "--fork",
                            "true"], capture_output=True, timeout=10)
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


USERNS = _userns_works() if ROOT else False


def mounts_under(path: str) -> list[str]:
    """Mount points at or below `path` in this mount namespace."""
    return [m.mount_point for m in kernel.mounts_below(path)]
