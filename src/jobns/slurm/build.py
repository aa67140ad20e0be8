"""Build the SPANK plugin on the node, against the installed <slurm/spank.h>."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from importlib import resources

from jobns.errors import OperationError, UsageError

SOURCE = "jobns_spank.c"
PLUGIN = "jobns_spank.so"
INCLUDE_DIRS = ("/usr/include", "/usr/local/include", "/opt/slurm/include")
HEADER_PACKAGES = "Debian/Ubuntu: apt-get install libslurm-dev; RHEL/Fedora: dnf install slurm-devel"
CFLAGS = ("-Wall", "-Wextra", "-O2", "-fPIC", "-shared")


def find_include_dir(explicit: str | None = None) -> str:
    """The directory that holds slurm/spank.h."""
    candidates = [explicit] if explicit else \
        [d for d in (os.environ.get("SLURM_INCLUDE_DIR"),) if d] + list(INCLUDE_DIRS)
    for d in candidates:
        if os.path.isfile(os.path.join(d, "slurm", "spank.h")):
            return d
    where = ", ".join(candidates)
    raise OperationError("build-plugin", f"slurm/spank.h not found in {where} "
                         f"(install Slurm's development headers: {HEADER_PACKAGES}; "
                         "or pass --include-dir DIR)")


def find_compiler(explicit: str | None = None) -> str:
    for cc in ([explicit] if explicit else [os.environ.get("CC"), "cc", "gcc"]):
        if cc and shutil.which(cc):
            return shutil.which(cc)
    raise OperationError("build-plugin", "no C compiler found (install gcc, or pass --cc)")


def default_jobns() -> str:
    """Absolute path of the jobns executable that is running now."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "jobns" and os.access(argv0, os.X_OK):
        return os.path.abspath(argv0)
    candidate = os.path.join(sys.prefix, "bin", "jobns")
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("jobns")
    if found:
        return os.path.abspath(found)
    raise UsageError("cannot find the jobns executable; pass --jobns /path/to/bin/jobns")


def build(output: str, *, include_dir: str | None = None, cc: str | None = None) -> str:
    """Compile the plugin to `output` (atomically replaced: running slurmstepds keep the
    old file mapped). Returns the compiler's warnings, if any."""
    inc = find_include_dir(include_dir)
    compiler = find_compiler(cc)
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, mode=0o755, exist_ok=True)
    src = resources.files("jobns.slurm").joinpath(SOURCE)
    with resources.as_file(src) as src_path:
        fd, tmp = tempfile.mkstemp(prefix=".jobns_spank.", suffix=".so", dir=out_dir)
        os.close(fd)
        cmd = [compiler, *CFLAGS, "-I", inc, "-o", tmp, str(src_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise OperationError("build-plugin", f"{shlex.join(cmd)} failed:\n"
                                     f"{proc.stderr.strip()}")
            os.chmod(tmp, 0o755)
            os.replace(tmp, output)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return proc.stderr.strip()


def plugstack_line(plugin: str, jobns: str, *, config: str | None = None,
                   runtime: str | None = None, prolog: bool = True) -> str:
    parts = ["required", plugin, f"jobns={jobns}"]
    if config:
        parts.append(f"config={config}")
    if runtime:
        parts.append(f"runtime={runtime}")
    if not prolog:
        parts.append("prolog=no")
    return " ".join(parts)
